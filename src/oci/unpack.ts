/**
 * `layergraph unpack <layout>:<ref> <dir>`: apply an image's layers, from an
 * OCI image layout, into a root filesystem — what a runtime's snapshotter
 * does, with the same safety rules as every other unpack (nothing lands
 * outside `dir`). Every blob is checked: the manifest and config against
 * their digests, each layer against its digest and its config diff_id.
 */
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { Transform } from 'node:stream';
import { sha256File } from '../cache/content-store.js';
import { InvalidImageError, LayergraphError, UsageError } from '../errors.js';
import { applyLayer } from './layer-apply.js';
import { ANNOTATION_REF_NAME } from './media-types.js';

interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
}

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
  const manifestDesc = await findManifest(layout, ref);
  const manifest = JSON.parse(await readVerified(layout, manifestDesc)) as { config: Descriptor; layers: Descriptor[] };
  const config = JSON.parse(await readVerified(layout, manifest.config)) as { rootfs?: { diff_ids?: string[] } };
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
      ({ diffId } = await applyLayer(createReadStream(blobPath(layout, layer.digest)).pipe(hashing), dest));
    } catch (err) {
      if (err instanceof LayergraphError) throw err;
      // A tar that does not parse is most often a damaged blob: say which, if so.
      const whole = await sha256File(blobPath(layout, layer.digest));
      if (whole !== layer.digest) throw damaged(layer.digest, whole);
      throw new InvalidImageError(`layer ${layer.digest} is not a valid layer: ${(err as Error).message}`, { cause: err });
    }
    const got = `sha256:${digest.digest('hex')}`;
    if (got !== layer.digest) throw damaged(layer.digest, got);
    if (diffId !== diffIds[i]) throw new InvalidImageError(`layer ${layer.digest} unpacked to diffID ${diffId}, but its config says ${diffIds[i]}`);
  }
  return { manifestDigest: manifestDesc.digest, layers: manifest.layers.length };
}

/** `<layout>:<ref>`, split at the first `:` (refs such as `registry/app:1.0` hold more). */
export function parseLayoutRef(arg: string): { layout: string; ref: string | undefined } {
  const i = arg.indexOf(':');
  return i === -1 ? { layout: arg, ref: undefined } : { layout: arg.slice(0, i), ref: arg.slice(i + 1) };
}

async function findManifest(layout: string, ref: string | undefined): Promise<Descriptor> {
  let index: { manifests?: Descriptor[] };
  try {
    index = JSON.parse(await readFile(path.join(layout, 'index.json'), 'utf8')) as typeof index;
  } catch (err) {
    throw new UsageError(`${layout} is not an OCI image layout (no readable index.json): ${(err as Error).message}`);
  }
  const manifests = index.manifests ?? [];
  const names = manifests.map((m) => m.annotations?.[ANNOTATION_REF_NAME]).filter((n): n is string => !!n);
  if (ref === undefined) {
    const digests = new Set(manifests.map((m) => m.digest));
    if (digests.size === 1) return manifests[0]!;
    throw new UsageError(`${layout} holds several images; name one as ${layout}:<ref> (refs: ${names.join(', ')})`);
  }
  const found = manifests.find((m) => m.annotations?.[ANNOTATION_REF_NAME] === ref || m.digest === ref);
  if (!found) throw new UsageError(`${layout} has no image \`${ref}\` (refs: ${names.join(', ') || 'none'})`);
  return found;
}

async function readVerified(layout: string, desc: Descriptor): Promise<string> {
  const bytes = await readFile(blobPath(layout, desc.digest));
  const got = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
  if (got !== desc.digest) throw damaged(desc.digest, got);
  return bytes.toString('utf8');
}

function damaged(digest: string, got: string): InvalidImageError {
  return new InvalidImageError(`blob ${digest} has digest ${got}: the layout is damaged`);
}

function blobPath(layout: string, digest: string): string {
  const m = /^sha256:([0-9a-f]{64})$/.exec(digest);
  if (!m) throw new InvalidImageError(`not a sha256 digest: ${digest}`);
  return path.join(layout, 'blobs', 'sha256', m[1]!);
}
