/**
 * Black-box CLI helpers: run layergraph in-process (fast, same code path as
 * the binary) or as a real child process through bin/ (for umask, signals and
 * the launcher itself). Both return { stdout, stderr, exitCode }.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { main } from '../../src/cli/main.js';

export interface CliResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

export async function runCli(args: string[], opts: { cwd?: string; env?: NodeJS.ProcessEnv } = {}): Promise<CliResult> {
  let stdout = '';
  let stderr = '';
  const exitCode = await main(args, {
    stdout: { write: (s: string) => (stdout += s) },
    stderr: { write: (s: string) => (stderr += s) },
    env: { ...(opts.env ?? {}) },
    cwd: opts.cwd ?? process.cwd(),
  });
  return { stdout, stderr, exitCode };
}

/** Run the installed launcher, optionally under `umask` (which only a real process can have). */
export function spawnCli(
  args: string[],
  opts: { cwd?: string; env?: NodeJS.ProcessEnv; umask?: string } = {},
): Promise<CliResult> {
  const bin = path.join(REPO, 'bin', 'layergraph.js');
  const quoted = [bin, ...args].map((a) => `'${a.replace(/'/g, `'\\''`)}'`).join(' ');
  const script = `${opts.umask ? `umask ${opts.umask}; ` : ''}exec node ${quoted}`;
  const child = spawn('sh', ['-c', script], { cwd: opts.cwd ?? process.cwd(), env: { ...process.env, ...opts.env } });
  return outputOf(child).then(({ stdout, stderr, code }) => ({ stdout, stderr, exitCode: code ?? -1 }));
}

/** A child's whole output, and how it ended; `onStderr` sees the error output so far as it grows. */
export function outputOf(
  child: ChildProcess,
  onStderr?: (all: string) => void,
): Promise<{ stdout: string; stderr: string; code: number | null; signal: NodeJS.Signals | null }> {
  return new Promise((resolve, reject) => {
    let stdout = '';
    let stderr = '';
    child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr!.on('data', (d: Buffer) => {
      stderr += d.toString();
      onStderr?.(stderr);
    });
    child.on('error', reject);
    child.on('close', (code, signal) => resolve({ stdout, stderr, code, signal }));
  });
}
