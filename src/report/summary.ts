/**
 * The report every run ends with: a line per step (HIT/MISS and why, time,
 * layer size) and a summary line, in three forms: terminal text, JSON for
 * machines, Markdown for CI step summaries.
 */
import type { BuildResult } from '../build/run-build.js';
import type { StepResult } from '../build/events.js';
import type { StepEdge } from '../graph/step-edges.js';
import { formatBytes, formatMs } from './format.js';
import { mermaidGraph } from './graph-view.js';

export interface BuildSummary {
  total: number;
  hits: number;
  misses: number;
  failed: number;
  skipped: number;
  durationMs: number;
  /** What the hit steps took when they were built. */
  savedMs: number;
  /** Bytes pulled from and pushed to registries, when the build moved any. */
  pulledBytes?: number;
  pushedBytes?: number;
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
    ...(result.transfer ? { pulledBytes: result.transfer.pulledBytes, pushedBytes: result.transfer.pushedBytes } : {}),
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
  for (const p of result.pushed ?? []) lines.push(`pushed ${p.reference} (${p.digest})`);
  const c = result.cacheExport;
  if (c) lines.push(`cache written to ${c.to}: ${c.records} step records, ${c.blobs} new layers (${formatBytes(c.bytes)})`);
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
  if (s.pulledBytes) parts.push(`${formatBytes(s.pulledBytes)} pulled`);
  if (s.pushedBytes) parts.push(`${formatBytes(s.pushedBytes)} pushed`);
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
          ...(r.cacheSource ? { cacheSource: r.cacheSource } : {}),
        })),
        merges: result.merges,
        ...(result.pushed ? { pushed: result.pushed } : {}),
        ...(result.cacheExport ? { cacheExport: result.cacheExport } : {}),
        ...(result.execution ? { execution: result.execution } : {}),
        ...(result.warnings?.length ? { warnings: result.warnings } : {}),
        summary: {
          total: s.total,
          hits: s.hits,
          misses: s.misses,
          failed: s.failed,
          skipped: s.skipped,
          durationMs: s.durationMs,
          savedMs: s.savedMs,
          ...(s.pulledBytes !== undefined ? { pulledBytes: s.pulledBytes, pushedBytes: s.pushedBytes } : {}),
          ...(result.filesRead !== undefined ? { filesRead: result.filesRead } : {}),
        },
        ...(result.error ? { error: result.error.message } : {}),
      },
      null,
      2,
    ) + '\n'
  );
}

/**
 * The Markdown report (also what goes to GITHUB_STEP_SUMMARY): the summary
 * line, a table per image, and, given the graph's edges, a Mermaid graph of
 * the steps coloured by outcome.
 */
export function markdownReport(result: BuildResult, edges?: StepEdge[]): string {
  const s = summarize(result);
  const icon: Record<StepResult['status'], string> = { hit: '✅ HIT', miss: '🔨 MISS', failed: '❌ FAILED', skipped: '⏭️ SKIPPED' };
  const lines = [`### layergraph: ${summaryLine(s)}`];
  const byImage = new Map<string, StepResult[]>();
  for (const r of result.steps) byImage.set(r.image, [...(byImage.get(r.image) ?? []), r]);
  for (const [image, steps] of byImage) {
    const built = result.images.find((i) => i.name === image);
    const hits = steps.filter((r) => r.status === 'hit').length;
    lines.push('', `#### ${cell(image)}: ${hits}/${steps.length} cached`);
    if (built) lines.push('', `\`${built.manifestDigest}\`${built.tags.length ? ` · ${built.tags.map((t) => `\`${t}\``).join(', ')}` : ''}`);
    lines.push('', '| Step | Result | Reason | Time | Layer |', '| --- | --- | --- | ---: | ---: |');
    for (const r of steps) {
      const reason = r.status === 'hit' ? hitReason(r) : r.reason.split('\n')[0]!;
      lines.push(`| ${cell(r.step)} | ${icon[r.status]} | ${cell(reason)} | ${formatMs(r.durationMs)} | ${r.layer ? formatBytes(r.layer.size) : '–'} |`);
    }
    // A failure's whole message (a command's last lines of output) is too long for a cell.
    for (const r of steps.filter((x) => x.status === 'failed' && x.reason.includes('\n'))) {
      const fence = '`'.repeat(Math.max(3, ...[...r.reason.matchAll(/`+/g)].map((m) => m[0].length + 1)));
      lines.push('', `<details><summary>${html(`${r.image}/${r.step}`)} failed</summary>`, '', `${fence}text`, r.reason, fence, '', '</details>');
    }
  }
  if (result.merges.length) lines.push('', ...result.merges.map((m) => `- ${mergeLine(m)}`));
  if (edges && result.steps.length) lines.push('', '```mermaid', mermaidGraph(result.steps, edges).trimEnd(), '```');
  return lines.join('\n') + '\n';
}

/** A hit has no reason to give; say what it saved, and where it came from when not from this machine. */
function hitReason(r: StepResult): string {
  const from = r.cacheSource && r.cacheSource !== 'local' ? ` from ${r.cacheSource}` : '';
  return `cached${from}${r.savedMs ? `, ~${formatMs(r.savedMs)} saved` : ''}`;
}

function html(text: string): string {
  return text.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** Keep a table cell on one line and its pipes literal. */
function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
}
