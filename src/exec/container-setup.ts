/**
 * What every runtime prepares the same way before it starts a command: the
 * files mounted over /etc/hosts, /etc/hostname and /etc/resolv.conf (kept in
 * the scratch directory, never the root), the environment's defaults, and the
 * working directory.
 */
import { chmod, chown, lstat, mkdir, readFile, realpath, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { RuntimeError } from '../errors.js';
import { isMissing } from '../util/fs-read.js';
import { secureJoin } from '../util/secure-join.js';

/** The container's hostname, as BuildKit names its build containers alike. */
export const HOSTNAME = 'layergraph';

/** Docker's PATH for an image that sets none. */
export const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

/** Host files bound read-only over the image's, by path in the image. */
export type EtcFiles = Array<{ source: string; destination: string }>;

/** Writes hosts, hostname and resolv.conf into `scratchDir`. */
export async function writeEtcFiles(scratchDir: string, network: 'none' | 'host'): Promise<EtcFiles> {
  const dir = path.join(scratchDir, 'etc');
  await mkdir(dir, { recursive: true });
  // With the host's network the host's resolvers work; without a network there is nothing to ask.
  const resolv = network === 'host' ? await hostResolvConf() : '# network: none\n';
  const files = {
    hosts: `127.0.0.1\tlocalhost ${HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n`,
    hostname: `${HOSTNAME}\n`,
    'resolv.conf': resolv,
  };
  const out: EtcFiles = [];
  for (const [name, content] of Object.entries(files)) {
    const source = path.join(dir, name);
    await writeFile(source, content);
    await chmod(source, 0o644);
    out.push({ source, destination: `/etc/${name}` });
  }
  return out;
}

/** `env` with PATH and HOME added when absent, as Docker does. */
export function withDefaultEnv(env: string[], home: string): string[] {
  const has = (k: string) => env.some((kv) => kv.startsWith(`${k}=`));
  const out = [...env];
  if (!has('PATH')) out.push(`PATH=${DEFAULT_PATH}`);
  if (!has('HOME')) out.push(`HOME=${home}`);
  return out;
}

/**
 * Creates the working directory inside `rootfs` where missing (root-owned,
 * 0755, like Docker's WORKDIR), resolving symlinks as the image would.
 */
export async function ensureWorkdir(rootfs: string, cwd: string, runtime: string): Promise<void> {
  if (!cwd.startsWith('/')) throw new RuntimeError(runtime, `working directory ${JSON.stringify(cwd)} is not absolute`);
  const root = await realpath(rootfs);
  const resolved = await secureJoin(root, cwd, { followLast: true });
  let dir = root;
  for (const part of path.relative(root, resolved).split('/').filter(Boolean)) {
    dir = path.join(dir, part);
    const st = await lstat(dir).catch((err: unknown) => {
      if (isMissing(err)) return undefined;
      throw err;
    });
    if (st?.isDirectory()) continue;
    if (st) throw new RuntimeError(runtime, `working directory ${cwd}: ${path.relative(root, dir)} in the image is not a directory`);
    await mkdir(dir);
    await chmod(dir, 0o755);
    if (process.getuid?.() === 0) await chown(dir, 0, 0);
  }
}

async function hostResolvConf(): Promise<string> {
  try {
    return await readFile('/etc/resolv.conf', 'utf8');
  } catch (err) {
    if (isMissing(err)) return '';
    throw err;
  }
}
