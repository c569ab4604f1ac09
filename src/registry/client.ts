/**
 * A client for OCI distribution registries (and Docker's v2 API): resolve a
 * reference to the image manifest for a platform, pull blobs into the
 * content store, push blobs and manifests.
 *
 * One client serves one run: it keeps the tokens it got, the credentials it
 * looked up, and one flight per blob, so images that share layers pull and
 * push each of them once. `transferred` counts the bytes that crossed the
 * network, for the report.
 */
import type { BlobInfo, ContentStore } from '../cache/content-store.js';
import type { Platform } from '../config/types.js';
import { RegistryError, type RegistryErrorSubject } from '../errors.js';
import type { Descriptor } from '../oci/layout-reader.js';
import { causeText, RegistryAuth } from './auth.js';
import { downloadBlob, type RepositoryRef } from './blob-pull.js';
import { blobExists, mountBlob, uploadBlob, type PushOutcome } from './blob-push.js';
import { sha256Digest } from '../cache/content-store.js';
import type { TransferCounters } from './counters.js';
import { findCredentials } from './credentials.js';
import { MANIFEST_ACCEPT, manifestMediaType, parseManifest } from './manifest.js';
import { platformList, platformName, selectPlatform } from './platform.js';
import { manifestTarget, parseImageReference, type ImageReference } from './reference.js';
import { DEFAULT_RETRY, type RetryPolicy } from './retry.js';
import { RegistryTransport } from './transport.js';

export interface RegistryClientOptions {
  /** `--registry-config <file>`: the Docker config file to read credentials from. */
  registryConfig?: string;
  /** Registries (`host` or `host:port`) spoken to over plain HTTP, besides the loopback ones. */
  insecure?: readonly string[];
  retry?: Partial<RetryPolicy>;
  /** Environment for DOCKER_CONFIG, HOME and the credential helpers' PATH. */
  env?: NodeJS.ProcessEnv;
}

export interface ManifestBytes {
  bytes: Buffer;
  /** sha256 of `bytes`. */
  digest: string;
  mediaType: string;
}

export interface ResolvedImage extends ManifestBytes {
  reference: ImageReference;
  config: Descriptor;
  layers: Descriptor[];
  /** The index or manifest list it was chosen from, when the reference named one. */
  index?: ManifestBytes;
}

export interface PulledBlob extends BlobInfo {
  /** False when the store had it already and nothing was downloaded. */
  downloaded: boolean;
}

export class RegistryClient {
  /** Bytes downloaded and uploaded so far (blob and manifest bodies). */
  readonly transferred: TransferCounters = { pulled: 0, pushed: 0 };
  private readonly transport: RegistryTransport;
  private readonly retry: RetryPolicy;
  private readonly pulls = new Map<string, Promise<PulledBlob>>();
  private readonly pushes = new Map<string, Promise<PushOutcome>>();

  constructor(options: RegistryClientOptions = {}) {
    this.retry = { ...DEFAULT_RETRY, ...options.retry };
    const userAgent = 'layergraph';
    const lookup = (registry: string) =>
      findCredentials(registry, { ...(options.registryConfig !== undefined && { configFile: options.registryConfig }), ...(options.env && { env: options.env }) });
    const auth = new RegistryAuth({ lookup, retry: this.retry, userAgent });
    this.transport = new RegistryTransport({ auth, retry: this.retry, insecure: options.insecure ?? [], userAgent });
  }

  /**
   * The image manifest `ref` names for `platform`: through an OCI index or a
   * Docker manifest list when it names one. Every manifest is checked against
   * its digest.
   */
  async resolve(ref: ImageReference | string, platform: Platform): Promise<ResolvedImage> {
    const reference = typeof ref === 'string' ? parseImageReference(ref) : ref;
    const top = await this.getManifest(reference);
    const parsed = this.parse(reference, top, manifestTarget(reference));
    if (parsed.kind === 'image') return { ...top, reference, config: parsed.config, layers: parsed.layers };

    const chosen = selectPlatform(parsed.manifests, platform);
    if (!chosen) {
      throw new RegistryError(
        'REGISTRY_NOT_FOUND',
        manifestSubject(reference, manifestTarget(reference)),
        `has no image for ${platformName(platform)} (it has ${platformList(parsed.manifests)}); set the image's platform to one of those`,
      );
    }
    const image = await this.getManifest(reference, chosen.digest);
    const inner = this.parse(reference, image, chosen.digest);
    if (inner.kind !== 'image') {
      throw new RegistryError('REGISTRY_FAILED', manifestSubject(reference, chosen.digest), 'is an index inside an index; nested indexes are not supported');
    }
    return { ...image, reference, config: inner.config, layers: inner.layers, index: top };
  }

  /** The manifest `target` (a tag or digest; default: the reference's own) as the registry sends it, digest-checked. */
  async getManifest(ref: ImageReference | string, target?: string): Promise<ManifestBytes> {
    const reference = typeof ref === 'string' ? parseImageReference(ref) : ref;
    const what = target ?? manifestTarget(reference);
    const subject = manifestSubject(reference, what);
    const res = await this.transport.request({
      method: 'GET',
      subject,
      path: `/v2/${reference.repository}/manifests/${what}`,
      scopes: [`repository:${reference.repository}:pull`],
      headers: { accept: MANIFEST_ACCEPT.join(', ') },
      ok: [200],
    });
    let bytes: Buffer;
    try {
      bytes = await res.buffer();
    } catch (err) {
      throw new RegistryError('REGISTRY_FAILED', subject, `download failed: ${causeText(err)}`, { cause: err });
    }
    this.transferred.pulled += bytes.length;
    const digest = sha256Digest(bytes);
    const expected = what.startsWith('sha256:') ? what : res.header('docker-content-digest');
    if (expected && expected !== digest) {
      throw new RegistryError('BLOB_DIGEST_MISMATCH', subject, `arrived with digest ${digest}, not ${expected}; the registry holds a damaged manifest`);
    }
    let json: unknown;
    try {
      json = JSON.parse(bytes.toString('utf8'));
    } catch {
      throw new RegistryError('REGISTRY_FAILED', subject, 'is not JSON');
    }
    return { bytes, digest, mediaType: manifestMediaType(res.header('content-type') ?? null, json) };
  }

  /** Uploads a manifest under `tagOrDigest`; returns its digest. */
  async putManifest(ref: RepositoryRef | string, tagOrDigest: string, bytes: Uint8Array, mediaType: string): Promise<string> {
    const repo = typeof ref === 'string' ? parseImageReference(ref) : ref;
    const digest = sha256Digest(bytes);
    const subject = { registry: repo.registry, repository: repo.repository, object: `manifest ${tagOrDigest}` };
    const res = await this.transport.request({
      method: 'PUT',
      subject,
      path: `/v2/${repo.repository}/manifests/${tagOrDigest}`,
      scopes: [`repository:${repo.repository}:pull,push`],
      headers: { 'content-type': mediaType },
      body: () => bytes,
      ok: [201],
    });
    await res.discard();
    this.transferred.pushed += bytes.length;
    const echoed = res.header('docker-content-digest');
    if (echoed && echoed !== digest) {
      throw new RegistryError('BLOB_DIGEST_MISMATCH', subject, `the registry stored the manifest as ${echoed}, but its bytes hash to ${digest}`);
    }
    return digest;
  }

  async hasBlob(ref: RepositoryRef | string, digest: string): Promise<boolean> {
    return blobExists(this.transport, repositoryOf(ref), digest);
  }

  /**
   * Makes `desc` available in `store`: nothing is downloaded when the store
   * has it; otherwise it streams in, checked against its digest and size.
   */
  async pullBlob(ref: RepositoryRef | string, desc: Descriptor, store: ContentStore): Promise<PulledBlob> {
    if (await store.has(desc.digest)) return { digest: desc.digest, size: desc.size, downloaded: false };
    const key = `${store.root}\0${desc.digest}`;
    let flight = this.pulls.get(key);
    if (!flight) {
      flight = downloadBlob(this.transport, repositoryOf(ref), desc, store, this.transferred, this.retry).then((b) => ({ ...b, downloaded: true }));
      this.pulls.set(key, flight);
      void flight.finally(() => this.pulls.delete(key)).catch(() => {});
    }
    return flight;
  }

  /** Asks the registry to mount `digest` from `fromRepository` (same registry) into `repo`; true when it did. */
  async mountBlob(repo: RepositoryRef | string, digest: string, fromRepository: string): Promise<boolean> {
    return mountBlob(this.transport, repositoryOf(repo), digest, fromRepository);
  }

  /**
   * Makes `digest` present in the repository: skipped when the registry has
   * it, mounted from `options.mountFrom` when it can be, uploaded otherwise.
   * Pushing the same blob to the same repository twice in one run uploads once.
   */
  async pushBlob(
    ref: RepositoryRef | string,
    digest: string,
    size: number,
    store: ContentStore,
    options: { mountFrom?: string } = {},
  ): Promise<PushOutcome> {
    const repo = repositoryOf(ref);
    const key = `${repo.registry}/${repo.repository}\0${digest}`;
    let flight = this.pushes.get(key);
    if (!flight) {
      flight = uploadBlob(this.transport, repo, digest, size, store, this.transferred, options.mountFrom);
      this.pushes.set(key, flight);
      // A failed push may be tried again; a finished one is remembered for the run.
      flight.catch(() => this.pushes.get(key) === flight && this.pushes.delete(key));
    }
    return flight;
  }

  private parse(reference: ImageReference, manifest: ManifestBytes, target: string) {
    try {
      return parseManifest(JSON.parse(manifest.bytes.toString('utf8')), manifest.mediaType);
    } catch (err) {
      throw new RegistryError('REGISTRY_FAILED', manifestSubject(reference, target), (err as Error).message);
    }
  }
}

function repositoryOf(ref: RepositoryRef | string): RepositoryRef {
  const r = typeof ref === 'string' ? parseImageReference(ref) : ref;
  return { registry: r.registry, repository: r.repository };
}

function manifestSubject(ref: RepositoryRef, target: string): RegistryErrorSubject & { repository: string } {
  return { registry: ref.registry, repository: ref.repository, object: `manifest ${target}` };
}
