/**
 * GitHub Actions workflow commands (`::error file=…,line=…,col=…::message`),
 * which Actions shows as annotations on the build file: problems in it, a
 * step that failed, a step that `--expect-cached` did not find cached.
 * Escaping follows the Actions toolkit: `%`, CR and LF in the message; also
 * `:` and `,` in property values.
 */
import path from 'node:path';
import type { ConfigIssue, SourcePos } from '../errors.js';

/** Whether the environment is a GitHub Actions job. */
export function inGitHubActions(env: NodeJS.ProcessEnv): boolean {
  return env.GITHUB_ACTIONS === 'true';
}

/** One `::error` line, at `pos` when known; `cwd` is what the file is named relative to (the checkout). */
export function errorAnnotation(message: string, pos: SourcePos | undefined, cwd: string, opts: { col?: boolean } = {}): string {
  const props = pos
    ? [`file=${property(fileFor(pos.file, cwd))}`, `line=${pos.line}`, ...(opts.col === false ? [] : [`col=${pos.col}`])].join(',')
    : '';
  return `::error${props ? ` ${props}` : ''}::${data(message)}`;
}

/** Every problem of a build file, each at its line and column. */
export function issueAnnotations(issues: readonly ConfigIssue[], cwd: string): string[] {
  return issues.map((i) => errorAnnotation(i.message, i.pos, cwd));
}

/**
 * A failed step, at the step: `image/step: <first line>`. The first line of
 * a step's error may already start with its position and name; they are
 * said once.
 */
export function stepAnnotation(image: string, step: string, reason: string, pos: SourcePos | undefined, cwd: string): string {
  const name = `${image}/${step}`;
  let first = reason.split('\n')[0]!;
  if (pos) first = stripPrefix(first, `${pos.file}:${pos.line}:${pos.col}: `);
  first = stripPrefix(first, `${name}: `);
  return errorAnnotation(`${name}: ${first}`, pos, cwd, { col: false });
}

function stripPrefix(s: string, prefix: string): string {
  return s.startsWith(prefix) ? s.slice(prefix.length) : s;
}

/**
 * Positions name the file relative to the process's directory (or in full);
 * Actions wants it relative to the job's working directory, with `/`.
 */
function fileFor(file: string, cwd: string): string {
  const rel = path.relative(cwd, path.resolve(file));
  return (rel.startsWith('..') || path.isAbsolute(rel) ? path.resolve(file) : rel).split(path.sep).join('/');
}

function data(s: string): string {
  return s.replace(/%/g, '%25').replace(/\r/g, '%0D').replace(/\n/g, '%0A');
}

function property(s: string): string {
  return data(s).replace(/:/g, '%3A').replace(/,/g, '%2C');
}
