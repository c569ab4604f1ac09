/**
 * Registry image references, read with Docker's rules
 * (github.com/distribution/reference, "normalized named"):
 * `[host[:port]/]path[:tag][@sha256:<hex>]`.
 *
 * - The first path component is a registry host when it holds a `.` or a `:`,
 *   is `localhost`, or has an uppercase letter; otherwise the registry is
 *   Docker Hub (`docker.io`), and a one-component name there is an official
 *   image under `library/`.
 * - With neither tag nor digest the tag is `latest`; with a digest the digest
 *   decides what is fetched and the tag only labels it.
 *
 * `registry` is the name users write and credentials are filed under;
 * `registryApiHost` is where the HTTP API lives (Docker Hub's differs).
 */
import { UsageError } from '../errors.js';
import { referenceProblem } from '../config/reference.js';

export interface ImageReference {
  /** Host and optional port as written, `docker.io` for Docker Hub. */
  registry: string;
  /** Path inside the registry, e.g. `library/alpine`. */
  repository: string;
  tag?: string;
  /** `sha256:<hex>` */
  digest?: string;
}

export const DOCKER_HUB = 'docker.io';
const DOCKER_HUB_API = 'registry-1.docker.io';
const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** Parses `ref`; throws a UsageError saying what is wrong with it. */
export function parseImageReference(ref: string): ImageReference {
  const at = ref.indexOf('@');
  const named = at >= 0 ? ref.slice(0, at) : ref;
  const digest = at >= 0 ? ref.slice(at + 1) : undefined;
  if (digest !== undefined && !DIGEST.test(digest)) {
    throw new UsageError(`image reference \`${ref}\`: the digest after \`@\` must be sha256:<64 lowercase hex digits>`);
  }
  const problem = referenceProblem(named);
  if (problem) throw new UsageError(`image reference \`${ref}\`: ${problem}`);

  let name = named;
  let tag: string | undefined;
  const colon = named.lastIndexOf(':');
  if (colon > named.lastIndexOf('/')) {
    name = named.slice(0, colon);
    tag = named.slice(colon + 1);
  }
  let registry = DOCKER_HUB;
  let repository = name;
  const slash = name.indexOf('/');
  if (slash >= 0 && isHost(name.slice(0, slash))) {
    registry = name.slice(0, slash);
    repository = name.slice(slash + 1);
  }
  if (registry === 'index.docker.io') registry = DOCKER_HUB;
  if (registry === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`;
  if (tag === undefined && digest === undefined) tag = 'latest';
  return { registry, repository, ...(tag !== undefined && { tag }), ...(digest !== undefined && { digest }) };
}

/** The host (and port) serving the registry's HTTP API. */
export function registryApiHost(registry: string): string {
  return registry === DOCKER_HUB ? DOCKER_HUB_API : registry;
}

/** What to ask the registry for: the digest when there is one, else the tag. */
export function manifestTarget(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? 'latest';
}

/** The reference written out in full, e.g. `127.0.0.1:5000/app:1@sha256:…`. */
export function formatImageReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ''}${ref.digest ? `@${ref.digest}` : ''}`;
}

function isHost(component: string): boolean {
  return /[.:]/.test(component) || component === 'localhost' || component.toLowerCase() !== component;
}
