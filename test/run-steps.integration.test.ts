/**
 * `run` steps end to end, as root, on a busybox base.
 *
 * The oracle shares no code with layergraph: umoci unpacks the image the run
 * steps were built on, plain `chroot` runs the same commands in order in a
 * copy of it, and the result must be the tree umoci unpacks from what we
 * built — paths, types, modes, owners, contents, symlink targets and hardlink
 * groups. The same build through the copy snapshotter and through the chroot
 * runtime must give the same digests; runc runs the result; parallel
 * branches, merge conflicts, cache hits, failures and Ctrl-C are checked from
 * the outside (the JSON report, the progress output, /proc).
 */
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmod, lstat, mkdir, mkdtemp, readFile, readdir, readlink, rm, symlink, utimes, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxBuildFile, busyboxContext, hasStaticBusybox } from './helpers/busybox.js';
import { REPO, runCli } from './helpers/cli.js';
import { runImage } from './helpers/runc.js';
import { hasTool, tool } from './helpers/tools.js';
import { mountsUnder } from './helpers/mounts.js';

const ROOT = process.getuid?.() === 0;
// Tools are only asked about where the tests can run at all (hasTool fails under CI=true).
const READY = ROOT && hasStaticBusybox() && hasTool('umoci') && hasTool('runc');

/** What the runtime provides while a command runs; none of it may end up in a layer. */
const RUNTIME_PATHS = ['/proc', '/dev', '/sys', '/tmp', '/etc/hosts', '/etc/hostname', '/etc/resolv.conf'];
const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Users the seed image's /etc/passwd defines, for the oracle's `chroot --userspec`. */
const USERS: Record<string, string> = { app: '1000:1000' };

interface RunDef {
  id: string;
  run: string;
  user?: string;
  workdir?: string;
}

/** The image the changes are made on: files, dirs and accounts for the steps of `app` to change. */
const SEED = [
  'mkdir -p /etc /opt/gone/deep /var/d /home/app /srv',
  'echo motd > /etc/motd',
  'echo old > /etc/old.conf',
  'echo g1 > /opt/gone/g1',
  'echo g2 > /opt/gone/deep/g2',
  'echo o1 > /var/d/old1',
  'echo o2 > /var/d/old2',
  "printf 'root:x:0:0:root:/root:/bin/sh\\napp:x:1000:1000::/home/app:/bin/sh\\n' > /etc/passwd",
  "printf 'root:x:0:\\napp:x:1000:\\n' > /etc/group",
  'chown 1000:1000 /home/app',
].join(' && ');

/** The steps of `app`, in order; each prints a marker so the progress output shows it ran. */
const APP_STEPS: RunDef[] = [
  { id: 'create', run: "mkdir -p /srv/data/sub /srv/empty && echo made-by-run > /srv/data/sub/a.txt && printf 'no newline' > /srv/top.txt" },
  { id: 'modify', run: "echo 'more motd' >> /etc/motd" },
  { id: 'delete-file', run: 'rm /etc/old.conf' },
  { id: 'delete-dir', run: 'rm -rf /opt/gone' },
  { id: 'replace-dir', run: 'rm -rf /var/d && mkdir /var/d && touch /var/d/new' },
  { id: 'chmod', run: 'chmod 0600 /etc/motd && chmod 0750 /srv/data && chmod 4755 /srv/top.txt && chmod 0700 /opt/files' },
  { id: 'symlink', run: 'ln -s sub/a.txt /srv/data/link && ln -s /nowhere /srv/dangling' },
  { id: 'hardlink', run: 'ln /srv/data/sub/a.txt /srv/data/hard && echo h > /srv/h1 && ln /srv/h1 /srv/h2' },
  { id: 'as-user', user: 'app', workdir: '/home/app', run: 'echo mine > owned.txt && mkdir cfg && id -u > cfg/uid' },
].map((s) => ({ ...s, run: `${s.run} && echo MARK-${s.id}` }));

function runStepYaml(s: RunDef, indent = '      '): string {
  const lines = [`- id: ${s.id}`, `  run: ${JSON.stringify(s.run)}`];
  if (s.user) lines.push(`  user: ${s.user}`);
  if (s.workdir) lines.push(`  workdir: ${s.workdir}`);
  return lines.map((l) => `${indent}${l}\n`).join('');
}

const MAIN_IMAGES = `  seed:
    from: base
    steps:
      - id: files
        copy: files/
        to: /opt/files/
        chown: "1000:1000"
      - id: seed
        run: ${JSON.stringify(SEED)}
  app:
    from: seed
    env: {GREETING: hello}
    cmd: ["/bin/sh", "-c", "cat /srv/data/sub/a.txt; echo $GREETING from $(id -un)"]
    steps:
${APP_STEPS.map((s) => runStepYaml(s)).join('')}`;

interface Report {
  images: Array<{ name: string; manifestDigest: string }>;
  steps: Array<{
    image: string;
    id: string;
    status: string;
    reason: string;
    key: string;
    startMs: number;
    durationMs: number;
    layer: { digest: string; diffId: string; size: number } | null;
  }>;
  merges: Array<{ image: string; path: string; steps: [string, string]; winner: string }>;
  execution?: { snapshotter: string; runtime: string };
}

interface Built {
  exitCode: number;
  stdout: string;
  stderr: string;
  report: Report | undefined;
}

let work: string;
let ctx: string;
/** The cache and layout of the main build, which most tests build on. */
let cache: string;
let out: string;
let first: Built;

/** Build `file` (a build file name in the context) with plain progress and a JSON report. */
async function build(file: string, opts: { cache?: string; out?: string; args?: string[] } = {}): Promise<Built> {
  const reportFile = path.join(work, `report-${randomBytes(4).toString('hex')}.json`);
  const res = await runCli([
    'run',
    path.join(ctx, file),
    '--cache-dir',
    opts.cache ?? cache,
    '--out',
    opts.out ?? out,
    '--report',
    reportFile,
    '--progress',
    'plain',
    ...(opts.args ?? []),
  ]);
  expect(res.stderr + res.stdout).not.toMatch(/unexpected error/);
  const report = await readFile(reportFile, 'utf8').then(
    (s) => JSON.parse(s) as Report,
    () => undefined,
  );
  return { ...res, report };
}

const statuses = (r: Report | undefined): Record<string, string> => Object.fromEntries((r?.steps ?? []).map((s) => [`${s.image}/${s.id}`, s.status]));
const digests = (r: Report | undefined): Record<string, string> => Object.fromEntries((r?.images ?? []).map((i) => [i.name, i.manifestDigest]));
const layers = (r: Report | undefined): Record<string, string | null> =>
  Object.fromEntries((r?.steps ?? []).map((s) => [`${s.image}/${s.id}`, s.layer?.digest ?? null]));
const stepOf = (r: Report | undefined, image: string, id: string) => r?.steps.find((s) => s.image === image && s.id === id);

/** The entries of a layer blob of `layout`, as tar lists them. */
async function layerEntries(layout: string, digest: string): Promise<string[]> {
  const list = await tool('tar', ['-tf', path.join(layout, 'blobs', 'sha256', digest.slice('sha256:'.length))]);
  return list
    .split('\n')
    .filter(Boolean)
    .map((e) => e.replace(/^\.?\//, ''));
}

interface Node {
  type: 'file' | 'dir' | 'symlink' | 'other';
  mode: number;
  uid: number;
  gid: number;
  content?: string;
  target?: string;
  /** Every path of the tree that is the same inode, for a file with several links. */
  links?: string[];
}

/** Everything under `root` that a layer can express; mtimes left out (layers pin them). */
async function snapshotTree(root: string): Promise<Record<string, Node>> {
  const out: Record<string, Node> = {};
  const inodes = new Map<number, string[]>();
  async function visit(abs: string, rel: string): Promise<void> {
    for (const name of (await readdir(abs)).sort()) {
      const a = path.join(abs, name);
      const p = `${rel}/${name}`;
      const st = await lstat(a);
      const base = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
      if (st.isSymbolicLink()) out[p] = { type: 'symlink', ...base, target: await readlink(a) };
      else if (st.isDirectory()) {
        out[p] = { type: 'dir', ...base };
        await visit(a, p);
      } else if (st.isFile()) {
        const data = await readFile(a);
        const content = data.length <= 4096 ? data.toString('utf8') : `sha256:${createHash('sha256').update(data).digest('hex')}`;
        out[p] = { type: 'file', ...base, content };
        if (st.nlink > 1) inodes.set(st.ino, [...(inodes.get(st.ino) ?? []), p]);
      } else out[p] = { type: 'other', ...base, content: `rdev ${st.rdev}` };
    }
  }
  await visit(root, '');
  for (const group of inodes.values()) for (const p of group) out[p]!.links = [...group].sort();
  return out;
}

const runtimeProvided = (tree: Record<string, Node>): string[] =>
  Object.keys(tree).filter((p) => RUNTIME_PATHS.some((r) => p === r || p.startsWith(`${r}/`)));

const wait = (ms: number) => new Promise((r) => setTimeout(r, ms));

beforeAll(async () => {
  if (!READY) return;
  work = await mkdtemp(path.join(os.tmpdir(), 'lg-runsteps-'));
  ctx = path.join(work, 'ctx');
  cache = path.join(work, 'cache');
  out = path.join(work, 'out');
  await busyboxContext(ctx, MAIN_IMAGES);
  await mkdir(path.join(ctx, 'files', 'nested'), { recursive: true });
  await writeFile(path.join(ctx, 'files', 'one.txt'), 'one\n');
  await writeFile(path.join(ctx, 'files', 'nested', 'two.txt'), 'two\n');
  first = await build('build.yaml', { args: ['--snapshotter', 'overlay', '--runtime', 'runc', '--jobs', '2'] });
});

afterAll(async () => {
  if (!work) return;
  // Whatever a failing test left mounted is unmounted before anything is removed
  // (rm would otherwise reach through into the mounted layers), then reported.
  const left = await mountsUnder(work);
  for (const m of left.sort((a, b) => b.length - a.length)) await tool('umount', ['-l', m]).catch(() => undefined);
  await rm(work, { recursive: true, force: true });
  expect(left, 'mounts this file left under os.tmpdir()').toEqual([]);
});

describe.skipIf(!READY)('run steps', () => {
  it('builds the images', () => {
    expect(first.exitCode, first.stderr + first.stdout).toBe(0);
    expect(first.report!.execution).toEqual({ snapshotter: 'overlay', runtime: 'runc' });
    expect(new Set(first.report!.steps.map((s) => s.status))).toEqual(new Set(['miss']));
    // the commands' output streams through the progress lines
    for (const s of APP_STEPS) expect(first.stderr).toContain(`app/${s.id} | MARK-${s.id}`);
  });

  it('gives the tree plain chroot gives when it runs the same commands on the unpacked base', async () => {
    const built = path.join(work, 'oracle-built');
    await tool('umoci', ['unpack', '--image', `${out}:app`, built]);
    const seed = path.join(work, 'oracle-seed');
    await tool('umoci', ['unpack', '--image', `${out}:seed`, seed]);
    const oracle = path.join(work, 'oracle-rootfs');
    await tool('cp', ['-a', path.join(seed, 'rootfs'), oracle]);
    for (const s of APP_STEPS) {
      const user = s.user ? [`--userspec=${USERS[s.user]}`] : [];
      const script = `umask 022; ${s.workdir ? `cd ${s.workdir} && ` : ''}${s.run}`;
      const said = await tool('env', ['-i', DEFAULT_PATH, 'chroot', ...user, oracle, '/bin/sh', '-c', script]);
      expect(said).toBe(`MARK-${s.id}\n`);
    }
    const ours = await snapshotTree(path.join(built, 'rootfs'));
    const theirs = await snapshotTree(oracle);
    // The runtime's mounts (/proc, /dev, /tmp, /etc/hosts…) never reach a layer; plain chroot makes none.
    expect(runtimeProvided(ours)).toEqual([]);
    expect(runtimeProvided(theirs)).toEqual([]);
    expect(ours).toEqual(theirs);
    // and the oracle is not trivially equal: the changes are there
    expect(theirs['/etc/old.conf']).toBeUndefined();
    expect(theirs['/opt/gone']).toBeUndefined();
    expect(Object.keys(theirs).filter((p) => p.startsWith('/var/d/'))).toEqual(['/var/d/new']);
    expect(theirs['/srv/data/hard']?.links).toEqual(['/srv/data/hard', '/srv/data/sub/a.txt']);
    expect(theirs['/home/app/owned.txt']).toMatchObject({ uid: 1000, gid: 1000, content: 'mine\n' });
  });

  it('writes deletions as whiteouts and a replaced directory as opaque', async () => {
    const entriesOf = (id: string) => layerEntries(out, stepOf(first.report, 'app', id)!.layer!.digest);
    expect(await entriesOf('delete-file')).toContain('etc/.wh.old.conf');
    const delDir = await entriesOf('delete-dir');
    expect(delDir).toContain('opt/.wh.gone');
    expect(delDir.filter((e) => e.startsWith('opt/gone'))).toEqual([]);
    const replaced = await entriesOf('replace-dir');
    expect(replaced).toContain('var/d/.wh..wh..opq');
    expect(replaced).toContain('var/d/new');
    expect(replaced.filter((e) => /\.wh\.old/.test(e))).toEqual([]);
    // a hardlink to a file of a lower layer: the file is copied up into the layer with its new name
    const linked = await entriesOf('hardlink');
    expect(linked).toEqual(expect.arrayContaining(['srv/data/sub/a.txt', 'srv/data/hard', 'srv/h1', 'srv/h2']));
  });

  it('gives the same digests with the copy snapshotter, and with the chroot runtime', async () => {
    for (const [snapshotter, runtime] of [
      ['copy', 'runc'],
      ['overlay', 'chroot'],
    ] as const) {
      const dir = path.join(work, `${snapshotter}-${runtime}`);
      const res = await build('build.yaml', {
        cache: path.join(dir, 'cache'),
        out: path.join(dir, 'out'),
        args: ['--snapshotter', snapshotter, '--runtime', runtime],
      });
      expect(res.exitCode, res.stderr + res.stdout).toBe(0);
      expect(res.report!.execution).toEqual({ snapshotter, runtime });
      expect({ snapshotter, runtime, layers: layers(res.report) }).toEqual({ snapshotter, runtime, layers: layers(first.report) });
      expect(digests(res.report)).toEqual(digests(first.report));
    }
  });

  it('runs with runc: the image cmd prints what run steps made', async () => {
    const res = await runImage(out, 'app', path.join(work, 'runc-app'));
    expect(res, res.stderr).toMatchObject({ exitCode: 0, stdout: 'made-by-run\nhello from root\n' });
  });

  it('hits every step on a second run and runs no command', async () => {
    const again = await build('build.yaml', { args: ['--snapshotter', 'overlay', '--runtime', 'runc'] });
    expect(again.exitCode, again.stderr).toBe(0);
    expect(Object.values(statuses(again.report)).every((s) => s === 'hit'), JSON.stringify(statuses(again.report))).toBe(true);
    expect(again.stderr).not.toMatch(/MARK-/);
    expect(again.stderr).not.toMatch(/^\S+\/\S+ \| /m);
    expect(digests(again.report)).toEqual(digests(first.report));
  });

  it('runs steps that need the same step side by side, and keeps both layers', async () => {
    await writeFile(
      path.join(ctx, 'parallel.yaml'),
      busyboxBuildFile(`  par:
    from: base
    steps:
      - id: fork
        run: mkdir /par
      - id: left
        needs: [fork]
        run: sleep 1 && echo L > /par/left
      - id: right
        needs: [fork]
        run: sleep 1 && echo R > /par/right
`),
    );
    const res = await build('parallel.yaml', { args: ['--jobs', '2'] });
    expect(res.exitCode, res.stderr + res.stdout).toBe(0);
    const left = stepOf(res.report, 'par', 'left')!;
    const right = stepOf(res.report, 'par', 'right')!;
    expect([left.status, right.status]).toEqual(['miss', 'miss']);
    const overlap = left.startMs < right.startMs + right.durationMs && right.startMs < left.startMs + left.durationMs;
    expect(overlap, JSON.stringify({ left, right })).toBe(true);
    const bundle = path.join(work, 'par-bundle');
    await tool('umoci', ['unpack', '--image', `${out}:par`, bundle]);
    expect(await readFile(path.join(bundle, 'rootfs/par/left'), 'utf8')).toBe('L\n');
    expect(await readFile(path.join(bundle, 'rootfs/par/right'), 'utf8')).toBe('R\n');
  });

  it('fails when unordered steps write the same path, unless `merge: declared-order` lets the later one win', async () => {
    const clash = (merge: string) =>
      busyboxBuildFile(`  clash:
    from: base${merge}
    steps:
      - id: prep
        run: mkdir /conf
      - id: writer-a
        needs: [prep]
        run: echo from-a > /conf/app.conf
      - id: writer-b
        needs: [prep]
        run: echo from-b > /conf/app.conf
`);
    await writeFile(path.join(ctx, 'clash.yaml'), clash(''));
    const failed = await build('clash.yaml');
    expect(failed.exitCode, failed.stderr + failed.stdout).toBe(1);
    expect(failed.stderr).toMatch(/\/conf\/app\.conf/);
    expect(failed.stderr).toMatch(/writer-a/);
    expect(failed.stderr).toMatch(/writer-b/);

    await writeFile(path.join(ctx, 'clash.yaml'), clash('\n    merge: declared-order'));
    const res = await build('clash.yaml');
    expect(res.exitCode, res.stderr + res.stdout).toBe(0);
    expect(res.report!.merges).toEqual([{ image: 'clash', path: '/conf/app.conf', steps: ['writer-a', 'writer-b'], winner: 'writer-b' }]);
    const bundle = path.join(work, 'clash-bundle');
    await tool('umoci', ['unpack', '--image', `${out}:clash`, bundle]);
    expect(await readFile(path.join(bundle, 'rootfs/conf/app.conf'), 'utf8')).toBe('from-b\n');
  });

  it('shows a run step the same tree on a lower written from a copy’s sources as on one unpacked from its blob', async () => {
    await mkdir(path.join(ctx, 'lowertree', 'sub', 'deep'), { recursive: true });
    await writeFile(path.join(ctx, 'lowertree', 'a.txt'), 'a\n');
    await writeFile(path.join(ctx, 'lowertree', 'sub', 'run.sh'), '#!/bin/sh\n', { mode: 0o4755 });
    await writeFile(path.join(ctx, 'lowertree', 'sub', 'deep', 'empty'), '');
    await symlink('../a.txt', path.join(ctx, 'lowertree', 'sub', 'link'));
    await chmod(path.join(ctx, 'lowertree', 'sub', 'run.sh'), 0o4755);
    await chmod(path.join(ctx, 'lowertree', 'sub', 'deep'), 0o750);
    // Older than the build, as a checked-out tree is: only then is a lower written from the sources.
    const hourAgo = new Date(Date.now() - 3_600_000);
    for (const f of ['a.txt', 'sub/run.sh', 'sub/deep/empty']) await utimes(path.join(ctx, 'lowertree', f), hourAgo, hourAgo);
    await writeFile(
      path.join(ctx, 'lower.yaml'),
      busyboxBuildFile(`  lower:
    from: base
    steps:
      - id: files
        copy: lowertree/
        to: /app/
        chown: "1000:1001"
      - id: list
        run: "find /app | sort | while read f; do stat -c '%n %f %u %g %s %Y %h' \\"$f\\"; done > /listing"
`),
    );
    const written = await build('lower.yaml', { cache: path.join(work, 'lower-cache-a'), out: path.join(work, 'lower-out-a') });
    expect(written.exitCode, written.stderr + written.stdout).toBe(0);
    const unpacked = await build('lower.yaml', { cache: path.join(work, 'lower-cache-b'), out: path.join(work, 'lower-out-b'), args: ['--snapshotter', 'copy'] });
    expect(unpacked.exitCode, unpacked.stderr + unpacked.stdout).toBe(0);
    expect(stepOf(written.report, 'lower', 'list')!.layer).toEqual(stepOf(unpacked.report, 'lower', 'list')!.layer);
    expect(digests(written.report)).toEqual(digests(unpacked.report));
    const bundle = path.join(work, 'lower-bundle');
    await tool('umoci', ['unpack', '--image', `${path.join(work, 'lower-out-a')}:lower`, bundle]);
    const listing = await readFile(path.join(bundle, 'rootfs/listing'), 'utf8');
    expect(listing, listing).toMatch(/^\/app\/sub\/run\.sh 89ed 1000 1001 10 0 1$/m); // 0104755: setuid kept; time 0; one link
    expect(listing, listing).toMatch(/^\/app\/sub\/deep 41e8 1000 1001 /m); // 0750 directory
    // The written lower is the snapshot the step mounted: it is there, stamped.
    const layersDir = path.join(work, 'lower-cache-a', 'snapshots', 'layers');
    const filesLayer = stepOf(written.report, 'lower', 'files')!.layer!.diffId.slice('sha256:'.length);
    expect(await readdir(layersDir)).toEqual(expect.arrayContaining([filesLayer, `${filesLayer}.stamp`]));
  });

  it('builds on two identical layers (a step that rewrites what the one below it wrote)', async () => {
    await writeFile(
      path.join(ctx, 'same.yaml'),
      busyboxBuildFile(`  same:
    from: base
    steps:
      - id: first
        run: echo x > /f
      - id: again
        run: echo x > /f
      - id: above
        run: cat /f > /g
`),
    );
    const res = await build('same.yaml');
    expect(res.exitCode, res.stderr + res.stdout).toBe(0);
    expect(stepOf(res.report, 'same', 'again')!.layer!.diffId).toBe(stepOf(res.report, 'same', 'first')!.layer!.diffId);
    const bundle = path.join(work, 'same-bundle');
    await tool('umoci', ['unpack', '--image', `${out}:same`, bundle]);
    expect(await readFile(path.join(bundle, 'rootfs/g'), 'utf8')).toBe('x\n');
  });

  it('gives a step the same files below it whether its lower was kept from the upper or unpacked from the blob', async () => {
    // `ls --full-time` makes every mtime and size below part of the layer.
    await writeFile(
      path.join(ctx, 'kept.yaml'),
      busyboxBuildFile(`  kept:
    from: base
    steps:
      - id: below
        run: mkdir /data && echo hi > /data/a && mkfifo /data/fifo
      - id: above
        run: ls -l --full-time /data /bin/sh > /listing
`),
    );
    const keptCache = path.join(work, 'kept-cache');
    const kept = await build('kept.yaml', { cache: keptCache, out: path.join(work, 'kept-out1') });
    expect(kept.exitCode, kept.stderr + kept.stdout).toBe(0);
    // Another machine: the layer below is in the cache, its snapshot is not.
    await rm(path.join(keptCache, 'snapshots', 'layers'), { recursive: true, force: true });
    const above = stepOf(kept.report, 'kept', 'above')!;
    await rm(path.join(keptCache, 'records', `${above.key}.json`));
    const unpacked = await build('kept.yaml', { cache: keptCache, out: path.join(work, 'kept-out2') });
    expect(statuses(unpacked.report)['kept/above']).toBe('miss');
    expect(stepOf(unpacked.report, 'kept', 'above')!.layer!.digest).toBe(above.layer!.digest);
  });

  it('sees a parallel step changing the mode of a directory the other writes into as a conflict', async () => {
    await writeFile(
      path.join(ctx, 'dirmode.yaml'),
      busyboxBuildFile(`  dirmode:
    from: base
    steps:
      - id: mk
        run: mkdir -p /srv/shared && chmod 755 /srv/shared
      - id: lock
        needs: [mk]
        run: chmod 700 /srv/shared
      - id: fill
        needs: [mk]
        run: touch /srv/shared/x
`),
    );
    const res = await build('dirmode.yaml');
    expect(res.exitCode).toBe(1);
    expect(res.stderr).toMatch(/\/srv\/shared: changed by both `lock` and `fill`/);
  });

  it('fails a build on a failing command, shows its output and code, and leaves a usable cache', async () => {
    const broken = (cmd: string) =>
      busyboxBuildFile(`  broken:
    from: base
    steps:
      - id: before
        run: echo one > /one
      - id: bad
        run: ${JSON.stringify(cmd)}
`);
    await writeFile(path.join(ctx, 'broken.yaml'), broken('echo boom; exit 3'));
    const res = await build('broken.yaml');
    expect(res.exitCode, res.stderr + res.stdout).toBe(1);
    expect(res.stderr).toMatch(/boom/);
    expect(res.stderr).toMatch(/code 3/);
    expect(stepOf(res.report, 'broken', 'bad')?.status).toBe('failed');
    expect(await mountsUnder(cache)).toEqual([]);

    await writeFile(path.join(ctx, 'broken.yaml'), broken('echo fixed > /fixed'));
    const fixed = await build('broken.yaml');
    expect(fixed.exitCode, fixed.stderr + fixed.stdout).toBe(0);
    expect(statuses(fixed.report)).toEqual({
      'base/busybox': 'hit',
      'base/applets': 'hit',
      'broken/before': 'hit',
      'broken/bad': 'miss',
    });
  });

  it('stops on SIGINT: exits 130, leaves no mount, no container and no process', async () => {
    const token = randomBytes(8).toString('hex');
    await writeFile(
      path.join(ctx, 'slow.yaml'),
      busyboxBuildFile(`  slow:
    from: base
    steps:
      - id: sleeper
        env: {LG_TEST_TOKEN: "${token}"}
        run: echo started; sleep 30
`),
    );
    const args = ['run', path.join(ctx, 'slow.yaml'), '--cache-dir', cache, '--out', out, '--runtime', 'runc', '--progress', 'plain'];
    const child = spawn('node', [path.join(REPO, 'bin', 'layergraph.js'), ...args], { cwd: work });
    const containerId = `layergraph-${child.pid}-`;
    let stderr = '';
    const closed = new Promise<number | null>((resolve) => child.on('close', resolve));
    const started = new Promise<boolean>((resolve) => {
      child.stderr.on('data', (d: Buffer) => {
        stderr += d.toString();
        if (stderr.includes('slow/sleeper | started')) resolve(true);
      });
      void closed.then(() => resolve(false));
    });
    try {
      expect(await started, stderr).toBe(true);
      // What must be gone afterwards is there while the command runs.
      expect(await processesWith(token)).not.toEqual([]);
      expect(await findNamed('/sys/fs/cgroup', containerId, 6)).not.toEqual([]);
      child.kill('SIGINT');
      // "Within a few seconds": still running 10 s after Ctrl-C means the command was not stopped.
      const code = await Promise.race([closed, wait(10_000).then(() => 'still running')]);
      expect(code, stderr).toBe(130);
    } finally {
      child.kill('SIGKILL');
      await closed;
    }
    expect(await mountsUnder(cache)).toEqual([]);
    const containers = await tool('runc', ['list', '-q']);
    expect(containers.split('\n').filter((id) => id.startsWith(containerId))).toEqual([]);
    // layergraph keeps runc's state in its run's temp dir (so `runc list` above never sees it):
    // that is gone, and so are the cgroups runc made for the container.
    expect(await readdir(path.join(cache, 'tmp'))).toEqual([]);
    expect(await findNamed('/sys/fs/cgroup', containerId, 6)).toEqual([]);
    // The command's processes are gone (a moment for the kernel to reap a killed pid namespace).
    let alive = await processesWith(token);
    for (let i = 0; i < 20 && alive.length; i++) {
      await wait(100);
      alive = await processesWith(token);
    }
    expect(alive).toEqual([]);
  });
});

/** Directories under `dir` (at most `depth` deep) whose name starts with `prefix`. */
async function findNamed(dir: string, prefix: string, depth: number): Promise<string[]> {
  const found: string[] = [];
  const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
  for (const e of entries) {
    if (!e.isDirectory()) continue;
    const p = path.join(dir, e.name);
    if (e.name.startsWith(prefix)) found.push(p);
    else if (depth > 1) found.push(...(await findNamed(p, prefix, depth - 1)));
  }
  return found;
}

/** Pids whose environment holds `token`. */
async function processesWith(token: string): Promise<string[]> {
  const found: string[] = [];
  for (const pid of await readdir('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    const env = await readFile(`/proc/${pid}/environ`, 'utf8').catch(() => '');
    if (env.includes(token)) found.push(`${pid}: ${(await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).replace(/\0/g, ' ')}`);
  }
  return found;
}
