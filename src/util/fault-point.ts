/**
 * Crash injection for the fault tests (test/faults.test.ts), so they can kill
 * a build at a chosen moment without guessing with sleeps.
 *
 * `LAYERGRAPH_FAULT_AT=<point>:<n>` makes the process SIGKILL itself the n-th
 * time it reaches `faultPoint(<point>)`; `<point>:<n>:SIGINT` (or `SIGTERM`)
 * sends that signal instead, as a Ctrl-C at that moment would. Without the
 * variable (always, outside those tests) `faultPoint` is an empty function:
 * the points cost nothing in the paths they sit in.
 *
 * The points, in the order a build meets them:
 * - the build's events (`plan`, `step-start`, `step-output` — a `run` step's
 *   command is running —, `step-end`, `note`, `warning`), when they are emitted;
 * - `hash`: an input file of a copy step was hashed;
 * - `mount`: an overlay was mounted (before the command runs in it);
 * - `snapshot`: a layer was unpacked into a snapshot, not yet renamed into place;
 * - `pack`: a chunk of a layer being packed passed into the store;
 * - `store`: a blob's bytes are on disk under their staging name, not yet committed;
 * - `write`: a small file (record, config, index.json…) is written under its temp name, not yet renamed;
 * - `layout`: a blob is copied into the output layout under its temp name, not yet renamed.
 */
export type FaultPointName =
  | 'plan'
  | 'step-start'
  | 'step-output'
  | 'step-end'
  | 'note'
  | 'warning'
  | 'hash'
  | 'mount'
  | 'snapshot'
  | 'pack'
  | 'store'
  | 'write'
  | 'layout';

export const faultPoint: (point: FaultPointName) => void = armed(process.env.LAYERGRAPH_FAULT_AT);

function armed(spec: string | undefined): (point: FaultPointName) => void {
  const m = spec ? /^([a-z-]+):(\d+)(?::(SIGKILL|SIGINT|SIGTERM))?$/.exec(spec) : null;
  if (!m) return () => undefined;
  const [, target, n, signal = 'SIGKILL'] = m;
  let left = Number(n);
  return (point) => {
    if (point === target && --left === 0) process.kill(process.pid, signal);
  };
}
