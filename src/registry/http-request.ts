/**
 * One HTTP exchange on node:http / node:https, with what registry code needs
 * and nothing more. It replaces `fetch`: the first fetch in a process loads
 * undici, which costs tens of milliseconds more than node:http, and every
 * build with a registry base makes at least one request.
 *
 * What it keeps from fetch, and where it differs on purpose:
 * - Connections are kept alive and reused per origin (one agent per
 *   protocol; idle sockets do not hold the process open).
 * - Redirects are followed, at most `maxRedirects` (fetch's 20). A redirect
 *   to another origin drops `Authorization` (a blob download is sent to
 *   storage with its own signed URL). 303, and 301/302 after a POST, turn
 *   into a GET without the body; 307/308 resend it, which a stream cannot.
 * - Timeouts as undici's defaults: 10 s to connect, and 300 s without a
 *   byte in either direction (undici: 300 s for the headers, and between
 *   body chunks).
 * - Bodies are the bytes as sent: `Accept-Encoding: identity` is asked for
 *   and a `Content-Encoding` is never undone, because digests are over the
 *   raw bytes (fetch decoded gzip, which breaks a blob some storage serves
 *   as `Content-Encoding: gzip`).
 * - Failures are Node's socket errors (`code` ECONNREFUSED, ECONNRESET,
 *   ENOTFOUND, a TLS code…) or an HttpRequestError with such a code; an
 *   abort rejects with the signal's reason, as fetch did.
 */
import http, { type Agent, type ClientRequest, type IncomingMessage, type OutgoingHttpHeaders } from 'node:http';
import { createRequire } from 'node:module';
import { PassThrough, type Readable } from 'node:stream';

export type HttpBody = string | Uint8Array | Readable | AsyncIterable<Uint8Array>;

export interface HttpRequestOptions {
  /** Default GET. */
  method?: string;
  /** Names in any case. `Content-Length` is set for a string or byte body; give it for a stream to avoid chunked encoding. */
  headers?: Record<string, string>;
  /** A stream is sent as it is read, never held in memory whole; it can be sent once only. */
  body?: HttpBody;
  signal?: AbortSignal;
  /** Default 20, as fetch. */
  maxRedirects?: number;
  /** Default 10 s. */
  connectTimeoutMs?: number;
  /** Longest silence (nothing sent, nothing received) before giving up; default 300 s. */
  idleTimeoutMs?: number;
}

export interface HttpResponse {
  status: number;
  statusText: string;
  /** The URL that answered, after redirects. */
  url: string;
  /** A response header by name, in any case; repeated headers joined by `, `. */
  header(name: string): string | undefined;
  /**
   * The raw body. A broken connection errors it (ECONNRESET, ETIMEDOUT, the
   * signal's reason); readers that use `for await` or `pipeline` see that, a
   * bare 'data' listener does not.
   */
  body: Readable;
  buffer(): Promise<Buffer>;
  text(): Promise<string>;
  json(): Promise<unknown>;
  /** Drops the rest of the body: a short one is read so the connection can be reused. Never rejects. */
  discard(): Promise<void>;
}

/** A failure this module names itself; `code` follows Node's (ETIMEDOUT, ECONNRESET) where one fits. */
export class HttpRequestError extends Error {
  constructor(
    readonly code: 'ETIMEDOUT' | 'ECONNRESET' | 'ERR_TOO_MANY_REDIRECTS' | 'ERR_REDIRECT',
    message: string,
  ) {
    super(message);
    this.name = 'HttpRequestError';
  }
}

/** Sends one request, following redirects; resolves once the answer's headers are in. */
export async function httpRequest(url: string | URL, options: HttpRequestOptions = {}): Promise<HttpResponse> {
  const signal = options.signal;
  signal?.throwIfAborted();
  const maxRedirects = options.maxRedirects ?? 20;
  let target = new URL(url);
  let method = (options.method ?? 'GET').toUpperCase();
  let headers = lowerCased(options.headers ?? {});
  headers['accept-encoding'] ??= 'identity';
  let body = options.body;
  for (let redirects = 0; ; redirects++) {
    const res = await exchange(target, method, headers, body, options, signal);
    const location = res.headers.location;
    if (!REDIRECT_STATUS.has(res.statusCode ?? 0) || location === undefined) return wrapResponse(res, target, signal);
    res.on('error', () => {}).resume();
    if (redirects >= maxRedirects) {
      throw new HttpRequestError('ERR_TOO_MANY_REDIRECTS', `more than ${maxRedirects} redirects, the last from ${target.href} to ${location}`);
    }
    const next = parseLocation(location, target);
    if (res.statusCode === 303 ? method !== 'HEAD' : (res.statusCode === 301 || res.statusCode === 302) && method === 'POST') {
      method = 'GET';
      body = undefined;
      headers = withoutBodyHeaders(headers);
    } else if (body !== undefined && !replayable(body)) {
      throw new HttpRequestError('ERR_REDIRECT', `${method} ${target.href} was redirected (${res.statusCode}) to ${next.href}, but its streamed body cannot be sent again`);
    }
    // Credentials are for the origin they were meant for; storage behind a redirect has its own (a signed URL).
    if (next.origin !== target.origin) delete headers.authorization;
    target = next;
  }
}

const REDIRECT_STATUS = new Set([301, 302, 303, 307, 308]);
const CONNECT_TIMEOUT_MS = 10_000;
const IDLE_TIMEOUT_MS = 300_000;
/** Longer bodies are dropped by closing the connection rather than read to the end. */
const DRAIN_LIMIT = 256 * 1024;

/** Idle sockets close after 4 s, as undici's do: a server closing an idle socket as we reuse it costs a retry. */
const AGENT_OPTIONS = { keepAlive: true, timeout: 4_000 };

interface Transport {
  request: typeof http.request;
  agent: Agent;
}
let plain: Transport | undefined;
let secure: Transport | undefined;

/**
 * node:https (and with it tls, a few ms) is loaded only once a registry
 * speaks it. By require, not import(): the CLI's bundle runs as a script,
 * which has no loader for import().
 */
function transportFor(protocol: string): Transport {
  if (protocol !== 'https:') return (plain ??= { request: http.request, agent: new http.Agent(AGENT_OPTIONS) });
  if (!secure) {
    const https = createRequire(import.meta.url)('node:https') as typeof import('node:https');
    secure = { request: https.request, agent: new https.Agent(AGENT_OPTIONS) };
  }
  return secure;
}

/** One request, no redirects: resolves with the answer's head, or rejects with why there is none. */
async function exchange(
  url: URL,
  method: string,
  headers: Record<string, string>,
  body: HttpBody | undefined,
  options: HttpRequestOptions,
  signal: AbortSignal | undefined,
): Promise<IncomingMessage> {
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new HttpRequestError('ERR_REDIRECT', `cannot request ${url.href}: only http and https are spoken`);
  }
  const { request, agent } = transportFor(url.protocol);
  const sent: OutgoingHttpHeaders = { ...headers };
  if (typeof body === 'string' || body instanceof Uint8Array) sent['content-length'] ??= String(Buffer.byteLength(body));
  const where = url.host;
  return new Promise<IncomingMessage>((resolve, reject) => {
    const req = request(url, { method, headers: sent, agent, timeout: options.idleTimeoutMs ?? IDLE_TIMEOUT_MS });
    // A stream that says its length must keep to it: the server would read a short or long body as the next request.
    // (Node ≥ 18.10; @types/node does not declare it.)
    (req as ClientRequest & { strictContentLength: boolean }).strictContentLength = true;
    let response: IncomingMessage | undefined;
    // Before the answer a failure rejects; after it, it ends the answer's body.
    const fail = (err: Error) => {
      if (response) response.destroy(err);
      else reject(err);
      req.destroy(err);
    };
    req.on('error', (err) => response || reject(clearer(err, where, 'before answering')));
    req.on('timeout', () => fail(new HttpRequestError('ETIMEDOUT', `${where} sent nothing for ${(options.idleTimeoutMs ?? IDLE_TIMEOUT_MS) / 1000} s (ETIMEDOUT)`)));
    req.on('socket', (socket) => {
      if (!socket.connecting) return;
      const ms = options.connectTimeoutMs ?? CONNECT_TIMEOUT_MS;
      const timer = setTimeout(() => fail(new HttpRequestError('ETIMEDOUT', `connect ETIMEDOUT ${where} (no connection within ${ms / 1000} s)`)), ms);
      socket.once(url.protocol === 'https:' ? 'secureConnect' : 'connect', () => clearTimeout(timer));
      socket.once('close', () => clearTimeout(timer));
    });
    const onAbort = () => fail(signal!.reason as Error);
    signal?.addEventListener('abort', onAbort, { once: true });
    req.on('response', (res) => {
      response = res;
      // From here the response watches the signal (wrapResponse).
      signal?.removeEventListener('abort', onAbort);
      // An answer that came before the whole body was sent (a 401 to an upload) ends the upload.
      res.on('close', () => req.writableFinished || req.destroy());
      resolve(res);
    });
    req.on('close', () => signal?.removeEventListener('abort', onAbort));
    void sendBody(req, body);
  });
}

async function sendBody(req: ClientRequest, body: HttpBody | undefined): Promise<void> {
  if (body === undefined || typeof body === 'string' || body instanceof Uint8Array) {
    req.end(body);
    return;
  }
  try {
    for await (const chunk of body) {
      if (req.destroyed) return;
      if (!req.write(chunk)) await drained(req);
    }
    if (!req.destroyed) req.end();
  } catch (err) {
    req.destroy(err as Error);
  }
}

function drained(req: ClientRequest): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      req.off('drain', done);
      req.off('close', done);
      resolve();
    };
    req.on('drain', done);
    req.on('close', done);
  });
}

function wrapResponse(res: IncomingMessage, url: URL, signal: AbortSignal | undefined): HttpResponse {
  const declared = Number(res.headers['content-length'] ?? NaN);
  const body = new PassThrough();
  // A body nobody reads yet must not crash the process when its connection breaks; readers still see the error.
  body.on('error', () => {});
  let received = 0;
  res.on('data', (chunk: Buffer) => {
    received += chunk.length;
    if (!body.write(chunk)) res.pause();
  });
  body.on('drain', () => res.resume());
  res.on('end', () => body.end());
  res.on('error', (err) => {
    const of = Number.isFinite(declared) ? ` of ${declared}` : '';
    body.destroy(err === signal?.reason ? err : clearer(err, url.host, `after ${received}${of} bytes of the answer`));
  });
  // A reader that stops early (a digest mismatch, an abort) lets the connection go.
  body.on('close', () => res.complete || res.destroy());
  const onAbort = () => res.destroy(signal!.reason as Error);
  signal?.addEventListener('abort', onAbort, { once: true });
  res.on('close', () => signal?.removeEventListener('abort', onAbort));

  const buffer = async () => {
    const chunks: Buffer[] = [];
    for await (const chunk of body) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks);
  };
  return {
    status: res.statusCode ?? 0,
    statusText: res.statusMessage ?? '',
    url: url.href,
    header: (name) => {
      const value = res.headers[name.toLowerCase()];
      return Array.isArray(value) ? value.join(', ') : value;
    },
    body,
    buffer,
    text: async () => (await buffer()).toString('utf8'),
    json: async () => JSON.parse((await buffer()).toString('utf8')) as unknown,
    discard: () => discard(res, body, declared),
  };
}

function discard(res: IncomingMessage, body: PassThrough, declared: number): Promise<void> {
  if (body.destroyed || body.readableEnded) return Promise.resolve();
  return new Promise((resolve) => {
    body.once('close', () => resolve());
    if (res.complete || declared <= DRAIN_LIMIT) body.resume();
    else body.destroy();
  });
}

/**
 * Node's words for a closed connection ("socket hang up", "aborted") say
 * little; these say who closed it and when, keeping the code retries look at.
 */
function clearer(err: Error, host: string, when: string): Error {
  const code = (err as { code?: unknown }).code;
  if (code === 'ECONNRESET' && (err.message === 'socket hang up' || err.message === 'aborted')) {
    return new HttpRequestError('ECONNRESET', `${host} closed the connection ${when} (ECONNRESET)`);
  }
  return err;
}

function parseLocation(location: string, base: URL): URL {
  try {
    return new URL(location, base);
  } catch {
    throw new HttpRequestError('ERR_REDIRECT', `${base.href} redirected to ${JSON.stringify(location)}, which is not a URL`);
  }
}

function replayable(body: HttpBody): boolean {
  return typeof body === 'string' || body instanceof Uint8Array;
}

function lowerCased(headers: Record<string, string>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) out[name.toLowerCase()] = value;
  return out;
}

/** What describes a body that a GET after a 303 no longer has. */
function withoutBodyHeaders(headers: Record<string, string>): Record<string, string> {
  const out = { ...headers };
  for (const name of ['content-length', 'content-type', 'content-encoding', 'content-language', 'content-location', 'transfer-encoding']) delete out[name];
  return out;
}
