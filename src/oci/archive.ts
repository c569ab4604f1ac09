/**
 * Single-file outputs: `oci-archive:` (an OCI image layout in a tar, as
 * skopeo and podman read it) and `docker-archive:` (what `docker save`
 * writes and `docker load` reads: `manifest.json`, each config as
 * `<hex>.json`, each layer uncompressed as `<diffID hex>/layer.tar`; several
 * images and tags in one file, a layer shared by several stored once).
 *
 * Entries are in a fixed order with fixed times and owners, so the same
 * images give the same archive. The file is written under a temp name and
 * renamed into place: a reader never sees half an archive.
 */
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import tar from 'tar-stream';
import type { ContentStore } from '../cache/content-store.js';
import { asDiskFull } from '../errors.js';
import { tempSibling } from '../util/fs-atomic.js';
import { sweepTempFiles } from '../util/temp-files.js';
import { indexJson, OCI_LAYOUT, type LayoutImage } from './layout.js';
import { uncompressed } from './layer-apply.js';

export type ArchiveKind = 'oci-archive' | 'docker-archive';

export async function writeArchive(kind: ArchiveKind, file: string, store: ContentStore, images: LayoutImage[], mtime: number): Promise<void> {
  await mkdir(path.dirname(file), { recursive: true });
  // What a killed writer of this archive left beside it (only that: the directory is the user's).
  await sweepTempFiles(path.dirname(file), path.basename(file));
  const tmp = tempSibling(file);
  const pack = tar.pack();
  const out = pipeline(pack as unknown as NodeJS.ReadableStream, createWriteStream(tmp));
  out.catch(() => undefined);
  try {
    const entries = new Entries(pack, new Date(mtime * 1000));
    if (kind === 'oci-archive') await ociEntries(entries, store, images);
    else await dockerEntries(entries, store, images, path.dirname(file));
    pack.finalize();
    await out;
    await rename(tmp, file);
  } catch (err) {
    pack.destroy(err as Error);
    await out.catch(() => undefined);
    throw asDiskFull(err, file);
  } finally {
    await rm(tmp, { force: true });
  }
}

/** The OCI layout `writeLayout` writes, as a tar. */
async function ociEntries(entries: Entries, store: ContentStore, images: LayoutImage[]): Promise<void> {
  await entries.bytes('oci-layout', OCI_LAYOUT);
  await entries.bytes('index.json', indexJson(images));
  await entries.dir('blobs/');
  await entries.dir('blobs/sha256/');
  const blobs = new Map(images.flatMap((img) => img.blobs.map((b) => [b.digest, b.size] as const)));
  for (const [digest, size] of [...blobs].sort(([a], [b]) => (a < b ? -1 : 1))) {
    await entries.file(`blobs/sha256/${hex(digest)}`, size, store.read(digest));
  }
}

/** `docker save`'s format. Layers go in uncompressed, as their diffIDs say. */
async function dockerEntries(entries: Entries, store: ContentStore, images: LayoutImage[], scratchDir: string): Promise<void> {
  const described = await Promise.all(images.map((img) => describe(store, img)));
  const manifest = described.map((d) => ({
    Config: `${hex(d.config)}.json`,
    RepoTags: d.repoTags,
    Layers: d.layers.map((l) => `${hex(l.diffId)}/layer.tar`),
  }));
  await entries.bytes('manifest.json', JSON.stringify(manifest));
  const written = new Set<string>();
  for (const d of described) {
    if (!written.has(d.config)) {
      written.add(d.config);
      const config = await store.bytes(d.config);
      await entries.file(`${hex(d.config)}.json`, config.length, Readable.from([config]));
    }
    for (const layer of d.layers) {
      if (written.has(layer.diffId)) continue;
      written.add(layer.diffId);
      await entries.dir(`${hex(layer.diffId)}/`);
      await entries.uncompressedLayer(`${hex(layer.diffId)}/layer.tar`, store, layer.digest, scratchDir);
    }
  }
}

interface Described {
  config: string;
  repoTags: string[];
  layers: Array<{ digest: string; diffId: string }>;
}

/** What the docker format needs of an image: its config digest, its layers with their diffIDs, and `repo:tag` names. */
async function describe(store: ContentStore, img: LayoutImage): Promise<Described> {
  const manifest = JSON.parse((await store.bytes(img.manifest.digest)).toString('utf8')) as { config: { digest: string }; layers: Array<{ digest: string }> };
  const config = JSON.parse((await store.bytes(manifest.config.digest)).toString('utf8')) as { rootfs: { diff_ids: string[] } };
  return {
    config: manifest.config.digest,
    repoTags: [img.name, ...img.tags].map(withTag),
    layers: manifest.layers.map((l, i) => ({ digest: l.digest, diffId: config.rootfs.diff_ids[i]! })),
  };
}

/** Docker names an image `repo:tag`; a name without a tag means `:latest`. */
function withTag(ref: string): string {
  return ref.lastIndexOf(':') > ref.lastIndexOf('/') ? ref : `${ref}:latest`;
}

/** Writes tar entries one after the other, all with the same time and a root owner. */
class Entries {
  constructor(
    private readonly pack: tar.Pack,
    private readonly mtime: Date,
  ) {}

  bytes(name: string, text: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pack.entry(this.header(name, 'file', Buffer.byteLength(text)), text, (err) => (err ? reject(err) : resolve()));
    });
  }

  dir(name: string): Promise<void> {
    return new Promise((resolve, reject) => {
      this.pack.entry(this.header(name, 'directory', 0), (err) => (err ? reject(err) : resolve()));
    });
  }

  async file(name: string, size: number, body: NodeJS.ReadableStream): Promise<void> {
    const sink = this.pack.entry(this.header(name, 'file', size));
    await pipeline(body, sink as unknown as NodeJS.WritableStream);
  }

  /** A layer decompressed into a scratch file first: a tar entry needs its size before its body. */
  async uncompressedLayer(name: string, store: ContentStore, digest: string, scratchDir: string): Promise<void> {
    const scratch = tempSibling(path.join(scratchDir, `.layer-${hex(digest).slice(0, 12)}`));
    try {
      await pipeline(await uncompressed(store.read(digest)), createWriteStream(scratch));
      await this.file(name, (await stat(scratch)).size, createReadStream(scratch));
    } finally {
      await rm(scratch, { force: true });
    }
  }

  private header(name: string, type: 'file' | 'directory', size: number): tar.Header {
    return { name, type, size, mode: type === 'directory' ? 0o755 : 0o644, uid: 0, gid: 0, uname: '', gname: '', mtime: this.mtime, linkname: '', devmajor: 0, devminor: 0 };
  }
}

function hex(digest: string): string {
  return digest.slice('sha256:'.length);
}
