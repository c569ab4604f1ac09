/**
 * Load a build file: bytes → UTF-8 text → YAML → shape → schema → semantic
 * checks → `BuildSpec`. Every problem found is collected, pinned to its
 * line:col with an excerpt, and thrown together as one `ConfigError`. The
 * file may be hostile (see test/fuzz-build-files.test.ts): whatever it holds,
 * the loader returns a spec or throws a ConfigError, in time linear in its size.
 */
import { isUtf8 } from 'node:buffer';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { isMissing } from '../util/fs-read.js';
import { semanticIssues } from './checks.js';
import { toBuildSpec } from './normalize.js';
import { displayPath, SourceFile, sourceExcerpt } from './positions.js';
import { printableMessage } from './printable.js';
import type { RawBuildFile } from './raw.js';
import { schemaIssues } from './schema-errors.js';
import type { BuildSpec } from './types.js';
import { toData } from './yaml-data.js';
import { duplicateKeys, structureIssues, syntaxIssues, tagIssues, versionIssues } from './yaml-issues.js';

/**
 * Read and check the build file at `file`, and that its context is a
 * directory. A missing file rejects with the `ENOENT` error of `readFile`.
 */
export async function loadBuildFile(file: string): Promise<BuildSpec> {
  const abs = path.resolve(file);
  const { spec, src } = parse(decodeBuildFile(await readFile(abs), abs), abs);
  await checkContext(spec, src);
  return spec;
}

/**
 * The text of a build file read as `bytes`: UTF-8, without its byte order
 * mark. Anything else is refused where its first bad byte is, rather than
 * read with replacement characters into paths and names.
 */
export function decodeBuildFile(bytes: Buffer, file: string): string {
  if (!isUtf8(bytes)) {
    const bad = firstInvalidUtf8(bytes);
    const lineStart = bytes.lastIndexOf(0x0a, bad - 1) + 1;
    const line = countNewlines(bytes, lineStart) + 1;
    const col = bytes.subarray(lineStart, bad).toString('utf8').length + 1;
    const pos = { file: displayPath(path.resolve(file)), line, col };
    const hex = `0x${bytes[bad]!.toString(16).padStart(2, '0')}`;
    const message = `the build file is not valid UTF-8: byte ${hex} here is not part of a valid character; save the file as UTF-8`;
    fail([{ pos, path: '', message, excerpt: sourceExcerpt(bytes.toString('utf8'), line, col) }]);
  }
  const text = bytes.toString('utf8');
  return text.charCodeAt(0) === 0xfeff ? text.slice(1) : text;
}

/**
 * Check the build file `text`. `file` is its absolute path: messages name it
 * (relative to the working directory when under it) and `context` is
 * resolved against its folder.
 */
export function parseBuildFile(text: string, file: string): BuildSpec {
  return parse(text, file).spec;
}

function parse(text: string, file: string): { spec: BuildSpec; src: SourceFile } {
  const src = new SourceFile(text, path.resolve(file));
  const syntax = syntaxIssues(src);
  // A document that does not parse gives nothing else worth reporting.
  if (syntax.length) fail(syntax, src);
  if (src.doc.contents === null) {
    fail([src.issue(src.posAt(0), [], 'the build file is empty; expected `version: 1` and `images:`')], src);
  }
  // Before anything that recurses into the data or expands its aliases.
  const shape = [...versionIssues(src), ...structureIssues(src), ...tagIssues(src)];
  if (shape.length) fail(shape, src);
  let data: unknown;
  try {
    data = toData(src);
  } catch (err) {
    // Not expected after the checks above; still a problem with the file, not a crash.
    fail([src.issue(src.posAt(0), [], `the build file cannot be loaded: ${(err as Error).message}`)], src);
  }
  const issues = [...duplicateKeys(src), ...schemaIssues(data, src), ...semanticIssues(data, src)];
  if (issues.length) fail(issues, src);
  return { spec: toBuildSpec(data as RawBuildFile, src), src };
}

/** A `context` that is not a directory, refused at its place in the file rather than by the first read below it. */
async function checkContext(spec: BuildSpec, src: SourceFile): Promise<void> {
  let problem: string | undefined;
  try {
    if (!(await stat(spec.context)).isDirectory()) problem = 'is not a directory';
  } catch (err) {
    problem = isMissing(err) ? 'does not exist' : `cannot be read: ${(err as Error).message}`;
  }
  if (problem) fail([src.issue(src.valuePos(['context']), ['context'], `the build context ${spec.context} ${problem}`)], src);
}

/** Problems shown at once: more than this is one mistake repeated, or not a build file. */
const MAX_ISSUES = 100;

/** Throw `issues` in file order, each once, each message printable, at most `MAX_ISSUES` of them, with excerpts from `src`. */
function fail(issues: ConfigIssue[], src?: SourceFile): never {
  const seen = new Set<string>();
  const unique = issues.filter((i) => {
    const key = `${i.pos.line}:${i.pos.col}:${i.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  unique.sort((a, b) => a.pos.line - b.pos.line || a.pos.col - b.pos.col);
  const shown = unique.slice(0, MAX_ISSUES).map((i) => ({ ...i, message: printableMessage(i.message) }));
  const rest = unique.length - shown.length;
  if (rest > 0) {
    const next = unique[MAX_ISSUES]!;
    shown.push({ ...next, message: `and ${rest} more problems from here on, not shown; fix the ones above first` });
  }
  throw new ConfigError(src ? shown.map((i) => (i.excerpt ? i : { ...i, excerpt: src.excerpt(i.pos) })) : shown);
}

/** The offset of the first byte that is not part of a well-formed UTF-8 sequence (as WHATWG's decoder reads them). */
function firstInvalidUtf8(bytes: Uint8Array): number {
  for (let i = 0; i < bytes.length; ) {
    const b = bytes[i]!;
    if (b < 0x80) {
      i++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (b >= 0xc2 && b <= 0xdf) need = 1;
    else if (b >= 0xe0 && b <= 0xef) {
      need = 2;
      if (b === 0xe0) lo = 0xa0; // overlong
      if (b === 0xed) hi = 0x9f; // surrogates
    } else if (b >= 0xf0 && b <= 0xf4) {
      need = 3;
      if (b === 0xf0) lo = 0x90; // overlong
      if (b === 0xf4) hi = 0x8f; // above U+10FFFF
    } else return i;
    for (let k = 1; k <= need; k++) {
      const c = bytes[i + k];
      if (c === undefined || c < (k === 1 ? lo : 0x80) || c > (k === 1 ? hi : 0xbf)) return i;
    }
    i += need + 1;
  }
  return bytes.length;
}

function countNewlines(bytes: Uint8Array, end: number): number {
  let n = 0;
  for (let i = bytes.indexOf(0x0a); i !== -1 && i < end; i = bytes.indexOf(0x0a, i + 1)) n++;
  return n;
}
