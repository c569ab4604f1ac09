/**
 * `layergraph unpack <layout>:<ref> <dir>`: apply an image's layers, from an
 * OCI image layout, into a root filesystem — what a runtime's snapshotter
 * does, with the same safety rules as every other unpack (nothing lands
 * outside `dir`). Every blob is checked: the manifest and config against
 * their digests, each layer against its digest and its config diff_id.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir } from 'node:fs/promises';
import path from 'node:path';
import { Transform } from 'node:stream';
import { sha256File } from '../cache/content-store.js';
import { InvalidImageError, LayergraphError, UsageError } from '../errors.js';
import { applyLayer } from './layer-apply.js';
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
  if (diffIds.length !== manifest.layers.length) {
    throw new InvalidImageError(`${manifestDesc.digest}: ${manifest.layers.length} layers but ${diffIds.length} diff_ids in its config`);
  }
  if ((await readdir(dest).catch(() => [])).length > 0) throw new UsageError(`${dest} is not empty; unpack into a new or empty directory`);
  await mkdir(dest, { recursive: true });
  for (const [i, layer] of manifest.layers.entries()) {
    if (!LAYER_TYPES.has(layer.mediaType)) throw new UsageError(`layer ${layer.digest} has media type ${layer.mediaType}, which layergraph cannot unpack`);
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
      ({ diffId } = await applyLayer(createReadStream(blobPath(layout, layer.digest)).pipe(hashing), dest, { xattrs: process.getuid?.() === 0 }));
    } catch (err) {
      if (err instanceof LayergraphError) throw err;
      // A tar that does not parse is most often a damaged blob: say which, if so.
      const whole = await sha256File(blobPath(layout, layer.digest));
      if (whole !== layer.digest) throw damagedBlob(layer.digest, whole);
      throw new InvalidImageError(`layer ${layer.digest} is not a valid layer: ${(err as Error).message}`, { cause: err });
    }
    const got = `sha256:${digest.digest('hex')}`;
    if (got !== layer.digest) throw damagedBlob(layer.digest, got);
    if (diffId !== diffIds[i]) throw new InvalidImageError(`layer ${layer.digest} unpacked to diffID ${diffId}, but its config says ${diffIds[i]}`);
  }
  return { manifestDigest: manifestDesc.digest, layers: manifest.layers.length };
}

/** `<layout>:<ref>`, split at the first `:` (refs such as `registry/app:1.0` hold more). */
export function parseLayoutRef(arg: string): { layout: string; ref: string | undefined } {
  const i = arg.indexOf(':');
  return i === -1 ? { layout: arg, ref: undefined } : { layout: arg.slice(0, i), ref: arg.slice(i + 1) };
}
