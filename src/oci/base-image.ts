/**
 * Base images from outside the build file: `oci:<dir>[:<ref>]`,
 * `oci-archive:<file>[:<ref>]` and `docker-archive:<file>` (what `docker save`
 * writes). Each is imported once into the content store — every blob checked
 * against its digest on the way in — and its layers are then reused as they
 * are: the output manifest points at the very same blobs, never repacked.
 *
 * A layer from outside is checked once before anything uses it
 * (`checkedLayer`): read whole, the way the applier reads it, against the
 * rules for entries and the size limits (layer-headers.ts, layer-stream.ts),
 * and its diffID against the image's config. So a hostile layer is refused
 * with the image and the entry named even by a build that never unpacks it.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import { sha256Digest, type ContentStore } from '../cache/content-store.js';
import type { Platform } from '../config/types.js';
import { InvalidImageError, UsageError } from '../errors.js';
import { MEDIA_TYPE_INDEX } from './media-types.js';
import { blobPath, findImage, readBlob, type Descriptor } from './layout-reader.js';
import type { HistoryEntry, RuntimeConfig } from './image-config.js';
import { checkLayer, describeLayer, layerEntries } from './layer-headers.js';
import { layerLimits } from './layer-stream.js';
import { writeFileAtomic } from '../util/fs-atomic.js';
import { readJsonIfPresent } from '../util/fs-read.js';
import type { RegistryClient } from '../registry/client.js';

export type BaseTransport = 'oci' | 'oci-archive' | 'docker-archive' | 'registry';

export interface BaseRef {
  transport: BaseTransport;
  /** Absolute path of the layout directory or archive file ('' for a registry). */
  path: string;
  /** The image in the layout or archive; for a registry, the whole reference. */
  ref: string | undefined;
}

export interface BaseLayer {
  digest: string;
  size: number;
  diffId: string;
  mediaType: string;
}

export interface BaseImage {
  /** What the keys of everything built on it include. */
  manifestDigest: string;
  platform: Platform;
  config: RuntimeConfig;
  history: HistoryEntry[];
  layers: BaseLayer[];
}

const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
const LAYER_TAR = 'application/vnd.oci.image.layer.v1.tar';

/** `oci:dir:ref` and friends, or undefined for anything else (`scratch`, an image of the file). */
export function parseBaseRef(from: string, baseDir: string): BaseRef | undefined {
  const m = /^(oci|oci-archive|docker-archive):(.+)$/.exec(from);
  if (!m) return undefined;
  const transport = m[1] as BaseTransport;
  const rest = m[2]!;
  // The path ends at the first ':' (a ref such as `registry/app:1.0` may hold more); docker-archive has no ref.
  const i = transport === 'docker-archive' ? -1 : rest.indexOf(':');
  const file = i === -1 ? rest : rest.slice(0, i);
  return { transport, path: path.resolve(baseDir, file), ref: i === -1 ? undefined : rest.slice(i + 1) };
}

/** A registry image's reference, as `from:` writes it: `[host[:port]/]repo[:tag][@digest]`. */
export function registryBaseRef(from: string): BaseRef {
  return { transport: 'registry', path: '', ref: from };
}

export async function importBase(ref: BaseRef, store: ContentStore, platform: Platform, registry?: () => Promise<RegistryClient>): Promise<BaseImage> {
  if (ref.transport === 'registry') {
    const client = registry ? await registry() : new (await import('../registry/client.js')).RegistryClient();
    return importRegistry(ref.ref!, store, platform, client);
  }
  if (ref.transport === 'oci') return importLayout(ref.path, ref.ref, store, platform, ref);
  const dir = await mkdtemp(path.join(os.tmpdir(), 'layergraph-base-'));
  try {
    await extractArchive(ref.path, dir);
    return ref.transport === 'oci-archive'
      ? await importLayout(dir, ref.ref, store, platform, ref)
      : await importDockerArchive(dir, store, ref);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

async function importLayout(layout: string, wanted: string | undefined, store: ContentStore, platform: Platform, ref: BaseRef): Promise<BaseImage> {
  const desc = await findImage(layout, wanted, describe(ref));
  const manifestDesc = await resolvePlatform(layout, desc, store, platform, ref);
  const manifest = JSON.parse(await importBlob(layout, manifestDesc.digest, store, ref)) as { config: Descriptor; layers: Descriptor[] };
  const config = JSON.parse(await importBlob(layout, manifest.config.digest, store, ref)) as ConfigJson;
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== manifest.layers.length) {
    throw new InvalidImageError(`${describe(ref)}: ${manifest.layers.length} layers but ${diffIds.length} diff_ids in its config`);
  }
  const layers: BaseLayer[] = [];
  for (const [i, l] of manifest.layers.entries()) {
    const mediaType = ociLayerType(l.mediaType);
    // Imported once: the store checked it on the way in and owns it since.
    if (!(await store.has(l.digest))) {
      await store.ingest(createReadStream(blobPath(layout, l.digest)), l.digest).catch((err: Error) => {
        throw new InvalidImageError(`${describe(ref)}: layer ${l.digest}: ${err.message}`, { cause: err });
      });
    }
    const layer = { digest: l.digest, size: l.size, diffId: diffIds[i]!, mediaType };
    await checkedLayer(store, layer, describe(ref));
    layers.push(layer);
  }
  return toBase(manifestDesc.digest, config, layers);
}

/**
 * From a registry: through an index to our platform, every blob pulled into
 * the store and checked on the way (a blob the store has is not downloaded).
 */
async function importRegistry(from: string, store: ContentStore, platform: Platform, client: RegistryClient): Promise<BaseImage> {
  const image = await client.resolve(from, platform);
  await store.put(image.bytes);
  await client.pullBlob(image.reference, image.config, store);
  const config = JSON.parse((await store.bytes(image.config.digest)).toString('utf8')) as ConfigJson;
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== image.layers.length) {
    throw new InvalidImageError(`${from}: ${image.layers.length} layers but ${diffIds.length} diff_ids in its config`);
  }
  const layers: BaseLayer[] = [];
  for (const [i, l] of image.layers.entries()) {
    const mediaType = ociLayerType(l.mediaType);
    await client.pullBlob(image.reference, l, store);
    const layer = { digest: l.digest, size: l.size, diffId: diffIds[i]!, mediaType };
    await checkedLayer(store, layer, from);
    layers.push(layer);
  }
  return toBase(image.digest, config, layers);
}

/** An index (several platforms) resolves to the manifest for ours. */
async function resolvePlatform(layout: string, desc: Descriptor, store: ContentStore, platform: Platform, ref: BaseRef): Promise<Descriptor> {
  if (desc.mediaType !== MEDIA_TYPE_INDEX && desc.mediaType !== DOCKER_LIST) return desc;
  const index = JSON.parse(await importBlob(layout, desc.digest, store, ref)) as { manifests: Descriptor[] };
  const match = index.manifests.find(
    (m) => m.platform?.os === platform.os && m.platform.architecture === platform.architecture && (!platform.variant || !m.platform.variant || m.platform.variant === platform.variant),
  );
  if (!match) {
    const have = index.manifests.map((m) => `${m.platform?.os}/${m.platform?.architecture}`).join(', ');
    throw new UsageError(`${describe(ref)}: no image for ${platform.os}/${platform.architecture} (it has ${have})`);
  }
  return match;
}

async function importDockerArchive(dir: string, store: ContentStore, ref: BaseRef): Promise<BaseImage> {
  const manifests = await readJsonFile<Array<{ Config: string; Layers: string[] }>>(path.join(dir, 'manifest.json'), ref);
  const entry = manifests[0];
  if (!entry || manifests.length !== 1) {
    throw new UsageError(`${describe(ref)}: holds ${manifests.length} images; layergraph takes an archive of exactly one`);
  }
  const configBytes = await readFile(inside(dir, entry.Config, ref));
  const config = JSON.parse(configBytes.toString('utf8')) as ConfigJson;
  const diffIds = config.rootfs?.diff_ids ?? [];
  if (diffIds.length !== entry.Layers.length) {
    throw new InvalidImageError(`${describe(ref)}: ${entry.Layers.length} layers but ${diffIds.length} diff_ids in its config`);
  }
  await store.put(configBytes);
  const layers: BaseLayer[] = [];
  for (const [i, file] of entry.Layers.entries()) {
    // docker save writes uncompressed tars: the blob is the tar, its digest is its diffID.
    const blob = await store.ingest(createReadStream(inside(dir, file, ref)), diffIds[i]).catch((err: Error) => {
      throw new InvalidImageError(`${describe(ref)}: layer ${file}: ${err.message}`, { cause: err });
    });
    const layer = { digest: blob.digest, size: blob.size, diffId: blob.digest, mediaType: LAYER_TAR };
    await checkedLayer(store, layer, describe(ref));
    layers.push(layer);
  }
  // No manifest in the archive: its config digest names the image.
  return toBase(sha256Digest(configBytes), config, layers);
}

interface ConfigJson {
  architecture?: string;
  os?: string;
  variant?: string;
  config?: RuntimeConfig;
  history?: HistoryEntry[];
  rootfs?: { diff_ids?: string[] };
}

function toBase(manifestDigest: string, config: ConfigJson, layers: BaseLayer[]): BaseImage {
  const { User, ExposedPorts, Env, Entrypoint, Cmd, WorkingDir, Labels } = config.config ?? {};
  const runtime: RuntimeConfig = Object.fromEntries(
    Object.entries({ User, ExposedPorts, Env, Entrypoint, Cmd, WorkingDir, Labels }).filter(([, v]) => v !== undefined && v !== null && v !== ''),
  );
  return {
    manifestDigest,
    platform: { os: config.os ?? 'linux', architecture: config.architecture ?? 'amd64', ...(config.variant ? { variant: config.variant } : {}) },
    config: runtime,
    history: config.history ?? [],
    layers,
  };
}

function ociLayerType(mediaType: string): string {
  if (mediaType === 'application/vnd.docker.image.rootfs.diff.tar.gzip') return 'application/vnd.oci.image.layer.v1.tar+gzip';
  if (mediaType === 'application/vnd.oci.image.layer.v1.tar+gzip' || mediaType === LAYER_TAR) return mediaType;
  throw new UsageError(`a base image layer of type ${mediaType} is not supported (gzip or plain tar only)`);
}

/**
 * Makes sure a layer from outside (in the store, its digest checked) was
 * checked (layer-headers.ts `checkLayer`), and that it has the diffID the
 * image's config gives it. Checked once per digest: `bases/<hex>.checked`
 * holds the diffID found, so a later import, of this image or another that
 * shares the layer, only compares.
 */
async function checkedLayer(store: ContentStore, layer: BaseLayer, image: string): Promise<void> {
  const name = describeLayer({ digest: layer.digest, image });
  const hex = /^sha256:([0-9a-f]{64})$/.exec(layer.digest)?.[1];
  if (!hex) throw new InvalidImageError(`${name}: not a sha256 digest`);
  // A plan keeps no blob to read and may write nothing to the cache; the build that follows checks.
  if (!store.keepsBlobs) return;
  const marker = path.join(store.root, 'bases', `${hex}.checked`);
  let diffId = (await readFile(marker, 'utf8').catch(() => '')).trim();
  if (!/^sha256:[0-9a-f]{64}$/.test(diffId)) {
    ({ diffId } = await checkLayer(store.read(layer.digest), name, layerLimits()));
    await writeFileAtomic(marker, diffId, store.ingestDir());
  }
  if (diffId !== layer.diffId) {
    throw new InvalidImageError(`${name}: its config gives it diffID ${layer.diffId}, but its tar has diffID ${diffId}: the image is damaged or was altered`);
  }
}

/** Read a small blob of a layout, check it, and keep it in the store. */
async function importBlob(layout: string, digest: string, store: ContentStore, ref: BaseRef): Promise<string> {
  const bytes = await readBlob(layout, digest).catch((err: Error) => {
    throw new InvalidImageError(`${describe(ref)}: ${err.message}`, { cause: err });
  });
  await store.put(bytes);
  return bytes.toString('utf8');
}

/** A path named by an archive's own manifest, which must stay inside it. */
function inside(dir: string, unsafeName: string, ref: BaseRef): string {
  const p = path.resolve(dir, unsafeName);
  if (!p.startsWith(dir + path.sep)) throw new InvalidImageError(`${describe(ref)}: names ${unsafeName}, outside the archive`);
  return p;
}

async function readJsonFile<T>(file: string, ref: BaseRef): Promise<T> {
  try {
    return JSON.parse(await readFile(file, 'utf8')) as T;
  } catch (err) {
    throw new UsageError(`${describe(ref)}: cannot read ${path.basename(file)}: ${(err as Error).message}`);
  }
}

/** Unpack an archive's regular files (its blobs and JSON) into `dir`; nothing else is needed from it. */
async function extractArchive(file: string, dir: string): Promise<void> {
  const ex = tar.extract();
  const input = createReadStream(file);
  input.on('error', (err) => ex.destroy(err));
  input.pipe(ex as unknown as NodeJS.WritableStream);
  for await (const entry of ex) {
    const name = path.posix.normalize(entry.header.name).replace(/^(\.\/)+/, '');
    const target = path.resolve(dir, name);
    if (entry.header.type !== 'file' || !target.startsWith(dir + path.sep)) {
      entry.resume();
      continue;
    }
    await mkdir(path.dirname(target), { recursive: true });
    await pipeline(entry as unknown as Readable, createWriteStream(target));
  }
}

function describe(ref: BaseRef): string {
  if (ref.transport === 'registry') return ref.ref!;
  return `${ref.transport}:${ref.path}${ref.ref ? `:${ref.ref}` : ''}`;
}

/**
 * The directories a stack of layers leaves, with their metadata, read from
 * the tar headers alone (nothing is unpacked): what copies on top of a base
 * pass through. Whiteouts remove what they name, as an unpack would.
 */
export async function layerDirs(layers: ReadonlyArray<{ digest: string }>, store: ContentStore): Promise<Map<string, { mode: number; uid: number; gid: number }>> {
  // Read once per stack of layers: every run on the same base needs the same answer.
  const cacheFile = path.join(store.root, 'bases', `${createHash('sha256').update(layers.map((l) => l.digest).join(',')).digest('hex')}.dirs.json`);
  const cached = await readJsonIfPresent<Array<[string, { mode: number; uid: number; gid: number }]>>(cacheFile);
  if (cached) return new Map(cached);
  const dirs = await readLayerDirs(layers, store);
  await writeFileAtomic(cacheFile, JSON.stringify([...dirs]), store.ingestDir());
  return dirs;
}

async function readLayerDirs(layers: ReadonlyArray<{ digest: string }>, store: ContentStore): Promise<Map<string, { mode: number; uid: number; gid: number }>> {
  const dirs = new Map<string, { mode: number; uid: number; gid: number }>();
  const drop = (rel: string, keepSelf: boolean): void => {
    for (const k of [...dirs.keys()]) if ((!keepSelf && k === rel) || k.startsWith(`${rel}/`) || rel === '') dirs.delete(k);
  };
  for (const layer of layers) {
    for await (const { rel, header: h, whiteout } of layerEntries(layer.digest, store)) {
      if (whiteout && 'opaque' in whiteout) drop(whiteout.opaque, true);
      else if (whiteout) drop(whiteout.deletes, false);
      else if (h.type === 'directory' && rel) dirs.set(rel, { mode: (h.mode ?? 0o755) & 0o7777, uid: h.uid ?? 0, gid: h.gid ?? 0 });
      else if (rel) drop(rel, false);
    }
  }
  return dirs;
}
