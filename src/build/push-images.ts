/**
 * Pushing built images to the registries their tags name. For every tag:
 * each blob the registry lacks is mounted from a repository of the same
 * registry known to hold it (the base it came from, or an image pushed
 * earlier in this run) or else uploaded; then the manifest is put under the
 * tag. Images of one run that share layers upload them once.
 */
import type { ContentStore } from '../cache/content-store.js';
import type { ImageSpec } from '../config/types.js';
import { MEDIA_TYPE_MANIFEST } from '../oci/media-types.js';
import type { RegistryClient } from '../registry/client.js';
import { parseImageReference, type ImageReference } from '../registry/reference.js';
import type { BuiltImage } from './assemble.js';

export interface PushedTag {
  image: string;
  reference: string;
  digest: string;
}

/**
 * A tag names a registry when its first component is a host (has a `.` or a
 * `:`, or is `localhost`), as Docker reads it; other tags only name the image
 * in the local outputs.
 */
export function registryTags(tags: readonly string[]): string[] {
  return tags.filter((t) => {
    const first = t.split('/')[0]!;
    return t.includes('/') && (first.includes('.') || first.includes(':') || first === 'localhost');
  });
}

/**
 * Pushes the images that should be: all of `built` with `pushAll`, else those
 * whose build file says `push: true`. `knownAt` gives, for a blob of a base
 * pulled from a registry, where it was pulled from (for a cross-repo mount).
 */
export async function pushImages(
  built: BuiltImage[],
  specs: ImageSpec[],
  pushAll: boolean,
  store: ContentStore,
  registry: () => Promise<RegistryClient>,
  knownAt: (digest: string) => ImageReference | undefined,
): Promise<PushedTag[]> {
  // Where each blob is known to be, per registry: the repository to mount it from.
  const seen = new Map<string, Map<string, string>>();
  const remember = (ref: ImageReference, digest: string) => {
    let m = seen.get(ref.registry);
    if (!m) seen.set(ref.registry, (m = new Map()));
    if (!m.has(digest)) m.set(digest, ref.repository);
  };
  const pushed: PushedTag[] = [];
  for (const image of built) {
    const spec = specs.find((s) => s.name === image.name);
    if (!pushAll && !spec?.push) continue;
    const client = await registry();
    const manifest = await store.bytes(image.manifestDigest);
    const { config, layers } = JSON.parse(manifest.toString('utf8')) as { config: Blob; layers: Blob[] };
    for (const tag of registryTags(image.tags)) {
      const ref = parseImageReference(tag);
      for (const blob of [...layers, config]) {
        const origin = knownAt(blob.digest);
        const mountFrom = seen.get(ref.registry)?.get(blob.digest) ?? (origin?.registry === ref.registry ? origin.repository : undefined);
        await client.pushBlob(ref, blob.digest, blob.size, store, mountFrom && mountFrom !== ref.repository ? { mountFrom } : {});
        remember(ref, blob.digest);
      }
      const digest = await client.putManifest(ref, ref.tag ?? 'latest', manifest, MEDIA_TYPE_MANIFEST);
      pushed.push({ image: image.name, reference: tag, digest });
    }
  }
  return pushed;
}

interface Blob {
  digest: string;
  size: number;
}
