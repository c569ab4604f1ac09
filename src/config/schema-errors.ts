/**
 * Validate the loaded data against `schemas/build.schema.json` and word what
 * ajv finds the way a user thinks of it: "unknown key `tp` in step; did you
 * mean `to`?", "`images.api.steps[2].to` is 42; expected an absolute path".
 * Each schema node carries `x-expected`, the phrase after "expected".
 */
import { readFileSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { ErrorObject, ValidateFunction } from 'ajv';
import { AJV_OPTIONS, PRECOMPILED, VOCABULARY } from './schema-options.js';
import { isScalar } from 'yaml';
import type { ConfigIssue } from '../errors.js';
import { formatPath, isStepPath, nameOfMapping, type Segment, type SourceFile } from './positions.js';
import { suggest } from './suggest.js';

/** Every problem the schema finds in `data`, one issue per mistake. */
export function schemaIssues(data: unknown, src: SourceFile): ConfigIssue[] {
  const validate = validator();
  if (validate(data)) return [];
  const issues: ConfigIssue[] = [];
  const seen = new Set<string>();
  const once = (key: string, make: () => ConfigIssue): void => {
    if (seen.has(key)) return;
    seen.add(key);
    issues.push(make());
  };
  const missing = new Map<string, { at: Segment[]; keys: string[] }>();
  const meant = new Set<string>();

  for (const err of validate.errors ?? []) {
    const at = segments(err.instancePath, data);
    const schema = (err.parentSchema ?? {}) as SchemaNode;
    if (err.propertyName !== undefined) {
      // A key that breaks `propertyNames`, e.g. an image called `Api`.
      const keyAt = [...at, err.propertyName];
      once(`key ${formatPath(keyAt)}`, () =>
        src.issue(src.keyPos(keyAt), keyAt, `${nameOfKey(at)} \`${err.propertyName}\` is not valid; expected ${schema['x-expected']}`),
      );
      continue;
    }
    switch (err.keyword) {
      case 'propertyNames':
      case 'if':
        break; // already reported through its inner error
      case 'additionalProperties': {
        const key = String((err.params as { additionalProperty: string }).additionalProperty);
        const keyAt = [...at, key];
        const allowed = Object.keys(schema.properties ?? {});
        const guess = suggest(key, allowed);
        // `tp: /x` is one mistake: say "did you mean `to`?", not also "missing `to`".
        if (guess) meant.add(`${formatPath(at)} ${guess}`);
        once(`key ${formatPath(keyAt)}`, () => src.issue(src.keyPos(keyAt), keyAt, unknownKey(key, at, allowed, guess)));
        break;
      }
      case 'required': {
        const k = formatPath(at);
        const entry = missing.get(k) ?? { at, keys: [] };
        entry.keys.push(String((err.params as { missingProperty: string }).missingProperty));
        missing.set(k, entry);
        break;
      }
      default:
        once(`value ${formatPath(at)}`, () => src.issue(src.valuePos(at), at, wrongValue(err, at, schema, src)));
    }
  }
  for (const { at, keys: all } of missing.values()) {
    // `id` first, as files write it (the schema's `if`/`else` reports `copy` and `to` before it).
    const keys = all.filter((k) => !meant.has(`${formatPath(at)} ${k}`)).sort((a, b) => Number(b === 'id') - Number(a === 'id'));
    if (!keys.length) continue;
    const list = keys.map((k) => `\`${k}\``);
    const what = list.length === 1 ? list[0] : `${list.slice(0, -1).join(', ')} and ${list[list.length - 1]}`;
    // Neither `copy` nor `to`: the step may as well have meant to run something.
    const orRun = isStepPath(at) && keys.includes('copy') && keys.includes('to') ? ' (or `run`, to run a command)' : '';
    issues.push(src.issue(src.keyPos(at), at, `${nameOfMapping(at)} is missing ${what}${orRun}`));
  }
  return issues;
}

interface SchemaNode {
  'x-expected'?: string;
  type?: string | string[];
  pattern?: string;
  properties?: Record<string, unknown>;
}

let compiled: ValidateFunction | undefined;

/**
 * The schema's validator: the one the build precompiled when there is one
 * (no ajv to load, nothing to compile), else compiled here (running from the
 * sources, as the unit tests do) with the same options.
 */
function validator(): ValidateFunction {
  if (!compiled) {
    const require = createRequire(import.meta.url);
    const schemaText = readFileSync(schemaFile());
    const precompiled = precompiledValidator(require);
    // Built from another schema (a dist/ not rebuilt since the schema changed): not to be trusted.
    if (precompiled?.schemaSha256 === createHash('sha256').update(schemaText).digest('hex')) compiled = precompiled;
    compiled ??= compileSchema(require, schemaText);
  }
  return compiled;
}

type PrecompiledValidator = ValidateFunction & { schemaSha256?: string };

/** Only in the CLI bundle, which has the precompiled validator inside (scripts/bundle-cli.mjs injects it). */
declare const LAYERGRAPH_BUNDLED_VALIDATOR: (() => PrecompiledValidator) | undefined;

/** The precompiled validator: the CLI bundle's own, else the one next to this module in dist/, else none. */
function precompiledValidator(require: NodeJS.Require): PrecompiledValidator | undefined {
  if (typeof LAYERGRAPH_BUNDLED_VALIDATOR !== 'undefined') return LAYERGRAPH_BUNDLED_VALIDATOR();
  try {
    return require(`./${PRECOMPILED}`) as PrecompiledValidator;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'MODULE_NOT_FOUND') throw err;
    return undefined;
  }
}

/**
 * `schemas/build.schema.json` of this package, found through the package's own
 * name: the same from src/, from dist/config/ and from the CLI bundle in dist/.
 */
function schemaFile(): string {
  const pkg = createRequire(import.meta.url).resolve('layergraph/package.json');
  return path.join(path.dirname(pkg), 'schemas', 'build.schema.json');
}

export function compileSchema(require: NodeJS.Require, schemaText: Buffer = readFileSync(schemaFile())): ValidateFunction {
  const { Ajv } = require('ajv') as typeof import('ajv');
  const schema = JSON.parse(schemaText.toString('utf8')) as object;
  const ajv = new Ajv(AJV_OPTIONS);
  ajv.addVocabulary(VOCABULARY);
  return ajv.compile(schema);
}

/** A JSON pointer as segments, with list indices as numbers (so paths print as `steps[2]`). */
function segments(pointer: string, data: unknown): Segment[] {
  const out: Segment[] = [];
  let cur: unknown = data;
  for (const raw of pointer.split('/').slice(1)) {
    const seg = raw.replace(/~1/g, '/').replace(/~0/g, '~');
    if (Array.isArray(cur)) {
      out.push(Number(seg));
      cur = cur[Number(seg)];
    } else {
      out.push(seg);
      cur = cur && typeof cur === 'object' ? (cur as Record<string, unknown>)[seg] : undefined;
    }
  }
  return out;
}

const STEP_KINDS_LATER = new Set(['add', 'shell', 'script', 'exec', 'cmd']);

function unknownKey(key: string, at: Segment[], allowed: string[], guess: string | undefined): string {
  const head = `unknown key \`${key}\` in ${nameOfMapping(at)}`;
  if (isStepPath(at) && STEP_KINDS_LATER.has(key)) return `${head}; a step copies (\`copy\`, \`to\`) or runs a command (\`run\`)`;
  if (guess) return `${head}; did you mean \`${guess}\`?`;
  return `${head}; expected one of ${allowed.map((k) => `\`${k}\``).join(', ')}`;
}

function wrongValue(err: ErrorObject, at: Segment[], schema: SchemaNode, src: SourceFile): string {
  const subject = at.length ? `\`${formatPath(at)}\`` : 'the build file';
  const value = describeValue(err.data, src, at);
  const last = at[at.length - 1];
  if (last === 'chown' && isStepPath(at.slice(0, -1)) && typeof err.data === 'string' && err.keyword === 'pattern') {
    return `${subject} is ${value}; only numeric ids are supported for now, like "1000:1000"`;
  }
  let expected = schema['x-expected'] ?? 'something else';
  if (err.keyword === 'type' && wantsString(schema) && (typeof err.data === 'number' || typeof err.data === 'boolean')) {
    // `chmod: 0755` is the number 755 to YAML; say how to write what was meant.
    const node = src.node(at);
    const text = isScalar(node) && typeof node.source === 'string' ? node.source : String(err.data);
    if (!schema.pattern || new RegExp(schema.pattern).test(text)) expected += ` (put it in quotes: "${text}")`;
  }
  return `${subject} is ${value}; expected ${expected}`;
}

function wantsString(schema: SchemaNode): boolean {
  return schema.type === 'string' || (Array.isArray(schema.type) && schema.type.includes('string'));
}

/** How a value reads in a message: strings quoted, numbers as written, collections by kind. */
function describeValue(value: unknown, src: SourceFile, at: readonly Segment[]): string {
  if (value === null || value === undefined) return 'empty';
  if (typeof value === 'string') return JSON.stringify(value.length > 60 ? `${value.slice(0, 57)}...` : value);
  if (typeof value === 'number' || typeof value === 'boolean') {
    const node = src.node(at);
    return isScalar(node) && typeof node.source === 'string' && node.source ? node.source : String(value);
  }
  if (Array.isArray(value)) return value.length ? 'a list' : 'an empty list';
  if (typeof value === 'object') return Object.keys(value).length ? 'a mapping' : 'an empty mapping';
  return String(value);
}

/** What the keys of the mapping at `at` are called. */
function nameOfKey(at: readonly Segment[]): string {
  if (at.length === 1 && at[0] === 'images') return 'image name';
  if (at.length === 3 && at[0] === 'images' && at[2] === 'env') return 'variable name';
  return `key in \`${formatPath(at)}\``;
}
