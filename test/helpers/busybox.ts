/**
 * A build context holding the host's static busybox: the one binary a `run`
 * step needs for a shell and the usual commands, so tests of run steps need
 * no registry and no base image. Debian's busybox-static provides it; a
 * dynamically linked busybox cannot run inside an image and counts as missing.
 */
import { execFileSync } from 'node:child_process';
import { chmod, copyFile, mkdir, writeFile } from 'node:fs/promises';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { hasTool } from './tools.js';

/**
 * The `base` image every run-step test builds on: busybox, and its applets
 * installed as symlinks in /bin. Indented to sit under `images:`.
 */
export const BUSYBOX_BASE_IMAGE = `  base:
    steps:
      - id: busybox
        copy: busybox
        to: /bin/busybox
        chmod: "0755"
      - id: applets
        run: ["/bin/busybox", "--install", "-s", "/bin"]
`;

/**
 * Whether a static busybox is installed (see hasTool: under CI=true a missing
 * one is a failure, not a skip).
 */
export function hasStaticBusybox(): boolean {
  if (!hasTool('busybox')) return false;
  if (isStaticElf(hostBusybox())) return true;
  const msg = `${hostBusybox()} is dynamically linked and cannot run in an image; install busybox-static`;
  if (process.env.CI === 'true') throw new Error(msg);
  return false;
}

/** The busybox on PATH, symlinks resolved. */
export function hostBusybox(): string {
  return execFileSync('sh', ['-c', 'readlink -f "$(command -v busybox)"'], { encoding: 'utf8' }).trim();
}

/**
 * Makes `dir` a build context: `busybox`, and (with `images`) a `build.yaml`
 * holding the base image followed by `images` (more entries of `images:`,
 * indented by two spaces). Returns the build file's path.
 */
export async function busyboxContext(dir: string, images = ''): Promise<string> {
  await mkdir(dir, { recursive: true });
  await copyFile(hostBusybox(), path.join(dir, 'busybox'));
  await chmod(path.join(dir, 'busybox'), 0o755);
  const file = path.join(dir, 'build.yaml');
  await writeFile(file, busyboxBuildFile(images));
  return file;
}

/** A whole build file: the base image, then `images`. */
export function busyboxBuildFile(images = ''): string {
  return `version: 1\nimages:\n${BUSYBOX_BASE_IMAGE}${images}`;
}

/** An ELF file without a PT_INTERP program header needs no dynamic loader. */
function isStaticElf(file: string): boolean {
  const buf = readFileSync(file);
  if (buf.readUInt32BE(0) !== 0x7f454c46) return false;
  const is64 = buf[4] === 2;
  const le = buf[5] === 1;
  const u16 = (o: number) => (le ? buf.readUInt16LE(o) : buf.readUInt16BE(o));
  const u32 = (o: number) => (le ? buf.readUInt32LE(o) : buf.readUInt32BE(o));
  const phoff = is64 ? Number(le ? buf.readBigUInt64LE(0x20) : buf.readBigUInt64BE(0x20)) : u32(0x1c);
  const phentsize = u16(is64 ? 0x36 : 0x2a);
  const phnum = u16(is64 ? 0x38 : 0x2c);
  const PT_INTERP = 3;
  for (let i = 0; i < phnum; i++) if (u32(phoff + i * phentsize) === PT_INTERP) return false;
  return true;
}
