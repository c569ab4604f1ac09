/**
 * The parsed YAML of a build file and where its nodes are: maps a path into
 * the document (as JSON Schema's instance paths and the loader use them) to
 * the YAML node, its line:col, and an excerpt with a caret for messages.
 */
import { isAlias, isMap, isNode, isPair, isScalar, isSeq, LineCounter, parseDocument, type Document, type Node, type Pair } from 'yaml';
import type { ConfigIssue, SourcePos } from '../errors.js';
import { relInside } from '../util/path-inside.js';

/** One step into the document: a mapping key or a list index. */
export type Segment = string | number;

export class SourceFile {
  readonly doc: Document.Parsed;
  /** The file as messages name it: relative to the working directory when under it. */
  readonly display: string;
  private readonly lines: string[];
  private readonly counter = new LineCounter();

  constructor(
    readonly text: string,
    readonly file: string,
  ) {
    this.doc = parseDocument(text, {
      lineCounter: this.counter,
      prettyErrors: false,
      // Duplicate keys are found by `duplicateKeys`, which can say where the first one is.
      uniqueKeys: false,
      merge: true,
    });
    this.display = displayPath(file);
    this.lines = splitLines(text);
  }

  posAt(offset: number): SourcePos {
    const { line, col } = this.counter.linePos(offset);
    return { file: this.display, line, col };
  }

  /** `build.yaml:3:5`, for messages that cite another place in the file. */
  where(pos: SourcePos): string {
    return `${pos.file}:${pos.line}:${pos.col}`;
  }

  issue(pos: SourcePos, at: readonly Segment[], message: string): ConfigIssue {
    return { pos, path: formatPath(at), message, excerpt: this.excerpt(pos) };
  }

  /** The line before `pos`, its line, and a caret under its column. */
  excerpt(pos: SourcePos): string {
    return excerptOf(this.lines, pos.line, pos.col);
  }

  /** The node at `at`, following aliases and merge keys; undefined when there is none. */
  node(at: readonly Segment[]): Node | undefined {
    let node: unknown = this.doc.contents;
    for (const seg of at) {
      node = this.resolve(node);
      if (isMap(node)) node = this.pairOf(node, String(seg))?.value;
      else if (isSeq(node)) node = node.items[Number(seg)];
      else return undefined;
    }
    const found = this.resolve(node);
    return isNode(found) ? found : undefined;
  }

  /** The key node of the last segment of `at`, when it names a mapping entry. */
  keyNode(at: readonly Segment[]): Node | undefined {
    if (at.length === 0) return undefined;
    const parent = this.node(at.slice(0, -1));
    if (!isMap(parent)) return undefined;
    const key = this.pairOf(parent, String(at[at.length - 1]))?.key;
    return isScalar(key) || isMap(key) || isSeq(key) ? key : undefined;
  }

  /**
   * Where the value at `at` is. An empty value (`to:`) points at its key, and
   * a path that is not in the document at its nearest ancestor that is.
   */
  valuePos(at: readonly Segment[]): SourcePos {
    const node = this.node(at);
    if (node?.range && !(isScalar(node) && node.value === null && node.range[0] === node.range[1])) {
      return this.posAt(node.range[0]);
    }
    const key = this.keyNode(at);
    if (key?.range) return this.posAt(key.range[0]);
    return at.length ? this.valuePos(at.slice(0, -1)) : this.posAt(0);
  }

  /** Where the key of the entry at `at` is, else where its value is. */
  keyPos(at: readonly Segment[]): SourcePos {
    const key = this.keyNode(at);
    return key?.range ? this.posAt(key.range[0]) : this.valuePos(at);
  }

  /** The entry `key` of `map`: its own (the last, if repeated), else the first of those it merges in with `<<`. */
  pairOf(map: unknown, key: string): Pair | undefined {
    if (!isMap(map)) return undefined;
    const merged: unknown[] = [];
    let own: Pair | undefined;
    for (const pair of map.items) {
      if (isMergeKey(pair.key)) {
        const v = this.resolve(pair.value);
        merged.push(...(isSeq(v) ? v.items : [v]));
      } else if (keyString(pair.key) === key) {
        own = pair; // the last one, as the loaded data has it
      }
    }
    if (own) return own;
    for (const m of merged) {
      const pair = this.pairOf(this.resolve(m), key);
      if (pair) return pair;
    }
    return undefined;
  }

  private resolve(node: unknown): unknown {
    for (let hops = 0; isAlias(node) && hops < 100; hops++) node = node.resolve(this.doc);
    return isPair(node) ? node.value : node;
  }
}

export function isMergeKey(key: unknown): boolean {
  return isScalar(key) && typeof key.value === 'symbol';
}

/** A mapping key as the loaded data has it. */
export function keyString(key: unknown): string | undefined {
  if (isScalar(key)) return typeof key.value === 'symbol' ? undefined : String(key.value ?? '');
  return undefined;
}

/** `images.api.steps[2].to`; keys that are not plain words are quoted: `labels["org.opencontainers.image.title"]`. */
export function formatPath(at: readonly Segment[]): string {
  let out = '';
  for (const seg of at) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else if (/^[A-Za-z0-9_-]+$/.test(seg)) out += out ? `.${seg}` : seg;
    else out += `[${JSON.stringify(seg)}]`;
  }
  return out;
}

export function isStepPath(at: readonly Segment[]): boolean {
  return at.length === 4 && at[0] === 'images' && at[2] === 'steps' && typeof at[3] === 'number';
}

/** "step", "image `api`", "the build file", or the path. */
export function nameOfMapping(at: readonly Segment[]): string {
  if (at.length === 0) return 'the build file';
  if (at.length === 2 && at[0] === 'images') return `image \`${at[1]}\``;
  if (isStepPath(at)) return 'step';
  return `\`${formatPath(at)}\``;
}

/** `file` relative to the working directory when it is under it, else as it is. */
export function displayPath(file: string): string {
  return relInside(process.cwd(), file) ?? file;
}

/**
 * The line before `line`, `line` itself, and a caret under `col` (1-based),
 * with line numbers, as compilers show them; '' when `line` is not in `text`.
 */
export function sourceExcerpt(text: string, line: number, col: number): string {
  return excerptOf(splitLines(text), line, col);
}

function splitLines(text: string): string[] {
  return text.split('\n').map((l) => l.replace(/\r$/, ''));
}

function excerptOf(lines: readonly string[], line: number, col: number): string {
  if (line < 1 || line > lines.length) return '';
  const shown = line > 1 ? [line - 1, line] : [line];
  const width = String(line).length;
  const out = shown.map((n) => `${String(n).padStart(width)} | ${lines[n - 1]}`.trimEnd());
  // Keep tabs, so the caret sits under the column however tabs are shown.
  const before = (lines[line - 1] ?? '').slice(0, Math.max(0, col - 1)).replace(/[^\t]/g, ' ');
  out.push(`${' '.repeat(width)} | ${before}^`);
  return out.join('\n');
}
