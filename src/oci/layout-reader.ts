/**
 * Reading an OCI image layout someone else may have written: find an image
 * by ref name or digest, and read blobs only after checking their digest.
 */
import { sha256Digest } from '../cache/content-store.js';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { InvalidImageError, UsageError } from '../errors.js';
import { ANNOTATION_REF_NAME } from './media-types.js';

export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { os: string; architecture: string; variant?: string };
}

/**
 * The index entry named `ref` (its ref name, or its digest); with no ref, the
 * layout's only image. `where` names the layout in messages.
 */
export async function findImage(layout: string, ref: string | undefined, where: string): Promise<Descriptor> {
  let index: { manifests?: Descriptor[] };
  try {
    index = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as typeof index;
  } catch (err) {
    throw new UsageError(`${where} is not an OCI image layout (cannot read index.json: ${(err as Error).message})`);
  }
  const manifests = index.manifests ?? [];
  const refs = manifests.map((m) => m.annotations?.[ANNOTATION_REF_NAME]).filter(Boolean).join(', ') || 'none';
  if (ref === undefined) {
    if (new Set(manifests.map((m) => m.digest)).size === 1) return manifests[0]!;
    throw new UsageError(`${where} holds several images; name one after a ":" (refs: ${refs})`);
  }
  const found = manifests.find((m) => m.annotations?.[ANNOTATION_REF_NAME] === ref || m.digest === ref);
  if (!found) throw new UsageError(`${where} has no image \`${ref}\` (refs: ${refs})`);
  return found;
}

/** A blob's bytes, once they hash to its digest. */
export async function readBlob(layout: string, digest: string): Promise<Buffer> {
  const bytes = await readFile(blobPath(layout, digest)).catch((err: Error) => {
    throw new InvalidImageError(`blob ${digest} is missing: ${err.message}`);
  });
  const got = sha256Digest(bytes);
  if (got !== digest) throw damagedBlob(digest, got);
  return bytes;
}

export function damagedBlob(digest: string, got: string): InvalidImageError {
  return new InvalidImageError(`blob ${digest} has digest ${got}: the image is damaged`);
}

export function blobPath(layout: string, digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m) throw new InvalidImageError(`not a sha256 digest: ${digest}`);
  return path.join(layout, 'blobs', 'sha256', m[1]!);
}
