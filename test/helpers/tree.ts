/** Read a directory tree into a plain map, to compare what a tool unpacked with what we expect. */
import { lstat, readFile, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';

export interface TreeEntry {
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  uid: number;
  gid: number;
  content?: string;
  target?: string;
}

export async function readTree(root: string): Promise<Map<string, TreeEntry>> {
  const out = new Map<string, TreeEntry>();
  async function visit(dir: string, rel: string): Promise<void> {
    for (const name of (await readdir(dir)).sort()) {
      const abs = path.join(dir, name);
      const p = `${rel}/${name}`;
      const st = await lstat(abs);
      const base = { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid };
      if (st.isSymbolicLink()) out.set(p, { type: 'symlink', ...base, target: await readlink(abs) });
      else if (st.isDirectory()) {
        out.set(p, { type: 'dir', ...base });
        await visit(abs, p);
      } else out.set(p, { type: 'file', ...base, content: await readFile(abs, 'utf8') });
    }
  }
  await visit(root, '');
  return out;
}
