// Benchmarks layergraph against Buildah and BuildKit on the same synthetic
// monorepo, in one run, and prints the medians as ratios to layergraph.
//
//   npm run bench -- [--reps 3] [--json results.json] [--tools layergraph,buildah,buildkit]
//                    [--services 6] [--files 300] [--lib-files 200] [--buildah-driver overlay]
//                    [--rev <git commit>] [--keep]
//
// Scenarios, per tool: cold (empty cache), warm (nothing changed), changed (one
// source file of one service edited). Everything lives in one temp dir; BuildKit
// runs in a private dockerd started here, so no global cache or image is touched.
import { spawn, spawnSync } from 'node:child_process';
import { accessSync, constants, cpSync, existsSync, mkdirSync, mkdtempSync, openSync, readdirSync, readFileSync,
  realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus, freemem, loadavg, totalmem, release, tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generate, DEFAULTS } from './generate.mjs';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
const SCENARIOS = ['cold', 'warm', 'changed'];

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const loadBefore = loadavg()[0]; // a busy machine skews everything; recorded in the JSON
  const work = mkdtempSync(join(tmpdir(), 'layergraph-bench-'));
  const tools = [];
  const cleanup = async () => {
    for (const t of tools) await t.close?.();
    // dockerd bind-mounts its data root; never rm -rf through a mount that is still there.
    const mounted = readFileSync('/proc/self/mounts', 'utf8').includes(work);
    if (mounted) log(`left ${work} in place: something is still mounted under it`);
    else if (!args.keep) rmSync(work, { recursive: true, force: true });
  };
  process.on('SIGINT', () => cleanup().finally(() => process.exit(130)));

  try {
    const repo = generate(join(work, 'repo'), args);
    const app = await snapshotLayergraph(work, args.rev);
    tools.push(...[layergraph(work, repo, app), buildah(work, repo, args.buildahDriver), buildkit(work, repo)]
      .filter((t) => args.tools.includes(t.name)));
    for (const t of tools) await t.setup();
    for (const t of tools) log(`${t.name}: ${t.skip ? `skipped (${t.skip})` : t.version}`);

    const { times, others } = await measure(tools.filter((t) => !t.skip), repo, args.reps);
    const results = summarize(times, others, args, tools, repo, loadBefore);
    console.log('\n' + table(results));
    if (args.json) writeFileSync(args.json, JSON.stringify(results, null, 2) + '\n');
  } finally {
    await cleanup();
  }
}

// times[tool][scenario] = seconds of each repetition; others[tool][scenario] = CPU
// seconds that processes outside the measured tool used meanwhile (noise, reported).
// Each repetition starts from an empty cache, so the edit of "changed" is always new.
async function measure(tools, repo, reps) {
  const original = readFileSync(repo.changeFile);
  const empty = () => Object.fromEntries(tools.map((t) => [t.name, { cold: [], warm: [], changed: [] }]));
  const times = empty(), others = empty();
  for (let rep = 0; rep < reps; rep++) {
    // Rotate the order each repetition so drift (page cache, clocks) is spread over every tool.
    for (const t of rotate(tools, rep)) {
      writeFileSync(repo.changeFile, original);
      await t.reset();
      for (const s of SCENARIOS) {
        if (s === 'changed') writeFileSync(repo.changeFile, Buffer.concat([original, Buffer.from('// edited by the benchmark\n')]));
        spawnSync('sync'); // flush the previous run's writes so they are not billed to this one
        const before = cpuSnapshot(t.daemonPid?.());
        times[t.name][s].push(await timed(() => t.build()));
        others[t.name][s].push(othersCpu(before, cpuSnapshot(t.daemonPid?.())));
        await t.verify(s); // outside the timing: proof the run did the scenario's work
      }
      log(`rep ${rep + 1}/${reps} ${t.name}: ${SCENARIOS.map((s) => `${s} ${times[t.name][s].at(-1).toFixed(2)}s`).join(', ')}`
        + ` (other processes: ${SCENARIOS.map((s) => others[t.name][s].at(-1).toFixed(2)).join('/')} CPU-s)`);
    }
  }
  writeFileSync(repo.changeFile, original);
  return { times, others };
}

// ---- tools: each has setup() (sets version or skip), reset() (empty cache), build(),
// verify(scenario) (untimed sanity check) and maybe close()

function layergraph(work, repo, app) {
  const dir = join(work, 'layergraph');
  const report = join(dir, 'report.json');
  const run = () => exec(process.execPath, [join(app.dir, 'bin/layergraph.js'), 'run', join(repo.dir, 'build.yaml'),
    '--out', join(dir, 'out'), '--cache-dir', join(dir, 'cache'), '--report', report, '--progress', 'quiet']);
  return {
    name: 'layergraph',
    async setup() {
      this.version = `${(await exec(process.execPath, [join(app.dir, 'bin/layergraph.js'), '--version'])).trim()} (${app.rev})`;
    },
    async reset() { rmSync(dir, { recursive: true, force: true }); mkdirSync(dir); },
    build: run,
    async verify(scenario) {
      const index = JSON.parse(readFileSync(join(dir, 'out/index.json'), 'utf8'));
      if (index.manifests.length < repo.services.length) throw new Error('layergraph wrote too few images');
      const { misses } = JSON.parse(readFileSync(report, 'utf8')).summary;
      const expected = { warm: 0, changed: 1 }[scenario];
      if (expected !== undefined && misses !== expected) throw new Error(`layergraph ${scenario} run missed ${misses} steps, expected ${expected}`);
    },
  };
}

function buildah(work, repo, driver) {
  let root;
  const cmd = (...a) => exec('buildah', ['--root', join(root, 'root'), '--runroot', join(root, 'run'), '--storage-driver', driver, ...a], { cwd: repo.dir });
  return {
    name: 'buildah',
    async setup() {
      if (!which('buildah')) return void (this.skip = 'not installed');
      this.version = `${(await exec('buildah', ['--version'])).trim()}, ${driver} storage`;
    },
    // A fresh --root per cold run: an empty cache without touching the machine's own storage.
    async reset() {
      if (root) rmSync(root, { recursive: true, force: true });
      root = mkdtempSync(join(work, 'buildah-'));
    },
    // One image at a time, as a shell loop would: parallel buildah processes share one
    // storage lock, and were slower here (cold 7.2 s vs 4.6 s, measured once).
    async build() {
      for (const svc of repo.services) await cmd('build', '--layers', '-q', '-f', repo.dockerfile(svc), '-t', `bench/${svc}`, '.');
    },
    async verify() {
      const names = (await cmd('images', '--format', '{{.Name}}')).trim().split('\n');
      if (names.length < repo.services.length) throw new Error(`buildah has ${names.length} images`);
    },
  };
}

function buildkit(work, repo) {
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
      if (docker.bake) return void (await cli('buildx', 'bake', '--file', 'docker-bake.hcl', '--progress', 'plain'));
      await Promise.all(repo.services.map((svc) =>
        cli('build', '-q', '--network=host', '-f', repo.dockerfile(svc), '-t', `bench/${svc}`, '.')));
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

// ---- helpers

// A private copy of layergraph, so a rebuild of dist/ during the run (others work in
// this tree) cannot change what is measured halfway. With --rev, the committed
// source of that revision, compiled here; else the current dist/.
async function snapshotLayergraph(work, rev) {
  const dir = join(work, 'layergraph-app');
  mkdirSync(dir);
  symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'));
  if (rev) {
    const tar = join(work, 'src.tar');
    await exec('git', ['archive', '--format=tar', '-o', tar, rev], { cwd: ROOT });
    await exec('tar', ['-xf', tar, '-C', dir]);
    await exec(process.execPath, [join(ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(dir, 'tsconfig.build.json')]);
    return { dir, rev: (await exec('git', ['rev-parse', '--short', rev], { cwd: ROOT })).trim() };
  }
  if (!existsSync(join(ROOT, 'dist'))) throw new Error('dist/ missing: run npm run build (npm run bench does)');
  for (const f of ['bin', 'dist', 'schemas', 'package.json']) cpSync(join(ROOT, f), join(dir, f), { recursive: true });
  return { dir, rev: gitDescribe() };
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
// iptables or bridge (COPY-only builds need no network), its own containerd namespace.
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

// CPU use of the whole machine and of the tool being measured, in ticks: this process,
// its reaped children (cutime/cstime: layergraph, buildah, the docker CLI) and the
// tree of a daemon the tool owns (dockerd). An idle dockerd's CPU counts as noise
// while another tool runs.
function cpuSnapshot(daemonPid) {
  const [, ...f] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).map(Number);
  const machine = f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] ?? 0); // user nice system irq softirq steal
  const procs = new Map();
  for (const pid of readdirSync('/proc').filter((d) => /^\d+$/.test(d))) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const v = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number); // v[1] = ppid, v[11..14] = utime stime cutime cstime
      procs.set(Number(pid), { ppid: v[1], cpu: v[11] + v[12], reaped: v[13] + v[14] });
    } catch { /* exited meanwhile */ }
  }
  const tree = (pid) => (procs.get(pid)?.cpu ?? 0) + [...procs].filter(([, p]) => p.ppid === pid).reduce((sum, [child]) => sum + tree(child), 0);
  const self = procs.get(process.pid);
  return { machine, ours: self.cpu + self.reaped + (daemonPid ? tree(daemonPid) : 0) };
}

function othersCpu(a, b) {
  return Math.max(0, (b.machine - a.machine) - (b.ours - a.ours)) / 100; // USER_HZ is 100 on Linux
}

function exec(cmd, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { ...opts, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', err = '';
    child.stdout.on('data', (b) => { out += b; });
    child.stderr.on('data', (b) => { err += b; });
    child.on('error', reject);
    child.on('close', (code) => code === 0 ? resolve(out)
      : reject(new Error(`${cmd} ${args.join(' ')} exited ${code}:\n${err.trim().split('\n').slice(-5).join('\n')}`)));
  });
}

async function timed(fn) {
  const start = process.hrtime.bigint();
  await fn();
  return Number(process.hrtime.bigint() - start) / 1e9;
}

function summarize(times, others, args, tools, repo, loadBefore) {
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  const results = {};
  for (const s of SCENARIOS) {
    results[s] = {};
    const base = times.layergraph && median(times.layergraph[s]);
    for (const [name, t] of Object.entries(times)) {
      const m = median(t[s]);
      results[s][name] = { medianSeconds: round(m), runs: t[s].map(round), ratioToLayergraph: base ? round(m / base) : null,
        otherProcessesCpuSeconds: others[name][s].map(round) };
    }
  }
  return {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: round(totalmem() / 2 ** 30), freeMemoryGiB: round(freemem() / 2 ** 30), kernel: release(), node: process.version, loadAverage1mBefore: loadBefore },
    workload: { services: repo.services.length, filesPerService: args.files, libFiles: args.libFiles, imagesPerBuild: repo.services.length, layersPerImage: 3 },
    reps: args.reps,
    tools: Object.fromEntries(tools.map((t) => [t.name, t.skip ? { skipped: t.skip } : { version: t.version }])),
    results,
  };
}

function table(results) {
  const names = Object.keys(results.results.cold);
  const rows = [['scenario', ...names]];
  for (const s of SCENARIOS) {
    rows.push([s, ...names.map((n) => {
      const r = results.results[s][n];
      const secs = `${r.medianSeconds.toFixed(2)} s`;
      if (n === 'layergraph' || r.ratioToLayergraph === null) return secs;
      const x = r.ratioToLayergraph;
      return `${secs} (${x >= 1 ? `${x.toFixed(1)}× slower` : `${(1 / x).toFixed(1)}× faster`})`;
    })]);
  }
  const widths = rows[0].map((_, i) => Math.max(...rows.map((r) => r[i].length)));
  const lines = rows.map((r) => r.map((c, i) => c.padEnd(widths[i])).join('  '));
  const skipped = Object.entries(results.tools).filter(([, t]) => t.skipped).map(([n, t]) => `${n}: ${t.skipped}`);
  const noise = Object.values(results.results).flatMap((r) => Object.values(r).flatMap((x) => x.otherProcessesCpuSeconds));
  const noiseLine = `other processes on the machine used up to ${Math.max(...noise).toFixed(2)} CPU-s during one timed run (total ${noise.reduce((a, b) => a + b, 0).toFixed(1)} CPU-s)`;
  return [`median of ${results.reps} runs, seconds; ratio = tool / layergraph`, ...lines, ...skipped, noiseLine].join('\n');
}

function parseArgs(argv) {
  const args = { reps: 3, json: undefined, rev: undefined, tools: ['layergraph', 'buildah', 'buildkit'], buildahDriver: 'overlay', keep: false,
    services: DEFAULTS.services, files: DEFAULTS.files, libFiles: DEFAULTS.libFiles };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i], value = () => argv[++i];
    if (flag === '--reps') args.reps = Number(value());
    else if (flag === '--json') args.json = value();
    else if (flag === '--tools') args.tools = value().split(',');
    else if (flag === '--buildah-driver') args.buildahDriver = value();
    else if (flag === '--services') args.services = Number(value());
    else if (flag === '--files') args.files = Number(value());
    else if (flag === '--lib-files') args.libFiles = Number(value());
    else if (flag === '--rev') args.rev = value();
    else if (flag === '--keep') args.keep = true;
    else { console.error(`unknown flag ${flag}; see the top of bench/run.mjs`); process.exit(2); }
  }
  return args;
}

function which(cmd) { return process.env.PATH.split(delimiter).some((d) => isExecutable(join(d, cmd))); }
function isExecutable(p) { try { accessSync(p, constants.X_OK); return true; } catch { return false; } }
function gitDescribe() { return spawnSync('git', ['describe', '--always', '--dirty'], { cwd: ROOT, encoding: 'utf8' }).stdout?.trim() || 'no git'; }
function rotate(xs, n) { return xs.map((_, i) => xs[(i + n) % xs.length]); }
function round(x) { return Math.round(x * 1000) / 1000; }
function log(msg) { console.error(msg); }

await main();
