/**
 * The content store: blobs by sha256 digest under `<root>/blobs/sha256/<hex>`.
 *
 * A write is a transaction, as in containerd: bytes stream into a staging file
 * under `<root>/ingest/` while their digest is computed, the file is fsynced,
 * and only then renamed to its digest. A name under `blobs/` therefore always
 * holds complete bytes; "already exists" on commit is success. Blobs are
 * re-verified against their digest before they are reused (`verify`), so a
 * damaged cache is caught instead of copied into an image; a blob hashed
 * once is vouched for by its stat after that (the build's stat cache, as for
 * input files: a write changes its ctime), so a no-op rebuild does not read
 * every layer again. `cache verify` always re-reads them all. Every blob a
 * build asks about or commits is held in its lease first (cache/leases.ts),
 * so `cache prune` leaves it alone while the build runs.
 *
 * A blob can also be known without being here yet (`addRemote`): a hit from
 * a shared cache in a registry. It is fetched the first time its bytes are
 * read (`read`, `bytes`, `ensure`), so a build that only pushes it to where
 * it already is never downloads it.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, createWriteStream, existsSync } from 'node:fs';
import { access, lstat, mkdir, readFile, rename, rm } from 'node:fs/promises';
import path from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { Transform } from 'node:stream';
import { asDiskFull, CacheCorruptError } from '../errors.js';
import { faultPoint } from '../util/fault-point.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { ownerTag } from '../util/owner-tag.js';
import { hold } from './leases.js';
import { StatCache } from '../context/stat-cache.js';

export interface BlobInfo {
  /** `sha256:<hex>` */
  digest: string;
  size: number;
}

export class ContentStore {
  /** False for a store that keeps nothing (`layergraph plan`): what needs bytes kept, or writes beside them, is skipped. */
  readonly keepsBlobs: boolean = true;
  private readonly remotes = new Map<string, () => Promise<void>>();
  private readonly fetching = new Map<string, Promise<void>>();

  constructor(
    readonly root: string,
    /** Blobs already hashed, by path and stat; default: none (every verify reads the blob). */
    private readonly verified: StatCache = StatCache.none(),
  ) {}

  /** `fetch` puts `digest` into this store when something first reads it. */
  addRemote(digest: string, fetch: () => Promise<void>): void {
    this.remotes.set(digest, fetch);
  }

  /** Makes sure the blob's bytes are here (fetching a remote one once); a blob neither here nor remote is left to fail where it is read. */
  async ensure(digest: string): Promise<void> {
    const fetch = this.remotes.get(digest);
    if (!fetch || (await this.has(digest))) return;
    let flight = this.fetching.get(digest);
    if (!flight) {
      flight = fetch();
      this.fetching.set(digest, flight);
      flight.catch(() => this.fetching.delete(digest));
    }
    await flight;
  }

  blobPath(digest: string): string {
    return path.join(this.root, 'blobs', 'sha256', hexOf(digest));
  }

  async has(digest: string): Promise<boolean> {
    await hold(this.root, 'blob', digest);
    try {
      await access(this.blobPath(digest));
      return true;
    } catch {
      return false;
    }
  }

  read(digest: string): Readable {
    // Held even when the caller did not ask `has` or `verify` first (cheap when it did); a prune's window is waited out.
    const waiting = hold(this.root, 'blob', digest);
    if (!waiting && (!this.remotes.has(digest) || existsSync(this.blobPath(digest)))) return createReadStream(this.blobPath(digest));
    const out = new PassThrough();
    Promise.resolve(waiting)
      .then(() => this.ensure(digest))
      .then(
        () => createReadStream(this.blobPath(digest)).on('error', (err) => out.destroy(err)).pipe(out),
        (err: Error) => out.destroy(err),
      );
    return out;
  }

  /** Forget a blob (one found to be wrong). */
  async remove(digest: string): Promise<void> {
    await rm(this.blobPath(digest), { force: true });
  }

  /** A small blob (manifest, config) whole. */
  async bytes(digest: string): Promise<Buffer> {
    await hold(this.root, 'blob', digest);
    await this.ensure(digest);
    return readFile(this.blobPath(digest));
  }

  /** Stream bytes into the store. With `expected`, a mismatch removes the staging file and throws. */
  async ingest(source: Readable, expected?: string): Promise<BlobInfo> {
    // The pipeline below attaches only after an await: an error the source
    // emits before then (a missing file) must not go unheard and crash the process.
    source.on('error', () => undefined);
    const ingestDir = this.ingestDir();
    await mkdir(ingestDir, { recursive: true });
    // Named by its writer so a later run can tell a crashed writer's leftovers from a live one's.
    const staging = path.join(ingestDir, `${ownerTag()}-${randomBytes(8).toString('hex')}`);
    const hash = createHash('sha256');
    let size = 0;
    const tap = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        hash.update(chunk);
        size += chunk.length;
        faultPoint('pack');
        cb(null, chunk);
      },
    });
    try {
      const out = createWriteStream(staging, { mode: 0o644, flush: true });
      await pipeline(source, tap, out).catch((err: unknown) => {
        throw asDiskFull(err, staging);
      });
      faultPoint('store');
      const digest = `sha256:${hash.digest('hex')}`;
      if (expected !== undefined && expected !== digest) {
        throw new CacheCorruptError(`blob ${expected} arrived with digest ${digest}`);
      }
      await this.commit(staging, digest);
      return { digest, size };
    } finally {
      await rm(staging, { force: true });
    }
  }

  /** Store a small blob (config, manifest) held in memory; one already there is kept only if intact. */
  async put(bytes: Uint8Array): Promise<BlobInfo> {
    const digest = sha256Digest(bytes);
    if (!(await this.verify(digest))) await writeFileAtomic(this.blobPath(digest), bytes, this.ingestDir());
    return { digest, size: bytes.length };
  }

  /** True when the blob exists and its bytes still hash to its name. */
  async verify(digest: string): Promise<boolean> {
    await hold(this.root, 'blob', digest);
    const file = this.blobPath(digest);
    try {
      const st = await lstat(file);
      // Only a file: hashing would follow a symlink, whose target the stat does not vouch for.
      if (!st.isFile()) return false;
      await this.verified.ready();
      if (this.verified.known(file, st) === digest) return true;
      if ((await sha256File(file)) !== digest) return false;
      this.verified.remember(file, st, digest);
      return true;
    } catch {
      return false;
    }
  }

  /** Where every temp file of the cache is staged, named by its writer (swept after a crash: build/sweep.ts). */
  ingestDir(): string {
    return path.join(this.root, 'ingest');
  }

  private async commit(staging: string, digest: string): Promise<void> {
    // Held before the name appears, so `cache prune` never removes it between the commit and the record that names it.
    await hold(this.root, 'blob', digest);
    const target = this.blobPath(digest);
    await mkdir(path.dirname(target), { recursive: true });
    // rename over an existing blob with the same digest is harmless: same bytes.
    await rename(staging, target);
  }
}

/** The sha256 of bytes in memory, as `sha256:<hex>`. */
export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}

export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

function hexOf(digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m?.[1]) throw new CacheCorruptError(`not a sha256 digest: ${digest}`);
  return m[1];
}
