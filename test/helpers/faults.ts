/**
 * What the fault tests (SIGKILL, corruption, disk full) check after a build
 * that went wrong: that it left nothing behind — no mount, no temp file, no
 * lock of a dead process, no blob that is not what its name says — and what
 * digests the next build gives. Checked from the outside: the files on disk
 * and /proc, never layergraph's own idea of them.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { lstat, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { treeStamp } from '../../src/snapshot/tree-stamp.js';
import { outputOf, REPO } from './cli.js';

export interface SpawnResult {
  exitCode: number | null;
  /** The signal that ended the process, if one did. */
  signal: NodeJS.Signals | null;
  pid: number;
  stdout: string;
  stderr: string;
}

/** `layergraph <args>` as a child process of its own (no shell in between, so a signal ends it, not a wrapper). */
export function spawnLayergraph(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv; onStderr?: (all: string, pid: number) => void } = {}): Promise<SpawnResult> {
  const child = spawn(process.execPath, [path.join(REPO, 'bin', 'layergraph.js'), ...args], {
    cwd: opts.cwd ?? process.cwd(),
    env: { ...process.env, LAYERGRAPH_FAULT_AT: '', ...opts.env },
  });
  return outputOf(child, (all) => opts.onStderr?.(all, child.pid!)).then(({ stdout, stderr, code, signal }) => ({
    exitCode: code,
    signal,
    pid: child.pid!,
    stdout,
    stderr,
  }));
}

/** Every manifest of an OCI layout's index.json, as `ref → digest`. */
export async function layoutDigests(outDir: string): Promise<Record<string, string>> {
  const index = JSON.parse(await readFile(path.join(outDir, 'index.json'), 'utf8')) as {
    manifests: Array<{ digest: string; annotations?: Record<string, string> }>;
  };
  return Object.fromEntries(index.manifests.map((m) => [m.annotations?.['org.opencontainers.image.ref.name'] ?? '?', m.digest]));
}

/** Mount points at or below `dir`, from /proc/self/mountinfo. */
export async function mountsBelow(dir: string): Promise<string[]> {
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  return info
    .split('\n')
    .map((l) => l.split(' ')[4] ?? '')
    .map((p) => p.replace(/\\([0-7]{3})/g, (_, o: string) => String.fromCharCode(parseInt(o, 8))))
    .filter((p) => p === dir || p.startsWith(`${dir}/`));
}

/**
 * What is wrong with a cache directory after a run (empty when nothing is):
 * leftovers in `tmp/` and `ingest/`, temp files anywhere, blobs whose bytes
 * are not their name, records that do not parse or point at a missing or
 * wrong-sized blob, lock files that still name `deadPids`, snapshots without
 * their stamp or not matching it, stamps without a snapshot. With `leftovers`
 * (right after a kill, before the next run's sweep) temp files are allowed,
 * but nothing under a real name may be half written.
 */
export async function cacheProblems(cacheDir: string, deadPids: number[] = [], opts: { leftovers?: boolean } = {}): Promise<string[]> {
  const problems: string[] = [];
  for (const sub of opts.leftovers ? [] : ['tmp', 'ingest']) {
    const left = await readdir(path.join(cacheDir, sub)).catch(() => [] as string[]);
    if (left.length) problems.push(`${sub}/ holds ${left.join(', ')}`);
  }
  const files = await walk(cacheDir, (rel) => !rel.startsWith('snapshots/') && !rel.startsWith('tmp/') && !rel.startsWith('ingest/'));
  for (const rel of files) {
    const base = path.basename(rel);
    if (base.startsWith('.layergraph-tmp-') && !opts.leftovers) problems.push(`temp file ${rel}`);
    // Leases, locks, markers: anything named by its owner (`<host>.<pid>-…`) or holding its pid.
    for (const pid of deadPids) {
      if (base.includes(`.${pid}-`)) problems.push(`${rel} is named after dead process ${pid}`);
      else if (/lock|lease/i.test(rel) && new RegExp(`\\b${pid}\\b`).test(await readFile(path.join(cacheDir, rel), 'utf8').catch(() => ''))) {
        problems.push(`${rel} names dead process ${pid}`);
      }
    }
  }
  problems.push(...(await snapshotProblems(cacheDir, opts)));
  for (const rel of files.filter((f) => f.startsWith('blobs/sha256/'))) {
    const hex = path.basename(rel);
    if ((await sha256Of(path.join(cacheDir, rel))) !== hex) problems.push(`blob ${rel} does not hash to its name`);
  }
  for (const rel of files.filter((f) => f.startsWith('records/') && f.endsWith('.json'))) {
    let record: { layer: { digest: string; size: number } | null } | undefined;
    try {
      record = JSON.parse(await readFile(path.join(cacheDir, rel), 'utf8'));
    } catch {
      problems.push(`record ${rel} is not JSON`);
      continue;
    }
    const layer = record?.layer;
    if (!layer) continue;
    const blob = path.join(cacheDir, 'blobs', 'sha256', layer.digest.slice('sha256:'.length));
    const st = await lstat(blob).catch(() => undefined);
    if (!st) problems.push(`record ${rel} points at missing blob ${layer.digest}`);
    else if (st.size !== layer.size) problems.push(`record ${rel} says ${layer.size} bytes, blob has ${st.size}`);
  }
  return problems;
}

/**
 * Snapshots (`snapshots/<image key>` with `<key>.snapshot.json`, `snapshots/layers/<hex>`
 * with `<hex>.stamp`): each has its stamp and matches it, and no stamp is without its
 * snapshot. With `leftovers`, a tree without its stamp is allowed (a kill between its
 * two renames; the next run that needs it unpacks it again).
 */
async function snapshotProblems(cacheDir: string, opts: { leftovers?: boolean }): Promise<string[]> {
  const problems: string[] = [];
  const check = async (dir: string, isTree: (name: string) => boolean, suffix: string, stampOf: (text: string) => unknown): Promise<void> => {
    const names = await readdir(dir).catch(() => [] as string[]);
    for (const name of names) {
      const rel = path.relative(cacheDir, path.join(dir, name));
      if (isTree(name)) {
        const text = await readFile(path.join(dir, `${name}${suffix}`), 'utf8').catch(() => undefined);
        if (text === undefined) {
          if (!opts.leftovers) problems.push(`snapshot ${rel} has no ${suffix}`);
        } else if (stampOf(text) !== treeStamp(path.join(dir, name))) problems.push(`snapshot ${rel} does not match its ${suffix}`);
      } else if (name.endsWith(suffix) && !names.includes(name.slice(0, -suffix.length))) problems.push(`${rel} has no snapshot`);
    }
  };
  const root = path.join(cacheDir, 'snapshots');
  await check(root, (n) => /^[0-9a-f]{16,128}$/.test(n), '.snapshot.json', (t) => (JSON.parse(t) as { stamp?: string }).stamp);
  await check(path.join(root, 'layers'), (n) => /^[0-9a-f]{64}$/.test(n), '.stamp', (t) => t);
  return problems;
}

/** What is wrong with an OCI layout: temp files (unless `leftovers`), blobs that are not their name, an index naming a missing blob. */
export async function layoutProblems(outDir: string, opts: { leftovers?: boolean } = {}): Promise<string[]> {
  const problems: string[] = [];
  const files = await walk(outDir, () => true);
  for (const rel of files) {
    if (path.basename(rel).startsWith('.layergraph-tmp-')) {
      if (!opts.leftovers) problems.push(`temp file ${rel}`);
    } else if (rel.startsWith('blobs/sha256/') && (await sha256Of(path.join(outDir, rel))) !== path.basename(rel)) problems.push(`blob ${rel} does not hash to its name`);
  }
  // Every image index.json names is whole: its manifest, config and layers.
  const has = (digest: string) => files.includes(`blobs/sha256/${digest.slice('sha256:'.length)}`);
  for (const digest of new Set(Object.values(await layoutDigests(outDir).catch(() => ({}))))) {
    if (!has(digest)) {
      problems.push(`index.json names missing manifest ${digest}`);
      continue;
    }
    const manifest = JSON.parse(await readFile(path.join(outDir, 'blobs', 'sha256', digest.slice('sha256:'.length)), 'utf8')) as {
      config: { digest: string };
      layers: Array<{ digest: string }>;
    };
    for (const d of [manifest.config.digest, ...manifest.layers.map((l) => l.digest)]) if (!has(d)) problems.push(`manifest ${digest} names missing ${d}`);
  }
  return problems;
}

/** Regular files under `dir` (relative paths), in directories `descend` accepts. */
async function walk(dir: string, descend: (rel: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  const visit = async (rel: string): Promise<void> => {
    for (const e of await readdir(path.join(dir, rel), { withFileTypes: true }).catch(() => [])) {
      const r = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) {
        if (descend(`${r}/`)) await visit(r);
      } else out.push(r);
    }
  };
  await visit('');
  return out;
}

async function sha256Of(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}
