/**
 * Running one command inside a root filesystem someone else prepared (an
 * overlay's merged directory, or a copied root), the way a Dockerfile's RUN
 * runs: its own mount, pid, ipc and uts namespaces (and network, unless the
 * host's), /proc, /dev, /sys, a fresh /tmp and the /etc files mounted over
 * stubs that already exist — so a command that writes nothing leaves nothing
 * in the root.
 *
 * Runtimes: runc or crun with a config.json we write, or, where neither is
 * installed, `chroot`: util-linux unshare, then pivot_root into the root and
 * the drop to the user by a small Perl program (see chroot-runtime.ts).
 */
import { RuntimeError } from '../errors.js';
import { chrootTools, runChrooted } from './chroot-runtime.js';
import { ensureWorkdir, withDefaultEnv, writeEtcFiles, type EtcFiles } from './container-setup.js';
import { resolveImageUser, type ImageUser } from './image-user.js';
import { runOci } from './oci-runtime.js';
import { findOnPath } from './runtime-process.js';

export { MOUNT_POINTS, makeMountStubs, type MountPoint } from './mount-stubs.js';

export type RuntimeName = 'runc' | 'crun' | 'chroot';

export interface RunSpec {
  /** Absolute host path of the root (a mounted overlay or a plain directory). */
  rootfs: string;
  /** The final argv; a shell-form command is already `['/bin/sh', '-c', cmd]`. */
  argv: string[];
  /** `KEY=value`. PATH (Docker's default) and HOME (the user's) are added when absent. */
  env: string[];
  /** Absolute path in the image; created (root-owned, 0755) when missing, as Docker does for WORKDIR. */
  cwd: string;
  /** `''` (root), `name`, `uid`, `name:group` or `uid:gid`, looked up in the root's /etc/passwd and /etc/group. */
  user: string;
  /** `none`: a network namespace of its own with only loopback, up; `host`: the host's network. */
  network: 'none' | 'host';
  runtime: RuntimeName;
  /** A private empty directory for the bundle and the runtime's state; the caller removes it. */
  scratchDir: string;
  /** A container id unique on this host. */
  id: string;
  /**
   * stdout and stderr as they come. The chroot runtime gives the command one
   * pipe for both; runc and crun copy each through a pipe of their own, so
   * lines written within a moment on both may come in either order.
   */
  onOutput: (chunk: Buffer) => void;
  /** Aborting kills every process of the command and resolves with `aborted: true`. */
  signal?: AbortSignal;
}

export interface RunResult {
  /** The command's exit code; 128 + n when it was killed by signal n. */
  exitCode: number;
  /** The signal that ended the runtime process itself, where it reports one. */
  signal?: string;
  aborted: boolean;
}

/** What the runtimes get: the spec with the user resolved, the environment completed and the /etc files written. */
export type PreparedRun = Omit<RunSpec, 'user'> & { user: ImageUser; etcFiles: EtcFiles };

/**
 * Runs `spec.argv` to completion. A non-zero exit is a result, not an error;
 * a runtime that cannot start the command (missing executable, bad user,
 * failing mount) throws RuntimeError with the runtime's own message.
 */
export async function runInRoot(spec: RunSpec): Promise<RunResult> {
  if (spec.argv.length === 0) throw new RuntimeError(spec.runtime, 'no command to run (empty argv)');
  const user = await resolveImageUser(spec.rootfs, spec.user, spec.runtime);
  await ensureWorkdir(spec.rootfs, spec.cwd, spec.runtime);
  const etcFiles = await writeEtcFiles(spec.scratchDir, spec.network);
  const prep: PreparedRun = { ...spec, env: withDefaultEnv(spec.env, user.home), user, etcFiles };
  return spec.runtime === 'chroot' ? runChrooted(prep) : runOci(spec.runtime, prep);
}

/** `auto`: runc if installed, else crun, else the chroot fallback. A named runtime must be installed. */
export async function pickRuntime(choice: 'auto' | RuntimeName): Promise<RuntimeName> {
  if (choice === 'chroot') {
    await chrootTools('none');
    return choice;
  }
  if (choice !== 'auto') {
    if (await findOnPath(choice)) return choice;
    throw new RuntimeError(choice, `${choice} is not installed (not found on PATH); install it, or choose another runtime (runc, crun, chroot)`);
  }
  for (const name of ['runc', 'crun'] as const) if (await findOnPath(name)) return name;
  try {
    await chrootTools('none');
    return 'chroot';
  } catch (err) {
    throw new RuntimeError('auto', `no way to run \`run\` steps here: install runc or crun (${(err as RuntimeError).detail})`, { cause: err });
  }
}
