/**
 * Temporary directories for unit tests: real directories under os.tmpdir(),
 * removed after each test of the file that calls `useTmpDirs()`.
 */
import { chmod, lstat, mkdir, mkdtemp, readdir, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach } from 'vitest';

/** Registers an afterEach that removes every directory `tmpDir()` made during the test. */
export function useTmpDirs(): (prefix?: string) => Promise<string> {
  const made: string[] = [];
  afterEach(async () => {
    for (const dir of made.splice(0)) {
      await makeWritable(dir);
      await rm(dir, { recursive: true, force: true });
    }
  });
  return async (prefix = 'lg-test-') => {
    const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
    made.push(dir);
    return dir;
  };
}

/** Read-only directories left by a test would make rm fail for a non-root user. */
async function makeWritable(dir: string): Promise<void> {
  const st = await lstat(dir).catch(() => undefined);
  if (!st?.isDirectory()) return;
  await chmod(dir, 0o700);
  for (const name of await readdir(dir)) await makeWritable(path.join(dir, name));
}

/** A tree to create: a string is a file's content, `{ link }` a symlink, `{ dir: {...} }` a directory. */
export type TreeSpec = {
  [name: string]: string | { link: string } | { file: string; mode: number } | { dir: TreeSpec; mode?: number };
};

/**
 * Creates `tree` under `root`. Modes are set explicitly (files 0644 and
 * directories 0755 unless given), so the process umask does not matter;
 * directory modes are set after their contents are written.
 */
export async function makeTree(root: string, tree: TreeSpec): Promise<void> {
  await mkdir(root, { recursive: true });
  for (const [name, v] of Object.entries(tree)) {
    const p = path.join(root, name);
    if (typeof v === 'string') {
      await writeFile(p, v);
      await chmod(p, 0o644);
    } else if ('link' in v) await symlink(v.link, p);
    else if ('file' in v) {
      await writeFile(p, v.file);
      await chmod(p, v.mode);
    } else {
      await mkdir(p);
      await chmod(p, 0o755);
      await makeTree(p, v.dir);
      if (v.mode !== undefined) await chmod(p, v.mode);
    }
  }
}

/** Every path under `dir`, relative, sorted ('' excluded). */
export async function listAll(dir: string): Promise<string[]> {
  const out: string[] = [];
  async function visit(abs: string, rel: string): Promise<void> {
    for (const name of (await readdir(abs)).sort()) {
      const r = rel ? `${rel}/${name}` : name;
      out.push(r);
      const st = await lstat(path.join(abs, name));
      if (st.isDirectory()) await visit(path.join(abs, name), r);
    }
  }
  await visit(dir, '');
  return out;
}
