/**
 * Writes a described tree (a copy step's plan, see exec/copy-step.ts) into a
 * directory exactly as unpacking the layer packed from it would: same
 * entries, contents, modes, owners and mtimes, so the two give the same tree
 * stamp and either can be an overlay lower. A `run` step above a copy that
 * just missed mounts that copy's layer; writing it from the sources skips
 * gunzipping and parsing the blob that was packed a moment before.
 *
 * Synchronous: thousands of small files, each a handful of system calls the
 * page cache answers; a thread-pool trip per call would cost more than the call.
 * Needs root (owners are set), like every layer snapshot.
 */
import {
  chmodSync,
  closeSync,
  constants as fsConstants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  lutimesSync,
  mkdirSync,
  openSync,
  symlinkSync,
  utimesSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import type { TreeEntry } from '../oci/layer-pack.js';
import { openSource, readFull, SMALL_FILE_MAX } from '../util/source-read.js';

export interface TreeMeta {
  mode: number;
  uid: number;
  gid: number;
}

/**
 * Writes `entries` below `dest` (which must not exist). `meta` gives each
 * entry's mode and owner, as it gives them to the packer; `mtime` (seconds)
 * is every entry's time. A file is written with exactly the size in its
 * stat: one that shrank since fails, as packing it does.
 */
export function writeTree(entries: readonly TreeEntry[], dest: string, meta: (rel: string) => TreeMeta, mtime: number): void {
  mkdirSync(dest, { mode: 0o700 });
  // Parents sort before their children.
  const sorted = [...entries].sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
  const dirs: TreeEntry[] = [];
  const buf = Buffer.allocUnsafe(SMALL_FILE_MAX);
  for (const e of sorted) {
    const host = path.join(dest, e.rel);
    const m = meta(e.rel);
    if (e.kind === 'directory') {
      mkdirSync(host, { mode: 0o700 });
      lchownSync(host, m.uid, m.gid);
      dirs.push(e);
    } else if (e.kind === 'symlink') {
      symlinkSync(e.linkTarget!, host);
      lchownSync(host, m.uid, m.gid);
      lutimesSync(host, mtime, mtime);
    } else {
      const fd = openSync(host, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
      try {
        copyExactly(e.abs!, e.st!.size, fd, buf);
        fchownSync(fd, m.uid, m.gid);
        // After chown, which clears setuid/setgid.
        fchmodSync(fd, m.mode & 0o7777);
        futimesSync(fd, mtime, mtime);
      } finally {
        closeSync(fd);
      }
    }
  }
  // Deepest first: a 0500 parent is set after its children, and writing a child changes a directory's mtime.
  for (const e of dirs.reverse()) {
    const host = path.join(dest, e.rel);
    chmodSync(host, meta(e.rel).mode & 0o7777);
    utimesSync(host, mtime, mtime);
  }
}

function copyExactly(src: string, size: number, out: number, buf: Buffer): void {
  const fd = openSource(src);
  try {
    for (let done = 0; done < size; ) {
      const chunk = buf.subarray(0, Math.min(buf.length, size - done));
      const n = readFull(fd, chunk, done);
      if (n < chunk.length) throw new Error(`${src}: changed size while it was copied (${size} bytes expected, ${done + n} read)`);
      writeAll(out, chunk);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
}

function writeAll(fd: number, bytes: Buffer): void {
  let off = 0;
  while (off < bytes.length) off += writeSync(fd, bytes, off, bytes.length - off);
}
