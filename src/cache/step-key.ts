/**
 * Step keys. A key is computed before a step runs, from everything that can
 * change its output and nothing else (BuildKit's cache map): a versioned kind
 * tag, the normalised definition (labels such as the step id stay out), every
 * input file, and the key of the filesystem below it unless the step is linked.
 *
 * The material is kept in the step record, so a later miss can say which part
 * of it changed (see explain.ts).
 */
import { hashValue } from '../util/xxhash.js';

/** One file the step read. `hash` is the content hash for regular files. */
export interface InputFile {
  /** Where it was read, e.g. `services/api/main.js` or `image:builder/app/dist/x.js`. */
  path: string;
  type: 'file' | 'dir' | 'symlink';
  mode: number;
  size?: number;
  target?: string;
  hash?: string;
}

export interface KeyMaterial {
  /** e.g. `layergraph.copy.v1`: bump the version when the step's output rules change. */
  kind: string;
  definition: Record<string, unknown>;
  inputs: InputFile[];
  /** Key of the filesystem the step sits on; null for a linked step. */
  parent: string | null;
}

export function stepKey(material: KeyMaterial): Promise<string> {
  return hashValue(material);
}

/**
 * Key of the filesystem after a step: what sits below it plus the step itself.
 * Linked steps have one too: they ignore what is below them, but what comes
 * after them does not.
 */
export function chainKey(below: string, step: string): Promise<string> {
  return hashValue(['chain', below, step]);
}

/** Key of what sits below a step that needs several others (or the image's base). */
export function belowKey(parts: string[]): Promise<string> {
  return parts.length === 1 ? Promise.resolve(parts[0] as string) : hashValue(['below', ...parts]);
}
