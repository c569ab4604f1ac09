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
import { UsageError } from '../errors.js';

export type CacheRef = { kind: 'dir'; path: string } | { kind: 'registry'; ref: string };

/** Where hits come from, for the report. */
export type CacheSourceKind = 'local' | CacheRef['kind'];

/** `dir:<path>` (relative to `cwd`) or `registry:<ref>`. */
export function parseCacheRef(text: string, flag: string, cwd: string): CacheRef {
  const m = /^(dir|registry):(.+)$/.exec(text);
  if (!m) throw new UsageError(`${flag} ${text}: expected dir:<path> or registry:<ref>`);
  return m[1] === 'dir' ? { kind: 'dir', path: path.resolve(cwd, m[2]!) } : { kind: 'registry', ref: m[2]! };
}

export interface CacheImport {
  readonly kind: CacheRef['kind'];
  /** The record of `key`, if the shared cache has it. */
  record(key: string): Promise<StepRecord | undefined>;
  /** What this image/step was last built as, where the shared cache was written: to explain a miss. */
  lastFor(image: string, step: string): Promise<StepRecord | undefined>;
  /** Put `layer` into `store`, its digest checked on the way. */
  fetchLayer(layer: LayerRef, store: ContentStore): Promise<void>;
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
    record: (key) => records.get(key),
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
