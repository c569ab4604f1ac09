/** The edges of the build graph as plain data, for reports and `plan` to draw. */
import type { EdgeAttrs, Graph } from './build-graph.js';

export interface StepEdge {
  /** `image/step` ids: `to` needs `from` first. */
  from: string;
  to: string;
  kind: EdgeAttrs['kind'];
}

/** Edges between the steps in `steps` (`image/step` ids), in the graph's order. */
export function stepEdges(graph: Graph, steps: Iterable<string>): StepEdge[] {
  const wanted = new Set(steps);
  const edges: StepEdge[] = [];
  graph.forEachEdge((_e, attrs, from, to) => {
    if (wanted.has(from) && wanted.has(to)) edges.push({ from, to, kind: attrs.kind });
  });
  return edges;
}
