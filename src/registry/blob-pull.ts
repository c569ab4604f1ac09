/**
 * Downloading a blob into the content store, checked while it streams: the
 * bytes are hashed on their way into a staging file and committed under
 * their digest only when it matches (ContentStore.ingest). More bytes than
 * the descriptor's size stop the download at once. A broken connection is
 * retried from the start; a mismatch is not: the registry would serve the
 * same wrong bytes again, and the user has to hear about it.
 */
import { Readable } from 'node:stream';
import type { BlobInfo, ContentStore } from '../cache/content-store.js';
import { CacheCorruptError, RegistryError, type RegistryErrorSubject } from '../errors.js';
import type { Descriptor } from '../oci/layout-reader.js';
import { causeText } from './auth.js';
import { counted, type TransferCounters } from './counters.js';
import { isRetryableNetworkError, retryDelayMs, sleep, type RetryPolicy } from './retry.js';
import type { RegistryTransport } from './transport.js';

export interface RepositoryRef {
  /** As written in references, e.g. `docker.io`, `127.0.0.1:5000`. */
  registry: string;
  repository: string;
}

/** Streams `desc` from `repo` into `store`; returns what was stored. */
export async function downloadBlob(
  transport: RegistryTransport,
  repo: RepositoryRef,
  desc: Descriptor,
  store: ContentStore,
  counters: TransferCounters,
  retry: RetryPolicy,
): Promise<BlobInfo> {
  const subject: RegistryErrorSubject & { repository: string } = { ...repo, object: `blob ${desc.digest}` };
  for (let attempt = 1; ; attempt++) {
    const res = await transport.request({
      method: 'GET',
      subject,
      path: `/v2/${repo.repository}/blobs/${desc.digest}`,
      scopes: [`repository:${repo.repository}:pull`],
      ok: [200],
    });
    const body = res.body;
    try {
      const stored = await store.ingest(Readable.from(limited(counted(body, counters, 'pulled'), desc.size, subject)), desc.digest);
      if (stored.size !== desc.size) {
        throw mismatch(subject, `has ${stored.size} bytes, but the manifest says ${desc.size}`);
      }
      return stored;
    } catch (err) {
      body.destroy();
      if (err instanceof RegistryError) throw err;
      if (err instanceof CacheCorruptError) throw mismatch(subject, `arrived with different content (${err.message})`, err);
      if (attempt < retry.attempts && isRetryableNetworkError(err)) {
        await sleep(retryDelayMs(attempt, retry));
        continue;
      }
      throw new RegistryError('REGISTRY_FAILED', subject, `download failed: ${causeText(err)}`, { cause: err });
    }
  }
}

function mismatch(subject: RegistryErrorSubject, what: string, cause?: unknown): RegistryError {
  return new RegistryError(
    'BLOB_DIGEST_MISMATCH',
    subject,
    `${what}; the registry holds damaged or different bytes under this digest. Not retried: ask the registry's operator to delete the blob, then push the image again`,
    { cause },
  );
}

async function* limited(source: AsyncIterable<Uint8Array>, size: number, subject: RegistryErrorSubject): AsyncGenerator<Uint8Array> {
  let seen = 0;
  for await (const chunk of source) {
    seen += chunk.length;
    if (seen > size) throw mismatch(subject, `is longer than the ${size} bytes the manifest says`);
    yield chunk;
  }
}
