/**
 * Step records: what a cached step produced and what went into its key.
 *
 * `records/<key>.json` answers "is this step cached?"; `names/<hash>.json`
 * remembers the key a given image/step last had, so a miss can be explained
 * by comparing what went into the old key with what goes into the new one.
 * Both are written atomically, and a record only after its layer blob is
 * committed, so a record never points at a missing or partial blob.
 */
import { rm } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { readJsonIfPresent } from '../util/fs-read.js';
import { hashValue } from '../util/xxhash.js';
import type { KeyMaterial } from './step-key.js';

export interface LayerRef {
  /** `sha256:` digest of the compressed blob. */
  digest: string;
  /** `sha256:` digest of the uncompressed tar. */
  diffId: string;
  size: number;
}

export interface StepRecord {
  recordVersion: 1;
  key: string;
  image: string;
  step: string;
  material: KeyMaterial;
  /** null when the step wrote nothing (an empty layer). */
  layer: LayerRef | null;
  /** How long the miss took to build, so later hits can say what they saved. */
  buildMs: number;
}

export class StepRecords {
  constructor(readonly root: string) {}

  async get(key: string): Promise<StepRecord | undefined> {
    return readJsonIfPresent<StepRecord>(path.join(this.root, 'records', `${key}.json`));
  }

  async put(record: StepRecord): Promise<void> {
    await writeFileAtomic(path.join(this.root, 'records', `${record.key}.json`), JSON.stringify(record));
    await this.setLast(record.image, record.step, record.key);
  }

  /** Remember `key` as this image/step's latest, so the next miss is compared with this run, hits included. */
  async setLast(image: string, step: string, key: string): Promise<void> {
    const file = await this.namePath(image, step);
    if ((await readJsonIfPresent<{ key: string }>(file))?.key !== key) await writeFileAtomic(file, JSON.stringify({ key }));
  }

  async remove(key: string): Promise<void> {
    await rm(path.join(this.root, 'records', `${key}.json`), { force: true });
  }

  /** The record this image/step had the last time it was built, if it is still there. */
  async lastFor(image: string, step: string): Promise<StepRecord | undefined> {
    const ref = await readJsonIfPresent<{ key: string }>(await this.namePath(image, step));
    return ref ? this.get(ref.key) : undefined;
  }

  private async namePath(image: string, step: string): Promise<string> {
    return path.join(this.root, 'names', `${await hashValue([image, step])}.json`);
  }
}
