/** Shared by the config-*.test.ts files: write YAML readably, read problems compactly. */
import path from 'node:path';
import { expect } from 'vitest';
import { parseBuildFile } from '../src/config/load.js';
import { ConfigError, type ConfigIssue } from '../src/errors.js';

/** A build file in the working directory, so messages say `build.yaml:L:C`. */
export const FILE = path.join(process.cwd(), 'build.yaml');

/** Strip the indentation of the first line from every line, and the first newline. */
export function yaml(strings: TemplateStringsArray, ...values: unknown[]): string {
  const text = String.raw({ raw: strings }, ...values).replace(/^\n/, '');
  const indent = /^ */.exec(text)?.[0].length ?? 0;
  return text
    .split('\n')
    .map((l) => l.slice(Math.min(indent, /^ */.exec(l)?.[0].length ?? 0)))
    .join('\n');
}

/** The issues `parseBuildFile` throws for `text`; fails the test when it does not throw a ConfigError. */
export function issuesOf(text: string, file = FILE): ConfigIssue[] {
  try {
    parseBuildFile(text, file);
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    return (err as ConfigError).issues;
  }
  expect.fail('expected the build file to be rejected');
}

/** Each issue as `file:line:col: message`. */
export function problems(text: string, file = FILE): string[] {
  return issuesOf(text, file).map((i) => `${i.pos.file}:${i.pos.line}:${i.pos.col}: ${i.message}`);
}

/** A valid step, to pad images that a test is not about. */
export const STEP = '{id: a, copy: x, to: /x}';
