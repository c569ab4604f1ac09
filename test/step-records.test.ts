import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import type { KeyMaterial } from '../src/cache/step-key.js';
import { StepRecords, type StepRecord } from '../src/cache/step-records.js';
import { listAll, useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

function material(hash: string): KeyMaterial {
  return {
    kind: 'layergraph.copy.v1',
    definition: { sources: ['services/api/'], to: '/app/' },
    inputs: [{ path: 'services/api/main.js', type: 'file', mode: 0o644, size: 3, hash }],
    parent: 'scratch',
  };
}

function record(key: string, image = 'api', step = 'src', over: Partial<StepRecord> = {}): StepRecord {
  return {
    recordVersion: 1,
    key,
    image,
    step,
    material: material(key),
    layer: { digest: `sha256:${'a'.repeat(64)}`, diffId: `sha256:${'b'.repeat(64)}`, size: 1234 },
    buildMs: 42,
    ...over,
  };
}

async function tempLeftovers(root: string): Promise<string[]> {
  return (await listAll(root)).filter((p) => path.basename(p).startsWith('.layergraph-tmp-'));
}

describe('StepRecords', () => {
  it('round-trips a record by key', async () => {
    const root = await tmpDir();
    const records = new StepRecords(root);
    const r = record('1111111111111111');
    await records.put(r);
    expect(await records.get('1111111111111111')).toEqual(r);
    expect(await readdir(path.join(root, 'records'))).toEqual(['1111111111111111.json']);
    expect(await tempLeftovers(root)).toEqual([]);
  });

  it('round-trips a record with no layer', async () => {
    const records = new StepRecords(await tmpDir());
    const r = record('2222222222222222', 'api', 'empty', { layer: null, buildMs: 0 });
    await records.put(r);
    expect(await records.get(r.key)).toEqual(r);
  });

  it('returns undefined for a key it never stored, even before anything is written', async () => {
    const records = new StepRecords(await tmpDir());
    expect(await records.get('0000000000000000')).toBeUndefined();
    expect(await records.lastFor('api', 'src')).toBeUndefined();
  });

  it('remembers the latest key per image/step', async () => {
    const root = await tmpDir();
    const records = new StepRecords(root);
    const first = record('1111111111111111', 'api', 'src');
    const second = record('2222222222222222', 'api', 'src');
    const other = record('3333333333333333', 'api', 'deps');
    const otherImage = record('4444444444444444', 'web', 'src');
    await records.put(first);
    await records.put(other);
    await records.put(otherImage);
    expect(await records.lastFor('api', 'src')).toEqual(first);
    await records.put(second);
    expect(await records.lastFor('api', 'src')).toEqual(second);
    expect(await records.lastFor('api', 'deps')).toEqual(other);
    expect(await records.lastFor('web', 'src')).toEqual(otherImage);
    expect(await records.lastFor('web', 'deps')).toBeUndefined();
    // the older record is still there under its own key
    expect(await records.get(first.key)).toEqual(first);
    expect(await tempLeftovers(root)).toEqual([]);
  });

  it('does not confuse image/step pairs that join to the same text', async () => {
    const records = new StepRecords(await tmpDir());
    await records.put(record('1111111111111111', 'a/b', 'c'));
    await records.put(record('2222222222222222', 'a', 'b/c'));
    expect((await records.lastFor('a/b', 'c'))?.key).toBe('1111111111111111');
    expect((await records.lastFor('a', 'b/c'))?.key).toBe('2222222222222222');
  });

  it('removes a record; lastFor then finds nothing', async () => {
    const root = await tmpDir();
    const records = new StepRecords(root);
    const r = record('1111111111111111');
    await records.put(r);
    await records.remove(r.key);
    expect(await records.get(r.key)).toBeUndefined();
    expect(await records.lastFor('api', 'src')).toBeUndefined();
    await records.remove(r.key); // twice is fine
    await records.remove('ffffffffffffffff'); // never stored is fine
  });

  it('reads a corrupt record as absent', async () => {
    const root = await tmpDir();
    const records = new StepRecords(root);
    const r = record('1111111111111111');
    await records.put(r);
    await writeFile(path.join(root, 'records', `${r.key}.json`), '{"recordVersion":1,"key":"1111');
    expect(await records.get(r.key)).toBeUndefined();
    expect(await records.lastFor('api', 'src')).toBeUndefined();
  });

  it('reads a corrupt name entry as absent', async () => {
    const root = await tmpDir();
    const records = new StepRecords(root);
    await records.put(record('1111111111111111'));
    const names = await readdir(path.join(root, 'names'));
    expect(names).toHaveLength(1);
    await writeFile(path.join(root, 'names', names[0]!), 'not json');
    expect(await records.lastFor('api', 'src')).toBeUndefined();
    expect(await records.get('1111111111111111')).toBeDefined();
  });

  it('writes many records concurrently without leaving temp files', async () => {
    const root = await tmpDir();
    const records = new StepRecords(root);
    const all = Array.from({ length: 20 }, (_, i) => record(i.toString(16).padStart(16, '0'), 'api', `s${i % 5}`));
    await Promise.all(all.map((r) => records.put(r)));
    for (const r of all) expect(await records.get(r.key)).toEqual(r);
    expect((await readdir(path.join(root, 'records'))).length).toBe(20);
    expect((await readdir(path.join(root, 'names'))).length).toBe(5);
    expect(await tempLeftovers(root)).toEqual([]);
  });
});
