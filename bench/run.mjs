// Benchmarks layergraph against BuildKit and Buildah on the same synthetic
// monorepo, in one run: a Markdown table of medians and ratios on stdout, the
// whole record as JSON in a file.
//
//   npm run bench -- [--reps 3] [--json bench-results.json] [--tools layergraph,buildah,buildkit]
//                    [--services 5] [--files 1000] [--lib-files 200] [--pack-mib 1024]
//                    [--buildah-driver overlay] [--rev <git commit>] [--keep]
//
// Scenarios, per tool: cold (empty cache), warm (nothing changed), changed (one
// source file of one service edited), base (a new version of the base image).
// Everything lives in one temp dir; BuildKit runs in a private dockerd started
// here, the base image comes from a private registry, so nothing global is touched.
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { cpus, freemem, loadavg, release, tmpdir, totalmem } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startBaseImages } from './base-image.mjs';
import { exec, timed } from './exec.mjs';
import { generate, DEFAULTS } from './generate.mjs';
import { measurePacking, median } from './packing.mjs';
import { markdown } from './report.mjs';
import { buildah, buildkit, layergraph } from './tools.mjs';

const ROOT = dirname(dirname(fileURLToPath(import.meta.url)));
export const SCENARIOS = ['cold', 'warm', 'changed', 'base'];

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const loadBefore = loadavg()[0]; // a busy machine skews everything; recorded in the JSON
  const work = mkdtempSync(join(tmpdir(), 'layergraph-bench-'));
  const tools = [];
  let base;
  const cleanup = async () => {
    for (const t of tools) await t.close?.();
    base?.close();
    // dockerd and buildah mount under the work dir; never rm -rf through a mount that is still there.
    const mounted = readFileSync('/proc/self/mounts', 'utf8').includes(work);
    if (mounted) log(`left ${work} in place: something is still mounted under it`);
    else if (!args.keep) rmSync(work, { recursive: true, force: true });
  };
  process.on('SIGINT', () => cleanup().finally(() => process.exit(130)));

  try {
    base = await startBaseImages(work);
    const repo = generate(join(work, 'repo'), { ...args, base: base.ref });
    const app = await snapshotLayergraph(work, args.rev);
    tools.push(...[layergraph(work, repo, app), buildkit(work, repo), buildah(work, repo, args.buildahDriver)]
      .filter((t) => args.tools.includes(t.name)));
    for (const t of tools) await t.setup();
    for (const t of tools) log(`${t.name}: ${t.skip ? `skipped (${t.skip})` : t.version}`);

    const { times, others } = await measure(tools.filter((t) => !t.skip), repo, base, args.reps);
    const packing = args.packMib > 0 && args.tools.includes('layergraph')
      ? await measurePacking(work, app, args.packMib, args.reps, log) : { skipped: 'not asked for (--pack-mib 0)' };
    const results = summarize(times, others, args, tools, repo, packing, loadBefore);
    console.log(markdown(results));
    writeFileSync(args.json, JSON.stringify(results, null, 2) + '\n');
    log(`JSON written to ${args.json}`);
  } finally {
    await cleanup();
  }
}

// times[tool][scenario] = seconds of each repetition; others[tool][scenario] = CPU
// seconds that processes outside the measured tool used meanwhile (noise, reported).
// Each repetition starts from an empty cache and base v1, so every edit is new.
async function measure(tools, repo, base, reps) {
  const original = readFileSync(repo.changeFile);
  const empty = () => Object.fromEntries(tools.map((t) => [t.name, Object.fromEntries(SCENARIOS.map((s) => [s, []]))]));
  const times = empty(), others = empty();
  for (let rep = 0; rep < reps; rep++) {
    // Rotate the order each repetition so drift (page cache, clocks) is spread over every tool.
    for (const t of rotate(tools, rep)) {
      writeFileSync(repo.changeFile, original);
      await base.use('v1');
      await t.reset();
      for (const s of SCENARIOS) {
        if (s === 'changed') writeFileSync(repo.changeFile, Buffer.concat([original, Buffer.from('// edited by the benchmark\n')]));
        if (s === 'base') await base.use('v2');
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

function summarize(times, others, args, tools, repo, packing, loadBefore) {
  const results = {};
  for (const s of SCENARIOS) {
    results[s] = {};
    const ours = times.layergraph && median(times.layergraph[s]);
    for (const [name, t] of Object.entries(times)) {
      const m = median(t[s]);
      results[s][name] = { medianSeconds: round(m), runs: t[s].map(round), layergraphRatio: ours ? round(ours / m) : null,
        otherProcessesCpuSeconds: others[name][s].map(round) };
    }
  }
  return {
    date: new Date().toISOString(),
    machine: { cpus: cpus().length, cpuModel: cpus()[0]?.model, memoryGiB: round(totalmem() / 2 ** 30), freeMemoryGiB: round(freemem() / 2 ** 30),
      kernel: release(), node: process.version, loadAverage1mBefore: loadBefore },
    workload: { services: repo.services.length, filesPerService: args.files, libFiles: args.libFiles, base: 'busybox base pulled from a local docker-registry',
      stepsPerImage: 'shared lib, config, sources (linked copies in layergraph), one run step, env, cmd' },
    reps: args.reps,
    tools: Object.fromEntries(tools.map((t) => [t.name, t.skip ? { skipped: t.skip } : { version: t.version }])),
    results,
    packing,
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
    if (existsSync(join(dir, 'scripts/compile-schema.mjs'))) await exec(process.execPath, [join(dir, 'scripts/compile-schema.mjs')], { cwd: dir });
    // The one-file CLI and its loader, for commits that have them (otherwise the launcher runs dist/'s modules).
    if (existsSync(join(dir, 'scripts/bundle-cli.mjs'))) await exec(process.execPath, [join(dir, 'scripts/bundle-cli.mjs')], { cwd: dir });
    return { dir, rev: (await exec('git', ['rev-parse', '--short', rev], { cwd: ROOT })).trim() };
  }
  if (!existsSync(join(ROOT, 'dist'))) throw new Error('dist/ missing: run npm run build (npm run bench does)');
  // With their times: the launcher compares dist/'s and the bundle's to tell a stale bundle.
  for (const f of ['bin', 'dist', 'schemas', 'package.json']) cpSync(join(ROOT, f), join(dir, f), { recursive: true, preserveTimestamps: true });
  return { dir, rev: gitDescribe() };
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

function parseArgs(argv) {
  const args = { reps: 3, json: 'bench-results.json', rev: undefined, tools: ['layergraph', 'buildah', 'buildkit'], buildahDriver: 'overlay',
    keep: false, services: DEFAULTS.services, files: DEFAULTS.files, libFiles: DEFAULTS.libFiles, packMib: 1024 };
  for (let i = 0; i < argv.length; i++) {
    const flag = argv[i], value = () => argv[++i];
    if (flag === '--reps') args.reps = Number(value());
    else if (flag === '--json') args.json = value();
    else if (flag === '--tools') args.tools = value().split(',');
    else if (flag === '--buildah-driver') args.buildahDriver = value();
    else if (flag === '--services') args.services = Number(value());
    else if (flag === '--files') args.files = Number(value());
    else if (flag === '--lib-files') args.libFiles = Number(value());
    else if (flag === '--pack-mib') args.packMib = Number(value());
    else if (flag === '--rev') args.rev = value();
    else if (flag === '--keep') args.keep = true;
    else { console.error(`unknown flag ${flag}; see the top of bench/run.mjs`); process.exit(2); }
  }
  return args;
}

function gitDescribe() { return spawnSync('git', ['describe', '--always', '--dirty'], { cwd: ROOT, encoding: 'utf8' }).stdout?.trim() || 'no git'; }
function rotate(xs, n) { return xs.map((_, i) => xs[(i + n) % xs.length]); }
function round(x) { return Math.round(x * 1000) / 1000; }
function log(msg) { console.error(msg); }

await main();
