/**
 * A cache shared between machines (`--cache-to`, `--cache-from`): the step
 * records of a build and the layers they point to, so a fresh runner with an
 * empty cache directory hits where the last run did, and explains a miss
 * against what the last run built ("input x changed").
 *
 * `dir:<path>` is laid out as a cache directory is (records/, names/,
 * blobs/sha256/), so the same classes read and write it; the registry form
 * (an OCI artifact) lives in registry-cache.ts. Import is lazy: a record is
 * read when a key is looked up, its layer fetched when it is a hit.
 */
import path from 'node:path';
import { ContentStore } from './content-store.js';
import { StepRecords, type LayerRef, type StepRecord } from './step-records.js';
import { createHash } from 'node:crypto';
import { CacheCorruptError, UsageError } from '../errors.js';
import { uncompressed } from '../oci/layer-apply.js';
import { stepKey } from './step-key.js';

export type CacheRef = { kind: 'dir'; path: string } | { kind: 'registry'; ref: string };

/** Where hits come from, for the report. */
export type CacheSourceKind = 'local' | CacheRef['kind'];

/** `dir:<path>` (relative to `cwd`) or `registry:<ref>`. */
export function parseCacheRef(text: string, flag: string, cwd: string): CacheRef {
  const m = /^(dir|registry):(.+)$/.exec(text);
  if (!m) throw new UsageError(`${flag} ${text}: expected dir:<path> or registry:<ref>`);
  if (m[1] === 'dir') return { kind: 'dir', path: path.resolve(cwd, m[2]!) };
  if (flag === '--cache-to' && m[2]!.includes('@')) throw new UsageError(`${flag} ${text}: name the cache by a tag (registry:<repo>:<tag>); a digest cannot be written to`);
  return { kind: 'registry', ref: m[2]! };
}

export interface CacheImport {
  readonly kind: CacheRef['kind'];
  /** As the user wrote it, for messages: `dir:<path>`, `registry:<ref>`. */
  readonly label: string;
  /** The record of `key`, if the shared cache has it. */
  record(key: string): Promise<StepRecord | undefined>;
  /** What this image/step was last built as, where the shared cache was written: to explain a miss. */
  lastFor(image: string, step: string): Promise<StepRecord | undefined>;
  /** Put `layer` into `store`, its digest checked on the way. */
  fetchLayer(layer: LayerRef, store: ContentStore): Promise<void>;
}

/**
 * Whether a shared record can stand for `key`: this format, this key, and
 * key material that hashes to it (a record edited or from another version
 * of layergraph cannot pass for a hit).
 */
export async function trustworthy(record: StepRecord, key: string): Promise<boolean> {
  try {
    return record.recordVersion === 1 && record.key === key && (await stepKey(record.material)) === key;
  } catch {
    return false; // material that cannot even be hashed vouches for nothing
  }
}

/**
 * Fetches a shared hit's layer and checks it all the way: the blob against
 * its digest (on the way in) and its uncompressed tar against the record's
 * diffID, so a record cannot put a layer into an image that its config
 * would misdescribe.
 */
export async function fetchChecked(source: CacheImport, record: StepRecord, layer: LayerRef, store: ContentStore): Promise<void> {
  const what = `layer ${layer.digest} of ${record.image}/${record.step}`;
  const had = await store.has(layer.digest);
  try {
    await source.fetchLayer(layer, store);
  } catch (err) {
    throw new CacheCorruptError(`shared cache ${source.label}: cannot fetch ${what}: ${(err as Error).message}`);
  }
  const hash = createHash('sha256');
  for await (const chunk of await uncompressed(store.read(layer.digest))) hash.update(chunk as Buffer);
  const diffId = `sha256:${hash.digest('hex')}`;
  if (diffId !== layer.diffId) {
    // A blob we had before is the record's mistake, not the blob's: only what this fetch brought in goes.
    if (!had) await store.remove(layer.digest);
    throw new CacheCorruptError(`shared cache ${source.label}: ${what} unpacks to diffID ${diffId}, but its record says ${layer.diffId}`);
  }
}

export interface CacheExport {
  /** Writes `records` and the layers they point to (read from `store`); returns what it had to copy. */
  write(records: StepRecord[], store: ContentStore): Promise<{ blobs: number; bytes: number }>;
}

export function dirImport(dir: string): CacheImport {
  const records = new StepRecords(dir);
  const blobs = new ContentStore(dir);
  return {
    kind: 'dir',
    label: `dir:${dir}`,
    // A record whose layer is not there is no hit.
    record: async (key) => {
      const record = await records.get(key);
      return record && (!record.layer || (await blobs.has(record.layer.digest))) ? record : undefined;
    },
    lastFor: (image, step) => records.lastFor(image, step),
    fetchLayer: async (layer, store) => {
      if (await store.has(layer.digest)) return;
      await store.ingest(blobs.read(layer.digest), layer.digest);
    },
  };
}

export function dirExport(dir: string): CacheExport {
  const records = new StepRecords(dir);
  const blobs = new ContentStore(dir);
  return {
    write: async (list, store) => {
      let copied = 0;
      let bytes = 0;
      for (const record of list) {
        // The blob before the record, as in the local cache: a record never points at a missing blob.
        // A blob already there was written whole (staged, then renamed) and is checked when imported.
        if (record.layer && !(await blobs.has(record.layer.digest))) {
          await blobs.ingest(store.read(record.layer.digest), record.layer.digest);
          copied++;
          bytes += record.layer.size;
        }
        await records.put(record);
      }
      return { blobs: copied, bytes };
    },
  };
}
