/**
 * The shared cache in a registry (`registry:<ref>`): an ordinary OCI
 * artifact any registry can hold — an image manifest whose `artifactType`
 * says what it is, an empty config, and as layers the records bundle (every
 * step record and the last key of every image/step) followed by the layers
 * the records point to. Import reads the bundle once; a layer is pulled only
 * when a hit needs it. Export pushes what the registry lacks (mounting what
 * the same registry holds elsewhere) and puts the manifest under the tag.
 */
import type { ContentStore } from './content-store.js';
import type { LayerRef, StepRecord } from './step-records.js';
import type { CacheExport, CacheImport } from './shared-cache.js';
import { RegistryError, UsageError } from '../errors.js';
import { MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST } from '../oci/media-types.js';
import type { RegistryClient } from '../registry/client.js';
import { parseImageReference, type ImageReference } from '../registry/reference.js';

export const CACHE_ARTIFACT_TYPE = 'application/vnd.layergraph.cache.v1+json';
const RECORDS_MEDIA_TYPE = 'application/vnd.layergraph.cache.records.v1+json';
const EMPTY_MEDIA_TYPE = 'application/vnd.oci.empty.v1+json';
const EMPTY = Buffer.from('{}');

const BUNDLE_VERSION = 1;

interface Bundle {
  bundleVersion: typeof BUNDLE_VERSION;
  records: StepRecord[];
  /** `image/step` → the key it had when the cache was written. */
  last: Record<string, string>;
}

/** Lazy: nothing is fetched until a key is looked up. A cache that does not exist yet is an empty one. */
export function registryImport(refText: string, registry: () => Promise<RegistryClient>, store: ContentStore): CacheImport & { origin: ImageReference } {
  const ref = parseImageReference(refText);
  let bundle: Promise<Map<string, StepRecord> & { last: Record<string, string> }> | undefined;
  const load = () =>
    (bundle ??= (async () => {
      const client = await registry();
      const manifest = await client.getManifest(ref).catch((err: unknown) => {
        if (err instanceof RegistryError && err.code === 'REGISTRY_NOT_FOUND') return undefined;
        throw err;
      });
      const map = Object.assign(new Map<string, StepRecord>(), { last: {} as Record<string, string> });
      if (!manifest) return map;
      const parsed = JSON.parse(manifest.bytes.toString('utf8')) as { artifactType?: string; layers?: Array<{ mediaType: string; digest: string; size: number }> };
      const records = parsed.layers?.find((l) => l.mediaType === RECORDS_MEDIA_TYPE);
      if (parsed.artifactType !== CACHE_ARTIFACT_TYPE || !records) {
        throw new UsageError(`registry:${refText} is not a layergraph cache (artifactType ${parsed.artifactType ?? 'none'})`);
      }
      await client.pullBlob(ref, records, store);
      const data = JSON.parse((await store.bytes(records.digest)).toString('utf8')) as Partial<Bundle>;
      if (data.bundleVersion !== BUNDLE_VERSION || !Array.isArray(data.records) || typeof data.last !== 'object' || data.last === null) {
        throw new UsageError(`registry:${refText} holds a cache of another format (bundle version ${String(data.bundleVersion)}); this layergraph reads version ${BUNDLE_VERSION}`);
      }
      for (const r of data.records) map.set(r.key, r);
      map.last = data.last;
      return map;
    })());
  return {
    kind: 'registry',
    label: `registry:${refText}`,
    origin: ref,
    record: async (key) => (await load()).get(key),
    lastFor: async (image, step) => {
      const b = await load();
      const key = b.last[`${image}/${step}`];
      return key ? b.get(key) : undefined;
    },
    fetchLayer: async (layer, into) => {
      await (await registry()).pullBlob(ref, { mediaType: MEDIA_TYPE_LAYER_GZIP, digest: layer.digest, size: layer.size }, into);
    },
  };
}

export function registryExport(refText: string, registry: () => Promise<RegistryClient>, mountFrom: (digest: string) => ImageReference | undefined): CacheExport {
  const ref = parseImageReference(refText);
  return {
    write: async (records, store) => {
      const client = await registry();
      const before = client.transferred.pushed;
      const layers = new Map<string, LayerRef>();
      for (const r of records) if (r.layer) layers.set(r.layer.digest, r.layer);
      let copied = 0;
      for (const layer of layers.values()) {
        const origin = mountFrom(layer.digest);
        const hint = origin?.registry === ref.registry && origin.repository !== ref.repository ? { mountFrom: origin.repository } : {};
        if ((await client.pushBlob(ref, layer.digest, layer.size, store, hint)) === 'uploaded') copied++;
      }
      const bundle: Bundle = { bundleVersion: BUNDLE_VERSION, records, last: Object.fromEntries(records.map((r) => [`${r.image}/${r.step}`, r.key])) };
      const bundleBlob = await store.put(Buffer.from(JSON.stringify(bundle)));
      const empty = await store.put(EMPTY);
      await client.pushBlob(ref, bundleBlob.digest, bundleBlob.size, store);
      await client.pushBlob(ref, empty.digest, empty.size, store);
      const manifest = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: MEDIA_TYPE_MANIFEST,
          artifactType: CACHE_ARTIFACT_TYPE,
          config: { mediaType: EMPTY_MEDIA_TYPE, digest: empty.digest, size: empty.size },
          layers: [
            { mediaType: RECORDS_MEDIA_TYPE, digest: bundleBlob.digest, size: bundleBlob.size },
            ...[...layers.values()].map((l) => ({ mediaType: MEDIA_TYPE_LAYER_GZIP, digest: l.digest, size: l.size })),
          ],
        }),
      );
      await client.putManifest(ref, ref.tag ?? 'latest', manifest, MEDIA_TYPE_MANIFEST);
      return { blobs: copied, bytes: client.transferred.pushed - before };
    },
  };
}
