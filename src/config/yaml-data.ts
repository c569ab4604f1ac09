/**
 * The parsed document as plain data, the same as the library's `doc.toJS()`
 * gives it (the uses of one anchor are one object, `<<` merges keys the
 * mapping does not have, a repeated key keeps its last value, `__proto__`
 * is an ordinary key) in time linear in the expanded size. The library's
 * `toJS` finds each alias's anchor by scanning every anchor and alias before
 * it, which makes a file of many aliases quadratic; and its alias bound
 * (`maxAliasCount`) has no position to report, refuses any anchor used more
 * than that many times however small, and walks the whole document for each
 * alias it counts. `structureIssues` bounds the expansion instead.
 *
 * Runs only on a document `structureIssues` and `tagIssues` passed: no alias
 * without an anchor or inside it, no key that is a list or mapping, merges
 * of mappings only, plain values only, nesting bounded (so the recursion
 * here is too).
 */
import { isAlias, isMap, isPair, isScalar, isSeq, type Node, type YAMLMap } from 'yaml';
import { isMergeKey, type SourceFile } from './positions.js';

export function toData(src: SourceFile): unknown {
  /** What each node with an anchor became, so that its aliases share it. */
  const anchored = new Map<unknown, unknown>();
  /** The entries each merged mapping gives, by mapping node. */
  const mergeEntries = new Map<YAMLMap, Map<unknown, unknown>>();

  const target = (node: unknown): unknown => (isAlias(node) ? src.aliasTarget(node) : node);

  const value = (input: unknown): unknown => {
    const node = target(input);
    if (isNode(node) && node.anchor && anchored.has(node)) return anchored.get(node);
    let out: unknown;
    if (isScalar(node)) out = typeof node.value === 'bigint' ? Number(node.value) : node.value;
    else if (isSeq(node)) {
      const list: unknown[] = [];
      remember(node, list);
      // A pair in a flow sequence (`[a: 1]`) is a one-entry mapping.
      for (const item of node.items) list.push(isPair(item) ? pairObject(item.key, item.value) : value(item));
      out = list;
    } else if (isMap(node)) {
      const obj: Record<string, unknown> = {};
      remember(node, obj);
      for (const pair of node.items) {
        if (isMergeKey(pair.key)) mergeInto(obj, pair.value);
        else set(obj, keyOf(pair.key), value(pair.value));
      }
      out = obj;
    } else out = null; // an empty value
    remember(node, out);
    return out;
  };

  const remember = (node: unknown, out: unknown): void => {
    if (isNode(node) && node.anchor) anchored.set(node, out);
  };

  const pairObject = (key: unknown, val: unknown): Record<string, unknown> => {
    const obj: Record<string, unknown> = {};
    set(obj, keyOf(key), value(val));
    return obj;
  };

  /** A key as the library makes it a property name: its value as a string, and '' for an empty key. */
  const keyOf = (key: unknown): string => {
    const k = value(key);
    return k === null || k === undefined ? '' : String(k);
  };

  /** `<<: *a` or `<<: [*a, *b]`: keys the mapping does not have yet, the first source winning. */
  const mergeInto = (obj: Record<string, unknown>, sources: unknown): void => {
    for (const [k, v] of mergedEntries(sources)) {
      if (!Object.hasOwn(obj, String(k))) define(obj, String(k), v);
    }
  };

  /** The entries `<<: sources` brings, in order, the first source winning. */
  const mergedEntries = (sources: unknown): Map<unknown, unknown> => {
    const resolved = target(sources);
    const out = new Map<unknown, unknown>();
    for (const item of isSeq(resolved) ? resolved.items : [resolved]) {
      const map = target(item);
      if (!isMap(map)) throw new Error('a merge (`<<`) of something other than a mapping'); // refused by structureIssues
      for (const [k, v] of entriesOf(map)) if (!out.has(k)) out.set(k, v);
    }
    return out;
  };

  /** A merged mapping's entries, keyed by value (as the library merges a `Map`), its own merges included. */
  const entriesOf = (map: YAMLMap): Map<unknown, unknown> => {
    let entries = mergeEntries.get(map);
    if (entries) return entries;
    entries = new Map();
    for (const pair of map.items) {
      if (isMergeKey(pair.key)) {
        for (const [k, v] of mergedEntries(pair.value)) if (!entries.has(k)) entries.set(k, v);
      } else entries.set(value(pair.key), value(pair.value));
    }
    mergeEntries.set(map, entries);
    return entries;
  };

  return value(src.doc.contents);
}

/** `obj[key] = v`, also for keys an object already has from its prototype (`__proto__`, `toString`). */
function set(obj: Record<string, unknown>, key: string, v: unknown): void {
  if (key in obj) define(obj, key, v);
  else obj[key] = v;
}

function define(obj: Record<string, unknown>, key: string, v: unknown): void {
  Object.defineProperty(obj, key, { value: v, writable: true, enumerable: true, configurable: true });
}

function isNode(node: unknown): node is Node {
  return isScalar(node) || isMap(node) || isSeq(node);
}
