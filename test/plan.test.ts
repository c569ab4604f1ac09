/**
 * `layergraph plan`: which steps would hit, worked out without building, and
 * checked against what a real build then does; and proof that a plan writes
 * nothing in the cache, also as an unprivileged user.
 */
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, lstat, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { busyboxContext, hasStaticBusybox } from './helpers/busybox.js';
import { REPO, runCli } from './helpers/cli.js';
import { makeTree, useTmpDirs } from './helpers/tmp.js';
import { hasTool } from './helpers/tools.js';

const tmpDir = useTmpDirs();
const ROOT = process.getuid?.() === 0;

/**
 * `app` is plain copies (one linked); `web` is built on it; `reader` copies a
 * file out of it, then builds on that copy; `outer` is built on `reader`.
 */
const BUILD = `version: 1
images:
  app:
    steps:
      - {id: src, copy: src/, to: /app/}
      - {id: conf, copy: app.conf, to: /etc/app.conf}
      - {id: lib, copy: lib.txt, to: /lib/, link: true}
  web:
    from: app
    steps:
      - {id: page, copy: page.html, to: /srv/}
  reader:
    steps:
      - {id: take, from: app, copy: /etc/app.conf, to: /app.conf}
      - {id: after, copy: page.html, to: /p.html}
      - {id: linked, copy: lib.txt, to: /l/, link: true}
      - {id: top, copy: page.html, to: /q.html}
  outer:
    from: reader
    steps:
      - {id: o, copy: page.html, to: /o.html}
`;

interface PlanJson {
  images: Array<{ name: string; from: string }>;
  steps: Array<{ image: string; id: string; kind: string; status: string; reason: string; key: string | null; savedMs: number; layer: unknown }>;
  edges: Array<{ from: string; to: string; kind: string }>;
  summary: { total: number; hits: number; misses: number; unknown: number };
}

interface BuildJson {
  steps: Array<{ image: string; id: string; status: string; reason: string; key: string }>;
}

async function project(buildYaml = BUILD): Promise<string> {
  const dir = await tmpDir();
  await makeTree(dir, {
    'build.yaml': buildYaml,
    'app.conf': 'debug = false\n',
    'lib.txt': 'lib\n',
    'page.html': '<p>hi</p>\n',
    src: { dir: { run: { file: '#!/bin/sh\necho hi\n', mode: 0o755 } } },
  });
  return dir;
}

async function plan(dir: string, extra: string[] = []): Promise<PlanJson> {
  const res = await runCli(['plan', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'cache'), '--format', 'json', ...extra], { cwd: dir });
  expect(res.exitCode, res.stderr).toBe(0);
  return JSON.parse(res.stdout) as PlanJson;
}

async function build(dir: string): Promise<BuildJson> {
  // Outside the project: a file written into the context would be an input of `copy: .`.
  const report = path.join(await tmpDir(), 'report.json');
  const res = await runCli(['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'cache'), '--out', path.join(dir, 'out'), '--report', report, '--progress', 'quiet'], { cwd: dir });
  expect(res.exitCode, res.stderr).toBe(0);
  return JSON.parse(await readFile(report, 'utf8')) as BuildJson;
}

const statuses = (p: PlanJson): Record<string, string> => Object.fromEntries(p.steps.map((s) => [`${s.image}/${s.id}`, s.status]));
const reasonOf = (p: PlanJson, id: string): string => p.steps.find((s) => `${s.image}/${s.id}` === id)!.reason;

/** Every path under `dir` with its type, size, mode and mtime: what any write would change. */
async function listing(dir: string): Promise<string[]> {
  if (!existsSync(dir)) return [];
  const out: string[] = [];
  const visit = async (abs: string, rel: string): Promise<void> => {
    for (const name of (await readdir(abs)).sort()) {
      const st = await lstat(path.join(abs, name));
      out.push(`${rel}${name} ${st.isDirectory() ? 'd' : st.isSymbolicLink() ? 'l' : 'f'} ${st.size} ${st.mode.toString(8)} ${st.mtimeMs}`);
      if (st.isDirectory()) await visit(path.join(abs, name), `${rel}${name}/`);
    }
  };
  await visit(dir, '');
  return out;
}

describe('layergraph plan', () => {
  it('on an empty cache: misses where the key is known, unknown where a copy reads an image not built yet; creates no cache', async () => {
    const dir = await project();
    const p = await plan(dir);
    expect(existsSync(path.join(dir, 'cache'))).toBe(false);
    expect(statuses(p)).toEqual({
      'app/src': 'miss',
      'app/conf': 'miss',
      'app/lib': 'miss',
      // built on app: its key comes from app's keys, not its layers
      'web/page': 'miss',
      'reader/take': 'unknown',
      'reader/after': 'unknown',
      // linked: its own key ignores what is below it…
      'reader/linked': 'miss',
      // …but its chain does not
      'reader/top': 'unknown',
      'outer/o': 'unknown',
    });
    expect(reasonOf(p, 'app/src')).toBe('no earlier build');
    expect(reasonOf(p, 'reader/take')).toBe('copies from app: known once app/src, app/conf, app/lib are built');
    expect(reasonOf(p, 'reader/after')).toBe('sits on reader/take: known once app/src, app/conf, app/lib are built');
    expect(reasonOf(p, 'reader/top')).toBe('sits on reader/linked: known once app/src, app/conf, app/lib are built');
    expect(reasonOf(p, 'outer/o')).toMatch(/^built on reader: known once app\/src, app\/conf, app\/lib are built$/);
    expect(p.steps.filter((s) => s.status === 'unknown').every((s) => s.key === null)).toBe(true);
    expect(p.summary).toEqual({ total: 9, hits: 0, misses: 5, unknown: 4 });
    expect(p.images).toEqual([
      { name: 'app', from: 'scratch' },
      { name: 'web', from: 'app' },
      { name: 'reader', from: 'scratch' },
      { name: 'outer', from: 'reader' },
    ]);
    expect(p.edges).toContainEqual({ from: 'app/src', to: 'app/conf', kind: 'needs' });
    expect(p.edges).toContainEqual({ from: 'app/lib', to: 'web/page', kind: 'base' });
    expect(p.edges).toContainEqual({ from: 'app/lib', to: 'reader/take', kind: 'copy-from' });

    // What the build then does agrees with every step the plan could key.
    const built = await build(dir);
    for (const s of p.steps.filter((x) => x.status !== 'unknown')) {
      const b = built.steps.find((x) => x.image === s.image && x.id === s.id)!;
      expect([b.status, b.reason, b.key], `${s.image}/${s.id}`).toEqual([s.status, s.reason, s.key]);
    }
  });

  it('after a build: every step hits with the key the build used, and a changed input is explained as the build will explain it', async () => {
    const dir = await project();
    const first = await build(dir);
    const p = await plan(dir);
    expect(p.summary).toEqual({ total: 9, hits: 9, misses: 0, unknown: 0 });
    expect(p.steps.map((s) => s.key)).toEqual(first.steps.map((s) => s.key));

    await writeFile(path.join(dir, 'app.conf'), 'debug = true\n');
    const changed = await plan(dir);
    expect(statuses(changed)).toEqual({
      'app/src': 'hit',
      'app/conf': 'miss',
      'app/lib': 'hit',
      'web/page': 'miss',
      'reader/take': 'unknown',
      'reader/after': 'unknown',
      'reader/linked': 'hit',
      'reader/top': 'unknown',
      'outer/o': 'unknown',
    });
    expect(reasonOf(changed, 'app/conf')).toBe('input app.conf changed');
    expect(reasonOf(changed, 'web/page')).toBe('parent layer changed');
    expect(reasonOf(changed, 'reader/take')).toBe('copies from app: known once app/conf is built');

    const second = await build(dir);
    for (const s of changed.steps.filter((x) => x.status !== 'unknown')) {
      const b = second.steps.find((x) => x.image === s.image && x.id === s.id)!;
      expect([b.status, b.reason, b.key], `${s.image}/${s.id}`).toEqual([s.status, s.reason, s.key]);
    }
    // the file copied out of app changed, so what was unknown did change
    expect(second.steps.find((s) => s.id === 'take')!.status).toBe('miss');
    expect((await plan(dir)).summary.hits).toBe(9);
  });

  it('writes nothing in the cache: same paths, sizes, modes and mtimes before and after, even when it must unpack an image to key a copy', async () => {
    const dir = await project();
    await build(dir);
    // Without the build's snapshot of app, keying reader/take means unpacking app's layers: outside the cache.
    await rm(path.join(dir, 'cache', 'snapshots'), { recursive: true, force: true });
    await writeFile(path.join(dir, 'page.html'), '<p>changed</p>\n');
    const cache = path.join(dir, 'cache');
    const before = await listing(cache);
    expect(before.length).toBeGreaterThan(10);
    const p = await plan(dir);
    expect(await listing(cache)).toEqual(before);
    expect(statuses(p)['reader/take']).toBe('hit');
    expect(statuses(p)['reader/after']).toBe('miss');
    expect(reasonOf(p, 'reader/after')).toBe('input page.html changed');
    expect(reasonOf(p, 'reader/top')).toBe('input page.html changed');
    // Every format reads the same cache the same way.
    for (const format of ['text', 'dot', 'mermaid']) {
      const res = await runCli(['plan', path.join(dir, 'build.yaml'), '--cache-dir', cache, '--format', format], { cwd: dir });
      expect(res.exitCode, res.stderr).toBe(0);
    }
    expect(await listing(cache)).toEqual(before);
  });

  it('prints text, dot and mermaid', async () => {
    const dir = await project();
    await build(dir);
    await writeFile(path.join(dir, 'app.conf'), 'x\n');
    const run = async (format: string): Promise<string> => {
      const res = await runCli(['plan', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'cache'), '--format', format], { cwd: dir });
      expect(res.exitCode, res.stderr).toBe(0);
      return res.stdout;
    };
    const text = (await run('text')).trimEnd().split('\n');
    expect(text).toHaveLength(10);
    expect(text[0]).toMatch(/^app\/src\s+HIT$/);
    expect(text[1]).toMatch(/^app\/conf\s+MISS\s+input app\.conf changed$/);
    expect(text[4]).toMatch(/^reader\/take\s+UNKNOWN\s+copies from app: known once app\/conf is built$/);
    expect(text[9]).toBe('3/9 steps would hit, 2 would be built, 4 unknown until built');
    const mermaid = await run('mermaid');
    expect(mermaid).toMatch(/^graph TD\n {2}subgraph img0\["app"\]\n {4}s0\["src · hit"\]/);
    expect(mermaid).toContain('s4["take · unknown"]');
    expect(mermaid).toContain('s2 -. copy .-> s4');
    const dot = await run('dot');
    expect(dot).toMatch(/^digraph layergraph \{/);
    expect(dot).toContain('"app/lib" -> "reader/take" [style=dashed, label="copy"];');
    if (hasTool('dot')) execFileSync('dot', ['-Tsvg'], { input: dot, stdio: ['pipe', 'ignore', 'pipe'] });
  });

  it('leaves the build\'s --out out of the context, as the build does, so a copy of "." keys the same', async () => {
    const dir = await project(`version: 1\nimages:\n  all:\n    steps:\n      - {id: everything, copy: ., to: /ctx/}\n`);
    const first = await build(dir); // --out out, --cache-dir cache: both inside the context
    const p = await plan(dir, ['--out', 'out']);
    expect(p.steps.map((s) => [s.status, s.key])).toEqual([['hit', first.steps[0]!.key]]);
    const other = await plan(dir, ['--out', 'elsewhere']);
    expect(other.steps[0]!.status).toBe('miss');
    expect(other.steps[0]!.reason).toMatch(/^inputs out, out\/blobs, .* added$/);
  });

  it('refuses what run refuses: a bad build file (exit 2 at its position), an unknown target, an unknown format', async () => {
    const dir = await project(BUILD.replace('copy: app.conf', 'copy: missing.conf'));
    const res = await runCli(['plan', path.join(dir, 'build.yaml'), '--cache-dir', path.join(dir, 'cache')], { cwd: dir });
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/build\.yaml:6:26: app\/conf: copy source `missing.conf` does not exist/);
    const good = await project();
    const target = await runCli(['plan', path.join(good, 'build.yaml'), '--target', 'nope']);
    expect(target.exitCode).toBe(2);
    expect(target.stderr).toMatch(/--target nope: no such image/);
    const format = await runCli(['plan', path.join(good, 'build.yaml'), '--format', 'yaml']);
    expect(format.exitCode).toBe(2);
    expect(format.stderr).toMatch(/--format yaml: expected text, json, dot, mermaid/);
  });

  it('plans only the targets and what they need', async () => {
    const dir = await project();
    const p = await plan(dir, ['--target', 'web']);
    expect(p.images.map((i) => i.name)).toEqual(['app', 'web']);
    expect(p.steps.map((s) => `${s.image}/${s.id}`)).toEqual(['app/src', 'app/conf', 'app/lib', 'web/page']);
  });

  it('reads a base image from an OCI layout without importing it', async () => {
    const baseProject = await project();
    await build(baseProject);
    const dir = await project(`version: 1\nimages:\n  on-base:\n    from: oci:${path.join(baseProject, 'out')}:app\n    env: {A: "1"}\n    steps:\n      - {id: page, copy: page.html, to: /srv/}\n`);
    const p = await plan(dir);
    expect(p.steps.map((s) => [s.status, s.reason])).toEqual([['miss', 'no earlier build']]);
    expect(existsSync(path.join(dir, 'cache'))).toBe(false);
    const built = await build(dir);
    expect(built.steps[0]!.key).toBe(p.steps[0]!.key);
    const cache = path.join(dir, 'cache');
    const before = await listing(cache);
    expect((await plan(dir)).steps[0]!.status).toBe('hit');
    expect(await listing(cache)).toEqual(before);
  });

  it('runs as an unprivileged user over a cache it cannot write, and still says what hits', async () => {
    if (!ROOT) return; // needs root to switch users; as non-root every test above already is this one
    if (!existsSync(path.join(REPO, 'dist', 'build', 'plan-build.js'))) throw new Error('dist/ is not built: run `npm run build` (npm test does)');
    const dir = await project();
    await chmod(dir, 0o755);
    const first = await build(dir);
    await writeFile(path.join(dir, 'app.conf'), 'changed\n');
    const cache = path.join(dir, 'cache');
    const before = await listing(cache);
    const out = execFileSync(
      'setpriv',
      ['--reuid=65534', '--regid=65534', '--clear-groups', '--', 'node', path.join(REPO, 'bin', 'layergraph.js'), 'plan', path.join(dir, 'build.yaml'), '--cache-dir', cache, '--format', 'json'],
      { cwd: dir, encoding: 'utf8', env: { ...process.env, HOME: dir } },
    );
    const p = JSON.parse(out) as PlanJson;
    expect(statuses(p)['app/src']).toBe('hit');
    expect(statuses(p)['app/conf']).toBe('miss');
    expect(p.steps.find((s) => s.id === 'src')!.key).toBe(first.steps.find((s) => s.id === 'src')!.key);
    expect(await listing(cache)).toEqual(before);
  });
});

describe('layergraph plan with run steps', () => {
  const READY = ROOT && hasStaticBusybox() && hasTool('runc');

  it('keys run steps from the base config and the chain, runs nothing, mounts nothing, and agrees with the build', async () => {
    if (!READY) return;
    const dir = await tmpDir();
    const file = await busyboxContext(
      dir,
      `  app:\n    from: base\n    env: {GREETING: hello}\n    steps:\n      - {id: greet, run: "echo $GREETING > /greeting"}\n      - {id: conf, copy: app.conf, to: /etc/app.conf}\n      - {id: after, run: "cat /etc/app.conf > /copy"}\n`,
    );
    await writeFile(path.join(dir, 'app.conf'), 'one\n');
    const mounts = (): number => (execFileSync('cat', ['/proc/self/mountinfo'], { encoding: 'utf8' }).match(/overlay/g) ?? []).length;
    const p0 = await plan(dir);
    expect(statuses(p0)).toEqual({ 'base/busybox': 'miss', 'base/applets': 'miss', 'app/greet': 'miss', 'app/conf': 'miss', 'app/after': 'miss' });
    expect(existsSync(path.join(dir, 'cache'))).toBe(false);
    const b0 = await build(dir);
    expect(b0.steps.map((s) => s.key)).toEqual(p0.steps.map((s) => s.key));

    await writeFile(path.join(dir, 'app.conf'), 'two\n');
    await writeFile(file, (await readFile(file, 'utf8')).replace('GREETING: hello', 'GREETING: hi'));
    const cache = path.join(dir, 'cache');
    const before = await listing(cache);
    const m0 = mounts();
    const p1 = await plan(dir);
    expect(mounts()).toBe(m0);
    expect(await listing(cache)).toEqual(before); // no logs/, no records, no snapshots
    expect(p1.steps.map((s) => [s.id, s.status, s.reason])).toEqual([
      ['busybox', 'hit', ''],
      ['applets', 'hit', ''],
      ['greet', 'miss', 'definition changed: env'],
      ['conf', 'miss', 'input app.conf changed'],
      // the image's env is part of how every run step of it runs
      ['after', 'miss', 'definition changed: env'],
    ]);
    const b1 = await build(dir);
    expect(b1.steps.map((s) => [s.id, s.status, s.reason, s.key])).toEqual(p1.steps.map((s) => [s.id, s.status, s.reason, s.key]));
  });
});
