/**
 * The build precompiles the schema (scripts/compile-schema.mjs → dist/): the
 * CLI must then word every problem exactly as the validator compiled from the
 * sources does. `npm test` builds dist/ first; without it, this is skipped.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import type { ValidateFunction } from 'ajv';
import { parseDocument } from 'yaml';
import { describe, expect, it } from 'vitest';
import { compileSchema } from '../src/config/schema-errors.js';
import { PRECOMPILED } from '../src/config/schema-options.js';
import { REPO } from './helpers/cli.js';
import { yaml } from './config-helpers.js';

const precompiledPath = path.join(REPO, 'dist', 'config', PRECOMPILED);

const DOCUMENTS = [
  yaml`
    version: 2
    imgaes: {}
    images:
      Api:
        from: "not a valid from"
        expose: [0, "80/xyz"]
        merge: last
        steps:
          - {id: "-a", copy: [], to: relative, chmod: "999", link: "yes"}
          - {id: b, run: [], network: bridge, env: {"A=B": 1}}
          - {id: c}
  `,
  yaml`
    version: 1
    images:
      api:
        steps: []
        push: maybe
        platform: linux
  `,
];

describe.skipIf(!existsSync(precompiledPath))('the precompiled schema validator', () => {
  it('was built from the schema as it is now', () => {
    const precompiled = createRequire(import.meta.url)(precompiledPath) as { schemaSha256?: string };
    const schema = readFileSync(path.join(REPO, 'schemas', 'build.schema.json'));
    expect(precompiled.schemaSha256).toBe(createHash('sha256').update(schema).digest('hex'));
  });

  it('finds the same errors, with the same schema nodes, as the one compiled at run time', () => {
    const require = createRequire(import.meta.url);
    const precompiled = require(precompiledPath) as ValidateFunction;
    const compiled = compileSchema(require);
    for (const text of DOCUMENTS) {
      const data = parseDocument(text).toJS() as unknown;
      expect(precompiled(data)).toBe(false);
      compiled(data);
      const view = (errors: ValidateFunction['errors']) =>
        (errors ?? []).map((e) => ({ path: e.instancePath, keyword: e.keyword, params: e.params, expected: (e.parentSchema as Record<string, unknown>)['x-expected'] }));
      expect(view(precompiled.errors)).toEqual(view(compiled.errors));
      expect(view(precompiled.errors).length).toBeGreaterThan(2);
    }
  });
});
