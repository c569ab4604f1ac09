/**
 * Step records: what a cached step produced and what went into its key.
 *
 * `records/<key>.json` answers "is this step cached?"; `names/<hash>.json`
 * remembers the key a given image/step last had, so a miss can be explained
 * by comparing what went into the old key with what goes into the new one.
 * Both are written atomically, and a record only after its layer blob is
 * committed, so a record never points at a missing or partial blob. A
 * build holds every record it reads or writes (cache/leases.ts), so `cache
 * prune` leaves it alone while the build runs.
 */
import { access, rm } from 'node:fs/promises';
import path from 'node:path';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { readJsonIfPresent } from '../util/fs-read.js';
import { hashValue } from '../util/xxhash.js';
import { hold } from './leases.js';
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
  constructor(
    readonly root: string,
    /** Told about a record or name file that is there but damaged (treated as absent, so the step is rebuilt). */
    private readonly onDamage: (file: string, what: string) => void = () => undefined,
  ) {}

  async get(key: string): Promise<StepRecord | undefined> {
    await hold(this.root, 'record', key);
    const file = path.join(this.root, 'records', `${key}.json`);
    const record = await readJsonIfPresent<StepRecord>(file, () => this.onDamage(file, 'not valid JSON'));
    if (record === undefined || isStepRecord(record, key)) return record;
    this.onDamage(file, 'not a step record for this key');
    return undefined;
  }

  /** Whether a record file is there under `key` (read or not: a quick look before a likely hit). */
  async has(key: string): Promise<boolean> {
    return access(path.join(this.root, 'records', `${key}.json`)).then(
      () => true,
      () => false,
    );
  }

  async put(record: StepRecord): Promise<void> {
    await hold(this.root, 'record', record.key);
    await writeFileAtomic(path.join(this.root, 'records', `${record.key}.json`), JSON.stringify(record), this.staging());
    await this.setLast(record.image, record.step, record.key);
  }

  /** Remember `key` as this image/step's latest, so the next miss is compared with this run, hits included. */
  async setLast(image: string, step: string, key: string): Promise<void> {
    const file = await this.namePath(image, step);
    if ((await this.readName(file))?.key !== key) await writeFileAtomic(file, JSON.stringify({ key }), this.staging());
  }

  async remove(key: string): Promise<void> {
    await rm(path.join(this.root, 'records', `${key}.json`), { force: true });
  }

  /** The record this image/step had the last time it was built, if it is still there. */
  async lastFor(image: string, step: string): Promise<StepRecord | undefined> {
    const ref = await this.readName(await this.namePath(image, step));
    return ref ? this.get(ref.key) : undefined;
  }

  private async readName(file: string): Promise<{ key: string } | undefined> {
    const ref = await readJsonIfPresent<{ key: string }>(file, () => this.onDamage(file, 'not valid JSON'));
    if (ref === undefined || (typeof ref === 'object' && ref !== null && typeof ref.key === 'string' && KEY.test(ref.key))) return ref;
    this.onDamage(file, 'not a step name file');
    return undefined;
  }

  /** The cache's staging directory (ingest/, swept after a crash), on the same file system as the records. */
  private staging(): string {
    return path.join(this.root, 'ingest');
  }

  private async namePath(image: string, step: string): Promise<string> {
    return path.join(this.root, 'names', `${await hashValue([image, step])}.json`);
  }
}

const KEY = /^[0-9a-f]{16,128}$/;
const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** A record as `put` writes it, for `key`: anything else is damage, never a hit. */
function isStepRecord(r: unknown, key: string): r is StepRecord {
  if (typeof r !== 'object' || r === null) return false;
  const rec = r as Partial<StepRecord>;
  if (rec.recordVersion !== 1 || rec.key !== key || typeof rec.image !== 'string' || typeof rec.step !== 'string') return false;
  if (typeof rec.material !== 'object' || rec.material === null || typeof rec.buildMs !== 'number') return false;
  const l = rec.layer;
  if (l === null) return true;
  return typeof l === 'object' && l !== undefined && typeof l.digest === 'string' && DIGEST.test(l.digest) && typeof l.diffId === 'string' && DIGEST.test(l.diffId) && Number.isSafeInteger(l.size) && l.size >= 0;
}
