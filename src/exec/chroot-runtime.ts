/**
 * The fallback where no OCI runtime is installed: util-linux `unshare` gives
 * the command new mount, pid, ipc and uts namespaces (and a network one for
 * `network: none`, with only loopback, up); a host shell script, pid 1 of
 * them, mounts the root on itself (nodev), then /proc, /dev, /sys, /tmp and
 * the /etc files inside it — those mounts live in the new mount namespace
 * only and vanish with it — and execs, with an empty environment, the Perl
 * program of pivot-exec.ts, which
 *
 *   pivot_root()s into the root and detaches the host's tree from the
 *   namespace, then takes the user's groups and gid, drops every capability
 *   outside Docker's default set from the bounding set and the inheritable
 *   set, takes the uid, and execs the command with its environment.
 *
 * So the command, pid 1 of its pid namespace, has no path to any host file:
 * `..` at / stays at /, and a chroot escape (CAP_SYS_CHROOT is in Docker's
 * set) ends at the same /, because the namespace has nothing above it. It
 * cannot mount (no CAP_SYS_ADMIN), and a device node it makes (CAP_MKNOD is
 * in the set) cannot be opened: the root, /dev and /tmp are nodev, and /dev's
 * few nodes are the host's, bound one by one. /proc's knobs are read-only and
 * its secrets masked, as runc does. What it still lacks against runc: no
 * seccomp filter, no cgroup limits, and the host's kernel interfaces that
 * /sys shows read-only.
 */
import { execFile } from 'node:child_process';
import { readFile, realpath, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { RuntimeError } from '../errors.js';
import { onForcedExit } from '../util/forced-exit.js';
import { secureJoin } from '../util/secure-join.js';
import { checkMountPoints } from './mount-stubs.js';
import { DEFAULT_CAPS } from './oci-spec.js';
import { HOSTNAME } from './container-setup.js';
import { knownArches, pivotExecArgs, STARTED } from './pivot-exec.js';
import { childPids, findOnPath, killQuietly, startMerged } from './runtime-process.js';
import type { PreparedRun, RunResult } from './run-in-root.js';

const run = promisify(execFile);

const RUNTIME = 'chroot';

export async function runChrooted(prep: PreparedRun): Promise<RunResult> {
  const tools = await chrootTools(prep.network);
  await checkMountPoints(prep.rootfs, RUNTIME);
  await checkExecutable(prep.rootfs, prep.argv[0]!, prep.env, prep.cwd);
  const setupLog = path.join(prep.scratchDir, 'chroot-setup.log');
  await writeFile(setupLog, '');
  const etcDir = path.dirname(prep.etcFiles[0]!.source);
  const rootfs = path.resolve(prep.rootfs);
  const pivotArgs = pivotExecArgs({ rootfs, cwd: prep.cwd, user: prep.user, caps: DEFAULT_CAPS, env: prep.env, argv: prep.argv });
  if (!pivotArgs) throw unknownArch();
  // Perl starts with no environment of the host's (PERL5OPT and the like): the command's is in its arguments.
  const command = [tools.env, '-i', '--', tools.perl, ...pivotArgs];
  const namespaces = ['--mount', '--pid', '--ipc', '--uts', ...(prep.network === 'none' ? ['--net'] : [])];
  const argv = [
    tools.unshare, ...namespaces, '--fork', '--kill-child=SIGKILL', '--propagation=private', '--',
    '/bin/sh', '-c', SETUP_SCRIPT, 'layergraph-setup', rootfs, etcDir, setupLog, HOSTNAME, tools.loopback ?? '', ...command,
  ];

  let aborted = false;
  // After an abort only unshare's complaint about its killed child would follow.
  const onOutput = (chunk: Buffer) => aborted || prep.onOutput(chunk);
  const proc = await startMerged(argv, onOutput).catch((err: Error) => {
    throw new RuntimeError(RUNTIME, `cannot start unshare: ${err.message}`, { cause: err });
  });
  // The namespace's init is unshare's child; killing it ends every process in the namespace.
  const killInit = () => childPids(proc.pid).forEach((pid) => killQuietly(pid, 'SIGKILL'));
  const unregister = onForcedExit(killInit);
  let done = false;
  const onAbort = async () => {
    aborted = true;
    // The child may not be forked yet: keep at it until unshare, which waits for it, is gone.
    while (!done) {
      killInit();
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  if (prep.signal?.aborted) void onAbort();
  else prep.signal?.addEventListener('abort', onAbort, { once: true });
  const exit = await proc.exited.finally(() => {
    done = true;
    prep.signal?.removeEventListener('abort', onAbort);
    unregister();
  });
  const result = { exitCode: exit.code ?? 128 + signalNumber(exit.signal), ...(exit.signal ? { signal: exit.signal } : {}) };
  if (aborted) return { ...result, aborted: true };
  const log = await readFile(setupLog, 'utf8');
  if (!log.includes(STARTED)) throw new RuntimeError(RUNTIME, log.trim() || `setting up the namespaces failed (exit code ${exit.code ?? exit.signal})`);
  return { ...result, aborted: false };
}

/**
 * $1 rootfs, $2 the directory of hosts/hostname/resolv.conf, $3 the setup
 * log, $4 the hostname, $5 `ip` or `ifconfig` to bring up loopback ('' to
 * keep the host's network), then the command (the pivot program). Runs as
 * pid 1 of the new namespaces, with the setup's own errors going to the log
 * and the command's stderr kept on fd 3 for it.
 */
const SETUP_SCRIPT = `set -eu
root=$1 etc=$2 log=$3 host=$4 lo=$5
shift 5
exec 3>&2 2>>"$log"
cd /
# A mount of its own, for pivot_root; nodev, so that a device node the
# command makes in it cannot be opened (there is no device cgroup here).
mount --bind "$root" "$root"
mount -o remount,bind,nodev "$root"
mount -t proc -o nosuid,noexec,nodev proc "$root/proc"
mount -t tmpfs -o nosuid,nodev,strictatime,mode=755,size=65536k tmpfs "$root/dev"
# The host's own nodes, bound one by one: /dev itself is nodev too.
for n in null zero full random urandom tty; do
  if [ -c "/dev/$n" ]; then
    : > "$root/dev/$n"
    mount --bind "/dev/$n" "$root/dev/$n"
  fi
done
mkdir -m 755 "$root/dev/pts" "$root/dev/shm" "$root/dev/mqueue"
mount -t devpts -o nosuid,noexec,newinstance,ptmxmode=0666,mode=0620,gid=5 devpts "$root/dev/pts"
mount -t tmpfs -o nosuid,noexec,nodev,mode=1777,size=65536k shm "$root/dev/shm"
mount -t mqueue -o nosuid,noexec,nodev mqueue "$root/dev/mqueue"
ln -s pts/ptmx "$root/dev/ptmx"
ln -s /proc/self/fd "$root/dev/fd"
ln -s /proc/self/fd/0 "$root/dev/stdin"
ln -s /proc/self/fd/1 "$root/dev/stdout"
ln -s /proc/self/fd/2 "$root/dev/stderr"
mount -t sysfs -o ro,nosuid,noexec,nodev sysfs "$root/sys"
mount -t tmpfs -o nosuid,nodev,mode=1777 tmpfs "$root/tmp"
for f in hosts hostname resolv.conf; do
  mount --bind "$etc/$f" "$root/etc/$f"
  mount -o remount,bind,ro,nosuid,nodev,noexec "$root/etc/$f"
done
echo "$host" > /proc/sys/kernel/hostname
case $lo in
  */ip) "$lo" link set lo up ;;
  */ifconfig) "$lo" lo up ;;
esac
# As runc's default spec does: the kernel's knobs read-only, its secrets masked.
for p in sys sysrq-trigger irq bus fs; do
  if [ -e "$root/proc/$p" ]; then
    mount --bind "$root/proc/$p" "$root/proc/$p"
    mount -o remount,bind,ro "$root/proc/$p"
  fi
done
for p in kcore keys timer_list sched_debug latency_stats timer_stats; do
  if [ -f "$root/proc/$p" ]; then mount --bind /dev/null "$root/proc/$p"; fi
done
exec "$@"
`;

interface ChrootTools {
  unshare: string;
  env: string;
  perl: string;
  /** `ip` or `ifconfig`, for a network of our own. */
  loopback?: string;
}

/** The host tools the fallback needs, or a RuntimeError naming what is missing. */
export async function chrootTools(network: 'none' | 'host'): Promise<ChrootTools> {
  const need = ['unshare', 'env', 'perl', 'mount'];
  const found = await Promise.all(need.map((n) => findOnPath(n)));
  const missing = need.filter((_, i) => !found[i]);
  if (missing.length) throw new RuntimeError(RUNTIME, `needs ${missing.join(', ')} on the host (util-linux, coreutils and perl)`);
  const [unshare, env, perl] = found as string[];
  if (!knownArches().includes(os.arch())) throw unknownArch();
  const help = await run(unshare!, ['--help']).then((r) => r.stdout, () => '');
  if (!help.includes('--kill-child')) throw new RuntimeError(RUNTIME, `${unshare} is too old: the chroot runtime needs util-linux 2.32 or later (unshare --kill-child)`);
  const tools: ChrootTools = { unshare: unshare!, env: env!, perl: perl! };
  if (network === 'none') {
    tools.loopback = (await findOnPath('ip')) ?? (await findOnPath('ifconfig'));
    if (!tools.loopback) throw new RuntimeError(RUNTIME, 'network: none needs `ip` (iproute2) or `ifconfig` on the host to bring up loopback');
  }
  return tools;
}

function unknownArch(): RuntimeError {
  return new RuntimeError(RUNTIME, `does not know the system calls of ${os.arch()} (only ${knownArches().join(', ')}); install runc or crun`);
}

/**
 * Finds `argv0` as execvp inside the root would, with the command's PATH: a
 * missing command is then the runtime's error (as runc reports it), not an
 * exit code 127 the command might have returned itself.
 */
async function checkExecutable(rootfs: string, argv0: string, env: string[], cwd: string): Promise<void> {
  const root = await realpath(rootfs);
  const searchPath = env.find((kv) => kv.startsWith('PATH='))?.slice(5) ?? '';
  const candidates = argv0.includes('/') ? [path.posix.resolve(cwd, argv0)] : searchPath.split(':').map((d) => path.posix.resolve(cwd, d || '.', argv0));
  for (const c of candidates) {
    const st = await stat(await secureJoin(root, c, { followLast: true })).catch(() => undefined);
    if (st?.isFile() && (st.mode & 0o111) !== 0) return;
  }
  const where = argv0.includes('/') ? 'no such executable file' : 'executable file not found in $PATH';
  throw new RuntimeError(RUNTIME, `exec: ${JSON.stringify(argv0)}: ${where}`);
}

function signalNumber(signal: NodeJS.Signals | null): number {
  if (!signal) return 0;
  const n = (os.constants.signals as Record<string, number>)[signal];
  return n ?? 0;
}
