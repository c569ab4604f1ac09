/**
 * Turn built steps into images: stack each image's layers (its base image's
 * first, then its own in layer order), write config and manifest into the
 * content store, and the OCI image layout for the images asked for.
 */
import type { ContentStore } from '../cache/content-store.js';
import type { LayerRef } from '../cache/step-records.js';
import type { ImageSpec, StepSpec } from '../config/types.js';
import {
  SCRATCH,
  configJson,
  createdAt,
  inheritConfig,
  manifestJson,
  type ImageState,
} from '../oci/image-config.js';
import { stopIfAborted, writeLayout, type LayoutImage } from '../oci/layout.js';
import { writeArchive, type ArchiveKind } from '../oci/archive.js';
import type { BaseImage } from '../oci/base-image.js';
import { describeCopy } from './copy-inputs.js';
import { describeRun } from './run-inputs.js';

export interface BuiltImage {
  name: string;
  tags: string[];
  manifestDigest: string;
  configDigest: string;
  layers: LayerRef[];
}

export interface AssembleInput {
  store: ContentStore;
  /** Every image built in this run (bases included). */
  images: ImageSpec[];
  /** The images to write to the layout. */
  outputs: ImageSpec[];
  layerOrder: Map<string, StepSpec[]>;
  layerOf: (image: string, step: string) => Promise<LayerRef | null>;
  /** The imported base of an image built `from: oci:…` and friends. */
  externalBase: (image: ImageSpec) => Promise<BaseImage>;
  outDir: string | undefined;
  /** Single-file outputs, instead of or besides the layout. */
  archives: Array<{ kind: ArchiveKind; file: string }>;
  sourceDateEpoch: number;
  /** Told about damage found in what is already in the output layout (it is replaced). */
  onDamage?: (what: string) => void;
  /** Once aborted, writing stops between blobs (what is written stays whole). */
  signal?: AbortSignal;
}

export async function assembleImages(input: AssembleInput): Promise<BuiltImage[]> {
  const created = createdAt(input.sourceDateEpoch);
  const states = new Map<string, Promise<ImageState>>();
  const stateOf = (name: string): Promise<ImageState> => {
    let p = states.get(name);
    if (!p) {
      const image = input.images.find((i) => i.name === name)!;
      p = imageState(
        image,
        image.from.kind === 'image'
          ? stateOf(image.from.image)
          : image.from.kind === 'base'
            ? input.externalBase(image).then(baseState)
            : Promise.resolve(SCRATCH),
      );
      states.set(name, p);
    }
    return p;
  };

  const imageState = async (image: ImageSpec, baseP: Promise<ImageState>): Promise<ImageState> => {
    const base = await baseP;
    const state: ImageState = {
      platform: image.platform ?? base.platform,
      layers: [...base.layers],
      history: [...base.history],
      config: inheritConfig(base.config, image),
    };
    for (const step of input.layerOrder.get(image.name)!) {
      const layer = await input.layerOf(image.name, step.id);
      const entry = { created, created_by: step.kind === 'run' ? describeRun(step) : describeCopy(step), comment: `layergraph step ${image.name}/${step.id}` };
      if (layer) {
        state.layers.push({ digest: layer.digest, size: layer.size, diffId: layer.diffId });
        state.history.push(entry);
      } else {
        state.history.push({ ...entry, empty_layer: true });
      }
    }
    return state;
  };

  const built: BuiltImage[] = [];
  const layout: LayoutImage[] = [];
  for (const image of input.outputs) {
    const state = await stateOf(image.name);
    const config = await input.store.put(configJson(state, created));
    const manifest = await input.store.put(manifestJson(config, state.layers));
    built.push({
      name: image.name,
      tags: image.tags,
      manifestDigest: manifest.digest,
      configDigest: config.digest,
      layers: state.layers,
    });
    layout.push({
      name: image.name,
      tags: image.tags,
      manifest,
      platform: state.platform,
      blobs: [manifest, config, ...state.layers],
    });
  }
  if (input.outDir) await writeLayout(input.outDir, input.store, layout, { onDamage: input.onDamage, signal: input.signal });
  for (const a of input.archives) {
    stopIfAborted(input.signal);
    await writeArchive(a.kind, a.file, input.store, layout, input.sourceDateEpoch);
  }
  return built;
}

/** A base image as the images built on it start: its layers as they are, its config and history. */
function baseState(base: BaseImage): ImageState {
  return { platform: base.platform, layers: base.layers, history: base.history, config: base.config };
}
