/**
 * Problems in the YAML itself: syntax errors as the `yaml` library reports
 * them, a shape no build file has (nesting too deep, aliases that expand
 * without end, keys that are lists), and keys given twice in one mapping.
 */
import { isAlias, isMap, isPair, isScalar, isSeq, type Node } from 'yaml';
import type { ConfigIssue, SourcePos } from '../errors.js';
import { childrenOf, isMergeKey, keyString, nameOfMapping, preorder, type Segment, type SourceFile } from './positions.js';
import { printableMessage } from './printable.js';

/**
 * A build file nests five levels (`images.api.steps[0].copy[1]`); this is
 * room for mistakes to be reported as such, and a bound on the recursion of
 * everything that reads the data after the loader.
 */
export const MAX_DEPTH = 64;

/**
 * How many values aliases may add to the data when expanded. Aliases share
 * what they point at, but whatever walks the loaded data (the schema, the
 * checks) walks each use: nine aliases of nine aliases of … make a file of
 * a few lines a billion values long. Generous for `<<: *defaults` in every
 * step of a large file.
 */
export const MAX_ALIAS_EXPANSION = 250_000;

const TOO_DEEP = `the build file nests more than ${MAX_DEPTH} levels deep here; a build file needs no more than a few`;

export function syntaxIssues(src: SourceFile): ConfigIssue[] {
  if (src.tooDeepAt !== undefined) return [src.issue(src.posAt(src.tooDeepAt), [], TOO_DEEP)];
  return src.doc.errors.map((err) => {
    const pos = src.posAt(err.pos[0]);
    const message =
      err.code === 'MULTIPLE_DOCS'
        ? 'the build file holds more than one YAML document; remove this `---` and what follows, or merge the documents'
        : err.code === 'RESOURCE_EXHAUSTION'
          ? // The composer ran out of stack (stopping the parser early should make this impossible).
            `${TOO_DEEP} (${err.message})`
          : `invalid YAML: ${err.message.charAt(0).toLowerCase()}${err.message.slice(1)}`;
    return src.issue(pos, [], message);
  });
}

/** The tags of plain data (YAML 1.2's core schema), and `!`, which only says "not a number". */
const PLAIN_TAGS = new Set(['!', ...['str', 'int', 'float', 'bool', 'null', 'map', 'seq'].map((t) => `tag:yaml.org,2002:${t}`)]);

/**
 * Tags other than those of plain data. The library knows more even in the
 * core schema (`!!binary`, `!!omap`, `!!set`, `!!timestamp`, which load as
 * Buffer, Map, Set and Date, values the schema cannot see into), and reads
 * a tag it does not know (`!mine`) as if it were not there; both are refused
 * where the tag is. So is a plain tag on the wrong kind of value (`!!map [a]`).
 */
export function tagIssues(src: SourceFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  /** `!!merge <<:` (or `!!merge` on any key): a merge key said explicitly, as YAML 1.1 allows. */
  const mergeKeys = new Set<unknown>();
  preorder(src.doc, (node) => {
    if (isPair(node) && isScalar(node.key) && node.key.tag === MERGE_TAG && isMergeKey(node.key)) mergeKeys.add(node.key);
    if (!(isScalar(node) || isMap(node) || isSeq(node)) || !node.tag || PLAIN_TAGS.has(node.tag) || mergeKeys.has(node) || !node.range) return;
    // The tag is before the value (and its anchor, if any), on the same line.
    const lineStart = src.text.lastIndexOf('\n', node.range[0] - 1) + 1;
    const from = Math.max(lineStart, node.range[0] - 1000);
    const tags = [...src.text.slice(from, node.range[0]).matchAll(/(?<![^\s,[{])![^\s,[\]{}]*/g)];
    const at = tags.length ? from + tags[tags.length - 1]!.index : node.range[0];
    issues.push(src.issue(src.posAt(at), [], `unknown tag \`${shortTag(node.tag)}\`: a build file holds plain strings, numbers, booleans, lists and mappings`));
  });
  for (const w of src.doc.warnings) {
    if (w.code !== 'TAG_RESOLVE_FAILED' && w.code !== 'BAD_COLLECTION_TYPE') continue;
    const tag = /(tag:yaml\.org,2002:\w+|![^\s]*)/.exec(w.message)?.[1];
    if (tag && !PLAIN_TAGS.has(tag)) continue; // reported above, at its node
    issues.push(src.issue(src.posAt(w.pos[0]), [], `tag \`${shortTag(tag ?? '?')}\` does not fit this value; write the value without it`));
  }
  return issues;
}

const MERGE_TAG = 'tag:yaml.org,2002:merge';

/**
 * A `%YAML` directive of another version than 1.2. The file is read with
 * YAML 1.2's meanings whatever it says (positions.ts), and under 1.1 the
 * same text means other values (`yes` a boolean, `0755` octal): refused
 * rather than read differently from what its author meant.
 */
export function versionIssues(src: SourceFile): ConfigIssue[] {
  const directives = src.doc.directives;
  if (!directives?.yaml.explicit) return [];
  // Directives come before the document's `---`, each on its own line.
  const m = /^%YAML[ \t]+(\S+)/m.exec(src.text.slice(0, /^---/m.exec(src.text)?.index ?? src.text.length));
  if (!m || m[1] === '1.2') return [];
  return [
    src.issue(
      src.posAt(m.index),
      [],
      `layergraph reads YAML 1.2; remove the %YAML ${printableMessage(m[1]!)} line and quote values like yes/no/0755 as needed`,
    ),
  ];
}

function shortTag(tag: string): string {
  return tag.replace(/^tag:yaml\.org,2002:/, '!!');
}

/**
 * What a parsed document may not be, found in one walk without recursion
 * (before anything recursive reads it): deeper than `MAX_DEPTH`, an alias
 * with no anchor or inside its own anchor (data without end), aliases that
 * expand past `MAX_ALIAS_EXPANSION` values, a key that is a list or mapping,
 * a merge of something else than mappings, a NUL character in a value.
 */
export function structureIssues(src: SourceFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const posOf = (node: { range?: [number, number, number] | null } | null | undefined): SourcePos => (node?.range ? src.posAt(node.range[0]) : src.posAt(0));
  /** Expanded size and depth of each node walked, for the aliases that point at it. */
  const done = new Map<unknown, { size: number; depth: number }>();
  const open = new Set<unknown>();
  let expansion = 0;
  let tooDeep = false;
  let tooLarge = false;

  interface Frame {
    node: unknown;
    level: number;
    kids: readonly unknown[];
    next: number;
    size: number;
    depth: number;
  }
  const stack: Frame[] = [];
  const enter = (node: unknown, level: number): { size: number; depth: number } | undefined => {
    if (isAlias(node)) return aliasShape(node, level);
    if (isPair(node) && (isMap(node.key) || isSeq(node.key) || (isAlias(node.key) && isCollection(src.aliasTarget(node.key))))) {
      issues.push(src.issue(posOf(node.key as Node), [], 'a key must be a word or a number, not a list or a mapping'));
    }
    if (isPair(node) && isMergeKey(node.key) && !mergesMappings(src, node.value)) {
      issues.push(src.issue(posOf((node.value ?? node.key) as Node), [], '`<<` merges mappings: its value must be a mapping, an alias of one (`*defaults`), or a list of those'));
    }
    if (isScalar(node) && typeof node.value === 'string' && node.value.includes('\0')) {
      // No path, name, variable or command can hold one: the system calls that take them would cut the string there, or refuse it.
      issues.push(src.issue(posOf(node), [], 'a NUL character (`\\0`) is not allowed in a value of a build file'));
    }
    const collection = isMap(node) || isSeq(node);
    if (collection && level > MAX_DEPTH) {
      if (!tooDeep) issues.push(src.issue(posOf(node), [], TOO_DEEP));
      tooDeep = true;
      return { size: 1, depth: 1 };
    }
    const kids = childrenOf(node).filter((k) => k !== null && k !== undefined);
    if (!kids.length) return { size: 1, depth: collection ? 1 : 0 };
    open.add(node);
    stack.push({ node, level: collection ? level + 1 : level, kids, next: 0, size: 1, depth: 0 });
    return undefined;
  };
  const aliasShape = (alias: Parameters<SourceFile['aliasTarget']>[0], level: number): { size: number; depth: number } => {
    const target = src.aliasTarget(alias);
    const name = `\`*${alias.source}\``;
    if (target === undefined) {
      issues.push(src.issue(posOf(alias), [], `${name} refers to no anchor: there is no \`&${alias.source}\` before it`));
      return { size: 1, depth: 0 };
    }
    if (open.has(target)) {
      issues.push(src.issue(posOf(alias), [], `${name} is inside \`&${alias.source}\`, the value it stands for: that value would never end`));
      return { size: 1, depth: 0 };
    }
    const shape = done.get(target) ?? { size: 1, depth: 0 };
    expansion += shape.size;
    if (expansion > MAX_ALIAS_EXPANSION && !tooLarge) {
      tooLarge = true;
      issues.push(
        src.issue(
          posOf(alias),
          [],
          `${name} makes the build file more than ${MAX_ALIAS_EXPANSION.toLocaleString('en')} values long once its aliases are expanded; ` +
            'aliases of aliases multiply: write fewer of them',
        ),
      );
    }
    if (level + shape.depth > MAX_DEPTH && !tooDeep) {
      tooDeep = true;
      issues.push(src.issue(posOf(alias), [], `${name} makes the build file nest ${level + shape.depth} levels deep; a build file needs no more than a few, and at most ${MAX_DEPTH}`));
    }
    return shape;
  };

  const top = enter(src.doc.contents, 0);
  if (top) done.set(src.doc.contents, top);
  while (stack.length) {
    const frame = stack[stack.length - 1]!;
    if (frame.next < frame.kids.length) {
      const kid = frame.kids[frame.next++];
      const shape = enter(kid, frame.level);
      if (shape) {
        if (!isAlias(kid)) done.set(kid, shape);
        frame.size += shape.size;
        frame.depth = Math.max(frame.depth, shape.depth);
      }
      continue;
    }
    stack.pop();
    open.delete(frame.node);
    const collection = isMap(frame.node) || isSeq(frame.node);
    const shape = { size: frame.size, depth: frame.depth + (collection ? 1 : 0) };
    done.set(frame.node, shape);
    const parent = stack[stack.length - 1];
    if (parent) {
      parent.size += shape.size;
      parent.depth = Math.max(parent.depth, shape.depth);
    }
  }
  return issues;
}

function isCollection(node: unknown): boolean {
  return isMap(node) || isSeq(node);
}

function mergesMappings(src: SourceFile, value: unknown): boolean {
  const resolve = (n: unknown): unknown => (isAlias(n) ? src.aliasTarget(n) : n);
  const v = resolve(value);
  return isSeq(v) ? v.items.every((item) => isMap(resolve(item))) : isMap(v);
}

/** Every key that its mapping already has, pointing at the repeat and citing the first. */
export function duplicateKeys(src: SourceFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  const walk = (node: unknown, at: Segment[]): void => {
    if (isSeq(node)) {
      node.items.forEach((item, i) => walk(item, [...at, i]));
      return;
    }
    if (!isMap(node)) return; // scalars, and aliases: their anchor is walked where it is defined
    const first = new Map<string, SourcePos>();
    for (const pair of node.items) {
      if (!isPair(pair)) continue;
      const key = keyString(pair.key);
      if (key === undefined || isMergeKey(pair.key)) {
        walk(pair.value, at);
        continue;
      }
      const keyNode = pair.key as Node;
      const pos = keyNode.range ? src.posAt(keyNode.range[0]) : src.valuePos(at);
      const seen = first.get(key);
      if (seen) {
        const what = at.length === 1 && at[0] === 'images' ? `duplicate image \`${key}\`` : `duplicate key \`${key}\` in ${nameOfMapping(at)}`;
        issues.push(src.issue(pos, [...at, key], `${what} (first defined at ${src.where(seen)})`));
      } else {
        first.set(key, pos);
      }
      walk(pair.value, [...at, key]);
    }
  };
  walk(src.doc.contents, []);
  return issues;
}
