/**
 * How the keys of what steps sit on are formed, shared by the build (which
 * keys each step as it goes) and `plan` (which keys them without building),
 * so that both always compute the same keys.
 *
 * Words: a step's *key* covers the step itself (see step-key.ts); a *chain*
 * key covers a whole filesystem: what a step sits on plus the step. What the
 * first steps of an image sit on is its base's chain: `scratch`, an external
 * base's manifest digest, or the *image key* of another image of the file
 * (its base chain and the chain of every one of its steps, in layer order).
 * None of these needs a layer: keys come from keys.
 */
import type { ContentStore } from '../cache/content-store.js';
import { belowKey } from '../cache/step-key.js';
import type { ImageSpec, StepSpec } from '../config/types.js';
import { ConfigError, UsageError } from '../errors.js';
import { importBase, type BaseImage } from '../oci/base-image.js';
import type { RegistryClient } from '../registry/client.js';
import { hostPlatform, inheritConfig, type RuntimeConfig } from '../oci/image-config.js';
import { hashValue } from '../util/xxhash.js';

export const SCRATCH_CHAIN = 'scratch';

/** The chain of an image built on a base from outside the file. */
export function externalChain(base: Pick<BaseImage, 'manifestDigest'>): string {
  return `base:${base.manifestDigest}`;
}

/** Key of a whole image: its base's chain, then the chain of each of its steps in layer order. */
export function imageChainKey(baseChain: string, stepChains: string[]): Promise<string> {
  return hashValue(['image', baseChain, ...stepChains]);
}

/** The steps `step` sits on, in layer order: the order their chains are combined in. */
export function needsInLayerOrder(step: StepSpec, layerOrder: readonly StepSpec[]): string[] {
  const order = layerOrder.map((s) => s.id);
  return [...step.needs].sort((a, b) => order.indexOf(a) - order.indexOf(b));
}

/** The chain below a step that needs others, from their chains in layer order. */
export function needsChain(chains: string[]): Promise<string> {
  return belowKey(chains);
}

/**
 * The config an image's steps run under (a `run` step's environment, workdir
 * and user come from it): what its base leaves, with the images of the file
 * in between applied in turn. Needs no layer: an external base's config is
 * read from the base image, the rest from the build file.
 */
export class BaseConfigs {
  private readonly memo = new Map<string, Promise<RuntimeConfig>>();

  constructor(
    private readonly image: (name: string) => ImageSpec,
    private readonly external: (image: ImageSpec) => Promise<RuntimeConfig>,
  ) {}

  /** What `image`'s base leaves (the image's own settings come on top, per step). */
  below(image: ImageSpec): Promise<RuntimeConfig> {
    if (image.from.kind === 'scratch') return Promise.resolve({});
    if (image.from.kind === 'base') return this.external(image);
    return this.of(image.from.image);
  }

  /** The config of the finished image `name`. */
  of(name: string): Promise<RuntimeConfig> {
    let p = this.memo.get(name);
    if (!p) {
      const image = this.image(name);
      p = this.below(image).then((base) => inheritConfig(base, image));
      this.memo.set(name, p);
    }
    return p;
  }
}

/**
 * Read an image's base from outside the file. A base that is missing or not
 * an image is a problem of the build file: the error points at its `from`.
 */
export async function openExternalBase(image: ImageSpec, store: ContentStore, registry?: () => Promise<RegistryClient>): Promise<BaseImage> {
  if (image.from.kind !== 'base') throw new Error(`internal: ${image.name} has no external base`);
  const from = image.from;
  try {
    return await importBase(from.ref, store, image.platform ?? hostPlatform(), registry);
  } catch (err) {
    if (err instanceof UsageError || (err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new ConfigError([{ pos: from.pos, path: `images.${image.name}.from`, message: `\`from: ${from.text}\`: ${(err as Error).message}` }]);
    }
    throw err;
  }
}
