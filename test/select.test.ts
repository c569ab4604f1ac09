import { existsSync } from 'node:fs';
import { realpath } from 'node:fs/promises';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { selectSources, type Selection, type SourceRef } from '../src/context/select.js';
import { ConfigError, type SourcePos } from '../src/errors.js';
import { makeTree, useTmpDirs } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

const pos = (line: number, col = 1): SourcePos => ({ file: 'build.yaml', line, col });
const src = (spec: string, line = 1): SourceRef => ({ spec, pos: pos(line, 9) });

/** A context inside a work dir, so `../outside` is a real directory next to it. */
async function setup(): Promise<{ work: string; ctx: string; realCtx: string }> {
  const work = await tmpDir('lg-select-');
  const ctx = path.join(work, 'ctx');
  await makeTree(work, {
    outside: { dir: { 'secret.txt': 'outside secret\n', sub: { dir: { 'deep.txt': 'deep\n' } } } },
    ctx: {
      dir: {
        'README.md': '# readme\n',
        'notes.txt': 'notes\n',
        web: {
          dir: {
            'index.html': '<html>index</html>',
            'about.html': '<html>about</html>',
            'style.css': 'body{}',
            'zeta.html': '<html>z</html>',
          },
        },
        services: {
          dir: {
            api: {
              dir: {
                'main.js': 'main()\n',
                'package.json': '{}\n',
                lib: { dir: { 'b.js': 'b\n', 'a.js': 'a\n' } },
                'current.js': { link: 'main.js' },
                'up': { link: '../../notes.txt' },
              },
            },
          },
        },
        'alias.txt': { link: 'notes.txt' },
        'webalias': { link: 'web' },
      },
    },
  });
  return { work, ctx, realCtx: await realpath(ctx) };
}

function catchConfigError(p: Promise<unknown>): Promise<ConfigError> {
  return p.then(
    () => {
      throw new Error('expected a ConfigError, the call succeeded');
    },
    (err: unknown) => {
      expect(err).toBeInstanceOf(ConfigError);
      return err as ConfigError;
    },
  );
}

const rels = (s: Selection): string[] => s.entries.map((e) => e.rel);

describe('selectSources in a build context', () => {
  it('selects a single file', async () => {
    const { ctx, realCtx } = await setup();
    const [sel, ...rest] = await selectSources(ctx, [src('notes.txt')], 'context');
    expect(rest).toEqual([]);
    expect(sel!.source).toBe('notes.txt');
    expect(sel!.kind).toBe('file');
    expect(sel!.entries).toHaveLength(1);
    expect(sel!.entries[0]!.rel).toBe('');
    expect(sel!.entries[0]!.abs).toBe(path.join(realCtx, 'notes.txt'));
    expect(sel!.entries[0]!.stat.isFile()).toBe(true);
    expect(sel!.stat.size).toBe('notes\n'.length);
  });

  it('normalises ./, leading / and trailing / in a source', async () => {
    const { ctx } = await setup();
    const sels = await selectSources(ctx, [src('./notes.txt'), src('/web/'), src('services//api/./lib/')], 'context');
    expect(sels.map((s) => [s.source, s.kind])).toEqual([
      ['notes.txt', 'file'],
      ['web', 'dir'],
      ['services/api/lib', 'dir'],
    ]);
  });

  it('selects a directory: every descendant, sorted, links kept as links', async () => {
    const { ctx, realCtx } = await setup();
    const [sel] = await selectSources(ctx, [src('services/api')], 'context');
    expect(sel!.kind).toBe('dir');
    expect(sel!.source).toBe('services/api');
    expect(sel!.stat.isDirectory()).toBe(true);
    expect(rels(sel!)).toEqual(['current.js', 'lib', 'lib/a.js', 'lib/b.js', 'main.js', 'package.json', 'up']);
    const byRel = new Map(sel!.entries.map((e) => [e.rel, e]));
    const link = byRel.get('current.js')!;
    expect(link.stat.isSymbolicLink()).toBe(true);
    expect(link.linkTarget).toBe('main.js');
    expect(link.abs).toBe(path.join(realCtx, 'services/api/current.js'));
    // a link inside a directory is kept as written, even when it points up and out of the directory
    expect(byRel.get('up')!.linkTarget).toBe('../../notes.txt');
    expect(byRel.get('lib')!.stat.isDirectory()).toBe(true);
    expect(byRel.get('lib')!.linkTarget).toBeUndefined();
    expect(byRel.get('main.js')!.linkTarget).toBeUndefined();
  });

  it('does not follow a directory symlink met inside a directory', async () => {
    const { ctx } = await setup();
    const [sel] = await selectSources(ctx, [src('.')], 'context');
    const webalias = sel!.entries.find((e) => e.rel === 'webalias')!;
    expect(webalias.linkTarget).toBe('web');
    expect(rels(sel!).filter((r) => r.startsWith('webalias/'))).toEqual([]);
    // the whole context, sorted depth first
    expect(rels(sel!)).toEqual([
      'README.md',
      'alias.txt',
      'notes.txt',
      'services',
      'services/api',
      'services/api/current.js',
      'services/api/lib',
      'services/api/lib/a.js',
      'services/api/lib/b.js',
      'services/api/main.js',
      'services/api/package.json',
      'services/api/up',
      'web',
      'web/about.html',
      'web/index.html',
      'web/style.css',
      'web/zeta.html',
      'webalias',
    ]);
  });

  it('expands a glob to its matches, sorted', async () => {
    const { ctx } = await setup();
    const sels = await selectSources(ctx, [src('web/*.html')], 'context');
    expect(sels.map((s) => s.source)).toEqual(['web/about.html', 'web/index.html', 'web/zeta.html']);
    expect(sels.every((s) => s.kind === 'file')).toBe(true);
  });

  it('keeps the order of several sources', async () => {
    const { ctx } = await setup();
    const sels = await selectSources(ctx, [src('web/style.css'), src('README.md'), src('services/*')], 'context');
    expect(sels.map((s) => `${s.source}:${s.kind}`)).toEqual(['web/style.css:file', 'README.md:file', 'services/api:dir']);
  });

  it('rejects a glob that matches nothing, at the position of that source', async () => {
    const { ctx } = await setup();
    const err = await catchConfigError(selectSources(ctx, [src('web/*.html', 3), src('web/*.png', 4)], 'context'));
    expect(err.issues).toHaveLength(1);
    expect(err.issues[0]!.message).toContain('matches nothing');
    expect(err.issues[0]!.message).toContain('web/*.png');
    expect(err.issues[0]!.pos).toEqual(pos(4, 9));
  });

  it('rejects a missing path and reports every bad source at once', async () => {
    const { ctx } = await setup();
    const err = await catchConfigError(
      selectSources(ctx, [src('nope.txt', 5), src('notes.txt', 6), src('web/missing/', 7)], 'context'),
    );
    expect(err.issues.map((i) => i.pos.line)).toEqual([5, 7]);
    for (const issue of err.issues) expect(issue.message).toContain('does not exist');
    expect(err.issues[0]!.message).toContain('nope.txt');
    expect(err.message).toContain('build.yaml:5:9:');
  });

  it('rejects a path below a regular file as missing, not with a raw ENOTDIR', async () => {
    const { ctx } = await setup();
    const err = await catchConfigError(selectSources(ctx, [src('notes.txt/inner', 3)], 'context'));
    expect(err.issues[0]!.message).toContain('does not exist');
    expect(err.issues[0]!.pos).toEqual(pos(3, 9));
  });

  it('rejects a dangling symlink as missing', async () => {
    const { ctx } = await setup();
    await makeTree(ctx, { dangling: { link: 'no-such-file' } });
    const err = await catchConfigError(selectSources(ctx, [src('dangling')], 'context'));
    expect(err.issues[0]!.message).toContain('does not exist');
  });

  it('follows a source that is a symlink to a file inside the context', async () => {
    const { ctx, realCtx } = await setup();
    const [sel] = await selectSources(ctx, [src('alias.txt')], 'context');
    expect(sel!.kind).toBe('file');
    expect(sel!.source).toBe('alias.txt');
    expect(sel!.entries[0]!.abs).toBe(path.join(realCtx, 'notes.txt'));
    expect(sel!.entries[0]!.stat.isFile()).toBe(true);
    expect(sel!.entries[0]!.linkTarget).toBeUndefined();
  });

  it('follows a source that is a symlink to a directory inside the context', async () => {
    const { ctx } = await setup();
    const [sel] = await selectSources(ctx, [src('webalias')], 'context');
    expect(sel!.kind).toBe('dir');
    expect(rels(sel!)).toEqual(['about.html', 'index.html', 'style.css', 'zeta.html']);
  });

  it.runIf(existsSync('/etc/hostname'))('rejects a source symlink to an absolute path outside the context', async () => {
    const { ctx } = await setup();
    await makeTree(ctx, { link: { link: '/etc/hostname' } });
    const err = await catchConfigError(selectSources(ctx, [src('link', 12)], 'context'));
    expect(err.issues).toHaveLength(1);
    expect(err.issues[0]!.message).toContain('leaves the build context');
    expect(err.issues[0]!.pos).toEqual(pos(12, 9));
  });

  it('rejects a source symlink to a file outside the context', async () => {
    const { ctx } = await setup();
    await makeTree(ctx, { leak: { link: '../outside/secret.txt' } });
    const err = await catchConfigError(selectSources(ctx, [src('leak')], 'context'));
    expect(err.issues[0]!.message).toContain('leaves the build context');
  });

  it('rejects a directory symlink that leads outside', async () => {
    const { ctx } = await setup();
    await makeTree(ctx, { dir: { link: '../outside' } });
    const err = await catchConfigError(selectSources(ctx, [src('dir', 2)], 'context'));
    expect(err.issues[0]!.message).toContain('leaves the build context');
    expect(err.issues[0]!.pos).toEqual(pos(2, 9));
  });

  it('rejects a path through a parent directory symlink that leads outside', async () => {
    const { ctx } = await setup();
    await makeTree(ctx, { dir: { link: '../outside' } });
    for (const spec of ['dir/secret.txt', 'dir/sub', 'dir/sub/deep.txt']) {
      const err = await catchConfigError(selectSources(ctx, [src(spec)], 'context'));
      expect(err.issues[0]!.message, spec).toContain('leaves the build context');
    }
  });

  it('rejects a path through a nested parent symlink that leads outside', async () => {
    const { ctx } = await setup();
    await makeTree(path.join(ctx, 'services'), { escape: { link: '../../outside/sub' } });
    const err = await catchConfigError(selectSources(ctx, [src('services/escape/deep.txt')], 'context'));
    expect(err.issues[0]!.message).toContain('leaves the build context');
  });

  it('matches symlinks with a glob and follows them, like a plain source', async () => {
    // Docker matches a glob against directory entries, links included, then follows each match.
    const { ctx, realCtx } = await setup();
    await makeTree(path.join(ctx, 'web'), { 'home.html': { link: 'index.html' } });
    const sels = await selectSources(ctx, [src('web/*.html')], 'context');
    expect(sels.map((s) => s.source)).toEqual(['web/about.html', 'web/home.html', 'web/index.html', 'web/zeta.html']);
    const home = sels.find((s) => s.source === 'web/home.html')!;
    expect(home.kind).toBe('file');
    expect(home.entries[0]!.abs).toBe(path.join(realCtx, 'web/index.html'));
  });

  it('rejects a glob whose match leads outside through a symlink', async () => {
    const { ctx } = await setup();
    await makeTree(path.join(ctx, 'web'), { 'zz.html': { link: '../../outside/secret.txt' } });
    const err = await catchConfigError(selectSources(ctx, [src('web/*.html')], 'context'));
    expect(err.issues[0]!.message).toContain('leaves the build context');
  });

  it('rejects .. that climbs out of the context', async () => {
    const { ctx } = await setup();
    const err = await catchConfigError(selectSources(ctx, [src('../outside/secret.txt')], 'context'));
    expect(err.issues[0]!.message).toContain('leaves the build context');
  });

  it('allows .. that stays inside the context', async () => {
    const { ctx } = await setup();
    const [sel] = await selectSources(ctx, [src('web/../notes.txt')], 'context');
    expect(sel!.source).toBe('notes.txt');
    expect(sel!.kind).toBe('file');
  });
});

describe("selectSources in an image root ('image')", () => {
  async function imageRoot(): Promise<{ root: string; realRoot: string }> {
    const root = await tmpDir('lg-image-');
    await makeTree(root, {
      a: {
        dir: {
          v1: { dir: { 'app.js': 'v1' } },
          v2: { dir: { 'app.js': 'v2', 'extra.js': 'x' } },
          current: { link: '/a/v2' },
          rel: { link: 'v1' },
          up: { link: '../../../..' },
          absfile: { link: '/etc/hostname' },
        },
      },
      etc: { dir: { hostname: 'image-host\n' } },
    });
    return { root, realRoot: await realpath(root) };
  }

  it('resolves an absolute symlink against the image root', async () => {
    const { root, realRoot } = await imageRoot();
    const [sel] = await selectSources(root, [src('a/current')], 'image');
    expect(sel!.kind).toBe('dir');
    expect(rels(sel!)).toEqual(['app.js', 'extra.js']);
    expect(sel!.entries[0]!.abs).toBe(path.join(realRoot, 'a/v2/app.js'));
  });

  it('resolves an absolute symlink to a file against the image root, not the host', async () => {
    const { root, realRoot } = await imageRoot();
    const [sel] = await selectSources(root, [src('a/absfile')], 'image');
    expect(sel!.kind).toBe('file');
    expect(sel!.entries[0]!.abs).toBe(path.join(realRoot, 'etc/hostname'));
  });

  it('follows links in parent components, relative and absolute', async () => {
    const { root, realRoot } = await imageRoot();
    const sels = await selectSources(root, [src('/a/current/app.js'), src('a/rel/app.js')], 'image');
    expect(sels.map((s) => s.entries[0]!.abs)).toEqual([
      path.join(realRoot, 'a/v2/app.js'),
      path.join(realRoot, 'a/v1/app.js'),
    ]);
  });

  it('cannot climb above the root with ..', async () => {
    const { root, realRoot } = await imageRoot();
    const sels = await selectSources(root, [src('../../../etc/hostname'), src('a/up/etc/hostname'), src('a/up')], 'image');
    expect(sels[0]!.entries[0]!.abs).toBe(path.join(realRoot, 'etc/hostname'));
    expect(sels[1]!.entries[0]!.abs).toBe(path.join(realRoot, 'etc/hostname'));
    expect(sels[2]!.kind).toBe('dir');
    expect(rels(sels[2]!)).toContain('etc/hostname');
    expect(rels(sels[2]!)).toContain('a/v1/app.js');
  });

  it('expands a glob through an absolute symlink inside the image, not on the host', async () => {
    const { root, realRoot } = await imageRoot();
    const sels = await selectSources(root, [src('a/current/*.js')], 'image');
    expect(sels.map((s) => s.source)).toEqual(['a/current/app.js', 'a/current/extra.js']);
    expect(sels.map((s) => s.entries[0]!.abs)).toEqual([
      path.join(realRoot, 'a/v2/app.js'),
      path.join(realRoot, 'a/v2/extra.js'),
    ]);
  });

  it('reports a missing path in the source image', async () => {
    const { root } = await imageRoot();
    const err = await catchConfigError(selectSources(root, [src('a/v3/app.js', 8)], 'image'));
    expect(err.issues[0]!.message).toContain('does not exist');
    expect(err.issues[0]!.message).toContain('source image');
    expect(err.issues[0]!.pos).toEqual(pos(8, 9));
  });

  it('stops a symlink loop', async () => {
    const { root } = await imageRoot();
    await makeTree(root, { loop1: { link: 'loop2' }, loop2: { link: 'loop1' } });
    const err = await catchConfigError(selectSources(root, [src('loop1')], 'image'));
    expect(err.issues[0]!.message).toContain('symbolic links');
  });
});
