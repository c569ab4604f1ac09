/**
 * Synchronous reads of the files a build copies (its context, an image
 * snapshot). For trees of small files the page cache answers in
 * microseconds, and three trips to the thread pool per file (open, read,
 * close) cost many times the read itself.
 */
import { constants as fsConstants, openSync, readSync } from 'node:fs';

/** Files up to this size are read whole, synchronously; larger ones are streamed (or read a chunk at a time). */
export const SMALL_FILE_MAX = 256 * 1024;

/**
 * Opens a source file for reading. O_NOFOLLOW: one swapped for a symlink
 * since it was listed fails (ELOOP) rather than giving what it points at.
 * O_NONBLOCK: one swapped for a fifo fails rather than waiting for a writer.
 */
export function openSource(abs: string): number {
  return openSync(abs, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW | fsConstants.O_NONBLOCK);
}

/** Fills `buf` from the file at `position` on; returns how many bytes came (fewer only at the end of the file). */
export function readFull(fd: number, buf: Buffer, position = 0): number {
  let got = 0;
  while (got < buf.length) {
    const n = readSync(fd, buf, got, buf.length - got, position + got);
    if (n === 0) break;
    got += n;
  }
  return got;
}
