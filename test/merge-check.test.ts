import { Readable } from 'node:stream';
import tar from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { checkMerge } from '../src/build/merge-check.js';
import { ContentStore } from '../src/cache/content-store.js';
import type { LayerRef } from '../src/cache/step-records.js';
import { parseBuildFile } from '../src/config/load.js';
import { MergeConflictError } from '../src/errors.js';
import { FILE, yaml } from './config-helpers.js';
import { useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

/** A layer of just these entries: `dir/` (or `dir/:700` for another mode), `file`, `.wh.name`. */
async function layer(store: ContentStore, names: string[]): Promise<LayerRef> {
  const pack = tar.pack();
  for (const spec of names) {
    const [name = '', mode = '755'] = spec.split(':');
    if (name.endsWith('/')) pack.entry({ name, type: 'directory', mode: parseInt(mode, 8) });
    else pack.entry({ name, type: 'file', mode: 0o644 }, 'x');
  }
  pack.finalize();
  const blob = await store.ingest(Readable.from(pack as unknown as AsyncIterable<Buffer>));
  return { digest: blob.digest, size: blob.size, diffId: blob.digest };
}

async function check(merge: string, layers: Record<string, string[]>, needs: Record<string, string[]> = {}) {
  const ids = Object.keys(layers);
  const steps = ids.map((id) => `{id: ${id}, run: x, needs: [${(needs[id] ?? []).join(', ')}]}`).join(', ');
  const spec = parseBuildFile(yaml`
    version: 1
    images:
      app:
        merge: ${merge}
        steps: [${steps}]
  `, FILE);
  const image = spec.images[0]!;
  const store = new ContentStore(await tmpDir());
  const refs = new Map<string, LayerRef>();
  for (const id of ids) refs.set(id, await layer(store, layers[id]!));
  return checkMerge(image, image.steps, async (id) => refs.get(id)!, store);
}

describe('checkMerge', () => {
  it('lets unordered steps change different paths, and share directories', async () => {
    expect(await check('fail', { a: ['etc/', 'etc/a'], b: ['etc/', 'etc/b', 'usr/'] })).toEqual([]);
  });

  it('fails naming both steps and the path when unordered steps write the same file', async () => {
    const err = await check('fail', { a: ['etc/', 'etc/conf'], b: ['etc/', 'etc/conf'] }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(MergeConflictError);
    expect((err as MergeConflictError).conflicts).toEqual([{ path: '/etc/conf', steps: ['a', 'b'], winner: 'b' }]);
    expect((err as Error).message).toContain('/etc/conf: changed by both `a` and `b`');
  });

  it('sees a deletion against a write below it, and an opaque directory against a write inside it', async () => {
    const err = (await check('fail', {
      a: ['etc/', '.wh.srv', 'opt/', 'opt/.wh..wh..opq'],
      b: ['srv/', 'srv/data', 'opt/', 'opt/tool'],
    }).catch((e: unknown) => e)) as MergeConflictError;
    expect(err.conflicts.map((c) => c.path)).toEqual(['/opt/tool', '/srv', '/srv/data']);
  });

  it('sees a directory whose mode one step changed and the other copied up unchanged', async () => {
    const err = (await check('fail', { a: ['srv/:700'], b: ['srv/', 'srv/x'] }).catch((e: unknown) => e)) as MergeConflictError;
    expect(err.conflicts.map((c) => c.path)).toEqual(['/srv']);
  });

  it('says nothing of steps that are ordered by needs, directly or not', async () => {
    expect(await check('fail', { a: ['f'], b: ['f'], c: ['f'] }, { b: ['a'], c: ['b'] })).toEqual([]);
  });

  it('under declared-order, reports the later-declared step as the winner', async () => {
    expect(await check('declared-order', { a: ['f'], b: ['g'], c: ['f'] })).toEqual([{ path: '/f', steps: ['a', 'c'], winner: 'c' }]);
  });
});
