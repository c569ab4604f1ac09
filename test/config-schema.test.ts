import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { referenceProblem } from '../src/config/reference.js';
import { editDistance, suggest } from '../src/config/suggest.js';

type Schema = Record<string, unknown>;
const schema = JSON.parse(readFileSync(path.join(process.cwd(), 'schemas', 'build.schema.json'), 'utf8')) as Schema;

/** Every sub-schema, with where it is. */
function* walk(node: Schema, where: string): Generator<[string, Schema]> {
  yield [where, node];
  for (const key of ['properties', 'definitions', 'patternProperties'] as const) {
    for (const [name, sub] of Object.entries((node[key] ?? {}) as Record<string, Schema>)) yield* walk(sub, `${where}/${key}/${name}`);
  }
  for (const key of ['items', 'additionalProperties', 'propertyNames'] as const) {
    const sub = node[key];
    if (sub && typeof sub === 'object') yield* walk(sub as Schema, `${where}/${key}`);
  }
}

describe('schemas/build.schema.json', () => {
  const nodes = [...walk(schema, '#')];

  it('describes every property, for editors', () => {
    const undescribed = nodes.filter(([where, n]) => /\/(properties|patternProperties)\/[^/]+$/.test(where) && !n.description);
    expect(undescribed.map(([w]) => w)).toEqual([]);
  });

  it('closes every mapping with fixed keys', () => {
    const open = nodes.filter(([, n]) => n.properties && n.additionalProperties !== false);
    expect(open.map(([w]) => w)).toEqual([]);
  });

  it('says what it expects wherever it can reject a value, for the error messages', () => {
    const validating = ['type', 'const', 'enum', 'pattern', 'minimum', 'maximum', 'minLength', 'minItems', 'minProperties'];
    const silent = nodes.filter(([, n]) => validating.some((k) => k in n) && typeof n['x-expected'] !== 'string');
    expect(silent.map(([w]) => w)).toEqual([]);
  });
});

describe('image references', () => {
  it.each([
    'api',
    'api:1.2',
    'team/api:latest',
    'registry.example.com:5000/team/api:latest',
    'localhost/api',
    'localhost:5000/a.b_c__d-e--f/g:V1.2_x-y',
    '[::1]:5000/api',
    'Registry.Example.com/api',
  ])('accepts %s', (ref) => {
    expect(referenceProblem(ref)).toBeUndefined();
  });

  it.each([
    ['Api', 'repository names must be lowercase'],
    ['api@sha256:abc', 'a digest (`@sha256:...`) cannot be a tag of an image being built'],
    ['api:', 'the tag after `:` is empty'],
    ['a pi', 'it contains white space'],
    ['team/-api', 'the path component `-api` may only hold lowercase letters and digits, separated by `.`, `_`, `__` or dashes'],
    ['team/api_', 'the path component `api_` may only hold lowercase letters and digits, separated by `.`, `_`, `__` or dashes'],
    ['/api', 'it has an empty path component (`//`, or `/` at an end)'],
    ['bad_host.com/api', 'the registry `bad_host.com` is not a valid host name'],
    [`${'a'.repeat(256)}:1`, 'the repository name is longer than 255 characters'],
    [`api:${'v'.repeat(129)}`, `the tag \`${'v'.repeat(129)}\` may only hold letters, digits, \`_\`, \`.\` and \`-\`, not start with \`.\` or \`-\`, and be at most 128 characters`],
  ])('rejects %s', (ref, problem) => {
    expect(referenceProblem(ref)).toBe(problem);
  });
});

describe('suggestions', () => {
  it('counts a swap of neighbours as one edit', () => {
    expect(editDistance('imgaes', 'images')).toBe(1);
    expect(editDistance('tp', 'to')).toBe(1);
    expect(editDistance('', 'abc')).toBe(3);
    expect(editDistance('kitten', 'sitting')).toBe(3);
  });

  it('suggests the closest allowed key, or what other tools call it, or nothing', () => {
    const step = ['id', 'copy', 'to', 'from', 'link', 'chmod', 'chown', 'needs'];
    expect(suggest('tp', step)).toBe('to');
    expect(suggest('TO', step)).toBe('to');
    expect(suggest('chmdo', step)).toBe('chmod');
    expect(suggest('depends_on', step)).toBe('needs');
    expect(suggest('dest', step)).toBe('to');
    expect(suggest('frobnicate', step)).toBeUndefined();
    expect(suggest('x', step)).toBeUndefined();
  });
});
