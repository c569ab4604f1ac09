/**
 * One HTTP request to a registry's API, with everything around it that every
 * request needs: the base URL (HTTPS unless the registry is insecure), the
 * `Authorization` header and the 401 → challenge → ask-again dance, retries
 * (see retry.ts), and turning the answers the caller did not expect into
 * RegistryErrors that say what failed and what the user can do.
 */
import { RegistryError, type RegistryErrorSubject } from '../errors.js';
import { causeText, deniedAdvice, type RegistryAuth } from './auth.js';
import { registryBaseUrl } from './insecure.js';
import { registryApiHost } from './reference.js';
import type { HttpBody, HttpResponse } from './http-request.js';
import { isRetryableStatus, requestRetrying, type RetryPolicy } from './retry.js';

export interface RegistryRequest {
  method: 'GET' | 'HEAD' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';
  /** What the error messages name: registry (as written), repository, `blob …`/`manifest …`. */
  subject: RegistryErrorSubject & { repository: string };
  /** `/v2/…` on the registry, or an absolute URL the registry gave us (an upload location). */
  path: string;
  /** Token scopes the request needs, e.g. `repository:app:pull`. */
  scopes: readonly string[];
  headers?: Record<string, string>;
  /** Called once per try: a stream body cannot be sent twice. */
  body?: () => HttpBody;
  /** Statuses handed back to the caller; any other becomes a RegistryError. */
  ok: readonly number[];
}

export interface TransportOptions {
  auth: RegistryAuth;
  retry: RetryPolicy;
  insecure: readonly string[];
  userAgent: string;
}

export class RegistryTransport {
  constructor(private readonly options: TransportOptions) {}

  /** `http(s)://host[:port]` of `registry`'s API. */
  baseUrl(registry: string): string {
    return registryBaseUrl(registryApiHost(registry), this.options.insecure);
  }

  /** Sends `req`; returns the response when its status is in `req.ok`, else throws. */
  async request(req: RegistryRequest): Promise<HttpResponse> {
    const { registry } = req.subject;
    const base = this.baseUrl(registry);
    const url = new URL(req.path, base).toString();
    // Credentials go only to the registry itself, never to a host an upload location points at.
    const sameOrigin = new URL(url).origin === new URL(base).origin;
    for (let round = 1; ; round++) {
      const authorization = sameOrigin ? await this.options.auth.authorization(req.subject, req.scopes) : undefined;
      const headers: Record<string, string> = { 'user-agent': this.options.userAgent, ...req.headers };
      if (authorization) headers.authorization = authorization;
      let res: HttpResponse;
      try {
        res = await requestRetrying(url, () => ({ method: req.method, headers, body: req.body?.() }), this.options.retry);
      } catch (err) {
        throw new RegistryError('REGISTRY_FAILED', req.subject, unreachableAdvice(req.method, url, err), { cause: err });
      }
      if (req.ok.includes(res.status)) return res;
      if (res.status === 401 && round === 1 && sameOrigin) {
        await res.discard();
        if (await this.options.auth.challenged(registry, res.header('www-authenticate'))) continue;
      }
      throw await this.statusError(req, url, res);
    }
  }

  private async statusError(req: RegistryRequest, url: string, res: HttpResponse): Promise<RegistryError> {
    const { registry } = req.subject;
    const said = req.method === 'HEAD' ? '' : await registryErrors(res);
    const detail = said ? ` (${said})` : '';
    if (res.status === 401 || res.status === 403) {
      const lookup = await this.options.auth.credentials(registry);
      const action = req.scopes.some((s) => s.endsWith(':push') || s.includes(',push')) ? 'push to' : 'pull from';
      const what = res.status === 403 ? `denied: you may not ${action} this repository${detail}` : `denied${detail}`;
      return new RegistryError('REGISTRY_DENIED', req.subject, deniedAdvice(registry, lookup, what));
    }
    if (res.status === 404) {
      return new RegistryError('REGISTRY_NOT_FOUND', req.subject, `not found${detail}: check the repository name${req.subject.object?.startsWith('manifest') ? ', the tag' : ''} and that it was pushed`);
    }
    const transient = isRetryableStatus(res.status);
    const retried = transient && this.options.retry.attempts > 1 ? `, still after ${this.options.retry.attempts} tries` : '';
    const advice = transient ? '; the registry is overloaded or down, try again later' : '';
    return new RegistryError('REGISTRY_FAILED', req.subject, `${req.method} ${url} answered ${res.status} ${res.statusText}${detail}${retried}${advice}`);
  }
}

/** The registry's own error list (`{"errors":[{"code","message"}]}`), shortened, or the start of the body. */
async function registryErrors(res: HttpResponse): Promise<string> {
  const text = await res.text().catch(() => '');
  try {
    const parsed = JSON.parse(text) as { errors?: Array<{ code?: string; message?: string }> };
    if (Array.isArray(parsed.errors)) return parsed.errors.map((e) => [e.code, e.message].filter(Boolean).join(': ')).join('; ');
  } catch {
    // not JSON: fall through
  }
  return text.trim().slice(0, 200);
}

function unreachableAdvice(method: string, url: string, err: unknown): string {
  const why = causeText(err);
  let hint = '';
  if (/ECONNREFUSED/.test(why)) hint = '; is the registry running, and is the host and port right?';
  else if (url.startsWith('https:') && /EPROTO|wrong version number|SSL/i.test(why)) {
    hint = '; if this registry speaks plain HTTP, name it as an insecure registry';
  } else if (/ENOTFOUND|EAI_AGAIN/.test(why)) hint = '; check the registry host name';
  else if (/CERT|certificate/.test(why)) hint = "; the registry's TLS certificate is not trusted: if a private CA signed it, point NODE_EXTRA_CA_CERTS at that CA's certificate";
  return `${method} ${url} failed: ${why}${hint}`;
}
