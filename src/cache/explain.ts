/**
 * Why did a step miss? Compare the key material of its last build with the
 * material of this one and name the first thing a user would want to know.
 */
import { canonicalJson } from '../util/xxhash.js';
import type { InputFile, KeyMaterial } from './step-key.js';

export function explainMiss(previous: KeyMaterial | undefined, current: KeyMaterial): string {
  if (!previous) return 'no earlier build';
  if (previous.kind !== current.kind) return `step kind changed (${previous.kind} → ${current.kind})`;

  const changedKeys = changedDefinitionKeys(previous.definition, current.definition);
  if (changedKeys.length > 0) return `definition changed: ${changedKeys.join(', ')}`;

  const inputs = describeInputChanges(previous.inputs, current.inputs);
  if (inputs) return inputs;

  if (previous.parent !== current.parent) return 'parent layer changed';
  // Same material, different key: the cache was written by another layergraph version.
  return 'cache entry missing';
}

function changedDefinitionKeys(a: Record<string, unknown>, b: Record<string, unknown>): string[] {
  const keys = [...new Set([...Object.keys(a), ...Object.keys(b)])].sort();
  return keys.filter((k) => canonicalJson(a[k]) !== canonicalJson(b[k]));
}

function describeInputChanges(before: InputFile[], after: InputFile[]): string | undefined {
  const old = new Map(before.map((f) => [f.path, f]));
  const now = new Map(after.map((f) => [f.path, f]));
  const changed: string[] = [];
  const added: string[] = [];
  const removed: string[] = [];
  for (const [p, f] of now) {
    const o = old.get(p);
    if (!o) added.push(p);
    else if (!sameInput(o, f)) changed.push(p);
  }
  for (const p of old.keys()) if (!now.has(p)) removed.push(p);

  const parts: string[] = [];
  if (changed.length) parts.push(summarise('input', changed, 'changed'));
  if (added.length) parts.push(summarise('input', added, 'added'));
  if (removed.length) parts.push(summarise('input', removed, 'removed'));
  return parts.length ? parts.join('; ') : undefined;
}

function sameInput(a: InputFile, b: InputFile): boolean {
  return a.type === b.type && a.mode === b.mode && a.hash === b.hash && a.target === b.target;
}

/** "input a.js changed", "inputs a.js, b.js changed", "inputs a.js, b.js and 3 more changed". */
function summarise(noun: string, paths: string[], verb: string): string {
  const shown = paths.slice(0, 3).join(', ');
  const more = paths.length > 3 ? ` and ${paths.length - 3} more` : '';
  return `${paths.length === 1 ? noun : `${noun}s`} ${shown}${more} ${verb}`;
}
