/**
 * Content hashes of input files: `(path, stat) → hash`. A file whose stat
 * the stat cache knows is not read at all; any other is read once per run
 * (concurrent asks for the same file share one read), and its hash kept.
 */
import type { Stats } from 'node:fs';
import { closeSync, constants as fsConstants, createReadStream, openSync, readFileSync } from 'node:fs';
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
        const hash = await hashContent(absPath, st.size);
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

/**
 * Files up to this size are read synchronously, in one go: for the small
 * files of a source tree the page cache answers in microseconds, and three
 * trips to the thread pool per file (open, read, close) cost ten times the read.
 */
const WHOLE_FILE_LIMIT = 256 * 1024;

async function hashContent(absPath: string, size: number): Promise<string> {
  const { create64, h64Raw } = await getXXHash();
  if (size <= WHOLE_FILE_LIMIT) return toHex64(h64Raw(readSmallFile(absPath)));
  const h = create64();
  for await (const chunk of createReadStream(absPath, { highWaterMark: WHOLE_FILE_LIMIT })) h.update(chunk as Uint8Array);
  return toHex64(h.digest());
}

/**
 * The whole of a small file, read synchronously. O_NOFOLLOW: a file swapped
 * for a symlink since it was listed fails instead of hashing what it points at;
 * O_NONBLOCK: one swapped for a fifo fails instead of waiting for a writer.
 */
export function readSmallFile(absPath: string): Buffer {
  const fd = openSync(absPath, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
  try {
    return readFileSync(fd);
  } finally {
    closeSync(fd);
  }
}
