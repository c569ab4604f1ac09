/**
 * Content hashes of input files: `(path, stat) → hash`. A file whose stat
 * the stat cache knows is not read at all; any other is read once per run
 * (concurrent asks for the same file share one read), and its hash kept.
 */
import type { Stats } from 'node:fs';
import { closeSync, createReadStream, fstatSync } from 'node:fs';
import { openSource, readFull, SMALL_FILE_MAX } from '../util/source-read.js';
import { getXXHash, toHex64 } from '../util/xxhash.js';
import { StatCache } from './stat-cache.js';

export interface FileHasher {
  hash(absPath: string, st: Stats): Promise<string>;
  /** Prepares `known`. */
  ready?(): Promise<void>;
  /** A hash known without reading the file (the stat cache vouches for it), answered synchronously. */
  known?(absPath: string, st: Stats): string | undefined;
}

export class ContentHasher implements FileHasher {
  private readonly inflight = new Map<string, Promise<string>>();
  /** Files whose content this run read (a no-op rebuild reads none). */
  reads = 0;

  constructor(private readonly stats: StatCache = StatCache.none()) {}

  hash(absPath: string, st: Stats): Promise<string> {
    const id = `${absPath}\0${st.size}\0${st.mtimeMs}\0${st.ino}\0${st.ctimeMs}`;
    let p = this.inflight.get(id);
    if (!p) {
      p = this.stats.lookup(absPath, st).then(async (known) => {
        if (known) return known;
        this.reads++;
        const hash = await hashContent(absPath, st);
        this.stats.remember(absPath, st, hash);
        return hash;
      });
      this.inflight.set(id, p);
    }
    return p;
  }

  ready(): Promise<void> {
    return this.stats.ready();
  }

  known(absPath: string, st: Stats): string | undefined {
    return this.stats.known(absPath, st);
  }

  /** Keeps what this run hashed for the next one. */
  save(): Promise<void> {
    return this.stats.save();
  }
}

async function hashContent(absPath: string, st: Stats): Promise<string> {
  const { create64, h64Raw } = await getXXHash();
  const fd = openListed(absPath, st);
  try {
    if (st.size <= SMALL_FILE_MAX) return toHex64(h64Raw(readExactly(fd, absPath, st.size)));
    // Exactly the listed size, from the file that was checked (a path opened again could be another).
    const h = create64();
    for await (const chunk of createReadStream('', { fd, autoClose: false, start: 0, end: st.size - 1, highWaterMark: SMALL_FILE_MAX })) {
      h.update(chunk as Uint8Array);
    }
    if (fstatSync(fd).size !== st.size) throw changedWhileRead(absPath);
    return toHex64(h.digest());
  } finally {
    closeSync(fd);
  }
}

/**
 * The listed file (`st`) opened for reading, if it still is that file: same
 * inode, a regular file, that size. One replaced meanwhile (by a fifo, a
 * device, a symlink, another file) fails, naming it, rather than hashing
 * something else under the listed stat.
 */
function openListed(absPath: string, st: Stats): number {
  let fd: number;
  try {
    fd = openSource(absPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ELOOP') throw changedWhileRead(absPath);
    throw err;
  }
  const now = fstatSync(fd);
  if (!now.isFile() || now.ino !== st.ino || now.dev !== st.dev || now.size !== st.size) {
    closeSync(fd);
    throw changedWhileRead(absPath);
  }
  return fd;
}

function readExactly(fd: number, absPath: string, size: number): Buffer {
  const buf = Buffer.allocUnsafe(size);
  if (readFull(fd, buf) !== size) throw changedWhileRead(absPath);
  return buf;
}

function changedWhileRead(absPath: string): Error {
  return new Error(`${absPath} changed while it was being read; run the build again`);
}
