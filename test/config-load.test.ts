import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadBuildFile, parseBuildFile } from '../src/config/load.js';
import { ConfigError } from '../src/errors.js';
import { FILE, STEP, issuesOf, yaml } from './config-helpers.js';

const at = (line: number, col: number) => ({ file: 'build.yaml', line, col });

describe('parseBuildFile: a valid file', () => {
  it('normalises every field', () => {
    const spec = parseBuildFile(
      yaml`
        version: 1
        context: ../ctx
        images:
          base:
            steps:
              - id: etc
                copy: etc/
                to: /etc/
          api:
            from: base
            platform: linux/arm64/v8
            env: {PORT: 8080, RATIO: 1.10, DEBUG: false, NAME: api}
            workdir: /app
            user: 1000
            entrypoint: node server.js
            cmd: ["--verbose"]
            labels: {org.opencontainers.image.title: api}
            expose: [8080, "53/udp", "8080/tcp", "9000"]
            tags: ["api:1.2", "registry.example.com:5000/team/api:latest"]
            steps:
              - id: deps
                copy: [package.json, "lib/*.js"]
                to: /app/
                chmod: "0755"
                chown: "1000"
              - id: src
                copy: src
                to: /app/src
                chown: "1000:2000"
                link: true
              - id: assets
                from: base
                copy: /etc/hosts
                to: /app/hosts
                needs: [deps, src]
      `,
      FILE,
    );
    expect(spec.file).toBe(FILE);
    expect(spec.context).toBe(path.resolve(path.dirname(FILE), '../ctx'));
    expect(spec.images.map((i) => i.name)).toEqual(['base', 'api']);
    const api = spec.images[1]!;
    expect({ ...api, steps: undefined }).toEqual({
      name: 'api',
      pos: at(9, 3),
      from: { kind: 'image', image: 'base', pos: at(10, 11) },
      platform: { os: 'linux', architecture: 'arm64', variant: 'v8' },
      env: { PORT: '8080', RATIO: '1.10', DEBUG: 'false', NAME: 'api' },
      workdir: '/app',
      user: '1000',
      entrypoint: ['/bin/sh', '-c', 'node server.js'],
      cmd: ['--verbose'],
      labels: { 'org.opencontainers.image.title': 'api' },
      push: false,
      merge: 'fail',
      expose: ['8080/tcp', '53/udp', '9000/tcp'],
      tags: ['api:1.2', 'registry.example.com:5000/team/api:latest'],
      steps: undefined,
    });
    expect(api.steps).toEqual([
      {
        kind: 'copy',
        id: 'deps',
        pos: at(21, 9),
        needs: [],
        needsPos: [],
        sources: ['package.json', 'lib/*.js'],
        sourcesPos: [at(22, 16), at(22, 30)],
        to: '/app/',
        fromImage: undefined,
        link: false,
        chmod: 0o755,
        chown: { uid: 1000, gid: 1000 },
        keyPos: { copy: at(22, 9), to: at(23, 9), chmod: at(24, 9), chown: at(25, 9) },
      },
      {
        kind: 'copy',
        id: 'src',
        pos: at(26, 9),
        needs: ['deps'],
        needsPos: [at(26, 9)],
        sources: ['src'],
        sourcesPos: [at(27, 15)],
        to: '/app/src',
        fromImage: undefined,
        link: true,
        chmod: undefined,
        chown: { uid: 1000, gid: 2000 },
        keyPos: { copy: at(27, 9), to: at(28, 9), chown: at(29, 9), link: at(30, 9) },
      },
      {
        kind: 'copy',
        id: 'assets',
        pos: at(31, 9),
        needs: ['deps', 'src'],
        needsPos: [at(35, 17), at(35, 23)],
        sources: ['/etc/hosts'],
        sourcesPos: [at(33, 15)],
        to: '/app/hosts',
        fromImage: { image: 'base', pos: at(32, 15) },
        link: false,
        chmod: undefined,
        chown: undefined,
        keyPos: { from: at(32, 9), copy: at(33, 9), to: at(34, 9) },
      },
    ]);
  });

  it('fills in defaults', () => {
    const spec = parseBuildFile(
      yaml`
        version: 1
        images:
          app:
            steps:
              - id: one
                copy: a
                to: /a
              - id: two
                copy: b
                to: /b
      `,
      FILE,
    );
    expect(spec.context).toBe(path.dirname(FILE));
    const [app] = spec.images;
    expect(app).toMatchObject({
      from: { kind: 'scratch' },
      platform: undefined,
      env: {},
      workdir: undefined,
      user: undefined,
      entrypoint: undefined,
      cmd: undefined,
      labels: {},
      expose: [],
      tags: [],
    });
    expect(app!.steps.map((s) => [s.id, s.needs, s.needsPos, s.link, s.kind === 'copy' ? s.chmod : null, s.kind === 'copy' ? s.chown : null])).toEqual([
      ['one', [], [], false, undefined, undefined],
      ['two', ['one'], [at(8, 9)], false, undefined, undefined],
    ]);
  });

  it('reads `from: scratch`, an empty `needs`, and keeps the order of images as written', () => {
    const spec = parseBuildFile(
      yaml`
        version: 1
        images:
          zeta: {from: scratch, steps: [${STEP}]}
          "1": {steps: [${STEP}, {id: b, copy: y, to: /y, needs: []}]}
      `,
      FILE,
    );
    expect(spec.images.map((i) => i.name)).toEqual(['zeta', '1']);
    expect(spec.images[0]!.from).toEqual({ kind: 'scratch' });
    expect(spec.images[1]!.steps[1]!.needs).toEqual([]);
  });

  it('follows anchors, aliases and merge keys, and allows x- fields to hold them', () => {
    const spec = parseBuildFile(
      yaml`
        version: 1
        x-defaults: &defaults
          workdir: /srv
          env: {A: "1"}
        images:
          one:
            <<: *defaults
            steps:
              - &shared {id: shared, copy: lib/, to: /lib/, link: true}
          two:
            <<: *defaults
            workdir: /other
            steps: [*shared]
      `,
      FILE,
    );
    expect(spec.images.map((i) => [i.name, i.workdir, i.env])).toEqual([
      ['one', '/srv', { A: '1' }],
      ['two', '/other', { A: '1' }],
    ]);
    // Positions of aliased nodes are where the anchor defines them.
    expect(spec.images[1]!.steps[0]!.pos).toEqual(at(9, 17));
  });

  it('reads a merge key written with its tag (`!!merge <<:`) as a merge key', () => {
    const spec = parseBuildFile(
      yaml`
        version: 1
        x-defaults: &defaults {workdir: /srv}
        images:
          one:
            !!merge <<: *defaults
            steps: [{id: a, copy: lib/, to: /lib/}]
          two:
            !!merge <<: {workdir: /other, env: {A: "1"}}
            steps: [{id: b, copy: lib/, to: /lib/}]
      `,
      FILE,
    );
    expect(spec.images.map((i) => [i.name, i.workdir, i.env])).toEqual([
      ['one', '/srv', {}],
      ['two', '/other', { A: '1' }],
    ]);
  });

  it('names the file relative to the working directory when under it, else absolute', () => {
    const text = yaml`
      version: 1
      images: {}
    `;
    const nested = path.join(process.cwd(), 'examples', 'x', 'build.yaml');
    expect(issuesOf(text, nested)[0]!.pos).toEqual({ file: path.join('examples', 'x', 'build.yaml'), line: 2, col: 9 });
    const outside = path.join(path.parse(process.cwd()).root, 'elsewhere', 'build.yaml');
    expect(issuesOf(text, outside)[0]!.pos.file).toBe(outside);
  });
});

describe('loadBuildFile', () => {
  it('reads the file, resolving `context` against its folder', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'lg-config-'));
    try {
      const file = path.join(dir, 'build.yaml');
      await mkdir(path.join(dir, 'sub'));
      await writeFile(file, yaml`
        version: 1
        context: sub
        images:
          app: {steps: [${STEP}]}
      `);
      const spec = await loadBuildFile(file);
      expect(spec.file).toBe(file);
      expect(spec.context).toBe(path.join(dir, 'sub'));
      expect(spec.images[0]!.steps[0]!.pos.file).toBe(file);

      await writeFile(file, 'version: 1\nimages: {app: {steps: []}}\n');
      const err = await loadBuildFile(file).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as ConfigError).message).toBe(
        `${file}:2:23: \`images.app.steps\` is an empty list; expected a non-empty list of steps\n` +
          '1 | version: 1\n2 | images: {app: {steps: []}}\n  |                       ^',
      );
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('rejects a missing file with the ENOENT error of readFile', async () => {
    await expect(loadBuildFile(path.join(os.tmpdir(), 'lg-no-such-dir', 'build.yaml'))).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('loads the example monorepo', async () => {
    const spec = await loadBuildFile(path.join(process.cwd(), 'examples', 'monorepo', 'build.yaml'));
    expect(spec.images.map((i) => [i.name, i.steps.map((s) => s.id)])).toEqual([
      ['api', ['common', 'config', 'src']],
      ['web', ['common', 'pages', 'serve']],
      ['api-debug', ['tools', 'web-pages']],
    ]);
    const debug = spec.images[2]!;
    expect(debug.from).toMatchObject({ kind: 'image', image: 'api' });
    expect(debug.steps[1]).toMatchObject({ fromImage: { image: 'web' }, sources: ['/srv/www/index.html'], needs: ['tools'] });
    expect(spec.images[1]!.expose).toEqual(['80/tcp', '443/tcp']);
  });
});
