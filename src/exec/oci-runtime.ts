/**
 * Running a command with an OCI runtime (runc or crun): a bundle whose
 * config.json we write, state kept under the scratch directory, `run` in the
 * foreground. The runtime logs its own errors as JSON to a file, which is how
 * a failure to start is told apart from the command failing.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { RuntimeError } from '../errors.js';
import { onForcedExit } from '../util/forced-exit.js';
import { ociSpec } from './oci-spec.js';
import { killQuietly, startMerged } from './runtime-process.js';
import type { PreparedRun, RunResult } from './run-in-root.js';

const run = promisify(execFile);

/** How long an abort keeps asking the runtime to kill before it kills the runtime itself. */
const KILL_RETRY_MS = 3000;

export async function runOci(runtime: 'runc' | 'crun', prep: PreparedRun): Promise<RunResult> {
  const bundle = path.join(prep.scratchDir, 'bundle');
  const state = path.join(prep.scratchDir, 'state');
  const logFile = path.join(prep.scratchDir, `${runtime}.log`);
  await mkdir(bundle, { recursive: true });
  await writeFile(path.join(bundle, 'config.json'), JSON.stringify(ociSpec(prep), null, 2));
  const global = [`--root=${state}`, `--log=${logFile}`, '--log-format=json'];

  const unregister = onForcedExit(() => execFileSync(runtime, [...global, 'delete', '--force', prep.id], { stdio: 'ignore' }));
  try {
    const proc = await startMerged([runtime, ...global, 'run', `--bundle=${bundle}`, prep.id], prep.onOutput).catch((err: Error) => {
      throw new RuntimeError(runtime, `cannot start ${runtime}: ${err.message}`, { cause: err });
    });
    let aborted = false;
    let done = false;
    const onAbort = () => {
      aborted = true;
      void killContainer(runtime, global, prep.id, proc.pid, () => done);
    };
    if (prep.signal?.aborted) onAbort();
    else prep.signal?.addEventListener('abort', onAbort, { once: true });
    const exit = await proc.exited.finally(() => {
      done = true;
      prep.signal?.removeEventListener('abort', onAbort);
    });
    if (aborted) return { exitCode: exit.code ?? -1, ...(exit.signal ? { signal: exit.signal } : {}), aborted: true };
    const startError = exit.code === 0 ? undefined : await runtimeError(logFile);
    if (startError !== undefined) throw new RuntimeError(runtime, startError);
    return { exitCode: exit.code ?? -1, ...(exit.signal ? { signal: exit.signal } : {}), aborted: false };
  } finally {
    // Removes the state and the cgroup whatever happened; "does not exist" is the usual answer.
    await run(runtime, [...global, 'delete', '--force', prep.id]).catch(() => undefined);
    unregister();
  }
}

/**
 * `kill KILL` the container's init, which takes its pid namespace with it.
 * The container may not exist yet (still being created): ask again until it
 * does or the runtime is gone; a runtime that stays stuck is killed with its
 * process group.
 */
async function killContainer(runtime: string, global: string[], id: string, runtimePid: number, finished: () => boolean): Promise<void> {
  const deadline = Date.now() + KILL_RETRY_MS;
  while (!finished()) {
    const killed = await run(runtime, [...global, 'kill', id, 'KILL']).then(
      () => true,
      () => false,
    );
    if (killed) return;
    if (Date.now() > deadline) {
      killQuietly(-runtimePid, 'SIGKILL');
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** The runtime's own error messages, if it logged any. */
async function runtimeError(logFile: string): Promise<string | undefined> {
  const text = await readFile(logFile, 'utf8').catch(() => '');
  const messages: string[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      const entry = JSON.parse(line) as { level?: string; msg?: string };
      if ((entry.level === 'error' || entry.level === 'fatal') && entry.msg) messages.push(entry.msg);
    } catch {
      messages.push(line);
    }
  }
  return messages.length ? messages.join('\n') : undefined;
}
