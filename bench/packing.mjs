// Packing one large layer: layergraph building a single copy step of a big
// tree (hash the inputs, tar, gzip, sha256, store, write the layout), against
// `tar -c | pigz -p <cores> | sha256sum` on the same tree, and layergraph's
// peak memory (RSS, from GNU time) while it does so.
import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import { generateBigTree } from './generate.mjs';
import { exec, timed, which } from './exec.mjs';

export async function measurePacking(work, app, mib, reps, log) {
  const missing = ['pigz', 'time'].filter((t) => !which(t));
  if (missing.length) return { skipped: `not installed: ${missing.join(', ')} (apt-get install pigz time)` };
  const dir = join(work, 'packing');
  const tree = generateBigTree(join(dir, 'tree'), mib << 20);
  writeFileSync(join(dir, 'build.yaml'), 'version: 1\nimages:\n  big:\n    steps:\n      - id: data\n        copy: tree/\n        to: /data/\n');
  const cores = availableParallelism();
  const pipeline = [], ours = [], rss = [];
  for (let rep = 0; rep < reps; rep++) {
    spawnSync('sync');
    pipeline.push(await timed(() => exec('sh', ['-c', `tar -C tree -cf - . | pigz -p ${cores} | sha256sum`], { cwd: dir })));
    const out = join(dir, 'lg');
    rmSync(out, { recursive: true, force: true });
    mkdirSync(out);
    spawnSync('sync');
    const rssFile = join(dir, 'rss');
    ours.push(await timed(() => exec(which('time'), ['-f', '%M', '-o', rssFile, process.execPath, join(app.dir, 'bin/layergraph.js'), 'run',
      join(dir, 'build.yaml'), '--cache-dir', join(out, 'cache'), '--out', join(out, 'oci'), '--progress', 'quiet'], { cwd: dir })));
    rss.push(Number(readFileSync(rssFile, 'utf8').trim().split('\n').at(-1)) / 1024);
    log(`packing rep ${rep + 1}/${reps}: pipeline ${pipeline.at(-1).toFixed(2)} s, layergraph ${ours.at(-1).toFixed(2)} s, peak RSS ${rss.at(-1).toFixed(0)} MiB`);
  }
  rmSync(dir, { recursive: true, force: true });
  const mbps = (s) => tree.bytes / 2 ** 20 / s;
  return {
    bytes: tree.bytes,
    files: tree.files,
    pipeline: { command: `tar -c | pigz -p ${cores} | sha256sum`, runs: pipeline, medianSeconds: median(pipeline), mibPerSecond: mbps(median(pipeline)) },
    layergraph: { runs: ours, medianSeconds: median(ours), mibPerSecond: mbps(median(ours)), peakRssMiB: Math.max(...rss) },
  };
}

export function median(xs) {
  return [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
}
