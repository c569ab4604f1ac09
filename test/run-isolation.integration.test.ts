/**
 * What a `run` step cannot reach, with runc and with the chroot fallback, as
 * root on a busybox base: the host's files (a marker in a temp dir and one in
 * the cache directory), other steps' layers (one committed by an earlier
 * build, one live in a step running beside it), the host's disks through a
 * device node it makes, the network under `network: none`, and the
 * environment and open files of the process that runs the build.
 *
 * The probing is done by the step itself (test/fixtures/isolation/probe.sh):
 * every way in it knows — the paths as they are, through /proc/<pid>/root and
 * cwd, `..` beyond /, the directories the mount table names, and a chroot
 * escape as root — and its output (a failing step's output is shown by the
 * CLI) says what it found. The same probe run under plain chroot, which is no
 * isolation, must find the markers: so a clean result means the walls held,
 * not that the probe was blind.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { chmod, copyFile, mkdir, mkdtemp, open, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { busyboxBuildFile, busyboxContext, hasStaticBusybox, hostBusybox } from './helpers/busybox.js';
import { runCli, type CliResult } from './helpers/cli.js';
import { DEFAULT_CAPS } from '../src/exec/oci-spec.js';
import { CAP_NUMBERS } from '../src/exec/pivot-exec.js';
import { hasTool, tool } from './helpers/tools.js';
import { mountsUnder } from './helpers/mounts.js';

const execFileP = promisify(execFile);

const ROOT = process.getuid?.() === 0;
const READY = ROOT && hasStaticBusybox();
const RUNTIMES = [
  { runtime: 'runc', ready: READY && hasTool('runc') },
  { runtime: 'chroot', ready: READY && hasTool('unshare') },
] as const;

/** The probe each step runs; see its header. */
const PROBE_FILE = fileURLToPath(new URL('./fixtures/isolation/probe.sh', import.meta.url));

let work: string;
let ctx: string;
/** Outside every image and cache: where the host's own marker lives. */
let hostDir: string;
const pair = () => `${randomBytes(6).toString('hex')}:${randomBytes(6).toString('hex')}`;
const joined = (p: string) => p.replace(':', '');
const HOST_PAIR = pair();

beforeAll(async () => {
  if (!READY) return;
  work = await mkdtemp(path.join(os.tmpdir(), 'lg-isolation-'));
  ctx = path.join(work, 'ctx');
  await busyboxContext(ctx);
  await copyFile(PROBE_FILE, path.join(ctx, 'probe.sh'));
  hostDir = await mkdtemp(path.join(os.tmpdir(), 'lg-iso-host-'));
  await writeFile(path.join(hostDir, 'secret.txt'), `${joined(HOST_PAIR)}\n`);
});

afterAll(async () => {
  if (!work) return;
  // Unmount whatever a failing test left (rm would reach through into it), then report it.
  const left = await mountsUnder(work);
  for (const m of left.sort((a, b) => b.length - a.length)) await tool('umount', ['-l', m]).catch(() => undefined);
  await rm(work, { recursive: true, force: true });
  await rm(hostDir, { recursive: true, force: true });
  expect(left, 'mounts this file left').toEqual([]);
});

describe.each(RUNTIMES)('a run step under $runtime', ({ runtime, ready }) => {
  const test = it.skipIf(!ready);
  const cache = () => path.join(work, runtime, 'cache');

  async function build(name: string, images: string, args: string[] = []): Promise<CliResult & { report: Report | undefined }> {
    const file = path.join(ctx, `${runtime}-${name}.yaml`);
    await writeFile(file, busyboxBuildFile(images));
    const reportFile = path.join(work, runtime, `${name}-report.json`);
    await mkdir(path.dirname(reportFile), { recursive: true });
    const out = path.join(work, runtime, 'out');
    const res = await runCli(['run', file, '--cache-dir', cache(), '--out', out, '--runtime', runtime, '--progress', 'plain', '--report', reportFile, ...args]);
    expect(res.stderr + res.stdout).not.toMatch(/unexpected error/);
    const report = await readFile(reportFile, 'utf8').then((s) => JSON.parse(s) as Report, () => undefined);
    return { ...res, report };
  }

  test("cannot read the host's files, the cache directory, or other steps' layers, committed or live", async () => {
    // A layer an earlier build committed: kept in the cache as a directory of plain files.
    const prevPair = pair();
    const prev = await build(
      'prev',
      `  prev:
    from: base
    steps:
      - id: leave
        env: {PAIR: "${prevPair}"}
        run: 'echo "\${PAIR%%:*}\${PAIR#*:}" > /prev-marker'
`,
    );
    expect(prev.exitCode, prev.stderr).toBe(0);
    expect(await hostFilesHolding(cache(), joined(prevPair)), 'the committed layer is in the cache, readable on the host').not.toEqual([]);

    const cachePair = pair();
    await writeFile(path.join(cache(), 'secret.txt'), `${joined(cachePair)}\n`);
    const livePair = pair();
    const port = await freePort();
    // `holder` writes its marker, then waits for `seeker` to knock twice (before and
    // after probing) on a port of the host's network: the marker is in holder's
    // upper, mounted and running, for the whole probe.
    const knock = `knock() { i=0; until nc 127.0.0.1 ${port} </dev/null 2>/dev/null; do i=$((i + 1)); [ $i -lt 300 ] || return 1; sleep 0.2; done; }`;
    const res = await build(
      'seek',
      `  seek:
    from: base
    steps:
      - id: probe
        copy: probe.sh
        to: /probe.sh
      - id: holder
        needs: [probe]
        network: host
        env: {PAIR: "${livePair}"}
        run: 'mkdir /held && echo "\${PAIR%%:*}\${PAIR#*:}" > /held/marker && timeout 60 nc -l -p ${port} </dev/null >/dev/null && timeout 60 nc -l -p ${port} </dev/null >/dev/null'
      - id: seeker
        needs: [probe]
        network: host
        env:
          NEEDLES: "${HOST_PAIR} ${cachePair} ${prevPair} ${livePair}"
          FILES: "${path.join(hostDir, 'secret.txt')} ${path.join(cache(), 'secret.txt')}"
          DIRS: "${hostDir} ${cache()}"
        run: '${knock}; knock || exit 9; sh /probe.sh; rc=$?; knock; exit $rc'
`,
      ['--jobs', '2'],
    );
    const said = linesOf(res.stderr, 'seek/seeker');
    expect(said.filter((l) => l.startsWith('LEAK'))).toEqual([]);
    expect(res.exitCode, res.stderr).toBe(0);
    expect(said).toContain('SELF-OK');
    expect(said).toContain('ESCAPE-PROBE-RAN');
    expect(said).toContain('probe: 0 leaks');
    expect(statusOf(res.report, 'seek', 'holder')).toBe('miss');
  });

  test('cannot open a disk through a device node it makes, in its root or in /dev', async (t) => {
    const disk = await openableDisk(cache());
    if (!disk) return t.skip('no block device here that root can open');
    const { major, minor } = disk;
    const res = await build(
      'mknod',
      `  dev:
    from: base
    steps:
      - id: mknod
        run: 'for n in /lg-disk /dev/lg-disk; do mknod $n b ${major} ${minor} || { echo "NO-MKNOD $n"; continue; }; if (exec 3<$n); then echo "OPENED $n"; else echo "DENIED $n"; fi; rm -f $n; done'
`,
    );
    expect(res.exitCode, res.stderr).toBe(0);
    expect(linesOf(res.stderr, 'dev/mknod').filter((l) => /^(OPENED|DENIED|NO-MKNOD) /.test(l))).toEqual(['DENIED /lg-disk', 'DENIED /dev/lg-disk']);
  });

  test('has only a loopback interface with network: none, and reaches no listener of the host', async () => {
    const accepted: string[] = [];
    const server = net.createServer((sock) => {
      accepted.push(sock.remoteAddress ?? '?');
      sock.destroy();
    });
    await new Promise<void>((resolve) => server.listen(0, '0.0.0.0', resolve));
    const port = (server.address() as net.AddressInfo).port;
    const external = externalAddress();
    const tryAt = (addr: string, what: string) => `if nc -w 3 ${addr} ${port} </dev/null; then echo REACHED-${what}; else echo unreachable-${what}; fi`;
    try {
      const res = await build(
        'net',
        `  net:
    from: base
    steps:
      - id: none
        run: 'echo "links: $(ls /sys/class/net)"; ip -o link | cut -d" " -f2,3; ${tryAt('127.0.0.1', 'loopback')}${external ? `; ${tryAt(external, 'external')}` : ''}'
      - id: host
        network: host
        run: '${tryAt('127.0.0.1', 'loopback')}'
`,
      );
      expect(res.exitCode, res.stderr).toBe(0);
      const none = linesOf(res.stderr, 'net/none');
      expect(none).toContain('links: lo');
      expect(none).toContain('lo: <LOOPBACK,UP,LOWER_UP>');
      expect(none).toContain('unreachable-loopback');
      if (external) expect(none).toContain('unreachable-external');
      expect(none.filter((l) => l.startsWith('REACHED'))).toEqual([]);
      // The same probe with the host's network gets through: it is not blind.
      expect(linesOf(res.stderr, 'net/host')).toContain('REACHED-loopback');
      expect(accepted).toHaveLength(1);
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });

  test('sees only the environment the build file gives it, in its order, and none of the host process', async () => {
    const secret = randomBytes(8).toString('hex');
    const saved = process.env.LAYERGRAPH_TEST_SECRET;
    process.env.LAYERGRAPH_TEST_SECRET = secret;
    try {
      const res = await build(
        'env',
        `  envs:
    from: base
    steps:
      - id: bare
        run: ["env"]
      - id: listed
        env: {ZED: "1", LAYERGRAPH_TEST_SECRET: listed-value, ALPHA: "a b"}
        run: ["/bin/env"]
`,
      );
      expect(res.exitCode, res.stderr).toBe(0);
      const defaultPath = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
      expect(linesOf(res.stderr, 'envs/bare')).toEqual([defaultPath, 'HOME=/']);
      expect(linesOf(res.stderr, 'envs/listed')).toEqual(['ZED=1', 'LAYERGRAPH_TEST_SECRET=listed-value', 'ALPHA=a b', defaultPath, 'HOME=/']);
      expect(res.stderr).not.toContain(secret);
    } finally {
      if (saved === undefined) delete process.env.LAYERGRAPH_TEST_SECRET;
      else process.env.LAYERGRAPH_TEST_SECRET = saved;
    }
  });

  test("has Docker's default capabilities as root, none effective as another user, and cannot mount", async () => {
    const res = await build(
      'caps',
      `  caps:
    from: base
    steps:
      - id: root
        run: 'grep -E "^Cap(Inh|Prm|Eff|Bnd|Amb):" /proc/self/status; if mount -t tmpfs none /mnt 2>/dev/null; then echo MOUNTED; umount /mnt; else echo NO-MOUNT; fi'
      - id: user
        user: "1000:1000"
        run: 'grep -E "^Cap(Inh|Prm|Eff|Bnd|Amb):" /proc/self/status'
`,
    );
    expect(res.exitCode, res.stderr).toBe(0);
    const mask = DEFAULT_CAPS.reduce((m, c) => m | (1n << BigInt(CAP_NUMBERS[c]!)), 0n);
    const hex = (n: bigint) => n.toString(16).padStart(16, '0');
    expect(linesOf(res.stderr, 'caps/root')).toEqual([
      'CapInh:\t0000000000000000',
      `CapPrm:\t${hex(mask)}`,
      `CapEff:\t${hex(mask)}`,
      `CapBnd:\t${hex(mask)}`,
      'CapAmb:\t0000000000000000',
      'NO-MOUNT',
    ]);
    expect(linesOf(res.stderr, 'caps/user')).toEqual([
      'CapInh:\t0000000000000000',
      'CapPrm:\t0000000000000000',
      'CapEff:\t0000000000000000',
      `CapBnd:\t${hex(mask)}`,
      'CapAmb:\t0000000000000000',
    ]);
  });

  test('starts with no open file but stdin, stdout and stderr', async () => {
    const res = await build(
      'fds',
      `  fds:
    from: base
    steps:
      - id: list
        run: ["/bin/ls", "/proc/self/fd"]
`,
    );
    expect(res.exitCode, res.stderr).toBe(0);
    // 3 is the directory ls reads.
    expect(linesOf(res.stderr, 'fds/list')).toEqual(['0', '1', '2', '3']);
  });
});

describe.skipIf(!READY || !hasTool('chroot'))('the probe', () => {
  it('finds the markers where a command is only chrooted (plain chroot, no namespaces)', async () => {
    const root = path.join(work, 'control-root');
    await mkdir(path.join(root, 'bin'), { recursive: true });
    await mkdir(path.join(root, 'tmp'));
    await chmod(path.join(root, 'tmp'), 0o1777);
    await execFileP('cp', [hostBusybox(), path.join(root, 'bin', 'busybox')]);
    await execFileP('chroot', [root, '/bin/busybox', '--install', '-s', '/bin']);
    await copyFile(PROBE_FILE, path.join(root, 'probe.sh'));
    const res = await execFileP('chroot', [root, '/bin/busybox', 'sh', '/probe.sh'], {
      env: { PATH: '/bin:/usr/sbin:/usr/bin:/sbin', NEEDLES: HOST_PAIR, FILES: path.join(hostDir, 'secret.txt'), DIRS: hostDir },
    }).then(
      (r) => ({ code: 0, out: r.stdout + r.stderr }),
      (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, out: `${e.stdout ?? ''}${e.stderr ?? ''}` }),
    );
    const lines = res.out.split('\n');
    expect(lines, res.out).toContain('SELF-OK');
    expect(lines, res.out).toContain('ESCAPE-PROBE-RAN');
    expect(lines, res.out).toContain(`LEAK chroot-escape read .${path.join(hostDir, 'secret.txt')}`);
    expect(lines, res.out).toContain(`LEAK chroot-escape found under .${hostDir}`);
    expect(res.code).not.toBe(0);
  });
});

interface Report {
  steps: Array<{ image: string; id: string; status: string }>;
}

const statusOf = (r: Report | undefined, image: string, id: string) => r?.steps.find((s) => s.image === image && s.id === id)?.status;

/** What step `image/step` printed, line by line (the plain progress prefixes each line with its name). */
function linesOf(stderr: string, step: string): string[] {
  const prefix = `${step} | `;
  return stderr
    .split('\n')
    .filter((l) => l.startsWith(prefix))
    .map((l) => l.slice(prefix.length));
}

/** Files under `dir` whose content holds `needle` (a host-side check that a marker is really there). */
async function hostFilesHolding(dir: string, needle: string): Promise<string[]> {
  const found: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!e.isFile()) continue;
    const p = path.join(e.parentPath, e.name);
    if ((await readFile(p).catch(() => Buffer.alloc(0))).includes(needle)) found.push(p);
  }
  return found;
}

/**
 * A disk of the host that root can open here: the one holding `dir` when it
 * is a block device, else a loop device (some sandboxes refuse the real disk
 * even to root). Undefined when there is none.
 */
async function openableDisk(dir: string): Promise<{ major: number; minor: number } | undefined> {
  const held = splitDev((await stat(dir)).dev);
  const devices: Array<{ file: string; major: number; minor: number }> = [];
  for (const name of await readdir('/dev')) {
    const st = await stat(path.join('/dev', name)).catch(() => undefined);
    if (st?.isBlockDevice()) devices.push({ file: path.join('/dev', name), ...splitDev(st.rdev) });
  }
  const ranked = [...devices.filter((d) => d.major === held.major && d.minor === held.minor), ...devices.filter((d) => d.major === 7)];
  for (const d of ranked) {
    const fh = await open(d.file, 'r').catch(() => undefined);
    if (!fh) continue;
    await fh.close();
    return { major: d.major, minor: d.minor };
  }
  return undefined;
}

/** Linux's dev_t encoding. */
function splitDev(dev: number): { major: number; minor: number } {
  const d = BigInt(dev);
  return { major: Number(((d >> 8n) & 0xfffn) | ((d >> 32n) & ~0xfffn)), minor: Number((d & 0xffn) | ((d >> 12n) & ~0xffn)) };
}

/** A port nothing listens on right now. */
async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** An IPv4 address of this host that is not loopback, if it has one. */
function externalAddress(): string | undefined {
  for (const addrs of Object.values(os.networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return undefined;
}

