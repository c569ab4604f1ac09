/**
 * Gzip that uses every core, with output that does not depend on how many
 * there are.
 *
 * The input is cut into fixed-size pieces by byte offset, each piece is
 * compressed as its own gzip member on libuv's thread pool, and the members
 * are written out in order. Concatenated members are one valid gzip file
 * (RFC 1952 §2.2) that every layer reader we know reads whole: Go's
 * compress/gzip (containerd, skopeo, umoci) and Node's zlib read
 * multistream by default. A layer smaller than one piece is a single member,
 * byte for byte what one zlib stream gives.
 *
 * Written here because no maintained npm package does this: pigz-style
 * libraries spawn pigz or run pure-JS deflate, and Node's zlib has no
 * multi-threaded mode.
 */
import { availableParallelism } from 'node:os';
import { Transform, type TransformCallback } from 'node:stream';
import { gzip, type ZlibOptions } from 'node:zlib';

/** Bytes of input per member. 1 MiB loses well under 1% of ratio to one stream (each member restarts a 32 KiB window). */
export const GZIP_PIECE_BYTES = 1 << 20;

/**
 * Pieces queued per core: with one, a core sat idle while the main thread
 * read and tarred the next piece (1 GiB packed at 0.79 × the pigz pipeline;
 * 256 MiB: one per core 8.1 s, two 7.2 s, three 6.9 s, four 7.2–7.6 s).
 */
const IN_FLIGHT_PER_CORE = 3;

/** Gzip header OS byte for "unknown", as Go's compress/gzip (and so most OCI tooling) writes it. */
const GZIP_OS_UNKNOWN = 255;

export interface ParallelGzipOptions {
  level?: number;
  /** Pieces compressed at once (default: three per core); memory is about twice this many pieces. */
  inFlight?: number;
}

export function parallelGzip(opts: ParallelGzipOptions = {}): Transform {
  // One output buffer larger than any member (deflate grows incompressible data by a few bytes per
  // 16 KiB block): a piece is then one thread-pool job instead of one round trip per 16 KiB.
  const zopts: ZlibOptions = { level: opts.level ?? 6, chunkSize: GZIP_PIECE_BYTES + (64 << 10) };
  const limit = Math.max(1, opts.inFlight ?? availableParallelism() * IN_FLIGHT_PER_CORE);
  // Results in input order: each piece's promise is pushed when the piece is cut.
  const queue: Promise<Buffer>[] = [];
  let pending: Buffer[] = [];
  let pendingBytes = 0;
  let members = 0;

  const compress = (piece: Buffer): void => {
    const member = new Promise<Buffer>((resolve, reject) =>
      gzip(piece, zopts, (err, out) => {
        if (err) return reject(err);
        out[9] = GZIP_OS_UNKNOWN;
        resolve(out);
      }),
    );
    member.catch(() => undefined); // awaited in order later; a failure must not go unhandled meanwhile
    queue.push(member);
    members++;
  };

  const cut = (): void => {
    const all = pending.length === 1 ? pending[0]! : Buffer.concat(pending, pendingBytes);
    let at = 0;
    while (all.length - at >= GZIP_PIECE_BYTES) {
      compress(all.subarray(at, at + GZIP_PIECE_BYTES));
      at += GZIP_PIECE_BYTES;
    }
    pending = at < all.length ? [all.subarray(at)] : [];
    pendingBytes = all.length - at;
  };

  // Writes finished members out, waiting for the oldest while more than `keep` are queued.
  const drain = async (stream: Transform, keep: number): Promise<void> => {
    while (queue.length > keep) stream.push(await queue.shift()!);
  };

  return new Transform({
    transform(this: Transform, chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback) {
      pending.push(chunk);
      pendingBytes += chunk.length;
      if (pendingBytes < GZIP_PIECE_BYTES) return cb();
      cut();
      drain(this, limit - 1).then(() => cb(), cb);
    },
    flush(this: Transform, cb: TransformCallback) {
      // An empty input is still one (empty) member, as zlib writes it.
      if (pendingBytes > 0 || members === 0) compress(Buffer.concat(pending, pendingBytes));
      pending = [];
      pendingBytes = 0;
      drain(this, 0).then(() => cb(), cb);
    },
  });
}
