/**
 * Run a build: key every step, reuse what the cache has, build the rest in
 * parallel, then assemble each image and write one OCI image layout.
 *
 * Every step starts as a task at once and waits for what it needs (BuildKit's
 * model: a vertex is keyed before it runs, and a cached vertex never runs).
 * A step has two phases. Its *key* needs the keys of the steps below it
 * (unless it is linked), never their layers. Its *build* needs no layer below
 * it either — a copy never reads the filesystem it lands on — so a chain of
 * copy steps builds in parallel as soon as each key is known. Only `copy …
 * from:` waits for layers: those of the image it reads. `--jobs` bounds the
 * work in flight, not the waiting.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { ContentStore } from '../cache/content-store.js';
import { explainMiss } from '../cache/explain.js';
import { belowKey, chainKey, stepKey, type KeyMaterial } from '../cache/step-key.js';
import { StepRecords, type LayerRef } from '../cache/step-records.js';
import type { BuildSpec, CopyStep, ImageSpec } from '../config/types.js';
import { ContentHasher } from '../context/file-hasher.js';
import type { Selection } from '../context/select.js';
import { ConfigError, LayergraphError, StepError } from '../errors.js';
import { CopyDestinationError, writeCopy } from '../exec/copy-step.js';
import { buildGraph, imagesFor, nodeId } from '../graph/build-graph.js';
import { isEmptyTree, packLayer } from '../oci/layer-pack.js';
import { hashValue } from '../util/xxhash.js';
import { assembleImages, type BuiltImage } from './assemble.js';
import { copyInputs, copyMaterial, copySelections } from './copy-inputs.js';
import type { BuildEvent, StepResult } from './events.js';
import { Semaphore } from './semaphore.js';
import { SnapshotCache } from './snapshots.js';

export interface BuildOptions {
  cacheDir: string;
  /** Where to write the OCI image layout; undefined builds without writing one. */
  outDir: string | undefined;
  /** Images to build and write (with what they need); empty means all. */
  targets: string[];
  jobs: number;
  /** Seconds since the epoch stamped into every layer entry and config. */
  sourceDateEpoch: number;
  onEvent?: (event: BuildEvent) => void;
  /** Once aborted, no new step starts; running ones finish; the cache stays valid. */
  signal?: AbortSignal;
}

export interface BuildResult {
  images: BuiltImage[];
  /** One per step of every image built, in file order. */
  steps: StepResult[];
  durationMs: number;
  /** The first failure, when the build failed. */
  error?: Error;
}

interface StepTask {
  /** Settles once the step is keyed: the key of the filesystem with this step applied. */
  chain: Promise<string>;
  /** Settles once the step's layer is in the store (null: the step wrote nothing). */
  layer: Promise<LayerRef | null>;
}

/** Rejects the tasks of steps that cannot run because something they need failed. */
class Skipped extends Error {}

export async function runBuild(spec: BuildSpec, opts: BuildOptions): Promise<BuildResult> {
  const run = new BuildRun(spec, opts);
  return run.execute();
}

class BuildRun {
  private readonly t0 = performance.now();
  private readonly layerOrder: Map<string, CopyStep[]>;
  private readonly images: ImageSpec[];
  private readonly store: ContentStore;
  private readonly records: StepRecords;
  private readonly snapshots: SnapshotCache;
  private readonly hasher = new ContentHasher();
  private readonly jobs: Semaphore;
  private readonly tmpRoot: string;
  private readonly results = new Map<string, StepResult>();
  private readonly tasks = new Map<string, StepTask>();
  private readonly imageKeys = new Map<string, Promise<string>>();
  /** One flight per key: steps with the same key in one run (a shared linked step) build once. */
  private readonly building = new Map<string, { by: string; layer: Promise<LayerRef | null> }>();
  private firstError: Error | undefined;

  constructor(
    private readonly spec: BuildSpec,
    private readonly opts: BuildOptions,
  ) {
    this.layerOrder = buildGraph(spec).layerOrder;
    this.images = imagesFor(spec, opts.targets);
    this.store = new ContentStore(opts.cacheDir);
    this.records = new StepRecords(opts.cacheDir);
    this.snapshots = new SnapshotCache(opts.cacheDir, this.store);
    this.jobs = new Semaphore(Math.max(1, opts.jobs));
    this.tmpRoot = path.join(opts.cacheDir, 'tmp', `${process.pid}-${randomBytes(4).toString('hex')}`);
  }

  async execute(): Promise<BuildResult> {
    await mkdir(this.tmpRoot, { recursive: true });
    this.emit({ type: 'plan', steps: this.images.flatMap((img) => img.steps.map((s) => ({ image: img.name, step: s.id }))) });
    try {
      for (const image of this.images) {
        for (const step of image.steps) this.tasks.set(nodeId(image.name, step.id), this.startStep(image, step));
      }
      await Promise.allSettled([...this.tasks.values()].flatMap((t) => [t.chain, t.layer]));
    } finally {
      await rm(this.tmpRoot, { recursive: true, force: true });
    }
    this.reportSkipped();
    const steps = this.images.flatMap((img) => img.steps.map((s) => this.results.get(nodeId(img.name, s.id))!));
    if (!this.firstError && this.opts.signal?.aborted) this.firstError = new LayergraphError('STEP_FAILED', 'build interrupted');
    if (this.firstError) return { images: [], steps, durationMs: this.now(), error: this.firstError };

    const outputs = this.opts.targets.length ? this.images.filter((i) => this.opts.targets.includes(i.name)) : this.images;
    const images = await assembleImages({
      store: this.store,
      images: this.images,
      outputs,
      layerOrder: this.layerOrder,
      layerOf: (image, step) => this.task(image, step).layer,
      outDir: this.opts.outDir,
      sourceDateEpoch: this.opts.sourceDateEpoch,
    });
    return { images, steps, durationMs: this.now() };
  }

  private startStep(image: ImageSpec, step: CopyStep): StepTask {
    let keyed!: (chain: Promise<string>) => void;
    const chain = new Promise<string>((resolve) => (keyed = resolve));
    const layer = this.runStep(image, step, keyed);
    // A step that fails or is skipped before it is keyed leaves its chain to fail the same way.
    layer.catch((err: unknown) => keyed(Promise.reject(err)));
    chain.catch(() => undefined);
    return { chain, layer };
  }

  private async runStep(image: ImageSpec, step: CopyStep, keyed: (chain: Promise<string>) => void): Promise<LayerRef | null> {
    const below = this.belowOf(image, step);
    below.catch(() => undefined);
    const parent = step.link ? null : await below;
    // Wait for the source image's layers outside the job slots: they may need those slots to be built.
    const source = step.fromImage
      ? { key: await this.imageKey(step.fromImage.image), layers: await this.imageLayers(step.fromImage.image) }
      : undefined;

    return this.jobs.run(async () => {
      if (this.opts.signal?.aborted || this.firstError) throw new Skipped();
      const startMs = this.now();
      this.emit({ type: 'step-start', image: image.name, step: step.id, atMs: startMs });
      try {
        const sourceRoot = source ? await this.snapshots.materialize(source.key, source.layers) : this.spec.context;
        const selections = await copySelections(step, sourceRoot);
        const material = copyMaterial(step, await copyInputs(step, selections, this.hasher), parent);
        const key = await stepKey(material);
        keyed(below.then((b) => chainKey(b, key)));
        const done = await this.reuseOrBuild(image, step, key, material, selections, startMs);
        this.finish(done);
        return done.layer;
      } catch (err) {
        const error = asUserError(err, image, step);
        this.firstError ??= error;
        this.finish(this.stepResult(image, step, 'failed', error.message, '', startMs, null, 0));
        throw new Skipped();
      }
    });
  }

  private async reuseOrBuild(
    image: ImageSpec,
    step: CopyStep,
    key: string,
    material: KeyMaterial,
    selections: Selection[],
    startMs: number,
  ): Promise<StepResult> {
    const twin = this.building.get(key);
    if (twin) {
      const layer = await twin.layer;
      return this.stepResult(image, step, 'hit', `same as ${twin.by}, built in this run`, key, startMs, layer, 0);
    }
    const flight = this.lookupOrBuild(image, step, key, material, selections);
    this.building.set(key, { by: `${image.name}/${step.id}`, layer: flight.then((f) => f.layer) });
    const f = await flight;
    return this.stepResult(image, step, f.status, f.reason, key, startMs, f.layer, f.savedMs);
  }

  private async lookupOrBuild(
    image: ImageSpec,
    step: CopyStep,
    key: string,
    material: KeyMaterial,
    selections: Selection[],
  ): Promise<{ status: 'hit' | 'miss'; reason: string; layer: LayerRef | null; savedMs: number }> {
    const cached = await this.records.get(key);
    let reason: string;
    if (cached && (cached.layer === null || (await this.store.verify(cached.layer.digest)))) {
      return { status: 'hit', reason: '', layer: cached.layer, savedMs: cached.buildMs };
    } else if (cached) {
      reason = 'cached layer failed its digest check';
      await this.records.remove(key);
    } else {
      reason = explainMiss((await this.records.lastFor(image.name, step.id))?.material, material);
    }
    const t = performance.now();
    const layer = await this.buildCopyLayer(step, selections);
    const buildMs = Math.round(performance.now() - t);
    await this.records.put({ recordVersion: 1, key, image: image.name, step: step.id, material, layer, buildMs });
    return { status: 'miss', reason, layer, savedMs: 0 };
  }

  private async buildCopyLayer(step: CopyStep, selections: Selection[]): Promise<LayerRef | null> {
    const upper = path.join(this.tmpRoot, randomBytes(6).toString('hex'));
    await mkdir(upper);
    try {
      await writeCopy(upper, selections, step);
      if (await isEmptyTree(upper)) return null;
      const owner = step.chown ?? { uid: 0, gid: 0 };
      const packed = packLayer(upper, { mtime: this.opts.sourceDateEpoch, owner: () => owner });
      const blob = await this.store.ingest(packed.stream);
      return { digest: blob.digest, size: blob.size, diffId: await packed.diffId };
    } finally {
      await rm(upper, { recursive: true, force: true });
    }
  }

  /** Key of what a step sits on: its needs' chains, or its image's base. */
  private async belowOf(image: ImageSpec, step: CopyStep): Promise<string> {
    if (step.needs.length === 0) return this.baseKey(image);
    return belowKey(await Promise.all(step.needs.map((n) => this.task(image.name, n).chain)));
  }

  private baseKey(image: ImageSpec): Promise<string> {
    return image.from.kind === 'scratch' ? Promise.resolve('scratch') : this.imageKey(image.from.image);
  }

  /** Key of a whole image: its base and every one of its layers, in order. */
  private imageKey(name: string): Promise<string> {
    let p = this.imageKeys.get(name);
    if (!p) {
      const image = this.imageSpec(name);
      p = (async () => {
        const base = await this.baseKey(image);
        const chains = await Promise.all(this.layerOrder.get(name)!.map((s) => this.task(name, s.id).chain));
        return hashValue(['image', base, ...chains]);
      })();
      this.imageKeys.set(name, p);
    }
    return p;
  }

  private async imageLayers(name: string): Promise<LayerRef[]> {
    const image = this.imageSpec(name);
    const base = image.from.kind === 'image' ? await this.imageLayers(image.from.image) : [];
    const own = await Promise.all(this.layerOrder.get(name)!.map((s) => this.task(name, s.id).layer));
    return [...base, ...own.filter((l): l is LayerRef => l !== null)];
  }

  private task(image: string, step: string): StepTask {
    return this.tasks.get(nodeId(image, step))!;
  }

  private imageSpec(name: string): ImageSpec {
    return this.images.find((i) => i.name === name)!;
  }

  private reportSkipped(): void {
    const reason = this.opts.signal?.aborted ? 'build interrupted' : 'not built: a step it needs failed';
    for (const image of this.images) {
      for (const step of image.steps) {
        if (!this.results.has(nodeId(image.name, step.id))) {
          this.finish(this.stepResult(image, step, 'skipped', reason, '', this.now(), null, 0));
        }
      }
    }
  }

  private stepResult(
    image: ImageSpec,
    step: CopyStep,
    status: StepResult['status'],
    reason: string,
    key: string,
    startMs: number,
    layer: LayerRef | null,
    savedMs: number,
  ): StepResult {
    return { image: image.name, step: step.id, status, reason, key, startMs, durationMs: this.now() - startMs, layer, savedMs };
  }

  private finish(result: StepResult): void {
    this.results.set(nodeId(result.image, result.step), result);
    this.emit({ type: 'step-end', result });
  }

  private emit(event: BuildEvent): void {
    this.opts.onEvent?.(event);
  }

  private now(): number {
    return Math.round(performance.now() - this.t0);
  }
}

/** Errors a user can act on keep their kind; anything else becomes a step failure that names the step. */
function asUserError(err: unknown, image: ImageSpec, step: CopyStep): Error {
  if (err instanceof CopyDestinationError) {
    return new ConfigError([{ pos: step.keyPos.to ?? step.pos, path: `images.${image.name}.steps.${step.id}.to`, message: err.message }]);
  }
  if (err instanceof LayergraphError) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new StepError(image.name, step.id, message, step.pos, { cause: err });
}
