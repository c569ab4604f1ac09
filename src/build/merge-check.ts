/**
 * The merger's check: an image stacks its layers in layer order, which is
 * only one of the orders its graph allows when two steps do not need each
 * other. If such steps change the same path, the image would depend on an
 * order nobody asked for — so that is an error, unless the image says
 * `merge: declared-order`, in which case the later-declared step wins and
 * the report says so.
 */
import path from 'node:path';
import type { ContentStore } from '../cache/content-store.js';
import type { LayerRef } from '../cache/step-records.js';
import type { ImageSpec, StepSpec } from '../config/types.js';
import { MergeConflictError } from '../errors.js';
import { layerEntries } from '../oci/layer-headers.js';

/** A path two unordered steps both changed, and the step whose change the image keeps. */
export interface MergeChoice {
  path: string;
  steps: [string, string];
  winner: string;
}

/**
 * Checks `image`'s steps (`order`: its layer order). Returns what
 * `declared-order` decided; throws MergeConflictError under `fail`.
 */
export async function checkMerge(
  image: ImageSpec,
  order: StepSpec[],
  layerOf: (step: string) => Promise<LayerRef | null>,
  store: ContentStore,
): Promise<MergeChoice[]> {
  const pairs = unorderedPairs(order);
  if (!pairs.length) return [];
  const changes = new Map<string, Promise<Changes>>();
  const changesOf = (step: string): Promise<Changes> => {
    let p = changes.get(step);
    if (!p) {
      p = layerOf(step).then((layer) => (layer ? readChanges(layer, store) : new Map()));
      changes.set(step, p);
    }
    return p;
  };
  const found: MergeChoice[] = [];
  for (const [a, b] of pairs) {
    for (const p of clashes(await changesOf(a.id), await changesOf(b.id))) {
      // `order` puts the later-declared step later, so it lands on top.
      found.push({ path: `/${p}`, steps: [a.id, b.id], winner: b.id });
    }
  }
  if (found.length && image.merge === 'fail') throw new MergeConflictError(image.name, found);
  return found;
}

/**
 * What a layer does to a path. A directory carries its metadata: overlayfs
 * copies a directory up, metadata and all, whenever something is written
 * below it, so a sibling's layer carries the mode the other step changed.
 */
type Change = { kind: 'dir' | 'opaque'; meta: string } | { kind: 'other' | 'delete' };
type Changes = Map<string, Change>;

/** Pairs of steps neither of which needs the other (directly or not), each pair in layer order. */
function unorderedPairs(order: StepSpec[]): Array<[StepSpec, StepSpec]> {
  const byId = new Map(order.map((s) => [s.id, s]));
  const below = new Map<string, Set<string>>();
  const belowOf = (id: string): Set<string> => {
    let set = below.get(id);
    if (!set) {
      set = new Set();
      for (const need of byId.get(id)?.needs ?? []) {
        set.add(need);
        for (const n of belowOf(need)) set.add(n);
      }
      below.set(id, set);
    }
    return set;
  };
  const pairs: Array<[StepSpec, StepSpec]> = [];
  order.forEach((a, i) => {
    for (const b of order.slice(i + 1)) {
      if (!belowOf(b.id).has(a.id) && !belowOf(a.id).has(b.id)) pairs.push([a, b]);
    }
  });
  return pairs;
}

async function readChanges(layer: LayerRef, store: ContentStore): Promise<Changes> {
  const changes: Changes = new Map();
  for await (const { rel, header, whiteout } of layerEntries(layer.digest, store)) {
    if (!rel) continue;
    if (whiteout && 'opaque' in whiteout) {
      const d = changes.get(whiteout.opaque);
      if (whiteout.opaque) changes.set(whiteout.opaque, { kind: 'opaque', meta: d && 'meta' in d ? d.meta : '' });
    } else if (whiteout) changes.set(whiteout.deletes, { kind: 'delete' });
    else if (header.type === 'directory') {
      const meta = dirMeta(header);
      changes.set(rel, { kind: changes.get(rel)?.kind === 'opaque' ? 'opaque' : 'dir', meta });
    } else changes.set(rel, { kind: 'other' });
  }
  return changes;
}

/**
 * Paths whose result depends on which of the two layers is applied last:
 * the same path changed by both (two directories, or two deletions, agree),
 * or one layer changing something below a path the other deletes, replaces
 * with a non-directory, or empties (opaque).
 */
function clashes(a: Changes, b: Changes): string[] {
  const out = new Set<string>();
  for (const [x, y] of [
    [a, b],
    [b, a],
  ] as const) {
    for (const [p, change] of x) {
      const other = y.get(p);
      if (other !== undefined && !agree(change, other)) out.add(p);
      for (let q = parentOf(p); q !== ''; q = parentOf(q)) {
        const above = y.get(q)?.kind;
        if (above === 'delete' || above === 'other' || above === 'opaque') out.add(p);
      }
    }
  }
  return [...out].sort();
}

/** Two directories with the same metadata, or two deletions, give the same result in either order. */
function agree(a: Change, b: Change): boolean {
  if (a.kind === 'delete' && b.kind === 'delete') return true;
  return 'meta' in a && 'meta' in b && a.meta === b.meta;
}

/** Mode, owner and extended attributes: what a directory entry sets. */
function dirMeta(header: { mode?: number; uid?: number; gid?: number; pax?: unknown }): string {
  const xattrs = Object.entries((header.pax as Record<string, string> | null | undefined) ?? {})
    .filter(([k]) => k.startsWith('SCHILY.xattr.'))
    .sort(([a], [b]) => (a < b ? -1 : 1));
  return JSON.stringify([(header.mode ?? 0) & 0o7777, header.uid ?? 0, header.gid ?? 0, xattrs]);
}

function parentOf(p: string): string {
  const d = path.posix.dirname(p);
  return d === '.' ? '' : d;
}
