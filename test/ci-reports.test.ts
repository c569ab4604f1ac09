/**
 * What CI sees of a build: the JUnit report, the Markdown summary with its
 * graph, GitHub Actions annotations, and `--expect-cached`.
 */
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { busyboxContext, hasStaticBusybox } from './helpers/busybox.js';
import { runCli } from './helpers/cli.js';
import { makeTree, useTmpDirs } from './helpers/tmp.js';
import { hasTool } from './helpers/tools.js';
import { findAll, parseXml } from './helpers/xml.js';
import { errorAnnotation, stepAnnotation } from '../src/report/github-annotations.js';

const tmpDir = useTmpDirs();
const ROOT = process.getuid?.() === 0;

const BUILD = `version: 1
images:
  app:
    steps:
      - id: src
        copy: src/
        to: /app/
      - id: conf
        copy: app.conf
        to: /etc/app.conf
  web:
    steps:
      - {id: take, from: app, copy: /etc/app.conf, to: /app.conf}
`;

/** A step that fails wherever the tests run: no shell in an empty image as root, no run steps at all otherwise. */
const FAILING = `${BUILD}      - id: sh
        run: "echo boom; exit 3"
`;

async function project(buildYaml = BUILD, name = 'build.yaml'): Promise<string> {
  const dir = await tmpDir();
  await makeTree(dir, {
    [name]: buildYaml,
    'app.conf': 'debug = false\n',
    src: { dir: { 'lib.txt': 'lib\n' } },
  });
  return dir;
}

function run(dir: string, extra: string[], env: NodeJS.ProcessEnv = {}, file = 'build.yaml') {
  return runCli(['run', file, '--cache-dir', 'cache', '--out', 'out', '--progress', 'quiet', ...extra], { cwd: dir, env });
}

describe('--report x.xml', () => {
  it('writes JUnit XML: a suite per image, a passing case per step with why in its output', async () => {
    const dir = await project();
    const res = await run(dir, ['--report', 'r.xml']);
    expect(res.exitCode, res.stderr).toBe(0);
    const doc = parseXml(await readFile(path.join(dir, 'r.xml'), 'utf8'));
    expect(findAll(doc, 'testsuite').map((s) => s.attrs.name)).toEqual(['app', 'web']);
    const cases = findAll(doc, 'testcase');
    expect(cases.map((c) => `${c.attrs.classname}/${c.attrs.name}`)).toEqual(['app/src', 'app/conf', 'web/take']);
    for (const c of cases) expect(c.attrs.time).toMatch(/^\d+\.\d{3}$/);
    expect(cases[0]!.children[0]!.text).toMatch(/^MISS: no earlier build\nkey [0-9a-f]{16}\nlayer sha256:/);

    await run(dir, ['--report', 'r.xml']);
    const again = findAll(parseXml(await readFile(path.join(dir, 'r.xml'), 'utf8')), 'testcase');
    expect(again).toHaveLength(3);
    for (const c of again) expect(c.children[0]!.text).toMatch(/^HIT: cached(, ~\d+ms saved)?\nkey [0-9a-f]{16}\n/);
  });

  it('makes a failed step a failure and the steps it stopped skipped', async () => {
    const dir = await project(FAILING);
    const res = await run(dir, ['--report', 'r.xml']);
    expect(res.exitCode).toBe(1);
    const doc = parseXml(await readFile(path.join(dir, 'r.xml'), 'utf8'));
    const sh = findAll(doc, 'testcase').find((c) => c.attrs.name === 'sh')!;
    const failure = sh.children[0]!;
    expect(failure.name).toBe('failure');
    expect(failure.attrs.message).not.toContain('\n');
    expect(failure.text.startsWith(failure.attrs.message!)).toBe(true);
    expect(Number(doc.attrs.failures)).toBe(1);
  });

  it('puts the last lines of a failed command in the failure', async () => {
    if (!(ROOT && hasStaticBusybox() && hasTool('runc'))) return;
    const dir = await tmpDir();
    await busyboxContext(dir, `  app:\n    from: base\n    steps:\n      - {id: fail, run: "echo first-line; echo 'second <line> & more'; exit 3"}\n`);
    const res = await run(dir, ['--report', 'r.xml']);
    expect(res.exitCode).toBe(1);
    const fail = findAll(parseXml(await readFile(path.join(dir, 'r.xml'), 'utf8')), 'testcase').find((c) => c.attrs.name === 'fail')!;
    expect(fail.children[0]!.attrs.message).toMatch(/app\/fail: .*3/);
    expect(fail.children[0]!.text).toContain('| first-line\n');
    expect(fail.children[0]!.text).toContain('| second <line> & more');
  });

  it('refuses a report name it cannot tell the kind of', async () => {
    const dir = await project();
    const res = await run(dir, ['--report', 'r.txt']);
    expect(res.exitCode).toBe(2);
    expect(res.stderr).toMatch(/--report r.txt: the file name must end in .json, .md or .xml/);
  });
});

describe('Markdown report and GITHUB_STEP_SUMMARY', () => {
  it('has a table per image and a Mermaid graph with needs and copy-from edges', async () => {
    const dir = await project();
    const summary = path.join(dir, 'summary.md');
    const res = await run(dir, ['--report', 'r.md'], { GITHUB_STEP_SUMMARY: summary });
    expect(res.exitCode, res.stderr).toBe(0);
    const md = await readFile(summary, 'utf8');
    expect(await readFile(path.join(dir, 'r.md'), 'utf8')).toBe(md);
    expect(md).toContain('#### app: 0/2 cached');
    expect(md).toContain('#### web: 0/1 cached');
    const graph = /```mermaid\n([\s\S]*?)\n```/.exec(md)![1]!;
    expect(graph).toContain('subgraph img0["app"]');
    expect(graph).toContain('s0["src · miss"]');
    expect(graph).toContain('s0 --> s1');
    expect(graph).toContain('s1 -. copy .-> s2');
    expect(graph).toMatch(/class s0,s1,s2 miss/);
  });
});

describe('GitHub Actions annotations', () => {
  const actions = { GITHUB_ACTIONS: 'true' };

  it('turns each problem of the build file into an ::error at its line and column, path relative to the working directory', async () => {
    const dir = await project(BUILD.replace('to: /etc/app.conf', 'tp: /etc/app.conf').replace('copy: app.conf', 'copy: 50%.conf'), 'ci,1.yaml');
    for (const cmd of ['validate', 'run', 'plan']) {
      const res = await runCli([cmd, 'ci,1.yaml', ...(cmd === 'validate' ? [] : ['--cache-dir', 'cache'])], { cwd: dir, env: actions });
      expect(res.exitCode, cmd).toBe(2);
      const lines = res.stdout.split('\n').filter((l) => l.startsWith('::'));
      expect(lines, cmd).toContain('::error file=ci%2C1.yaml,line=10,col=9::unknown key `tp` in step; did you mean `to`?');
      // the human-readable form is still on stderr
      expect(res.stderr, cmd).toMatch(/ci,1\.yaml:10:9: unknown key `tp`/);
    }
    const outside = await tmpDir();
    const res = await runCli(['validate', path.join(dir, 'ci,1.yaml')], { cwd: outside, env: actions });
    expect(res.stdout).toContain(`::error file=${path.join(dir, 'ci%2C1.yaml').replace(/:/g, '%3A')},line=10,col=9::`);
  });

  it('escapes % and line breaks in the message', async () => {
    const dir = await project(BUILD.replace('copy: app.conf', 'copy: 50%.conf'));
    const res = await runCli(['validate', 'build.yaml'], { cwd: dir, env: actions });
    expect(res.exitCode).toBe(2);
    expect(res.stdout).toBe('::error file=build.yaml,line=9,col=15::app/conf: copy source `50%25.conf` does not exist in the build context\n');
    expect(errorAnnotation('a\r\nb%', undefined, dir)).toBe('::error::a%0D%0Ab%25');
  });

  it('prints nothing of the kind outside Actions', async () => {
    const dir = await project(BUILD.replace('to: /etc/app.conf', 'tp: /etc/app.conf'));
    const res = await runCli(['validate', 'build.yaml'], { cwd: dir, env: { GITHUB_ACTIONS: 'false' } });
    expect(res.exitCode).toBe(2);
    expect(res.stdout).toBe('');
  });

  it('annotates a failed step at the step, with the first line of its error', async () => {
    const dir = await project(FAILING);
    const res = await run(dir, [], actions);
    expect(res.exitCode).toBe(1);
    const lines = res.stdout.split('\n').filter((l) => l.startsWith('::'));
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(/^::error file=build\.yaml,line=14::web\/sh: \S/);
    expect(lines[0]).not.toMatch(/::web\/sh: build\.yaml/);
    expect(lines[0]).not.toContain('%0A');
  });

  it('says the step once when the error already starts with its position and name', () => {
    const pos = { file: 'build.yaml', line: 3, col: 7 };
    expect(stepAnnotation('a', 'b', 'build.yaml:3:7: a/b: exited with 1\n  last lines', pos, process.cwd())).toBe('::error file=build.yaml,line=3::a/b: exited with 1');
    expect(stepAnnotation('a', 'b', 'EACCES: permission denied', undefined, '/')).toBe('::error::a/b: EACCES: permission denied');
  });
});

describe('--expect-cached', () => {
  it('exits 3 naming each step that missed and why; 0 once everything is cached', async () => {
    const dir = await project();
    const first = await run(dir, ['--expect-cached']);
    expect(first.exitCode).toBe(3);
    expect(first.stderr).toBe(
      'error: --expect-cached: 3 of 3 steps were not cached:\n  app/src: no earlier build\n  app/conf: no earlier build\n  web/take: no earlier build\n',
    );
    // the build itself is done and cached
    expect((await run(dir, ['--expect-cached'])).exitCode).toBe(0);

    await writeFile(path.join(dir, 'app.conf'), 'debug = true\n');
    const changed = await run(dir, ['--expect-cached'], { GITHUB_ACTIONS: 'true' });
    expect(changed.exitCode).toBe(3);
    expect(changed.stderr).toBe('error: --expect-cached: 2 of 3 steps were not cached:\n  app/conf: input app.conf changed\n  web/take: input app:/etc/app.conf changed\n');
    expect(changed.stdout.split('\n').filter((l) => l.startsWith('::'))).toEqual([
      '::error file=build.yaml,line=8::app/conf: not cached (--expect-cached): input app.conf changed',
      '::error file=build.yaml,line=13::web/take: not cached (--expect-cached): input app:/etc/app.conf changed',
    ]);
  });

  it('leaves a failed build its exit code 1', async () => {
    const dir = await project(FAILING);
    expect((await run(dir, ['--expect-cached'])).exitCode).toBe(1);
  });

  it('is in the help, with exit code 3', async () => {
    expect((await runCli(['run', '--help'])).stdout).toMatch(/--expect-cached\s+exit 3 when any step was not cached/);
    const help = await runCli(['--help']);
    expect(help.stdout).toMatch(/3 steps not cached \(--expect-cached\)/);
    expect(help.stdout).toMatch(/plan\s+show the graph and which steps would hit/);
  });
});
