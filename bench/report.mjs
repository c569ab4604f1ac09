// The benchmark's results as Markdown: what was measured, where and when, the
// medians side by side with layergraph's time as a fraction of each tool's,
// and each target of issue 5 marked met or not.
const LABELS = { cold: 'cold (empty caches)', warm: 'no-op rebuild', changed: 'one file changed', base: 'base image changed' };
const NAMES = { layergraph: 'layergraph', buildkit: 'BuildKit', buildah: 'Buildah' };
/** layergraph's time as a fraction of BuildKit's, at most. */
const TARGETS = { cold: 0.33, warm: 0.1, changed: 0.2 };
const PACKING_TARGET = 0.8;
const RSS_TARGET_MIB = 150;

export function markdown(r) {
  const m = r.machine;
  const tools = Object.keys(r.results.cold);
  const others = tools.filter((t) => t !== 'layergraph');
  const lines = [
    `### ${r.date.slice(0, 10)} · ${m.cpus} × ${m.cpuModel}, ${Math.round(m.memoryGiB)} GiB, Linux ${m.kernel}, Node ${m.node}`,
    '',
    `${r.workload.services} services × ${r.workload.filesPerService} files + ${r.workload.libFiles} shared files; ${r.workload.stepsPerImage}; `
      + `${r.workload.base}. Median of ${r.reps} run${r.reps === 1 ? '' : 's'}, wall-clock seconds, process start included.`,
    '',
    `| scenario | ${tools.map((t) => NAMES[t] ?? t).join(' | ')} | ${others.map((t) => `layergraph / ${NAMES[t] ?? t}`).join(' | ')} | target |`,
    `| --- | ${tools.map(() => '---:').join(' | ')} | ${others.map(() => '---:').join(' | ')} | --- |`,
  ];
  for (const [s, row] of Object.entries(r.results)) {
    const target = TARGETS[s];
    const vsBuildkit = row.buildkit?.layergraphRatio;
    const mark = target === undefined ? '' : vsBuildkit == null ? `≤ ${target} × BuildKit (not measured)`
      : `≤ ${target} × BuildKit ${vsBuildkit <= target ? '✅' : '❌'}`;
    lines.push(`| ${LABELS[s] ?? s} | ${tools.map((t) => `${row[t].medianSeconds.toFixed(2)} s`).join(' | ')} | `
      + `${others.map((t) => (row[t].layergraphRatio == null ? '–' : row[t].layergraphRatio.toFixed(2))).join(' | ')} | ${mark} |`);
  }
  lines.push('');
  const p = r.packing;
  if (p.skipped) lines.push(`Packing: skipped (${p.skipped}).`);
  else {
    const ratio = p.layergraph.mibPerSecond / p.pipeline.mibPerSecond;
    lines.push(
      `| one ${Math.round(p.bytes / 2 ** 20)} MiB layer (${p.files} files) | time | throughput | target |`,
      '| --- | ---: | ---: | --- |',
      `| \`${p.pipeline.command.replaceAll('|', '\\|')}\` | ${p.pipeline.medianSeconds.toFixed(2)} s | ${p.pipeline.mibPerSecond.toFixed(0)} MiB/s | |`,
      `| layergraph (hash, tar, gzip, store, write layout) | ${p.layergraph.medianSeconds.toFixed(2)} s | ${p.layergraph.mibPerSecond.toFixed(0)} MiB/s `
        + `(${ratio.toFixed(2)} ×) | ≥ ${PACKING_TARGET} × ${ratio >= PACKING_TARGET ? '✅' : '❌'} |`,
      `| layergraph peak RSS | | ${p.layergraph.peakRssMiB.toFixed(0)} MiB | ≤ ${RSS_TARGET_MIB} MiB ${p.layergraph.peakRssMiB <= RSS_TARGET_MIB ? '✅' : '❌'} |`,
    );
  }
  const skipped = Object.entries(r.tools).filter(([, t]) => t.skipped).map(([n, t]) => `${NAMES[n] ?? n}: ${t.skipped}`);
  if (skipped.length) lines.push('', ...skipped.map((s) => `- ${s}`));
  lines.push('', ...Object.entries(r.tools).filter(([, t]) => !t.skipped).map(([n, t]) => `- ${NAMES[n] ?? n}: ${t.version}`));
  const noise = Object.values(r.results).flatMap((x) => Object.values(x).flatMap((y) => y.otherProcessesCpuSeconds));
  lines.push(`- other processes used up to ${Math.max(...noise).toFixed(2)} CPU-s during one timed run; 1-min load average before: ${m.loadAverage1mBefore.toFixed(2)}`);
  return lines.join('\n');
}
