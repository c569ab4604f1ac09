/**
 * The build file as loaded from YAML, before normalisation. Checked against
 * the schema, data has these shapes; before that, only guarded reads of it
 * (`isRecord`, `typeof`) are safe.
 */
import { isMap } from 'yaml';
import { keyString, type SourceFile } from './positions.js';

export interface RawBuildFile {
  version: 1;
  context?: string;
  images: Record<string, RawImage>;
}

export interface RawImage {
  from?: string;
  platform?: string;
  env?: Record<string, string | number | boolean>;
  workdir?: string;
  user?: string | number;
  entrypoint?: string | string[];
  cmd?: string | string[];
  labels?: Record<string, string>;
  expose?: Array<number | string>;
  tags?: string[];
  merge?: 'fail' | 'declared-order';
  push?: boolean;
  steps: RawStep[];
}

/** A copy step has `copy` and `to`; a run step has `run` (the checks keep the two kinds' keys apart). */
export interface RawStep {
  id: string;
  copy?: string | string[];
  to?: string;
  from?: string;
  link?: boolean;
  chmod?: string;
  chown?: string | number;
  run?: string | string[];
  env?: Record<string, string | number | boolean>;
  workdir?: string;
  user?: string | number;
  network?: 'none' | 'host';
  needs?: string[];
}

export const IMAGE_NAME = /^[a-z0-9][a-z0-9._-]*$/;
export const STEP_ID = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

/**
 * The keys of the mapping `images`, in the order the file has them (a JS
 * object would put `1:` before `api:`).
 */
export function imageNames(images: Record<string, unknown>, src: SourceFile): string[] {
  const node = src.node(['images']);
  const inFile = isMap(node) ? node.items.map((p) => keyString(p.key)).filter((k): k is string => k !== undefined) : [];
  const names = [...new Set(inFile)].filter((k) => Object.hasOwn(images, k));
  const listed = new Set(names);
  for (const k of Object.keys(images)) if (!listed.has(k)) names.push(k); // merged in with `<<`
  return names;
}
