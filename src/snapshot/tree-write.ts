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
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readSync,
  symlinkSync,
  utimesSync,
  writeSync,
} from 'node:fs';
import path from 'node:path';
import type { TreeEntry } from '../oci/layer-pack.js';

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
 *
 * `reuse` is a tree of the same kind (the lower of this copy's previous
 * layer): a file there at the same path with the same bytes, mode, owner and
 * time is hard-linked rather than written. Lowers are never changed, so they
 * may share inodes; on some disks creating a file costs twenty times a link,
 * and a copy that changed one source file of a thousand shares the rest.
 */
export function writeTree(entries: readonly TreeEntry[], dest: string, meta: (rel: string) => TreeMeta, mtime: number, reuse?: string): void {
  mkdirSync(dest, { mode: 0o700 });
  // Parents sort before their children.
  const sorted = [...entries].sort((a, b) => (a.rel < b.rel ? -1 : a.rel > b.rel ? 1 : 0));
  const dirs: TreeEntry[] = [];
  const buf = Buffer.allocUnsafe(COPY_CHUNK);
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
    } else if (!(reuse && linkedSame(path.join(reuse, e.rel), host, e, m, mtime))) {
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

const COPY_CHUNK = 256 * 1024;

/**
 * Links `old` at `host` when it is a regular file with the entry's metadata
 * and the source's bytes exactly (both read and compared: nothing about the
 * old tree is taken on trust). False, and nothing made, otherwise.
 */
function linkedSame(old: string, host: string, e: TreeEntry, m: TreeMeta, mtime: number): boolean {
  const st = lstatSync(old, { throwIfNoEntry: false });
  const size = e.st!.size;
  if (!st?.isFile() || st.size !== size || (st.mode & 0o7777) !== (m.mode & 0o7777) || st.uid !== m.uid || st.gid !== m.gid || st.mtimeMs !== mtime * 1000) {
    return false;
  }
  if (size > SAME_BYTES_MAX) return false;
  const want = Buffer.allocUnsafe(size);
  const have = Buffer.allocUnsafe(size);
  readExactly(e.abs!, want);
  try {
    readExactly(old, have);
  } catch {
    return false; // changed or gone since the lstat: write the file instead
  }
  if (!want.equals(have)) return false;
  try {
    linkSync(old, host);
    return true;
  } catch {
    return false; // another file system, too many links: write it
  }
}

/** Files compared byte for byte before linking are at most this big (the rest are written). */
const SAME_BYTES_MAX = 1024 * 1024;

function readExactly(file: string, into: Buffer): void {
  const fd = openSync(file, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  try {
    let done = 0;
    while (done < into.length) {
      const n = readSync(fd, into, done, into.length - done, done);
      if (n === 0) throw new Error(`${file}: changed size while it was read (${into.length} bytes expected, ${done} read)`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
}

function copyExactly(src: string, size: number, out: number, buf: Buffer): void {
  // O_NOFOLLOW: a source swapped for a symlink since it was listed fails rather than copying what it points at.
  // O_NONBLOCK: one swapped for a fifo fails rather than waiting for a writer.
  const fd = openSync(src, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  try {
    let done = 0;
    while (done < size) {
      const n = readSync(fd, buf, 0, Math.min(buf.length, size - done), done);
      if (n === 0) throw new Error(`${src}: changed size while it was copied (${size} bytes expected, ${done} read)`);
      writeAll(out, buf.subarray(0, n));
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
