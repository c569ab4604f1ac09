/**
 * The report every run ends with: a line per step (HIT/MISS and why, time,
 * layer size) and a summary line, in three forms: terminal text, JSON for
 * machines, Markdown for CI step summaries.
 */
import type { BuildResult } from '../build/run-build.js';
import type { StepResult } from '../build/events.js';
import { formatBytes, formatMs } from './format.js';

export interface BuildSummary {
  total: number;
  hits: number;
  misses: number;
  failed: number;
  skipped: number;
  durationMs: number;
  /** What the hit steps took when they were built. */
  savedMs: number;
}

export function summarize(result: BuildResult): BuildSummary {
  const count = (s: StepResult['status']): number => result.steps.filter((r) => r.status === s).length;
  return {
    total: result.steps.length,
    hits: count('hit'),
    misses: count('miss'),
    failed: count('failed'),
    skipped: count('skipped'),
    durationMs: result.durationMs,
    savedMs: result.steps.reduce((t, r) => t + (r.status === 'hit' ? r.savedMs : 0), 0),
  };
}

export function textReport(result: BuildResult): string {
  const rows = result.steps.map((r) => [
    `${r.image}/${r.step}`,
    r.status.toUpperCase(),
    formatMs(r.durationMs),
    r.layer ? formatBytes(r.layer.size) : '-',
    // The first line: a failed command's output is in the error printed after the report.
    r.reason.split('\n')[0]!,
  ]);
  const widths = [0, 1, 2, 3].map((c) => Math.max(...rows.map((row) => row[c]!.length)));
  const lines = rows.map((row) =>
    row
      .map((cell, c) => (c === 4 ? cell : c === 2 || c === 3 ? cell.padStart(widths[c]!) : cell.padEnd(widths[c]!)))
      .join('  ')
      .trimEnd(),
  );
  for (const m of result.merges) lines.push(mergeLine(m));
  for (const img of result.images) lines.push(`${img.name}: ${img.manifestDigest}${img.tags.length ? ` (${img.tags.join(', ')})` : ''}`);
  if (result.execution) lines.push(`run steps used the ${result.execution.snapshotter} snapshotter and ${result.execution.runtime}`);
  lines.push(summaryLine(summarize(result)));
  return lines.join('\n') + '\n';
}

function mergeLine(m: BuildResult['merges'][number]): string {
  return `${m.image}: ${m.path} changed by both ${m.steps[0]} and ${m.steps[1]}; ${m.winner} wins (merge: declared-order)`;
}

export function summaryLine(s: BuildSummary): string {
  const parts = [`${s.hits}/${s.total} steps cached`];
  if (s.misses) parts.push(`${s.misses} built`);
  if (s.failed) parts.push(`${s.failed} failed`);
  if (s.skipped) parts.push(`${s.skipped} skipped`);
  parts.push(`in ${formatMs(s.durationMs)}`);
  if (s.savedMs) parts.push(`~${formatMs(s.savedMs)} saved by the cache`);
  return parts.join(', ');
}

export function jsonReport(result: BuildResult): string {
  const s = summarize(result);
  return (
    JSON.stringify(
      {
        images: result.images.map((i) => ({ name: i.name, tags: i.tags, manifestDigest: i.manifestDigest })),
        steps: result.steps.map((r) => ({
          image: r.image,
          id: r.step,
          status: r.status,
          reason: r.reason,
          key: r.key,
          startMs: r.startMs,
          durationMs: r.durationMs,
          layer: r.layer ? { digest: r.layer.digest, diffId: r.layer.diffId, size: r.layer.size } : null,
          ...(r.logFile ? { log: r.logFile } : {}),
        })),
        merges: result.merges,
        ...(result.execution ? { execution: result.execution } : {}),
        summary: { total: s.total, hits: s.hits, misses: s.misses, failed: s.failed, skipped: s.skipped, durationMs: s.durationMs, savedMs: s.savedMs },
        ...(result.error ? { error: result.error.message } : {}),
      },
      null,
      2,
    ) + '\n'
  );
}

export function markdownReport(result: BuildResult): string {
  const s = summarize(result);
  const icon: Record<StepResult['status'], string> = { hit: '✅ HIT', miss: '🔨 MISS', failed: '❌ FAILED', skipped: '⏭️ SKIPPED' };
  const lines = [`### layergraph: ${summaryLine(s)}`, ''];
  lines.push('| Image | Step | Result | Reason | Time | Layer |', '| --- | --- | --- | --- | ---: | ---: |');
  for (const r of result.steps) {
    lines.push(
      `| ${cell(r.image)} | ${cell(r.step)} | ${icon[r.status]} | ${cell(r.reason)} | ${formatMs(r.durationMs)} | ${r.layer ? formatBytes(r.layer.size) : '–'} |`,
    );
  }
  if (result.images.length) {
    lines.push('', '| Image | Tags | Manifest |', '| --- | --- | --- |');
    for (const img of result.images) lines.push(`| ${cell(img.name)} | ${cell(img.tags.join(', '))} | \`${img.manifestDigest}\` |`);
  }
  if (result.merges.length) lines.push('', ...result.merges.map((m) => `- ${mergeLine(m)}`));
  return lines.join('\n') + '\n';
}

/** Keep a table cell on one line and its pipes literal. */
function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
}
