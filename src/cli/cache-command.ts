/**
 * `layergraph cache du | prune | verify`: the cache's own upkeep. Each
 * prints a text summary or, with `--format json`, the report as JSON. Exit
 * status: 0, or 1 when `verify` found anything bad (removed or not), or 130
 * when `verify` was interrupted.
 */
import { cacheUsage, type CacheUsage } from '../cache/usage.js';
import { pruneCache, type PruneReport } from '../cache/prune.js';
import { verifyCache, type VerifyReport } from '../cache/verify.js';
import { UsageError } from '../errors.js';
import type { CliIo } from './main.js';
import { formatBytes, parseAge, parseSize } from './units.js';

const SUBCOMMANDS = {
  du: ['cache-dir', 'format'],
  prune: ['cache-dir', 'format', 'keep-storage', 'older-than', 'dry-run'],
  verify: ['cache-dir', 'format', 'dry-run'],
} as const;

type Subcommand = keyof typeof SUBCOMMANDS;

export async function cacheCommand(sub: string, values: Record<string, unknown>, io: CliIo, cacheDir: string): Promise<number> {
  if (!(sub in SUBCOMMANDS)) throw new UsageError(`unknown cache command \`${sub}\`; expected du, prune or verify (see layergraph cache --help)`);
  const allowed: readonly string[] = SUBCOMMANDS[sub as Subcommand];
  for (const [flag, v] of Object.entries(values)) {
    if (v !== undefined && !allowed.includes(flag)) throw new UsageError(`--${flag} does not apply to \`cache ${sub}\``);
  }
  const format = (values.format as string | undefined) ?? 'text';
  if (format !== 'text' && format !== 'json') throw new UsageError(`--format ${format}: expected text or json`);
  const print = <T>(report: T, text: (r: T) => string): void => void io.stdout.write(format === 'json' ? `${JSON.stringify(report, null, 2)}\n` : text(report));
  let waited = false;
  const onWait = (holder: string): void => {
    if (!waited) io.stderr.write(`waiting for another cache prune or verify (${holder}) to finish…\n`);
    waited = true;
  };

  switch (sub as Subcommand) {
    case 'du':
      print(await cacheUsage(cacheDir), duText);
      return 0;
    case 'prune': {
      const keep = values['keep-storage'] as string | undefined;
      const age = values['older-than'] as string | undefined;
      const report = await pruneCache(cacheDir, {
        ...(keep !== undefined ? { keepStorage: parseSize('--keep-storage', keep) } : {}),
        ...(age !== undefined ? { olderThanMs: parseAge('--older-than', age) } : {}),
        dryRun: values['dry-run'] === true,
        onWait,
      });
      print(report, pruneText);
      return 0;
    }
    case 'verify': {
      const report = await verifyCache(cacheDir, { dryRun: values['dry-run'] === true, onWait, ...(io.signal ? { signal: io.signal } : {}) });
      print(report, verifyText);
      if (report.interrupted) return 130;
      return report.problems.length ? 1 : 0;
    }
  }
}

function duText(u: CacheUsage): string {
  if (!u.exists) return `${u.cacheDir}: no cache there yet\n`;
  const rows = u.kinds.map((k) => `${k.label.padEnd(24)} ${String(k.count).padStart(8)} ${formatBytes(k.bytes).padStart(10)}`);
  const running = u.runningBuilds ? `; ${u.runningBuilds} build${u.runningBuilds === 1 ? '' : 's'} using it now` : '';
  return [
    `cache ${u.cacheDir}${running}`,
    `${'KIND'.padEnd(24)} ${'ENTRIES'.padStart(8)} ${'SIZE'.padStart(10)}`,
    ...rows,
    `${'total'.padEnd(24)} ${''.padStart(8)} ${formatBytes(u.totalBytes).padStart(10)}`,
    '',
  ].join('\n');
}

function pruneText(r: PruneReport): string {
  const parts = (Object.entries(r.removed) as Array<[keyof PruneReport['removed'], number]>)
    .filter(([, n]) => n > 0)
    .map(([kind, n]) => `${n} ${PRUNED_NAMES[kind][n === 1 ? 0 : 1]}`);
  const what = parts.length ? parts.join(', ') : 'nothing';
  const lines = [
    `${r.dryRun ? 'would remove' : 'removed'} ${what}${r.freedBytes ? `: ${formatBytes(r.freedBytes)} ${r.dryRun ? 'to free' : 'freed'}` : ''}`,
    ...(r.inUse ? [`kept ${r.inUse} entr${r.inUse === 1 ? 'y' : 'ies'} that a running build uses`] : []),
    `the cache ${r.dryRun ? 'would hold' : 'now holds'} ${formatBytes(r.bytesAfter)} (was ${formatBytes(r.bytesBefore)})`,
  ];
  return `${lines.join('\n')}\n`;
}

const PRUNED_NAMES: Record<keyof PruneReport['removed'], [string, string]> = {
  records: ['step record', 'step records'],
  blobs: ['blob', 'blobs'],
  snapshots: ['snapshot', 'snapshots'],
  logs: ['log', 'logs'],
  other: ['other entry', 'other entries'],
};

function verifyText(r: VerifyReport): string {
  const lines = [`checked ${r.blobs} blob${r.blobs === 1 ? '' : 's'} (${formatBytes(r.bytes)}) , ${r.records} step record${r.records === 1 ? '' : 's'} and ${r.snapshots} snapshot${r.snapshots === 1 ? '' : 's'}${r.interrupted ? ' before it was interrupted' : ''}`];
  for (const p of r.problems) {
    const users = p.records?.length ? `; named by ${p.records.length} step record${p.records.length === 1 ? '' : 's'}: ${p.records.join(', ')}` : '';
    lines.push(`bad ${p.kind} ${p.id}: ${p.problem}${users}\n  ${p.path}`);
  }
  if (!r.problems.length) lines.push('every blob matches its digest, every record its blob, and every snapshot its stamp');
  else if (r.dryRun || r.interrupted) lines.push(`${r.problems.length} bad; nothing removed${r.dryRun ? ' (--dry-run)' : ''}`);
  else lines.push(`removed ${r.removed.blobs} blob${r.removed.blobs === 1 ? '' : 's'} and ${r.removed.records} step record${r.removed.records === 1 ? '' : 's'}${r.removed.snapshots ? ` and ${r.removed.snapshots} snapshot${r.removed.snapshots === 1 ? '' : 's'}` : ''}: the next build rebuilds those steps`);
  return `${lines.join('\n')}\n`;
}
