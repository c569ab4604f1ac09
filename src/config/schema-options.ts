/**
 * How the build file's schema is compiled: shared by the runtime fallback
 * (schema-errors.ts) and the build step that precompiles it
 * (scripts/compile-schema.mjs), so both validators are the same.
 */
export const AJV_OPTIONS = { allErrors: true, verbose: true, allowUnionTypes: true, strict: true, strictRequired: false } as const;

/** Our own annotation keywords, which ajv must accept and ignore. */
export const VOCABULARY = ['x-expected'];

/** The precompiled validator, written next to schema-errors.js in dist/ by the build. */
export const PRECOMPILED = 'schema-validate.cjs';
