/**
 * The registry client against a real registry (docker-registry, no auth),
 * with skopeo as the independent client: what skopeo pushes we pull, what
 * we push skopeo reads back with the same digests.
 */
import { createHash } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContentStore, sha256File } from '../src/cache/content-store.js';
import { RegistryError } from '../src/errors.js';
import { RegistryClient } from '../src/registry/client.js';
import { hasTool, tool } from './helpers/tools.js';
import { writeFixtureLayout, type FixtureLayout } from './helpers/oci-fixture.js';
import { blobDataPath, freePort, startRegistry, type TestRegistry } from './helpers/registry.js';
import { useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();
const ready = hasTool('docker-registry') && hasTool('skopeo');
const AMD64 = { os: 'linux', architecture: 'amd64' };
const ARM64 = { os: 'linux', architecture: 'arm64', variant: 'v8' };
const FAST_RETRY = { baseDelayMs: 5, maxDelayMs: 50 };

let dir: string;
let registry: TestRegistry;
let single: FixtureLayout;
let multi: FixtureLayout;

async function skopeoPush(layout: string, ref: string, dest: string, all = false): Promise<void> {
  await tool('skopeo', ['--insecure-policy', 'copy', ...(all ? ['--all'] : []), '--dest-tls-verify=false', `oci:${layout}:${ref}`, `docker://${dest}`]);
}

function newClient(): RegistryClient {
  // An empty config file: no credentials from the machine running the tests.
  return new RegistryClient({ registryConfig: path.join(dir, 'docker-config.json'), retry: FAST_RETRY });
}

describe.skipIf(!ready)('registry client against docker-registry (no auth)', () => {
  beforeAll(async () => {
    dir = await mkdtemp(path.join(os.tmpdir(), 'lg-registry-'));
    await writeFile(path.join(dir, 'docker-config.json'), '{}');
    registry = await startRegistry(path.join(dir, 'registry'), { kind: 'none' });
    single = await writeFixtureLayout(path.join(dir, 'single'), 'v1', [AMD64]);
    multi = await writeFixtureLayout(path.join(dir, 'multi'), 'v1', [AMD64, ARM64], 'multi');
    await skopeoPush(path.join(dir, 'single'), 'v1', `${registry.host}/fixtures/single:v1`);
    await skopeoPush(path.join(dir, 'multi'), 'v1', `${registry.host}/fixtures/multi:v1`, true);
  });

  afterAll(async () => {
    await registry?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('pulls what skopeo pushed: digests checked, blobs in the store, a second pull downloads nothing', async () => {
    const client = newClient();
    const store = new ContentStore(await tmpDir());
    const image = await client.resolve(`${registry.host}/fixtures/single:v1`, AMD64);
    const pushed = single.images[0]!;
    // skopeo may rewrite the manifest (it keeps OCI here); the config and layers are the same blobs either way.
    expect(image.config.digest).toBe(pushed.configDigest);
    expect(image.layers.map((l) => l.digest)).toEqual(pushed.layerDigests);
    expect(image.digest).toBe(`sha256:${createHash('sha256').update(image.bytes).digest('hex')}`);
    expect(image.mediaType).toBe('application/vnd.oci.image.manifest.v1+json');

    for (const desc of [image.config, ...image.layers]) {
      const got = await client.pullBlob(image.reference, desc, store);
      expect(got).toEqual({ digest: desc.digest, size: desc.size, downloaded: true });
      expect(await sha256File(store.blobPath(desc.digest))).toBe(desc.digest);
      expect(await readFile(store.blobPath(desc.digest))).toEqual(
        await readFile(path.join(dir, 'single', 'blobs', 'sha256', desc.digest.slice(7))),
      );
    }
    const blobBytes = image.config.size + image.layers.reduce((n, l) => n + l.size, 0);
    expect(client.transferred.pulled).toBe(blobBytes + image.bytes.length);

    const before = client.transferred.pulled;
    for (const desc of [image.config, ...image.layers]) {
      expect((await client.pullBlob(image.reference, desc, store)).downloaded).toBe(false);
    }
    // A new client (a new run) on the same store downloads nothing either.
    const again = newClient();
    for (const desc of [image.config, ...image.layers]) await again.pullBlob(image.reference, desc, store);
    expect(client.transferred.pulled - before).toBe(0);
    expect(again.transferred.pulled).toBe(0);
  });

  it('resolves an index of two platforms to the one asked for, and names the platforms it has when there is no match', async () => {
    const client = newClient();
    const ref = `${registry.host}/fixtures/multi:v1`;
    const arm = await client.resolve(ref, { os: 'linux', architecture: 'arm64' });
    const amd = await client.resolve(ref, AMD64);
    expect(arm.digest).toBe(multi.images[1]!.manifestDigest);
    expect(arm.layers.map((l) => l.digest)).toEqual(multi.images[1]!.layerDigests);
    expect(amd.digest).toBe(multi.images[0]!.manifestDigest);
    expect(amd.index?.digest).toBe(multi.topDigest);
    expect(amd.index?.mediaType).toBe('application/vnd.oci.image.index.v1+json');

    const err = await client.resolve(ref, { os: 'linux', architecture: 's390x' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(RegistryError);
    expect((err as RegistryError).code).toBe('REGISTRY_NOT_FOUND');
    expect((err as Error).message).toBe(
      `${registry.host}/fixtures/multi: manifest v1: has no image for linux/s390x (it has linux/amd64, linux/arm64/v8); set the image's platform to one of those`,
    );
  });

  it('accepts Docker v2 schema 2 manifests and manifest lists', async () => {
    const dest = `${registry.host}/fixtures/docker-format:v1`;
    await tool('skopeo', ['--insecure-policy', 'copy', '--all', '--format', 'v2s2', '--dest-tls-verify=false', `oci:${path.join(dir, 'multi')}:v1`, `docker://${dest}`]);
    const client = newClient();
    const image = await client.resolve(dest, ARM64);
    expect(image.mediaType).toBe('application/vnd.docker.distribution.manifest.v2+json');
    expect(image.index?.mediaType).toBe('application/vnd.docker.distribution.manifest.list.v2+json');
    expect(image.layers.map((l) => l.digest)).toEqual(multi.images[1]!.layerDigests);
    const store = new ContentStore(await tmpDir());
    await client.pullBlob(dest, image.layers[0]!, store);
    expect(await store.verify(image.layers[0]!.digest)).toBe(true);
  });

  it('pushes an image that skopeo then reads with the same digests', async () => {
    const client = newClient();
    const store = new ContentStore(await tmpDir());
    const image = await client.resolve(`${registry.host}/fixtures/single:v1`, AMD64);
    for (const d of [image.config, ...image.layers]) await client.pullBlob(image.reference, d, store);

    const pusher = newClient();
    const target = `${registry.host}/pushed/app`;
    for (const d of [image.config, ...image.layers]) {
      expect(await pusher.pushBlob(target, d.digest, d.size, store)).toBe('uploaded');
    }
    const digest = await pusher.putManifest(target, 'v2', image.bytes, image.mediaType);
    expect(digest).toBe(image.digest);
    const blobBytes = image.config.size + image.layers.reduce((n, l) => n + l.size, 0);
    expect(pusher.transferred.pushed).toBe(blobBytes + image.bytes.length);

    const inspected = JSON.parse(await tool('skopeo', ['inspect', '--tls-verify=false', `docker://${target}:v2`])) as { Digest: string; Layers: string[] };
    expect(inspected.Digest).toBe(image.digest);
    expect(inspected.Layers).toEqual(image.layers.map((l) => l.digest));
    const raw = await tool('skopeo', ['inspect', '--raw', '--tls-verify=false', `docker://${target}:v2`]);
    expect(Buffer.from(raw)).toEqual(image.bytes);

    // Pushing again: the registry has every blob (HEAD), nothing is uploaded.
    const again = newClient();
    for (const d of [image.config, ...image.layers]) expect(await again.pushBlob(target, d.digest, d.size, store)).toBe('present');
    expect(again.transferred.pushed).toBe(0);
  });

  it('mounts a blob from another repository instead of uploading it', async () => {
    const client = newClient();
    const store = new ContentStore(await tmpDir());
    const image = await client.resolve(`${registry.host}/fixtures/single:v1`, AMD64);
    const layer = image.layers[0]!;
    await client.pullBlob(image.reference, layer, store);

    const pusher = newClient();
    expect(await pusher.hasBlob(`${registry.host}/mounted/one`, layer.digest)).toBe(false);
    expect(await pusher.pushBlob(`${registry.host}/mounted/one`, layer.digest, layer.size, store, { mountFrom: 'fixtures/single' })).toBe('mounted');
    expect(pusher.transferred.pushed).toBe(0);
    expect(await pusher.hasBlob(`${registry.host}/mounted/one`, layer.digest)).toBe(true);

    // The public mountBlob says whether the registry mounted; from a repository without the blob it does not.
    expect(await pusher.mountBlob(`${registry.host}/mounted/two`, layer.digest, 'fixtures/single')).toBe(true);
    expect(await pusher.mountBlob(`${registry.host}/mounted/three`, layer.digest, 'no/such-repo')).toBe(false);
    // and pushBlob falls back to uploading through the session the refused mount opened.
    expect(await pusher.pushBlob(`${registry.host}/mounted/three`, layer.digest, layer.size, store, { mountFrom: 'no/such-repo' })).toBe('uploaded');
    expect(pusher.transferred.pushed).toBe(layer.size);
  });

  it('pushes a blob shared by two images once', async () => {
    const client = newClient();
    const store = new ContentStore(await tmpDir());
    const { digest, size } = await store.put(Buffer.from('shared layer bytes'));
    const target = `${registry.host}/shared/app`;
    const outcomes = await Promise.all([client.pushBlob(target, digest, size, store), client.pushBlob(target, digest, size, store)]);
    expect(outcomes).toEqual(['uploaded', 'uploaded']);
    expect(client.transferred.pushed).toBe(size);
  });

  it('fails naming the blob when the registry serves bytes that do not match their digest, and keeps nothing', async () => {
    const store = new ContentStore(await tmpDir());
    // A repository of its own, so the damage does not leak into the other tests.
    await skopeoPush(path.join(dir, 'single'), 'v1', `${registry.host}/tamper/app:v1`);
    const client = newClient();
    const image = await client.resolve(`${registry.host}/tamper/app:v1`, AMD64);
    const layer = image.layers[0]!;
    const data = blobDataPath(registry.storage, layer.digest);
    const original = await readFile(data);
    const damaged = Buffer.from(original);
    damaged[damaged.length - 1] = damaged[damaged.length - 1]! ^ 0xff;
    await writeFile(data, damaged);
    try {
      const err = await client.pullBlob(image.reference, layer, store).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(RegistryError);
      expect((err as RegistryError).code).toBe('BLOB_DIGEST_MISMATCH');
      expect((err as Error).message).toContain(`${registry.host}/tamper/app: blob ${layer.digest}: arrived with different content`);
      expect((err as Error).message).toContain('Not retried');
      expect(await store.has(layer.digest)).toBe(false);
      // Downloaded exactly once: a mismatch is not retried.
      expect(client.transferred.pulled).toBe(image.bytes.length + layer.size);
    } finally {
      await writeFile(data, original);
    }
  });

  it('says which manifest is missing', async () => {
    const err = await newClient().resolve(`${registry.host}/fixtures/single:nope`, AMD64).catch((e: unknown) => e);
    expect((err as RegistryError).code).toBe('REGISTRY_NOT_FOUND');
    expect((err as Error).message).toBe(
      `${registry.host}/fixtures/single: manifest nope: not found (MANIFEST_UNKNOWN: manifest unknown): check the repository name, the tag and that it was pushed`,
    );
  });

  it('retries 503s and a connection broken mid-download, and gives up with a clear error when the registry stays down', async () => {
    const proxy = await startFlakyProxy(registry.host);
    try {
      const client = new RegistryClient({ registryConfig: path.join(dir, 'docker-config.json'), retry: FAST_RETRY });
      const store = new ContentStore(await tmpDir());
      proxy.fail503 = 2;
      const image = await client.resolve(`${proxy.host}/fixtures/single:v1`, AMD64);
      expect(proxy.served503).toBe(2);
      expect(image.config.digest).toBe(single.images[0]!.configDigest);

      proxy.breakNextBlob = true;
      const layer = image.layers[0]!;
      expect((await client.pullBlob(image.reference, layer, store)).downloaded).toBe(true);
      expect(proxy.broken).toBe(1);
      expect(await store.verify(layer.digest)).toBe(true);

      proxy.fail503 = 100;
      const err = await client.getManifest(`${proxy.host}/fixtures/single:v1`).catch((e: unknown) => e);
      expect((err as RegistryError).code).toBe('REGISTRY_FAILED');
      expect((err as Error).message).toBe(
        `${proxy.host}/fixtures/single: manifest v1: GET http://${proxy.host}/v2/fixtures/single/manifests/v1 answered 503 Service Unavailable (try later), still after 4 tries; the registry is overloaded or down, try again later`,
      );
    } finally {
      await proxy.stop();
    }
  });
});

interface FlakyProxy {
  host: string;
  /** Answer this many of the next requests with 503. */
  fail503: number;
  served503: number;
  /** Cut the next blob download off halfway. */
  breakNextBlob: boolean;
  broken: number;
  stop(): Promise<void>;
}

/** A proxy in front of the registry that answers 503 or breaks a connection when told to. */
async function startFlakyProxy(upstream: string): Promise<FlakyProxy> {
  const port = await freePort();
  const state: FlakyProxy = { host: `127.0.0.1:${port}`, fail503: 0, served503: 0, breakNextBlob: false, broken: 0, stop: async () => {} };
  const server = http.createServer((req, res) => {
    if (state.fail503 > 0) {
      state.fail503--;
      state.served503++;
      // One with Retry-After (honoured: 0 s), one without (backoff).
      res.writeHead(503, state.served503 % 2 ? { 'retry-after': '0' } : {}).end('try later');
      return;
    }
    const upstreamReq = http.request(
      { host: '127.0.0.1', port: Number(upstream.split(':')[1]), method: req.method, path: req.url, headers: { ...req.headers, host: upstream } },
      (up) => {
        if (state.breakNextBlob && req.method === 'GET' && /\/blobs\/sha256:/.test(req.url ?? '')) {
          state.breakNextBlob = false;
          state.broken++;
          res.writeHead(up.statusCode ?? 502, up.headers);
          up.once('data', (chunk: Buffer) => {
            res.write(chunk.subarray(0, Math.max(1, chunk.length >> 1)));
            setTimeout(() => res.socket?.destroy(), 20);
          });
          return;
        }
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    req.pipe(upstreamReq);
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  state.stop = async () => {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return state;
}

describe('a registry that is not there', () => {
  it('fails at once (a refused connection is not retried) and asks whether it is running', async () => {
    const port = await freePort();
    const config = path.join(await tmpDir(), 'config.json');
    await writeFile(config, '{}');
    const err = await new RegistryClient({ registryConfig: config }).getManifest(`127.0.0.1:${port}/app:v1`).catch((e: unknown) => e);
    expect((err as RegistryError).code).toBe('REGISTRY_FAILED');
    expect((err as Error).message).toBe(
      `127.0.0.1:${port}/app: manifest v1: GET http://127.0.0.1:${port}/v2/app/manifests/v1 failed: connect ECONNREFUSED 127.0.0.1:${port}; is the registry running, and is the host and port right?`,
    );
  });
});
