/**
 * The sweep of temp siblings (util/temp-files.ts) beside a user-chosen path:
 * only names of exactly the shape tempSibling gives, for that target, of a
 * writer that is gone, are removed; a user's own dot-files stay.
 */
import { spawnSync } from 'node:child_process';
import { readdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { tempSibling } from '../src/util/fs-atomic.js';
import { thisHost } from '../src/util/owner-tag.js';
import { sweepTempFiles } from '../src/util/temp-files.js';
import { useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

describe('sweepTempFiles', () => {
  it("removes a dead writer's temp siblings of the target only, and never a user's files", async () => {
    const dir = await tmpDir();
    const dead = spawnSync(process.execPath, ['-e', '0']).pid!;
    const mine = path.basename(tempSibling(path.join(dir, 'image.tar')));
    const deadOne = mine.replace(`.${process.pid}-`, `.${dead}-`);
    const keep = [
      '.tmp-report.2023-final.txt', // a user's file, of the shape the old prefix swept
      `.tmp-${thisHost()}.${dead}-image.tar-0123456789ab`, // the old prefix
      deadOne.replace('image.tar', 'other.tar'), // another target's (another writer may own that)
      `${deadOne}x`, // not the shape
      mine, // a live writer's (this process)
      'image.tar',
    ];
    for (const name of [...keep, deadOne]) await writeFile(path.join(dir, name), 'x');
    await sweepTempFiles(dir, 'image.tar');
    expect((await readdir(dir)).sort()).toEqual([...keep].sort());
  });
});
