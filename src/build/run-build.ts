/**
 * Run a build: key every step, reuse what the cache has, build the rest in
 * parallel, then assemble each image and write one OCI image layout.
 *
 * Every step starts as a task at once and waits for what it needs (BuildKit's
 * model: a vertex is keyed before it runs, and a cached vertex never runs).
 * A step has two phases. Its *key* needs what the steps below it publish when
 * they are keyed — their chain keys — never their layers. A copy's *build*
 * needs no layer below it either (a copy never reads file contents from the
 * filesystem it lands on), only the directories below it (known at once
 * below copies, once built below a `run`); so a chain of copy steps builds in
 * parallel as soon as each key is known. `copy … from:` waits for the layers
 * of the image it reads; a `run` that misses waits for the layers below it,
 * which it mounts. `--jobs` bounds the work in flight, not the waiting.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { ContentStore } from '../cache/content-store.js';
import { explainMiss } from '../cache/explain.js';
import { openLease } from '../cache/leases.js';
import { chainKey, stepKey, type KeyMaterial } from '../cache/step-key.js';
import { StepRecords, type LayerRef, type StepRecord } from '../cache/step-records.js';
import type { BuildSpec, CopyStep, ImageSpec, RunStep, StepSpec } from '../config/types.js';
import { loadContextFilter, NO_FILTER, type ContextFilter } from '../context/context-filter.js';
import { ContentHasher } from '../context/file-hasher.js';
import { StatCache } from '../context/stat-cache.js';
import { asDiskFull, ConfigError, LayergraphError, StepError, UsageError } from '../errors.js';
import { layerDirs, type BaseImage } from '../oci/base-image.js';
import type { RuntimeConfig } from '../oci/image-config.js';
import { CopyDestinationError, mergeDirs, planCopy, type CopyPlan, type DirMeta } from '../exec/copy-step.js';
import { destinationIssue, validateSources } from './validate-sources.js';
import { buildGraph, imagesFor, nodeId, stepsBelow } from '../graph/build-graph.js';
import { packTree, type TreeEntry } from '../oci/layer-pack.js';
import type { ArchiveKind } from '../oci/archive.js';
import { assembleImages, type BuiltImage } from './assemble.js';
import { copyInputs, copyMaterial, copySelections } from './copy-inputs.js';
import type { Selection } from '../context/select.js';
import type { BuildEvent, StepResult } from './events.js';
import { Semaphore } from '../util/semaphore.js';
import { SnapshotCache, type Snapshot } from './snapshots.js';
import { ownerTag } from '../util/owner-tag.js';
import { writeTree } from '../snapshot/tree-write.js';
import { once } from '../util/once.js';
import { removeTree, sweepStale } from './sweep.js';
import { checkMerge, type MergeChoice } from './merge-check.js';
import { runMaterial, runSettings } from './run-inputs.js';
import { BaseConfigs, externalChain, imageChainKey, needsChain, needsInLayerOrder, openExternalBase, SCRATCH_CHAIN } from './step-keys.js';
import { CommandFailedError, CommandStoppedError } from '../exec/command-errors.js';
import type { RuntimeName } from '../exec/run-in-root.js';
import type { Snapshotter, SnapshotterName } from '../snapshot/snapshotter.js';
import type { RegistryClient, RegistryClientOptions } from '../registry/client.js';
import { parseImageReference, type ImageReference } from '../registry/reference.js';
import { pushImages, registryTags, type PushedTag } from './push-images.js';
import { dirExport, dirImport, fetchChecked, trustworthy, type CacheImport, type CacheRef, type CacheSourceKind } from '../cache/shared-cache.js';
import { registryExport, registryImport } from '../cache/registry-cache.js';
import { faultPoint } from '../util/fault-point.js';

export interface BuildOptions {
  cacheDir: string;
  /** Where to write the OCI image layout; undefined builds without writing one. */
  outDir: string | undefined;
  /** `oci-archive:` and `docker-archive:` files to write the images to. */
  archives?: Array<{ kind: ArchiveKind; file: string }>;
  /** Images to build and write (with what they need); empty means all. */
  targets: string[];
  jobs: number;
  /** Seconds since the epoch stamped into every layer entry and config. */
  sourceDateEpoch: number;
  onEvent?: (event: BuildEvent) => void;
  /** Once aborted, no new step starts, running commands are stopped, copies finish; the cache stays valid. */
  signal?: AbortSignal;
  /** How `run` steps get their root (default auto: overlay where it can mount, else copy). */
  snapshotter?: 'auto' | SnapshotterName;
  /** What runs `run` steps' commands (default auto: runc, else crun, else unshare + chroot). */
  runtime?: 'auto' | RuntimeName;
  /** Push every image to the registries its tags name (images with `push: true` are pushed anyway). */
  push?: boolean;
  /** Shared caches to look in when the local one misses (`--cache-from`), in order. */
  cacheFrom?: CacheRef[];
  /** Where to write this build's records and layers for other machines (`--cache-to`). */
  cacheTo?: CacheRef;
  /** How to reach registries: credentials file, registries to speak plain HTTP to. */
  registry?: RegistryClientOptions;
}


export interface BuildResult {
  images: BuiltImage[];
  /** One per step of every image built, in file order. */
  steps: StepResult[];
  durationMs: number;
  /** The first failure, when the build failed. */
  error?: Error;
  /** What ran `run` steps, when any missed. */
  execution?: { snapshotter: SnapshotterName; runtime: RuntimeName };
  /** Input files whose content was read to key the steps (a no-op rebuild reads none: the stat cache vouches for them). */
  filesRead?: number;
  /** What `--cache-to` wrote. */
  cacheExport?: { to: string; records: number; blobs: number; bytes: number };
  /** Tags pushed to registries, with the manifest digest each now names. */
  pushed?: PushedTag[];
  /** Paths that steps with no order between them both changed, and which step won (`merge: declared-order`). */
  merges: Array<MergeChoice & { image: string }>;
  /** Bytes moved to and from registries (set once images and caches are pulled and pushed). */
  transfer?: { pulledBytes: number; pushedBytes: number };
  /** Damage found in the cache or the output (each said once; what it hit was rebuilt, never used). */
  warnings?: string[];
}

/** What a step publishes once it is keyed: enough for the steps above it to be keyed too. */
interface Keyed {
  /** Key of the filesystem with this step applied on what it sits on. */
  chain: string;
  /**
   * Directories of that filesystem (below a `run`, known once it is built).
   * Worked out only when a copy above needs them: for a `run` they come from
   * reading its layer, which a cache hit may not even have fetched.
   */
  dirs: () => Promise<DirMeta>;
  /** Directories of this step's own layer. */
  ownDirs: () => Promise<DirMeta>;
}

/** What a step sits on. */
interface Below {
  chain: string;
  dirs: () => Promise<DirMeta>;
}

interface StepTask {
  keyed: Promise<Keyed>;
  /** Settles once the step's layer is in the store (null: the step wrote nothing). */
  layer: Promise<LayerRef | null>;
}

/** Rejects the tasks of steps that cannot run because something they need failed. */
class Skipped extends Error {}

/**
 * Build `spec`. A problem found before any work (a copy source that is
 * missing, excluded or leaves the context) throws a ConfigError; a failure
 * while building is in the result's `error`, with every step's outcome.
 */
export async function runBuild(spec: BuildSpec, opts: BuildOptions): Promise<BuildResult> {
  return new BuildRun(spec, opts).execute();
}

class BuildRun {
  private readonly t0 = performance.now();
  private readonly layerOrder: Map<string, StepSpec[]>;
  private readonly images: ImageSpec[];
  private readonly store: ContentStore;
  private readonly records: StepRecords;
  private readonly snapshots: SnapshotCache;
  private readonly hasher: ContentHasher;
  private readonly stats: StatCache;
  /** Blobs of the cache already hashed, vouched for by their stat. */
  private readonly blobStats: StatCache;
  private readonly jobs: Semaphore;
  private readonly tmpRoot: string;
  private readonly results = new Map<string, StepResult>();
  private readonly tasks = new Map<string, StepTask>();
  private readonly imageKeys = new Map<string, Promise<{ key: string; dirs: () => Promise<DirMeta> }>>();
  private readonly configs: BaseConfigs;
  /** Stops running commands: aborted on the first failure and on the caller's signal. */
  private readonly stop = new AbortController();
  private execution: Promise<{ snapshotter: Snapshotter; runtime: RuntimeName }> | undefined;
  private registryClient: RegistryClient | undefined;
  private registryLoading: Promise<RegistryClient> | undefined;
  private cacheImports: Array<CacheImport & { origin?: ImageReference }> | undefined;
  private readonly brokenImports = new Set<CacheImport>();
  /** Records of this run's hits from shared caches, by key. */
  private readonly sharedHits = new Map<string, StepRecord>();
  /** Blobs pulled from a registry, and from where. */
  private readonly blobOrigins = new Map<string, ImageReference>();
  private readonly externals = new Map<string, Promise<{ image: BaseImage; dirs: () => Promise<DirMeta> }>>();
  /** One flight per key: steps with the same key in one run (a shared linked step) build once. */
  private readonly flights = new Map<string, { by: string; done: Promise<Flight> }>();
  private firstError: { error: Error; by: string } | undefined;
  private filter: ContextFilter = NO_FILTER;
  private readonly warnings: string[] = [];
  private readonly layerChecks = new Map<string, Promise<string | undefined>>();
  /** What sources select in the context, by their spelling: steps of several images that copy the same sources walk them once. */
  private readonly selections = new Map<string, Promise<Selection[]>>();
  /** Copy steps (`image\0step`) that a `run` step of their image mounts: their layer is also written out as a lower. */
  private readonly underRuns: Set<string>;
  /** Damage found in the cache or the output: said once (a warning event, and in the result), then rebuilt around. */
  private readonly warn = (text: string): void => {
    if (this.warnings.includes(text)) return;
    this.warnings.push(text);
    this.emit({ type: 'warning', text });
  };

  constructor(
    private readonly spec: BuildSpec,
    private readonly opts: BuildOptions,
  ) {
    this.layerOrder = buildGraph(spec).layerOrder;
    this.images = imagesFor(spec, opts.targets);
    this.underRuns = stepsUnderRuns(this.images);
    this.stats = StatCache.in(opts.cacheDir, (what) => this.warn(`cache: ${what}`));
    this.blobStats = StatCache.forBlobs(opts.cacheDir, (what) => this.warn(`cache: ${what}`), this.stats);
    this.store = new ContentStore(opts.cacheDir, this.blobStats);
    this.records = new StepRecords(opts.cacheDir, (file, what) => this.warn(`cache: ${file} is damaged (${what}); not used`));
    this.hasher = new ContentHasher(this.stats);
    this.configs = new BaseConfigs(
      (name) => this.images.find((i) => i.name === name)!,
      (image) => this.external(image).then((b) => b.image.config),
    );
    this.snapshots = new SnapshotCache(opts.cacheDir, this.store, () => this.tmpRoot, (what) => this.warn(`cache: ${what}`));
    this.jobs = new Semaphore(Math.max(1, opts.jobs));
    this.tmpRoot = path.join(opts.cacheDir, 'tmp', `${ownerTag()}-${randomBytes(4).toString('hex')}`);
    if (opts.signal?.aborted) this.stop.abort();
    opts.signal?.addEventListener('abort', () => this.stop.abort(), { once: true });
  }

  async execute(): Promise<BuildResult> {
    // Everything the build uses is held until it ends, so `cache prune` leaves it alone (cache/leases.ts).
    const lease = openLease(this.opts.cacheDir);
    let result: BuildResult;
    try {
      result = await this.run();
    } finally {
      // Marking the blobs used changes their stat: the stat cache follows, so next run does not hash them again.
      this.blobStats.retouched(await lease.release());
      // Only a speed-up for the next run: not worth failing this one over.
      await Promise.all([this.hasher.save(), this.blobStats.save()]).catch(() => undefined);
    }
    return this.warnings.length ? { ...result, warnings: this.warnings } : result;
  }

  private async run(): Promise<BuildResult> {
    await sweepStale(this.opts.cacheDir);
    const sharedDirs = [...(this.opts.cacheFrom ?? []), ...(this.opts.cacheTo ? [this.opts.cacheTo] : [])].flatMap((c) => (c.kind === 'dir' ? [c.path] : []));
    const own = [this.opts.cacheDir, ...(this.opts.outDir ? [this.opts.outDir] : []), ...(this.opts.archives ?? []).map((a) => a.file), ...sharedDirs];
    this.filter = await loadContextFilter(this.spec.context, own);
    // Every source problem at once, before any work.
    await validateSources(this.spec, this.images, this.filter);
    this.checkPush();
    await mkdir(this.tmpRoot, { recursive: true });
    this.emit({ type: 'plan', steps: this.images.flatMap((img) => img.steps.map((s) => ({ image: img.name, step: s.id }))) });
    try {
      // Every task exists before any starts: a step may need one declared after it.
      const starts: Array<() => void> = [];
      for (const image of this.images) {
        for (const step of image.steps) {
          const { task, start } = this.prepareStep(image, step);
          this.tasks.set(nodeId(image.name, step.id), task);
          starts.push(start);
        }
      }
      starts.forEach((start) => start());
      await Promise.allSettled([...this.tasks.values()].flatMap((t) => [t.keyed, t.layer]));
    } finally {
      await removeTree(this.tmpRoot);
    }
    this.reportSkipped();
    const steps = this.images.flatMap((img) => img.steps.map((s) => this.results.get(nodeId(img.name, s.id))!));
    const execution = await this.executionUsed();
    const error = this.firstError?.error ?? (this.opts.signal?.aborted ? new LayergraphError('INTERRUPTED', 'build interrupted') : undefined);
    if (error) return { images: [], steps, durationMs: this.now(), error, execution, merges: [], transfer: this.transfer(), filesRead: this.hasher.reads };

    const merges: BuildResult['merges'] = [];
    try {
      for (const image of this.images) {
        const choices = await checkMerge(image, this.layerOrder.get(image.name)!, (s) => this.task(image.name, s).layer, this.store);
        merges.push(...choices.map((c) => ({ image: image.name, ...c })));
      }
    } catch (err) {
      return { images: [], steps, durationMs: this.now(), error: err as Error, execution, merges, transfer: this.transfer(), filesRead: this.hasher.reads };
    }

    const outputs = this.opts.targets.length ? this.images.filter((i) => this.opts.targets.includes(i.name)) : this.images;
    let images: BuiltImage[] = [];
    let pushed: PushedTag[];
    let cacheExport: BuildResult['cacheExport'];
    try {
      // Writing the outputs is where a shared-cache hit's layer is first read (fetched): it can fail here too.
      images = await assembleImages({
        store: this.store,
        images: this.images,
        outputs,
        layerOrder: this.layerOrder,
        layerOf: (image, step) => this.task(image, step).layer,
        externalBase: async (image) => (await this.external(image)).image,
        outDir: this.opts.outDir,
        archives: this.opts.archives ?? [],
        sourceDateEpoch: this.opts.sourceDateEpoch,
        onDamage: (what) => this.warn(what),
        ...(this.opts.signal ? { signal: this.opts.signal } : {}),
      });
      cacheExport = await this.exportCache(steps);
      pushed = await pushImages(images, this.images, this.opts.push ?? false, this.store, () => this.registry(), (d) => this.blobOrigins.get(d));
    } catch (err) {
      return { images, steps, durationMs: this.now(), error: err as Error, execution, merges, transfer: this.transfer(), filesRead: this.hasher.reads };
    }
    return { images, steps, durationMs: this.now(), execution, merges, transfer: this.transfer(), filesRead: this.hasher.reads, ...(pushed.length ? { pushed } : {}), ...(cacheExport ? { cacheExport } : {}) };
  }

  private prepareStep(image: ImageSpec, step: StepSpec): { task: StepTask; start: () => void } {
    let publish!: (keyed: Promise<Keyed>) => void;
    let failKeyed!: (err: unknown) => void;
    const keyed = new Promise<Keyed>((resolve, reject) => {
      publish = resolve;
      failKeyed = reject;
    });
    keyed.catch(() => undefined);
    let start!: () => void;
    const started = new Promise<void>((resolve) => (start = resolve));
    const layer = started.then(() => (step.kind === 'run' ? this.runRunStep(image, step, publish) : this.runCopyStep(image, step, publish)));
    // A step that stops before it is keyed fails its key the same way; once
    // published, a promise's fate is fixed and this does nothing.
    layer.catch(failKeyed);
    return { task: { keyed, layer }, start };
  }

  private async runCopyStep(image: ImageSpec, step: CopyStep, publish: (keyed: Promise<Keyed>) => void): Promise<LayerRef | null> {
    const below = this.belowOf(image, step);
    below.catch(() => undefined);
    let startMs = this.now();
    try {
      const parent = step.link ? undefined : await below;
      // Wait outside the job slots for what may need those slots to be built:
      // the source image's layers, and the directories below a `run`.
      const source = step.fromImage
        ? { key: (await this.imageKeyed(step.fromImage.image)).key, layers: await this.imageLayers(step.fromImage.image) }
        : undefined;
      const parentDirs = parent ? await parent.dirs() : new Map();

      return await this.jobs.run(async () => {
        if (this.opts.signal?.aborted || this.firstError) throw new Skipped();
        startMs = this.now();
        this.emit({ type: 'step-start', image: image.name, step: step.id, atMs: startMs });
        const derive = async (snapshot: Snapshot | undefined) => {
          const selections = snapshot
            ? await copySelections(step, snapshot.root, { realModes: snapshot.realModes })
            : await this.contextSelections(step);
          const material = copyMaterial(step, await copyInputs(step, selections, this.hasher), parent?.chain ?? null, this.opts.sourceDateEpoch);
          return { selections, material, key: await stepKey(material) };
        };
        // The source snapshot's stamp is checked (a walk of the whole tree) only before a likely miss, or
        // when reading it failed (a file gone): a hit's key was computed from the files as they are.
        // A damaged snapshot is replaced, and read again.
        const checked = async () => (source ? await this.snapshots.verified(source.key, source.layers) : undefined);
        let derived = await derive(source ? await this.snapshots.materialize(source.key, source.layers) : undefined).catch(async (err: unknown) => {
          const check = await checked();
          if (!check?.replaced) throw err;
          return derive(check.snapshot);
        });
        if (source && !this.flights.has(derived.key) && !(await this.records.has(derived.key))) {
          const check = await checked();
          if (check?.replaced) derived = await derive(check.snapshot);
        }
        const { selections, material, key } = derived;
        // Planned only when something needs it (a miss, or a step above asking for directories):
        // a hit of a thousand files need not lay them out. `to` was checked before the build began.
        const plan = once(async () => planCopy(selections, step, parentDirs));
        const ownDirs = once(async () => (await plan()).dirs());
        publish(
          below.then(async (b) => ({
            chain: await chainKey(b.chain, key),
            dirs: once(async () => mergeDirs(await b.dirs(), await ownDirs())),
            ownDirs,
          })),
        );
        const result = await this.reuseOrBuild(image, step, key, material, startMs, async () => this.buildLayer(await plan(), this.underRuns.has(`${image.name}\0${step.id}`)));
        this.finish(result);
        return result.layer;
      });
    } catch (err) {
      return this.failed(err, image, step, startMs);
    }
  }

  /**
   * A `run` step: keyed from how it runs and what it sits on. A hit runs
   * nothing and needs nothing below it; a miss waits for the layers below
   * (outside the job slots, which they may need), then mounts them and runs.
   */
  private async runRunStep(image: ImageSpec, step: RunStep, publish: (keyed: Promise<Keyed>) => void): Promise<LayerRef | null> {
    const timing = { startMs: this.now() };
    try {
      const parent = await this.belowOf(image, step);
      const settings = runSettings(step, image, await this.baseConfig(image));
      const material = runMaterial(settings, parent.chain, this.opts.sourceDateEpoch);
      const key = await stepKey(material);
      const own = once(async () => {
        const layer = await this.task(image.name, step.id).layer;
        return layer ? layerDirs([layer], this.store) : new Map();
      });
      const dirs = once(async () => mergeDirs(await parent.dirs(), await own()));
      publish(Promise.resolve({ chain: await chainKey(parent.chain, key), dirs, ownDirs: own }));

      const lowers = this.lowersOf(image, step);
      lowers.catch(() => undefined);
      const logFile = path.join(this.opts.cacheDir, 'logs', `${key}.log`);
      const result = await this.reuseOrBuild(image, step, key, material, timing.startMs, async (working) => {
        const below = await lowers;
        const execution = await this.openExecution();
        // Ahead of copies still waiting: a command is what the rest of its image waits for, and it
        // mostly waits on its container, so it overlaps with the copies' CPU work instead of following it.
        return this.jobs.run(async () => {
          if (this.stop.signal.aborted) throw new Skipped();
          working();
          timing.startMs = this.now();
          this.emit({ type: 'step-start', image: image.name, step: step.id, atMs: timing.startMs });
          const { runStepLayer } = await import('../exec/run-step.js');
          return runStepLayer(
            {
              settings,
              lowers: below,
              workDir: path.join(this.tmpRoot, `run-${randomBytes(6).toString('hex')}`),
              logFile,
              onLine: (line) => this.emit({ type: 'step-output', image: image.name, step: step.id, line }),
              signal: this.stop.signal,
            },
            { store: this.store, ...execution, sourceDateEpoch: this.opts.sourceDateEpoch },
          );
        }, { first: true });
      });
      this.finish({ ...result, startMs: timing.startMs, durationMs: this.now() - timing.startMs, ...(result.status === 'miss' ? { logFile } : {}) });
      return result.layer;
    } catch (err) {
      return this.failed(err, image, step, timing.startMs);
    }
  }

  /** Records a step's failure (the build's first one stops the rest), or that it was stopped or skipped. */
  private failed(err: unknown, image: ImageSpec, step: StepSpec, startMs: number): never {
    if (err instanceof Skipped) throw err;
    // Ctrl-C reaches the helpers we run (mount, getfattr…) too: what fails after it was stopped, not broken.
    if (err instanceof CommandStoppedError || (this.opts.signal?.aborted && !this.firstError)) {
      this.finish(this.result(image, step, { status: 'skipped', reason: this.stopReason(), startMs }));
      throw new Skipped();
    }
    const error = asUserError(err, image, step);
    if (!this.firstError) {
      this.firstError = { error, by: `${image.name}/${step.id}` };
      this.stop.abort();
    }
    this.finish(this.result(image, step, { status: 'failed', reason: error.message, startMs }));
    throw new Skipped();
  }

  /** The layers a `run` step mounts, bottom first: its base image's, then those of every step it sits on, in layer order. */
  private async lowersOf(image: ImageSpec, step: RunStep): Promise<LayerRef[]> {
    const base = image.from.kind === 'image' ? await this.imageLayers(image.from.image) : image.from.kind === 'base' ? (await this.external(image)).image.layers : [];
    const under = stepsBelow(image, step.id);
    const own = this.layerOrder.get(image.name)!.filter((s) => under.has(s.id));
    const layers = await Promise.all(own.map((s) => this.task(image.name, s.id).layer));
    return [...base, ...layers.filter((l): l is LayerRef => l !== null)];
  }

  /** The config an image's steps run under: what its base leaves (the image's own settings come on top, per step). */
  private baseConfig(image: ImageSpec): Promise<RuntimeConfig> {
    return this.configs.below(image);
  }

  /** A push that would push nothing is a mistake to say before building, not after. */
  private checkPush(): void {
    const outputs = this.opts.targets.length ? this.images.filter((i) => this.opts.targets.includes(i.name)) : this.images;
    const without = outputs.filter((i) => i.push && registryTags(i.tags).length === 0);
    if (without.length) {
      throw new ConfigError(
        without.map((i) => ({ pos: i.pos, path: `images.${i.name}.push`, message: `image \`${i.name}\` says push: true, but none of its tags names a registry (like \`registry.example.com/team/${i.name}:1\`)` })),
      );
    }
    if (this.opts.push && !outputs.some((i) => registryTags(i.tags).length)) {
      throw new UsageError('--push: no image has a tag that names a registry (like `registry.example.com/team/app:1`); nothing would be pushed');
    }
  }

  /** One client for every registry of the run (pulls, pushes, the shared cache), made when first needed. */
  private registry(): Promise<RegistryClient> {
    this.registryLoading ??= import('../registry/client.js').then(({ RegistryClient }) => (this.registryClient = new RegistryClient(this.opts.registry ?? {})));
    return this.registryLoading;
  }

  private transfer(): BuildResult['transfer'] {
    const t = this.registryClient?.transferred;
    return t ? { pulledBytes: t.pulled, pushedBytes: t.pushed } : undefined;
  }

  /** The snapshotter and runtime, chosen when the first `run` step misses (a copy-only build needs neither). */
  private openExecution(): Promise<{ snapshotter: Snapshotter; runtime: RuntimeName }> {
    this.execution ??= (async () => {
      if (process.getuid?.() !== 0) {
        throw new UsageError(
          'run steps need root: they mount overlayfs and run their commands in containers (rootless run steps are not supported yet). ' +
            'Run layergraph as root, or build only images made of copy steps (--target).',
        );
      }
      // Loaded here, not at start-up: a build of copy steps never runs a command.
      const [{ openSnapshotter }, { pickRuntime }] = await Promise.all([import('../snapshot/snapshotter.js'), import('../exec/run-in-root.js')]);
      const snapshotter = await openSnapshotter(this.opts.snapshotter ?? 'auto', {
        cacheDir: this.opts.cacheDir,
        store: this.store,
        tmpDir: () => this.tmpRoot,
        onDamage: (what) => this.warn(`cache: ${what}`),
      });
      const runtime = await pickRuntime(this.opts.runtime ?? 'auto');
      const caveat = runtime === 'chroot' ? ' (no runc or crun: commands are isolated, not sandboxed — a root command can leave a chroot)' : '';
      this.emit({ type: 'note', text: `run steps: ${snapshotter.name} snapshotter, ${runtime}${caveat}` });
      return { snapshotter, runtime };
    })();
    return this.execution;
  }

  private async executionUsed(): Promise<BuildResult['execution']> {
    const e = await this.execution?.catch(() => undefined);
    return e ? { snapshotter: e.snapshotter.name, runtime: e.runtime } : undefined;
  }

  private stopReason(): string {
    return this.opts.signal?.aborted ? 'build interrupted' : `stopped: the build stopped when ${this.firstError?.by ?? 'a step'} failed`;
  }

  /** Reuse the cache, or build; a second step with the same key in this run shares the first one's flight. */
  private async reuseOrBuild(
    image: ImageSpec,
    step: StepSpec,
    key: string,
    material: KeyMaterial,
    startMs: number,
    build: Build,
  ): Promise<StepResult> {
    const twin = this.flights.get(key);
    if (twin) {
      const f = await twin.done;
      await this.records.setLast(image.name, step.id, key);
      const reason = f.status === 'miss' ? `${f.reason} (built once for ${twin.by})` : f.reason;
      return this.result(image, step, { ...f, reason, key, startMs });
    }
    const done = this.lookupOrBuild(image, step, key, material, build);
    done.catch(() => undefined);
    this.flights.set(key, { by: `${image.name}/${step.id}`, done });
    return this.result(image, step, { ...(await done), key, startMs });
  }

  private async lookupOrBuild(
    image: ImageSpec,
    step: StepSpec,
    key: string,
    material: KeyMaterial,
    build: Build,
  ): Promise<Flight> {
    const cached = await this.records.get(key);
    let reason: string;
    const problem = cached?.layer ? await this.layerProblem(cached.layer) : undefined;
    if (cached && !problem) {
      await this.records.setLast(image.name, step.id, key);
      return { status: 'hit', reason: '', layer: cached.layer, savedMs: cached.buildMs, source: 'local' };
    } else if (cached) {
      reason = `cached layer ${problem}`;
      this.warn(`cache: layer ${cached.layer!.digest} ${problem}; not used, its steps are rebuilt`);
      await this.records.remove(key);
    } else {
      const shared = await this.sharedRecord(key, image.name, step.id);
      if (shared) return { status: 'hit', reason: '', layer: shared.record.layer, savedMs: shared.record.buildMs, source: shared.kind };
      reason = explainMiss((await this.lastRecord(image.name, step.id))?.material, material);
    }
    let t = performance.now();
    const layer = await build(() => (t = performance.now()));
    const buildMs = Math.round(performance.now() - t);
    await this.records.put({ recordVersion: 1, key, image: image.name, step: step.id, material, layer, buildMs });
    return { status: 'miss', reason, layer, savedMs: 0 };
  }

  /**
   * Why a cached layer cannot be used (a corrupt blob is removed), or
   * undefined when it is intact. Checked once per blob and run: steps that
   * share a layer get one answer (and the build one warning).
   */
  private layerProblem(layer: LayerRef): Promise<string | undefined> {
    const id = `${layer.digest} ${layer.size}`;
    let check = this.layerChecks.get(id);
    if (!check) {
      check = (async () => {
        if (await this.store.verify(layer.digest)) {
          const size = (await stat(this.store.blobPath(layer.digest))).size;
          return size === layer.size ? undefined : `is ${size} bytes, but its record says ${layer.size}`;
        }
        if (!(await this.store.has(layer.digest))) return 'is missing';
        await this.store.remove(layer.digest);
        return 'failed its digest check';
      })();
      this.layerChecks.set(id, check);
    }
    return check;
  }

  /**
   * A record from a shared cache (`--cache-from`), in the order given. Its
   * layer is fetched (checked against its digest) only when something reads
   * it — a push that finds it in the target registry, or mounts it from
   * there, never does — and then the record is kept locally too, so the next
   * run hits without asking again.
   */
  private async sharedRecord(key: string, image: string, step: string): Promise<{ record: StepRecord; kind: CacheSourceKind } | undefined> {
    for (const source of this.imports()) {
      const record = await this.ask(source, () => source.record(key));
      if (!record || !(await trustworthy(record, key))) continue;
      this.sharedHits.set(key, record);
      const layer = record.layer;
      if (layer) {
        if (source.origin) this.blobOrigins.set(layer.digest, source.origin);
        this.store.addRemote(layer.digest, async () => {
          await fetchChecked(source, record, layer, this.store);
          await this.records.put(record);
        });
      } else await this.records.put(record);
      await this.records.setLast(image, step, key);
      return { record, kind: source.kind };
    }
    return undefined;
  }

  /**
   * A shared cache that cannot be read (unreachable, another format) is
   * left out of the rest of the build, with a note: the build goes on
   * without it, as BuildKit does with a cache import it cannot use.
   */
  private async ask<T>(source: CacheImport, question: () => Promise<T>): Promise<T | undefined> {
    if (this.brokenImports.has(source)) return undefined;
    try {
      return await question();
    } catch (err) {
      // Whatever went wrong (a registry down, a bundle that does not parse), only this cache is lost, not the build.
      this.brokenImports.add(source);
      this.emit({ type: 'note', text: `shared cache ${source.label} not used: ${(err as Error).message}` });
      return undefined;
    }
  }

  /** What this image/step was last built as: here, or else where a shared cache was written. */
  private async lastRecord(image: string, step: string): Promise<StepRecord | undefined> {
    const local = await this.records.lastFor(image, step);
    if (local) return local;
    for (const source of this.imports()) {
      const shared = await this.ask(source, () => source.lastFor(image, step));
      if (shared) return shared;
    }
    return undefined;
  }

  private imports(): Array<CacheImport & { origin?: ImageReference }> {
    this.cacheImports ??= (this.opts.cacheFrom ?? []).map((ref) =>
      ref.kind === 'dir' ? dirImport(ref.path) : registryImport(ref.ref, () => this.registry(), this.store),
    );
    return this.cacheImports;
  }

  /** `--cache-to`: every record of this build (hits included) and the layers they point to. */
  private async exportCache(steps: StepResult[]): Promise<BuildResult['cacheExport']> {
    const to = this.opts.cacheTo;
    if (!to) return undefined;
    const records: StepRecord[] = [];
    for (const key of new Set(steps.map((s) => s.key).filter(Boolean))) {
      // A shared hit never read (pushed where it was) has no local record: it is still part of this build.
      const record = (await this.records.get(key)) ?? this.sharedHits.get(key);
      if (record) records.push(record);
    }
    const exporter = to.kind === 'dir' ? dirExport(to.path) : registryExport(to.ref, () => this.registry(), (d) => this.blobOrigins.get(d));
    const { blobs, bytes } = await exporter.write(records, this.store);
    return { to: to.kind === 'dir' ? `dir:${to.path}` : `registry:${to.ref}`, records: records.length, blobs, bytes };
  }

  /**
   * A copy step's layer, packed straight from its sources: no staging copy in
   * an upper. When a `run` step above will mount it (`forRun`), it is also
   * written out as that lower from the same sources, rather than unpacked
   * from the blob later.
   */
  private async buildLayer(plan: CopyPlan, forRun: boolean): Promise<LayerRef | null> {
    if (plan.isEmpty) return null;
    // Only root mounts lowers. The run step above will need its snapshotter (probing overlayfs mounts
    // one): find out while this packs.
    const lowerWanted = forRun && process.getuid?.() === 0;
    if (lowerWanted) this.openExecution().catch(() => undefined);
    const entries = plan.treeEntries();
    const packed = packTree(entries, {
      mtime: this.opts.sourceDateEpoch,
      owner: (rel) => plan.meta(rel),
      mode: (rel) => plan.meta(rel).mode,
    });
    const blob = await this.store.ingest(packed.stream);
    const layer = { digest: blob.digest, size: blob.size, diffId: await packed.diffId };
    const lower = lowerWanted ? await this.writeLower(entries, plan) : undefined;
    try {
      // Before the layer is recorded under a key that was computed from the files' earlier content
      // (and the lower kept: it was read from the same files).
      plan.checkUnchanged();
    } catch (err) {
      if (lower) await rm(lower, { recursive: true, force: true });
      throw err;
    }
    if (lower) await this.keepLower(lower, layer);
    return layer;
  }

  /**
   * The copy's layer as an overlay lower, for the `run` step above it, or undefined
   * (the run step then unpacks the blob, as it would anyway): with the copy snapshotter,
   * which mounts nothing; when a source might have changed unseen
   * since the packer read it (racily clean: the stat re-check could not tell, and the
   * lower must be the blob's content); when the files are big enough that copying
   * them synchronously would stall the build; and when writing it failed for any
   * reason but a full disk.
   */
  private async writeLower(entries: TreeEntry[], plan: CopyPlan): Promise<string | undefined> {
    let bytes = 0;
    for (const e of entries) {
      if (e.kind !== 'file') continue;
      bytes += e.st!.size;
      if (e.st!.size > LOWER_MAX_FILE || bytes > LOWER_MAX_BYTES || !this.stats.settled(e.st!)) return undefined;
    }
    const execution = await this.openExecution().catch(() => undefined);
    if (execution?.snapshotter.name !== 'overlay') return undefined;
    const dir = path.join(this.tmpRoot, `lower-${randomBytes(6).toString('hex')}`);
    try {
      writeTree(entries, dir, (rel) => plan.meta(rel), this.opts.sourceDateEpoch);
      return dir;
    } catch (err) {
      await rm(dir, { recursive: true, force: true });
      const full = asDiskFull(err, dir);
      if (full !== err) throw full;
      return undefined;
    }
  }

  /** Hands a written lower to the snapshotter; as with writing it, only a full disk fails the step. */
  private async keepLower(lower: string, layer: LayerRef): Promise<void> {
    try {
      await (await this.openExecution()).snapshotter.keepTree(lower, layer);
    } catch (err) {
      await rm(lower, { recursive: true, force: true });
      const full = asDiskFull(err, lower);
      if (full !== err) throw full;
    }
  }

  private contextSelections(step: CopyStep): Promise<Selection[]> {
    const key = JSON.stringify(step.sources);
    let selected = this.selections.get(key);
    if (!selected) {
      selected = copySelections(step, this.spec.context, { filter: this.filter });
      this.selections.set(key, selected);
    }
    // An error names a place in the build file: this step's own.
    return selected.catch(() => copySelections(step, this.spec.context, { filter: this.filter }));
  }

  /** What a step sits on: its needs (in layer order), or its image's base. */
  private async belowOf(image: ImageSpec, step: StepSpec): Promise<Below> {
    if (step.needs.length === 0) return this.baseOf(image);
    const needs = needsInLayerOrder(step, this.layerOrder.get(image.name)!);
    const keyed = await Promise.all(needs.map((n) => this.task(image.name, n).keyed));
    const dirs = once(async () => mergeDirs(...(await Promise.all(keyed.map((k) => k.dirs())))));
    return { chain: await needsChain(keyed.map((k) => k.chain)), dirs };
  }

  private async baseOf(image: ImageSpec): Promise<Below> {
    if (image.from.kind === 'scratch') return { chain: SCRATCH_CHAIN, dirs: async () => new Map() };
    if (image.from.kind === 'base') {
      const base = await this.external(image);
      return { chain: externalChain(base.image), dirs: base.dirs };
    }
    const base = await this.imageKeyed(image.from.image);
    return { chain: base.key, dirs: base.dirs };
  }

  /** A base image from outside the file, imported once per run (one flight per `from`). */
  private external(image: ImageSpec): Promise<{ image: BaseImage; dirs: () => Promise<DirMeta> }> {
    if (image.from.kind !== 'base') throw new Error(`internal: ${image.name} has no external base`);
    const from = image.from;
    let p = this.externals.get(from.text);
    if (!p) {
      p = (async () => {
        const base = await openExternalBase(image, this.store, () => this.registry());
        // A pushed image that shares these layers can mount them from where they came.
        if (from.ref.transport === 'registry') for (const l of base.layers) this.blobOrigins.set(l.digest, parseImageReference(from.ref.ref!));
        return { image: base, dirs: once(() => layerDirs(base.layers, this.store)) };
      })();
      p.catch(() => undefined);
      this.externals.set(from.text, p);
    }
    return p;
  }

  /** Key and directories of a whole image: its base, then every one of its layers in order. */
  private imageKeyed(name: string): Promise<{ key: string; dirs: () => Promise<DirMeta> }> {
    let p = this.imageKeys.get(name);
    if (!p) {
      const image = this.images.find((i) => i.name === name)!;
      p = (async () => {
        const base = await this.baseOf(image);
        const steps = await Promise.all(this.layerOrder.get(name)!.map((s) => this.task(name, s.id).keyed));
        const key = await imageChainKey(base.chain, steps.map((s) => s.chain));
        const dirs = once(async () => mergeDirs(...(await Promise.all([base.dirs(), ...steps.map((s) => s.ownDirs())]))));
        return { key, dirs };
      })();
      this.imageKeys.set(name, p);
    }
    return p;
  }

  private async imageLayers(name: string): Promise<LayerRef[]> {
    const image = this.images.find((i) => i.name === name)!;
    const base =
      image.from.kind === 'image'
        ? await this.imageLayers(image.from.image)
        : image.from.kind === 'base'
          ? (await this.external(image)).image.layers
          : [];
    const own = await Promise.all(this.layerOrder.get(name)!.map((s) => this.task(name, s.id).layer));
    return [...base, ...own.filter((l): l is LayerRef => l !== null)];
  }

  private task(image: string, step: string): StepTask {
    return this.tasks.get(nodeId(image, step))!;
  }

  private reportSkipped(): void {
    const reason = this.opts.signal?.aborted ? 'build interrupted' : `not built: the build stopped when ${this.firstError?.by ?? 'a step'} failed`;
    for (const image of this.images) {
      for (const step of image.steps) {
        if (!this.results.has(nodeId(image.name, step.id))) {
          this.finish(this.result(image, step, { status: 'skipped', reason, startMs: this.now() }));
        }
      }
    }
  }

  private result(
    image: ImageSpec,
    step: StepSpec,
    r: { status: StepResult['status']; reason: string; startMs: number; key?: string; layer?: LayerRef | null; savedMs?: number; source?: CacheSourceKind },
  ): StepResult {
    return {
      image: image.name,
      step: step.id,
      status: r.status,
      reason: r.reason,
      key: r.key ?? '',
      startMs: r.startMs,
      durationMs: this.now() - r.startMs,
      layer: r.layer ?? null,
      savedMs: r.savedMs ?? 0,
      ...(r.status === 'hit' && r.source ? { cacheSource: r.source } : {}),
    };
  }

  private finish(result: StepResult): void {
    this.results.set(nodeId(result.image, result.step), result);
    this.emit({ type: 'step-end', result });
  }

  private emit(event: BuildEvent): void {
    faultPoint(event.type);
    this.opts.onEvent?.(event);
  }

  private now(): number {
    return Math.round(performance.now() - this.t0);
  }
}

/** Builds a step's layer; calls `working` when it stops waiting and starts working (what a hit later saves). */
type Build = (working: () => void) => Promise<LayerRef | null>;

interface Flight {
  status: 'hit' | 'miss';
  reason: string;
  layer: LayerRef | null;
  savedMs: number;
  /** Where a hit came from. */
  source?: CacheSourceKind;
}

/** Errors a user can act on keep their kind; anything else becomes a step failure that names the step. */
function asUserError(err: unknown, image: ImageSpec, step: StepSpec): Error {
  if (err instanceof CopyDestinationError && step.kind === 'copy') return new ConfigError([destinationIssue(image, step, err)]);
  if (err instanceof CommandFailedError) {
    const tail = err.tail.length ? `\n  last lines of output:\n${err.tail.map((l) => `  | ${l}`).join('\n')}` : ' (no output)';
    return new StepError(image.name, step.id, `${err.message}${tail}\n  whole output: ${err.logFile}`, step.pos, { cause: err });
  }
  // The runtime could not run the command (no such user, no such program…), a
  // mount failed, a layer was refused: say which step it happened in.
  if (err instanceof LayergraphError && !(err instanceof ConfigError) && !(err instanceof StepError) && !(err instanceof UsageError)) {
    return new StepError(image.name, step.id, err.message, step.pos, { cause: err });
  }
  if (err instanceof LayergraphError) return err;
  const full = asDiskFull(err);
  if (full !== err) return asUserError(full, image, step);
  const message = err instanceof Error ? err.message : String(err);
  return new StepError(image.name, step.id, message, step.pos, { cause: err });
}

/** A copy's lower is written from its sources only up to these sizes (per file, in all): beyond, it is unpacked asynchronously when mounted. */
const LOWER_MAX_FILE = 4 * 1024 * 1024;
const LOWER_MAX_BYTES = 64 * 1024 * 1024;

/** `image\0step` of every copy step that some `run` step of the same image sits on, directly or through its needs. */
function stepsUnderRuns(images: readonly ImageSpec[]): Set<string> {
  const out = new Set<string>();
  for (const image of images) {
    const kinds = new Map(image.steps.map((s) => [s.id, s.kind]));
    for (const run of image.steps.filter((s) => s.kind === 'run')) {
      for (const id of stepsBelow(image, run.id)) if (kinds.get(id) === 'copy') out.add(`${image.name}\0${id}`);
    }
  }
  return out;
}
