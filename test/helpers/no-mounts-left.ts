/**
 * Global setup: after the whole suite, no overlay mount may be left below the
 * temp directory the tests work in. A leak fails the run, naming the mounts.
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';

export default function setup(): () => void {
  const before = new Set(overlayMountsUnder(os.tmpdir()));
  return () => {
    const left = overlayMountsUnder(os.tmpdir()).filter((m) => !before.has(m));
    if (!left.length) return;
    // vitest reports a teardown error but still exits 0: set the exit code ourselves.
    process.exitCode = 1;
    throw new Error(`the tests left ${left.length} overlay mount(s) behind:\n  ${left.join('\n  ')}`);
  };
}

function overlayMountsUnder(dir: string): string[] {
  let info = '';
  try {
    info = readFileSync('/proc/self/mountinfo', 'utf8');
  } catch {
    return []; // not Linux: nothing can be mounted
  }
  return info
    .split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f[f.indexOf('-') + 1] === 'overlay' && (f[4] ?? '').startsWith(`${dir}/`))
    .map((f) => f[4]!);
}
