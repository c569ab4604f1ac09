/**
 * The last act of the chroot runtime, as one process: make the prepared root
 * the root of the mount namespace (pivot_root), detach the host's tree from
 * the namespace, become the command's user with its capabilities, and exec
 * the command.
 *
 * Why one process, and why Perl: after pivot_root the host's files are gone
 * from the namespace, so no host tool can be started any more; the steps
 * that must come after it — unmounting the old root needs CAP_SYS_ADMIN,
 * which the command must not keep — have to be done by a program that is
 * already running. util-linux's and coreutils' tools each do one step and
 * exec the next, which after the pivot would be looked up in the image; a
 * shell reorders the environment it execs with (and busybox's prefers its
 * own applets to the image's commands); a compiled helper would need a
 * compiler. Perl is on every Debian-like host (perl-base is Essential), does
 * each step as one system call, and execs with the environment exactly as
 * given. After the pivot it reads nothing but /proc/self/fd: its code is
 * compiled before, and its arguments say the rest.
 *
 * System call numbers differ by architecture; SYSCALLS knows the ones
 * layergraph runs on (checked against the kernel headers in
 * test/pivot-exec.test.ts).
 */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import type { ImageUser } from './image-user.js';

export interface PivotExecInput {
  /** Host path of the root; a mount point (the pivot needs one). */
  rootfs: string;
  /** The working directory, a path in the root. */
  cwd: string;
  user: ImageUser;
  /** Capabilities kept in the bounding set (`CAP_…`); every other one is dropped. */
  caps: readonly string[];
  /** The kernel's highest capability number (default: the host's /proc/sys/kernel/cap_last_cap); 0 to it are dropped but `caps`. */
  capLastCap?: number;
  /** `KEY=value`, in this order. */
  env: string[];
  argv: string[];
}

/** The argv after `perl`, or undefined when the architecture's system call numbers are not known here. */
export function pivotExecArgs(input: PivotExecInput, arch: string = os.arch()): string[] | undefined {
  const nr = SYSCALLS[arch];
  if (!nr) return undefined;
  const { uid, gid, additionalGids } = input.user;
  return [
    '-e',
    PIVOT_EXEC_SCRIPT,
    '--',
    SYSCALL_NAMES.map((n) => nr[n]).join(','),
    input.rootfs,
    input.cwd,
    String(uid),
    String(gid),
    additionalGids.join(','),
    input.caps.map(capNumber).join(','),
    String(input.capLastCap ?? hostCapLastCap()),
    String(input.env.length),
    ...input.env,
    ...input.argv,
  ];
}

/**
 * The host kernel's highest capability number. Read here, on the host: the
 * program drops exactly 0 to it, and a failure to drop any of them stops it
 * before the command runs (a guess would fail open on a newer kernel).
 */
export function hostCapLastCap(): number {
  const text = readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim();
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > 63) throw new Error(`/proc/sys/kernel/cap_last_cap says ${JSON.stringify(text)}, not a capability number`);
  return n;
}

/** The architectures (as `os.arch()` names them) pivotExecArgs knows. */
export function knownArches(): string[] {
  return Object.keys(SYSCALLS);
}

export const SYSCALL_NAMES = ['pivot_root', 'umount2', 'setgroups', 'setresgid', 'setresuid', 'prctl', 'capget', 'capset', 'fcntl'] as const;
export type SyscallName = (typeof SYSCALL_NAMES)[number];

/** asm-generic's numbers, which the newer architectures share. */
export const GENERIC: Record<SyscallName, number> = {
  pivot_root: 41,
  umount2: 39,
  setgroups: 159,
  setresgid: 149,
  setresuid: 147,
  prctl: 167,
  capget: 90,
  capset: 91,
  fcntl: 25,
};

/** By Node's `os.arch()`. */
export const SYSCALLS: Record<string, Record<SyscallName, number>> = {
  x64: { pivot_root: 155, umount2: 166, setgroups: 116, setresgid: 119, setresuid: 117, prctl: 157, capget: 125, capset: 126, fcntl: 72 },
  arm64: GENERIC,
  riscv64: GENERIC,
  loong64: GENERIC,
};

/** linux/capability.h. */
export const CAP_NUMBERS: Record<string, number> = {
  CAP_CHOWN: 0,
  CAP_DAC_OVERRIDE: 1,
  CAP_DAC_READ_SEARCH: 2,
  CAP_FOWNER: 3,
  CAP_FSETID: 4,
  CAP_KILL: 5,
  CAP_SETGID: 6,
  CAP_SETUID: 7,
  CAP_SETPCAP: 8,
  CAP_LINUX_IMMUTABLE: 9,
  CAP_NET_BIND_SERVICE: 10,
  CAP_NET_BROADCAST: 11,
  CAP_NET_ADMIN: 12,
  CAP_NET_RAW: 13,
  CAP_IPC_LOCK: 14,
  CAP_IPC_OWNER: 15,
  CAP_SYS_MODULE: 16,
  CAP_SYS_RAWIO: 17,
  CAP_SYS_CHROOT: 18,
  CAP_SYS_PTRACE: 19,
  CAP_SYS_PACCT: 20,
  CAP_SYS_ADMIN: 21,
  CAP_SYS_BOOT: 22,
  CAP_SYS_NICE: 23,
  CAP_SYS_RESOURCE: 24,
  CAP_SYS_TIME: 25,
  CAP_SYS_TTY_CONFIG: 26,
  CAP_MKNOD: 27,
  CAP_LEASE: 28,
  CAP_AUDIT_WRITE: 29,
  CAP_AUDIT_CONTROL: 30,
  CAP_SETFCAP: 31,
};

function capNumber(name: string): number {
  const n = CAP_NUMBERS[name];
  if (n === undefined) throw new Error(`unknown capability ${name}`);
  return n;
}

/** Written to fd 2 (the setup log) once everything but the exec has worked. */
export const STARTED = 'layergraph: starting command';

/**
 * Arguments: the system call numbers (in SYSCALL_NAMES order), root, cwd,
 * uid, gid, supplementary gids, capabilities to keep (numbers), the
 * kernel's last capability number, the count of environment entries, the entries, the argv. fd 2 is the setup log and fd 3
 * the command's stderr.
 *
 * Perl passes a syscall argument that is a number as a number and anything
 * else as a pointer to its string: so numbers are made numeric (`+ 0`) and
 * strings live in variables (a literal cannot be passed by pointer). Nothing
 * here may load a module at run time (`%!`, Unicode regexes): after the pivot
 * it would be the image's.
 */
export const PIVOT_EXEC_SCRIPT = String.raw`use strict;
use warnings;
my ($nrs, $root, $cwd, $uid, $gid, $groups, $keep, $last, $nenv, @rest) = @ARGV;
my @names = qw(pivot_root umount2 setgroups setresgid setresuid prctl capget capset fcntl);
my %nr;
@nr{@names} = map { $_ + 0 } split(/,/, $nrs);
my @env = splice(@rest, 0, $nenv);
my @argv = @rest;
sub fail { my ($what) = @_; my $err = "$!"; print STDERR "layergraph: $what: $err\n"; exit 1; }
my $dot = '.';

chdir($root) or fail("cannot enter the root $root");
# The root takes the old root's place; the old root, now stacked on top of it, is detached.
syscall($nr{pivot_root}, $dot, $dot) == 0 or fail('pivot_root');
syscall($nr{umount2}, $dot, 2) == 0 or fail('detaching the host root');
chdir('/') or fail('cannot enter /');
chdir($cwd) or fail("cannot enter the working directory $cwd");

my @gids = map { $_ + 0 } grep { length } split(/,/, $groups);
my $list = pack('L*', @gids);
syscall($nr{setgroups}, scalar(@gids), $list) == 0 or fail('setgroups');
syscall($nr{setresgid}, $gid + 0, $gid + 0, $gid + 0) == 0 or fail("setresgid $gid");
my %kept;
$kept{$_ + 0} = 1 for split(/,/, $keep);
# Every capability the kernel has (the host said which is the last) but those kept; any failure stops here.
$last =~ /^[0-9]+$/ && $last <= 63 or do { $! = 22; fail("cap_last_cap $last") };
for my $cap (0 .. $last) {
  next if $kept{$cap};
  syscall($nr{prctl}, 24, $cap + 0, 0, 0, 0) == 0 or fail("dropping capability $cap");  # PR_CAPBSET_DROP
}
# No inheritable capabilities (and so no ambient ones).
my $header = pack('LL', 0x20080522, 0);
my $data = "\0" x 24;
syscall($nr{capget}, $header, $data) == 0 or fail('capget');
my @sets = unpack('L6', $data);
@sets[2, 5] = (0, 0);
$data = pack('L6', @sets);
syscall($nr{capset}, $header, $data) == 0 or fail('capset');
# Last: a user other than root loses every capability here, as with setuid(2).
if ($uid != 0) { syscall($nr{setresuid}, $uid + 0, $uid + 0, $uid + 0) == 0 or fail("setresuid $uid"); }

%ENV = ();
for my $kv (@env) {
  my $i = index($kv, '=');
  $ENV{substr($kv, 0, $i)} = substr($kv, $i + 1) if $i > 0;
}
# Nothing the host had open reaches the command: every descriptor above stderr closes on exec.
opendir(my $fds, '/proc/self/fd') or fail('cannot list /proc/self/fd');
my @open = grep { /^[0-9]+$/ && $_ > 3 } readdir($fds);
closedir($fds);
# F_SETFD, FD_CLOEXEC; only a closed one (the listing's own, EBADF) may fail.
for my $fd (@open) { syscall($nr{fcntl}, $fd + 0, 2, 1) == 0 or $! == 9 or fail("cannot mark descriptor $fd close-on-exec"); }
print STDERR "${STARTED}\n";
open(STDERR, '>&', 3) or exit 1;
if (open(my $fd3, '>&=', 3)) { close($fd3); }
{ no warnings; exec { $argv[0] } @argv; }
my $err = $! + 0;
print STDERR "layergraph: cannot run $argv[0]: $!\n";
exit($err == 2 ? 127 : 126);
`;
