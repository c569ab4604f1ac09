/**
 * How a run step's command can end badly. Apart from run-step.ts so the
 * scheduler can tell them apart without loading the code that runs commands
 * (a build of copy steps never needs it).
 */

/** The command exited non-zero (or was killed by a signal). */
export class CommandFailedError extends Error {
  constructor(
    readonly exitCode: number,
    readonly killedBy: string | undefined,
    /** The last lines of output, for the report. */
    readonly tail: string[],
    readonly logFile: string,
  ) {
    super(killedBy ? `command was killed by ${killedBy}` : `command exited with code ${exitCode}`);
  }
}

/** The run was stopped from outside (Ctrl-C, or another step failed) before the command finished. */
export class CommandStoppedError extends Error {}
