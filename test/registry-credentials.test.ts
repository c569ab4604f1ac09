/**
 * Credentials from a Docker config file: `auths` entries, and the
 * `docker-credential-*` helper protocol through a fake helper script put on
 * PATH (`docker-credential-test`), which records the server URL it was asked for.
 */
import { chmod, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { UsageError } from '../src/errors.js';
import { dockerConfigPath, findCredentials } from '../src/registry/credentials.js';
import { useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();
const b64 = (s: string) => Buffer.from(s).toString('base64');

/** A helper knowing one server; anything else is "credentials not found", `broken.example` a failure. */
async function fakeHelper(dir: string): Promise<NodeJS.ProcessEnv> {
  const script = path.join(dir, 'docker-credential-test');
  await writeFile(
    script,
    `#!/bin/sh
[ "$1" = get ] || { echo "unexpected verb $1" >&2; exit 2; }
read -r server
printf '%s\\n' "$server" >> "${path.join(dir, 'asked')}"
case "$server" in
  registry.example:5000) printf '{"ServerURL":"%s","Username":"helper-user","Secret":"helper-secret"}\\n' "$server" ;;
  https://index.docker.io/v1/) printf '{"ServerURL":"%s","Username":"<token>","Secret":"refresh-me"}\\n' "$server" ;;
  broken.example) echo "keychain is locked" >&2; exit 1 ;;
  *) echo "credentials not found in native keychain"; exit 1 ;;
esac
`,
  );
  await chmod(script, 0o755);
  return { PATH: `${dir}:${process.env.PATH ?? ''}`, HOME: dir };
}

describe('registry credentials', () => {
  it('reads the flag, else $DOCKER_CONFIG/config.json, else ~/.docker/config.json', () => {
    expect(dockerConfigPath('/x/my.json', { DOCKER_CONFIG: '/d', HOME: '/h' })).toBe('/x/my.json');
    expect(dockerConfigPath(undefined, { DOCKER_CONFIG: '/d', HOME: '/h' })).toBe('/d/config.json');
    expect(dockerConfigPath(undefined, { HOME: '/h' })).toBe('/h/.docker/config.json');
  });

  it('decodes auths entries: `auth`, username/password, keys written with a scheme, Docker Hub under its legacy URL', async () => {
    const dir = await tmpDir();
    const file = path.join(dir, 'config.json');
    await writeFile(
      file,
      JSON.stringify({
        auths: {
          '127.0.0.1:5000': { auth: b64('alice:pa:ss') },
          'https://registry.example:8443/v2/': { username: 'bob', password: 'hunter2' },
          'https://index.docker.io/v1/': { auth: b64('hubuser:hubpass') },
          'token.example': { identitytoken: 'refresh' },
          'empty.example': {},
        },
      }),
    );
    const find = (r: string) => findCredentials(r, { configFile: file, env: {} });
    expect(await find('127.0.0.1:5000')).toEqual({ credentials: { username: 'alice', password: 'pa:ss' }, configFile: file, source: 'auths' });
    expect((await find('registry.example:8443')).credentials).toEqual({ username: 'bob', password: 'hunter2' });
    expect((await find('docker.io')).credentials).toEqual({ username: 'hubuser', password: 'hubpass' });
    expect((await find('token.example')).credentials).toEqual({ username: '', password: '', identityToken: 'refresh' });
    expect(await find('empty.example')).toEqual({ credentials: undefined, configFile: file, source: undefined });
    expect((await find('127.0.0.1:5001')).credentials).toBeUndefined();
  });

  it('finds the config through DOCKER_CONFIG, and treats a missing default file as anonymous', async () => {
    const dir = await tmpDir();
    await writeFile(path.join(dir, 'config.json'), JSON.stringify({ auths: { 'r.example': { auth: b64('u:p') } } }));
    expect((await findCredentials('r.example', { env: { DOCKER_CONFIG: dir } })).credentials).toEqual({ username: 'u', password: 'p' });
    const home = await tmpDir();
    expect(await findCredentials('r.example', { env: { HOME: home } })).toEqual({
      credentials: undefined,
      configFile: path.join(home, '.docker', 'config.json'),
      source: undefined,
    });
  });

  it('refuses a named file that is missing or not JSON, saying which', async () => {
    const dir = await tmpDir();
    const missing = path.join(dir, 'nope.json');
    await expect(findCredentials('r.example', { configFile: missing, env: {} })).rejects.toThrow(new UsageError(`cannot read the registry config ${missing}: ENOENT: no such file or directory, open '${missing}'`));
    const bad = path.join(dir, 'bad.json');
    await writeFile(bad, '{"auths": ');
    await expect(findCredentials('r.example', { configFile: bad, env: {} })).rejects.toThrow(/^the registry config .*bad\.json is not valid JSON/);
  });

  it('asks credHelpers[host] through docker-credential-<name>, with the server on stdin', async () => {
    const dir = await tmpDir();
    const env = await fakeHelper(dir);
    const file = path.join(dir, 'config.json');
    await writeFile(
      file,
      JSON.stringify({
        auths: { 'registry.example:5000': { auth: b64('ignored:because-a-helper-is-set') } },
        credHelpers: { 'registry.example:5000': 'test', 'other.example': 'test', 'docker.io': 'test', 'broken.example': 'test', 'gone.example': 'missing-helper' },
      }),
    );
    const find = (r: string) => findCredentials(r, { configFile: file, env });
    expect(await find('registry.example:5000')).toEqual({
      credentials: { username: 'helper-user', password: 'helper-secret' },
      configFile: file,
      source: 'docker-credential-test',
    });
    // "credentials not found" is anonymous, not an error.
    expect(await find('other.example')).toEqual({ credentials: undefined, configFile: file, source: undefined });
    // Docker Hub is asked for under its legacy URL; `<token>` means an identity token.
    expect((await find('docker.io')).credentials).toEqual({ username: '', password: '', identityToken: 'refresh-me' });
    expect((await readFile(path.join(dir, 'asked'), 'utf8')).split('\n')).toEqual(['registry.example:5000', 'other.example', 'https://index.docker.io/v1/', '']);

    await expect(find('broken.example')).rejects.toThrow(new UsageError('credential helper docker-credential-test failed for broken.example (exit 1): keychain is locked'));
    await expect(find('gone.example')).rejects.toThrow(
      /^credential helper docker-credential-missing-helper for gone.example could not be started \(spawn docker-credential-missing-helper ENOENT\); install it or remove it from the Docker config$/,
    );
  });

  it('uses credsStore for every registry without a credHelpers entry', async () => {
    const dir = await tmpDir();
    const env = await fakeHelper(dir);
    const file = path.join(dir, 'config.json');
    await writeFile(file, JSON.stringify({ credsStore: 'test', auths: { 'registry.example:5000': {} } }));
    expect((await findCredentials('registry.example:5000', { configFile: file, env })).credentials).toEqual({ username: 'helper-user', password: 'helper-secret' });
    expect((await findCredentials('elsewhere.example', { configFile: file, env })).credentials).toBeUndefined();
  });
});
