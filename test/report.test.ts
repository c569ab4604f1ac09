import { describe, expect, it } from 'vitest';
import type { StepResult } from '../src/build/events.js';
import type { BuildResult } from '../src/build/run-build.js';
import { formatBytes, formatMs } from '../src/report/format.js';
import { dotGraph, mermaidGraph } from '../src/report/graph-view.js';
import { junitReport } from '../src/report/junit.js';
import { jsonReport, markdownReport, summarize, summaryLine, textReport } from '../src/report/summary.js';
import { findAll, parseXml } from './helpers/xml.js';

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
  /** The lines of the section under `#### <image>`, up to the next heading or graph. */
  const section = (md: string, image: string): string[] => {
    const lines = md.split('\n');
    const start = lines.findIndex((l) => l.startsWith(`#### ${image}:`));
    expect(start, `no section for ${image}`).toBeGreaterThan(0);
    const end = lines.findIndex((l, i) => i > start && (l.startsWith('#### ') || l.startsWith('```')));
    return lines.slice(start, end === -1 ? undefined : end);
  };

  it('is a heading, then a table per image with a row per step', () => {
    const md = markdownReport(result());
    const lines = md.trimEnd().split('\n');
    expect(lines[0]).toBe('### layergraph: 2/4 steps cached, 2 built, in 1.3s, ~1.8s saved by the cache');
    expect(md.match(/^\| Step \| Result \| Reason \| Time \| Layer \|$/gm)).toHaveLength(2);
    const api = section(md, 'api');
    expect(api[0]).toBe('#### api: 1/2 cached');
    expect(api).toContain(`\`${D('a')}\` · \`api:latest\`, \`registry.example/api:1.0\``);
    const apiRows = api.filter((l) => l.startsWith('| ') && !l.startsWith('| Step') && !l.startsWith('| ---'));
    expect(apiRows.map((r) => cells(r)[0])).toEqual(['deps', 'src']);
    expect(cells(apiRows[0]!)[1]).toContain('HIT');
    expect(cells(apiRows[0]!)[2]).toBe('cached, ~1.5s saved');
    expect(cells(apiRows[1]!)).toEqual(['src', '🔨 MISS', 'input services/api/main.js changed', '40ms', '1.2 kB']);
    const web = section(md, 'web');
    expect(web[0]).toBe('#### web: 1/2 cached');
    const webRows = web.filter((l) => l.startsWith('| ') && !l.startsWith('| Step') && !l.startsWith('| ---'));
    expect(webRows.map((r) => cells(r)[0])).toEqual(['html', 'assets']);
    expect(cells(webRows[0]!)[4]).toBe('–');
  });

  it('keeps the table one line per step: pipes escaped, a failure\'s whole message below the table', () => {
    const r = failedResult();
    r.steps[1]!.reason = 'bad | worse\n  last lines of output:\n  | ```boom```';
    const md = markdownReport(r);
    const row = md.split('\n').find((l) => l.startsWith('| src |'))!;
    expect(cells(row)).toEqual(['src', '❌ FAILED', 'bad \\| worse', '3ms', '–']);
    for (const l of md.split('\n').filter((x) => x.startsWith('| ') && !x.startsWith('| ---'))) expect(cells(l), l).toHaveLength(5);
    // the whole message in a fence longer than any backtick run inside it
    expect(md).toContain('<details><summary>api/src failed</summary>\n\n````text\nbad | worse\n  last lines of output:\n  | ```boom```\n````\n\n</details>');
    expect(md).not.toContain(`\`${D('a')}\``); // no images were written
  });

  it('draws the steps as a Mermaid graph when given the edges, coloured by outcome', () => {
    const edges = [
      { from: 'api/deps', to: 'api/src', kind: 'needs' as const },
      { from: 'api/src', to: 'web/assets', kind: 'copy-from' as const },
    ];
    const md = markdownReport(result(), edges);
    const graph = /```mermaid\n([\s\S]*?)\n```/.exec(md)?.[1];
    expect(graph).toBe(mermaidGraph(result().steps, edges).trimEnd());
    expect(markdownReport(result())).not.toContain('```mermaid');
  });

  it('says where a hit came from when it was not this machine, and the bytes moved', () => {
    const r = result();
    r.steps[0]!.cacheSource = 'registry';
    r.transfer = { pulledBytes: 2048, pushedBytes: 0 };
    const md = markdownReport(r);
    expect(md).toContain('| deps | ✅ HIT | cached from registry, ~1.5s saved |');
    expect(md.split('\n')[0]).toBe('### layergraph: 2/4 steps cached, 2 built, in 1.3s, ~1.8s saved by the cache, 2.0 kB pulled');
    const json = JSON.parse(jsonReport(r)) as { steps: Array<Record<string, unknown>>; summary: Record<string, unknown> };
    expect(json.steps[0]!.cacheSource).toBe('registry');
    expect(json.steps[1]).not.toHaveProperty('cacheSource');
    expect(json.summary).toMatchObject({ pulledBytes: 2048, pushedBytes: 0 });
  });
});

describe('mermaidGraph', () => {
  const steps = [
    { image: 'base.img', step: 'os', status: 'hit' as const },
    { image: 'base.img', step: 'tools', status: 'miss' as const },
    { image: 'app', step: 'src', status: 'failed' as const },
    { image: 'app', step: 'take', status: 'skipped' as const },
    { image: 'app', step: 'x"<y>', status: 'unknown' as const },
  ];
  const edges = [
    { from: 'base.img/os', to: 'base.img/tools', kind: 'needs' as const },
    { from: 'base.img/tools', to: 'app/src', kind: 'base' as const },
    { from: 'base.img/tools', to: 'app/take', kind: 'copy-from' as const },
  ];

  it('puts each image in a subgraph, draws each kind of edge, and gives every status a class', () => {
    expect(mermaidGraph(steps, edges)).toBe(
      [
        'graph TD',
        '  subgraph img0["base.img"]',
        '    s0["os · hit"]',
        '    s1["tools · miss"]',
        '  end',
        '  subgraph img1["app"]',
        '    s2["src · failed"]',
        '    s3["take · skipped"]',
        '    s4["x#34;#60;y#62; · unknown"]',
        '  end',
        '  s0 --> s1',
        '  s1 ==> s2',
        '  s1 -. copy .-> s3',
        '  classDef hit fill:#dafbe1,stroke:#1a7f37,color:#1f2328',
        '  class s0 hit',
        '  classDef miss fill:#fff8c5,stroke:#9a6700,color:#1f2328',
        '  class s1 miss',
        '  classDef failed fill:#ffebe9,stroke:#cf222e,color:#1f2328',
        '  class s2 failed',
        '  classDef skipped fill:#f6f8fa,stroke:#6e7781,color:#1f2328,stroke-dasharray:4 3',
        '  class s3 skipped',
        '  classDef unknown fill:#ddf4ff,stroke:#0969da,color:#1f2328,stroke-dasharray:4 3',
        '  class s4 unknown',
        '',
      ].join('\n'),
    );
  });

  it('leaves out edges to steps it was not given', () => {
    const g = mermaidGraph(steps.slice(0, 2), edges);
    expect(g).toContain('s0 --> s1');
    expect(g).not.toMatch(/s[2-4]/);
  });
});

describe('dotGraph', () => {
  it('is a digraph with a cluster per image, quoted ids, and styled edges', () => {
    const dot = dotGraph(
      [
        { image: 'a', step: 'one', status: 'hit' },
        { image: 'b', step: 'two"q', status: 'unknown' },
      ],
      [{ from: 'a/one', to: 'b/two"q', kind: 'copy-from' }],
    );
    expect(dot.startsWith('digraph layergraph {\n')).toBe(true);
    expect(dot.trimEnd().endsWith('}')).toBe(true);
    expect(dot).toContain('subgraph cluster_0 {\n    label="a";');
    expect(dot).toContain('"a/one" [label="one\\nhit", fillcolor="#dafbe1", color="#1a7f37"];');
    expect(dot).toContain('"b/two\\"q" [label="two\\"q\\nunknown", fillcolor="#ddf4ff", color="#0969da", style="rounded,filled,dashed"];');
    expect(dot).toContain('"a/one" -> "b/two\\"q" [style=dashed, label="copy"];');
  });
});

describe('junitReport', () => {
  it('is well-formed XML with a suite per image and a passing case per hit or miss', () => {
    const doc = parseXml(junitReport(result()));
    expect(doc.name).toBe('testsuites');
    expect(doc.attrs).toMatchObject({ tests: '4', failures: '0', skipped: '0', time: '1.300' });
    const suites = findAll(doc, 'testsuite');
    expect(suites.map((s) => [s.attrs.name, s.attrs.tests, s.attrs.time])).toEqual([
      ['api', '2', '0.045'],
      ['web', '2', '1.201'],
    ]);
    const cases = findAll(doc, 'testcase');
    expect(cases.map((c) => [c.attrs.classname, c.attrs.name, c.attrs.time])).toEqual([
      ['api', 'deps', '0.005'],
      ['api', 'src', '0.040'],
      ['web', 'html', '1.200'],
      ['web', 'assets', '0.001'],
    ]);
    for (const c of cases) expect(c.children.map((x) => x.name)).toEqual(['system-out']);
    expect(cases[0]!.children[0]!.text).toBe(`HIT: cached, ~1.5s saved\nkey 1111111111111111\nlayer ${D('1')} (2.0 kB)`);
    expect(cases[1]!.children[0]!.text).toMatch(/^MISS: input services\/api\/main\.js changed\n/);
    expect(cases[2]!.children[0]!.text).toContain('no layer');
  });

  it('makes a failed step a failure (first line as message, all of it as body) and a skipped one skipped', () => {
    const r = failedResult();
    const whole = 'build.yaml:9:9: api/src: command exited with 2\n  last lines of output:\n  | <oops> & "quotes"\n  | \x1b[31mred\x1b[0m \x07bell';
    r.steps[1]!.reason = whole;
    const doc = parseXml(junitReport(r));
    expect(doc.attrs).toMatchObject({ tests: '3', failures: '1', skipped: '1' });
    const [hit, failed, skipped] = findAll(doc, 'testcase');
    expect(hit!.children.map((x) => x.name)).toEqual(['system-out']);
    const failure = failed!.children[0]!;
    expect(failure.name).toBe('failure');
    expect(failure.attrs.message).toBe('build.yaml:9:9: api/src: command exited with 2');
    // colour codes dropped, other control characters made visible, markup intact
    expect(failure.text).toBe('build.yaml:9:9: api/src: command exited with 2\n  last lines of output:\n  | <oops> & "quotes"\n  | red \ufffdbell');
    expect(skipped!.children).toEqual([{ name: 'skipped', attrs: { message: 'api/src failed' }, children: [], text: '' }]);
    expect(findAll(doc, 'testsuite')[0]!.attrs).toMatchObject({ tests: '3', failures: '1', skipped: '1' });
  });

  it('keeps line breaks and markup in attributes', () => {
    const r = failedResult();
    r.steps[2]!.reason = 'first "line" <a&b>\nsecond\ttab';
    const skipped = findAll(parseXml(junitReport(r)), 'skipped')[0]!;
    expect(skipped.attrs.message).toBe('first "line" <a&b>\nsecond\ttab');
  });

  it('reports a build that failed after its steps passed as a failed case of its own', () => {
    const r = result();
    r.error = new Error('image app: steps with no order between them change the same path:\n  /x');
    const doc = parseXml(junitReport(r));
    expect(doc.attrs).toMatchObject({ tests: '5', failures: '1' });
    const build = findAll(doc, 'testsuite').find((s) => s.attrs.name === 'layergraph')!;
    expect(build.children[0]!.attrs).toMatchObject({ classname: 'layergraph', name: 'build' });
    expect(build.children[0]!.children[0]!.attrs.message).toBe('image app: steps with no order between them change the same path:');
    // a failed step already says why the build failed: no extra case then
    expect(findAll(parseXml(junitReport(failedResult())), 'testcase')).toHaveLength(3);
  });

  it('holds names that need escaping', () => {
    const r = result();
    r.steps[0]!.image = 'a&b';
    r.steps[0]!.step = 'x"y';
    const doc = parseXml(junitReport(r));
    expect(findAll(doc, 'testsuite')[0]!.attrs.name).toBe('a&b');
    expect(findAll(doc, 'testcase')[0]!.attrs).toMatchObject({ classname: 'a&b', name: 'x"y' });
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
