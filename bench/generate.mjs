// Writes a synthetic monorepo and the same images described three ways: a
// layergraph build.yaml, one Dockerfile per service, and a docker-bake.hcl.
//
//   node bench/generate.mjs <dir> [--services 5] [--files 1000] [--lib-files 200] [--base <image ref>]
//
// Content comes from a seeded generator, so every run (and every tool) sees
// byte-identical files. With a base image (a registry reference every tool
// can pull), each service also gets a `run` step, env and cmd; without one
// (bench:check, which needs no root or registry) the images are copy-only
// on scratch.
import { mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const DEFAULTS = { services: 5, files: 1000, libFiles: 200, seed: 42 };

/**
 * Generates the monorepo in `dir` (which should be empty) and returns what the
 * runner needs: the image names, where their Dockerfiles are, and the file to
 * edit for the "one file changed" scenario.
 */
export function generate(dir, options = {}) {
  const opts = { ...DEFAULTS, ...options };
  const rand = mulberry32(opts.seed);
  const services = Array.from({ length: opts.services }, (_, i) => `svc-${i + 1}`);

  writeTree(join(dir, 'libs/shared'), opts.libFiles, rand);
  for (const svc of services) {
    writeTree(join(dir, 'services', svc, 'src'), opts.files, rand);
    write(join(dir, 'services', svc, 'config.json'), JSON.stringify({ name: svc, port: 8080 }, null, 2) + '\n');
    write(join(dir, 'dockerfiles', `${svc}.Dockerfile`), dockerfile(svc, opts.base));
  }
  write(join(dir, 'build.yaml'), buildYaml(services, opts.base));
  write(join(dir, 'docker-bake.hcl'), bakeFile(services));
  // Only the sources are context; keeps the Dockerfiles and build files out of it.
  write(join(dir, '.dockerignore'), 'dockerfiles\nbuild.yaml\ndocker-bake.hcl\n');

  return {
    dir,
    services,
    dockerfile: (svc) => join(dir, 'dockerfiles', `${svc}.Dockerfile`),
    changeFile: join(dir, 'services', services[0], 'src', 'mod-0', 'file-0.js'),
  };
}

// The image of one service: shared lib, config, sources, then a command that
// reads them. layergraph links every copy (`COPY --link`), so a new base
// image rebuilds only the command; the Dockerfiles use plain COPY because
// Debian 12's BuildKit (docker.io 20.10, Dockerfile frontend without
// `--link`) and Buildah 1.28 both reject `--link`. Before the command, COPY
// and COPY --link give the same layers and the same hits.
const RUN = 'mkdir -p /var/lib/svc && find /app -type f | wc -l > /var/lib/svc/files';

function dockerfile(svc, base) {
  return [
    `FROM ${base ?? 'scratch'}`,
    'COPY libs/shared/ /opt/shared/',
    `COPY services/${svc}/config.json /etc/${svc}/config.json`,
    `COPY --chown=1000:1000 services/${svc}/src/ /app/`,
    ...(base ? [`RUN ${RUN}`, `ENV SERVICE=${svc} PORT=8080`, 'CMD ["/bin/sh", "-c", "cat /var/lib/svc/files"]'] : []),
    '',
  ].join('\n');
}

function buildYaml(services, base) {
  const lines = ['version: 1', 'context: .', 'images:'];
  for (const svc of services) {
    lines.push(`  ${svc}:`);
    if (base) {
      lines.push(
        `    from: ${base}`,
        '    env:',
        `      SERVICE: ${svc}`,
        '      PORT: "8080"',
        '    cmd: ["/bin/sh", "-c", "cat /var/lib/svc/files"]',
      );
    }
    lines.push(
      '    steps:',
      '      - id: shared',
      '        copy: libs/shared/',
      '        to: /opt/shared/',
      '        link: true',
      '      - id: config',
      `        copy: services/${svc}/config.json`,
      `        to: /etc/${svc}/config.json`,
      ...(base ? ['        link: true'] : []),
      '      - id: src',
      `        copy: services/${svc}/src/`,
      '        to: /app/',
      '        chown: "1000:1000"',
      ...(base ? ['        link: true', '      - id: count', `        run: ${RUN}`] : []),
    );
  }
  return lines.join('\n') + '\n';
}

function bakeFile(services) {
  const targets = services.map(
    (svc) => `target "${svc}" {\n  context = "."\n  dockerfile = "dockerfiles/${svc}.Dockerfile"\n  tags = ["bench/${svc}:latest"]\n}\n`,
  );
  const group = `group "default" {\n  targets = [${services.map((s) => `"${s}"`).join(', ')}]\n}\n`;
  return [group, ...targets].join('\n');
}

// `count` source files of 1–6 KB, 20 to a folder, like a real source tree.
function writeTree(root, count, rand) {
  for (let i = 0; i < count; i++) {
    write(join(root, `mod-${Math.floor(i / 20)}`, `file-${i % 20}.js`), sourceText(rand, 1024 + Math.floor(rand() * 5 * 1024)));
  }
}

const WORDS = ['const', 'let', 'return', 'value', 'item', 'count', 'list', 'map', 'user', 'order', 'price', 'total', 'await', 'fetch', 'parse', 'render'];

// Text that looks like code, so gzip ratios are realistic (not all zeros).
function sourceText(rand, size) {
  let out = '';
  while (out.length < size) {
    const n = 3 + Math.floor(rand() * 8);
    const words = Array.from({ length: n }, () => WORDS[Math.floor(rand() * WORDS.length)] + Math.floor(rand() * 1000));
    out += `  ${words.join(' ')};\n`;
  }
  return out.slice(0, size);
}

/**
 * A tree of `bytes` in 1 MiB files, for packing throughput and memory: slices
 * of an 8 MiB pool of code-like text at seeded offsets, so it compresses like
 * source code and writes at disk speed.
 */
export function generateBigTree(dir, bytes, seed = 7) {
  const rand = mulberry32(seed);
  const pool = Buffer.from(sourceText(rand, 8 << 20));
  const fileBytes = 1 << 20;
  const files = Math.ceil(bytes / fileBytes);
  for (let i = 0; i < files; i++) {
    const at = Math.floor(rand() * (pool.length - fileBytes));
    const file = join(dir, `part-${Math.floor(i / 64)}`, `blob-${i % 64}.txt`);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, pool.subarray(at, at + fileBytes));
  }
  return { dir, bytes: files * fileBytes, files };
}

function write(path, text) {
  mkdirSync(dirname(path), { recursive: true });
  writeFileSync(path, text);
}

// Small, well-known seeded PRNG: same seed, same repo, on any machine.
function mulberry32(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const [dir, ...rest] = process.argv.slice(2);
  if (!dir) {
    console.error('usage: node bench/generate.mjs <dir> [--services N] [--files N] [--lib-files N] [--base <image ref>]');
    process.exit(2);
  }
  const num = (flag, dflt) => (rest.includes(flag) ? Number(rest[rest.indexOf(flag) + 1]) : dflt);
  const base = rest.includes('--base') ? rest[rest.indexOf('--base') + 1] : undefined;
  const repo = generate(dir, { services: num('--services', DEFAULTS.services), files: num('--files', DEFAULTS.files), libFiles: num('--lib-files', DEFAULTS.libFiles), base });
  console.log(`wrote ${repo.services.length} services to ${dir}`);
}
