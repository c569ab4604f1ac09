/**
 * When and how long to wait before asking a registry again. Retried: 429,
 * 5xx answers that may pass (500, 502, 503, 504), and connections that broke
 * or timed out. Waits grow exponentially with full jitter (so many clients
 * failing together do not come back together), and a `Retry-After` the
 * registry sends is honoured up to a cap. Never retried: anything about the
 * content itself, such as a digest mismatch.
 */
import { httpRequest, type HttpRequestOptions, type HttpResponse } from './http-request.js';

export interface RetryPolicy {
  /** Tries in all, the first included. */
  attempts: number;
  /** Upper bound of the first wait; doubles each time. */
  baseDelayMs: number;
  /** No wait is longer, whatever the attempt or `Retry-After` says. */
  maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { attempts: 4, baseDelayMs: 500, maxDelayMs: 20_000 };

const RETRY_STATUS = new Set([429, 500, 502, 503, 504]);
// A refused connection is not here: nothing listens, and waiting will not change that soon.
const RETRY_CODES = new Set(['ECONNRESET', 'ETIMEDOUT', 'EPIPE', 'EAI_AGAIN']);

/** How long to wait before try number `attempt + 1` (attempt counts from 1); `retryAfter` is the header, if any. */
export function retryDelayMs(attempt: number, policy: RetryPolicy, retryAfter?: string | null): number {
  const asked = retryAfter ? retryAfterMs(retryAfter) : undefined;
  if (asked !== undefined) return Math.min(asked, policy.maxDelayMs);
  const ceiling = Math.min(policy.maxDelayMs, policy.baseDelayMs * 2 ** (attempt - 1));
  return Math.round(Math.random() * ceiling);
}

export function isRetryableStatus(status: number): boolean {
  return RETRY_STATUS.has(status);
}

/** A broken or timed-out connection; the socket's error may be wrapped in `cause`. */
export function isRetryableNetworkError(err: unknown): boolean {
  for (let e = err as { code?: unknown; cause?: unknown } | undefined, depth = 0; e && depth < 5; e = e.cause as typeof e, depth++) {
    if (typeof e.code === 'string' && RETRY_CODES.has(e.code)) return true;
    if (e instanceof Error && e.name === 'TimeoutError') return true;
  }
  return false;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** `Retry-After`: seconds, or an HTTP date. */
function retryAfterMs(value: string): number | undefined {
  if (/^\s*\d+\s*$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isNaN(at) ? undefined : Math.max(0, at - Date.now());
}

/**
 * One request with the retries above, for requests with no auth dance (a
 * token realm). `options` is called per try, so a body stream can be made
 * afresh. Returns the last answer, even a failing one; throws the last
 * network error.
 */
export async function requestRetrying(url: string, options: () => HttpRequestOptions, policy: RetryPolicy): Promise<HttpResponse> {
  for (let attempt = 1; ; attempt++) {
    let res: HttpResponse;
    try {
      res = await httpRequest(url, options());
    } catch (err) {
      if (attempt >= policy.attempts || !isRetryableNetworkError(err)) throw err;
      await sleep(retryDelayMs(attempt, policy));
      continue;
    }
    if (attempt >= policy.attempts || !isRetryableStatus(res.status)) return res;
    await res.discard();
    await sleep(retryDelayMs(attempt, policy, res.header('retry-after')));
  }
}
