/**
 * What a copy step reads, and the key material made of it: everything needed
 * to key a step without building it (a later `plan` command can use it as is).
 */
import path from 'node:path';
import { runBounded } from '../util/bounded.js';
import { faultPoint } from '../util/fault-point.js';
import type { CopyStep } from '../config/types.js';
import type { FileHasher } from '../context/file-hasher.js';
import { selectSources, type Selection, type SelectOptions } from '../context/select.js';
import type { InputFile, KeyMaterial } from '../cache/step-key.js';

export const COPY_KIND = 'layergraph.copy.v1';

export function copySelections(step: CopyStep, sourceRoot: string, opts: SelectOptions = {}): Promise<Selection[]> {
  const refs = step.sources.map((spec, i) => ({ spec, pos: step.sourcesPos[i] ?? step.pos }));
  return selectSources(sourceRoot, refs, step.fromImage ? 'image' : 'context', opts);
}

export async function copyInputs(step: CopyStep, selections: Selection[], hasher: FileHasher): Promise<InputFile[]> {
  const prefix = step.fromImage ? `${step.fromImage.image}:/` : '';
  const inputs: InputFile[] = [];
  const hashes: Array<() => Promise<void>> = [];
  // Files the stat cache vouches for are answered here, without a promise each: on a no-op
  // rebuild that is every file, and thousands of promises cost more than the lookups.
  await hasher.ready?.();
  for (const sel of selections) {
    for (const e of sel.entries) {
      const p = `${prefix}${e.rel ? `${sel.source === '.' ? '' : `${sel.source}/`}${e.rel}` : sel.source}`;
      const mode = e.stat.mode & 0o7777;
      if (e.linkTarget !== undefined) inputs.push({ path: p, type: 'symlink', mode, target: e.linkTarget });
      else if (e.stat.isDirectory()) inputs.push({ path: p, type: 'dir', mode });
      else {
        const input: InputFile = { path: p, type: 'file', mode, size: e.stat.size };
        inputs.push(input);
        const known = hasher.known?.(e.abs, e.stat);
        if (known !== undefined) input.hash = known;
        else hashes.push(async () => {
          input.hash = await hasher.hash(e.abs, e.stat);
          faultPoint('hash');
        });
      }
    }
  }
  await runBounded(hashes, PARALLEL_HASHES);
  return inputs;
}

/** Files hashed at once: reading them waits on the filesystem more than on the CPU. */
const PARALLEL_HASHES = 16;

export function copyMaterial(step: CopyStep, inputs: InputFile[], parent: string | null, sourceDateEpoch: number): KeyMaterial {
  return {
    kind: COPY_KIND,
    definition: {
      // Spelling is not meaning: `./src//` and `src` copy the same files.
      copy: step.sources.map(normalizeSource),
      to: normalizeDest(step.to),
      from: step.fromImage?.image,
      link: step.link,
      chmod: step.chmod,
      chown: step.chown,
      // Stamped into every tar entry, so it is part of what the layer is.
      sourceDateEpoch,
    },
    inputs,
    parent,
  };
}

function normalizeSource(source: string): string {
  const lead = source.startsWith('/') ? '/' : '';
  return lead + (path.posix.normalize(source).replace(/^\/+|\/+$/g, '') || '.');
}

function normalizeDest(to: string): string {
  const n = path.posix.normalize(to);
  return to.endsWith('/') && !n.endsWith('/') ? `${n}/` : n;
}

/** The step as a Dockerfile line, for image history and `docker history`. */
export function describeCopy(step: CopyStep): string {
  const flags = [
    step.link ? '--link' : '',
    step.fromImage ? `--from=${step.fromImage.image}` : '',
    step.chmod !== undefined ? `--chmod=${step.chmod.toString(8).padStart(4, '0')}` : '',
    step.chown ? `--chown=${step.chown.uid}:${step.chown.gid}` : '',
  ].filter(Boolean);
  return ['COPY', ...flags, ...step.sources, step.to].join(' ');
}
