/**
 * Putting a blob into a repository, cheapest way first:
 *
 * 1. HEAD: the repository has it already → nothing to send;
 * 2. with a source repository on the same registry, POST `?mount=&from=`:
 *    201 means mounted (no bytes sent); 202 means the registry would not,
 *    and the upload session it opened instead is used for step 3;
 * 3. POST to open an upload, then one monolithic PUT `?digest=` with the
 *    bytes from the content store.
 */
import type { ContentStore } from '../cache/content-store.js';
import { CacheCorruptError, RegistryError, type RegistryErrorSubject } from '../errors.js';
import type { RepositoryRef } from './blob-pull.js';
import { counted, type TransferCounters } from './counters.js';
import type { RegistryTransport } from './transport.js';

export type PushOutcome = 'present' | 'mounted' | 'uploaded';

/** Makes `digest` (`size` bytes, in `store`) present in `repo`; says how. */
export async function uploadBlob(
  transport: RegistryTransport,
  repo: RepositoryRef,
  digest: string,
  size: number,
  store: ContentStore,
  counters: TransferCounters,
  mountFrom?: string,
): Promise<PushOutcome> {
  if (await blobExists(transport, repo, digest, pushScopes(repo, mountFrom))) return 'present';
  const started = await startUpload(transport, repo, digest, mountFrom);
  if (started.mounted) return 'mounted';
  // Only now are the bytes needed: a blob the store knows but has not fetched yet (a shared-cache hit) comes in here.
  await store.ensure(digest);
  if (!(await store.has(digest))) {
    throw new CacheCorruptError(`blob ${digest} is not in the content store ${store.root}, so it cannot be pushed to ${repo.registry}/${repo.repository}`);
  }
  const subject = blobSubject(repo, digest);
  const target = new URL(started.location, transport.baseUrl(repo.registry));
  target.searchParams.set('digest', digest);
  const res = await transport.request({
    method: 'PUT',
    subject,
    path: target.toString(),
    scopes: pushScopes(repo, mountFrom),
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(size) },
    body: () => counted(store.read(digest), counters, 'pushed'),
    ok: [201],
  });
  await res.discard();
  const echoed = res.header('docker-content-digest');
  if (echoed && echoed !== digest) {
    throw new RegistryError('BLOB_DIGEST_MISMATCH', subject, `the registry stored the upload as ${echoed}; the local blob may be damaged (run with a fresh cache directory)`);
  }
  return 'uploaded';
}

/**
 * Asks the registry to mount `digest` from `fromRepository` into `repo`;
 * true when it did. A refused mount's upload session is cancelled.
 */
export async function mountBlob(transport: RegistryTransport, repo: RepositoryRef, digest: string, fromRepository: string): Promise<boolean> {
  const started = await startUpload(transport, repo, digest, fromRepository);
  if (started.mounted) return true;
  const cancel = await transport.request({
    method: 'DELETE',
    subject: blobSubject(repo, digest),
    path: new URL(started.location, transport.baseUrl(repo.registry)).toString(),
    scopes: pushScopes(repo, fromRepository),
    ok: [204, 200, 202, 404],
  });
  await cancel.discard();
  return false;
}

export async function blobExists(transport: RegistryTransport, repo: RepositoryRef, digest: string, scopes = [`repository:${repo.repository}:pull`]): Promise<boolean> {
  const res = await transport.request({
    method: 'HEAD',
    subject: blobSubject(repo, digest),
    path: `/v2/${repo.repository}/blobs/${digest}`,
    scopes,
    ok: [200, 404],
  });
  await res.discard();
  return res.status === 200;
}

async function startUpload(
  transport: RegistryTransport,
  repo: RepositoryRef,
  digest: string,
  mountFrom: string | undefined,
): Promise<{ mounted: true } | { mounted: false; location: string }> {
  const subject = blobSubject(repo, digest);
  const query = mountFrom ? `?mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(mountFrom)}` : '';
  const res = await transport.request({
    method: 'POST',
    subject,
    path: `/v2/${repo.repository}/blobs/uploads/${query}`,
    scopes: pushScopes(repo, mountFrom),
    headers: { 'content-length': '0' },
    ok: [201, 202],
  });
  await res.discard();
  if (res.status === 201 && mountFrom) return { mounted: true };
  const location = res.header('location');
  if (res.status !== 202 || !location) {
    throw new RegistryError('REGISTRY_FAILED', subject, `opening an upload answered ${res.status} without an upload location`);
  }
  return { mounted: false, location };
}

function pushScopes(repo: RepositoryRef, mountFrom: string | undefined): string[] {
  const scopes = [`repository:${repo.repository}:pull,push`];
  if (mountFrom && mountFrom !== repo.repository) scopes.push(`repository:${mountFrom}:pull`);
  return scopes;
}

function blobSubject(repo: RepositoryRef, digest: string): RegistryErrorSubject & { repository: string } {
  return { registry: repo.registry, repository: repo.repository, object: `blob ${digest}` };
}
