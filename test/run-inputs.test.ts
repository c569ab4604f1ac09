import { describe, expect, it } from 'vitest';
import { describeRun, runMaterial, runSettings } from '../src/build/run-inputs.js';
import { parseBuildFile } from '../src/config/load.js';
import type { RunStep } from '../src/config/types.js';
import { FILE, yaml } from './config-helpers.js';

function parse(text: string) {
  const image = parseBuildFile(text, FILE).images[0]!;
  return { image, steps: image.steps as RunStep[] };
}

describe('runSettings', () => {
  it('layers the environment: base, then image, then step; adds a PATH when there is none', () => {
    const { image, steps } = parse(yaml`
      version: 1
      images:
        app:
          env: {A: image, B: image}
          user: app
          steps:
            - {id: s, run: make, env: {B: step}}
    `);
    const s = runSettings(steps[0]!, image, { Env: ['A=base', 'Z=base'], User: 'builder', WorkingDir: '/src' });
    expect(s.env).toEqual(['A=image', 'Z=base', 'B=step', 'PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin']);
    // The image's own `user` is for the finished image; steps build as the base's user.
    expect(s.user).toBe('builder');
    expect(s.cwd).toBe('/src');
    expect(runSettings(steps[0]!, image, { Env: ['PATH=/bin'] }).env).toContain('PATH=/bin');
  });

  it("prefers the step's workdir and user, then the image's workdir, else / and root", () => {
    const { image, steps } = parse(yaml`
      version: 1
      images:
        app:
          workdir: /app
          steps:
            - {id: s, run: make, workdir: /w, user: "1:2"}
            - {id: t, run: make}
    `);
    expect(runSettings(steps[0]!, image, {})).toMatchObject({ cwd: '/w', user: '1:2' });
    expect(runSettings(steps[1]!, image, {})).toMatchObject({ cwd: '/app', user: '' });
  });
});

describe('runMaterial and describeRun', () => {
  it('keys how the command runs and what it sits on', () => {
    const { image, steps } = parse(yaml`
      version: 1
      images:
        app:
          steps:
            - {id: s, run: "make all", network: host}
            - {id: t, run: [make, all]}
    `);
    const m = runMaterial(runSettings(steps[0]!, image, {}), 'parent-key', 0);
    expect(m).toMatchObject({ kind: 'layergraph.run.v1', parent: 'parent-key', inputs: [] });
    expect(m.definition).toMatchObject({ run: ['/bin/sh', '-c', 'make all'], network: 'host', workdir: '/', user: '' });
    expect(describeRun(steps[0]!)).toBe('RUN make all');
    expect(describeRun(steps[1]!)).toBe('RUN ["make","all"]');
  });
});
