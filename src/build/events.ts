/** What a build tells its observers (progress views, reports) as it goes. */
import type { LayerRef } from '../cache/step-records.js';

export type StepStatus = 'hit' | 'miss' | 'failed' | 'skipped';

export interface StepResult {
  image: string;
  step: string;
  status: StepStatus;
  /** Why it missed, failed or was skipped; empty for a hit. */
  reason: string;
  key: string;
  /** Since the run began. */
  startMs: number;
  durationMs: number;
  layer: LayerRef | null;
  /** For a hit: how long the cached build took when it was made. */
  savedMs: number;
  /** For a run step that ran: where its whole output is kept. */
  logFile?: string;
  /** For a hit: where the cache entry came from (set once caches can be imported; absent means local). */
  cacheSource?: 'local' | 'dir' | 'registry';
}

export type BuildEvent =
  | { type: 'plan'; steps: Array<{ image: string; step: string }> }
  | { type: 'step-start'; image: string; step: string; atMs: number }
  | { type: 'step-output'; image: string; step: string; line: string }
  /** Something the user should know about how the build runs, e.g. which snapshotter it uses. */
  | { type: 'note'; text: string }
  /** Damage found in the cache or the output, said once; what it hit is rebuilt, never used. */
  | { type: 'warning'; text: string }
  | { type: 'step-end'; result: StepResult };
