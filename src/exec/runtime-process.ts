/**
 * Starting a runtime process and following it: its stdout and stderr are one
 * pipe (so what it writes comes in the order written, as on a terminal),
 * stdin is /dev/null, and it gets a process group of its own, so a Ctrl-C
 * meant for us reaches it only as the abort we decide on.
 */
import { spawn } from 'node:child_process';
import { access, constants } from 'node:fs/promises';
import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

export interface RuntimeProcess {
  pid: number;
  /** Settles once the process has exited and its output is drained. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Starts `argv` with its output merged into `onOutput`; rejects when it cannot be started at all. */
export async function startMerged(argv: string[], onOutput: (chunk: Buffer) => void): Promise<RuntimeProcess> {
  // Node cannot give one pipe to both fds, so a shell makes fd 2 a copy of fd 1 and then becomes the runtime.
  const child = spawn('/bin/sh', ['-c', 'exec "$@" 2>&1', 'sh', ...argv], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  child.stdout.on('data', onOutput);
  child.stderr.on('data', onOutput);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  // A child that cannot be spawned rejects both; the caller hears of it below.
  exited.catch(() => undefined);
  await new Promise<void>((resolve, reject) => {
    child.once('spawn', resolve);
    child.once('error', reject);
  });
  return { pid: child.pid!, exited };
}

/** The absolute path of `name` on the host's PATH, or undefined. */
export async function findOnPath(name: string): Promise<string | undefined> {
  for (const dir of (process.env.PATH ?? '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin').split(':')) {
    if (!dir) continue;
    const candidate = path.join(dir, name);
    if (await access(candidate, constants.X_OK).then(() => true, () => false)) return candidate;
  }
  return undefined;
}

/** Pids whose parent is `pid`, read from /proc (synchronous, so a forced exit can use it). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^[0-9]+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      // `pid (comm) state ppid …`; comm may hold spaces and parentheses.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (ppid === pid) out.push(Number(name));
    } catch {
      // Gone while we looked.
    }
  }
  return out;
}

/** Sends `signal`, ignoring a process that has already gone. */
export function killQuietly(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // Already exited.
  }
}
