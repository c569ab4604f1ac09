/**
 * The registry client's small pure parts: references with Docker's rules,
 * WWW-Authenticate challenges, which registries are plain HTTP, picking a
 * platform out of an index, and retry delays.
 */
import { describe, expect, it } from 'vitest';
import { parseWwwAuthenticate } from '../src/registry/challenge.js';
import { isInsecureRegistry, registryBaseUrl } from '../src/registry/insecure.js';
import { selectPlatform } from '../src/registry/platform.js';
import { formatImageReference, manifestTarget, parseImageReference, registryApiHost } from '../src/registry/reference.js';
import { isRetryableNetworkError, retryDelayMs } from '../src/registry/retry.js';

const D = `sha256:${'ab'.repeat(32)}`;

describe('image references', () => {
  it.each([
    ['alpine', { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }],
    ['alpine:3.20', { registry: 'docker.io', repository: 'library/alpine', tag: '3.20' }],
    ['bitnami/redis:7', { registry: 'docker.io', repository: 'bitnami/redis', tag: '7' }],
    ['docker.io/alpine', { registry: 'docker.io', repository: 'library/alpine', tag: 'latest' }],
    ['index.docker.io/library/alpine:1', { registry: 'docker.io', repository: 'library/alpine', tag: '1' }],
    ['localhost/app', { registry: 'localhost', repository: 'app', tag: 'latest' }],
    ['localhost:5000/team/app:v1', { registry: 'localhost:5000', repository: 'team/app', tag: 'v1' }],
    ['127.0.0.1:5000/app', { registry: '127.0.0.1:5000', repository: 'app', tag: 'latest' }],
    ['ghcr.io/org/app', { registry: 'ghcr.io', repository: 'org/app', tag: 'latest' }],
    ['[::1]:5000/app:v', { registry: '[::1]:5000', repository: 'app', tag: 'v' }],
    [`ghcr.io/org/app@${D}`, { registry: 'ghcr.io', repository: 'org/app', digest: D }],
    [`ghcr.io/org/app:v1@${D}`, { registry: 'ghcr.io', repository: 'org/app', tag: 'v1', digest: D }],
    // `team` has no `.` or `:` and is not localhost: a Docker Hub user, not a host.
    ['team/app', { registry: 'docker.io', repository: 'team/app', tag: 'latest' }],
  ])('%s', (ref, want) => {
    expect(parseImageReference(ref)).toEqual(want);
  });

  it('refuses bad references, saying why', () => {
    expect(() => parseImageReference('Alpine')).toThrow('image reference `Alpine`: repository names must be lowercase');
    expect(() => parseImageReference('app@sha256:123')).toThrow('image reference `app@sha256:123`: the digest after `@` must be sha256:<64 lowercase hex digits>');
    expect(() => parseImageReference('r.example/app:')).toThrow('the tag after `:` is empty');
  });

  it('knows where the API lives, what to fetch, and how to print it', () => {
    expect(registryApiHost('docker.io')).toBe('registry-1.docker.io');
    expect(registryApiHost('ghcr.io')).toBe('ghcr.io');
    expect(manifestTarget(parseImageReference(`r.example/app:v1@${D}`))).toBe(D);
    expect(manifestTarget(parseImageReference('r.example/app:v1'))).toBe('v1');
    expect(formatImageReference(parseImageReference(`r.example:5000/app:v1@${D}`))).toBe(`r.example:5000/app:v1@${D}`);
  });
});

describe('WWW-Authenticate', () => {
  it('reads Bearer and Basic challenges with quoted values', () => {
    expect(
      parseWwwAuthenticate('Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push",error="insufficient_scope"'),
    ).toEqual([
      {
        scheme: 'bearer',
        params: { realm: 'https://auth.example/token', service: 'registry.example', scope: 'repository:a/b:pull,push', error: 'insufficient_scope' },
      },
    ]);
    expect(parseWwwAuthenticate('Basic realm="Registry \\"x\\""')).toEqual([{ scheme: 'basic', params: { realm: 'Registry "x"' } }]);
    expect(parseWwwAuthenticate('Basic realm=r, Bearer realm="t", service=s')).toEqual([
      { scheme: 'basic', params: { realm: 'r' } },
      { scheme: 'bearer', params: { realm: 't', service: 's' } },
    ]);
    expect(parseWwwAuthenticate('')).toEqual([]);
  });
});

describe('insecure registries', () => {
  it('are the loopback ones and those the user names', () => {
    for (const r of ['localhost', 'localhost:5000', '127.0.0.1:5000', '127.1.2.3', '[::1]:5000']) expect(isInsecureRegistry(r)).toBe(true);
    expect(isInsecureRegistry('registry.lan:5000')).toBe(false);
    expect(isInsecureRegistry('registry.lan:5000', ['registry.lan'])).toBe(true);
    expect(isInsecureRegistry('registry.lan:5000', ['registry.lan:5001'])).toBe(false);
    expect(isInsecureRegistry('10.0.0.1:5000', ['10.0.0.1:5000'])).toBe(true);
    expect(registryBaseUrl('127.0.0.1:5000')).toBe('http://127.0.0.1:5000');
    expect(registryBaseUrl('registry-1.docker.io')).toBe('https://registry-1.docker.io');
  });
});

describe('platform selection', () => {
  const entry = (architecture: string, variant?: string) => ({
    mediaType: 'application/vnd.oci.image.manifest.v1+json',
    digest: `sha256:${architecture}${variant ?? ''}`,
    size: 1,
    platform: { os: 'linux', architecture, ...(variant && { variant }) },
  });
  const index = [entry('amd64'), entry('arm', 'v6'), entry('arm', 'v7'), entry('arm64', 'v8')];

  it('matches os and architecture, and the variant when one is asked for', () => {
    expect(selectPlatform(index, { os: 'linux', architecture: 'amd64' })?.digest).toBe('sha256:amd64');
    expect(selectPlatform(index, { os: 'linux', architecture: 'arm', variant: 'v7' })?.digest).toBe('sha256:armv7');
    expect(selectPlatform(index, { os: 'linux', architecture: 'arm64' })?.digest).toBe('sha256:arm64v8');
    expect(selectPlatform(index, { os: 'linux', architecture: 'arm', variant: 'v5' })).toBeUndefined();
    expect(selectPlatform(index, { os: 'windows', architecture: 'amd64' })).toBeUndefined();
  });
});

describe('retries', () => {
  it('honours Retry-After up to the cap, and otherwise backs off with jitter under a doubling ceiling', () => {
    const policy = { attempts: 4, baseDelayMs: 100, maxDelayMs: 1000 };
    expect(retryDelayMs(1, policy, '0')).toBe(0);
    expect(retryDelayMs(1, policy, '3')).toBe(1000);
    for (let i = 0; i < 50; i++) {
      expect(retryDelayMs(1, policy)).toBeLessThanOrEqual(100);
      expect(retryDelayMs(3, policy)).toBeLessThanOrEqual(400);
      expect(retryDelayMs(10, policy)).toBeLessThanOrEqual(1000);
    }
  });

  it('retries broken connections, found in the cause fetch wraps them in', () => {
    const wrapped = Object.assign(new TypeError('fetch failed'), { cause: Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' }) });
    expect(isRetryableNetworkError(wrapped)).toBe(true);
    expect(isRetryableNetworkError(Object.assign(new Error('x'), { code: 'ETIMEDOUT' }))).toBe(true);
    expect(isRetryableNetworkError(Object.assign(new Error('refused'), { code: 'ECONNREFUSED' }))).toBe(false);
    expect(isRetryableNetworkError(new Error('digest mismatch'))).toBe(false);
  });
});
