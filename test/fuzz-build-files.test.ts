/**
 * Hostile build files: seeded random edits of the examples and of the config
 * tests' build files (wrong types, deep nesting, huge strings, exponential
 * aliases, duplicate keys, invalid UTF-8, truncation, tabs, BOMs, NULs,
 * unknown keys, byte flips, line edits). Every mutant either loads or is
 * refused with a ConfigError whose every line starts `FILE:LINE:COL: ` —
 * never another exception, never a stack trace, never a hang.
 *
 * Deterministic: FUZZ_SEED (default below) and FUZZ_CASES pick the cases; a
 * failure prints the seed, the case index and its edits, and keeps the input
 * in a temp file to replay. `npm run test:fuzz` runs 20,000 cases. Most go
 * through the loader in-process; a sample through `main` (`validate`), and a
 * few through the built binary (bin/ → dist/, so build first).
 */
import { isUtf8 } from 'node:buffer';
import { spawn } from 'node:child_process';
import { cp, mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadBuildFile, parseBuildFile } from '../src/config/load.js';
import { displayPath, SourceFile } from '../src/config/positions.js';
import { toData } from '../src/config/yaml-data.js';
import { structureIssues, tagIssues } from '../src/config/yaml-issues.js';
import { ConfigError, formatIssue } from '../src/errors.js';
import { buildGraph } from '../src/graph/build-graph.js';
import { baseFiles, mutant, type Mutant } from './helpers/build-file-mutations.js';
import { outputOf, REPO, runCli } from './helpers/cli.js';
import { useTmpDirs } from './helpers/tmp.js';

const SEED = Number(process.env.FUZZ_SEED ?? 0x6c67f022);
const CASES = Number(process.env.FUZZ_CASES ?? 1200);
/** Through `main` in-process, and as a real process: fewer, since each costs a project copy or a Node start. */
const CLI_CASES = Math.min(CASES, Number(process.env.FUZZ_CLI_CASES ?? 300));
const SPAWN_CASES = Math.min(CASES, Number(process.env.FUZZ_SPAWN_CASES ?? 16));
/** Not a speed check: far above any real case, it only turns a hang into a failure with a seed. */
const HANG_MS = Number(process.env.FUZZ_HANG_MS ?? 20_000);

const tmpDir = useTmpDirs();
const bases = baseFiles(REPO);

interface Failure {
  index: number;
  mutant: Mutant;
  problem: string;
}

describe(`fuzzed build files (FUZZ_SEED=${SEED}, FUZZ_CASES=${CASES})`, () => {
  it('starts from the examples and the config tests', () => {
    expect(bases.filter((b) => b.name.startsWith('examples/')).length).toBeGreaterThanOrEqual(2);
    expect(bases.length).toBeGreaterThan(15);
  });

  it('loads every mutant or refuses it with FILE:LINE:COL', { timeout: Math.max(240_000, CASES * 30) }, async () => {
    const dir = await tmpDir('lg-fuzz-');
    const file = path.join(dir, 'build.yaml');
    const failures: Failure[] = [];
    const outcomes = { ok: 0, refused: 0 };
    for (let index = 0; index < CASES; index++) {
      const m = mutant(bases, SEED, index);
      await writeFile(file, m.bytes);
      const started = Date.now();
      let problem: string | undefined;
      try {
        buildGraph(await loadBuildFile(file));
        outcomes.ok++;
      } catch (err) {
        problem = positionedProblem(err, displayPath(file));
        outcomes.refused++;
      }
      const ms = Date.now() - started;
      if (ms > HANG_MS) problem ??= `took ${ms} ms`;
      if (problem) failures.push({ index, mutant: m, problem });
    }
    await report(failures);
    // Both outcomes happen: the mutations neither all break nor all miss.
    expect(outcomes.refused).toBeGreaterThan(CASES / 2);
    expect(outcomes.ok).toBeGreaterThan(0);
  });

  it('reads the data of every well-formed mutant exactly as the yaml library would', () => {
    // toData replaces doc.toJS (quadratic in aliases); on what both can read, they must agree, key order included.
    let compared = 0;
    for (let index = 0; index < Math.min(CASES, 300); index++) {
      const m = mutant(bases, SEED, index);
      if (m.bytes.length > 200_000 || !isUtf8(m.bytes)) continue;
      const src = new SourceFile(m.bytes.toString('utf8'), path.join(os.tmpdir(), 'build.yaml'));
      if (src.doc.errors.length || structureIssues(src).length || tagIssues(src).length) continue;
      const ours = JSON.stringify(toData(src));
      const theirs = JSON.stringify(src.doc.toJS({ maxAliasCount: -1 }));
      expect(ours, `FUZZ_SEED=${SEED} case ${index} (${m.base}: ${m.ops.join(', ')})`).toBe(theirs);
      compared++;
    }
    for (const base of bases) {
      const src = new SourceFile(base.text, path.join(os.tmpdir(), 'build.yaml'));
      if (!src.doc.errors.length) expect(JSON.stringify(toData(src)), base.name).toBe(JSON.stringify(src.doc.toJS({ maxAliasCount: -1 })));
    }
    expect(compared).toBeGreaterThan(50);
  });

  it('`layergraph validate` exits 0, or 2 with FILE:LINE:COL and no stack trace', { timeout: 240_000 }, async () => {
    const failures: Failure[] = [];
    const exits = new Map<number, number>();
    const project = await tmpDir('lg-fuzz-cli-');
    await cp(path.join(REPO, 'examples', 'monorepo'), project, { recursive: true });
    const file = path.join(project, 'build.yaml');
    for (let i = 0; i < CLI_CASES; i++) {
      const index = CASES - 1 - i; // from the other end: cases the loader test also ran
      const m = mutant(bases, SEED, index);
      await writeFile(file, m.bytes);
      const res = await runCli(['validate', 'build.yaml'], { cwd: project });
      exits.set(res.exitCode, (exits.get(res.exitCode) ?? 0) + 1);
      const problem = cliProblem(res, displayPath(file));
      if (problem) failures.push({ index, mutant: m, problem });
    }
    await report(failures);
    expect(exits.get(2)).toBeGreaterThan(0);
  });

  it('the real binary exits 0, or 2 with FILE:LINE:COL and no stack trace', { timeout: 240_000 }, async () => {
    const failures: Failure[] = [];
    const project = await tmpDir('lg-fuzz-bin-');
    await cp(path.join(REPO, 'examples', 'monorepo'), project, { recursive: true });
    const jobs = Array.from({ length: SPAWN_CASES }, (_, i) => async () => {
      // Spread over the run, so each kind of edit has a chance to be among them.
      const index = Math.floor((i * CASES) / SPAWN_CASES);
      const m = mutant(bases, SEED, index);
      const name = `build-${index}.yaml`;
      await writeFile(path.join(project, name), m.bytes);
      const res = await validateInChild(name, project);
      const problem = cliProblem(res, name);
      if (problem) failures.push({ index, mutant: m, problem });
    });
    for (let i = 0; i < jobs.length; i += 6) await Promise.all(jobs.slice(i, i + 6).map((j) => j()));
    await report(failures);
  });
});

describe('hostile build files, one of each', () => {
  const file = path.join(process.cwd(), 'build.yaml');
  const problemsOf = (text: string): string[] => {
    try {
      parseBuildFile(text, file);
    } catch (err) {
      expect(positionedProblem(err, 'build.yaml')).toBeUndefined();
      return (err as ConfigError).issues.map((i) => `${i.pos.line}:${i.pos.col}: ${i.message}`);
    }
    return expect.fail('expected the build file to be refused');
  };
  const STEPS = 'steps: [{id: a, copy: x, to: /x}]';

  it('refuses 10,000 levels of `[` or `{` as too deeply nested', () => {
    expect(problemsOf(`version: 1\nimages: ${'['.repeat(10_000)}${']'.repeat(10_000)}\n`)[0]).toMatch(/^2:\d+: .*nest/);
    expect(problemsOf(`version: 1\nimages: ${'{a: '.repeat(10_000)}1${'}'.repeat(10_000)}\n`)[0]).toMatch(/^2:\d+: .*nest/);
    expect(problemsOf(`version: 1\nimages: ${'['.repeat(10_000)}\n`)[0]).toMatch(/^2:\d+: /);
  });

  it('refuses nesting far deeper than a build file has, before walking it', () => {
    const tooDeep = 'the build file nests more than 64 levels deep here; a build file needs no more than a few';
    // Found in the parsed document…
    expect(problemsOf(`version: 1\nimages: ${'['.repeat(100)}${']'.repeat(100)}\n`)).toEqual([`2:73: ${tooDeep}`]);
    // …or, deeper, by stopping the parser there; one problem, however deep it goes.
    expect(problemsOf(`version: 1\nimages: ${'['.repeat(300)}${']'.repeat(300)}\n`)).toEqual([expect.stringMatching(new RegExp(`^2:2\\d\\d: ${tooDeep}$`))]);
    expect(problemsOf(`version: 1\nimages:\n${Array.from({ length: 300 }, (_, i) => `${' '.repeat(i + 1)}- x:`).join('\n')}\n`)).toEqual([
      expect.stringMatching(new RegExp(`^\\d+:\\d+: ${tooDeep}$`)),
    ]);
    expect(problemsOf(`version: 1\nimages: ${'{a: '.repeat(3_000_000)}\n`)).toHaveLength(1);
  });

  it('refuses aliases that would expand exponentially, pointing at the alias', () => {
    const lol = ['version: 1', 'x-0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]'];
    for (let i = 1; i < 9; i++) lol.push(`x-${i}: &l${i} [${Array(9).fill(`*l${i - 1}`).join(', ')}]`);
    lol.push('images: *l8');
    const [first, ...rest] = problemsOf(lol.join('\n'));
    expect(rest).toEqual([]);
    expect(first).toMatch(/^\d+:\d+: `\*l\d` .*expand/);
  });

  it('refuses an alias inside its own anchor, and a merge of itself', () => {
    expect(problemsOf(`version: 1\nimages: &i {a: {${STEPS}, env: *i}}\n`)).toEqual([expect.stringMatching(/^2:\d+: `\*i` is inside `&i`/)]);
    expect(problemsOf(`version: 1\nimages:\n  a: &a {<<: *a, ${STEPS}}\n`)).toEqual([expect.stringMatching(/^3:\d+: `\*a` is inside `&a`/)]);
  });

  it('accepts an anchor used many times, as long as what it expands to stays small', () => {
    const steps = Array.from({ length: 2000 }, (_, i) => `      - {<<: *step, id: s${i}}`);
    const text = ['version: 1', 'x-step: &step {copy: x, to: /x}', 'images:', '  a:', '    steps:', ...steps].join('\n');
    expect(() => parseBuildFile(text, file)).not.toThrow();
  });

  it('loads a 10 MB string, and quotes only the start of it', () => {
    const huge = 'x'.repeat(10 * 1024 * 1024);
    const [p, ...rest] = problemsOf(`version: 1\nimages:\n  a:\n    steps:\n      - {id: a, copy: x, to: "${huge}"}\n`);
    expect(rest).toEqual([]);
    expect(p!.length).toBeLessThan(400);
    expect(() => parseBuildFile(`version: 1\nimages:\n  a:\n    labels: {a: "${huge}"}\n    ${STEPS}\n`, file)).not.toThrow();
  });

  it('refuses invalid UTF-8 at its line and column', async () => {
    const dir = await tmpDir();
    const f = path.join(dir, 'build.yaml');
    await writeFile(f, Buffer.concat([Buffer.from('version: 1\nimages:\n  ab'), Buffer.from([0xff, 0xfe]), Buffer.from(`:\n    ${STEPS}\n`)]));
    await expect(loadBuildFile(f)).rejects.toThrow(/build\.yaml:3:5: the build file is not valid UTF-8: byte 0xff here/);
    await writeFile(f, Buffer.concat([Buffer.from('version: 1\n# é ok, '), Buffer.from([0xc3])]));
    await expect(loadBuildFile(f)).rejects.toThrow(/build\.yaml:2:9: the build file is not valid UTF-8: byte 0xc3/);
  });

  it('reads a UTF-8 BOM as nothing, and refuses one anywhere else', () => {
    expect(() => parseBuildFile(`\ufeffversion: 1\nimages:\n  a:\n    ${STEPS}\n`, file)).not.toThrow();
    expect(problemsOf(`version: 1\nimages:\n  a:\n    \ufeff${STEPS}\n`)[0]).toMatch(/^4:5: /);
  });

  it('refuses NUL bytes, tabs, duplicate keys and a truncated file with their place', () => {
    expect(problemsOf(`version: 1\nimages:\n  a\0b:\n    ${STEPS}\n`)).toEqual(['3:3: a NUL character (`\\0`) is not allowed in a value of a build file']);
    // Once a crash: the path reached realpath(), which throws a TypeError for a NUL.
    expect(problemsOf(`version: 1\nimages:\n  a:\n    steps: [{id: a, copy: "x\\0y", to: "/a\\0b"}]\n`)).toEqual([
      '4:27: a NUL character (`\\0`) is not allowed in a value of a build file',
      '4:39: a NUL character (`\\0`) is not allowed in a value of a build file',
    ]);
    expect(problemsOf(`version: 1\nimages:\n\ta:\n    ${STEPS}\n`)[0]).toMatch(/^3:1: invalid YAML: tabs/);
    expect(problemsOf(`version: 1\nimages:\n  a:\n    ${STEPS}\n  a:\n    ${STEPS}\n`)).toEqual([
      '5:3: duplicate image `a` (first defined at build.yaml:3:3)',
    ]);
    expect(problemsOf(`version: 1\nimages:\n  a:\n    steps: [{id: a, copy: "x`)[0]).toMatch(/^4:\d+: invalid YAML/);
  });

  it('reads many aliases and many images in linear time, and shows the first 100 problems', () => {
    const aliases = `version: 1\nx-one: &a 1\nimages: [${Array(50_000).fill('*a').join(',')}]\n`;
    expect(problemsOf(aliases)).toEqual([
      '3:9: `images` is a list; expected a mapping of image names to images',
    ]);
    const images = ['version: 1', 'images:', ...Array.from({ length: 10_000 }, (_, i) => `  i${i}: {from: j${i}, ${STEPS}}`)].join('\n');
    const problems = problemsOf(images);
    expect(problems.length).toBe(101);
    expect(problems[0]).toMatch(/^3:14: image `i0` is built from `j0`, which is not an image of this file \(images: i0, i1, .*, i9 and 9990 more\)/);
    expect(problems[100]).toBe('103:16: and 9900 more problems from here on, not shown; fix the ones above first');
  });

  it('refuses a key that is a list or a mapping, and a merge of something else than a mapping', () => {
    expect(problemsOf(`version: 1\nimages:\n  ? [a, b]\n  : ${STEPS}\n`)).toEqual(['3:5: a key must be a word or a number, not a list or a mapping']);
    expect(problemsOf(`version: 1\nimages:\n  a:\n    <<: [1]\n    ${STEPS}\n`)).toEqual([
      '4:9: `<<` merges mappings: its value must be a mapping, an alias of one (`*defaults`), or a list of those',
    ]);
  });

  it('refuses the tags of YAML 1.1 (sets, ordered maps, binary) and unknown tags instead of reading them as something else', () => {
    expect(problemsOf(`%YAML 1.1\n---\nversion: 1\nimages:\n  a:\n    env: !!omap [A: 1]\n    ${STEPS}\n`)).toEqual([
      '1:1: layergraph reads YAML 1.2; remove the %YAML 1.1 line and quote values like yes/no/0755 as needed',
      '6:10: unknown tag `!!omap`: a build file holds plain strings, numbers, booleans, lists and mappings',
    ]);
    expect(problemsOf(`version: 1\nimages:\n  a:\n    steps: [{id: a, copy: !mine x, to: /x}]\n`)).toEqual([
      '4:27: unknown tag `!mine`: a build file holds plain strings, numbers, booleans, lists and mappings',
    ]);
    // The core schema still knows these, and would load a Buffer and a Date.
    expect(problemsOf(`version: 1\nimages:\n  a:\n    labels: {a: !!binary aGk=, b: !!timestamp 2001-12-14}\n    ${STEPS}\n`)).toEqual([
      '4:17: unknown tag `!!binary`: a build file holds plain strings, numbers, booleans, lists and mappings',
      '4:35: unknown tag `!!timestamp`: a build file holds plain strings, numbers, booleans, lists and mappings',
    ]);
    expect(problemsOf(`version: 1\nimages:\n  a:\n    labels: !!map [a]\n    ${STEPS}\n`)[0]).toMatch(/^4:13: tag `!!map` does not fit this value/);
    const spec = parseBuildFile(`version: 1\nimages:\n  a:\n    steps: [{id: a, copy: x, to: /x, chmod: !!str 0755}]\n`, file);
    expect(spec.images[0]!.steps[0]).toMatchObject({ chmod: 0o755 });
  });

  it('refuses a `%YAML 1.1` directive, whose values (yes, 0755) would mean something else than they are read as', () => {
    expect(problemsOf(`# a comment\n%YAML 1.1\n---\nversion: 1\nimages:\n  a:\n    labels: {debug: yes}\n    ${STEPS}\n`)).toEqual([
      '2:1: layergraph reads YAML 1.2; remove the %YAML 1.1 line and quote values like yes/no/0755 as needed',
    ]);
    expect(parseBuildFile(`%YAML 1.2\n---\nversion: 1\nimages:\n  a:\n    labels: {debug: "yes"}\n    ${STEPS}\n`, file).images[0]!.labels).toEqual({ debug: 'yes' });
  });

  it('allows `!!merge` only on a merge key: elsewhere it is an unknown tag', () => {
    expect(problemsOf(`version: 1\nimages:\n  a:\n    labels: !!merge x\n    ${STEPS}\n`)).toEqual([
      '4:13: unknown tag `!!merge`: a build file holds plain strings, numbers, booleans, lists and mappings',
    ]);
    expect(problemsOf(`version: 1\nimages:\n  a:\n    !!merge <<: [1]\n    ${STEPS}\n`)).toEqual([
      '4:17: `<<` merges mappings: its value must be a mapping, an alias of one (`*defaults`), or a list of those',
    ]);
  });

  it('suggests no key for an unknown key of 10 MB, without comparing it letter by letter', () => {
    expect(problemsOf(`version: 1\nimages:\n  a:\n    ${STEPS}\n    ? ${'x'.repeat(10 * 1024 * 1024)}\n    : 1\n`)[0]).toMatch(/^5:7: unknown key `x{300,}…\(\d+ characters left out\)…/);
  });

  it('escapes control characters in messages and excerpts', () => {
    const [p] = problemsOf(`version: 1\nimages:\n  "a\\e[31mred":\n    ${STEPS}\n`);
    expect(p).toMatch(/^3:3: image name `a\\u001b\[31mred` is not valid/);
    let excerpt = '';
    try {
      parseBuildFile(`version: 1\nimages:\n  a\x1b[31m:\n    ${STEPS}\n`, file);
    } catch (err) {
      excerpt = (err as ConfigError).issues[0]!.excerpt!;
    }
    expect(excerpt).toContain('3 |   a\ufffd[31m:');
    expect(excerpt).not.toContain('\x1b');
  });
});

/** Why `err` is not a proper refusal of the build file `display`, or undefined when it is. */
function positionedProblem(err: unknown, display: string): string | undefined {
  if (!(err instanceof ConfigError)) return `threw ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`;
  if (!err.issues.length) return 'a ConfigError without issues';
  for (const issue of err.issues) {
    const head = formatIssue(issue).split('\n')[0]!;
    if (!head.startsWith(`${display}:`) || !FILE_LINE_COL.test(head)) return `an issue without FILE:LINE:COL: ${clip(head)}`;
    if (issue.pos.line < 1 || issue.pos.col < 1) return `an issue at ${issue.pos.line}:${issue.pos.col}: ${clip(head)}`;
    if (issue.message.length > 2000) return `an issue of ${issue.message.length} characters: ${clip(head)}`;
  }
  return undefined;
}

const FILE_LINE_COL = /^[^\n]+:\d+:\d+: \S/;
const STACK_LINE = /^\s+at .+(:\d+:\d+\)?|\(native\))$/m;

function cliProblem(res: { stdout: string; stderr: string; exitCode: number }, display: string): string | undefined {
  if (STACK_LINE.test(res.stderr) || /unexpected error/.test(res.stderr)) return `a stack trace: ${clip(res.stderr)}`;
  if (res.exitCode === 0) return /: ok \(/.test(res.stdout) ? undefined : `exit 0 without "ok": ${clip(res.stdout)}`;
  if (res.exitCode !== 2) return `exit ${res.exitCode}: ${clip(res.stderr)}`;
  const first = res.stderr.split('\n')[0]!;
  if (!first.startsWith(`${display}:`) || !FILE_LINE_COL.test(first)) return `exit 2 without FILE:LINE:COL: ${clip(res.stderr)}`;
  return undefined;
}

/** `layergraph validate` as a real process, killed if it hangs. */
function validateInChild(file: string, cwd: string): Promise<{ stdout: string; stderr: string; exitCode: number }> {
  const child = spawn(process.execPath, [path.join(REPO, 'bin', 'layergraph.js'), 'validate', file], { cwd, timeout: 60_000 });
  return outputOf(child).then(({ stdout, stderr, code, signal }) => ({
    stdout,
    stderr: signal ? `killed by ${signal} (a hang)\n${stderr}` : stderr,
    exitCode: code ?? -1,
  }));
}

/** Fail with every failing case: seed, index, edits, and where its input was kept. */
async function report(failures: Failure[]): Promise<void> {
  if (!failures.length) return;
  const keep = await mkdtemp(path.join(os.tmpdir(), `lg-fuzz-failures-${SEED}-`));
  const lines: string[] = [];
  for (const f of failures.slice(0, 20)) {
    const saved = path.join(keep, `case-${f.index}.yaml`);
    await writeFile(saved, f.mutant.bytes);
    lines.push(`case ${f.index} (${f.mutant.base}: ${f.mutant.ops.join(', ')}) kept in ${saved}\n  ${clip(f.problem, 1500).replace(/\n/g, '\n  ')}`);
  }
  expect.fail(`FUZZ_SEED=${SEED}: ${failures.length} of the cases failed\n${lines.join('\n')}`);
}

function clip(text: string, max = 300): string {
  return text.length > max ? `${text.slice(0, max)}… (${text.length - max} more characters)` : text;
}
