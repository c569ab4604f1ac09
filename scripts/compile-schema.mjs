// Precompiles the build file's JSON Schema into dist/config/schema-validate.cjs
// with ajv's standalone code generation, so a run neither loads ajv nor
// compiles the schema at start-up (about 100 ms of every invocation).
// Run by `npm run build` (and prepare, test, bench) after tsc.
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);
const { Ajv } = require('ajv');
const standaloneCode = require('ajv/dist/standalone').default;
const { AJV_OPTIONS, VOCABULARY, PRECOMPILED } = await import('../dist/config/schema-options.js');

const root = fileURLToPath(new URL('..', import.meta.url));
const text = readFileSync(`${root}schemas/build.schema.json`);
const schema = JSON.parse(text.toString('utf8'));
const ajv = new Ajv({ ...AJV_OPTIONS, code: { source: true } });
ajv.addVocabulary(VOCABULARY);
// The schema's hash goes with the code, so a validator older than the schema is never used.
const sha = createHash('sha256').update(text).digest('hex');
writeFileSync(`${root}dist/config/${PRECOMPILED}`, `${standaloneCode(ajv, ajv.compile(schema))}\nmodule.exports.schemaSha256 = ${JSON.stringify(sha)};\n`);
