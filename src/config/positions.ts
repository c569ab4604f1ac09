/**
 * The parsed YAML of a build file and where its nodes are: maps a path into
 * the document (as JSON Schema's instance paths and the loader use them) to
 * the YAML node, its line:col, and an excerpt with a caret for messages.
 */
import { Composer, isAlias, isDocument, isMap, isNode, isPair, isScalar, isSeq, Lexer, LineCounter, Parser, YAMLParseError, type Alias, type Document, type Node, type Pair, type YAMLMap } from 'yaml';
import type { ConfigIssue, SourcePos } from '../errors.js';
import { relInside } from '../util/path-inside.js';
import { printableLine } from './printable.js';

/**
 * Open collections the parser may hold: far more than a build file needs
 * (`structureIssues` refuses more than 64 levels with a better message), far
 * fewer than would run the composer out of stack.
 */
const MAX_PARSE_DEPTH = 200;

/** One step into the document: a mapping key or a list index. */
export type Segment = string | number;

export class SourceFile {
  readonly doc: Document.Parsed;
  /** The file as messages name it: relative to the working directory when under it. */
  readonly display: string;
  private readonly lines: string[];
  private readonly counter = new LineCounter();
  /** Where the parser was stopped for nesting deeper than `MAX_PARSE_DEPTH`, if it was. */
  tooDeepAt: number | undefined;
  private targets: Map<Alias, Node | undefined> | undefined;
  private readonly index = new WeakMap<YAMLMap, { own: Map<string, Pair>; merged: unknown[] }>();

  constructor(
    readonly text: string,
    readonly file: string,
  ) {
    // The parser makes an Error for every problem it finds, and a broken
    // file can have a hundred thousand: capturing a stack for each (never
    // shown) was most of the time spent on such a file.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      this.doc = this.parse(text);
    } finally {
      Error.stackTraceLimit = stackTraceLimit;
    }
    this.display = displayPath(file);
    this.lines = splitLines(text);
  }

  /**
   * What `parseDocument` does, but the parser is stopped where the nesting
   * gets deeper than anything a build file has (`tooDeepAt`): past that,
   * the composer recurses once per level until the stack runs out, and a
   * few megabytes of `{a: ` took half a minute to parse for nothing.
   */
  private parse(text: string): Document.Parsed {
    const composer = new Composer({
      prettyErrors: false,
      // Duplicate keys are found by `duplicateKeys`, which can say where the first one is.
      uniqueKeys: false,
      merge: true,
      // YAML 1.2 (`yes` is a string, `0755` an octal number); a `%YAML 1.1`
      // directive is refused by `versionIssues`, the tags 1.1 adds (`!!set`,
      // `!!binary`…) by `tagIssues`, but for `!!merge` on a merge key.
      schema: 'core',
      // A key that is a list or a mapping is reported as an issue, not warned about on stderr.
      logLevel: 'error',
    });
    const parser = new Parser(this.counter.addNewLine);
    this.counter.addNewLine(0);
    const tokens = (function* (file: SourceFile) {
      for (const lexeme of new Lexer().lex(text)) {
        yield* parser.next(lexeme);
        if (parser.stack.length > MAX_PARSE_DEPTH) {
          file.tooDeepAt = parser.offset;
          return;
        }
      }
      yield* parser.end();
    })(this);
    let doc: Document.Parsed | undefined;
    for (const next of composer.compose(tokens, true, text.length)) {
      if (!doc) doc = next;
      else {
        doc.errors.push(new YAMLParseError([next.range[0], next.range[1]], 'MULTIPLE_DOCS', 'Source contains multiple documents'));
        break;
      }
    }
    return doc!;
  }

  posAt(offset: number): SourcePos {
    const { line, col } = this.counter.linePos(offset);
    return { file: this.display, line, col };
  }

  /** `build.yaml:3:5`, for messages that cite another place in the file. */
  where(pos: SourcePos): string {
    return `${pos.file}:${pos.line}:${pos.col}`;
  }

  /** An issue at `pos`; the loader adds its excerpt when it shows it (a hostile file has a hundred thousand issues). */
  issue(pos: SourcePos, at: readonly Segment[], message: string): ConfigIssue {
    return { pos, path: formatPath(at), message };
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
    const { own, merged } = this.entries(map);
    const pair = own.get(key);
    if (pair) return pair;
    for (const m of merged) {
      const found = this.pairOf(this.resolve(m), key);
      if (found) return found;
    }
    return undefined;
  }

  /** A mapping's entries by key, built once: looking keys up one by one is quadratic in a mapping of thousands. */
  private entries(map: YAMLMap): { own: Map<string, Pair>; merged: unknown[] } {
    let found = this.index.get(map);
    if (!found) {
      found = { own: new Map(), merged: [] };
      for (const pair of map.items) {
        if (isMergeKey(pair.key)) {
          const v = this.resolve(pair.value);
          found.merged.push(...(isSeq(v) ? v.items : [v]));
        } else {
          const k = keyString(pair.key);
          if (k !== undefined) found.own.set(k, pair); // the last one, as the loaded data has it
        }
      }
      this.index.set(map, found);
    }
    return found;
  }

  /**
   * The node `alias` stands for: the last node before it, in document order,
   * with its anchor; undefined when there is none. The library's
   * `alias.resolve(doc)` walks the whole document on every call, which makes
   * a file of many aliases quadratic; this walks it once.
   */
  aliasTarget(alias: Alias): Node | undefined {
    if (!this.targets) {
      const targets = new Map<Alias, Node | undefined>();
      const anchors = new Map<string, Node>();
      preorder(this.doc, (node) => {
        if (isAlias(node)) targets.set(node, anchors.get(node.source));
        else if (isNode(node) && node.anchor) anchors.set(node.anchor, node);
      });
      this.targets = targets;
    }
    return this.targets.get(alias);
  }

  private resolve(node: unknown): unknown {
    for (let hops = 0; isAlias(node) && hops < 100; hops++) node = this.aliasTarget(node);
    return isPair(node) ? node.value : node;
  }
}

/** Every node of `root` in document order (a collection before its items, a key before its value), without recursion: depth is the input's to choose. */
export function preorder(root: unknown, visit: (node: unknown) => void): void {
  const stack: unknown[] = [root];
  while (stack.length) {
    const node = stack.pop();
    visit(node);
    const kids = childrenOf(node);
    for (let i = kids.length - 1; i >= 0; i--) stack.push(kids[i]);
  }
}

/** The nodes directly inside `node`: a document's contents, a collection's items, a pair's key and value. */
export function childrenOf(node: unknown): readonly unknown[] {
  if (isDocument(node)) return node.contents === null ? [] : [node.contents];
  if (isMap(node) || isSeq(node)) return node.items;
  if (isPair(node)) return [node.key, node.value];
  return [];
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
  const width = String(line).length;
  const out: string[] = [];
  if (line > 1) out.push(`${String(line - 1).padStart(width)} | ${printableLine(clipLine(lines[line - 2]!, 0).text)}`.trimEnd());
  const { text, caret } = clipLine(lines[line - 1]!, Math.max(0, col - 1));
  out.push(`${String(line).padStart(width)} | ${printableLine(text)}`.trimEnd());
  // Keep tabs, so the caret sits under the column however tabs are shown.
  const before = text.slice(0, caret).replace(/[^\t]/g, ' ');
  out.push(`${' '.repeat(width)} | ${before}^`);
  return out.join('\n');
}

const EXCERPT_WIDTH = 160;

/** At most about 160 characters of `line` around index `at`, marked with `…` where cut, and where `at` is in them. */
function clipLine(line: string, at: number): { text: string; caret: number } {
  if (line.length <= EXCERPT_WIDTH) return { text: line, caret: at };
  const start = Math.max(0, Math.min(at - EXCERPT_WIDTH / 2, line.length - EXCERPT_WIDTH));
  const end = start + EXCERPT_WIDTH;
  const text = `${start > 0 ? '…' : ''}${line.slice(start, end)}${end < line.length ? '…' : ''}`;
  return { text, caret: at - start + (start > 0 ? 1 : 0) };
}
