/**
 * Registry auth against real registries: docker-registry with htpasswd basic
 * auth, and with token auth against a token server the test runs. skopeo
 * pushes the fixture with the right credentials first; then our client pulls
 * and pushes with credentials from a Docker config file (or a credential
 * helper), and fails clearly without them or with a wrong password.
 */
import { chmod, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ContentStore } from '../src/cache/content-store.js';
import { RegistryError } from '../src/errors.js';
import { RegistryClient } from '../src/registry/client.js';
import { writeFixtureLayout, type FixtureLayout } from './helpers/oci-fixture.js';
import { startRegistry, type TestRegistry } from './helpers/registry.js';
import { useTmpDirs } from './helpers/tmp.js';
import { hasTool, tool } from './helpers/tools.js';

const tmpDir = useTmpDirs();
const ready = hasTool('docker-registry') && hasTool('skopeo') && hasTool('htpasswd') && hasTool('openssl');
const AMD64 = { os: 'linux', architecture: 'amd64' };
const USER = 'tester';
const PASSWORD = 'right-password';

let dir: string;
let fixture: FixtureLayout;

beforeAll(async () => {
  if (!ready) return;
  dir = await mkdtemp(path.join(os.tmpdir(), 'lg-registry-auth-'));
  fixture = await writeFixtureLayout(path.join(dir, 'layout'), 'v1', [AMD64]);
});

afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A Docker config file holding `password` for `host` under `auths`. */
async function configWith(host: string, password: string | undefined): Promise<string> {
  const file = path.join(await tmpDir(), 'config.json');
  const auths = password === undefined ? {} : { [host]: { auth: Buffer.from(`${USER}:${password}`).toString('base64') } };
  await writeFile(file, JSON.stringify({ auths }));
  return file;
}

async function skopeoPush(host: string, repo: string): Promise<void> {
  await tool('skopeo', ['--insecure-policy', 'copy', '--dest-tls-verify=false', '--dest-creds', `${USER}:${PASSWORD}`, `oci:${path.join(dir, 'layout')}:v1`, `docker://${host}/${repo}:v1`]);
}

async function caught(p: Promise<unknown>): Promise<RegistryError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RegistryError);
  return err as RegistryError;
}

/** Pull the fixture, push it to `to`, and check skopeo sees it there; `pushed` runs before skopeo looks. */
async function roundTrip(client: RegistryClient, host: string, from: string, to: string, pushed = () => {}): Promise<void> {
  const store = new ContentStore(await tmpDir());
  const image = await client.resolve(`${host}/${from}:v1`, AMD64);
  expect(image.layers.map((l) => l.digest)).toEqual(fixture.images[0]!.layerDigests);
  for (const d of [image.config, ...image.layers]) await client.pullBlob(image.reference, d, store);
  for (const d of [image.config, ...image.layers]) await client.pushBlob(`${host}/${to}`, d.digest, d.size, store);
  await client.putManifest(`${host}/${to}`, 'v1', image.bytes, image.mediaType);
  pushed();
  const seen = JSON.parse(await tool('skopeo', ['inspect', '--tls-verify=false', '--creds', `${USER}:${PASSWORD}`, `docker://${host}/${to}:v1`])) as { Digest: string };
  expect(seen.Digest).toBe(image.digest);
}

describe.skipIf(!ready)('htpasswd basic auth', () => {
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry(path.join(dir, 'basic'), { kind: 'htpasswd', user: USER, password: PASSWORD });
    await skopeoPush(registry.host, 'fixtures/app');
  });
  afterAll(async () => registry?.stop());

  it('pulls and pushes with credentials from `auths`', async () => {
    const client = new RegistryClient({ registryConfig: await configWith(registry.host, PASSWORD) });
    await roundTrip(client, registry.host, 'fixtures/app', 'copied/app');
  });

  it('pulls with credentials from a credential helper', async () => {
    const bin = await tmpDir();
    const helper = path.join(bin, 'docker-credential-test');
    await writeFile(helper, `#!/bin/sh\nread -r server\nprintf '{"ServerURL":"%s","Username":"${USER}","Secret":"${PASSWORD}"}' "$server"\n`);
    await chmod(helper, 0o755);
    const config = path.join(bin, 'config.json');
    await writeFile(config, JSON.stringify({ credHelpers: { [registry.host]: 'test' } }));
    const client = new RegistryClient({ registryConfig: config, env: { PATH: `${bin}:${process.env.PATH ?? ''}` } });
    const image = await client.resolve(`${registry.host}/fixtures/app:v1`, AMD64);
    expect(image.config.digest).toBe(fixture.images[0]!.configDigest);
  });

  it('says a wrong password is wrong, and where the credentials came from', async () => {
    const config = await configWith(registry.host, 'wrong-password');
    const err = await caught(new RegistryClient({ registryConfig: config }).resolve(`${registry.host}/fixtures/app:v1`, AMD64));
    expect(err.code).toBe('REGISTRY_DENIED');
    expect(err.message).toBe(
      `${registry.host}/fixtures/app: manifest v1: denied (UNAUTHORIZED: authentication required): check your credentials for ${registry.host} (looked in ${config})`,
    );
  });

  it('says how to log in when there are no credentials', async () => {
    const config = await configWith(registry.host, undefined);
    const err = await caught(new RegistryClient({ registryConfig: config }).resolve(`${registry.host}/fixtures/app:v1`, AMD64));
    expect(err.code).toBe('REGISTRY_DENIED');
    expect(err.message).toBe(
      `${registry.host}/fixtures/app: manifest v1: denied: authentication required and no credentials for ${registry.host} were found (looked in ${config}); run \`docker login ${registry.host}\` or pass --registry-config <file>`,
    );
  });
});

describe.skipIf(!ready)('token auth', () => {
  let registry: TestRegistry;
  beforeAll(async () => {
    registry = await startRegistry(path.join(dir, 'token'), { kind: 'token', user: USER, password: PASSWORD });
    await skopeoPush(registry.host, 'fixtures/app');
  });
  afterAll(async () => registry?.stop());

  it('gets a token per scope, reuses it, and pulls and pushes with it', async () => {
    const client = new RegistryClient({ registryConfig: await configWith(registry.host, PASSWORD) });
    registry.tokenRequests.length = 0;
    let ours: TestRegistry['tokenRequests'] = [];
    await roundTrip(client, registry.host, 'fixtures/app', 'copied/app', () => (ours = [...registry.tokenRequests]));
    // One token to pull, one to push: every blob and manifest request reused them.
    expect(ours).toEqual([
      { scopes: ['repository:fixtures/app:pull'], user: USER },
      { scopes: ['repository:copied/app:pull,push'], user: USER },
    ]);
  });

  it('asks for the source repository too when mounting, and sends no bytes', async () => {
    const client = new RegistryClient({ registryConfig: await configWith(registry.host, PASSWORD) });
    const store = new ContentStore(await tmpDir());
    const image = await client.resolve(`${registry.host}/fixtures/app:v1`, AMD64);
    const layer = image.layers[0]!;
    await client.pullBlob(image.reference, layer, store);
    const pulled = client.transferred.pulled;
    registry.tokenRequests.length = 0;
    expect(await client.pushBlob(`${registry.host}/mounted/app`, layer.digest, layer.size, store, { mountFrom: 'fixtures/app' })).toBe('mounted');
    expect(client.transferred.pushed).toBe(0);
    expect(client.transferred.pulled).toBe(pulled);
    expect(registry.tokenRequests).toEqual([{ scopes: ['repository:mounted/app:pull,push', 'repository:fixtures/app:pull'], user: USER }]);
  });

  it('pulls anonymously when the token server allows it, and explains a refused push', async () => {
    const config = await configWith(registry.host, undefined);
    const client = new RegistryClient({ registryConfig: config });
    const image = await client.resolve(`${registry.host}/fixtures/app:v1`, AMD64);
    expect(image.config.digest).toBe(fixture.images[0]!.configDigest);
    const err = await caught(client.putManifest(`${registry.host}/fixtures/app`, 'v2', image.bytes, image.mediaType));
    expect(err.code).toBe('REGISTRY_DENIED');
    expect(err.message).toBe(
      `${registry.host}/fixtures/app: manifest v2: denied (UNAUTHORIZED: authentication required): authentication required and no credentials for ${registry.host} were found (looked in ${config}); run \`docker login ${registry.host}\` or pass --registry-config <file>`,
    );
  });

  it('says a wrong password is wrong, naming the token server', async () => {
    const config = await configWith(registry.host, 'wrong-password');
    const err = await caught(new RegistryClient({ registryConfig: config }).resolve(`${registry.host}/fixtures/app:v1`, AMD64));
    expect(err.code).toBe('REGISTRY_DENIED');
    expect(err.message).toMatch(
      new RegExp(`^${registry.host}/fixtures/app: manifest v1: denied by the token server http://127\\.0\\.0\\.1:\\d+/token: check your credentials for ${registry.host} \\(looked in ${config}\\)$`),
    );
  });
});
