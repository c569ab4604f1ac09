import { describe, expect, it } from 'vitest';
import type { BuildSpec, CopyStep, ImageSpec } from '../src/config/types.js';
import { ConfigError, type SourcePos } from '../src/errors.js';
import { buildGraph, imagesFor, nodeId, sinks } from '../src/graph/build-graph.js';

const pos = (line: number, col = 1): SourcePos => ({ file: 'build.yaml', line, col });

let nextLine = 100;

interface StepOpts {
  needs?: string[];
  needsPos?: SourcePos[];
  fromImage?: { image: string; pos: SourcePos };
  pos?: SourcePos;
}

function step(id: string, opts: StepOpts = {}): CopyStep {
  const p = opts.pos ?? pos(nextLine++);
  const needs = opts.needs ?? [];
  return {
    kind: 'copy',
    id,
    pos: p,
    needs,
    needsPos: opts.needsPos ?? needs.map(() => p),
    sources: [`${id}.txt`],
    sourcesPos: [p],
    to: `/${id}/`,
    fromImage: opts.fromImage,
    link: false,
    chmod: undefined,
    chown: undefined,
    keyPos: {},
  };
}

function image(name: string, steps: CopyStep[], from?: { image: string; pos: SourcePos }): ImageSpec {
  return {
    name,
    pos: pos(nextLine++),
    from: from ? { kind: 'image', ...from } : { kind: 'scratch' },
    platform: undefined,
    env: {},
    workdir: undefined,
    user: undefined,
    entrypoint: undefined,
    cmd: undefined,
    labels: {},
    expose: [],
    tags: [],
    push: false,
    merge: 'fail',
    steps,
  };
}

function spec(...images: ImageSpec[]): BuildSpec {
  return { file: '/ctx/build.yaml', context: '/ctx', images };
}

/** Sorted `from->to (kind)` strings for every edge. */
function edges(g: ReturnType<typeof buildGraph>['graph']): string[] {
  return g
    .mapEdges((_e, attrs, source, target) => `${source}->${target} (${attrs.kind})`)
    .sort();
}

function order(bg: ReturnType<typeof buildGraph>, img: string): string[] {
  return (bg.layerOrder.get(img) ?? []).map((s) => s.id);
}

function catchConfigError(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return err as ConfigError;
  }
  throw new Error('expected a ConfigError, nothing was thrown');
}

describe('buildGraph', () => {
  it('names nodes image/step and keeps the step and image on each node', () => {
    const s = spec(image('api', [step('deps'), step('src', { needs: ['deps'] })]), image('web', [step('html')]));
    const bg = buildGraph(s);
    expect(nodeId('api', 'deps')).toBe('api/deps');
    expect(bg.graph.nodes().sort()).toEqual(['api/deps', 'api/src', 'web/html']);
    const attrs = bg.graph.getNodeAttributes('api/src');
    expect(attrs.image.name).toBe('api');
    expect(attrs.step.id).toBe('src');
    expect(bg.graph.getNodeAttributes('api/deps').index).toBe(0);
    expect(attrs.index).toBe(1);
    expect(bg.graph.getNodeAttributes('web/html').index).toBe(2);
    expect([...bg.images.keys()]).toEqual(['api', 'web']);
  });

  it('adds a needs edge per entry, positioned where the entry is', () => {
    const s = spec(
      image('api', [
        step('a'),
        step('b'),
        step('c', { needs: ['a', 'b'], needsPos: [pos(7, 15), pos(7, 18)] }),
      ]),
    );
    const bg = buildGraph(s);
    expect(edges(bg.graph)).toEqual(['api/a->api/c (needs)', 'api/b->api/c (needs)']);
    expect(bg.graph.getEdgeAttributes(bg.graph.edge('api/a', 'api/c')!).pos).toEqual(pos(7, 15));
    expect(bg.graph.getEdgeAttributes(bg.graph.edge('api/b', 'api/c')!).pos).toEqual(pos(7, 18));
  });

  it('adds base edges from every sink of the base image to the first steps of the derived image', () => {
    const fromPos = pos(40, 11);
    const s = spec(
      // base has two sinks: x and y (both on root, nobody needs them)
      image('base', [step('root'), step('x', { needs: ['root'] }), step('y', { needs: ['root'] })]),
      image('app', [step('one'), step('two', { needs: ['one'] })], { image: 'base', pos: fromPos }),
    );
    const bg = buildGraph(s);
    expect(edges(bg.graph)).toEqual([
      'app/one->app/two (needs)',
      'base/root->base/x (needs)',
      'base/root->base/y (needs)',
      'base/x->app/one (base)',
      'base/y->app/one (base)',
    ]);
    expect(bg.graph.getEdgeAttributes(bg.graph.edge('base/x', 'app/one')!).pos).toEqual(fromPos);
    // nothing from the base goes straight to a step that sits on another step
    expect(bg.graph.hasEdge('base/x', 'app/two')).toBe(false);
    expect(bg.graph.hasEdge('base/root', 'app/one')).toBe(false);
  });

  it('gives every first step (needs []) of a derived image a base edge', () => {
    const s = spec(
      image('base', [step('b1')]),
      image('app', [step('p'), step('q')], { image: 'base', pos: pos(3) }),
    );
    const bg = buildGraph(s);
    expect(bg.graph.hasEdge('base/b1', 'app/p')).toBe(true);
    expect(bg.graph.hasEdge('base/b1', 'app/q')).toBe(true);
  });

  it('adds copy-from edges from the sinks of the source image', () => {
    const copyPos = pos(55, 15);
    const s = spec(
      image('builder', [step('src'), step('dist', { needs: ['src'] })]),
      image('api', [step('deps'), step('bin', { needs: ['deps'], fromImage: { image: 'builder', pos: copyPos } })]),
    );
    const bg = buildGraph(s);
    expect(edges(bg.graph)).toEqual([
      'api/deps->api/bin (needs)',
      'builder/dist->api/bin (copy-from)',
      'builder/src->builder/dist (needs)',
    ]);
    expect(bg.graph.getEdgeAttributes(bg.graph.edge('builder/dist', 'api/bin')!).pos).toEqual(copyPos);
    // an image built from scratch has no base edges
    expect(bg.graph.inDegree('api/deps')).toBe(0);
  });
});

describe('layerOrder', () => {
  it('keeps declared order when the needs allow it', () => {
    const s = spec(image('api', [step('a'), step('b', { needs: ['a'] }), step('c', { needs: ['b'] })]));
    expect(order(buildGraph(s), 'api')).toEqual(['a', 'b', 'c']);
  });

  it('reorders when a step declared first needs a later one', () => {
    const s = spec(image('api', [step('b', { needs: ['c'] }), step('c'), step('d', { needs: ['b'] })]));
    expect(order(buildGraph(s), 'api')).toEqual(['c', 'b', 'd']);
  });

  it('keeps parallel branches in declared order', () => {
    const s = spec(
      image('api', [step('z'), step('a'), step('m', { needs: ['z', 'a'] })]),
      image('web', [step('q', { needs: ['p'] }), step('p'), step('r')]),
    );
    const bg = buildGraph(s);
    expect(order(bg, 'api')).toEqual(['z', 'a', 'm']);
    expect(order(bg, 'web')).toEqual(['p', 'q', 'r']);
    // two steps with needs [] have no edge between them
    expect(bg.graph.hasEdge('api/z', 'api/a')).toBe(false);
    expect(bg.graph.hasEdge('api/a', 'api/z')).toBe(false);
  });

  it('returns the step objects of the spec, one entry per image', () => {
    const a = step('a');
    const s = spec(image('api', [a]), image('web', []));
    const bg = buildGraph(s);
    expect(bg.layerOrder.get('api')?.[0]).toBe(a);
    expect(bg.layerOrder.get('web')).toEqual([]);
    expect([...bg.layerOrder.keys()]).toEqual(['api', 'web']);
  });
});

describe('cycle detection', () => {
  it('rejects a two-step loop with its path, at the edge that closes it', () => {
    const s = spec(
      image('api', [
        step('a', { needs: ['b'], needsPos: [pos(5, 16)] }),
        step('b', { needs: ['a'], needsPos: [pos(8, 16)] }),
      ]),
    );
    const err = catchConfigError(() => buildGraph(s));
    expect(err.code).toBe('CONFIG_INVALID');
    expect(err.issues).toHaveLength(1);
    const issue = err.issues[0]!;
    expect(issue.message).toContain('api/a → api/b → api/a');
    // the loop api/a → api/b → api/a closes with the edge api/b → api/a, i.e. a's `needs: [b]`
    expect(issue.pos).toEqual(pos(5, 16));
    expect(err.message).toContain('build.yaml:5:16:');
  });

  it('names every step of a longer loop, and only the loop', () => {
    const s = spec(
      image('api', [
        step('pre'),
        step('a', { needs: ['pre', 'c'], needsPos: [pos(3, 10), pos(3, 15)] }),
        step('b', { needs: ['a'], needsPos: [pos(4, 10)] }),
        step('c', { needs: ['b'], needsPos: [pos(5, 10)] }),
      ]),
    );
    const err = catchConfigError(() => buildGraph(s));
    expect(err.issues).toHaveLength(1);
    const msg = err.issues[0]!.message;
    expect(msg).toMatch(/api\/(a|b|c) → api\/(a|b|c) → api\/(a|b|c) → api\/(a|b|c)/);
    expect(msg).not.toContain('api/pre');
    // DFS starts at api/pre (declared first): pre → a → b → c → a; the closing edge c → a is a's `needs: c`
    expect(msg).toContain('api/a → api/b → api/c → api/a');
    expect(err.issues[0]!.pos).toEqual(pos(3, 15));
  });

  it('rejects a step that needs itself', () => {
    const s = spec(image('api', [step('a', { needs: ['a'], needsPos: [pos(9, 12)] })]));
    const err = catchConfigError(() => buildGraph(s));
    expect(err.issues).toHaveLength(1);
    expect(err.issues[0]!.message).toContain('api/a → api/a');
    expect(err.issues[0]!.pos).toEqual(pos(9, 12));
  });

  it('rejects a loop across images: x from y, y copies from x', () => {
    const fromPos = pos(20, 11);
    const copyFromPos = pos(31, 15);
    const s = spec(
      image('x', [step('s1')], { image: 'y', pos: fromPos }),
      image('y', [step('t1', { fromImage: { image: 'x', pos: copyFromPos } })]),
    );
    const err = catchConfigError(() => buildGraph(s));
    expect(err.issues).toHaveLength(1);
    const issue = err.issues[0]!;
    // x/s1 → y/t1 (copy-from) → x/s1 (base): the base edge closes it
    expect(issue.message).toContain('x/s1 → y/t1 → x/s1');
    expect(issue.pos).toEqual(fromPos);
  });

  it('accepts a DAG with diamonds and cross-image edges', () => {
    const s = spec(
      image('base', [step('r'), step('l', { needs: ['r'] }), step('m', { needs: ['r'] }), step('j', { needs: ['l', 'm'] })]),
      image('app', [step('x'), step('y', { needs: ['x'], fromImage: { image: 'base', pos: pos(1) } })], {
        image: 'base',
        pos: pos(2),
      }),
    );
    const bg = buildGraph(s);
    expect(order(bg, 'base')).toEqual(['r', 'l', 'm', 'j']);
    expect(bg.graph.hasEdge('base/j', 'app/x')).toBe(true);
    expect(bg.graph.hasEdge('base/j', 'app/y')).toBe(true);
  });
});

describe('imagesFor', () => {
  const s = spec(
    image('tools', [step('t')]),
    image('builder', [step('b')], { image: 'tools', pos: pos(1) }),
    image('base', [step('os')]),
    image('api', [step('a'), step('bin', { needs: ['a'], fromImage: { image: 'builder', pos: pos(2) } })], {
      image: 'base',
      pos: pos(3),
    }),
    image('web', [step('w')]),
  );

  it('returns every image when there are no targets', () => {
    expect(imagesFor(s, []).map((i) => i.name)).toEqual(['tools', 'builder', 'base', 'api', 'web']);
  });

  it('adds transitive bases and copy-from images, in file order', () => {
    expect(imagesFor(s, ['api']).map((i) => i.name)).toEqual(['tools', 'builder', 'base', 'api']);
    expect(imagesFor(s, ['builder']).map((i) => i.name)).toEqual(['tools', 'builder']);
    expect(imagesFor(s, ['web']).map((i) => i.name)).toEqual(['web']);
  });

  it('keeps file order whatever the order of the targets', () => {
    expect(imagesFor(s, ['web', 'base']).map((i) => i.name)).toEqual(['base', 'web']);
    expect(imagesFor(s, ['web', 'api', 'api']).map((i) => i.name)).toEqual(['tools', 'builder', 'base', 'api', 'web']);
  });
});

describe('sinks', () => {
  it('is the steps no other step of the image needs', () => {
    const img = image('api', [step('a'), step('b', { needs: ['a'] }), step('c', { needs: ['a'] }), step('d')]);
    expect(sinks(img).map((s) => s.id)).toEqual(['b', 'c', 'd']);
  });

  it('is the last step of a chain and nothing for an empty image', () => {
    expect(sinks(image('api', [step('a'), step('b', { needs: ['a'] }), step('c', { needs: ['b'] })])).map((s) => s.id)).toEqual(['c']);
    expect(sinks(image('empty', []))).toEqual([]);
  });
});
