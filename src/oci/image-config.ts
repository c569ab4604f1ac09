/**
 * The OCI image config and manifest of one image, from its layers and the
 * settings of the build file (inherited from a base image of the same file).
 *
 * Objects are built in a fixed key order and never carry the build time, so
 * the same inputs serialise to the same bytes and the same digests.
 */
import type { ImageSpec, Platform } from '../config/types.js';
import type { BlobInfo } from '../cache/content-store.js';
import { MEDIA_TYPE_CONFIG, MEDIA_TYPE_LAYER_GZIP, MEDIA_TYPE_MANIFEST } from './media-types.js';

export interface HistoryEntry {
  created: string;
  created_by: string;
  comment?: string;
  empty_layer?: boolean;
}

/** What an image passes on to images built `from` it. */
export interface ImageState {
  platform: Platform;
  /** `mediaType` when not gzip (a base image's plain tar layers are kept as they are). */
  layers: Array<BlobInfo & { diffId: string; mediaType?: string }>;
  history: HistoryEntry[];
  config: RuntimeConfig;
}

export interface RuntimeConfig {
  User?: string;
  ExposedPorts?: Record<string, Record<string, never>>;
  Env?: string[];
  Entrypoint?: string[];
  Cmd?: string[];
  WorkingDir?: string;
  Labels?: Record<string, string>;
}

export const SCRATCH: ImageState = { platform: hostPlatform(), layers: [], history: [], config: {} };

/** Docker's inheritance rules: env and labels merge, ENTRYPOINT set here resets an inherited CMD. */
export function inheritConfig(base: RuntimeConfig, image: ImageSpec): RuntimeConfig {
  const env = new Map((base.Env ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv]));
  for (const [k, v] of Object.entries(image.env)) env.set(k, `${k}=${v}`);
  const ports = { ...(base.ExposedPorts ?? {}) };
  for (const p of image.expose) ports[p] = {};
  const labels = { ...(base.Labels ?? {}), ...image.labels };
  const entrypoint = image.entrypoint ?? base.Entrypoint;
  const cmd = image.cmd ?? (image.entrypoint ? undefined : base.Cmd);
  const out: RuntimeConfig = {};
  const user = image.user ?? base.User;
  if (user !== undefined) out.User = user;
  if (Object.keys(ports).length) out.ExposedPorts = sortedRecord(ports);
  if (env.size) out.Env = [...env.values()];
  if (entrypoint) out.Entrypoint = entrypoint;
  if (cmd) out.Cmd = cmd;
  const workdir = image.workdir ?? base.WorkingDir;
  if (workdir !== undefined) out.WorkingDir = workdir;
  if (Object.keys(labels).length) out.Labels = sortedRecord(labels);
  return out;
}

export function configJson(state: ImageState, created: string): Uint8Array {
  const { os, architecture, variant } = state.platform;
  const config = {
    created,
    architecture,
    os,
    ...(variant ? { variant } : {}),
    config: state.config,
    rootfs: { type: 'layers', diff_ids: state.layers.map((l) => l.diffId) },
    history: state.history,
  };
  return Buffer.from(JSON.stringify(config));
}

export function manifestJson(config: BlobInfo, layers: Array<BlobInfo & { mediaType?: string }>): Uint8Array {
  const manifest = {
    schemaVersion: 2,
    mediaType: MEDIA_TYPE_MANIFEST,
    config: { mediaType: MEDIA_TYPE_CONFIG, digest: config.digest, size: config.size },
    layers: layers.map((l) => ({ mediaType: l.mediaType ?? MEDIA_TYPE_LAYER_GZIP, digest: l.digest, size: l.size })),
  };
  return Buffer.from(JSON.stringify(manifest));
}

/** The RFC 3339 time stamped into configs: SOURCE_DATE_EPOCH, else the epoch, never "now". */
export function createdAt(sourceDateEpoch: number): string {
  return new Date(sourceDateEpoch * 1000).toISOString().replace(/\.000Z$/, 'Z');
}

export function hostPlatform(): Platform {
  const archMap: Record<string, [string, string?]> = {
    x64: ['amd64'],
    arm64: ['arm64', 'v8'],
    arm: ['arm', 'v7'],
    ia32: ['386'],
    ppc64: ['ppc64le'],
    s390x: ['s390x'],
    riscv64: ['riscv64'],
  };
  const [architecture, variant] = archMap[process.arch] ?? [process.arch];
  return { os: 'linux', architecture, ...(variant ? { variant } : {}) };
}

function sortedRecord<T>(rec: Record<string, T>): Record<string, T> {
  return Object.fromEntries(Object.entries(rec).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}
