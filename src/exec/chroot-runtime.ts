/**
 * The fallback where no OCI runtime is installed: util-linux `unshare` gives
 * the command new mount, pid, ipc and uts namespaces (and a network one for
 * `network: none`); a host shell script mounts /proc, /dev, /sys, /tmp and
 * the /etc files inside the root — those mounts live in the new mount
 * namespace only and vanish with it — then execs
 *
 *   env -i ENV… setpriv (gid, groups, capabilities) unshare --root --wd [--setuid] ARGV…
 *
 * Host tools do everything up to the chroot; the inner `unshare` changes
 * root and working directory, drops to the user last (which also drops the
 * capabilities of a non-root user, as Docker does) and execs the command,
 * which is pid 1 of its namespace. /proc's knobs are read-only and its
 * secrets masked, as runc does; but there is no seccomp, no device cgroup,
 * and a chroot keeps CAP_SYS_CHROOT, with which a root command can climb out
 * of it: this isolates a build, it is not a sandbox (runc is).
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
import { childPids, findOnPath, killQuietly, startMerged } from './runtime-process.js';
import type { PreparedRun, RunResult } from './run-in-root.js';

const run = promisify(execFile);

const RUNTIME = 'chroot';

/** Written to the setup log as the script's last act, so a failure before it is the setup's, not the command's. */
const STARTED = 'layergraph: starting command';

export async function runChrooted(prep: PreparedRun): Promise<RunResult> {
  const tools = await chrootTools(prep.network);
  await checkMountPoints(prep.rootfs, RUNTIME);
  await checkExecutable(prep.rootfs, prep.argv[0]!, prep.env, prep.cwd);
  const setupLog = path.join(prep.scratchDir, 'chroot-setup.log');
  await writeFile(setupLog, '');
  const etcDir = path.dirname(prep.etcFiles[0]!.source);
  const u = prep.user;
  const caps = DEFAULT_CAPS.map((c) => `+${c.slice('CAP_'.length).toLowerCase()}`).join(',');
  const command = [
    tools.env, '-i', '--', ...prep.env,
    tools.setpriv, `--regid=${u.gid}`, ...(u.additionalGids.length ? [`--groups=${u.additionalGids.join(',')}`] : ['--clear-groups']),
    `--bounding-set=-all,${caps}`, '--inh-caps=-all', '--',
    tools.unshare, `--root=${prep.rootfs}`, `--wd=${prep.cwd}`, ...(u.uid !== 0 ? [`--setuid=${u.uid}`] : []), '--',
    ...prep.argv,
  ];
  const namespaces = ['--mount', '--pid', '--ipc', '--uts', ...(prep.network === 'none' ? ['--net'] : [])];
  const argv = [
    tools.unshare, ...namespaces, '--fork', '--kill-child=SIGKILL', '--propagation=private', '--',
    '/bin/sh', '-c', SETUP_SCRIPT, 'layergraph-setup', prep.rootfs, etcDir, setupLog, HOSTNAME, tools.loopback ?? '', ...command,
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
 * keep the host's network), then the command. Runs as pid 1 of the new
 * namespaces, with the setup's own errors going to the log.
 */
const SETUP_SCRIPT = `set -eu
root=$1 etc=$2 log=$3 host=$4 lo=$5
shift 5
exec 3>&2 2>>"$log"
mount -t proc -o nosuid,noexec,nodev proc "$root/proc"
mount -t tmpfs -o nosuid,strictatime,mode=755,size=65536k tmpfs "$root/dev"
mknod -m 666 "$root/dev/null" c 1 3
mknod -m 666 "$root/dev/zero" c 1 5
mknod -m 666 "$root/dev/full" c 1 7
mknod -m 666 "$root/dev/random" c 1 8
mknod -m 666 "$root/dev/urandom" c 1 9
mknod -m 666 "$root/dev/tty" c 5 0
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
echo '${STARTED}' >&2
exec "$@" 2>&3 3>&-
`;

interface ChrootTools {
  unshare: string;
  setpriv: string;
  env: string;
  /** `ip` or `ifconfig`, for a network of our own. */
  loopback?: string;
}

/** The host tools the fallback needs, or a RuntimeError naming what is missing. */
export async function chrootTools(network: 'none' | 'host'): Promise<ChrootTools> {
  const need = ['unshare', 'setpriv', 'env', 'mount', 'mknod'];
  const found = await Promise.all(need.map((n) => findOnPath(n)));
  const missing = need.filter((_, i) => !found[i]);
  if (missing.length) throw new RuntimeError(RUNTIME, `needs ${missing.join(', ')} on the host (util-linux and coreutils)`);
  const [unshare, setpriv, env] = found as string[];
  const help = await run(unshare!, ['--help']).then((r) => r.stdout, () => '');
  if (!help.includes('--wd')) throw new RuntimeError(RUNTIME, `${unshare} is too old: the chroot runtime needs util-linux 2.38 or later (unshare --root/--wd)`);
  const tools: ChrootTools = { unshare: unshare!, setpriv: setpriv!, env: env! };
  if (network === 'none') {
    tools.loopback = (await findOnPath('ip')) ?? (await findOnPath('ifconfig'));
    if (!tools.loopback) throw new RuntimeError(RUNTIME, 'network: none needs `ip` (iproute2) or `ifconfig` on the host to bring up loopback');
  }
  return tools;
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
