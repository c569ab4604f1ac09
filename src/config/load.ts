/**
 * Load a build file: YAML → schema → semantic checks → `BuildSpec`. Every
 * problem found is collected, pinned to its line:col with an excerpt, and
 * thrown together as one `ConfigError`.
 */
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { semanticIssues } from './checks.js';
import { toBuildSpec } from './normalize.js';
import { SourceFile } from './positions.js';
import type { RawBuildFile } from './raw.js';
import { schemaIssues } from './schema-errors.js';
import type { BuildSpec } from './types.js';
import { aliasIssues, duplicateKeys, syntaxIssues } from './yaml-issues.js';

/** Read and check the build file at `file`. A missing file rejects with the `ENOENT` error of `readFile`. */
export async function loadBuildFile(file: string): Promise<BuildSpec> {
  const abs = path.resolve(file);
  return parseBuildFile(await readFile(abs, 'utf8'), abs);
}

/**
 * Check the build file `text`. `file` is its absolute path: messages name it
 * (relative to the working directory when under it) and `context` is
 * resolved against its folder.
 */
export function parseBuildFile(text: string, file: string): BuildSpec {
  const src = new SourceFile(text, path.resolve(file));
  const syntax = syntaxIssues(src);
  // A document that does not parse gives nothing else worth reporting.
  if (syntax.length) fail(syntax);
  if (src.doc.contents === null) {
    fail([src.issue(src.posAt(0), [], 'the build file is empty; expected `version: 1` and `images:`')]);
  }
  const aliases = aliasIssues(src);
  if (aliases.length) fail(aliases);
  let data: unknown;
  try {
    data = src.doc.toJS({ maxAliasCount: 1000 });
  } catch (err) {
    fail([src.issue(src.posAt(0), [], `the build file cannot be loaded: ${(err as Error).message}`)]);
  }
  const issues = [...duplicateKeys(src), ...schemaIssues(data, src), ...semanticIssues(data, src)];
  if (issues.length) fail(issues);
  return toBuildSpec(data as RawBuildFile, src);
}

/** Throw `issues` in file order, each once. */
function fail(issues: ConfigIssue[]): never {
  const seen = new Set<string>();
  const unique = issues.filter((i) => {
    const key = `${i.pos.line}:${i.pos.col}:${i.message}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
  unique.sort((a, b) => a.pos.line - b.pos.line || a.pos.col - b.pos.col);
  throw new ConfigError(unique);
}
