/**
 * Hostile build contexts, end to end through the CLI (`validate` and `run`,
 * as the current user: copy steps need no root). A copy source may not
 * reach outside the context — not through a symlink (relative, absolute, to
 * a parent, to `/`), not with `..` or an absolute path, not through a glob,
 * not past `.dockerignore` — and each refusal exits 2 naming the image, the
 * step and the source at the source's FILE:LINE:COL. What a copied directory
 * holds is copied as it is: a link inside it stays a link and is never
 * followed. In an image (`copy --from`), links resolve against the image's
 * own root. Nothing from outside ever reaches the cache or the output.
 */
import { execFileSync } from 'node:child_process';
import { readdir, readFile, realpath, symlink } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { gunzipSync } from 'node:zlib';
import { extract } from 'tar-stream';
import { describe, expect, it } from 'vitest';
import { displayPath } from '../src/config/positions.js';
import { runCli, type CliResult } from './helpers/cli.js';
import { makeTree, useTmpDirs, type TreeSpec } from './helpers/tmp.js';

const tmpDir = useTmpDirs();

/** In every file outside the context: if it shows up in a layer, in the cache or in the output, something escaped. */
const SECRET = 'SECRET-FROM-OUTSIDE-THE-CONTEXT';

interface World {
  root: string;
  /** The context: the build file's folder. */
  ctx: string;
  file: string;
  outside: string;
  cache: string;
  out: string;
}

/** A context with `build.yaml` and `tree`, next to a folder `outside` that holds the secret. */
async function world(buildYaml: string, tree: TreeSpec = {}): Promise<World> {
  const root = await realpath(await tmpDir('lg-attack-'));
  const outside = path.join(root, 'outside');
  await makeTree(outside, { 'secret.txt': `${SECRET}\n`, sub: { dir: { 'deep.txt': `${SECRET} deep\n` } } });
  const ctx = path.join(root, 'ctx');
  await makeTree(ctx, { 'build.yaml': buildYaml, 'ok.txt': 'ok\n', ...tree });
  return { root, ctx, file: path.join(ctx, 'build.yaml'), outside, cache: path.join(root, 'cache'), out: path.join(root, 'out') };
}

const validate = (w: World): Promise<CliResult> => runCli(['validate', w.file]);
const run = (w: World, file = w.file): Promise<CliResult> => runCli(['run', file, '--cache-dir', w.cache, '--out', w.out, '--progress', 'quiet']);

/** A build file of one image `app` with these steps (YAML flow mappings, one a line, from line 5). */
function buildFile(steps: string[], extra = ''): string {
  return `version: 1\nimages:\n  app:\n    steps:\n${steps.map((s) => `      - ${s}\n`).join('')}${extra}`;
}

/**
 * `res` is a refusal: exit 2, no stack trace, and among its problems one
 * naming `app/<step>` and the source, at the source's line:col in `file`
 * (where the source is written on `line`, its opening quote if quoted).
 */
async function expectRefused(res: CliResult, file: string, at: { line: number; step: string; source: string; why: RegExp }): Promise<void> {
  expect(res.exitCode, res.stderr).toBe(2);
  expect(res.stderr).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m);
  expect(res.stderr).not.toMatch(/unexpected error/);
  const text = (await readFile(file, 'utf8')).split('\n')[at.line - 1]!;
  const from = text.indexOf('copy:');
  const m = new RegExp(`[\\s\\[,]("?)${at.source.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\1[,\\]]`).exec(text.slice(from));
  expect(m, `${at.source} on line ${at.line}: ${text}`).not.toBeNull();
  const col = from + m!.index + 2;
  const head = `${displayPath(file)}:${at.line}:${col}: app/${at.step}: copy source \`${at.source}\` `;
  const mine = res.stderr.split('\n').find((l) => l.startsWith(head));
  expect(mine, `no problem starting "${head}" in:\n${res.stderr}`).toBeDefined();
  expect(mine!.slice(head.length)).toMatch(at.why);
}

const LEAVES = /^leaves the build context/;

/** Every file under `dir`, decompressed when gzip: none may hold the secret. */
async function expectNoSecret(...dirs: string[]): Promise<void> {
  for (const dir of dirs) {
    const entries = await readdir(dir, { recursive: true, withFileTypes: true }).catch(() => []);
    for (const e of entries) {
      if (!e.isFile()) continue;
      const file = path.join(e.parentPath, e.name);
      let bytes = await readFile(file);
      if (bytes[0] === 0x1f && bytes[1] === 0x8b) bytes = gunzipSync(bytes);
      expect(bytes.includes(SECRET), file).toBe(false);
    }
  }
}

interface LayerEntry {
  name: string;
  type: string;
  linkname?: string;
  content?: string;
}

/** The entries of each layer of image `name` in the layout `out`, in layer order. */
async function layersOf(out: string, name: string): Promise<LayerEntry[][]> {
  const blob = (digest: string) => readFile(path.join(out, 'blobs', 'sha256', digest.slice('sha256:'.length)));
  const index = JSON.parse((await readFile(path.join(out, 'index.json'))).toString()) as { manifests: Array<{ digest: string; annotations?: Record<string, string> }> };
  const desc = index.manifests.find((m) => m.annotations?.['org.opencontainers.image.ref.name'] === name);
  expect(desc, `image ${name} in ${out}`).toBeDefined();
  const manifest = JSON.parse((await blob(desc!.digest)).toString()) as { layers: Array<{ digest: string; mediaType: string }> };
  const layers: LayerEntry[][] = [];
  for (const layer of manifest.layers) {
    let bytes = await blob(layer.digest);
    if (layer.mediaType.endsWith('gzip')) bytes = gunzipSync(bytes);
    const ex = extract();
    Readable.from([bytes]).pipe(ex as unknown as NodeJS.WritableStream);
    const entries: LayerEntry[] = [];
    for await (const entry of ex) {
      const chunks: Buffer[] = [];
      for await (const c of entry) chunks.push(c as Buffer);
      const h = entry.header;
      entries.push({
        name: h.name.replace(/\/$/, ''),
        type: h.type ?? 'file',
        ...(h.linkname ? { linkname: h.linkname } : {}),
        ...(h.type === 'file' ? { content: Buffer.concat(chunks).toString() } : {}),
      });
    }
    layers.push(entries);
  }
  return layers;
}

describe('copy sources that leave the context through a symlink', () => {
  it('refuses a link to a file outside, relative or absolute, at each source', async () => {
    const w = await world(buildFile(['{id: rel, copy: leak, to: /a}', '{id: abs, copy: [ok.txt, absleak], to: /b/}']));
    await symlink('../outside/secret.txt', path.join(w.ctx, 'leak'));
    await symlink(path.join(w.outside, 'secret.txt'), path.join(w.ctx, 'absleak'));
    for (const res of [await validate(w), await run(w)]) {
      await expectRefused(res, w.file, { line: 5, step: 'rel', source: 'leak', why: LEAVES });
      await expectRefused(res, w.file, { line: 6, step: 'abs', source: 'absleak', why: /^leaves the build context: absleak: resolves to .*outside\/secret\.txt, outside / });
    }
    await expectNoSecret(w.cache, w.out);
  });

  it('refuses a link to a parent, to `/`, and every path and glob through them', async () => {
    const w = await world(
      buildFile([
        '{id: parent, copy: up, to: /a/}',
        '{id: through, copy: up/outside/secret.txt, to: /a}',
        '{id: glob, copy: "up/*", to: /a/}',
        '{id: deepglob, copy: "up/**/*.txt", to: /a/}',
        '{id: root, copy: slash/etc/passwd, to: /a}',
        '{id: rootdir, copy: slash, to: /a/}',
      ]),
    );
    await symlink('..', path.join(w.ctx, 'up'));
    await symlink('/', path.join(w.ctx, 'slash'));
    for (const res of [await validate(w), await run(w)]) {
      await expectRefused(res, w.file, { line: 5, step: 'parent', source: 'up', why: LEAVES });
      await expectRefused(res, w.file, { line: 6, step: 'through', source: 'up/outside/secret.txt', why: LEAVES });
      await expectRefused(res, w.file, { line: 7, step: 'glob', source: 'up/*', why: LEAVES });
      await expectRefused(res, w.file, { line: 8, step: 'deepglob', source: 'up/**/*.txt', why: LEAVES });
      await expectRefused(res, w.file, { line: 9, step: 'root', source: 'slash/etc/passwd', why: LEAVES });
      await expectRefused(res, w.file, { line: 10, step: 'rootdir', source: 'slash', why: LEAVES });
    }
    await expectNoSecret(w.cache, w.out);
  });

  it('refuses a glob when one of its matches is a link that leads outside', async () => {
    const w = await world(buildFile(['{id: flat, copy: "links/*.txt", to: /a/}', '{id: deep, copy: "**/*.txt", to: /b/}']), {
      links: { dir: { 'a.txt': 'a\n', nested: { dir: { 'b.txt': 'b\n' } } } },
    });
    await symlink('../../outside/secret.txt', path.join(w.ctx, 'links', 'z.txt'));
    await symlink('../../../outside/secret.txt', path.join(w.ctx, 'links', 'nested', 'y.txt'));
    const res = await run(w);
    await expectRefused(res, w.file, { line: 5, step: 'flat', source: 'links/*.txt', why: /^leaves the build context: links\/z\.txt: resolves to / });
    await expectRefused(res, w.file, { line: 6, step: 'deep', source: '**/*.txt', why: /^leaves the build context: links\/nested\/y\.txt: resolves to / });
    await expectNoSecret(w.cache, w.out);
  });

  it('refuses a link loop, and a link that is its own target, at the source', async () => {
    const w = await world(buildFile(['{id: self, copy: loop, to: /a}', '{id: pair, copy: ping/x, to: /b}']));
    await symlink('loop', path.join(w.ctx, 'loop'));
    await symlink('pong', path.join(w.ctx, 'ping'));
    await symlink('ping', path.join(w.ctx, 'pong'));
    const res = await validate(w);
    await expectRefused(res, w.file, { line: 5, step: 'self', source: 'loop', why: /symbolic links/ });
    await expectRefused(res, w.file, { line: 6, step: 'pair', source: 'ping/x', why: /symbolic links/ });
  });
});

describe('`..` and absolute paths in copy sources', () => {
  it('refuses them when the build file is loaded, naming the step and pointing at the source', async () => {
    const w = await world(
      buildFile([
        '{id: dotdot, copy: "../*", to: /a/}',
        '{id: inner, copy: src/../../outside/secret.txt, to: /a}',
        '{id: absglob, copy: "/etc/*", to: /a/}',
        '{id: abs, copy: [ok.txt, /etc/passwd], to: /a/}',
        '{id: back, copy: ./../ctx/ok.txt, to: /a}',
      ]),
      { src: { dir: { 'main.c': '' } } },
    );
    for (const res of [await validate(w), await run(w)]) {
      await expectRefused(res, w.file, { line: 5, step: 'dotdot', source: '../*', why: /^leaves the build context$/ });
      await expectRefused(res, w.file, { line: 6, step: 'inner', source: 'src/../../outside/secret.txt', why: /^leaves the build context$/ });
      await expectRefused(res, w.file, { line: 7, step: 'absglob', source: '/etc/*', why: /^is an absolute path; copy sources are relative to the build context$/ });
      await expectRefused(res, w.file, { line: 8, step: 'abs', source: '/etc/passwd', why: /^is an absolute path/ });
      await expectRefused(res, w.file, { line: 9, step: 'back', source: './../ctx/ok.txt', why: /^leaves the build context$/ });
    }
    await expectNoSecret(w.cache, w.out);
  });

  it('allows `..` that stays inside the context', async () => {
    const w = await world(buildFile(['{id: fine, copy: "src/../ok.txt", to: /a}']), { src: { dir: {} } });
    expect((await run(w)).exitCode).toBe(0);
    const [layer] = await layersOf(w.out, 'app');
    expect(layer!.find((e) => e.name === 'a')).toMatchObject({ type: 'file', content: 'ok\n' });
  });
});

describe('what a copied directory holds', () => {
  it('keeps a link inside it as a link (to `/`, to a parent, outside) and never follows it', async () => {
    const w = await world(buildFile(['{id: tree, copy: tree/, to: /app/}']), {
      tree: { dir: { 'file.txt': 'in\n', sub: { dir: { 'x.txt': 'x\n' } } } },
    });
    await symlink('/', path.join(w.ctx, 'tree', 'root'));
    await symlink('..', path.join(w.ctx, 'tree', 'parent'));
    await symlink('../../outside/secret.txt', path.join(w.ctx, 'tree', 'secret'));
    await symlink(path.join(w.outside, 'sub'), path.join(w.ctx, 'tree', 'sub', 'outdir'));
    const res = await run(w);
    expect(res.exitCode, res.stderr).toBe(0);
    const [layer] = await layersOf(w.out, 'app');
    expect(layer!.map((e) => [e.name, e.type, e.linkname ?? e.content ?? ''])).toEqual([
      ['app', 'directory', ''],
      ['app/file.txt', 'file', 'in\n'],
      ['app/parent', 'symlink', '..'],
      ['app/root', 'symlink', '/'],
      ['app/secret', 'symlink', '../../outside/secret.txt'],
      ['app/sub', 'directory', ''],
      ['app/sub/outdir', 'symlink', path.join(w.outside, 'sub')],
      ['app/sub/x.txt', 'file', 'x\n'],
    ]);
    await expectNoSecret(w.cache, w.out);
  });

  it('refuses a fifo, a socket or a device named as a source; inside a directory it is left out, never read', async () => {
    const w = await world(buildFile(['{id: pipe, copy: pipe, to: /a}', '{id: zero, copy: zero, to: /b}']), {
      dir: { dir: { 'file.txt': 'f\n' } },
    });
    execFileSync('mkfifo', [path.join(w.ctx, 'pipe'), path.join(w.ctx, 'dir', 'pipe')]);
    await symlink('/dev/zero', path.join(w.ctx, 'zero'));
    const res = await validate(w);
    await expectRefused(res, w.file, { line: 5, step: 'pipe', source: 'pipe', why: /^is neither a file nor a directory/ });
    await expectRefused(res, w.file, { line: 6, step: 'zero', source: 'zero', why: LEAVES });

    const ok = await world(buildFile(['{id: dir, copy: dir/, to: /d/}']), { dir: { dir: { 'file.txt': 'f\n' } } });
    execFileSync('mkfifo', [path.join(ok.ctx, 'dir', 'pipe')]);
    await symlink('/dev/zero', path.join(ok.ctx, 'dir', 'zero'));
    expect((await run(ok)).exitCode).toBe(0);
    const [layer] = await layersOf(ok.out, 'app');
    expect(layer!.map((e) => [e.name, e.type, e.linkname ?? ''])).toEqual([
      ['d', 'directory', ''],
      ['d/file.txt', 'file', ''],
      ['d/zero', 'symlink', '/dev/zero'],
    ]);
  });
});

describe('a context that is a symlink', () => {
  it('builds from a context reached through a symlink, and from a build file inside it', async () => {
    const root = await realpath(await tmpDir('lg-attack-'));
    const real = path.join(root, 'real');
    await makeTree(real, { 'ok.txt': 'ok\n', src: { dir: { 'a.txt': 'a\n' } } });
    await symlink('real', path.join(root, 'ctxlink'));
    // A link with an absolute target through the link: inside, once resolved.
    await symlink(path.join(root, 'ctxlink', 'ok.txt'), path.join(real, 'via-link'));
    const steps = ['{id: file, copy: ok.txt, to: /ok.txt}', '{id: dir, copy: src/, to: /src/}', '{id: via, copy: via-link, to: /via.txt}'];
    await makeTree(path.join(root, 'elsewhere'), { 'build.yaml': buildFile(steps).replace('version: 1\n', 'version: 1\ncontext: ../ctxlink\n') });
    await makeTree(real, { 'build.yaml': buildFile(steps) });
    const w = { root, ctx: real, file: '', outside: '', cache: path.join(root, 'cache'), out: path.join(root, 'out') };
    for (const file of [path.join(root, 'elsewhere', 'build.yaml'), path.join(root, 'ctxlink', 'build.yaml')]) {
      const res = await run(w, file);
      expect(res.exitCode, res.stderr).toBe(0);
      const layers = await layersOf(w.out, 'app');
      expect(layers.map((l) => l.map((e) => [e.name, e.content ?? '']))).toEqual([
        [['ok.txt', 'ok\n']],
        [['src', ''], ['src/a.txt', 'a\n']],
        [['via.txt', 'ok\n']],
      ]);
    }
  });
});

describe('a context that is not a directory', () => {
  it('is refused at `context:` whether it is missing, a file, or a dangling link', async () => {
    const root = await realpath(await tmpDir('lg-attack-'));
    await makeTree(root, { 'file.txt': 'f\n' });
    await symlink('nowhere', path.join(root, 'dangling'));
    for (const [context, problem] of [['missing', 'does not exist'], ['file.txt', 'is not a directory'], ['dangling', 'does not exist']] as const) {
      const dir = path.join(root, `b-${context}`);
      await makeTree(dir, { 'build.yaml': buildFile(['{id: a, copy: ok.txt, to: /a}']).replace('version: 1\n', `version: 1\ncontext: ../${context}\n`) });
      for (const res of [await runCli(['validate', path.join(dir, 'build.yaml')]), await runCli(['run', path.join(dir, 'build.yaml'), '--cache-dir', path.join(root, 'cache'), '--out', path.join(root, 'out')])]) {
        expect(res.exitCode, res.stderr).toBe(2);
        expect(res.stderr.split('\n')[0]).toBe(`${displayPath(path.join(dir, 'build.yaml'))}:2:10: the build context ${path.join(root, context)} ${problem}`);
      }
    }
  });
});

describe('.dockerignore', () => {
  const IGNORE = 'secret*\n*.key\nhidden/\n!../outside\n!/etc/passwd\n!../outside/secret.txt\n';

  it('refuses an excluded file named outright, through a link, through an excluded directory, and a glob with only excluded matches', async () => {
    const w = await world(
      buildFile([
        '{id: named, copy: secret.txt, to: /a}',
        '{id: alias, copy: alias, to: /a}',
        '{id: keys, copy: "*.key", to: /k/}',
        '{id: inside, copy: hidden/file.txt, to: /h}',
      ]),
      { '.dockerignore': IGNORE, 'secret.txt': 'local secret\n', 'id.key': 'key\n', hidden: { dir: { 'file.txt': 'h\n' } } },
    );
    await symlink('secret.txt', path.join(w.ctx, 'alias'));
    const res = await validate(w);
    await expectRefused(res, w.file, { line: 5, step: 'named', source: 'secret.txt', why: /^is left out of the build context: excluded by .dockerignore/ });
    await expectRefused(res, w.file, { line: 6, step: 'alias', source: 'alias', why: /^is left out of the build context: excluded by .dockerignore/ });
    await expectRefused(res, w.file, { line: 7, step: 'keys', source: '*.key', why: /^matches nothing/ });
    await expectRefused(res, w.file, { line: 8, step: 'inside', source: 'hidden/file.txt', why: /^is left out of the build context/ });
  });

  it('copies the whole context without what it excludes; `!` patterns bring nothing in from outside', async () => {
    const w = await world(buildFile(['{id: all, copy: ., to: /ctx/}']), {
      '.dockerignore': `${IGNORE}build.yaml\n.dockerignore\n`,
      'secret.txt': 'local secret\n',
      'id.key': 'key\n',
      hidden: { dir: { 'file.txt': 'h\n' } },
      keep: { dir: { 'k.txt': 'k\n' } },
    });
    const res = await run(w);
    expect(res.exitCode, res.stderr).toBe(0);
    const [layer] = await layersOf(w.out, 'app');
    expect(layer!.map((e) => e.name)).toEqual(['ctx', 'ctx/keep', 'ctx/keep/k.txt', 'ctx/ok.txt']);
    await expectNoSecret(w.cache, w.out);
  });

  it('refuses a .dockerignore that is not a regular file (a fifo would block, /dev/zero never end)', async () => {
    for (const make of [(f: string) => execFileSync('mkfifo', [f]), (f: string) => symlink('/dev/zero', f)]) {
      const w = await world(buildFile(['{id: a, copy: ok.txt, to: /a}']));
      await make(path.join(w.ctx, '.dockerignore'));
      const res = await validate(w);
      expect(res.exitCode, res.stderr).toBe(2);
      expect(res.stderr).toMatch(/^error: cannot read .*\.dockerignore: not a regular file/);
    }
  });
});

describe('copy --from an image: links resolve inside the image root', () => {
  it('clamps a link to /../../.. and absolute links to the image root, never the host', async () => {
    const w = await world(
      [
        'version: 1',
        'images:',
        '  base:',
        '    steps:',
        '      - {id: tree, copy: img/, to: /}',
        '  app:',
        '    steps:',
        '      - {id: via-up, from: base, copy: /data/up/etc/hostname, to: /got/up-hostname}',
        '      - {id: via-abs, from: base, copy: /data/abs, to: /got/abs-hostname}',
        '      - {id: dotdot, from: base, copy: /../../../etc/hostname, to: /got/dotdot-hostname}',
        '      - {id: root, from: base, copy: /data/up/, to: /rootcopy/}',
        '      - {id: glob, from: base, copy: "/data/up/e*/host*", to: /globbed/}',
        '',
      ].join('\n'),
      { img: { dir: { etc: { dir: { hostname: 'image-host\n' } }, data: { dir: { 'x.txt': 'x\n' } } } } },
    );
    await symlink('/../../..', path.join(w.ctx, 'img', 'data', 'up'));
    await symlink('/etc/hostname', path.join(w.ctx, 'img', 'data', 'abs'));
    const res = await run(w);
    expect(res.exitCode, res.stderr).toBe(0);
    const layers = await layersOf(w.out, 'app');
    const files = layers.flat().filter((e) => e.type === 'file');
    expect(files.map((e) => [e.name, e.content])).toEqual([
      ['got/up-hostname', 'image-host\n'],
      ['got/abs-hostname', 'image-host\n'],
      ['got/dotdot-hostname', 'image-host\n'],
      ['rootcopy/data/x.txt', 'x\n'],
      ['rootcopy/etc/hostname', 'image-host\n'],
      ['globbed/hostname', 'image-host\n'],
    ]);
    // The image root, not the host's: nothing but what the image holds.
    const rootcopy = layers.flat().filter((e) => e.name.startsWith('rootcopy/')).map((e) => e.name);
    expect(rootcopy).toEqual(['rootcopy/data', 'rootcopy/data/abs', 'rootcopy/data/up', 'rootcopy/data/x.txt', 'rootcopy/etc', 'rootcopy/etc/hostname']);
  });
});
