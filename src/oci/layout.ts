/**
 * Write an OCI image layout: `oci-layout`, `blobs/sha256/…` and one
 * `index.json` for every image of the run. Each image gets one index entry
 * named after it and one more per tag; a blob shared by several images is
 * stored once. Blobs are copied (reflinked where the filesystem can) from the
 * content store, to a temp name first, so a reader never sees a partial blob;
 * temp files a killed writer left are swept first.
 */
import { constants } from 'node:fs';
import { copyFile, mkdir, open, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import type { BlobInfo, ContentStore } from '../cache/content-store.js';
import type { Platform } from '../config/types.js';
import { asDiskFull, LayergraphError } from '../errors.js';
import { faultPoint } from '../util/fault-point.js';
import { tempSibling, writeFileAtomic } from '../util/fs-atomic.js';
import { sweepTempFiles } from '../util/temp-files.js';
import { ANNOTATION_REF_NAME, MEDIA_TYPE_INDEX, MEDIA_TYPE_MANIFEST } from './media-types.js';

export interface LayoutImage {
  name: string;
  tags: string[];
  manifest: BlobInfo;
  platform: Platform;
  /** Every blob the manifest needs: config, layers, the manifest itself. */
  blobs: BlobInfo[];
}

export interface LayoutOptions {
  /** Told about a blob already in the layout that is not what its name says (it is replaced). */
  onDamage?: (what: string) => void;
  /** Once aborted, no more blobs are copied and index.json is left as it was. */
  signal?: AbortSignal;
}

export async function writeLayout(outDir: string, store: ContentStore, images: LayoutImage[], opts: LayoutOptions = {}): Promise<void> {
  await mkdir(path.join(outDir, 'blobs', 'sha256'), { recursive: true });
  await sweepTempFiles(outDir);
  await sweepTempFiles(path.join(outDir, 'blobs', 'sha256'));
  const blobs = new Map(images.flatMap((img) => img.blobs.map((b) => [b.digest, b.size] as const)));
  await Promise.all([...blobs].map(([digest, size]) => copyBlob(store, digest, size, outDir, opts)));
  stopIfAborted(opts.signal);
  await writeFileAtomic(path.join(outDir, 'oci-layout'), OCI_LAYOUT);
  await writeFileAtomic(path.join(outDir, 'index.json'), indexJson(images));
}

export const OCI_LAYOUT = JSON.stringify({ imageLayoutVersion: '1.0.0' });

/** The layout's `index.json`: one entry per image named after it, and one more per tag. */
export function indexJson(images: LayoutImage[]): string {
  const manifests = images.flatMap((img) =>
    [img.name, ...img.tags].map((ref) => ({
      mediaType: MEDIA_TYPE_MANIFEST,
      digest: img.manifest.digest,
      size: img.manifest.size,
      platform: img.platform,
      annotations: { [ANNOTATION_REF_NAME]: ref },
    })),
  );
  return JSON.stringify({ schemaVersion: 2, mediaType: MEDIA_TYPE_INDEX, manifests }, null, 2) + '\n';
}

/**
 * A blob already in the layout with the right size is kept: hashing it again
 * would read every layer a second time on every warm run (the store's copy
 * was verified on reuse). A truncated or half-written one is replaced.
 */
async function copyBlob(store: ContentStore, digest: string, size: number, outDir: string, opts: LayoutOptions): Promise<void> {
  const target = path.join(outDir, 'blobs', 'sha256', digest.slice('sha256:'.length));
  const found = await stat(target).catch(() => undefined);
  if (found?.size === size) return;
  stopIfAborted(opts.signal);
  if (found) opts.onDamage?.(`output layout blob ${target} is ${found.size} bytes, not ${size}; written again`);
  await store.ensure(digest);
  const tmp = tempSibling(target);
  try {
    await copyFile(store.blobPath(digest), tmp, constants.COPYFILE_FICLONE);
    // On disk before the rename, as every other writer does: a crash must not leave a named, empty blob.
    const fh = await open(tmp, 'r+');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
    faultPoint('layout');
    await rename(tmp, target);
  } catch (err) {
    throw asDiskFull(err, target);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** Stops writing when the build was interrupted, with the build's own words for it. */
export function stopIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new LayergraphError('INTERRUPTED', 'build interrupted');
}
