/**
 * `plan`: the graph of a build and, for each step, whether it would hit,
 * worked out from its inputs alone: nothing is built, no command runs,
 * nothing is mounted, and the cache is only read (not even a record, a name,
 * a snapshot or a temp file is written there).
 *
 * A step's key needs its definition, its input files and the chain key of
 * what it sits on, and chain keys come from keys, never from layers (see
 * step-keys.ts). So a step above one that will miss still has a key: it
 * would miss (its parent changed) or, if its record is somehow there, hit.
 * What cannot be known before building is the *input files* of a `copy …
 * from:` whose source image has a layer that is not built yet: those files
 * are in that layer. Such a step is `unknown`, and so is everything whose
 * key or chain covers it: the steps above it (unless linked, whose own key
 * ignores what is below; their chain still covers it), images built `from`
 * its image, and copies out of its image.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { existsSync } from 'node:fs';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { ContentStore, sha256Digest, type BlobInfo } from '../cache/content-store.js';
import { explainMiss } from '../cache/explain.js';
import { chainKey, stepKey, type KeyMaterial } from '../cache/step-key.js';
import { StepRecords, type LayerRef, type StepRecord } from '../cache/step-records.js';
import type { CacheImport, CacheSourceKind } from '../cache/shared-cache.js';
import type { RegistryClient } from '../registry/client.js';
import type { BuildSpec, ImageSpec, StepSpec } from '../config/types.js';
import { loadContextFilter, type ContextFilter } from '../context/context-filter.js';
import { ContentHasher } from '../context/file-hasher.js';
import type { SourcePos } from '../errors.js';
import { CacheCorruptError } from '../errors.js';
import { buildGraph, imagesFor, nodeId } from '../graph/build-graph.js';
import { stepEdges, type StepEdge } from '../graph/step-edges.js';
import type { BaseImage } from '../oci/base-image.js';
import { copyInputs, copyMaterial, copySelections } from './copy-inputs.js';
import { runMaterial, runSettings } from './run-inputs.js';
import { readSnapshot, SnapshotCache, type Snapshot } from './snapshots.js';
import { BaseConfigs, externalChain, imageChainKey, needsChain, needsInLayerOrder, openExternalBase, SCRATCH_CHAIN } from './step-keys.js';
import { validateSources } from './validate-sources.js';

export type PlanStatus = 'hit' | 'miss' | 'unknown';

export interface PlannedStep {
  image: string;
  step: string;
  kind: StepSpec['kind'];
  status: PlanStatus;
  /** Why it would miss, or why its key is unknown until something is built; empty for a hit. */
  reason: string;
  /** null when unknown until built. */
  key: string | null;
  /** For a hit: the cached layer (null when the step writes nothing). */
  layer: LayerRef | null;
  /** For a hit: what building it took when it was built. */
  savedMs: number;
  /** For a hit: whether the local cache has it or a shared one (`--cache-from`). */
  cacheSource?: CacheSourceKind;
  pos: SourcePos;
}

export interface BuildPlan {
  /** Images in file order, each with what it is built on (`scratch`, an image of the file, or `oci:…`). */
  images: Array<{ name: string; from: string }>;
  /** Every step of those images, in file order. */
  steps: PlannedStep[];
  edges: StepEdge[];
}

export interface PlanOptions {
  cacheDir: string;
  /** Directories the build leaves out of the context (its `--out`, archives): the same as the build's, or the keys differ. */
  ownDirs: string[];
  /** Images to plan (with what they need); empty means all. */
  targets: string[];
  sourceDateEpoch: number;
  /** Shared caches a build would look in (`--cache-from`); only their records are read. */
  cacheFrom?: CacheImport[];
  /** For bases and caches in registries. */
  registry?: () => Promise<RegistryClient>;
}

/**
 * Plan `spec` against the cache in `opts.cacheDir`. Source problems throw a
 * ConfigError, as `run` and `validate` do.
 */
export async function planBuild(spec: BuildSpec, opts: PlanOptions): Promise<BuildPlan> {
  const tmp = await mkdtemp(path.join(os.tmpdir(), 'layergraph-plan-'));
  try {
    return await new Planner(spec, opts, tmp).plan();
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}

/** A chain key, or why it is not known yet and which steps must be built first. */
type Chain = { chain: string } | { chain: null; why: string; waitsFor: string[] };

interface StepState {
  planned: PlannedStep;
  chain: Chain;
}

class Planner {
  private readonly graph;
  private readonly images: ImageSpec[];
  private readonly store: ContentStore;
  private readonly records: StepRecords;
  private readonly hasher = new ContentHasher();
  private readonly configs: BaseConfigs;
  /** Snapshots of source images are unpacked outside the cache: a plan writes nothing there. */
  private readonly snapshots: SnapshotCache;
  private readonly states = new Map<string, Promise<StepState>>();
  private readonly imageKeys = new Map<string, Promise<Chain>>();
  private readonly externals = new Map<string, Promise<BaseImage>>();
  private filter!: ContextFilter;
  /** A registry base is pulled here, outside the cache (what the cache has is read from there, not downloaded). */
  private readonly pulled: ContentStore;

  constructor(
    private readonly spec: BuildSpec,
    private readonly opts: PlanOptions,
    tmp: string,
  ) {
    this.graph = buildGraph(spec);
    this.images = imagesFor(spec, opts.targets);
    this.store = new ReadOnlyStore(opts.cacheDir);
    this.records = new StepRecords(opts.cacheDir);
    this.configs = new BaseConfigs(
      (name) => this.image(name),
      (image) => this.external(image).then((b) => b.config),
    );
    this.snapshots = new SnapshotCache(path.join(tmp, 'cache'), this.store, () => tmp);
    this.pulled = new ReadThroughStore(path.join(tmp, 'pulled'), this.store);
  }

  async plan(): Promise<BuildPlan> {
    this.filter = await loadContextFilter(this.spec.context, [this.opts.cacheDir, ...this.opts.ownDirs]);
    await validateSources(this.spec, this.images, this.filter);
    const steps: PlannedStep[] = [];
    for (const image of this.images) {
      for (const step of image.steps) steps.push((await this.state(image, step)).planned);
    }
    const edges = stepEdges(this.graph.graph, steps.map((s) => nodeId(s.image, s.step)));
    return {
      images: this.images.map((i) => ({ name: i.name, from: i.from.kind === 'scratch' ? 'scratch' : i.from.kind === 'image' ? i.from.image : i.from.text })),
      steps,
      edges,
    };
  }

  private state(image: ImageSpec, step: StepSpec): Promise<StepState> {
    const id = nodeId(image.name, step.id);
    let p = this.states.get(id);
    if (!p) {
      p = this.planStep(image, step);
      this.states.set(id, p);
    }
    return p;
  }

  private async planStep(image: ImageSpec, step: StepSpec): Promise<StepState> {
    const id = nodeId(image.name, step.id);
    const below = await this.below(image, step);
    let material: KeyMaterial;
    if (step.kind === 'run') {
      if (below.chain === null) return this.unknown(image, step, below);
      const settings = runSettings(step, image, await this.configs.below(image));
      material = runMaterial(settings, below.chain, this.opts.sourceDateEpoch);
    } else {
      if (!step.link && below.chain === null) return this.unknown(image, step, below);
      let selections;
      if (step.fromImage) {
        const source = await this.snapshot(step.fromImage.image);
        if ('waitsFor' in source) {
          return this.unknown(image, step, { why: `copies from ${step.fromImage.image}`, waitsFor: source.waitsFor });
        }
        selections = await copySelections(step, source.root, { realModes: source.realModes });
      } else {
        selections = await copySelections(step, this.spec.context, { filter: this.filter });
      }
      const parent = step.link || below.chain === null ? null : below.chain;
      material = copyMaterial(step, await copyInputs(step, selections, this.hasher), parent, this.opts.sourceDateEpoch);
    }
    const key = await stepKey(material);
    // A linked step's own key ignores what is below it; its chain, which the steps above it use, does not.
    const chain: Chain = below.chain === null ? { chain: null, why: `sits on ${id}`, waitsFor: below.waitsFor } : { chain: await chainKey(below.chain, key) };
    const base = { image: image.name, step: step.id, kind: step.kind, key, pos: step.pos };
    const record = await this.records.get(key);
    if (record && (record.layer === null || (await this.store.has(record.layer.digest)))) {
      return { planned: { ...base, status: 'hit', reason: '', layer: record.layer, savedMs: record.buildMs, cacheSource: 'local' }, chain };
    }
    if (!record) {
      for (const source of this.opts.cacheFrom ?? []) {
        const shared = await source.record(key);
        if (shared) return { planned: { ...base, status: 'hit', reason: '', layer: shared.layer, savedMs: shared.buildMs, cacheSource: source.kind }, chain };
      }
    }
    // The build's own words for the same two cases (run-build.ts lookupOrBuild).
    const reason = record ? 'cached layer is missing' : explainMiss((await this.lastRecord(image.name, step.id))?.material, material);
    return { planned: { ...base, status: 'miss', reason, layer: null, savedMs: 0 }, chain };
  }

  /** What the step was last built as, here or where a shared cache was written (as the build explains it). */
  private async lastRecord(image: string, step: string): Promise<StepRecord | undefined> {
    const local = await this.records.lastFor(image, step);
    if (local) return local;
    for (const source of this.opts.cacheFrom ?? []) {
      const shared = await source.lastFor(image, step);
      if (shared) return shared;
    }
    return undefined;
  }

  private unknown(image: ImageSpec, step: StepSpec, cause: { why: string; waitsFor: string[] }): StepState {
    const waits = cause.waitsFor;
    const list = waits.length > 3 ? `${waits.slice(0, 3).join(', ')} and ${waits.length - 3} more` : waits.join(', ');
    const reason = `${cause.why}: known once ${list} ${waits.length === 1 ? 'is' : 'are'} built`;
    return {
      planned: { image: image.name, step: step.id, kind: step.kind, status: 'unknown', reason, key: null, layer: null, savedMs: 0, pos: step.pos },
      chain: { chain: null, why: `sits on ${nodeId(image.name, step.id)}`, waitsFor: waits },
    };
  }

  /** What a step sits on (as in run-build.ts belowOf): its needs in layer order, or its image's base. */
  private async below(image: ImageSpec, step: StepSpec): Promise<Chain> {
    if (step.needs.length === 0) return this.baseChain(image);
    const needs = needsInLayerOrder(step, this.graph.layerOrder.get(image.name)!);
    const states = await Promise.all(needs.map((n) => this.state(image, this.stepOf(image, n))));
    const chains = states.map((s) => s.chain);
    const open = chains.filter((c): c is Extract<Chain, { chain: null }> => c.chain === null);
    if (open.length) return { chain: null, why: open[0]!.why, waitsFor: union(open.map((c) => c.waitsFor)) };
    return { chain: await needsChain(chains.map((c) => c.chain!)) };
  }

  private async baseChain(image: ImageSpec): Promise<Chain> {
    if (image.from.kind === 'scratch') return { chain: SCRATCH_CHAIN };
    if (image.from.kind === 'base') return { chain: externalChain(await this.external(image)) };
    const key = await this.imageKey(image.from.image);
    return key.chain === null ? { chain: null, why: `built on ${image.from.image}`, waitsFor: key.waitsFor } : key;
  }

  private imageKey(name: string): Promise<Chain> {
    let p = this.imageKeys.get(name);
    if (!p) {
      const image = this.image(name);
      p = (async (): Promise<Chain> => {
        const base = await this.baseChain(image);
        const steps = await Promise.all(this.graph.layerOrder.get(name)!.map((s) => this.state(image, s)));
        const open = [base, ...steps.map((s) => s.chain)].filter((c): c is Extract<Chain, { chain: null }> => c.chain === null);
        if (open.length) return { chain: null, why: `built on ${name}`, waitsFor: union(open.map((c) => c.waitsFor)) };
        return { chain: await imageChainKey((base as { chain: string }).chain, steps.map((s) => (s.chain as { chain: string }).chain)) };
      })();
      this.imageKeys.set(name, p);
    }
    return p;
  }

  /**
   * The root filesystem of image `name`, for `copy … from:` to read: the
   * cache's own snapshot when a build left one, else unpacked from the
   * cached layers into a temp dir outside the cache. Known only when every
   * layer of the image is in the cache; otherwise, the steps to build first.
   */
  private async snapshot(name: string): Promise<Snapshot | { waitsFor: string[] }> {
    const layers = await this.imageLayers(name);
    if ('waitsFor' in layers) return layers;
    const key = await this.imageKey(name);
    if (key.chain === null) return { waitsFor: key.waitsFor };
    return (await readSnapshot(this.opts.cacheDir, key.chain)) ?? this.snapshots.materialize(key.chain, layers.layers);
  }

  /** Every layer of image `name`, bottom first, when all of them are in the cache. */
  private async imageLayers(name: string): Promise<{ layers: LayerRef[] } | { waitsFor: string[] }> {
    const image = this.image(name);
    let base: LayerRef[] = [];
    if (image.from.kind === 'image') {
      const below = await this.imageLayers(image.from.image);
      if ('waitsFor' in below) return below;
      base = below.layers;
    } else if (image.from.kind === 'base') {
      const ext = await this.external(image);
      const missing = [];
      for (const l of ext.layers) if (!(await this.store.has(l.digest))) missing.push(l);
      // Not imported yet: a build imports it first, so nothing of the file waits; only the base's own `from` does.
      if (missing.length) return { waitsFor: [`${name}'s base ${image.from.text}`] };
      base = ext.layers;
    }
    const states = await Promise.all(this.graph.layerOrder.get(name)!.map((s) => this.state(image, s)));
    // A hit from a shared cache has its layer there, not here: the files a copy would read are not at hand.
    const waits = states.filter((s) => s.planned.status !== 'hit' || (s.planned.cacheSource !== undefined && s.planned.cacheSource !== 'local'));
    if (waits.length) {
      return {
        waitsFor: union(
          waits.map((s) =>
            s.planned.status === 'miss' || s.planned.status === 'hit' ? [nodeId(s.planned.image, s.planned.step)] : ((s.chain as { waitsFor: string[] }).waitsFor ?? []),
          ),
        ),
      };
    }
    return { layers: [...base, ...states.map((s) => s.planned.layer).filter((l): l is LayerRef => l !== null)] };
  }

  /** A base from outside the file, read and checked but not imported: the plan keeps nothing of it. */
  private external(image: ImageSpec): Promise<BaseImage> {
    const text = image.from.kind === 'base' ? image.from.text : '';
    let p = this.externals.get(text);
    if (!p) {
      const fromRegistry = image.from.kind === 'base' && image.from.ref.transport === 'registry';
      p = openExternalBase(image, fromRegistry ? this.pulled : this.store, this.opts.registry);
      this.externals.set(text, p);
    }
    return p;
  }

  private image(name: string): ImageSpec {
    return this.graph.images.get(name)!;
  }

  private stepOf(image: ImageSpec, id: string): StepSpec {
    return image.steps.find((s) => s.id === id)!;
  }
}

function union(lists: string[][]): string[] {
  return [...new Set(lists.flat())];
}

/**
 * The cache's content store, for reading only. Importing an external base
 * asks it to keep the base's blobs; here they are checked against their
 * digests as an import would, and dropped.
 */
/** A scratch store that reads what the cache already has from the cache. */
class ReadThroughStore extends ContentStore {
  constructor(
    root: string,
    private readonly cache: ContentStore,
  ) {
    super(root);
  }

  override async has(digest: string): Promise<boolean> {
    return (await this.cache.has(digest)) || super.has(digest);
  }

  override read(digest: string): Readable {
    return existsSync(this.cache.blobPath(digest)) ? this.cache.read(digest) : super.read(digest);
  }

  override async bytes(digest: string): Promise<Buffer> {
    return (await this.cache.has(digest)) ? this.cache.bytes(digest) : super.bytes(digest);
  }
}

class ReadOnlyStore extends ContentStore {
  override readonly keepsBlobs = false;

  override async ingest(source: Readable, expected?: string): Promise<BlobInfo> {
    const hash = createHash('sha256');
    let size = 0;
    for await (const chunk of source) {
      hash.update(chunk as Buffer);
      size += (chunk as Buffer).length;
    }
    const digest = `sha256:${hash.digest('hex')}`;
    if (expected !== undefined && expected !== digest) throw new CacheCorruptError(`blob ${expected} arrived with digest ${digest}`);
    return { digest, size };
  }

  override async put(bytes: Uint8Array): Promise<BlobInfo> {
    return { digest: sha256Digest(bytes), size: bytes.length };
  }
}
