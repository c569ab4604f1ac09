/**
 * "did you mean …?": the allowed word closest to a mistyped one, by edit
 * distance (with transpositions), or by the name other tools give it.
 */

/** What other build tools call our keys, so `environment:` suggests `env`. */
const ALIASES: Record<string, string[]> = {
  env: ['environment', 'envs', 'variables'],
  cmd: ['command', 'args', 'arguments'],
  entrypoint: ['entry_point', 'entry-point'],
  workdir: ['working_dir', 'workingdir', 'working-dir', 'cwd', 'dir'],
  expose: ['ports', 'port', 'exposed_ports', 'exposedports'],
  labels: ['label', 'annotations'],
  tags: ['tag', 'names', 'refs'],
  platform: ['platforms', 'arch', 'architecture', 'os'],
  from: ['base', 'image', 'source_image'],
  copy: ['src', 'source', 'sources', 'files', 'add'],
  to: ['dest', 'dst', 'destination', 'target'],
  needs: ['depends_on', 'dependson', 'depends', 'deps', 'after', 'requires'],
  id: ['name', 'step'],
  chmod: ['mode', 'permissions'],
  chown: ['owner', 'user'],
  images: ['image', 'targets'],
};

/** The word of `allowed` that `word` most likely meant, if any is close enough. */
export function suggest(word: string, allowed: readonly string[]): string | undefined {
  const lower = word.toLowerCase();
  for (const a of allowed) if (a.toLowerCase() === lower) return a;
  for (const a of allowed) if (ALIASES[a]?.includes(lower)) return a;
  const limit = Math.max(1, Math.floor(word.length / 3));
  let best: string | undefined;
  let bestDistance = Infinity;
  for (const a of allowed) {
    // The distance is at least the difference in length: no need to compute it (a key may be megabytes long).
    if (Math.abs(a.length - lower.length) > limit) continue;
    const d = editDistance(lower, a.toLowerCase());
    if (d <= limit && d < bestDistance) {
      best = a;
      bestDistance = d;
    }
  }
  return best;
}

/** Damerau–Levenshtein distance (optimal string alignment): edits, with swapping two neighbours as one. */
export function editDistance(a: string, b: string): number {
  const rows: number[][] = [];
  for (let i = 0; i <= a.length; i++) {
    const row: number[] = [i];
    for (let j = 1; j <= b.length; j++) {
      if (i === 0) {
        row.push(j);
        continue;
      }
      const prev = rows[i - 1]!;
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let d = Math.min(prev[j]! + 1, row[j - 1]! + 1, prev[j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) d = Math.min(d, rows[i - 2]![j - 2]! + 1);
      row.push(d);
    }
    rows.push(row);
  }
  return rows[a.length]![b.length]!;
}
