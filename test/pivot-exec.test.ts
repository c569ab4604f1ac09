/**
 * The chroot runtime's pivot program (src/exec/pivot-exec.ts) without root:
 * Perl compiles it, and the numbers it hard-codes — system calls by
 * architecture, capabilities — are the ones the kernel headers installed
 * here say (skipped where the headers are not installed). Running it is
 * test/run-in-root.test.ts's and test/run-isolation.integration.test.ts's.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { describe, expect, it } from 'vitest';
import { DEFAULT_CAPS } from '../src/exec/oci-spec.js';
import { CAP_NUMBERS, GENERIC, PIVOT_EXEC_SCRIPT, pivotExecArgs, SYSCALL_NAMES, SYSCALLS } from '../src/exec/pivot-exec.js';
import { hasTool } from './helpers/tools.js';

/** `#define <prefix><name> <number>` lines of a header, as name → number. */
function defines(file: string, prefix: string): Record<string, number> {
  const out: Record<string, number> = {};
  for (const m of readFileSync(file, 'utf8').matchAll(new RegExp(`^#define ${prefix}(\\w+)\\s+(\\d+)\\s*$`, 'gm'))) out[m[1]!] = Number(m[2]);
  return out;
}

const X64_HEADER = '/usr/include/x86_64-linux-gnu/asm/unistd_64.h';
const GENERIC_HEADER = '/usr/include/asm-generic/unistd.h';
const CAP_HEADER = '/usr/include/linux/capability.h';

describe('the pivot program', () => {
  it.skipIf(!hasTool('perl'))('compiles', () => {
    const out = execFileSync('perl', ['-c', '-e', PIVOT_EXEC_SCRIPT], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], env: {} });
    expect(out).toBe('');
  });

  it.skipIf(!existsSync(X64_HEADER))('uses the x86-64 system call numbers of the kernel headers', () => {
    const nr = defines(X64_HEADER, '__NR_');
    expect(SYSCALLS.x64).toEqual(Object.fromEntries(SYSCALL_NAMES.map((n) => [n, nr[n]])));
  });

  it.skipIf(!existsSync(GENERIC_HEADER))('uses the asm-generic system call numbers (arm64, riscv64, loong64) of the kernel headers', () => {
    const nr = { ...defines(GENERIC_HEADER, '__NR_'), ...defines(GENERIC_HEADER, '__NR3264_') };
    expect(GENERIC).toEqual(Object.fromEntries(SYSCALL_NAMES.map((n) => [n, nr[n]])));
  });

  it.skipIf(!existsSync(CAP_HEADER))('numbers capabilities as linux/capability.h does', () => {
    const caps = defines(CAP_HEADER, '');
    expect(CAP_NUMBERS).toEqual(Object.fromEntries(Object.keys(CAP_NUMBERS).map((c) => [c, caps[c]])));
  });

  it('passes the environment and argv as given, after their count, and refuses an unknown architecture', () => {
    const user = { uid: 1000, gid: 1000, additionalGids: [2000, 3000], home: '/home/app' };
    const input = { rootfs: '/r', cwd: '/w', user, caps: DEFAULT_CAPS, capLastCap: 40, env: ['B=1', 'A=x=y'], argv: ['sh', '-c', 'echo $0'] };
    const args = pivotExecArgs(input, 'x64')!;
    expect(args.slice(0, 3)).toEqual(['-e', PIVOT_EXEC_SCRIPT, '--']);
    expect(args.slice(4)).toEqual(['/r', '/w', '1000', '1000', '2000,3000', DEFAULT_CAPS.map((c) => CAP_NUMBERS[c]).join(','), '40', '2', 'B=1', 'A=x=y', 'sh', '-c', 'echo $0']);
    // Without it, the host's: what the kernel says its last capability is.
    expect(pivotExecArgs({ ...input, capLastCap: undefined }, 'x64')![10]).toBe(readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim());
    expect(pivotExecArgs(input, 's390x')).toBeUndefined();
  });
});
