/** What `layergraph plan` prints: text, JSON, Graphviz DOT or Mermaid. */
import type { BuildPlan, PlanStatus } from '../build/plan-build.js';
import { dotGraph, mermaidGraph } from './graph-view.js';

export const PLAN_FORMATS = ['text', 'json', 'dot', 'mermaid'] as const;
export type PlanFormat = (typeof PLAN_FORMATS)[number];

export function planReport(plan: BuildPlan, format: PlanFormat): string {
  switch (format) {
    case 'text':
      return planText(plan);
    case 'json':
      return planJson(plan);
    case 'dot':
      return dotGraph(plan.steps, plan.edges);
    case 'mermaid':
      return mermaidGraph(plan.steps, plan.edges);
  }
}

export interface PlanSummary {
  total: number;
  hits: number;
  misses: number;
  unknown: number;
}

export function summarizePlan(plan: BuildPlan): PlanSummary {
  const count = (s: PlanStatus): number => plan.steps.filter((p) => p.status === s).length;
  return { total: plan.steps.length, hits: count('hit'), misses: count('miss'), unknown: count('unknown') };
}

/** One line per step: `image/step`, HIT / MISS / UNKNOWN, and why; then a summary line. */
function planText(plan: BuildPlan): string {
  const rows = plan.steps.map((s) => [
    `${s.image}/${s.step}`,
    s.status.toUpperCase(),
    s.cacheSource && s.cacheSource !== 'local' ? `from ${s.cacheSource}` : s.reason.split('\n')[0]!,
  ]);
  const widths = [0, 1].map((c) => Math.max(0, ...rows.map((r) => r[c]!.length)));
  const lines = rows.map((r) => `${r[0]!.padEnd(widths[0]!)}  ${r[1]!.padEnd(widths[1]!)}  ${r[2]}`.trimEnd());
  const s = summarizePlan(plan);
  const parts = [`${s.hits}/${s.total} steps would hit`];
  if (s.misses) parts.push(`${s.misses} would be built`);
  if (s.unknown) parts.push(`${s.unknown} unknown until built`);
  lines.push(parts.join(', '));
  return lines.join('\n') + '\n';
}

function planJson(plan: BuildPlan): string {
  return (
    JSON.stringify(
      {
        images: plan.images,
        steps: plan.steps.map((s) => ({
          image: s.image,
          id: s.step,
          kind: s.kind,
          status: s.status,
          reason: s.reason,
          key: s.key,
          layer: s.layer ? { digest: s.layer.digest, diffId: s.layer.diffId, size: s.layer.size } : null,
          savedMs: s.savedMs,
          ...(s.cacheSource ? { cacheSource: s.cacheSource } : {}),
        })),
        edges: plan.edges,
        summary: summarizePlan(plan),
      },
      null,
      2,
    ) + '\n'
  );
}
