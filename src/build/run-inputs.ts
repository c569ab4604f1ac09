/**
 * What a run step executes, worked out from the step and the image it is in,
 * and the key material made of it. A command's output depends on what it runs
 * on (the parent chain) and how it is run (argv, environment, directory,
 * user, network), so those are its key; it reads no build-context files.
 */
import type { KeyMaterial } from '../cache/step-key.js';
import type { ImageSpec, RunStep } from '../config/types.js';
import type { RuntimeConfig } from '../oci/image-config.js';

export const RUN_KIND = 'layergraph.run.v1';

/** Docker's default, for an image whose environment has no PATH. */
const DEFAULT_PATH = 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';

export interface RunSettings {
  argv: string[];
  /** `KEY=value`, in a stable order. */
  env: string[];
  cwd: string;
  /** As written (`''` is root); names are looked up in the image when it runs. */
  user: string;
  network: 'none' | 'host';
}

/**
 * How `step` runs: on top of the base image's environment, the image's `env`
 * and the step's own; in the step's `workdir`, else the image's, else the
 * base's. The user is the step's, else the base image's: the image's own
 * `user` is what the finished image runs as (like a Dockerfile's USER at the
 * end), not what its steps build as.
 */
export function runSettings(step: RunStep, image: ImageSpec, base: RuntimeConfig): RunSettings {
  const env = new Map((base.Env ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv]));
  for (const [k, v] of Object.entries(image.env)) env.set(k, `${k}=${v}`);
  for (const [k, v] of Object.entries(step.env)) env.set(k, `${k}=${v}`);
  if (!env.has('PATH')) env.set('PATH', DEFAULT_PATH);
  return {
    argv: step.argv,
    env: [...env.values()],
    cwd: step.workdir ?? image.workdir ?? base.WorkingDir ?? '/',
    user: step.user ?? base.User ?? '',
    network: step.network,
  };
}

export function runMaterial(settings: RunSettings, parent: string, sourceDateEpoch: number): KeyMaterial {
  return {
    kind: RUN_KIND,
    definition: {
      run: settings.argv,
      env: settings.env,
      workdir: settings.cwd,
      user: settings.user,
      network: settings.network,
      // Stamped into every tar entry, so it is part of what the layer is.
      sourceDateEpoch,
    },
    inputs: [],
    parent,
  };
}

/** The step as a Dockerfile line, for image history and `docker history`. */
export function describeRun(step: RunStep): string {
  return step.shell ? `RUN ${step.argv[2]}` : `RUN ${JSON.stringify(step.argv)}`;
}
