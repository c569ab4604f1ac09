/**
 * What can be checked before building, and is, by `validate` and before every
 * `run`: each copy source from the context exists and stays inside it, and
 * the sources fit their `to` (several need a directory). Directory contents
 * are not listed here. Sources in other images are only known once those
 * images are built.
 */
import type { BuildSpec } from '../config/types.js';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { CopyDestinationError, planCopy } from '../exec/copy-step.js';
import { loadContextFilter } from '../context/context-filter.js';
import { copySelections } from './copy-inputs.js';

export async function validateSources(spec: BuildSpec, images = spec.images, ownDirs: string[] = []): Promise<void> {
  const filter = await loadContextFilter(spec.context, ownDirs);
  const issues: ConfigIssue[] = [];
  for (const image of images) {
    for (const step of image.steps) {
      if (step.kind !== 'copy' || step.fromImage) continue;
      try {
        planCopy(await copySelections(step, spec.context, { shallow: true, filter }), step, new Map());
      } catch (err) {
        if (err instanceof ConfigError) issues.push(...err.issues);
        else if (err instanceof CopyDestinationError) {
          issues.push({ pos: step.keyPos.to ?? step.pos, path: `images.${image.name}.steps.${step.id}.to`, message: err.message });
        } else throw err;
      }
    }
  }
  if (issues.length) throw new ConfigError(issues);
}
