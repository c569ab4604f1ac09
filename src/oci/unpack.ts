/**
 * `layergraph unpack <layout>:<ref> <dir>`: apply an image's layers, from an
 * OCI image layout, into a root filesystem — what a runtime's snapshotter
 * does, with the same safety rules as every other unpack (nothing lands
 * outside `dir`). Every blob is checked: the manifest and config against
 * their digests, each layer against its digest and its config diff_id, and
 * the entries and sizes of each against the rules for untrusted layers
 * (layer-headers.ts, layer-stream.ts). On any error `dir` is emptied again.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import path from 'node:path';
import { Transform } from 'node:stream';
import { sha256File } from '../cache/content-store.js';
import { InvalidImageError, UsageError } from '../errors.js';
import { applyLayer } from './layer-apply.js';
import { describeLayer } from './layer-headers.js';
import { layerLimits } from './layer-stream.js';
import { blobPath, damagedBlob, findImage, readBlob, type Descriptor } from './layout-reader.js';

const LAYER_TYPES = new Set([
  'application/vnd.oci.image.layer.v1.tar',
  'application/vnd.oci.image.layer.v1.tar+gzip',
  'application/vnd.docker.image.rootfs.diff.tar.gzip',
]);

export interface UnpackResult {
  manifestDigest: string;
  layers: number;
}

export async function unpackImage(layout: string, ref: string | undefined, dest: string): Promise<UnpackResult> {
  const manifestDesc = await findImage(layout, ref, layout);
  const manifest = JSON.parse((await readBlob(layout, manifestDesc.digest)).toString('utf8')) as { config: Descriptor; layers: Descriptor[] };
  const config = JSON.parse((await readBlob(layout, manifest.config.digest)).toString('utf8')) as { rootfs?: { diff_ids?: string[] } };
  const diffIds = config.rootfs?.diff_ids ?? [];
  const image = ref === undefined ? layout : `${layout}:${ref}`;
  if (diffIds.length !== manifest.layers.length) {
    throw new InvalidImageError(`${image} (${manifestDesc.digest}): ${manifest.layers.length} layers but ${diffIds.length} diff_ids in its config`);
  }
  if ((await readdir(dest).catch(() => [])).length > 0) throw new UsageError(`${dest} is not empty; unpack into a new or empty directory`);
  await mkdir(dest, { recursive: true });
  const limits = layerLimits();
  try {
    for (const [i, layer] of manifest.layers.entries()) {
      if (!LAYER_TYPES.has(layer.mediaType)) throw new UsageError(`layer ${layer.digest} has media type ${layer.mediaType}, which layergraph cannot unpack`);
      const name = describeLayer({ digest: layer.digest, image });
      const digest = createHash('sha256');
      const hashing = new Transform({
        transform(chunk: Buffer, _enc, cb) {
          digest.update(chunk);
          cb(null, chunk);
        },
      });
      let diffId: string;
      try {
        // Extended attributes (file capabilities…) only where we may set them.
        const blob = createReadStream(blobPath(layout, layer.digest)).pipe(hashing);
        ({ diffId } = await applyLayer(blob, dest, { xattrs: process.getuid?.() === 0, layer: { digest: layer.digest, image }, limits }));
      } catch (err) {
        // A blob that is not what its digest says is the first thing to tell.
        const whole = await sha256File(blobPath(layout, layer.digest)).catch(() => undefined);
        if (whole !== undefined && whole !== layer.digest) throw damagedBlob(layer.digest, whole);
        throw err;
      }
      const got = `sha256:${digest.digest('hex')}`;
      if (got !== layer.digest) throw damagedBlob(layer.digest, got);
      if (diffId !== diffIds[i]) throw new InvalidImageError(`${name}: unpacked to diffID ${diffId}, but its config says ${diffIds[i]}`);
    }
  } catch (err) {
    // Half an image is no image: leave `dest` as empty as it was found.
    for (const child of await readdir(dest).catch(() => [])) await rm(path.join(dest, child), { recursive: true, force: true }).catch(() => undefined);
    throw err;
  }
  return { manifestDigest: manifestDesc.digest, layers: manifest.layers.length };
}

/** `<layout>:<ref>`, split at the first `:` (refs such as `registry/app:1.0` hold more). */
export function parseLayoutRef(arg: string): { layout: string; ref: string | undefined } {
  const i = arg.indexOf(':');
  return i === -1 ? { layout: arg, ref: undefined } : { layout: arg.slice(0, i), ref: arg.slice(i + 1) };
}
