// CI's guard on the no-op path (npm run bench:check): build a small generated
// workload cold, then twice again unchanged, in this process tree, and fail
// when the no-op rebuilds read input files' content (the stat cache must vouch
// for every one: none in the second, at most a few racily clean ones in the
// first), miss any step, or take more than a quarter of the cold build (the
// faster of the two).
// Not a benchmark: one run of each, generous bounds, nothing to compare against.
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { generate } from './generate.mjs';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const CLI = join(ROOT, 'bin', 'layergraph.js');
/** Files the first no-op may read again: written within a timestamp tick of the cold build's start. */
const RACILY_CLEAN_ALLOWANCE = 5;

const dir = await mkdtemp(join(os.tmpdir(), 'layergraph-bench-check-'));
try {
  generate(join(dir, 'repo'), { services: 5, files: 1000, libFiles: 200 });
  const build = async (name) => {
    const report = join(dir, `${name}.json`);
    const t = performance.now();
    await run('node', [CLI, 'run', join(dir, 'repo', 'build.yaml'), '--cache-dir', join(dir, 'cache'), '--out', join(dir, 'out'), '--report', report, '--progress', 'quiet'], {
      timeout: 10 * 60_000,
    });
    const ms = performance.now() - t;
    return { ms, summary: JSON.parse(await readFile(report, 'utf8')).summary };
  };
  const cold = await build('cold');
  // Two unchanged rebuilds, the faster one timed: one slow start of node on a busy runner is not a regression.
  const noops = [await build('noop-1'), await build('noop-2')];
  const noop = noops[0].ms <= noops[1].ms ? noops[0] : noops[1];
  // The stat cache never vouches for a file changed within a timestamp tick of the cold build's start
  // (racily clean, as in git): the first no-op may read a few such files once more (CI saw one), the
  // second none. A stat cache that the cold build failed to fill would have the first read thousands.
  const [first, second] = noops.map((n) => n.summary.filesRead);
  noop.summary.filesRead = first > RACILY_CLEAN_ALLOWANCE ? first : second;
  if (first) console.log(`first no-op read ${first} file(s) again (racily clean after the cold build; up to ${RACILY_CLEAN_ALLOWANCE} allowed)`);
  noop.summary.misses = Math.max(...noops.map((n) => n.summary.misses));
  const line = (n, r) => `${n}: ${r.ms.toFixed(0)} ms, ${r.summary.hits}/${r.summary.total} cached, ${r.summary.filesRead} files read`;
  console.log(line('cold', cold));
  console.log(line('no-op', noop));
  const problems = [];
  if (noop.summary.misses || noop.summary.failed) problems.push(`the no-op rebuild built ${noop.summary.misses + noop.summary.failed} steps`);
  if (noop.summary.filesRead !== 0) problems.push(`the no-op rebuild read ${noop.summary.filesRead} input files (the stat cache should vouch for all of them)`);
  if (noop.ms > cold.ms / 4) problems.push(`the no-op rebuild took ${noop.ms.toFixed(0)} ms, more than a quarter of the cold build's ${cold.ms.toFixed(0)} ms`);
  if (problems.length) {
    console.error(`bench:check failed:\n  ${problems.join('\n  ')}`);
    process.exitCode = 1;
  } else console.log('bench:check ok');
} finally {
  await rm(dir, { recursive: true, force: true });
}
