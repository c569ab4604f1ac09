/**
 * Small OCI image layouts written by hand, for tests that hand an image to
 * an independent tool (skopeo) first: one gzip layer per image holding one
 * file, a config, a manifest, and an index naming it. With several
 * platforms the index under the ref name is an image index of one image per
 * platform.
 */
import { createHash } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import tar from 'tar-stream';
import type { Platform } from '../../src/config/types.js';

export interface FixtureImage {
  manifestDigest: string;
  configDigest: string;
  layerDigests: string[];
  platform: Platform;
}

export interface FixtureLayout {
  /** The digest the ref name points at (a manifest, or an index with several platforms). */
  topDigest: string;
  images: FixtureImage[];
}

/** Writes an OCI layout at `dir` with `ref` naming one image per platform (an index when several). */
export async function writeFixtureLayout(dir: string, ref: string, platforms: Platform[], content = 'hello'): Promise<FixtureLayout> {
  await mkdir(path.join(dir, 'blobs', 'sha256'), { recursive: true });
  await writeFile(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  const put = async (bytes: Buffer) => {
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    await writeFile(path.join(dir, 'blobs', 'sha256', digest.slice(7)), bytes);
    return { digest, size: bytes.length };
  };
  const images: FixtureImage[] = [];
  const entries: object[] = [];
  for (const platform of platforms) {
    const name = `${platform.os}-${platform.architecture}${platform.variant ?? ''}`;
    const tarBytes = await tarOf({ [`etc/${name}.txt`]: `${content} ${name}\n`, 'shared.txt': `${content}\n` });
    const layer = await put(gzipSync(tarBytes, { level: 9 }));
    const diffId = `sha256:${createHash('sha256').update(tarBytes).digest('hex')}`;
    const config = await put(
      Buffer.from(
        JSON.stringify({
          architecture: platform.architecture,
          os: platform.os,
          ...(platform.variant && { variant: platform.variant }),
          config: { Env: ['PATH=/bin'] },
          rootfs: { type: 'layers', diff_ids: [diffId] },
        }),
      ),
    );
    const manifest = await put(
      Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: 'application/vnd.oci.image.manifest.v1+json',
          config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
          layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...layer }],
        }),
      ),
    );
    images.push({ manifestDigest: manifest.digest, configDigest: config.digest, layerDigests: [layer.digest], platform });
    entries.push({ mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, platform });
  }
  let top: { mediaType: string; digest: string; size: number };
  if (entries.length === 1) top = { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...(entries[0] as { digest: string; size: number }) };
  else {
    const index = await put(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.index.v1+json', manifests: entries })));
    top = { mediaType: 'application/vnd.oci.image.index.v1+json', ...index };
  }
  await writeFile(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [{ mediaType: top.mediaType, digest: top.digest, size: top.size, annotations: { 'org.opencontainers.image.ref.name': ref } }],
    }),
  );
  return { topDigest: top.digest, images };
}

async function tarOf(files: Record<string, string>): Promise<Buffer> {
  const pack = tar.pack();
  const chunks: Buffer[] = [];
  pack.on('data', (c: unknown) => chunks.push(c as Buffer));
  const done = new Promise<void>((resolve, reject) => {
    pack.on('end', () => resolve());
    pack.on('error', reject);
  });
  for (const [name, body] of Object.entries(files).sort()) {
    pack.entry({ name, mode: 0o644, mtime: new Date(0), uid: 0, gid: 0 }, body);
  }
  pack.finalize();
  await done;
  return Buffer.concat(chunks);
}
