/**
 * The normalised build file: what the rest of the engine sees after load,
 * schema validation and semantic checks. Defaults are filled in; every
 * node keeps where it came from so later errors can point at the YAML.
 */
import type { SourcePos } from '../errors.js';
import type { BaseRef } from '../oci/base-image.js';

export interface BuildSpec {
  /** Absolute path of the build file. */
  file: string;
  /** Absolute path of the build context. */
  context: string;
  /** Images in file order. */
  images: ImageSpec[];
}

export interface Platform {
  os: string;
  architecture: string;
  variant?: string;
}

export interface ImageSpec {
  name: string;
  pos: SourcePos;
  /** `scratch`, the name of another image of this file, or a base image from outside it. */
  from:
    | { kind: 'scratch' }
    | { kind: 'image'; image: string; pos: SourcePos }
    | { kind: 'base'; ref: BaseRef; text: string; pos: SourcePos };
  /** Host platform unless the file sets `platform: os/arch[/variant]`. */
  platform: Platform | undefined;
  env: Record<string, string>;
  workdir: string | undefined;
  user: string | undefined;
  entrypoint: string[] | undefined;
  cmd: string[] | undefined;
  labels: Record<string, string>;
  /** Normalised to `<port>/<proto>` (tcp when omitted). */
  expose: string[];
  tags: string[];
  /** Push to the registries its tags name at the end of every build (as `--push` does for all). */
  push: boolean;
  /** How two steps with no order between them that change the same path are resolved. */
  merge: 'fail' | 'declared-order';
  /** Steps in file order. */
  steps: StepSpec[];
}

export type StepSpec = CopyStep | RunStep;

interface StepBase {
  id: string;
  pos: SourcePos;
  /**
   * Ids of steps of the same image this step sits on. Filled in: the previous
   * step when the file says nothing (none for the first step, which sits on
   * the image's base). A linked step keeps its place here too, but neither
   * waits for these steps nor puts their keys in its own.
   */
  needs: string[];
  /** Position of each `needs` entry (same order), or the step's position when defaulted. */
  needsPos: SourcePos[];
  /** Built without the filesystem below it (copy steps only; a command always sees what it runs on). */
  link: boolean;
}

export interface CopyStep extends StepBase {
  kind: 'copy';
  /** Source paths or globs, relative to the context (or to the root of `from`). */
  sources: string[];
  /** Position of each source (same order). */
  sourcesPos: SourcePos[];
  /** Absolute destination in the image; a trailing `/` means "a directory". */
  to: string;
  /** Copy out of another image of this file instead of the context. */
  fromImage: { image: string; pos: SourcePos } | undefined;
  /** Octal mode as a number, applied to every file and directory copied. */
  chmod: number | undefined;
  chown: { uid: number; gid: number } | undefined;
  /** Positions of the step's keys, so a later error can point at e.g. `to`. */
  keyPos: Partial<Record<'copy' | 'to' | 'from' | 'chmod' | 'chown' | 'link', SourcePos>>;
}

export interface RunStep extends StepBase {
  kind: 'run';
  link: false;
  /** The command's argv: a string in the file becomes `/bin/sh -c <string>`. */
  argv: string[];
  /** Whether the file wrote the command as a string (for the history line). */
  shell: boolean;
  /** On top of the image's environment. */
  env: Record<string, string>;
  workdir: string | undefined;
  user: string | undefined;
  network: 'none' | 'host';
  keyPos: Partial<Record<'run' | 'env' | 'workdir' | 'user' | 'network', SourcePos>>;
}
