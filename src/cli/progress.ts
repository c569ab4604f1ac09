/**
 * Progress while a build runs, on stderr.
 *  - tty: finished steps scroll by as lines; the steps still running stay in
 *    a live block at the bottom, redrawn in place with their elapsed time.
 *  - plain: one line per event, no control characters (CI logs, pipes).
 *  - quiet: nothing.
 */
import type { BuildEvent, StepResult } from '../build/events.js';
import { formatBytes, formatMs } from '../report/format.js';

export type ProgressMode = 'auto' | 'tty' | 'plain' | 'quiet';

export interface ProgressView {
  onEvent(event: BuildEvent): void;
  close(): void;
}

export function createProgress(
  mode: ProgressMode,
  out: NodeJS.WriteStream | { write(s: string): unknown; isTTY?: boolean },
  env: NodeJS.ProcessEnv,
): ProgressView {
  const resolved = mode === 'auto' ? (out.isTTY && !env.CI ? 'tty' : 'plain') : mode;
  if (resolved === 'quiet') return { onEvent: () => undefined, close: () => undefined };
  if (resolved === 'plain') return new PlainProgress(out);
  return new TtyProgress(out);
}

export function stepLine(r: StepResult): string {
  const size = r.layer ? ` ${formatBytes(r.layer.size)}` : '';
  const why = r.reason ? ` (${r.reason})` : '';
  return `${r.status.toUpperCase().padEnd(4)} ${r.image}/${r.step}${why} ${formatMs(r.durationMs)}${size}`;
}

class PlainProgress implements ProgressView {
  constructor(private readonly out: { write(s: string): unknown }) {}

  onEvent(event: BuildEvent): void {
    if (event.type === 'step-start') this.out.write(`[${stamp(event.atMs)}] START ${event.image}/${event.step}\n`);
    if (event.type === 'step-output') this.out.write(`${event.image}/${event.step} | ${event.line}\n`);
    if (event.type === 'note') this.out.write(`${event.text}\n`);
    if (event.type === 'warning') this.out.write(`warning: ${event.text}\n`);
    if (event.type === 'step-end') {
      const firstLine = stepLine(event.result).split('\n')[0];
      this.out.write(`[${stamp(event.result.startMs + event.result.durationMs)}] ${firstLine}\n`);
    }
  }

  close(): void {}
}

class TtyProgress implements ProgressView {
  private readonly running = new Map<string, number>();
  private drawn = 0;
  private readonly t0 = Date.now();
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly out: { write(s: string): unknown }) {
    this.timer = setInterval(() => this.redraw([]), 100);
    this.timer.unref();
  }

  onEvent(event: BuildEvent): void {
    if (event.type === 'step-start') {
      this.running.set(`${event.image}/${event.step}`, Date.now());
      this.redraw([]);
    } else if (event.type === 'step-end') {
      this.running.delete(`${event.result.image}/${event.result.step}`);
      this.redraw([colour(event.result)]);
    } else if (event.type === 'step-output') {
      this.redraw([`\x1b[2m${event.image}/${event.step} |\x1b[0m ${event.line}`]);
    } else if (event.type === 'note') {
      this.redraw([event.text]);
    } else if (event.type === 'warning') {
      this.redraw([`\x1b[33mwarning:\x1b[0m ${event.text}`]);
    }
  }

  close(): void {
    clearInterval(this.timer);
    this.running.clear();
    this.redraw([]);
  }

  private redraw(done: string[]): void {
    let s = this.drawn ? `\x1b[${this.drawn}F\x1b[J` : '';
    for (const line of done) s += `${line}\n`;
    const now = Date.now();
    const live = [...this.running].map(([name, since]) => `\x1b[36m ⠿ ${name}\x1b[0m ${formatMs(now - since)}`);
    if (live.length) live.push(`\x1b[2m   ${formatMs(now - this.t0)} elapsed, ${live.length} running\x1b[0m`);
    for (const line of live) s += `${line}\n`;
    this.drawn = live.length;
    if (s) this.out.write(s);
  }
}

function colour(r: StepResult): string {
  const code = { hit: 32, miss: 33, failed: 31, skipped: 90 }[r.status];
  const line = stepLine(r).split('\n')[0]!;
  return `\x1b[${code}m${line.slice(0, 4)}\x1b[0m${line.slice(4)}`;
}

function stamp(ms: number): string {
  return `${(ms / 1000).toFixed(2).padStart(6)}s`;
}
