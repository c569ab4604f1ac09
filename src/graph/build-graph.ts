/**
 * The build graph: every step of every image is a node `image/step`; an edge
 * u → v means v needs u first. Three kinds of edge:
 *   - `needs`: v sits on u's filesystem (the previous step by default);
 *   - `base`: v is a first step of an image built `from` u's image;
 *   - `copy-from`: v copies files out of u's image.
 * The graph is checked for cycles here, so everything after it may assume a DAG.
 */
import { DirectedGraph } from 'graphology';
import type { BuildSpec, ImageSpec, StepSpec } from '../config/types.js';
import type { SourcePos } from '../errors.js';
import { ConfigError } from '../errors.js';

export interface StepNode {
  image: ImageSpec;
  step: StepSpec;
  /** Position in the file, across all images: the tie-breaker that keeps declared order. */
  index: number;
}

export interface EdgeAttrs {
  kind: 'needs' | 'base' | 'copy-from';
  /** Where the build file asks for this edge. */
  pos: SourcePos;
}

export type Graph = DirectedGraph<StepNode, EdgeAttrs>;

export interface BuildGraph {
  graph: Graph;
  images: Map<string, ImageSpec>;
  /** Per image, its steps in layer order: topological, declared order where the graph allows. */
  layerOrder: Map<string, StepSpec[]>;
}

export function nodeId(image: string, step: string): string {
  return `${image}/${step}`;
}

export function buildGraph(spec: BuildSpec): BuildGraph {
  const graph: Graph = new DirectedGraph<StepNode, EdgeAttrs>();
  const images = new Map(spec.images.map((img) => [img.name, img]));
  let index = 0;
  for (const image of spec.images) {
    for (const step of image.steps) graph.addNode(nodeId(image.name, step.id), { image, step, index: index++ });
  }
  for (const image of spec.images) {
    for (const step of image.steps) {
      const to = nodeId(image.name, step.id);
      step.needs.forEach((dep, i) =>
        graph.mergeEdge(nodeId(image.name, dep), to, { kind: 'needs', pos: step.needsPos[i] ?? step.pos }),
      );
      if (step.needs.length === 0 && image.from.kind === 'image') {
        const base = images.get(image.from.image)!;
        for (const sink of sinks(base)) graph.mergeEdge(nodeId(base.name, sink.id), to, { kind: 'base', pos: image.from.pos });
      }
      if (step.kind === 'copy' && step.fromImage) {
        const src = images.get(step.fromImage.image)!;
        for (const sink of sinks(src)) {
          graph.mergeEdge(nodeId(src.name, sink.id), to, { kind: 'copy-from', pos: step.fromImage.pos });
        }
      }
    }
  }
  rejectCycles(graph);
  const layerOrder = new Map(spec.images.map((img) => [img.name, orderLayers(img)]));
  return { graph, images, layerOrder };
}

/**
 * The images a run must build for `targets` (all images when empty): the
 * targets and every image they are built from or copy from, in file order.
 */
export function imagesFor(spec: BuildSpec, targets: string[]): ImageSpec[] {
  if (targets.length === 0) return spec.images;
  const byName = new Map(spec.images.map((img) => [img.name, img]));
  const wanted = new Set<string>();
  const visit = (name: string): void => {
    if (wanted.has(name)) return;
    const img = byName.get(name);
    if (!img) return;
    wanted.add(name);
    if (img.from.kind === 'image') visit(img.from.image);
    for (const s of img.steps) if (s.kind === 'copy' && s.fromImage) visit(s.fromImage.image);
  };
  targets.forEach(visit);
  return spec.images.filter((img) => wanted.has(img.name));
}

/** Steps no other step of the same image needs: together they are the image's top. */
export function sinks(image: ImageSpec): StepSpec[] {
  const needed = new Set(image.steps.flatMap((s) => s.needs));
  return image.steps.filter((s) => !needed.has(s.id));
}

/** The ids of every step `stepId` sits on in its image: its needs, theirs, and so on. */
export function stepsBelow(image: ImageSpec, stepId: string): Set<string> {
  const byId = new Map(image.steps.map((s) => [s.id, s]));
  const below = new Set<string>();
  const visit = (id: string): void => {
    for (const need of byId.get(id)?.needs ?? []) {
      if (below.has(need)) continue;
      below.add(need);
      visit(need);
    }
  };
  visit(stepId);
  return below;
}

/** Kahn's algorithm, always taking the ready step declared first. */
function orderLayers(image: ImageSpec): StepSpec[] {
  const remaining = new Map(image.steps.map((s) => [s.id, new Set(s.needs)]));
  const out: StepSpec[] = [];
  while (out.length < image.steps.length) {
    const next = image.steps.find((s) => remaining.get(s.id)?.size === 0)!;
    remaining.delete(next.id);
    for (const deps of remaining.values()) deps.delete(next.id);
    out.push(next);
  }
  return out;
}

function rejectCycles(graph: Graph): void {
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (node: string): void => {
    state.set(node, 'open');
    stack.push(node);
    for (const next of graph.outNeighbors(node)) {
      const s = state.get(next);
      if (s === 'open') throw cycleError(graph, stack.slice(stack.indexOf(next)), next);
      if (!s) visit(next);
    }
    stack.pop();
    state.set(node, 'done');
  };
  graph.forEachNode((node) => {
    if (!state.has(node)) visit(node);
  });
}

function cycleError(graph: Graph, path: string[], back: string): ConfigError {
  const closing = graph.getEdgeAttributes(graph.edge(path[path.length - 1]!, back)!);
  const loop = [...path, back].join(' → ');
  return new ConfigError([
    {
      pos: closing.pos,
      path: 'needs',
      message: `steps form a cycle: ${loop}; a step cannot (even indirectly) need itself`,
    },
  ]);
}
