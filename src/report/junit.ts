/**
 * The build as a JUnit XML report, which CI systems show as test results:
 * one test suite per image, one test case per step (classname = image, name =
 * step id). A hit or a miss passes, with what happened and why in its
 * `<system-out>`; a failed step is a `<failure>` whose message is the first
 * line of the error and whose body is all of it (for a `run` step, the last
 * lines of its output); a skipped step is `<skipped/>`.
 */
import type { StepResult } from '../build/events.js';
import type { BuildResult } from '../build/run-build.js';
import { formatBytes, formatMs } from './format.js';

export function junitReport(result: BuildResult): string {
  const suites = new Map<string, StepResult[]>();
  for (const r of result.steps) suites.set(r.image, [...(suites.get(r.image) ?? []), r]);
  const count = (steps: StepResult[], s: StepResult['status']): number => steps.filter((r) => r.status === s).length;
  const body: string[] = [];
  for (const [image, steps] of suites) {
    const time = seconds(steps.reduce((t, r) => t + r.durationMs, 0));
    body.push(
      `  <testsuite ${attrs({ name: image, tests: steps.length, failures: count(steps, 'failed'), errors: 0, skipped: count(steps, 'skipped'), time })}>`,
      ...steps.map(testCase),
      '  </testsuite>',
    );
  }
  // A build can fail after every step passed (two steps change the same path): say so as a test too.
  const buildError = result.error && !result.steps.some((r) => r.status === 'failed') ? result.error.message : undefined;
  if (buildError) {
    body.push(
      `  <testsuite ${attrs({ name: 'layergraph', tests: 1, failures: 1, errors: 0, skipped: 0, time: seconds(result.durationMs) })}>`,
      `    <testcase ${attrs({ classname: 'layergraph', name: 'build', time: seconds(result.durationMs) })}>`,
      `      ${failure(buildError)}`,
      '    </testcase>',
      '  </testsuite>',
    );
  }
  const totals = {
    name: 'layergraph',
    tests: result.steps.length + (buildError ? 1 : 0),
    failures: count(result.steps, 'failed') + (buildError ? 1 : 0),
    errors: 0,
    skipped: count(result.steps, 'skipped'),
    time: seconds(result.durationMs),
  };
  return ['<?xml version="1.0" encoding="UTF-8"?>', `<testsuites ${attrs(totals)}>`, ...body, '</testsuites>', ''].join('\n');
}

function testCase(r: StepResult): string {
  const open = `    <testcase ${attrs({ classname: r.image, name: r.step, time: seconds(r.durationMs) })}`;
  switch (r.status) {
    case 'failed':
      return `${open}>\n      ${failure(r.reason)}\n    </testcase>`;
    case 'skipped':
      return `${open}>\n      <skipped ${attrs({ message: r.reason })}/>\n    </testcase>`;
    default:
      return `${open}>\n      <system-out>${text(outcome(r))}</system-out>\n    </testcase>`;
  }
}

function failure(message: string): string {
  const first = message.split('\n')[0]!;
  return `<failure ${attrs({ message: first, type: 'failed' })}>${text(message)}</failure>`;
}

/** What a passing step's `<system-out>` says: the outcome, why, and what it produced. */
function outcome(r: StepResult): string {
  const layer = r.layer ? `layer ${r.layer.digest} (${formatBytes(r.layer.size)})` : 'no layer (the step changed nothing)';
  const head =
    r.status === 'hit'
      ? `HIT: cached${r.cacheSource && r.cacheSource !== 'local' ? ` (from ${r.cacheSource})` : ''}${r.savedMs ? `, ~${formatMs(r.savedMs)} saved` : ''}`
      : `MISS: ${r.reason}`;
  return [head, `key ${r.key}`, layer, ...(r.logFile ? [`output: ${r.logFile}`] : [])].join('\n');
}

function seconds(ms: number): string {
  return (ms / 1000).toFixed(3);
}

function attrs(values: Record<string, string | number>): string {
  return Object.entries(values)
    .map(([k, v]) => `${k}="${attr(String(v))}"`)
    .join(' ');
}

/** Character data: markup characters escaped, and what XML 1.0 cannot hold at all made visible. */
function text(s: string): string {
  return xmlChars(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

/** An attribute value: also quotes, and line breaks and tabs as references so parsers keep them. */
function attr(s: string): string {
  return text(s).replace(/"/g, '&quot;').replace(/\n/g, '&#10;').replace(/\r/g, '&#13;').replace(/\t/g, '&#9;');
}

/**
 * Command output is not always text XML may hold: terminal colour codes are
 * dropped, and any other control character (or a lone surrogate, U+FFFE,
 * U+FFFF) becomes U+FFFD, as a decoder shows bytes it cannot read.
 */
function xmlChars(s: string): string {
  return s
    // eslint-disable-next-line no-control-regex
    .replace(/\x1b\[[0-?]*[ -/]*[@-~]/g, '')
    // eslint-disable-next-line no-control-regex
    .replace(/[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]|[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, '\ufffd');
}
