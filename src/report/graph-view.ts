/**
 * The step graph drawn for people: Mermaid (rendered by GitHub in step
 * summaries and Markdown) and Graphviz DOT. One box per image holding its
 * steps, an arrow per edge (solid: `needs`; thick: built `from` an image;
 * dotted: `copy … from:`), each step coloured by what happened to it.
 */
import type { StepEdge } from '../graph/step-edges.js';

/** What the drawing needs of a step: statuses are the build's plus plan's `unknown`. */
export interface ViewStep {
  image: string;
  step: string;
  status: 'hit' | 'miss' | 'failed' | 'skipped' | 'unknown';
}

const STYLE: Record<ViewStep['status'], { fill: string; stroke: string; dashed: boolean; word: string }> = {
  hit: { fill: '#dafbe1', stroke: '#1a7f37', dashed: false, word: 'hit' },
  miss: { fill: '#fff8c5', stroke: '#9a6700', dashed: false, word: 'miss' },
  failed: { fill: '#ffebe9', stroke: '#cf222e', dashed: false, word: 'failed' },
  skipped: { fill: '#f6f8fa', stroke: '#6e7781', dashed: true, word: 'skipped' },
  unknown: { fill: '#ddf4ff', stroke: '#0969da', dashed: true, word: 'unknown' },
};

export function mermaidGraph(steps: ViewStep[], edges: StepEdge[]): string {
  const ids = nodeIds(steps);
  const lines = ['graph TD'];
  groupByImage(steps).forEach(([image, group], i) => {
    lines.push(`  subgraph img${i}["${mermaidText(image)}"]`);
    // The status in words too: colour alone does not reach everyone.
    for (const s of group) lines.push(`    ${ids.get(key(s))}["${mermaidText(s.step)} · ${STYLE[s.status].word}"]`);
    lines.push('  end');
  });
  const arrow: Record<StepEdge['kind'], string> = { needs: '-->', base: '==>', 'copy-from': '-. copy .->' };
  for (const e of edges) {
    const from = ids.get(e.from);
    const to = ids.get(e.to);
    if (from && to) lines.push(`  ${from} ${arrow[e.kind]} ${to}`);
  }
  for (const [status, style] of Object.entries(STYLE)) {
    const members = steps.filter((s) => s.status === status).map((s) => ids.get(key(s))!);
    if (!members.length) continue;
    lines.push(`  classDef ${status} fill:${style.fill},stroke:${style.stroke},color:#1f2328${style.dashed ? ',stroke-dasharray:4 3' : ''}`);
    lines.push(`  class ${members.join(',')} ${status}`);
  }
  return lines.join('\n') + '\n';
}

export function dotGraph(steps: ViewStep[], edges: StepEdge[]): string {
  const lines = ['digraph layergraph {', '  rankdir=TB;', '  node [shape=box, style="rounded,filled", fontname="sans-serif"];'];
  groupByImage(steps).forEach(([image, group], i) => {
    lines.push(`  subgraph cluster_${i} {`, `    label=${dotString(image)};`, '    style=rounded;');
    for (const s of group) {
      const st = STYLE[s.status];
      const style = st.dashed ? ', style="rounded,filled,dashed"' : '';
      lines.push(`    ${dotString(key(s))} [label=${dotString(`${s.step}\n${st.word}`)}, fillcolor="${st.fill}", color="${st.stroke}"${style}];`);
    }
    lines.push('  }');
  });
  const attrs: Record<StepEdge['kind'], string> = { needs: '', base: ' [style=bold]', 'copy-from': ' [style=dashed, label="copy"]' };
  for (const e of edges) lines.push(`  ${dotString(e.from)} -> ${dotString(e.to)}${attrs[e.kind]};`);
  lines.push('}');
  return lines.join('\n') + '\n';
}

function key(s: ViewStep): string {
  return `${s.image}/${s.step}`;
}

/** Short ids (`s0`, `s1`…): image and step names may hold `.` and `-`, which Mermaid reads as syntax. */
function nodeIds(steps: ViewStep[]): Map<string, string> {
  return new Map(steps.map((s, i) => [key(s), `s${i}`]));
}

function groupByImage(steps: ViewStep[]): Array<[string, ViewStep[]]> {
  const groups = new Map<string, ViewStep[]>();
  for (const s of steps) groups.set(s.image, [...(groups.get(s.image) ?? []), s]);
  return [...groups];
}

/** Text inside `["…"]`: Mermaid's entity codes for what would end or break the label. */
function mermaidText(text: string): string {
  return text.replace(/[#"<>&]/g, (c) => `#${c.charCodeAt(0)};`);
}

function dotString(text: string): string {
  return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\n/g, '\\n')}"`;
}
