/**
 * Problems in the YAML itself: syntax errors as the `yaml` library reports
 * them, and keys given twice in one mapping.
 */
import { isMap, isPair, isSeq, visit, type Node } from 'yaml';
import type { ConfigIssue, SourcePos } from '../errors.js';
import { isMergeKey, keyString, nameOfMapping, type Segment, type SourceFile } from './positions.js';

export function syntaxIssues(src: SourceFile): ConfigIssue[] {
  return src.doc.errors.map((err) => {
    const pos = src.posAt(err.pos[0]);
    const message =
      err.code === 'MULTIPLE_DOCS'
        ? 'the build file holds more than one YAML document; remove this `---` and what follows, or merge the documents'
        : `invalid YAML: ${err.message.charAt(0).toLowerCase()}${err.message.slice(1)}`;
    return src.issue(pos, [], message);
  });
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

/** Aliases (`*name`) with no anchor (`&name`) before them. */
export function aliasIssues(src: SourceFile): ConfigIssue[] {
  const issues: ConfigIssue[] = [];
  visit(src.doc, {
    Alias(_, alias) {
      if (alias.resolve(src.doc) === undefined && alias.range) {
        issues.push(src.issue(src.posAt(alias.range[0]), [], `\`*${alias.source}\` refers to no anchor: there is no \`&${alias.source}\` before it`));
      }
    },
  });
  return issues;
}
