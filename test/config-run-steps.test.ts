import { describe, expect, it } from 'vitest';
import { parseBuildFile } from '../src/config/load.js';
import type { RunStep } from '../src/config/types.js';
import { FILE, problems, yaml } from './config-helpers.js';

describe('run steps in the build file', () => {
  it('reads a string as /bin/sh -c and a list as argv, with defaults filled in', () => {
    const spec = parseBuildFile(
      yaml`
        version: 1
        images:
          app:
            merge: declared-order
            steps:
              - id: deps
                run: npm ci --omit=dev
                env: {NODE_ENV: production, N: 1.10}
                workdir: /app
                user: 1000
                network: host
              - id: list
                needs: []
                run: [/bin/echo, hi]
      `,
      FILE,
    );
    const [deps, list] = spec.images[0]!.steps as RunStep[];
    expect(spec.images[0]!.merge).toBe('declared-order');
    expect(deps).toMatchObject({
      kind: 'run',
      argv: ['/bin/sh', '-c', 'npm ci --omit=dev'],
      shell: true,
      env: { NODE_ENV: 'production', N: '1.10' },
      workdir: '/app',
      user: '1000',
      network: 'host',
      needs: [],
      link: false,
    });
    expect(list).toMatchObject({ argv: ['/bin/echo', 'hi'], shell: false, network: 'none', needs: [], workdir: undefined, user: undefined });
  });

  it('keeps the keys of copy and run steps apart, at the key that does not belong', () => {
    expect(
      problems(yaml`
        version: 1
        images:
          app:
            steps:
              - {id: a, copy: x, to: /x, env: {A: b}}
              - {id: b, run: make, to: /y, chmod: "0755"}
              - {id: c}
      `),
    ).toEqual([
      'build.yaml:5:34: `env` belongs to `run` steps, and this step has no `run`',
      'build.yaml:6:28: `to` does not go with `run`: a step either copies (`copy`, `to`, ...) or runs a command; make it two steps',
      'build.yaml:6:36: `chmod` does not go with `run`: a step either copies (`copy`, `to`, ...) or runs a command; make it two steps',
      'build.yaml:7:9: step is missing `copy` and `to` (or `run`, to run a command)',
    ]);
  });

  it('says what a run step and merge accept', () => {
    expect(
      problems(yaml`
        version: 1
        images:
          app:
            merge: last
            steps:
              - {id: a, run: [], network: bridge}
              - {id: b, run: ""}
              - {id: c, run: x, workdir: app}
      `),
    ).toEqual([
      'build.yaml:4:12: `images.app.merge` is "last"; expected `fail` or `declared-order`',
      'build.yaml:6:22: `images.app.steps[0].run` is an empty list; expected a command string for /bin/sh -c, or a non-empty list of strings',
      'build.yaml:6:35: `images.app.steps[0].network` is "bridge"; expected `none` or `host`',
      'build.yaml:7:22: `images.app.steps[1].run` is ""; expected a command string for /bin/sh -c, or a non-empty list of strings',
      'build.yaml:8:34: `images.app.steps[2].workdir` is "app"; expected an absolute path',
    ]);
  });
});
