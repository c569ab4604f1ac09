/**
 * runInRoot against real runtimes (runc, the chroot fallback, crun where it
 * starts) on a real overlay: a busybox root as a lower, the mount stubs as
 * the lowest lower, a fresh upper per test. What the command sees is checked
 * from inside; what it leaves is checked in the upper. Root only.
 */
import { execFileSync } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, readFile, readlink, readdir, rm, stat, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RuntimeError } from '../src/errors.js';
import { makeMountStubs, MOUNT_POINTS, pickRuntime, runInRoot, type RunSpec, type RuntimeName } from '../src/exec/run-in-root.js';
import { mountOverlay, mountsUnder, unmount } from '../src/snapshot/overlay-mount.js';
import { hasStaticBusybox, hostBusybox } from './helpers/busybox.js';
import { listAll } from './helpers/tmp.js';
import { hasTool } from './helpers/tools.js';

const isRoot = process.getuid?.() === 0;
const canRun = isRoot && hasStaticBusybox();

const APPLETS = ['sh', 'cat', 'echo', 'id', 'ls', 'pwd', 'sleep', 'true', 'hostname', 'grep', 'touch', 'wc'];

/** A busybox root with a user `app` (1000:1000, also in group `extra`) in its own passwd and group files. */
async function makeBusyboxRoot(dir: string): Promise<void> {
  await mkdir(path.join(dir, 'bin'), { recursive: true });
  await mkdir(path.join(dir, 'etc'));
  await copyFile(hostBusybox(), path.join(dir, 'bin', 'busybox'));
  await chmod(path.join(dir, 'bin', 'busybox'), 0o755);
  for (const applet of APPLETS) await symlink('busybox', path.join(dir, 'bin', applet));
  await writeFile(path.join(dir, 'etc', 'passwd'), 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n');
  await writeFile(path.join(dir, 'etc', 'group'), 'root:x:0:\napp:x:1000:\nextra:x:2000:app\n');
}

let base: string;
let image: string;
let stubs: string;

beforeAll(async () => {
  if (!canRun) return;
  base = await mkdtemp(path.join(os.tmpdir(), 'lg-run-in-root-'));
  image = path.join(base, 'image');
  stubs = path.join(base, 'stubs');
  await makeBusyboxRoot(image);
  await mkdir(stubs);
  await makeMountStubs(stubs);
});

afterAll(async () => {
  if (!canRun) return;
  // Nothing a runtime mounted may outlive the run (mounts in its namespaces die with them).
  expect(await mountsUnder(base)).toEqual([]);
  await rm(base, { recursive: true, force: true });
});

/** Whether crun can start a container here at all; why not, when it cannot. */
async function crunProblem(): Promise<string | undefined> {
  if (!canRun || !hasTool('crun')) return 'crun is not installed';
  const dir = await mkdtemp(path.join(os.tmpdir(), 'lg-crun-probe-'));
  try {
    await makeBusyboxRoot(path.join(dir, 'root'));
    await makeMountStubs(path.join(dir, 'root'));
    await mkdir(path.join(dir, 'scratch'));
    await runInRoot({ ...spec(path.join(dir, 'root'), path.join(dir, 'scratch'), 'crun'), argv: ['/bin/true'] });
    return undefined;
  } catch (err) {
    if (err instanceof RuntimeError) return err.detail;
    throw err;
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

function spec(rootfs: string, scratchDir: string, runtime: RuntimeName, output?: Buffer[]): RunSpec {
  return {
    rootfs,
    argv: ['/bin/sh', '-c', 'true'],
    env: [],
    cwd: '/',
    user: '',
    network: 'none',
    runtime,
    scratchDir,
    id: `lg-test-${process.pid}-${Math.random().toString(16).slice(2, 10)}`,
    onOutput: (chunk) => output?.push(chunk),
  };
}

interface Mounted {
  rootfs: string;
  upper: string;
  scratch: string;
  /** Runs a shell command; its merged output and result. */
  sh(cmd: string, opts?: Partial<RunSpec>): Promise<{ out: string; exitCode: number; aborted: boolean }>;
  run(opts: Partial<RunSpec>): Promise<{ out: string; exitCode: number; aborted: boolean }>;
}

/** A fresh overlay (image over stubs, empty upper) for `fn`, unmounted and removed afterwards. */
async function withOverlay(runtime: RuntimeName, fn: (m: Mounted) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(path.join(base, 'run-'));
  const d = (n: string) => path.join(dir, n);
  await Promise.all(['upper', 'work', 'rootfs'].map((n) => mkdir(d(n))));
  await mountOverlay({ lowers: [image, stubs], upper: d('upper'), work: d('work'), target: d('rootfs') });
  let runs = 0;
  const run: Mounted['run'] = async (opts) => {
    const chunks: Buffer[] = [];
    const scratch = d(`scratch-${runs++}`);
    await mkdir(scratch);
    const result = await runInRoot({ ...spec(d('rootfs'), scratch, runtime, chunks), ...opts });
    return { out: Buffer.concat(chunks).toString('utf8'), exitCode: result.exitCode, aborted: result.aborted };
  };
  try {
    await fn({ rootfs: d('rootfs'), upper: d('upper'), scratch: d('scratch-0'), run, sh: (cmd, opts) => run({ argv: ['/bin/sh', '-c', cmd], ...opts }) });
  } finally {
    await unmount(d('rootfs'));
    expect(await mountsUnder(dir)).toEqual([]);
    await rm(dir, { recursive: true, force: true });
  }
}

const crunSkip = isRoot ? await crunProblem() : 'needs root';
const runtimes: Array<{ runtime: RuntimeName; skip: string | undefined }> = [
  { runtime: 'runc', skip: canRun && hasTool('runc') ? undefined : 'runc is not installed' },
  { runtime: 'chroot', skip: canRun ? undefined : 'needs root and a static busybox' },
  { runtime: 'crun', skip: crunSkip },
];

describe('pickRuntime', () => {
  it('auto takes runc first; a named runtime must be installed', async () => {
    if (hasTool('runc')) expect(await pickRuntime('auto')).toBe('runc');
    const empty = await mkdtemp(path.join(os.tmpdir(), 'lg-empty-path-'));
    const saved = process.env.PATH;
    process.env.PATH = empty;
    try {
      await expect(pickRuntime('runc')).rejects.toThrow(/runc: runc is not installed/);
      await expect(pickRuntime('chroot')).rejects.toThrow(/chroot: needs unshare, env, perl, mount on the host/);
      await expect(pickRuntime('auto')).rejects.toBeInstanceOf(RuntimeError);
    } finally {
      process.env.PATH = saved;
      await rm(empty, { recursive: true });
    }
  });
});

describe.skipIf(!canRun)('makeMountStubs', () => {
  it('creates every mount point, root-owned, directories 0755 and files 0644', async () => {
    for (const point of MOUNT_POINTS) {
      const st = await stat(path.join(stubs, point.path));
      expect(st.isDirectory()).toBe(point.type === 'dir');
      expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([0, 0, point.type === 'dir' ? 0o755 : 0o644]);
    }
  });
});

describe.each(runtimes)('runInRoot with $runtime', ({ runtime, skip }) => {
  const test = it.skipIf(!canRun || skip !== undefined);
  if (skip !== undefined && canRun) it.skip(`skipped: ${skip}`, () => {});

  test('passes output through and returns a non-zero exit code', async () => {
    await withOverlay(runtime, async (m) => {
      const r = await m.sh('echo to-stdout; echo to-stderr >&2; exit 3');
      expect({ ...r, out: r.out.split('\n').sort() }).toEqual({ out: ['', 'to-stderr', 'to-stdout'], exitCode: 3, aborted: false });
    });
  });

  test('`true` leaves the upper empty, and so do writes to /tmp', async () => {
    await withOverlay(runtime, async (m) => {
      expect((await m.sh('true')).exitCode).toBe(0);
      expect(await listAll(m.upper)).toEqual([]);
      const r = await m.sh('echo x > /tmp/scratch && cat /tmp/scratch');
      expect(r.out).toBe('x\n');
      expect(await listAll(m.upper)).toEqual([]);
    });
  });

  test('sets the environment, adds PATH and HOME, creates the working directory', async () => {
    await withOverlay(runtime, async (m) => {
      const r = await m.sh('echo "$FOO|$PATH|$HOME"; pwd', { env: ['FOO=a b'], cwd: '/work/dir' });
      expect(r.out).toBe('a b|/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin|/root\n/work/dir\n');
      const kept = await m.sh('echo "$PATH"', { env: ['PATH=/bin'] });
      expect(kept.out).toBe('/bin\n');
      expect(await listAll(m.upper)).toEqual(['work', 'work/dir']);
      const st = await stat(path.join(m.upper, 'work', 'dir'));
      expect([st.uid, st.gid, st.mode & 0o7777]).toEqual([0, 0, 0o755]);
    });
  });

  test('runs as a user of the image, by name or by number', async () => {
    await withOverlay(runtime, async (m) => {
      const ids = 'echo "$(id -u) $(id -g) $(id -G) $HOME"';
      expect((await m.sh(ids, { user: 'app' })).out).toBe('1000 1000 1000 2000 /home/app\n');
      expect((await m.sh(ids, { user: '1000' })).out).toBe('1000 1000 1000 2000 /home/app\n');
      expect((await m.sh(ids, { user: 'app:extra' })).out).toBe('1000 2000 2000 /home/app\n');
      expect((await m.sh(ids, { user: '4242:7' })).out).toBe('4242 7 7 /\n');
      expect((await m.sh(ids, { user: '' })).out).toBe('0 0 0 /root\n');
      await expect(m.sh('true', { user: 'nobody-here' })).rejects.toThrow(/no user named "nobody-here"/);
      await expect(m.sh('true', { user: 'app:nogroup' })).rejects.toThrow(/no group named "nogroup"/);
    });
  });

  test('gives the command its own pid namespace, /dev, read-only /sys, /proc/sys and /etc files', async () => {
    await withOverlay(runtime, async (m) => {
      const r = await m.sh(
        [
          'echo "pid $$"',
          'ls /proc | grep -c "^[0-9]"',
          'ls /dev',
          'echo x > /dev/null && echo null-ok',
          'hostname; cat /etc/hostname',
          'grep -c "^127.0.0.1.*localhost" /etc/hosts',
          'grep -q " /sys ro," /proc/self/mountinfo && echo sys-ro',
          'echo x 2>/dev/null >> /etc/hosts || echo hosts-ro',
          'echo 1 2>/dev/null > /proc/sys/kernel/sysrq || echo proc-sys-ro',
        ].join('\n'),
      );
      const lines = r.out.split('\n');
      expect(lines[0]).toBe('pid 1');
      // This shell and the `ls`, the `grep` of the pipe; nothing of the host.
      expect(Number(lines[1])).toBeLessThanOrEqual(3);
      // The lines of `ls /dev`, between the count and the seven last lines (and the final newline).
      const dev = lines.slice(2, -8);
      expect(dev).toEqual(expect.arrayContaining(['fd', 'full', 'null', 'ptmx', 'pts', 'random', 'shm', 'stderr', 'stdin', 'stdout', 'tty', 'urandom', 'zero']));
      expect(r.out).toMatch(/null-ok\nlayergraph\nlayergraph\n1\nsys-ro\nhosts-ro\nproc-sys-ro\n$/);
      expect(await listAll(m.upper)).toEqual([]);
    });
  });

  test('network none has only loopback, up; network host sees the host interfaces', async () => {
    const interfaces = (procNetDev: string) =>
      procNetDev
        .split('\n')
        .filter((l) => l.includes(':'))
        .map((l) => l.split(':')[0]!.trim())
        .sort();
    await withOverlay(runtime, async (m) => {
      const none = await m.sh('cat /proc/net/dev; cat /sys/class/net/lo/flags');
      expect(interfaces(none.out)).toEqual(['lo']);
      // IFF_UP is bit 0 of the interface flags.
      expect(Number(none.out.trim().split('\n').at(-1)) & 1).toBe(1);
      const host = await m.sh('cat /proc/net/dev', { network: 'host' });
      expect(interfaces(host.out)).toEqual(interfaces(await readFile('/proc/net/dev', 'utf8')));
      expect(await listAll(m.upper)).toEqual([]);
    });
  });

  test('a command that cannot be started is a RuntimeError with the runtime message', async () => {
    await withOverlay(runtime, async (m) => {
      const err = await m.run({ argv: ['no-such-command'] }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RuntimeError);
      expect((err as RuntimeError).detail).toMatch(/no-such-command.*not found/);
    });
  });

  test('abort kills the command and leaves no container, process or mount', async () => {
    await withOverlay(runtime, async (m) => {
      const controller = new AbortController();
      const chunks: Buffer[] = [];
      const scratch = path.join(path.dirname(m.upper), 'scratch-abort');
      await mkdir(scratch);
      const running = runInRoot({
        ...spec(m.rootfs, scratch, runtime, chunks),
        argv: ['/bin/sh', '-c', 'echo started; sleep 60'],
        onOutput: (chunk) => {
          chunks.push(chunk);
          if (Buffer.concat(chunks).toString().includes('started')) controller.abort();
        },
        signal: controller.signal,
      });
      const result = await running;
      expect(result.aborted).toBe(true);
      expect(await processesRootedIn(m.rootfs)).toEqual([]);
      if (runtime !== 'chroot') {
        const list = execFileSync(runtime, [`--root=${path.join(scratch, 'state')}`, 'list', '-q'], { encoding: 'utf8' });
        expect(list.trim()).toBe('');
      }
    });
  }, 20_000);
});

/** Pids whose root directory is `rootfs` (a container's processes, seen from the host). */
async function processesRootedIn(rootfs: string): Promise<number[]> {
  const out: number[] = [];
  for (const name of await readdir('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    const root = await readlink(`/proc/${name}/root`).catch(() => '');
    if (root === rootfs || root.startsWith(`${rootfs}/`)) out.push(Number(name));
  }
  return out;
}
