/**
 * Reading manifests a registry sent: which kind a document is (an image
 * manifest or an index, OCI or Docker v2 schema 2), and its descriptors,
 * checked enough that later steps can trust their shape.
 */
import type { Descriptor } from '../oci/layout-reader.js';
import {
  MEDIA_TYPE_DOCKER_MANIFEST,
  MEDIA_TYPE_DOCKER_MANIFEST_LIST,
  MEDIA_TYPE_INDEX,
  MEDIA_TYPE_MANIFEST,
} from '../oci/media-types.js';

export type ManifestKind = 'image' | 'index';

/** What we ask registries for, best first. */
export const MANIFEST_ACCEPT = [MEDIA_TYPE_MANIFEST, MEDIA_TYPE_INDEX, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_DOCKER_MANIFEST_LIST];

export interface ParsedImageManifest {
  kind: 'image';
  config: Descriptor;
  layers: Descriptor[];
}

export interface ParsedIndex {
  kind: 'index';
  manifests: Descriptor[];
}

/**
 * The document's media type: the `Content-Type` the registry sent when it is
 * one we know, else the document's own `mediaType` field.
 */
export function manifestMediaType(contentType: string | null, json: unknown): string {
  const header = (contentType ?? '').split(';')[0]!.trim();
  if (MANIFEST_ACCEPT.includes(header)) return header;
  const field = (json as { mediaType?: unknown } | null)?.mediaType;
  if (typeof field === 'string' && field) return field;
  // An OCI manifest may leave mediaType out; its shape tells which it is.
  if (json && typeof json === 'object' && Array.isArray((json as { manifests?: unknown }).manifests)) return MEDIA_TYPE_INDEX;
  if (json && typeof json === 'object' && (json as { config?: unknown }).config) return MEDIA_TYPE_MANIFEST;
  return header;
}

/** Parses a manifest of `mediaType`; throws a plain Error saying what is wrong (the caller names the manifest). */
export function parseManifest(json: unknown, mediaType: string): ParsedImageManifest | ParsedIndex {
  if (!json || typeof json !== 'object') throw new Error('the manifest is not a JSON object');
  const doc = json as { schemaVersion?: unknown; config?: unknown; layers?: unknown; manifests?: unknown };
  if (doc.schemaVersion !== 2) {
    throw new Error(`schemaVersion ${String(doc.schemaVersion)} is not supported (Docker schema 1 images are deprecated; push the image again with a current client)`);
  }
  if (mediaType === MEDIA_TYPE_INDEX || mediaType === MEDIA_TYPE_DOCKER_MANIFEST_LIST) {
    if (!Array.isArray(doc.manifests)) throw new Error('the index has no `manifests` list');
    return { kind: 'index', manifests: doc.manifests.map((d, i) => descriptor(d, `manifests[${i}]`)) };
  }
  if (mediaType === MEDIA_TYPE_MANIFEST || mediaType === MEDIA_TYPE_DOCKER_MANIFEST) {
    if (!Array.isArray(doc.layers)) throw new Error('the manifest has no `layers` list');
    return {
      kind: 'image',
      config: descriptor(doc.config, 'config'),
      layers: doc.layers.map((d, i) => descriptor(d, `layers[${i}]`)),
    };
  }
  throw new Error(`media type ${mediaType || '(none)'} is not an image manifest or index we can read (expected one of ${MANIFEST_ACCEPT.join(', ')})`);
}

function descriptor(value: unknown, where: string): Descriptor {
  const d = value as Partial<Descriptor> | null;
  if (!d || typeof d !== 'object') throw new Error(`${where} is not a descriptor`);
  if (typeof d.mediaType !== 'string') throw new Error(`${where} has no mediaType`);
  if (typeof d.digest !== 'string' || !/^sha256:[0-9a-f]{64}$/.test(d.digest)) {
    throw new Error(`${where} has digest ${String(d.digest)}; only sha256 digests are supported`);
  }
  if (typeof d.size !== 'number' || !Number.isSafeInteger(d.size) || d.size < 0) throw new Error(`${where} has no valid size`);
  return d as Descriptor;
}
