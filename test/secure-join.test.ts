import { mkdir, mkdtemp, realpath, rm, symlink } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PathEscapeError } from '../src/errors.js';
import { cleanRelative, secureJoin } from '../src/util/secure-join.js';

let root: string;

beforeEach(async () => {
  root = await realpath(await mkdtemp(path.join(os.tmpdir(), 'layergraph-securejoin-')));
});

afterEach(async () => {
  await rm(root, { recursive: true, force: true });
});

describe('secureJoin', () => {
  it('joins plain paths', async () => {
    expect(await secureJoin(root, 'a/b/c')).toBe(path.join(root, 'a/b/c'));
    expect(await secureJoin(root, '')).toBe(root);
    expect(await secureJoin(root, '/')).toBe(root);
    expect(await secureJoin(root, './a//b/.')).toBe(path.join(root, 'a/b'));
  });

  it('never climbs above root with ..', async () => {
    expect(await secureJoin(root, '../../etc/passwd')).toBe(path.join(root, 'etc/passwd'));
    expect(await secureJoin(root, 'a/../../../b')).toBe(path.join(root, 'b'));
    expect(await secureJoin(root, '/../x')).toBe(path.join(root, 'x'));
  });

  it('resolves an absolute symlink in a parent relative to root', async () => {
    await symlink('/etc', path.join(root, 'evil'));
    expect(await secureJoin(root, 'evil/passwd')).toBe(path.join(root, 'etc/passwd'));
  });

  it('clamps a relative symlink that climbs out', async () => {
    await mkdir(path.join(root, 'd'));
    await symlink('../../../../outside', path.join(root, 'd/up'));
    expect(await secureJoin(root, 'd/up/file')).toBe(path.join(root, 'outside/file'));
  });

  it('does not follow the last component', async () => {
    await symlink('/etc/passwd', path.join(root, 'link'));
    expect(await secureJoin(root, 'link')).toBe(path.join(root, 'link'));
    expect(await secureJoin(root, 'link/')).toBe(path.join(root, 'link'));
  });

  it('applies .. after a resolved symlink, as the kernel would', async () => {
    await mkdir(path.join(root, 'd/real'), { recursive: true });
    await symlink('d/real', path.join(root, 'l'));
    expect(await secureJoin(root, 'l/../x')).toBe(path.join(root, 'd/x'));
  });

  it('follows chains of links', async () => {
    await mkdir(path.join(root, 'usr/lib'), { recursive: true });
    await symlink('usr/lib', path.join(root, 'lib'));
    await symlink('/lib', path.join(root, 'lib64'));
    expect(await secureJoin(root, 'lib64/libc.so')).toBe(path.join(root, 'usr/lib/libc.so'));
  });

  it('stops on symlink loops', async () => {
    await symlink('b', path.join(root, 'a'));
    await symlink('a', path.join(root, 'b'));
    await expect(secureJoin(root, 'a/x')).rejects.toMatchObject({ code: 'ELOOP' });
  });

  it('passes through missing components', async () => {
    expect(await secureJoin(root, 'no/such/../thing')).toBe(path.join(root, 'no/thing'));
  });
});

describe('cleanRelative', () => {
  it('normalises lexically', () => {
    expect(cleanRelative('a/./b//c/')).toBe('a/b/c');
    expect(cleanRelative('/a/b')).toBe('a/b');
    expect(cleanRelative('./')).toBe('');
    expect(cleanRelative('a/b/../c')).toBe('a/c');
    expect(cleanRelative('a/..')).toBe('');
  });

  it('throws PathEscapeError when .. leaves the root', () => {
    expect(() => cleanRelative('..')).toThrow(PathEscapeError);
    expect(() => cleanRelative('a/../../b')).toThrow(PathEscapeError);
    expect(() => cleanRelative('/../etc')).toThrow(PathEscapeError);
  });
});
