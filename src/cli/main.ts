/**
 * The CLI entry: parse, run the command, map errors to exit codes. This is
 * the only place that knows about exit codes and process streams.
 */
import { appendFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { runBuild, type BuildResult } from '../build/run-build.js';
import { loadBuildFile } from '../config/load.js';
import { displayPath } from '../config/positions.js';
import { validateSources } from '../build/validate-sources.js';
import { buildGraph } from '../graph/build-graph.js';
import { loadContextFilter } from '../context/context-filter.js';
import type { BuildSpec } from '../config/types.js';
import { ConfigError, LayergraphError, UsageError, formatIssue } from '../errors.js';
import { jsonReport, markdownReport, textReport } from '../report/summary.js';
import { inGitHubActions, issueAnnotations, stepAnnotation } from '../report/github-annotations.js';
import { PLAN_FORMATS } from '../report/plan-report.js';
import { stepEdges, type StepEdge } from '../graph/step-edges.js';
import { helpText, parseCli, type ParsedArgs } from './flags.js';
import { createProgress, type ProgressMode } from './progress.js';
import { withExcerpts } from './excerpts.js';
import { runForcedExitCleanups } from '../util/forced-exit.js';
import type { ArchiveKind } from '../oci/archive.js';
import { dirImport, parseCacheRef } from '../cache/shared-cache.js';
import { ContentStore } from '../cache/content-store.js';
import type { RegistryClientOptions } from '../registry/client.js';

export const EXIT = { ok: 0, buildFailed: 1, invalid: 2, notCached: 3, interrupted: 130, terminated: 143, bug: 70 } as const;

export interface CliIo {
  stdout: { write(s: string): unknown; isTTY?: boolean };
  stderr: { write(s: string): unknown; isTTY?: boolean };
  env: NodeJS.ProcessEnv;
  cwd: string;
  signal?: AbortSignal;
}

export async function main(argv: string[], io?: CliIo): Promise<number> {
  const ctl = io ? undefined : interruptOnSignals();
  const cli: CliIo = io ?? { stdout: process.stdout, stderr: process.stderr, env: process.env, cwd: process.cwd(), signal: ctl!.signal };
  try {
    return await dispatch(parseCli(argv), cli);
  } catch (err) {
    return reportError(err, cli);
  } finally {
    ctl?.dispose();
  }
}

async function dispatch(args: ParsedArgs, io: CliIo): Promise<number> {
  switch (args.command) {
    case 'help':
      io.stdout.write(helpText(args.topic));
      return EXIT.ok;
    case 'version':
      io.stdout.write(`layergraph ${version()}\n`);
      return EXIT.ok;
    case 'validate': {
      const spec = await load(args.file, io);
      buildGraph(spec);
      // The same own directories `run` would leave out with its defaults.
      const filter = await loadContextFilter(spec.context, [defaultCacheDir(io.env), path.resolve(io.cwd, 'out')]);
      await validateSources(spec, spec.images, filter);
      const steps = spec.images.reduce((n, img) => n + img.steps.length, 0);
      io.stdout.write(`${displayPath(spec.file)}: ok (${spec.images.length} images, ${steps} steps)\n`);
      return EXIT.ok;
    }
    case 'run':
      return runCommand(args.file, args.values, io);
    case 'plan':
      return planCommand(args.file, args.values, io);
    case 'unpack': {
      // unpack, cache maintenance and JUnit load only when asked for: every run pays for what starts with the CLI.
      const { parseLayoutRef, unpackImage } = await import('../oci/unpack.js');
      const { layout, ref } = parseLayoutRef(args.file);
      const dest = path.resolve(io.cwd, args.args[0]!);
      const res = await unpackImage(path.resolve(io.cwd, layout), ref, dest);
      io.stdout.write(`unpacked ${res.manifestDigest} (${res.layers} layers) into ${dest}\n`);
      return EXIT.ok;
    }
    case 'cache':
      // Only read or removed from: `cache` never creates the cache directory.
      return (await import('./cache-command.js')).cacheCommand(args.file, args.values, io, path.resolve(io.cwd, (args.values['cache-dir'] as string | undefined) ?? defaultCacheDir(io.env)));
  }
}

async function runCommand(file: string, values: Record<string, unknown>, io: CliIo): Promise<number> {
  const spec = await load(file, io);
  const targets = targetsOf(spec, values);
  const progressMode = (values.progress as string | undefined) ?? 'auto';
  if (!['auto', 'tty', 'plain', 'quiet'].includes(progressMode)) {
    throw new UsageError(`--progress ${progressMode}: expected auto, tty, plain or quiet`);
  }
  const jobs = parseJobs(values.jobs as string | undefined);
  const snapshotter = oneOf('--snapshotter', values.snapshotter, ['auto', 'overlay', 'copy'] as const);
  const runtime = oneOf('--runtime', values.runtime, ['auto', 'runc', 'crun', 'chroot'] as const);
  const reports = (values.report as string[] | undefined) ?? [];
  for (const r of reports) {
    if (!/\.(json|md|markdown|xml)$/i.test(r)) throw new UsageError(`--report ${r}: the file name must end in .json, .md or .xml`);
  }
  const epoch = sourceDateEpoch(io.env);
  const cacheDir = await userDir('--cache-dir', (values['cache-dir'] as string | undefined) ?? defaultCacheDir(io.env), io);
  const outputs = parseOutputs((values.output as string[] | undefined) ?? [], values.out as string | undefined, values.push === true);
  const outDir = outputs.ociDir === undefined ? undefined : await userDir('--out', outputs.ociDir, io);
  const archives = outputs.archives.map((a) => ({ kind: a.kind, file: path.resolve(io.cwd, a.file) }));
  const progress = createProgress(progressMode as ProgressMode, io.stderr, io.env);
  let result: BuildResult;
  try {
    result = await runBuild(spec, {
      cacheDir,
      outDir,
      archives,
      targets,
      jobs,
      sourceDateEpoch: epoch,
      snapshotter,
      runtime,
      registry: registryOptions(values, io),
      push: values.push === true,
      cacheFrom: ((values['cache-from'] as string[] | undefined) ?? []).map((c) => parseCacheRef(c, '--cache-from', io.cwd)),
      ...(values['cache-to'] ? { cacheTo: parseCacheRef(values['cache-to'] as string, '--cache-to', io.cwd) } : {}),
      onEvent: (e) => progress.onEvent(e),
      ...(io.signal ? { signal: io.signal } : {}),
    });
  } finally {
    progress.close();
  }
  if (progressMode !== 'quiet' || result.error) io.stdout.write(textReport(result));
  const edges = stepEdges(buildGraph(spec).graph, result.steps.map((r) => `${r.image}/${r.step}`));
  await writeReports(result, edges, reports, io);
  if (result.error) {
    if (io.signal?.aborted) {
      io.stderr.write('interrupted: the cache is intact; steps that finished are cached\n');
      // The signal's own exit status, as a shell reports it (128 + SIGINT 2 or SIGTERM 15).
      return io.signal.reason === 'SIGTERM' ? EXIT.terminated : EXIT.interrupted;
    }
    if (result.error instanceof ConfigError) return reportError(result.error, io);
    annotateSteps(spec, result.steps.filter((r) => r.status === 'failed'), io);
    io.stderr.write(`error: ${result.error.message}\n`);
    return EXIT.buildFailed;
  }
  if (values['expect-cached']) {
    const missed = result.steps.filter((r) => r.status !== 'hit');
    if (missed.length) {
      const list = missed.map((r) => `  ${r.image}/${r.step}: ${r.reason}`).join('\n');
      io.stderr.write(`error: --expect-cached: ${missed.length} of ${result.steps.length} steps were not cached:\n${list}\n`);
      annotateSteps(spec, missed.map((r) => ({ ...r, reason: `not cached (--expect-cached): ${r.reason}` })), io);
      return EXIT.notCached;
    }
  }
  return EXIT.ok;
}

async function planCommand(file: string, values: Record<string, unknown>, io: CliIo): Promise<number> {
  const spec = await load(file, io);
  const targets = targetsOf(spec, values);
  const format = oneOf('--format', values.format, PLAN_FORMATS);
  // Only read: a plan creates no cache directory, not even an empty one.
  const cacheDir = path.resolve(io.cwd, (values['cache-dir'] as string | undefined) ?? defaultCacheDir(io.env));
  const outputs = parseOutputs((values.output as string[] | undefined) ?? [], values.out as string | undefined, false);
  const cacheFromRefs = ((values['cache-from'] as string[] | undefined) ?? []).map((c) => parseCacheRef(c, '--cache-from', io.cwd));
  const sharedDirs = cacheFromRefs.flatMap((c) => (c.kind === 'dir' ? [c.path] : []));
  const ownDirs = [...(outputs.ociDir === undefined ? [] : [outputs.ociDir]), ...outputs.archives.map((a) => a.file), ...sharedDirs].map((p) => path.resolve(io.cwd, p));
  // A registry cache's records bundle lands in a store of its own: a plan writes nothing to the cache.
  const scratch = await mkdtemp(path.join(os.tmpdir(), 'layergraph-plan-'));
  try {
    // What only `plan` needs is loaded for `plan` only: `run` starts faster without it.
    const [{ planBuild }, { planReport }, { registryImport }, { RegistryClient }] = await Promise.all([
      import('../build/plan-build.js'),
      import('../report/plan-report.js'),
      import('../cache/registry-cache.js'),
      import('../registry/client.js'),
    ]);
    const client = new RegistryClient(registryOptions(values, io));
    const registry = async () => client;
    const scratchStore = new ContentStore(scratch);
    const cacheFrom = cacheFromRefs.map((ref) => (ref.kind === 'dir' ? dirImport(ref.path) : registryImport(ref.ref, registry, scratchStore)));
    const plan = await planBuild(spec, { cacheDir, ownDirs, targets, sourceDateEpoch: sourceDateEpoch(io.env), cacheFrom, registry });
    io.stdout.write(planReport(plan, format));
    return EXIT.ok;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

function targetsOf(spec: BuildSpec, values: Record<string, unknown>): string[] {
  const targets = (values.target as string[] | undefined) ?? [];
  const unknown = targets.filter((t) => !spec.images.some((i) => i.name === t));
  if (unknown.length) {
    throw new UsageError(`--target ${unknown.join(', ')}: no such image; images: ${spec.images.map((i) => i.name).join(', ')}`);
  }
  return targets;
}

/** In GitHub Actions, each of `steps` as an error annotation at the step in the build file. */
function annotateSteps(spec: BuildSpec, steps: Array<{ image: string; step: string; reason: string }>, io: CliIo): void {
  if (!inGitHubActions(io.env)) return;
  for (const r of steps) {
    const pos = spec.images.find((i) => i.name === r.image)?.steps.find((s) => s.id === r.step)?.pos;
    io.stdout.write(`${stepAnnotation(r.image, r.step, r.reason, pos, io.cwd)}\n`);
  }
}

/** A report that cannot be written is a warning: it must not turn a good build into a failed one. */
async function writeReports(result: BuildResult, edges: StepEdge[], reports: string[], io: CliIo): Promise<void> {
  const write = async (what: string, fn: () => Promise<void>): Promise<void> => {
    try {
      await fn();
    } catch (err) {
      io.stderr.write(`warning: could not write ${what}: ${(err as Error).message}\n`);
    }
  };
  for (const r of reports) {
    const file = path.resolve(io.cwd, r);
    await write(`report ${r}`, async () => {
      await mkdir(path.dirname(file), { recursive: true });
      await writeFile(file, /\.json$/i.test(r) ? jsonReport(result) : /\.xml$/i.test(r) ? (await import('../report/junit.js')).junitReport(result) : markdownReport(result, edges));
    });
  }
  const summaryFile = io.env.GITHUB_STEP_SUMMARY;
  if (summaryFile) await write('GITHUB_STEP_SUMMARY', () => appendFile(summaryFile, markdownReport(result, edges)));
}

async function load(file: string, io: CliIo): Promise<BuildSpec> {
  const abs = path.resolve(io.cwd, file);
  try {
    return await loadBuildFile(abs);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'EISDIR' || code === 'EACCES') {
      throw new UsageError(`cannot read build file ${file}: ${code === 'ENOENT' ? 'no such file' : (err as Error).message}`);
    }
    throw err;
  }
}

/** A directory the user named, created now so a wrong path is a usage error, not a failure half way. */
async function userDir(flag: string, dir: string, io: CliIo): Promise<string> {
  const abs = path.resolve(io.cwd, dir);
  try {
    await mkdir(abs, { recursive: true });
  } catch (err) {
    throw new UsageError(`${flag} ${dir}: cannot create it: ${(err as Error).message}`);
  }
  return abs;
}

async function reportError(err: unknown, io: CliIo): Promise<number> {
  if (err instanceof ConfigError) {
    const issues = await withExcerpts(err.issues);
    io.stderr.write(`${issues.map(formatIssue).join('\n\n')}\n`);
    io.stderr.write(`${issues.length} problem${issues.length === 1 ? '' : 's'} in the build file\n`);
    if (inGitHubActions(io.env)) io.stdout.write(issueAnnotations(issues, io.cwd).map((l) => `${l}\n`).join(''));
    return EXIT.invalid;
  }
  if (err instanceof UsageError) {
    io.stderr.write(`error: ${err.message}\n`);
    return EXIT.invalid;
  }
  if (err instanceof LayergraphError) {
    io.stderr.write(`error: ${err.message}\n`);
    return EXIT.buildFailed;
  }
  if (typeof (err as NodeJS.ErrnoException)?.code === 'string' && /^E[A-Z]+$/.test((err as NodeJS.ErrnoException).code!)) {
    // The system said no (disk full, permission denied…): the message names the path; not a bug.
    io.stderr.write(`error: ${(err as Error).message}\n`);
    return EXIT.buildFailed;
  }
  io.stderr.write(
    `unexpected error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n` +
      'This is a bug in layergraph. Please report it with the command you ran and the output above.\n',
  );
  return EXIT.bug;
}

/**
 * `--output oci:<dir>`, `oci-archive:<file>`, `docker-archive:<file>`
 * (repeatable), and `--out <dir>` for the first. Without either: `oci:out`,
 * unless the images are pushed (then, like `docker buildx build --push`,
 * nothing is written here).
 */
function parseOutputs(outputs: string[], out: string | undefined, push: boolean): { ociDir: string | undefined; archives: Array<{ kind: ArchiveKind; file: string }> } {
  const ociDirs = out === undefined ? [] : [out];
  const archives: Array<{ kind: ArchiveKind; file: string }> = [];
  for (const o of outputs) {
    const m = /^(oci|oci-archive|docker-archive):(.+)$/.exec(o);
    if (!m) throw new UsageError(`--output ${o}: expected oci:<dir>, oci-archive:<file> or docker-archive:<file>`);
    if (m[1] === 'oci') ociDirs.push(m[2]!);
    else archives.push({ kind: m[1] as ArchiveKind, file: m[2]! });
  }
  if (ociDirs.length > 1) throw new UsageError(`--out/--output oci: given ${ociDirs.length} times; one OCI layout per run`);
  return { ociDir: ociDirs[0] ?? (archives.length || push ? undefined : 'out'), archives };
}

/** Registry access as the flags and environment say. */
function registryOptions(values: Record<string, unknown>, io: CliIo): RegistryClientOptions {
  const configFile = values['registry-config'] as string | undefined;
  return {
    ...(configFile ? { registryConfig: path.resolve(io.cwd, configFile) } : {}),
    insecure: (values['insecure-registry'] as string[] | undefined) ?? [],
    env: io.env,
  };
}

function oneOf<T extends string>(flag: string, value: unknown, allowed: readonly T[]): T {
  if (value === undefined) return allowed[0]!;
  if (!allowed.includes(value as T)) throw new UsageError(`${flag} ${String(value)}: expected ${allowed.join(', ')}`);
  return value as T;
}

function parseJobs(value: string | undefined): number {
  if (value === undefined) return os.availableParallelism();
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) throw new UsageError(`--jobs ${value}: expected a whole number of at least 1`);
  return n;
}

export function defaultCacheDir(env: NodeJS.ProcessEnv): string {
  const base = env.XDG_CACHE_HOME || path.join(env.HOME || os.homedir(), '.cache');
  return path.join(base, 'layergraph');
}

function sourceDateEpoch(env: NodeJS.ProcessEnv): number {
  const raw = env.SOURCE_DATE_EPOCH;
  if (raw === undefined || raw === '') return 0;
  // The upper bound is what a tar header's mtime field holds everywhere (2038-01-19).
  if (!/^\d+$/.test(raw) || Number(raw) > 2 ** 31 - 1) {
    throw new UsageError(`SOURCE_DATE_EPOCH is "${raw}"; expected whole seconds from 0 to 2147483647`);
  }
  return Number(raw);
}

function version(): string {
  // Through the package's own name: the same from dist/cli/main.js and from the CLI bundle (dist/cli.cjs).
  return (createRequire(import.meta.url)('layergraph/package.json') as { version: string }).version;
}

/** First Ctrl-C/SIGTERM: stop starting steps and finish cleanly. Second: leave at once. */
function interruptOnSignals(): { signal: AbortSignal; dispose(): void } {
  const ctl = new AbortController();
  const onSignal = (sig: NodeJS.Signals): void => {
    if (ctl.signal.aborted) {
      runForcedExitCleanups();
      process.exit(sig === 'SIGINT' ? 130 : 143);
    }
    ctl.abort(sig);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  return {
    signal: ctl.signal,
    dispose: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}
