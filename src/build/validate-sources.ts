/**
 * What can be checked before building, and is, by `validate` and before every
 * `run`: each copy source from the context exists and stays inside it, and
 * the sources fit their `to` (several need a directory). Directory contents
 * are not listed here. Sources in other images are only known once those
 * images are built.
 */
import type { BuildSpec, CopyStep, ImageSpec } from '../config/types.js';
import type { ContextFilter } from '../context/context-filter.js';
import { printableMessage } from '../config/printable.js';
import { ConfigError, type ConfigIssue } from '../errors.js';
import { CopyDestinationError, planCopy } from '../exec/copy-step.js';
import { copySelections } from './copy-inputs.js';

export async function validateSources(spec: BuildSpec, images: ImageSpec[], filter: ContextFilter): Promise<void> {
  const issues: ConfigIssue[] = [];
  for (const image of images) {
    for (const step of image.steps) {
      if (step.kind !== 'copy' || step.fromImage) continue;
      try {
        planCopy(await copySelections(step, spec.context, { shallow: true, filter }), step, new Map());
      } catch (err) {
        if (err instanceof ConfigError) issues.push(...err.issues.map((issue) => sourceIssue(image, step, issue)));
        else if (err instanceof CopyDestinationError) issues.push(destinationIssue(image, step, err));
        else throw err;
      }
    }
  }
  if (issues.length) throw new ConfigError(issues);
}

/**
 * A copy source problem, named like the build names steps (`api/src`): the
 * position is the source's, and the same source may be in many steps.
 */
function sourceIssue(image: ImageSpec, step: CopyStep, issue: ConfigIssue): ConfigIssue {
  return { ...issue, path: `images.${image.name}.steps.${step.id}.copy`, message: printableMessage(`${image.name}/${step.id}: ${issue.message}`) };
}

/** A `to` that does not fit its sources, pinned to the `to` of the build file. */
export function destinationIssue(image: ImageSpec, step: CopyStep, err: CopyDestinationError): ConfigIssue {
  return { pos: step.keyPos.to ?? step.pos, path: `images.${image.name}.steps.${step.id}.to`, message: err.message };
}
