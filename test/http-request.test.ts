/**
 * The registry's HTTP client (node:http, not fetch) against small node:http
 * servers each test starts: headers, keep-alive, redirects and the
 * credentials they must not carry, streamed uploads, aborts, broken and
 * silent connections, TLS verification. Last, a real pull through the
 * registry client in a fresh node process, which must never load undici
 * (the point of not using fetch: start-up time).
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import https from 'node:https';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { build } from 'esbuild';
import { afterEach, describe, expect, it } from 'vitest';
import { ContentStore } from '../src/cache/content-store.js';
import { MEDIA_TYPE_MANIFEST } from '../src/oci/media-types.js';
import { RegistryClient } from '../src/registry/client.js';
import { HttpRequestError, httpRequest } from '../src/registry/http-request.js';
import { isRetryableNetworkError, requestRetrying } from '../src/registry/retry.js';
import { REPO } from './helpers/cli.js';
import { freePort, startRegistry } from './helpers/registry.js';
import { useTmpDirs } from './helpers/tmp.js';
import { hasTool, tool } from './helpers/tools.js';

const tmpDir = useTmpDirs();

interface SeenRequest {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
}

interface TestServer {
  /** `http://127.0.0.1:<port>` */
  origin: string;
  host: string;
  /** TCP connections accepted so far. */
  connections: number;
  requests: SeenRequest[];
}

const servers: Array<http.Server | https.Server> = [];
afterEach(async () => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

async function serve(handler: http.RequestListener, tls?: { key: string; cert: string }): Promise<TestServer> {
  const state: TestServer = { origin: '', host: '', connections: 0, requests: [] };
  const listener: http.RequestListener = (req, res) => {
    state.requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers });
    handler(req, res);
  };
  const server = tls ? https.createServer(tls, listener) : http.createServer(listener);
  server.on(tls ? 'secureConnection' : 'connection', () => state.connections++);
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  state.host = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  state.origin = `${tls ? 'https' : 'http'}://${state.host}`;
  return state;
}

/** Reads the whole request body, then answers `status` with `body`. */
function answer(status: number, body: string, headers: http.OutgoingHttpHeaders = {}): http.RequestListener {
  return (req, res) => {
    req.resume();
    // With a length, as registries send it: a node:http server answering HEAD without one closes the connection.
    const framed = { 'content-length': Buffer.byteLength(body), ...headers };
    req.on('end', () => res.writeHead(status, framed).end(req.method === 'HEAD' ? undefined : body));
  };
}

async function failure(promise: Promise<unknown>): Promise<Error & { code?: string }> {
  return promise.then(
    () => {
      throw new Error('expected a failure');
    },
    (err: unknown) => err as Error & { code?: string },
  );
}

describe('httpRequest', () => {
  it('looks headers up in any case, asks for no encoding, and hands gzip bytes over as they came', async () => {
    const gz = gzipSync('layer bytes');
    const gzServer = await serve((req, res) => {
      req.resume();
      res.writeHead(200, { 'X-Registry-Thing': 'yes', 'Content-Encoding': 'gzip', 'Content-Type': 'application/octet-stream' }).end(gz);
    });
    const res = await httpRequest(`${gzServer.origin}/blob`, { headers: { 'User-Agent': 'layergraph-test', Accept: '*/*' } });
    expect(res.status).toBe(200);
    expect(res.statusText).toBe('OK');
    expect(res.header('x-registry-thing')).toBe('yes');
    expect(res.header('X-REGISTRY-THING')).toBe('yes');
    expect(res.header('content-encoding')).toBe('gzip');
    expect(res.header('missing')).toBeUndefined();
    expect(await res.buffer()).toEqual(gz);
    const seen = gzServer.requests[0]!;
    expect(seen.headers['accept-encoding']).toBe('identity');
    expect(seen.headers['user-agent']).toBe('layergraph-test');
    expect(seen.headers.accept).toBe('*/*');
  });

  it('reuses one connection for requests one after another, including after discarding a body', async () => {
    const server = await serve(answer(200, '{"a":1}', { 'content-type': 'application/json' }));
    expect(await (await httpRequest(`${server.origin}/one`)).json()).toEqual({ a: 1 });
    await (await httpRequest(`${server.origin}/two`)).discard();
    expect(await (await httpRequest(`${server.origin}/three`, { method: 'HEAD' })).text()).toBe('');
    expect(await (await httpRequest(`${server.origin}/four`, { method: 'PUT', body: 'x' })).text()).toBe('{"a":1}');
    expect(server.requests.map((r) => `${r.method} ${r.url}`)).toEqual(['GET /one', 'GET /two', 'HEAD /three', 'PUT /four']);
    expect(server.connections).toBe(1);
  });

  it('follows a redirect to storage on another origin without the Authorization header, and keeps it on the same origin', async () => {
    const storage = await serve(answer(200, 'blob bytes'));
    const registry = await serve((req, res) => {
      req.resume();
      if (req.url === '/v2/app/blobs/sha256:1') res.writeHead(307, { location: '/v2/app/blobs/sha256:1/here' }).end();
      else if (req.url === '/v2/app/blobs/sha256:1/here') res.writeHead(307, { location: `${storage.origin}/signed?sig=abc` }).end();
      else res.writeHead(404).end();
    });
    const res = await httpRequest(`${registry.origin}/v2/app/blobs/sha256:1`, { headers: { Authorization: 'Bearer secret', 'user-agent': 'layergraph' } });
    expect(res.status).toBe(200);
    expect(res.url).toBe(`${storage.origin}/signed?sig=abc`);
    expect(await res.text()).toBe('blob bytes');
    expect(registry.requests.map((r) => r.headers.authorization)).toEqual(['Bearer secret', 'Bearer secret']);
    expect(storage.requests).toHaveLength(1);
    expect(storage.requests[0]!.headers.authorization).toBeUndefined();
    expect(storage.requests[0]!.headers['user-agent']).toBe('layergraph');
  });

  it('turns a POST answered 303 into a GET without the body, resends a byte body on 307, and refuses to resend a stream', async () => {
    const target = await serve((req, res) => {
      let body = '';
      req.setEncoding('utf8').on('data', (d: string) => (body += d));
      req.on('end', () => res.writeHead(200).end(`${req.method} ${body} ${req.headers['content-type'] ?? '-'}`));
    });
    const redirector = await serve((req, res) => {
      req.resume();
      req.on('end', () => res.writeHead(req.url === '/see-other' ? 303 : 307, { location: `${target.origin}/there` }).end());
    });
    const posted = await httpRequest(`${redirector.origin}/see-other`, { method: 'POST', body: 'form=1', headers: { 'content-type': 'application/x-www-form-urlencoded' } });
    expect(await posted.text()).toBe('GET  -');
    const put = await httpRequest(`${redirector.origin}/temporary`, { method: 'PUT', body: Buffer.from('bytes'), headers: { 'content-type': 'text/plain' } });
    expect(await put.text()).toBe('PUT bytes text/plain');

    async function* stream() {
      yield Buffer.from('streamed');
    }
    const err = await failure(httpRequest(`${redirector.origin}/temporary`, { method: 'PUT', body: stream() }));
    expect(err).toBeInstanceOf(HttpRequestError);
    expect(err.code).toBe('ERR_REDIRECT');
    expect(err.message).toBe(`PUT ${redirector.origin}/temporary was redirected (307) to ${target.origin}/there, but its streamed body cannot be sent again`);
  });

  it('stops after the redirect limit', async () => {
    const loop = await serve((req, res) => {
      req.resume();
      res.writeHead(302, { location: '/again' }).end();
    });
    const err = await failure(httpRequest(`${loop.origin}/start`, { maxRedirects: 3 }));
    expect(err.code).toBe('ERR_TOO_MANY_REDIRECTS');
    expect(err.message).toBe(`more than 3 redirects, the last from ${loop.origin}/again to /again`);
    expect(loop.requests).toHaveLength(4);
    expect(isRetryableNetworkError(err)).toBe(false);
  });

  it('streams an upload as it is read: what was made never runs far ahead of what the server has', async () => {
    const chunk = Buffer.alloc(1 << 20, 7);
    const total = 256;
    let received = 0;
    const server = await serve((req, res) => {
      req.on('data', (d: Buffer) => (received += d.length));
      req.on('end', () => res.writeHead(201).end(String(received)));
    });
    let made = 0;
    let furthestAhead = 0;
    async function* layer() {
      for (let i = 0; i < total; i++) {
        furthestAhead = Math.max(furthestAhead, made - received);
        made += chunk.length;
        yield chunk;
      }
    }
    const res = await httpRequest(`${server.origin}/upload`, { method: 'PUT', body: layer(), headers: { 'content-length': String(total * chunk.length) } });
    expect(res.status).toBe(201);
    expect(await res.text()).toBe(String(total * chunk.length));
    // Socket buffers hold some MiB; a client that collected the body first would be all 256 MiB ahead.
    expect(furthestAhead).toBeLessThan(64 << 20);
    expect(server.requests[0]!.headers['content-length']).toBe(String(total * chunk.length));
    expect(server.requests[0]!.headers['transfer-encoding']).toBeUndefined();
  });

  it('refuses a stream longer or shorter than the Content-Length it declared', async () => {
    const server = await serve(answer(201, ''));
    async function* bytes(n: number) {
      yield Buffer.alloc(n);
    }
    for (const n of [5, 20]) {
      const err = await failure(httpRequest(`${server.origin}/upload`, { method: 'PUT', body: bytes(n), headers: { 'content-length': '10' } }));
      expect(err.code).toBe('ERR_HTTP_CONTENT_LENGTH_MISMATCH');
    }
  });

  it('aborts while waiting for the answer and while reading the body, with the signal’s reason', async () => {
    const server = await serve((req, res) => {
      req.resume();
      if (req.url === '/slow-body') res.writeHead(200, { 'content-length': '100' }).write('x'.repeat(10));
      // else: never answers
    });
    const waiting = new AbortController();
    const pending = httpRequest(`${server.origin}/never`, { signal: waiting.signal });
    while (server.requests.length === 0) await new Promise((r) => setTimeout(r, 5));
    waiting.abort();
    const err = await failure(pending);
    expect(err.name).toBe('AbortError');
    expect(err).toBe(waiting.signal.reason);

    const reading = new AbortController();
    const res = await httpRequest(`${server.origin}/slow-body`, { signal: reading.signal });
    const body = res.buffer();
    reading.abort();
    expect(await failure(body)).toBe(reading.signal.reason);

    const already = new AbortController();
    already.abort();
    expect((await failure(httpRequest(`${server.origin}/never`, { signal: already.signal }))).name).toBe('AbortError');
  });

  it('reports a connection reset before the answer and in the body as retryable, and a refused one as not', async () => {
    const server = await serve((req, res) => {
      req.resume();
      if (req.url === '/reset') req.socket.destroy();
      else {
        res.writeHead(200, { 'content-length': '1000' }).write('y'.repeat(100), () => setTimeout(() => req.socket.destroy(), 20));
      }
    });
    const early = await failure(httpRequest(`${server.origin}/reset`));
    expect(early.code).toBe('ECONNRESET');
    expect(early.message).toBe(`${server.host} closed the connection before answering (ECONNRESET)`);
    expect(isRetryableNetworkError(early)).toBe(true);

    const res = await httpRequest(`${server.origin}/cut`);
    const late = await failure(res.buffer());
    expect(late.code).toBe('ECONNRESET');
    expect(late.message).toBe(`${server.host} closed the connection after 100 of 1000 bytes of the answer (ECONNRESET)`);
    expect(isRetryableNetworkError(late)).toBe(true);

    const port = await freePort();
    const refused = await failure(httpRequest(`http://127.0.0.1:${port}/v2/`));
    expect(refused.code).toBe('ECONNREFUSED');
    expect(refused.message).toBe(`connect ECONNREFUSED 127.0.0.1:${port}`);
    expect(isRetryableNetworkError(refused)).toBe(false);
  });

  it('is retried after a reset by requestRetrying, and gives the answer of the try that worked', async () => {
    let tries = 0;
    const server = await serve((req, res) => {
      req.resume();
      if (++tries === 1) req.socket.destroy();
      else res.writeHead(200).end('second time');
    });
    const res = await requestRetrying(`${server.origin}/v2/`, () => ({ method: 'GET' }), { attempts: 3, baseDelayMs: 1, maxDelayMs: 5 });
    expect(await res.text()).toBe('second time');
    expect(tries).toBe(2);
  });

  it('gives up on a server that goes silent, as a retryable timeout', async () => {
    const server = await serve((req, res) => {
      req.resume();
      if (req.url === '/half') res.writeHead(200, { 'content-length': '10' }).write('12345');
    });
    const silent = await failure(httpRequest(`${server.origin}/nothing`, { idleTimeoutMs: 100 }));
    expect(silent.code).toBe('ETIMEDOUT');
    expect(silent.message).toBe(`${server.host} sent nothing for 0.1 s (ETIMEDOUT)`);
    expect(isRetryableNetworkError(silent)).toBe(true);

    const res = await httpRequest(`${server.origin}/half`, { idleTimeoutMs: 100 });
    const stalled = await failure(res.text());
    expect(stalled.code).toBe('ETIMEDOUT');
    expect(isRetryableNetworkError(stalled)).toBe(true);
  });

  it.skipIf(!hasTool('openssl'))('verifies TLS certificates: a self-signed one is refused', async () => {
    const dir = await tmpDir();
    const [keyFile, certFile] = [path.join(dir, 'key.pem'), path.join(dir, 'cert.pem')];
    await tool('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=127.0.0.1', '-addext', 'subjectAltName=IP:127.0.0.1']);
    const server = await serve(answer(200, 'secret'), { key: await readFile(keyFile, 'utf8'), cert: await readFile(certFile, 'utf8') });
    const err = await failure(httpRequest(`${server.origin}/v2/`));
    expect(err.code).toBe('DEPTH_ZERO_SELF_SIGNED_CERT');
    expect(isRetryableNetworkError(err)).toBe(false);
    expect(server.requests).toEqual([]);
  });
});

describe('the registry client on this transport', () => {
  it('downloads a blob the registry redirects to storage: credentials go to the registry only, the bytes are checked', async () => {
    const bytes = gzipSync('layer');
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    const storage = await serve((req, res) => {
      req.resume();
      res.writeHead(200, { 'content-length': bytes.length }).end(bytes);
    });
    const registry = await serve((req, res) => {
      req.resume();
      if (!req.headers.authorization) res.writeHead(401, { 'www-authenticate': 'Basic realm="test"', 'content-length': 0 }).end();
      else res.writeHead(307, { location: `${storage.origin}/signed/${digest}?sig=1`, 'content-length': 0 }).end();
    });
    const dir = await tmpDir();
    const auth = Buffer.from('user:pass').toString('base64');
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ auths: { [registry.host]: { auth } } }));
    const client = new RegistryClient({ registryConfig: path.join(dir, 'config.json') });
    const store = new ContentStore(path.join(dir, 'store'));
    const pulled = await client.pullBlob(`${registry.host}/app`, { mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest, size: bytes.length }, store);
    expect(pulled).toEqual({ digest, size: bytes.length, downloaded: true });
    expect(await store.verify(digest)).toBe(true);
    expect(registry.requests.map((r) => r.headers.authorization)).toEqual([undefined, `Basic ${auth}`]);
    expect(storage.requests.map((r) => [r.url, r.headers.authorization])).toEqual([[`/signed/${digest}?sig=1`, undefined]]);
  });
});

describe.skipIf(!hasTool('docker-registry'))('a pull in a fresh process', () => {
  it('never loads undici', async () => {
    const dir = await tmpDir();
    const registry = await startRegistry(path.join(dir, 'registry'), { kind: 'none' });
    try {
      await writeFile(path.join(dir, 'config.json'), '{}');
      const ref = `${registry.host}/undici/check:v1`;
      await pushTinyImage(ref, path.join(dir, 'config.json'), new ContentStore(path.join(dir, 'source')));

      const script = path.join(dir, 'pull.ts');
      await writeFile(
        script,
        `import { ContentStore } from ${JSON.stringify(path.join(REPO, 'src/cache/content-store.js'))};
import { RegistryClient } from ${JSON.stringify(path.join(REPO, 'src/registry/client.js'))};
const [ref, dir] = process.argv.slice(2);
const client = new RegistryClient({ registryConfig: dir + '/config.json' });
const image = await client.resolve(ref, { os: 'linux', architecture: 'amd64' });
const store = new ContentStore(dir + '/pulled');
for (const blob of [image.config, ...image.layers]) await client.pullBlob(image.reference, blob, store);
const undici = () => process.moduleLoadList.filter((m) => m.includes('undici'));
const afterPull = undici();
new Headers(); // a fetch global: shows the check sees undici once something loads it
console.log(JSON.stringify({ afterPull, afterHeaders: undici(), layers: image.layers.length, pulled: client.transferred.pulled }));
`,
      );
      const bundle = path.join(dir, 'pull.mjs');
      await build({
        entryPoints: [script],
        bundle: true,
        platform: 'node',
        format: 'esm',
        outfile: bundle,
        logLevel: 'silent',
        // CommonJS dependencies bundled into ESM call require for node built-ins.
        banner: { js: "import { createRequire as lgCreateRequire } from 'node:module'; const require = lgCreateRequire(import.meta.url);" },
      });
      const out = JSON.parse(await runNode([bundle, ref, dir])) as { afterPull: string[]; afterHeaders: string[]; layers: number; pulled: number };
      expect(out.layers).toBe(1);
      expect(out.pulled).toBeGreaterThan(0);
      expect(out.afterPull).toEqual([]);
      expect(out.afterHeaders).toContain('NativeModule internal/deps/undici/undici');
    } finally {
      await registry.stop();
    }
  });
});

/** A manifest with a config and one layer, pushed with our own client. */
async function pushTinyImage(ref: string, registryConfig: string, store: ContentStore): Promise<void> {
  const client = new RegistryClient({ registryConfig });
  const config = await store.put(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [] } })));
  const layer = await store.put(gzipSync('not really a tar'));
  for (const blob of [config, layer]) await client.pushBlob(ref, blob.digest, blob.size, store);
  const manifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_MANIFEST,
    config: { mediaType: 'application/vnd.oci.image.config.v1+json', digest: config.digest, size: config.size },
    layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', digest: layer.digest, size: layer.size }],
  };
  await client.putManifest(ref, 'v1', Buffer.from(JSON.stringify(manifest)), MEDIA_TYPE_MANIFEST);
}

function runNode(args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => (code === 0 ? resolve(stdout) : reject(new Error(`node ${args.join(' ')} exited ${code}: ${stderr}`))));
  });
}
