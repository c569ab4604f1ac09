/**
 * Image references as Docker and OCI registries read them
 * (github.com/distribution/reference): `[host[:port]/]path[:tag]`, where the
 * first component is a host when it has a `.` or a `:`, is `localhost`, or
 * has an uppercase letter. Digests are refused: a tag names the image being
 * built, whose digest nobody can know in advance.
 */

const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const IPV6 = /^\[[0-9A-Fa-f:.]+\]$/;
const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const MAX_NAME = 255;

/** Why `ref` is not a valid tag for an image, or undefined when it is. */
export function referenceProblem(ref: string): string | undefined {
  if (ref.includes('@')) return 'a digest (`@sha256:...`) cannot be a tag of an image being built';
  if (/\s/.test(ref)) return 'it contains white space';
  let name = ref;
  const slash = ref.lastIndexOf('/');
  const colon = ref.lastIndexOf(':');
  if (colon > slash) {
    name = ref.slice(0, colon);
    const tag = ref.slice(colon + 1);
    if (!tag) return 'the tag after `:` is empty';
    if (!TAG.test(tag)) {
      return `the tag \`${tag}\` may only hold letters, digits, \`_\`, \`.\` and \`-\`, not start with \`.\` or \`-\`, and be at most 128 characters`;
    }
  }
  if (!name) return 'the repository name is empty';
  if (name.length > MAX_NAME) return `the repository name is longer than ${MAX_NAME} characters`;
  const parts = name.split('/');
  const first = parts[0] ?? '';
  if (parts.length > 1 && (/[.:]/.test(first) || first === 'localhost' || first.toLowerCase() !== first)) {
    const problem = hostProblem(first);
    if (problem) return problem;
    parts.shift();
  }
  for (const part of parts) {
    if (!part) return 'it has an empty path component (`//`, or `/` at an end)';
    if (part.toLowerCase() !== part) return 'repository names must be lowercase';
    if (!PATH_COMPONENT.test(part)) {
      return `the path component \`${part}\` may only hold lowercase letters and digits, separated by \`.\`, \`_\`, \`__\` or dashes`;
    }
  }
  return undefined;
}

function hostProblem(domain: string): string | undefined {
  let host = domain;
  const portAt = domain.startsWith('[') ? domain.indexOf(']:') + 1 : domain.lastIndexOf(':');
  if (portAt > 0) {
    host = domain.slice(0, portAt);
    const port = domain.slice(portAt + 1);
    if (!/^[0-9]+$/.test(port)) return `the registry port \`${port}\` is not a number`;
  }
  if (IPV6.test(host)) return undefined;
  if (!host.split('.').every((c) => DOMAIN_COMPONENT.test(c))) return `the registry \`${host}\` is not a valid host name`;
  return undefined;
}

/**
 * Whether `from:` names a registry image rather than an image of the file:
 * it has a tag, a digest or a path (`alpine:3`, `team/app`, `host:5000/app`).
 * A bare name is always an image of the file, so a typo is reported, not
 * looked up on Docker Hub.
 */
export function isRegistryRef(from: string): boolean {
  return /[/:@]/.test(from) && !/^(oci|oci-archive|docker-archive):/.test(from);
}
