// The three builders, each behind the same face: setup() (sets `version`, or
// `skip` with the reason), reset() (empty cache), build(), verify(scenario)
// (untimed proof the run did the scenario's work) and maybe close().
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, realpathSync, rmSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { exec, isExecutable, which } from './exec.mjs';

/** Steps layergraph must rebuild per scenario: a changed source rebuilds its copy and the command above it; a new base only the commands. */
function expectedMisses(scenario, repo) {
  return { warm: 0, changed: 2, base: repo.services.length }[scenario];
}

export function layergraph(work, repo, app) {
  const dir = join(work, 'layergraph');
  const report = join(dir, 'report.json');
  const cli = join(app.dir, 'bin/layergraph.js');
  return {
    name: 'layergraph',
    async setup() {
      this.version = `${(await exec(process.execPath, [cli, '--version'])).trim()} (${app.rev})`;
    },
    async reset() {
      rmSync(dir, { recursive: true, force: true });
      mkdirSync(dir);
    },
    build: () => exec(process.execPath, [cli, 'run', join(repo.dir, 'build.yaml'), '--out', join(dir, 'out'),
      '--cache-dir', join(dir, 'cache'), '--report', report, '--progress', 'quiet']),
    async verify(scenario) {
      const index = JSON.parse(readFileSync(join(dir, 'out/index.json'), 'utf8'));
      if (index.manifests.length < repo.services.length) throw new Error('layergraph wrote too few images');
      const { misses } = JSON.parse(readFileSync(report, 'utf8')).summary;
      const expected = expectedMisses(scenario, repo);
      if (expected !== undefined && misses !== expected) throw new Error(`layergraph ${scenario} run missed ${misses} steps, expected ${expected}`);
    },
  };
}

export function buildah(work, repo, driver) {
  let root;
  const cmd = (...a) => exec('buildah', ['--root', join(root, 'root'), '--runroot', join(root, 'run'), '--storage-driver', driver, ...a], { cwd: repo.dir });
  return {
    name: 'buildah',
    async setup() {
      if (!which('buildah')) return void (this.skip = 'not installed');
      this.version = `${(await exec('buildah', ['--version'])).trim()}, ${driver} storage, chroot isolation`;
    },
    // A fresh --root per cold run: an empty cache without touching the machine's own storage.
    async reset() {
      if (root) await cleanBuildahRoot(root);
      root = mkdtempSync(join(work, 'buildah-'));
    },
    // One image at a time, as a shell loop would: parallel buildah processes share one
    // storage lock, and were slower here (cold 7.2 s vs 4.6 s, measured once).
    // --pull: ask the registry for the base every time, as the other two do, so a new base is seen.
    async build() {
      for (const svc of repo.services) {
        await cmd('build', '--layers', '--pull', '--tls-verify=false', '--isolation', 'chroot', '-q',
          '-f', repo.dockerfile(svc), '-t', `bench/${svc}`, '.');
      }
    },
    async verify() {
      const names = (await cmd('images', '--format', '{{.Name}}')).trim().split('\n');
      if (names.length < repo.services.length) throw new Error(`buildah has ${names.length} images`);
    },
    async close() {
      if (root) await cleanBuildahRoot(root);
    },
  };
}

// Buildah's overlay driver leaves its layers mounted: unmount before deleting, never rm through a mount.
async function cleanBuildahRoot(root) {
  const mounts = readFileSync('/proc/self/mounts', 'utf8').split('\n').map((l) => l.split(' ')[1])
    .filter((m) => m && m.startsWith(root)).sort().reverse();
  for (const m of mounts) spawnSync('umount', ['-l', m]);
  rmSync(root, { recursive: true, force: true });
}

export function buildkit(work, repo) {
  const dir = join(work, 'docker');
  const env = { ...process.env, DOCKER_HOST: `unix://${join(dir, 'docker.sock')}`, DOCKER_BUILDKIT: '1' };
  let docker, daemon;
  const cli = (...a) => exec(docker.path, a, { cwd: repo.dir, env });
  return {
    name: 'buildkit',
    async setup() {
      docker = findDockerCli();
      if (!docker) return void (this.skip = 'not installed: no docker CLI with BuildKit (buildx, or a client older than 23)');
      if (!which('dockerd')) return void (this.skip = 'not installed: no dockerd');
      if (process.getuid?.() !== 0) return void (this.skip = 'dockerd needs root');
      try {
        daemon = await startDockerd(dir, env);
      } catch (e) {
        return void (this.skip = `dockerd did not start: ${e.message}`);
      }
      const server = (await cli('version', '--format', '{{.Server.Version}}')).trim();
      this.version = `dockerd ${server}, docker CLI ${docker.version} (${docker.bake ? 'buildx bake' : 'docker build, all images at once'})`;
    },
    async reset() {
      const ids = (await cli('image', 'ls', '-q')).trim().split('\n').filter(Boolean);
      if (ids.length) await cli('image', 'rm', '-f', ...new Set(ids));
      await cli('builder', 'prune', '-af');
    },
    // All images at once, as `buildx bake` does: BuildKit schedules them in one daemon
    // (measured: cold 2.9 s in parallel vs 4.9 s one at a time).
    async build() {
      if (docker.bake) return void (await cli('buildx', 'bake', '--pull', '--file', 'docker-bake.hcl', '--progress', 'plain'));
      await Promise.all(repo.services.map((svc) =>
        cli('build', '-q', '--pull', '--network=host', '-f', repo.dockerfile(svc), '-t', `bench/${svc}`, '.')));
    },
    async verify() {
      const names = (await cli('image', 'ls', '--format', '{{.Repository}}', '--filter', 'reference=bench/*')).trim().split('\n');
      if (names.length < repo.services.length) throw new Error(`docker has ${names.length} bench images`);
    },
    daemonPid: () => daemon?.pid,
    async close() {
      if (!daemon || daemon.exitCode !== null) return;
      const exited = new Promise((r) => daemon.once('exit', r));
      daemon.kill('SIGTERM');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 20_000))]);
    },
  };
}

// The first `docker` on PATH that can use BuildKit: with the buildx plugin (CLI 23+
// needs it), or a client older than 23 whose `docker build` has BuildKit built in.
// Debian 12's docker.io is 20.10; a newer CLI earlier on PATH may lack buildx.
function findDockerCli() {
  const seen = new Set();
  for (const d of process.env.PATH.split(delimiter)) {
    const path = join(d, 'docker');
    if (!isExecutable(path) || seen.has(realpathSync(path))) continue;
    seen.add(realpathSync(path));
    const version = spawnSync(path, ['version', '--format', '{{.Client.Version}}'], { encoding: 'utf8' }).stdout.trim();
    if (spawnSync(path, ['buildx', 'version']).status === 0) return { path, version, bake: true };
    if (Number(version.split('.')[0]) < 23) return { path, version, bake: false };
  }
  return undefined;
}

// A private dockerd: its own data root, exec root and socket in the temp dir, no
// iptables or bridge (builds use --network=host), its own containerd namespace.
// It treats 127.0.0.0/8 registries as plain HTTP by default, as the others are told to.
async function startDockerd(dir, env) {
  mkdirSync(dir, { recursive: true });
  const logPath = join(dir, 'dockerd.log');
  const child = spawn('dockerd', ['--iptables=false', '--bridge=none', '--data-root', join(dir, 'data'),
    '--exec-root', join(dir, 'exec'), '--pidfile', join(dir, 'dockerd.pid'), '--host', env.DOCKER_HOST,
    '--containerd-namespace', 'layergraph-bench', '--containerd-plugins-namespace', 'layergraph-bench-plugins'],
  { stdio: ['ignore', 'ignore', openSync(logPath, 'w')] });
  for (let i = 0; i < 120; i++) {
    if (child.exitCode !== null) break;
    if (existsSync(join(dir, 'docker.sock'))) return child;
    await new Promise((r) => setTimeout(r, 250));
  }
  child.kill('SIGTERM');
  const errors = readFileSync(logPath, 'utf8').split('\n').filter((l) => /level=(error|fatal)/.test(l));
  throw new Error(errors.at(-1) ?? 'no socket after 30 s');
}
