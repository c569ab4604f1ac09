/**
 * Authorization for registry requests, learned the way the distribution
 * spec describes:
 *
 * 1. A request goes out anonymous until the registry has challenged us once.
 * 2. A 401 carries `WWW-Authenticate`. `Basic` means: send the user's
 *    credentials with every request. `Bearer realm=…,service=…,scope=…`
 *    means: GET a token from the realm for the service and the scopes the
 *    request needs (with basic auth when the user has credentials), and send
 *    it as `Authorization: Bearer <token>`.
 * 3. Tokens are cached per registry and scope set until shortly before they
 *    expire; later requests to that registry ask for a token up front.
 *
 * A scope is `repository:<name>:<actions>`: `pull` to read, `pull,push` to
 * write, plus `repository:<source>:pull` to mount a blob from another
 * repository.
 */
import { RegistryError, type RegistryErrorSubject } from '../errors.js';
import { parseWwwAuthenticate, type AuthChallenge } from './challenge.js';
import type { CredentialLookup, RegistryCredentials } from './credentials.js';
import type { HttpRequestOptions, HttpResponse } from './http-request.js';
import { requestRetrying, type RetryPolicy } from './retry.js';

export interface AuthOptions {
  /** Credentials for a registry (as written in references); called once per registry. */
  lookup: (registry: string) => Promise<CredentialLookup>;
  retry: RetryPolicy;
  userAgent: string;
}

interface CachedToken {
  token: string;
  /** ms since the epoch after which it is fetched again. */
  renewAt: number;
}

export class RegistryAuth {
  private readonly challenges = new Map<string, AuthChallenge>();
  private readonly tokens = new Map<string, Promise<CachedToken>>();
  private readonly lookups = new Map<string, Promise<CredentialLookup>>();

  constructor(private readonly options: AuthOptions) {}

  /**
   * The `Authorization` header for a request needing `scopes`; undefined
   * while anonymous. `subject` (registry, and what the request is about) is
   * what a failure to get a token names.
   */
  async authorization(subject: RegistryErrorSubject, scopes: readonly string[]): Promise<string | undefined> {
    const { registry } = subject;
    const challenge = this.challenges.get(registry);
    if (!challenge) return undefined;
    const { credentials } = await this.credentials(registry);
    if (challenge.scheme === 'basic') return credentials ? basicHeader(credentials) : undefined;
    return `Bearer ${await this.token(subject, challenge, scopes)}`;
  }

  /**
   * Takes a 401's `WWW-Authenticate` into account. Returns false when asking
   * again cannot help: no challenge we speak, or basic auth with no credentials.
   */
  async challenged(registry: string, header: string | null | undefined): Promise<boolean> {
    const all = parseWwwAuthenticate(header ?? '');
    const challenge = all.find((c) => c.scheme === 'bearer' && c.params.realm) ?? all.find((c) => c.scheme === 'basic');
    if (!challenge) return false;
    const known = this.challenges.get(registry);
    // The challenge's `scope` is the refused request's; each request asks for its own scopes.
    const { scope: _scope, ...params } = challenge.params;
    this.challenges.set(registry, { scheme: challenge.scheme, params });
    // A token the registry just refused is not asked for again from the cache.
    if (known) for (const key of [...this.tokens.keys()]) if (key.startsWith(`${registry} `)) this.tokens.delete(key);
    if (challenge.scheme === 'basic') return (await this.credentials(registry)).credentials !== undefined;
    return true;
  }

  /** Where credentials for `registry` were looked for and found (once per registry). */
  credentials(registry: string): Promise<CredentialLookup> {
    let found = this.lookups.get(registry);
    if (!found) {
      found = this.options.lookup(registry);
      this.lookups.set(registry, found);
    }
    return found;
  }

  private async token(subject: RegistryErrorSubject, challenge: AuthChallenge, scopes: readonly string[]): Promise<string> {
    const { registry } = subject;
    const key = `${registry} ${[...scopes].sort().join(' ')}`;
    const cached = this.tokens.get(key);
    if (cached) {
      const got = await cached.catch(() => undefined);
      if (got && got.renewAt > Date.now()) return got.token;
      if (this.tokens.get(key) === cached) this.tokens.delete(key);
    }
    // One request per key, however many blobs ask at once.
    let pending = this.tokens.get(key);
    if (!pending) {
      pending = this.fetchToken(subject, challenge, scopes);
      this.tokens.set(key, pending);
      pending.catch(() => this.tokens.get(key) === pending && this.tokens.delete(key));
    }
    return (await pending).token;
  }

  private async fetchToken(subject: RegistryErrorSubject, challenge: AuthChallenge, scopes: readonly string[]): Promise<CachedToken> {
    const { registry } = subject;
    const { realm, service } = challenge.params;
    if (!realm) throw new RegistryError('REGISTRY_FAILED', subject, 'the registry asked for a Bearer token without saying where to get one (no realm)');
    const lookup = await this.credentials(registry);
    const creds = lookup.credentials;
    const wanted = [...scopes];

    const url = new URL(realm);
    const headers: Record<string, string> = { 'user-agent': this.options.userAgent };
    let init: () => HttpRequestOptions;
    if (creds?.identityToken) {
      // OAuth2 refresh-token grant, as `docker login` with an identity token does.
      const form = new URLSearchParams({ grant_type: 'refresh_token', refresh_token: creds.identityToken, client_id: 'layergraph' });
      if (service) form.set('service', service);
      if (wanted.length) form.set('scope', wanted.join(' '));
      headers['content-type'] = 'application/x-www-form-urlencoded';
      init = () => ({ method: 'POST', headers, body: form.toString() });
    } else {
      if (service) url.searchParams.set('service', service);
      for (const scope of wanted) url.searchParams.append('scope', scope);
      if (creds) {
        url.searchParams.set('account', creds.username);
        headers.authorization = basicHeader(creds);
      }
      init = () => ({ method: 'GET', headers });
    }

    let res: HttpResponse;
    try {
      res = await requestRetrying(url.toString(), init, this.options.retry);
    } catch (err) {
      throw new RegistryError('REGISTRY_FAILED', subject, `cannot reach the token server ${url.origin}${url.pathname}: ${causeText(err)}`, { cause: err });
    }
    if (res.status === 401 || res.status === 403) {
      await res.discard();
      throw new RegistryError('REGISTRY_DENIED', subject, deniedAdvice(registry, lookup, `denied by the token server ${url.origin}${url.pathname}`));
    }
    if (res.status < 200 || res.status > 299) {
      const text = (await res.text().catch(() => '')).slice(0, 300);
      throw new RegistryError('REGISTRY_FAILED', subject, `the token server ${url.origin}${url.pathname} answered ${res.status}: ${text}`);
    }
    const body = (await res.json().catch(() => ({}))) as { token?: unknown; access_token?: unknown; expires_in?: unknown };
    const token = typeof body.token === 'string' && body.token ? body.token : body.access_token;
    if (typeof token !== 'string' || !token) {
      throw new RegistryError('REGISTRY_FAILED', subject, `the token server ${url.origin}${url.pathname} answered without a token`);
    }
    // The spec's default lifetime is 60 s; renew a little early so a token does not expire in flight.
    const lifetime = typeof body.expires_in === 'number' && body.expires_in > 0 ? body.expires_in : 60;
    return { token, renewAt: Date.now() + lifetime * 1000 - Math.min(30_000, lifetime * 100) };
  }
}

/** "denied: check your credentials for <host> (looked in <file>)", or how to log in when there were none. */
export function deniedAdvice(registry: string, lookup: CredentialLookup, what = 'denied'): string {
  if (!lookup.credentials) {
    return `${what}: authentication required and no credentials for ${registry} were found (looked in ${lookup.configFile}); run \`docker login ${registry}\` or pass --registry-config <file>`;
  }
  const from = lookup.source === 'auths' ? lookup.configFile : `${lookup.source} (configured in ${lookup.configFile})`;
  return `${what}: check your credentials for ${registry} (looked in ${from})`;
}

function basicHeader(creds: RegistryCredentials): string {
  return `Basic ${Buffer.from(`${creds.username}:${creds.password}`).toString('base64')}`;
}

/** The socket-level reason, found at the end of the `cause` chain when an error wraps it. */
export function causeText(err: unknown): string {
  let e = err as { message?: unknown; code?: unknown; cause?: unknown } | undefined;
  for (let depth = 0; e?.cause && typeof e.cause === 'object' && depth < 5; depth++) e = e.cause as typeof e;
  const message = typeof e?.message === 'string' ? e.message : '';
  const code = typeof e?.code === 'string' ? e.code : '';
  if (message && (!code || message.includes(code))) return message;
  return [code, message].filter(Boolean).join(' ') || String(err);
}
