/**
 * Which registries are spoken to over plain HTTP: only those the user names
 * as insecure, plus the loopback ones (`localhost`, `127.0.0.0/8`, `[::1]`),
 * which Docker also treats as insecure by default. Everything else is HTTPS.
 */

/** True when `registry` (`host[:port]`) is served over plain HTTP. `insecure` entries are `host` or `host:port`. */
export function isInsecureRegistry(registry: string, insecure: readonly string[] = []): boolean {
  const host = hostName(registry);
  if (host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host)) return true;
  return insecure.some((entry) => entry === registry || (!hasPort(entry) && hostName(entry) === host));
}

/** The registry's API base URL, e.g. `http://127.0.0.1:5000`. */
export function registryBaseUrl(apiHost: string, insecure: readonly string[] = []): string {
  return `${isInsecureRegistry(apiHost, insecure) ? 'http' : 'https'}://${apiHost}`;
}

function hostName(registry: string): string {
  if (registry.startsWith('[')) return registry.slice(1, registry.indexOf(']'));
  return registry.split(':')[0] ?? registry;
}

function hasPort(entry: string): boolean {
  return entry.startsWith('[') ? entry.includes(']:') : entry.includes(':');
}
