/**
 * Turn a build file that passed every check into the `BuildSpec` the engine
 * reads: defaults filled in, values normalised, positions attached.
 */
import path from 'node:path';
import { isScalar } from 'yaml';
import { parseBaseRef, registryBaseRef } from '../oci/base-image.js';
import { isRegistryRef } from './reference.js';
import type { BuildSpec, CopyStep, ImageSpec, RunStep, StepSpec } from './types.js';
import type { Segment, SourceFile } from './positions.js';
import { imageNames, type RawBuildFile, type RawImage, type RawStep } from './raw.js';
import { commandOf, parseChmod, parseChown, parseExpose, parsePlatform } from './values.js';

export function toBuildSpec(data: RawBuildFile, src: SourceFile): BuildSpec {
  const file = src.file;
  return {
    file,
    context: path.resolve(path.dirname(file), data.context ?? '.'),
    images: imageNames(data.images, src).map((name) => toImage(name, data.images[name]!, src)),
  };
}

/** `scratch`, an image of this file, or a base image from outside it (`oci:…`, relative to the build file). */
function fromOf(from: string | undefined, src: SourceFile, at: Segment[]): ImageSpec['from'] {
  if (from === undefined || from === 'scratch') return { kind: 'scratch' };
  const pos = src.valuePos(at);
  const ref = parseBaseRef(from, path.dirname(src.file)) ?? (isRegistryRef(from) ? registryBaseRef(from) : undefined);
  return ref ? { kind: 'base', ref, text: from, pos } : { kind: 'image', image: from, pos };
}

function toImage(name: string, raw: RawImage, src: SourceFile): ImageSpec {
  const at: Segment[] = ['images', name];
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw.env ?? {})) env[key] = envValue(value, [...at, 'env', key], src);
  return {
    name,
    pos: src.keyPos(at),
    from: fromOf(raw.from, src, [...at, 'from']),
    platform: raw.platform === undefined ? undefined : parsePlatform(raw.platform),
    env,
    workdir: raw.workdir,
    user: raw.user === undefined ? undefined : String(raw.user),
    entrypoint: raw.entrypoint === undefined ? undefined : commandOf(raw.entrypoint),
    cmd: raw.cmd === undefined ? undefined : commandOf(raw.cmd),
    labels: { ...raw.labels },
    expose: [...new Set((raw.expose ?? []).map((e) => must(parseExpose(e))))],
    tags: [...(raw.tags ?? [])],
    push: raw.push ?? false,
    merge: raw.merge ?? 'fail',
    steps: raw.steps.map((step, i) => toStep(step, [...at, 'steps', i], raw.steps[i - 1], src)),
  };
}

function toStep(raw: RawStep, at: Segment[], previous: RawStep | undefined, src: SourceFile): StepSpec {
  const pos = src.valuePos(at);
  const needs = raw.needs ?? (previous ? [previous.id] : []);
  const needsPos = raw.needs ? raw.needs.map((_, j) => src.valuePos([...at, 'needs', j])) : needs.map(() => pos);
  const base = { id: raw.id, pos, needs, needsPos };
  return raw.run !== undefined ? toRunStep(raw, raw.run, at, src, base) : toCopyStep(raw, at, src, base);
}

type StepHead = Pick<CopyStep, 'id' | 'pos' | 'needs' | 'needsPos'>;

function toRunStep(raw: RawStep, run: string | string[], at: Segment[], src: SourceFile, base: StepHead): RunStep {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(raw.env ?? {})) env[key] = envValue(value, [...at, 'env', key], src);
  const keyPos: RunStep['keyPos'] = {};
  for (const key of ['run', 'env', 'workdir', 'user', 'network'] as const) {
    if (raw[key] !== undefined) keyPos[key] = src.keyPos([...at, key]);
  }
  return {
    kind: 'run',
    ...base,
    link: false,
    argv: commandOf(run),
    shell: typeof run === 'string',
    env,
    workdir: raw.workdir,
    user: raw.user === undefined ? undefined : String(raw.user),
    network: raw.network ?? 'none',
    keyPos,
  };
}

function toCopyStep(raw: RawStep, at: Segment[], src: SourceFile, base: StepHead): CopyStep {
  // The checks made sure a step without `run` has both.
  const copy = raw.copy!;
  const sources = typeof copy === 'string' ? [copy] : [...copy];
  const sourcesPos = typeof copy === 'string' ? [src.valuePos([...at, 'copy'])] : copy.map((_, j) => src.valuePos([...at, 'copy', j]));
  const keyPos: CopyStep['keyPos'] = {};
  for (const key of ['copy', 'to', 'from', 'chmod', 'chown', 'link'] as const) {
    if (raw[key] !== undefined) keyPos[key] = src.keyPos([...at, key]);
  }
  return {
    kind: 'copy',
    ...base,
    sources,
    sourcesPos,
    to: raw.to!,
    fromImage: raw.from === undefined ? undefined : { image: raw.from, pos: src.valuePos([...at, 'from']) },
    link: raw.link ?? false,
    chmod: raw.chmod === undefined ? undefined : parseChmod(raw.chmod),
    chown: raw.chown === undefined ? undefined : must(parseChown(raw.chown)),
    keyPos,
  };
}

/** Strings as they are; numbers as the file writes them (`1.10` stays "1.10", `0755` "0755"); booleans as `true`/`false`. */
function envValue(value: string | number | boolean, at: Segment[], src: SourceFile): string {
  if (typeof value === 'number') {
    const node = src.node(at);
    if (isScalar(node) && node.type === 'PLAIN' && typeof node.source === 'string' && node.source) return node.source;
  }
  return String(value);
}

function must<T>(parsed: { ok: true; value: T } | { ok: false; problem: string }): T {
  if (!parsed.ok) throw new Error(`unchecked value: expected ${parsed.problem}`);
  return parsed.value;
}
