import { describe, expect, it } from 'vitest';
import type { StepResult } from '../src/build/events.js';
import type { BuildResult } from '../src/build/run-build.js';
import { formatBytes, formatMs } from '../src/report/format.js';
import { jsonReport, markdownReport, summarize, summaryLine, textReport } from '../src/report/summary.js';

const D = (c: string): string => `sha256:${c.repeat(64)}`;

function stepResult(over: Partial<StepResult> & Pick<StepResult, 'image' | 'step' | 'status'>): StepResult {
  return { reason: '', key: '0123456789abcdef', startMs: 0, durationMs: 0, layer: null, savedMs: 0, ...over };
}

function result(): BuildResult {
  return {
    images: [
      { name: 'api', tags: ['api:latest', 'registry.example/api:1.0'], manifestDigest: D('a'), configDigest: D('c'), layers: [] },
      { name: 'web', tags: [], manifestDigest: D('b'), configDigest: D('d'), layers: [] },
    ],
    steps: [
      stepResult({
        image: 'api',
        step: 'deps',
        status: 'hit',
        key: '1111111111111111',
        startMs: 2,
        durationMs: 5,
        layer: { digest: D('1'), diffId: D('2'), size: 2048 },
        savedMs: 1500,
      }),
      stepResult({
        image: 'api',
        step: 'src',
        status: 'miss',
        reason: 'input services/api/main.js changed',
        key: '2222222222222222',
        startMs: 7,
        durationMs: 40,
        layer: { digest: D('3'), diffId: D('4'), size: 1234 },
      }),
      stepResult({
        image: 'web',
        step: 'html',
        status: 'miss',
        reason: 'no earlier build',
        key: '3333333333333333',
        startMs: 3,
        durationMs: 1200,
        layer: null,
      }),
      stepResult({
        image: 'web',
        step: 'assets',
        status: 'hit',
        key: '4444444444444444',
        startMs: 4,
        durationMs: 1,
        layer: { digest: D('5'), diffId: D('6'), size: 10 },
        savedMs: 250,
      }),
    ],
    durationMs: 1300,
    merges: [],
  };
}

function failedResult(): BuildResult {
  const r = result();
  return {
    images: [],
    steps: [
      r.steps[0]!,
      stepResult({ image: 'api', step: 'src', status: 'failed', reason: 'EACCES: permission denied | opening x', durationMs: 3 }),
      stepResult({ image: 'api', step: 'bin', status: 'skipped', reason: 'api/src failed', durationMs: 0 }),
    ],
    durationMs: 20,
    error: new Error('api/src: EACCES'),
    merges: [],
  };
}

describe('summarize', () => {
  it('counts statuses and adds up what the hits saved', () => {
    expect(summarize(result())).toEqual({
      total: 4,
      hits: 2,
      misses: 2,
      failed: 0,
      skipped: 0,
      durationMs: 1300,
      savedMs: 1750,
    });
  });

  it('counts failed and skipped steps, and savedMs only from hits', () => {
    const r = failedResult();
    r.steps.push(stepResult({ image: 'x', step: 'y', status: 'miss', savedMs: 999 }));
    expect(summarize(r)).toEqual({ total: 4, hits: 1, misses: 1, failed: 1, skipped: 1, durationMs: 20, savedMs: 1500 });
  });

  it('handles an empty build', () => {
    expect(summarize({ images: [], steps: [], durationMs: 0, merges: [] })).toEqual({
      total: 0,
      hits: 0,
      misses: 0,
      failed: 0,
      skipped: 0,
      durationMs: 0,
      savedMs: 0,
    });
  });
});

describe('summaryLine', () => {
  it('names only what happened', () => {
    expect(summaryLine(summarize(result()))).toBe('2/4 steps cached, 2 built, in 1.3s, ~1.8s saved by the cache');
    expect(summaryLine(summarize(failedResult()))).toBe('1/3 steps cached, 1 failed, 1 skipped, in 20ms, ~1.5s saved by the cache');
    expect(summaryLine(summarize({ images: [], steps: [], durationMs: 5, merges: [] }))).toBe('0/0 steps cached, in 5ms');
  });
});

describe('textReport', () => {
  it('has one line per step with HIT/MISS and the reason, then the summary line', () => {
    const r = result();
    r.images = [];
    const text = textReport(r);
    expect(text.endsWith('\n')).toBe(true);
    const lines = text.trimEnd().split('\n');
    expect(lines).toHaveLength(5);
    const expectations: Array<[string, string, string]> = [
      ['api/deps', 'HIT', ''],
      ['api/src', 'MISS', 'input services/api/main.js changed'],
      ['web/html', 'MISS', 'no earlier build'],
      ['web/assets', 'HIT', ''],
    ];
    expectations.forEach(([id, status, reason], i) => {
      const line = lines[i]!;
      expect(line.startsWith(id + ' ')).toBe(true);
      expect(line.split(/\s+/)[1]).toBe(status);
      if (reason) expect(line.endsWith(`  ${reason}`)).toBe(true);
      expect(line).toBe(line.trimEnd());
    });
    expect(lines[0]).toContain('2.0 kB');
    expect(lines[1]).toContain('1.2 kB');
    expect(lines[1]).toContain('40ms');
    expect(lines[2]).toContain('1.2s');
    expect(lines[2]).toMatch(/ - /); // no layer
    expect(lines[4]).toBe('2/4 steps cached, 2 built, in 1.3s, ~1.8s saved by the cache');
  });

  it('lines the columns up', () => {
    const r = result();
    r.images = [];
    const lines = textReport(r).trimEnd().split('\n').slice(0, 4);
    const statusCol = lines.map((l) => l.search(/(HIT|MISS)/));
    expect(new Set(statusCol).size).toBe(1);
    // the time column is right-aligned: every time ends at the same column
    const timeEnds = lines.map((l) => {
      const m = /(\d+(?:\.\d)?(?:ms|s))/.exec(l)!;
      return m.index + m[0].length;
    });
    expect(new Set(timeEnds).size).toBe(1);
  });

  it('lists the images, then ends with the summary line', () => {
    const lines = textReport(result()).trimEnd().split('\n');
    expect(lines).toHaveLength(7);
    expect(lines[4]).toBe(`api: ${D('a')} (api:latest, registry.example/api:1.0)`);
    expect(lines[5]).toBe(`web: ${D('b')}`);
    expect(lines[6]).toMatch(/^2\/4 steps cached/);
  });

  it('shows FAILED and SKIPPED steps', () => {
    const lines = textReport(failedResult()).trimEnd().split('\n');
    expect(lines[1]).toMatch(/^api\/src\s+FAILED\s.*EACCES: permission denied \| opening x$/);
    expect(lines[2]).toMatch(/^api\/bin\s+SKIPPED\s.*api\/src failed$/);
    expect(lines[3]).toMatch(/^1\/3 steps cached, 1 failed, 1 skipped/);
  });
});

describe('jsonReport', () => {
  it('has exactly the documented shape', () => {
    const text = jsonReport(result());
    expect(text.endsWith('\n')).toBe(true);
    const parsed: unknown = JSON.parse(text);
    expect(parsed).toEqual({
      images: [
        { name: 'api', tags: ['api:latest', 'registry.example/api:1.0'], manifestDigest: D('a') },
        { name: 'web', tags: [], manifestDigest: D('b') },
      ],
      steps: [
        { image: 'api', id: 'deps', status: 'hit', reason: '', key: '1111111111111111', startMs: 2, durationMs: 5, layer: { digest: D('1'), diffId: D('2'), size: 2048 } },
        { image: 'api', id: 'src', status: 'miss', reason: 'input services/api/main.js changed', key: '2222222222222222', startMs: 7, durationMs: 40, layer: { digest: D('3'), diffId: D('4'), size: 1234 } },
        { image: 'web', id: 'html', status: 'miss', reason: 'no earlier build', key: '3333333333333333', startMs: 3, durationMs: 1200, layer: null },
        { image: 'web', id: 'assets', status: 'hit', reason: '', key: '4444444444444444', startMs: 4, durationMs: 1, layer: { digest: D('5'), diffId: D('6'), size: 10 } },
      ],
      merges: [],
      summary: { total: 4, hits: 2, misses: 2, failed: 0, skipped: 0, durationMs: 1300, savedMs: 1750 },
    });
    // key order as documented
    const obj = parsed as { steps: object[]; images: object[] };
    expect(Object.keys(obj)).toEqual(['images', 'steps', 'merges', 'summary']);
    expect(Object.keys(obj.steps[0]!)).toEqual(['image', 'id', 'status', 'reason', 'key', 'startMs', 'durationMs', 'layer']);
    expect(Object.keys(obj.images[0]!)).toEqual(['name', 'tags', 'manifestDigest']);
  });

  it('leaves out fields that are not part of the report (savedMs per step, configDigest, layers)', () => {
    const text = jsonReport(result());
    expect(text).not.toContain('configDigest');
    expect(text).not.toContain('"layers"');
    const parsed = JSON.parse(text) as { steps: Array<Record<string, unknown>> };
    for (const s of parsed.steps) expect(s).not.toHaveProperty('savedMs');
  });

  it('adds the error message when the build failed', () => {
    const parsed = JSON.parse(jsonReport(failedResult())) as Record<string, unknown>;
    expect(parsed.error).toBe('api/src: EACCES');
    expect(parsed.images).toEqual([]);
    expect((parsed.summary as Record<string, number>).failed).toBe(1);
  });
});

describe('markdownReport', () => {
  /** Splits a table row on pipes that are not escaped. */
  const cells = (row: string): string[] =>
    row
      .replace(/^\|/, '')
      .replace(/\|$/, '')
      .split(/(?<!\\)\|/)
      .map((c) => c.trim());

  it('is a heading and a table with a row per step', () => {
    const md = markdownReport(result());
    const lines = md.trimEnd().split('\n');
    expect(lines[0]).toBe('### layergraph: 2/4 steps cached, 2 built, in 1.3s, ~1.8s saved by the cache');
    expect(lines[2]).toBe('| Image | Step | Result | Reason | Time | Layer |');
    expect(cells(lines[3]!)).toHaveLength(6);
    const rows = lines.slice(4, 8);
    expect(rows.map((r) => cells(r).slice(0, 2).join('/'))).toEqual(['api/deps', 'api/src', 'web/html', 'web/assets']);
    expect(cells(rows[0]!)[2]).toContain('HIT');
    expect(cells(rows[1]!)[2]).toContain('MISS');
    expect(cells(rows[1]!)[3]).toBe('input services/api/main.js changed');
    expect(cells(rows[1]!)[4]).toBe('40ms');
    expect(cells(rows[1]!)[5]).toBe('1.2 kB');
    expect(md).toContain(`\`${D('a')}\``);
  });

  it('escapes pipes and flattens newlines in cells', () => {
    const r = failedResult();
    r.steps[1]!.reason = 'bad | worse\nsecond line';
    const md = markdownReport(r);
    const row = md.split('\n').find((l) => l.startsWith('| api | src |'))!;
    expect(row).toContain('bad \\| worse second line');
    const c = cells(row);
    expect(c).toHaveLength(6);
    expect(c[3]).toBe('bad \\| worse second line');
    expect(c[2]).toContain('FAILED');
    // every table row has the same number of cells
    for (const l of md.split('\n').filter((x) => x.startsWith('| ') && !x.startsWith('| Image | Tags'))) {
      if (l.includes('`sha256:')) continue;
      expect(cells(l), l).toHaveLength(6);
    }
  });

  it('adds an images table only when images were written', () => {
    expect(markdownReport(failedResult())).not.toContain('| Image | Tags | Manifest |');
    const md = markdownReport(result());
    expect(md).toContain('| Image | Tags | Manifest |');
    expect(md).toContain(`| api | api:latest, registry.example/api:1.0 | \`${D('a')}\` |`);
  });
});

describe('formatBytes', () => {
  it('formats edge values', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1)).toBe('1 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1024)).toBe('1.0 kB');
    expect(formatBytes(1536)).toBe('1.5 kB');
    expect(formatBytes(10 * 1024)).toBe('10 kB');
    expect(formatBytes(1024 * 1024)).toBe('1.0 MB');
    expect(formatBytes(5.5 * 1024 * 1024)).toBe('5.5 MB');
    expect(formatBytes(1024 ** 3)).toBe('1.0 GB');
    expect(formatBytes(1024 ** 4)).toBe('1.0 TB');
    expect(formatBytes(2048 * 1024 ** 4)).toBe('2048 TB');
  });

  it('never shows 1024 of a unit when the next unit exists', () => {
    expect(formatBytes(1024 * 1024 - 1)).toBe('1.0 MB');
    expect(formatBytes(1024 ** 3 - 1)).toBe('1.0 GB');
  });
});

describe('formatMs', () => {
  it('formats edge values', () => {
    expect(formatMs(0)).toBe('0ms');
    expect(formatMs(999)).toBe('999ms');
    expect(formatMs(1000)).toBe('1.0s');
    expect(formatMs(1250)).toBe('1.3s');
    expect(formatMs(59_000)).toBe('59.0s');
    expect(formatMs(60_000)).toBe('1m0s');
    expect(formatMs(61_000)).toBe('1m1s');
    expect(formatMs(125_000)).toBe('2m5s');
    expect(formatMs(3_600_000)).toBe('60m0s');
  });

  it('never shows 60 in the seconds place', () => {
    expect(formatMs(119_600)).toBe('2m0s');
    expect(formatMs(59_960)).toBe('1m0s');
  });
});
