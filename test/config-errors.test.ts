import { describe, expect, it } from 'vitest';
import { parseBuildFile } from '../src/config/load.js';
import { sourceExcerpt } from '../src/config/positions.js';
import { ConfigError } from '../src/errors.js';
import { FILE, STEP, issuesOf, problems, yaml } from './config-helpers.js';

describe('YAML problems', () => {
  it('reports an empty document', () => {
    expect(problems('')).toEqual(['build.yaml:1:1: the build file is empty; expected `version: 1` and `images:`']);
    expect(problems('# just a comment\n')).toEqual(['build.yaml:1:1: the build file is empty; expected `version: 1` and `images:`']);
  });

  it('reports a document that is not a mapping', () => {
    expect(problems('- version: 1\n')).toEqual(['build.yaml:1:1: the build file is a list; expected a mapping with `version` and `images`']);
  });

  it('reports syntax errors at their position, and nothing else', () => {
    expect(
      problems(yaml`
        version: 1
        images:
          api:
            steps:
              - id: "a
      `),
    ).toEqual(['build.yaml:6:1: invalid YAML: missing closing "quote']);
    expect(
      problems(yaml`
        version: 1
        images:
          api:
        	steps: []
      `),
    ).toEqual(['build.yaml:4:1: invalid YAML: tabs are not allowed as indentation']);
  });

  it('reports several documents in one file', () => {
    expect(problems('version: 1\n---\nimages: {}\n')).toEqual([
      'build.yaml:2:1: the build file holds more than one YAML document; remove this `---` and what follows, or merge the documents',
    ]);
  });

  it('reports an alias without an anchor', () => {
    expect(problems(`version: 1\nimages:\n  api:\n    steps: [*step]\n`)).toEqual([
      'build.yaml:4:13: `*step` refers to no anchor: there is no `&step` before it',
    ]);
  });

  it('reports duplicate keys where they repeat, citing the first', () => {
    const issues = issuesOf(yaml`
      version: 1
      images:
        api:
          steps:
            - id: a
              copy: x
              to: /x
              to: /y
        api:
          steps: [${STEP}]
    `);
    expect(issues.map((i) => [i.path, `${i.pos.line}:${i.pos.col}`, i.message])).toEqual([
      ['images.api.steps[0].to', '8:9', 'duplicate key `to` in step (first defined at build.yaml:7:9)'],
      ['images.api', '9:3', 'duplicate image `api` (first defined at build.yaml:3:3)'],
    ]);
  });
});

describe('structure (schema) problems', () => {
  it('reports a version other than 1', () => {
    expect(problems(`version: 2\nimages: {api: {steps: [${STEP}]}}\n`)).toEqual([
      'build.yaml:1:10: `version` is 2; expected 1, the only version this layergraph reads',
    ]);
  });

  it('reports unknown keys at the key, with a suggestion when one is close', () => {
    expect(
      problems(yaml`
        version: 1
        imgaes: {}
        images:
          api:
            environment: {A: b}
            frobnicate: 1
            steps:
              - id: a
                copy: x
                tp: /x
              - id: b
                add: make
                copy: x
                to: /x
      `),
    ).toEqual([
      'build.yaml:2:1: unknown key `imgaes` in the build file; did you mean `images`?',
      'build.yaml:5:5: unknown key `environment` in image `api`; did you mean `env`?',
      'build.yaml:6:5: unknown key `frobnicate` in image `api`; expected one of `from`, `platform`, `env`, `workdir`, `user`, `entrypoint`, `cmd`, `labels`, `expose`, `tags`, `push`, `merge`, `steps`',
      // one mistake, one issue: no "step is missing `to`" as well
      'build.yaml:10:9: unknown key `tp` in step; did you mean `to`?',
      'build.yaml:12:9: unknown key `add` in step; a step copies (`copy`, `to`) or runs a command (`run`)',
    ]);
  });

  it('reports missing keys at the mapping that lacks them', () => {
    const issues = issuesOf(yaml`
      version: 1
      images:
        api:
          steps:
            - id: a
              copy: x
            - {}
        web:
          from: api
    `);
    expect(issues.map((i) => [i.path, `${i.pos.line}:${i.pos.col}`, i.message])).toEqual([
      ['images.api.steps[0]', '5:9', 'step is missing `to`'],
      ['images.api.steps[1]', '7:9', 'step is missing `id`, `copy` and `to` (or `run`, to run a command)'],
      ['images.web', '8:3', 'image `web` is missing `steps`'],
    ]);
    expect(problems('version: 1\n')).toEqual(['build.yaml:1:1: the build file is missing `images`']);
  });

  it('reports wrong values at the value, with what was expected', () => {
    const issues = issuesOf(yaml`
      version: 1
      context: 7
      images:
        api:
          platform: amd64
          workdir: app
          entrypoint: {a: 1}
          env: {A: [1]}
          labels: {version: 1.10}
          expose: [0, "8080/http", "70000/udp"]
          steps:
            - id: -a
              copy: []
              to: 42
              link: "yes"
            - id: b
              copy: x
              to:
              needs: a
      `);
    expect(issues.map((i) => [i.path, `${i.pos.line}:${i.pos.col}`, i.message])).toEqual([
      ['context', '2:10', '`context` is 7; expected a folder, relative to the build file (put it in quotes: "7")'],
      ['images.api.platform', '5:15', '`images.api.platform` is "amd64"; expected os/architecture[/variant], like "linux/amd64" or "linux/arm64/v8"'],
      ['images.api.workdir', '6:14', '`images.api.workdir` is "app"; expected an absolute path'],
      ['images.api.entrypoint', '7:17', '`images.api.entrypoint` is a mapping; expected a list of strings, or a string for /bin/sh -c'],
      ['images.api.env.A', '8:14', '`images.api.env.A` is a list; expected a string, number or boolean'],
      ['images.api.labels.version', '9:23', '`images.api.labels.version` is 1.10; expected a string (put it in quotes: "1.10")'],
      ['images.api.expose[0]', '10:14', '`images.api.expose[0]` is 0; expected a port from 1 to 65535, or "port/protocol" like "53/udp" (tcp, udp or sctp)'],
      ['images.api.expose[1]', '10:17', '`images.api.expose[1]` is "8080/http"; expected a port from 1 to 65535, or "port/protocol" like "53/udp" (tcp, udp or sctp)'],
      ['images.api.expose[2]', '10:30', '`images.api.expose[2]` is "70000/udp"; expected a port from 1 to 65535'],
      ['images.api.steps[0].id', '12:13', '`images.api.steps[0].id` is "-a"; expected letters, digits, `.`, `_` and `-`, starting with a letter or a digit'],
      ['images.api.steps[0].copy', '13:15', '`images.api.steps[0].copy` is an empty list; expected a path or a glob, or a non-empty list of them'],
      ['images.api.steps[0].to', '14:13', '`images.api.steps[0].to` is 42; expected an absolute path'],
      ['images.api.steps[0].link', '15:15', '`images.api.steps[0].link` is "yes"; expected true or false'],
      // an empty value points at its key
      ['images.api.steps[1].to', '18:9', '`images.api.steps[1].to` is empty; expected an absolute path'],
      ['images.api.steps[1].needs', '19:16', '`images.api.steps[1].needs` is "a"; expected a list of step ids'],
    ]);
  });

  it('explains chmod and chown', () => {
    expect(
      problems(yaml`
        version: 1
        images:
          api:
            steps:
              - {id: a, copy: x, to: /x, chmod: "999"}
              - {id: b, copy: x, to: /x, chmod: 0755}
              - {id: c, copy: x, to: /x, chmod: 999}
              - {id: d, copy: x, to: /x, chown: "app:app"}
              - {id: e, copy: x, to: /x, chown: "1000:99999999999"}
      `),
    ).toEqual([
      'build.yaml:5:41: `images.api.steps[0].chmod` is "999"; expected an octal mode like "0755"',
      'build.yaml:6:41: `images.api.steps[1].chmod` is 0755; expected an octal mode like "0755" (put it in quotes: "0755")',
      'build.yaml:7:41: `images.api.steps[2].chmod` is 999; expected an octal mode like "0755"',
      'build.yaml:8:41: `images.api.steps[3].chown` is "app:app"; only numeric ids are supported for now, like "1000:1000"',
      'build.yaml:9:41: `images.api.steps[4].chown` is "1000:99999999999"; expected ids from 0 to 4294967294',
    ]);
  });

  it('reports invalid image names at the key', () => {
    expect(problems(`version: 1\nimages:\n  Api: {steps: [${STEP}]}\n  scratch: {steps: [${STEP}]}\n`)).toEqual([
      'build.yaml:3:3: image name `Api` is not valid; expected lowercase letters, digits, `.`, `_` and `-`, starting with a letter or a digit',
      'build.yaml:4:3: `scratch` cannot be the name of an image: `from: scratch` means an empty base image',
    ]);
  });

  it('reports invalid variable names at the key', () => {
    expect(problems(`version: 1\nimages:\n  api:\n    env: {"A=B": x}\n    steps: [${STEP}]\n`)).toEqual([
      'build.yaml:4:11: variable name `A=B` is not valid; expected a name without `=`',
    ]);
  });

  it('reports an empty images mapping', () => {
    expect(problems('version: 1\nimages: {}\n')).toEqual([
      'build.yaml:2:9: `images` is an empty mapping; expected a mapping of image names to images',
    ]);
  });
});

describe('semantic problems', () => {
  it('reports duplicate step ids, citing the first', () => {
    const issues = issuesOf(yaml`
      version: 1
      images:
        api:
          steps:
            - id: build
              copy: x
              to: /x
            - id: build
              copy: y
              to: /y
    `);
    expect(issues.map((i) => [i.path, `${i.pos.line}:${i.pos.col}`, i.message])).toEqual([
      ['images.api.steps[1].id', '8:13', 'duplicate step id `build` in image `api` (first defined at build.yaml:5:13)'],
    ]);
  });

  it('reports images built from unknown images or from themselves', () => {
    expect(
      problems(yaml`
        version: 1
        images:
          api:
            from: api
            steps: [${STEP}]
          web:
            from: nope
            steps:
              - {id: a, from: ghost, copy: /x, to: /x}
              - {id: b, from: web, copy: /x, to: /x}
      `),
    ).toEqual([
      'build.yaml:4:11: an image cannot be built from itself',
      'build.yaml:7:11: image `web` is built from `nope`, which is not an image of this file (images: api, web); for a registry image, give its tag, like `nope:latest`',
      'build.yaml:9:23: step `a` copies from `ghost`, which is not an image of this file (images: api, web)',
      'build.yaml:10:23: a step cannot copy from its own image (`web`)',
    ]);
  });

  it('reports needs that are not steps of the image', () => {
    const issues = issuesOf(yaml`
      version: 1
      images:
        api:
          steps:
            - {id: a, copy: x, to: /x}
            - {id: b, copy: x, to: /x, needs: [a, a, b, y]}
        web:
          steps:
            - {id: y, copy: x, to: /x}
    `);
    expect(issues.map((i) => [i.path, `${i.pos.line}:${i.pos.col}`, i.message])).toEqual([
      ['images.api.steps[1].needs[1]', '6:45', 'step `b` needs `a` twice'],
      ['images.api.steps[1].needs[2]', '6:48', 'a step cannot need itself'],
      ['images.api.steps[1].needs[3]', '6:51', 'step `b` needs `y`, which is not a step of image `api` (steps: a, b)'],
    ]);
  });

  it('refuses a `to` that would leave the image root', () => {
    const issues = issuesOf(yaml`
      version: 1
      images:
        api:
          steps:
            - {id: a, copy: x, to: /app/../../etc/passwd}
    `);
    expect(issues.map((i) => [`${i.pos.line}:${i.pos.col}`, i.message])).toEqual([
      ['5:30', '`images.api.steps[0].to` is "/app/../../etc/passwd"; `..` would leave the image root: write the path without it'],
    ]);
  });

  it('reports copy sources that are absolute or leave the context, but not those of another image', () => {
    const issues = issuesOf(yaml`
      version: 1
      images:
        base:
          steps: [${STEP}]
        api:
          steps:
            - id: a
              copy: [ok/../fine, ../x, a/../../x, /etc/passwd, ..]
              to: /x/
            - id: b
              copy: ../up
              to: /x
            - id: c
              from: base
              copy: /etc/passwd
              to: /x
    `);
    expect(issues.map((i) => [i.path, `${i.pos.line}:${i.pos.col}`, i.message])).toEqual([
      ['images.api.steps[0].copy[1]', '8:28', 'api/a: copy source `../x` leaves the build context'],
      ['images.api.steps[0].copy[2]', '8:34', 'api/a: copy source `a/../../x` leaves the build context'],
      ['images.api.steps[0].copy[3]', '8:45', 'api/a: copy source `/etc/passwd` is an absolute path; copy sources are relative to the build context'],
      ['images.api.steps[0].copy[4]', '8:58', 'api/a: copy source `..` leaves the build context'],
      ['images.api.steps[1].copy', '11:15', 'api/b: copy source `../up` leaves the build context'],
    ]);
  });

  it('validates tags as image references, each given once', () => {
    expect(
      problems(yaml`
        version: 1
        images:
          api:
            tags:
              - api:1.2
              - registry.example.com:5000/team/api:latest
              - Team/API
              - api@sha256:0123
              - "api:"
              - api:-x
              - reg:port/api
              - team//api
              - api:1.2
            steps: [${STEP}]
          web:
            tags: ["registry.example.com:5000/team/api:latest", api]
            steps: [${STEP}]
      `),
    ).toEqual([
      'build.yaml:7:9: tag "Team/API" is not a valid image reference: repository names must be lowercase',
      'build.yaml:8:9: tag "api@sha256:0123" is not a valid image reference: a digest (`@sha256:...`) cannot be a tag of an image being built',
      'build.yaml:9:9: tag "api:" is not a valid image reference: the tag after `:` is empty',
      'build.yaml:10:9: tag "api:-x" is not a valid image reference: the tag `-x` may only hold letters, digits, `_`, `.` and `-`, not start with `.` or `-`, and be at most 128 characters',
      'build.yaml:11:9: tag "reg:port/api" is not a valid image reference: the registry port `port` is not a number',
      'build.yaml:12:9: tag "team//api" is not a valid image reference: it has an empty path component (`//`, or `/` at an end)',
      'build.yaml:13:9: tag "api:1.2" is listed twice (first at build.yaml:5:9)',
      'build.yaml:16:12: tag "registry.example.com:5000/team/api:latest" is also a tag of image `api` (at build.yaml:6:9)',
      'build.yaml:16:57: tag "api" is the name of image `api`, which the output already names so',
    ]);
  });
});

describe('reporting', () => {
  it('collects every problem of every kind, in file order, into one ConfigError', () => {
    let err: unknown;
    try {
      parseBuildFile(
        yaml`
          version: 1
          images:
            api:
              from: nope
              workdir: app
              steps:
                - id: a
                  copy: x
                  tp: /x
                - id: a
                  copy: x
                  to: /y
                  to: /z
        `,
        FILE,
      );
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as ConfigError).code).toBe('CONFIG_INVALID');
    expect((err as ConfigError).issues.map((i) => `${i.pos.line}:${i.pos.col} ${i.message}`)).toEqual([
      '4:11 image `api` is built from `nope`, which is not an image of this file (images: api); for a registry image, give its tag, like `nope:latest`',
      '5:14 `images.api.workdir` is "app"; expected an absolute path',
      '9:9 unknown key `tp` in step; did you mean `to`?',
      '10:13 duplicate step id `a` in image `api` (first defined at build.yaml:7:13)',
      '13:9 duplicate key `to` in step (first defined at build.yaml:12:9)',
    ]);
  });

  it('gives each issue an excerpt: the line before, the line, and a caret under the column', () => {
    const [issue] = issuesOf(yaml`
      version: 1
      images:
        api:
          steps:
            - id: a
              copy: x
              to: app/
    `);
    expect(issue!.excerpt).toMatchInlineSnapshot(`
      "6 |         copy: x
      7 |         to: app/
        |             ^"
    `);
  });

  it('widens the gutter for two-digit lines, and keeps tabs so the caret lines up', () => {
    const text = `${'# pad\n'.repeat(7)}version: 1\nimages:\n  api:\t{steps: [{id: a, copy: x, to: x}]}\n`;
    const [issue] = issuesOf(text);
    expect(issue!.pos).toMatchObject({ line: 10, col: 38 });
    expect(issue!.excerpt).toBe(
      [' 9 | images:', '10 |   api:\t{steps: [{id: a, copy: x, to: x}]}', `   | ${' '.repeat(6)}\t${' '.repeat(30)}^`].join('\n'),
    );
  });

  it('makes excerpts for issues found after loading too', () => {
    expect(sourceExcerpt('a: 1\r\nb: 2\r\n', 2, 4)).toBe('1 | a: 1\n2 | b: 2\n  |    ^');
    expect(sourceExcerpt('a: 1\n', 9, 1)).toBe('');
  });

  it('shows no line before the first', () => {
    expect(issuesOf('version: 3\nimages: {}\n')[0]!.excerpt).toBe('1 | version: 3\n  |          ^');
  });

  it('formats the error message as file:line:col: message, then the excerpt', () => {
    expect(() => parseBuildFile('version: 1\nimages: {api: {steps: [{id: a, copy: x, to: x}]}}\n', FILE)).toThrow(
      'build.yaml:2:45: `images.api.steps[0].to` is "x"; expected an absolute path\n' +
        '1 | version: 1\n' +
        '2 | images: {api: {steps: [{id: a, copy: x, to: x}]}}\n' +
        `  | ${' '.repeat(44)}^`,
    );
  });
});
