/**
 * Building a `run` step: prepare a root over the layers below it, run the
 * command in it, and pack what the command changed into a layer. Whatever
 * happens — success, a failing command, an abort — the root is released
 * (unmounted, removed) before this returns.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rename } from 'node:fs/promises';
import path from 'node:path';
import type { ContentStore } from '../cache/content-store.js';
import type { LayerRef } from '../cache/step-records.js';
import type { RunSettings } from '../build/run-inputs.js';
import type { Snapshotter } from '../snapshot/snapshotter.js';
import { packUpper } from '../snapshot/upper-pack.js';
import { runInRoot, type RuntimeName } from './run-in-root.js';
import { CommandFailedError, CommandStoppedError } from './command-errors.js';

export interface RunRequest {
  settings: RunSettings;
  /** The layers below the step, bottom first. */
  lowers: LayerRef[];
  /** A fresh directory of the run's temp space for this step. */
  workDir: string;
  /** Where the command's whole output is kept. */
  logFile: string;
  /** Each line of output as it comes. */
  onLine: (line: string) => void;
  signal: AbortSignal;
}

export interface RunDeps {
  store: ContentStore;
  snapshotter: Snapshotter;
  runtime: RuntimeName;
  sourceDateEpoch: number;
}

/** Lines of output a failure shows; the whole output is in the log file. */
const TAIL_LINES = 20;

/** Builds the step's layer; null when the command changed nothing. */
export async function runStepLayer(req: RunRequest, deps: RunDeps): Promise<LayerRef | null> {
  const root = await deps.snapshotter.prepare(req.lowers, req.workDir);
  let failed = false;
  try {
    await mkdir(path.dirname(req.logFile), { recursive: true });
    // Written in the step's own directory and renamed into place when the command is done: two
    // runs of the same step at once (two processes on one cache) never mix their output in one log.
    const output = new OutputLog(path.join(req.workDir, 'output.log'), req.logFile, req.onLine);
    const scratchDir = path.join(req.workDir, 'runtime');
    await mkdir(scratchDir);
    const result = await runInRoot({
      rootfs: root.rootfs,
      ...req.settings,
      runtime: deps.runtime,
      scratchDir,
      id: `layergraph-${process.pid}-${randomBytes(4).toString('hex')}`,
      onOutput: (chunk: Buffer) => output.write(chunk),
      signal: req.signal,
    }).finally(() => output.close());
    output.throwIfBroken();
    if (result.aborted) throw new CommandStoppedError('stopped');
    if (result.exitCode !== 0 || result.signal) {
      throw new CommandFailedError(result.exitCode, result.signal, output.tail(), req.logFile);
    }
    const upper = await root.commit();
    const packed = await packUpper(upper, { mtime: deps.sourceDateEpoch });
    if (!packed) return null;
    const blob = await deps.store.ingest(packed.stream);
    const layer = { digest: blob.digest, size: blob.size, diffId: await packed.diffId };
    await deps.snapshotter.keep(upper, layer, deps.sourceDateEpoch);
    return layer;
  } catch (err) {
    failed = true;
    throw err;
  } finally {
    // A release that fails after the step did must not hide why the step failed.
    await root.release().catch((err: unknown) => {
      if (!failed) throw err;
    });
  }
}

/**
 * The command's output: to a log file whole, to the caller line by line, and
 * its last lines kept. A log that cannot be written (disk full) fails the
 * step once the command is done, rather than the process at once.
 */
class OutputLog {
  private readonly file;
  private partial = '';
  private readonly last: string[] = [];
  private broken: Error | undefined;

  constructor(
    private readonly staging: string,
    private readonly logFile: string,
    private readonly onLine: (line: string) => void,
  ) {
    this.file = createWriteStream(staging);
    this.file.on('error', (err) => (this.broken ??= err));
  }

  write(chunk: Buffer): void {
    if (!this.broken) this.file.write(chunk);
    const lines = (this.partial + chunk.toString('utf8')).split('\n');
    this.partial = lines.pop() ?? '';
    for (const line of lines) this.line(line);
  }

  async close(): Promise<void> {
    if (this.partial) this.line(this.partial);
    this.partial = '';
    if (this.broken || this.file.destroyed) return;
    await new Promise<void>((resolve) => this.file.end(resolve));
    await rename(this.staging, this.logFile).catch((err: Error) => void (this.broken ??= err));
  }

  throwIfBroken(): void {
    if (this.broken) throw new Error(`cannot write the command's output to ${this.logFile}: ${this.broken.message}`, { cause: this.broken });
  }

  tail(): string[] {
    return [...this.last];
  }

  private line(text: string): void {
    const line = text.replace(/\r$/, '');
    this.last.push(line);
    if (this.last.length > TAIL_LINES) this.last.shift();
    this.onLine(line);
  }
}
