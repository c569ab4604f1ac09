// Process helpers the benchmark modules share.
import { spawn } from 'node:child_process';
import { accessSync, constants } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Runs a command, resolves with its stdout; rejects with the last lines of stderr. */
export function exec(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.on('data', (b) => { out += b; });
    child.stderr.on('data', (b) => { err += b; });
    child.on('error', reject);
    child.on('close', (code) => code === 0 ? resolve(out)
      : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}:\n${err.trim().split('\n').slice(-5).join('\n')}`)));
  });
}

/** Seconds `fn` took. */
export async function timed(fn) {
  const start = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - start) / 1e9;
}

/** The first executable `cmd` on PATH, or undefined. */
export function which(cmd) {
  return process.env.PATH.split(delimiter).map((d) => join(d, cmd)).find(isExecutable);
}

export function isExecutable(p) {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}
