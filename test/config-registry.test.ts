import { describe, expect, it } from 'vitest';
import { parseBuildFile } from '../src/config/load.js';
import { FILE, STEP, problems, yaml } from './config-helpers.js';

describe('registry images in the build file', () => {
  it('reads a from: with a tag, a digest or a path as a registry image, and a bare name as an image of the file', () => {
    const spec = parseBuildFile(
      yaml`
        version: 1
        images:
          base:
            steps: [${STEP}]
          a:
            from: alpine:3.20
            push: true
            steps: [${STEP}]
          b:
            from: registry.example.com:5000/team/base@sha256:${'a'.repeat(64)}
            steps: [${STEP}]
          c:
            from: base
            steps: [${STEP}]
      `,
      FILE,
    );
    const [, a, b, c] = spec.images;
    expect(a!.from).toMatchObject({ kind: 'base', ref: { transport: 'registry', ref: 'alpine:3.20' } });
    expect(a!.push).toBe(true);
    expect(b!.from).toMatchObject({ kind: 'base', ref: { transport: 'registry' } });
    expect(c!.from).toEqual(expect.objectContaining({ kind: 'image', image: 'base' }));
  });

  it('points at a from: that is not a valid reference', () => {
    expect(
      problems(yaml`
        version: 1
        images:
          a:
            from: Team/App:1
            steps: [${STEP}]
      `),
    ).toEqual([expect.stringMatching(/^build\.yaml:4:11: `from: Team\/App:1` is not a valid image reference: /)]);
  });
});
