/**
 * A real registry for tests: Debian's `docker-registry` (distribution 2.8),
 * started on 127.0.0.1 with a free port and a config this helper writes
 * (never the package's default, which listens on all interfaces). Three
 * setups: no auth, htpasswd basic auth, and token auth against a small token
 * server run here, which signs RS256 JWTs with a key and self-signed
 * certificate made by openssl; the certificate travels in the JWT's `x5c`
 * header, which distribution 2.8 checks against its `rootcertbundle`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, createSign, randomBytes, X509Certificate } from 'node:crypto';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import { tool } from './tools.js';

export interface TestRegistry {
  /** `127.0.0.1:<port>`, as written in references. */
  host: string;
  /** Where the registry keeps blobs and repositories. */
  storage: string;
  /** Token server requests seen (token auth only). */
  tokenRequests: Array<{ scopes: string[]; user: string | undefined }>;
  stop(): Promise<void>;
}

export type RegistryAuthSetup =
  | { kind: 'none' }
  | { kind: 'htpasswd'; user: string; password: string }
  | { kind: 'token'; user: string; password: string };

/** A port free right now on 127.0.0.1. */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as net.AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Starts a registry with its config and storage under `dir`; resolves once /v2/ answers. */
export async function startRegistry(dir: string, auth: RegistryAuthSetup): Promise<TestRegistry> {
  await mkdir(dir, { recursive: true });
  const port = await freePort();
  const storage = path.join(dir, 'storage');
  const tokenRequests: TestRegistry['tokenRequests'] = [];
  let authYaml = '';
  let tokenServer: http.Server | undefined;
  if (auth.kind === 'htpasswd') {
    const line = await tool('htpasswd', ['-Bbn', auth.user, auth.password]);
    await writeFile(path.join(dir, 'htpasswd'), line.trim() + '\n');
    authYaml = `auth:\n  htpasswd:\n    realm: test-realm\n    path: ${path.join(dir, 'htpasswd')}\n`;
  } else if (auth.kind === 'token') {
    const keyFile = path.join(dir, 'token-key.pem');
    const certFile = path.join(dir, 'token-cert.pem');
    await tool('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '1', '-subj', '/CN=layergraph-test-token-issuer']);
    const signer = { key: await readFile(keyFile, 'utf8'), cert: new X509Certificate(await readFile(certFile)) };
    const tokenPort = await freePort();
    tokenServer = startTokenServer(tokenPort, signer, auth, tokenRequests);
    authYaml =
      `auth:\n  token:\n    realm: http://127.0.0.1:${tokenPort}/token\n    service: test-registry\n` +
      `    issuer: test-issuer\n    rootcertbundle: ${certFile}\n`;
  }
  const config = path.join(dir, 'config.yml');
  await writeFile(
    config,
    `version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n` +
      `storage:\n  filesystem:\n    rootdirectory: ${storage}\n  delete:\n    enabled: true\n  maintenance:\n    uploadpurging:\n      enabled: false\n` +
      `http:\n  addr: 127.0.0.1:${port}\n  secret: ${randomBytes(16).toString('hex')}\n` +
      authYaml,
  );
  const child = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (stderr = (stderr + d).slice(-4000)));
  const host = `127.0.0.1:${port}`;
  try {
    await waitForRegistry(host, child, () => stderr);
  } catch (err) {
    child.kill('SIGKILL');
    tokenServer?.close();
    throw err;
  }
  return {
    host,
    storage,
    tokenRequests,
    async stop() {
      tokenServer?.closeAllConnections();
      tokenServer?.close();
      await stopChild(child);
    },
  };
}

/** The registry's file holding a blob's bytes (distribution's filesystem layout). */
export function blobDataPath(storage: string, digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return path.join(storage, 'docker', 'registry', 'v2', 'blobs', 'sha256', hex.slice(0, 2), hex, 'data');
}

async function waitForRegistry(host: string, child: ChildProcess, stderr: () => string): Promise<void> {
  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`docker-registry exited with ${child.exitCode}: ${stderr()}`);
    try {
      const res = await fetch(`http://${host}/v2/`);
      await res.body?.cancel();
      if (res.status === 200 || res.status === 401) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`docker-registry did not answer on ${host}: ${stderr()}`);
}

async function stopChild(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

/**
 * The token server: checks basic auth against the one user (anonymous gets
 * pull only), and grants the scopes asked for in an RS256 JWT.
 */
function startTokenServer(
  port: number,
  signer: { key: string; cert: X509Certificate },
  auth: { user: string; password: string },
  seen: TestRegistry['tokenRequests'],
): http.Server {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', `http://127.0.0.1:${port}`);
    const scopes = url.searchParams.getAll('scope');
    let user: string | undefined;
    const header = req.headers.authorization;
    if (header?.startsWith('Basic ')) {
      const [u, p] = Buffer.from(header.slice(6), 'base64').toString('utf8').split(/:(.*)/s);
      if (u !== auth.user || p !== auth.password) {
        res.writeHead(401, { 'content-type': 'application/json' }).end('{"details":"wrong user name or password"}');
        return;
      }
      user = u;
    }
    seen.push({ scopes, user });
    const access = scopes.map((s) => {
      const [type, name, actions] = s.split(':') as [string, string, string];
      const granted = actions.split(',').filter((a) => user !== undefined || a === 'pull');
      return { type, name, actions: granted };
    });
    const token = signJwt(signer, {
      iss: 'test-issuer',
      sub: user ?? '',
      aud: url.searchParams.get('service') ?? '',
      exp: Math.floor(Date.now() / 1000) + 300,
      nbf: Math.floor(Date.now() / 1000) - 10,
      iat: Math.floor(Date.now() / 1000),
      jti: randomBytes(8).toString('hex'),
      access,
    });
    // `access_token` is what OAuth2 servers call it; send both, as Docker Hub does.
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ token, access_token: token, expires_in: 300 }));
  });
  server.listen(port, '127.0.0.1');
  return server;
}

function signJwt(signer: { key: string; cert: X509Certificate }, claims: object): string {
  const b64url = (b: Buffer | string) => Buffer.from(b).toString('base64url');
  const header = { typ: 'JWT', alg: 'RS256', x5c: [signer.cert.raw.toString('base64')] };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = createSign('RSA-SHA256').update(input).sign(signer.key);
  return `${input}.${b64url(signature)}`;
}

/** sha256 of bytes, as a digest. */
export function digestOf(bytes: Uint8Array): string {
  return `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
}
