/**
 * The OCI runtime config (config.json) for one `run` command, written by hand
 * after Docker's default spec: its capabilities, masked paths and mounts,
 * without a terminal, with a writable root. Every mount point already exists
 * in the root (see mount-stubs.ts), so the runtime creates nothing there.
 */
import type { ImageUser } from './image-user.js';
import type { EtcFiles } from './container-setup.js';
import { HOSTNAME } from './container-setup.js';

/** Docker's default capabilities. */
export const DEFAULT_CAPS = [
  'CAP_CHOWN',
  'CAP_DAC_OVERRIDE',
  'CAP_FSETID',
  'CAP_FOWNER',
  'CAP_MKNOD',
  'CAP_NET_RAW',
  'CAP_SETGID',
  'CAP_SETUID',
  'CAP_SETFCAP',
  'CAP_SETPCAP',
  'CAP_NET_BIND_SERVICE',
  'CAP_SYS_CHROOT',
  'CAP_KILL',
  'CAP_AUDIT_WRITE',
] as const;

export interface OciSpecInput {
  rootfs: string;
  argv: string[];
  env: string[];
  cwd: string;
  user: ImageUser;
  network: 'none' | 'host';
  etcFiles: EtcFiles;
}

export function ociSpec(input: OciSpecInput): object {
  const caps = [...DEFAULT_CAPS];
  // As Docker: a non-root user keeps only the bounding set, so it has no capability unless it execs a binary granting one.
  const capabilities = input.user.uid === 0 ? { bounding: caps, effective: caps, permitted: caps } : { bounding: caps };
  const namespaces = [{ type: 'pid' }, { type: 'ipc' }, { type: 'uts' }, { type: 'mount' }];
  // A network namespace of our own gets only loopback, which the runtime brings up.
  if (input.network === 'none') namespaces.push({ type: 'network' });
  return {
    ociVersion: '1.0.2',
    process: {
      terminal: false,
      user: { uid: input.user.uid, gid: input.user.gid, additionalGids: input.user.additionalGids },
      args: input.argv,
      env: input.env,
      cwd: input.cwd,
      capabilities,
      noNewPrivileges: false,
    },
    root: { path: input.rootfs, readonly: false },
    hostname: HOSTNAME,
    mounts: [
      { destination: '/proc', type: 'proc', source: 'proc', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/dev', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'strictatime', 'mode=755', 'size=65536k'] },
      {
        destination: '/dev/pts',
        type: 'devpts',
        source: 'devpts',
        options: ['nosuid', 'noexec', 'newinstance', 'ptmxmode=0666', 'mode=0620', 'gid=5'],
      },
      { destination: '/dev/shm', type: 'tmpfs', source: 'shm', options: ['nosuid', 'noexec', 'nodev', 'mode=1777', 'size=65536k'] },
      { destination: '/dev/mqueue', type: 'mqueue', source: 'mqueue', options: ['nosuid', 'noexec', 'nodev'] },
      { destination: '/sys', type: 'sysfs', source: 'sysfs', options: ['nosuid', 'noexec', 'nodev', 'ro'] },
      { destination: '/tmp', type: 'tmpfs', source: 'tmpfs', options: ['nosuid', 'nodev', 'mode=1777'] },
      ...input.etcFiles.map((f) => ({ destination: f.destination, type: 'bind', source: f.source, options: ['rbind', 'ro', 'nosuid', 'nodev', 'noexec'] })),
    ],
    linux: {
      namespaces,
      // Only the devices the runtime creates in /dev (it adds them to this list itself).
      resources: { devices: [{ allow: false, access: 'rwm' }] },
      maskedPaths: [
        '/proc/asound',
        '/proc/acpi',
        '/proc/kcore',
        '/proc/keys',
        '/proc/latency_stats',
        '/proc/timer_list',
        '/proc/timer_stats',
        '/proc/sched_debug',
        '/proc/scsi',
        '/sys/firmware',
        '/sys/devices/virtual/powercap',
      ],
      readonlyPaths: ['/proc/bus', '/proc/fs', '/proc/irq', '/proc/sys', '/proc/sysrq-trigger'],
    },
  };
}
