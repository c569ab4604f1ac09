/**
 * Registry credentials from a Docker config file, read the way the docker CLI
 * reads them: the file is `--registry-config`, else `$DOCKER_CONFIG/config.json`,
 * else `~/.docker/config.json`. For a registry, in order:
 *
 * 1. `credHelpers[<registry>]`: run `docker-credential-<helper> get`;
 * 2. `credsStore`: the same, with the default helper;
 * 3. `auths[<registry>]`: `auth` (base64 `user:password`), or
 *    `username`/`password`, or `identitytoken`.
 *
 * A helper answering "credentials not found" means anonymous, as does a
 * missing file. Docker Hub's entries are filed under
 * `https://index.docker.io/v1/`; other keys match by host whatever scheme or
 * path they were written with.
 */
import { spawn } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { UsageError } from '../errors.js';
import { DOCKER_HUB } from './reference.js';

export interface RegistryCredentials {
  username: string;
  password: string;
  /** An OAuth2 refresh token (`identitytoken`, or a helper's `<token>` user) used in place of a password. */
  identityToken?: string;
}

export interface CredentialLookup {
  /** Undefined: anonymous. */
  credentials: RegistryCredentials | undefined;
  /** The config file looked in, for messages ("looked in …"). */
  configFile: string;
  /** Where the credentials came from: `auths`, or `docker-credential-<name>`; undefined when none. */
  source: string | undefined;
}

export interface CredentialOptions {
  /** `--registry-config <file>`. */
  configFile?: string;
  env?: NodeJS.ProcessEnv;
}

const HUB_SERVER = 'https://index.docker.io/v1/';

/** Credentials for `registry` (as written in image references, e.g. `docker.io`, `127.0.0.1:5000`). */
export async function findCredentials(registry: string, options: CredentialOptions = {}): Promise<CredentialLookup> {
  const env = options.env ?? process.env;
  const configFile = dockerConfigPath(options.configFile, env);
  const config = await readDockerConfig(configFile, options.configFile !== undefined);
  const none: CredentialLookup = { credentials: undefined, configFile, source: undefined };
  if (!config) return none;

  const helper = lookupByHost(config.credHelpers, registry) ?? config.credsStore;
  if (typeof helper === 'string' && helper) {
    const credentials = await runCredentialHelper(helper, serverUrl(registry), env);
    return { credentials, configFile, source: credentials ? `docker-credential-${helper}` : undefined };
  }
  const entry = lookupByHost(config.auths, registry);
  const credentials = entry ? fromAuthEntry(entry, registry, configFile) : undefined;
  return { credentials, configFile, source: credentials ? 'auths' : undefined };
}

/** The Docker config file to read: the flag, else `$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`. */
export function dockerConfigPath(flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (flag) return path.resolve(flag);
  if (env.DOCKER_CONFIG) return path.join(env.DOCKER_CONFIG, 'config.json');
  return path.join(env.HOME || os.homedir(), '.docker', 'config.json');
}

/**
 * Runs `docker-credential-<helper> get` with the server URL on stdin.
 * "credentials not found" (the helpers' agreed message) is anonymous; any
 * other failure is an error naming the helper.
 */
export async function runCredentialHelper(
  helper: string,
  server: string,
  env: NodeJS.ProcessEnv = process.env,
): Promise<RegistryCredentials | undefined> {
  const program = `docker-credential-${helper}`;
  const { code, stdout, stderr, spawnError } = await runProgram(program, ['get'], server, env);
  if (spawnError) {
    throw new UsageError(`credential helper ${program} for ${server} could not be started (${spawnError.message}); install it or remove it from the Docker config`);
  }
  const said = `${stdout}\n${stderr}`;
  if (code !== 0) {
    if (/credentials not found/i.test(said)) return undefined;
    throw new UsageError(`credential helper ${program} failed for ${server} (exit ${code}): ${said.trim()}`);
  }
  let parsed: { Username?: unknown; Secret?: unknown };
  try {
    parsed = JSON.parse(stdout) as typeof parsed;
  } catch {
    throw new UsageError(`credential helper ${program} printed something that is not JSON for ${server}`);
  }
  const username = typeof parsed.Username === 'string' ? parsed.Username : '';
  const secret = typeof parsed.Secret === 'string' ? parsed.Secret : '';
  if (!secret) return undefined;
  // Helpers store an identity token under the user name `<token>`.
  if (username === '<token>') return { username: '', password: '', identityToken: secret };
  return { username, password: secret };
}

interface AuthEntry {
  auth?: unknown;
  username?: unknown;
  password?: unknown;
  identitytoken?: unknown;
}

interface DockerConfig {
  auths?: Record<string, AuthEntry>;
  credHelpers?: Record<string, string>;
  credsStore?: string;
}

/** A missing file is no credentials, unless the user named it explicitly. */
async function readDockerConfig(file: string, named: boolean): Promise<DockerConfig | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT' && !named) return undefined;
    throw new UsageError(`cannot read the registry config ${file}: ${(err as Error).message}`);
  }
  try {
    const parsed = JSON.parse(text) as unknown;
    if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new Error('not a JSON object');
    return parsed as DockerConfig;
  } catch (err) {
    throw new UsageError(`the registry config ${file} is not valid JSON: ${(err as Error).message}`);
  }
}

function fromAuthEntry(entry: AuthEntry, registry: string, file: string): RegistryCredentials | undefined {
  const identityToken = typeof entry.identitytoken === 'string' && entry.identitytoken ? entry.identitytoken : undefined;
  let username = typeof entry.username === 'string' ? entry.username : '';
  let password = typeof entry.password === 'string' ? entry.password : '';
  if (typeof entry.auth === 'string' && entry.auth) {
    const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    if (colon < 0) throw new UsageError(`${file}: auths["${registry}"].auth is not base64 of "user:password"`);
    username = decoded.slice(0, colon);
    password = decoded.slice(colon + 1);
  }
  if (identityToken) return { username, password, identityToken };
  if (!username && !password) return undefined;
  return { username, password };
}

/** The value whose key names `registry`: exact key first, then any key with the same host. */
function lookupByHost<T>(map: Record<string, T> | undefined, registry: string): T | undefined {
  if (!map || typeof map !== 'object') return undefined;
  const wanted = registry === DOCKER_HUB ? [HUB_SERVER, DOCKER_HUB, 'index.docker.io', 'registry-1.docker.io'] : [registry];
  for (const key of wanted) if (Object.hasOwn(map, key)) return map[key];
  const hosts = new Set(wanted.map(hostOf));
  for (const [key, value] of Object.entries(map)) if (hosts.has(hostOf(key))) return value;
  return undefined;
}

/** `https://host:port/v1/` → `host:port`, as docker's ConvertToHostname does. */
function hostOf(key: string): string {
  return key.replace(/^[a-z]+:\/\//i, '').split('/')[0] ?? '';
}

/** What docker passes to a helper: Docker Hub's legacy URL, else the host as written. */
function serverUrl(registry: string): string {
  return registry === DOCKER_HUB ? HUB_SERVER : registry;
}

function runProgram(
  program: string,
  args: string[],
  input: string,
  env: NodeJS.ProcessEnv,
): Promise<{ code: number | null; stdout: string; stderr: string; spawnError?: Error }> {
  return new Promise((resolve) => {
    const child = spawn(program, args, { env, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.on('error', (spawnError) => resolve({ code: null, stdout, stderr, spawnError }));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
    // A helper that exits before reading stdin makes the write fail with EPIPE: its exit code tells the story.
    child.stdin.on('error', () => {});
    child.stdin.end(input);
  });
}
