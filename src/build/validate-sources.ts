/**
 * `validate` checks what it can without building: every copy source from the
 * context exists and stays inside it. Sources in other images are only known
 * once those are built.
 */
import type { BuildSpec } from '../config/types.js';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { copySelections } from './copy-inputs.js';

export async function validateSources(spec: BuildSpec): Promise<void> {
  const issues: ConfigIssue[] = [];
  for (const image of spec.images) {
    for (const step of image.steps) {
      if (step.kind !== 'copy' || step.fromImage) continue;
      try {
        await copySelections(step, spec.context);
      } catch (err) {
        if (err instanceof ConfigError) issues.push(...err.issues);
        else throw err;
      }
    }
  }
  if (issues.length) throw new ConfigError(issues);
}
