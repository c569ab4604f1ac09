// The busybox base image every tool builds on, served by a private
// `docker-registry` on 127.0.0.1 so that all three pull it the same way.
// Two versions: v1, and v2 = v1 plus one file, for the "base image changed"
// scenario. The layers are GNU tar archives of the host's busybox-static, the
// OCI layout around them is written here, and skopeo pushes it. (umoci was
// the first choice, but its `insert` wrote a tar that stops mid-entry for a
// small file, which GNU tar and layergraph both refuse.)
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chmodSync, copyFileSync, mkdirSync, openSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { exec, which } from './exec.mjs';

const APPLETS = ['sh', 'find', 'wc', 'mkdir', 'cat', 'ls'];

/** Starts a registry, builds both versions, pushes v1 as `latest`; `use(v)` retags. */
export async function startBaseImages(work) {
  for (const tool of ['docker-registry', 'skopeo', 'busybox', 'tar', 'gzip']) {
    if (!which(tool)) throw new Error(`the benchmark needs ${tool} (apt-get install docker-registry skopeo busybox-static)`);
  }
  const registry = await startRegistry(join(work, 'registry'));
  const layout = join(work, 'base-layout');
  await buildBase(work, layout);
  const ref = `127.0.0.1:${registry.port}/bench/base:latest`;
  const use = (version) => exec('skopeo', ['copy', '-q', '--dest-tls-verify=false', `oci:${layout}:${version}`, `docker://${ref}`]);
  await use('v1');
  return { ref, use, close: registry.close };
}

async function buildBase(work, layout) {
  const root = join(work, 'base-root');
  mkdirSync(join(root, 'bin'), { recursive: true });
  mkdirSync(join(root, 'etc'), { recursive: true });
  copyFileSync(which('busybox'), join(root, 'bin/busybox'));
  chmodSync(join(root, 'bin/busybox'), 0o755);
  for (const a of APPLETS) symlinkSync('busybox', join(root, 'bin', a));
  writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  const extra = join(work, 'base-extra');
  mkdirSync(join(extra, 'etc'), { recursive: true });
  writeFileSync(join(extra, 'etc/base-release'), '2\n');

  const blobs = join(layout, 'blobs/sha256');
  mkdirSync(blobs, { recursive: true });
  const put = (bytes) => {
    const hex = createHash('sha256').update(bytes).digest('hex');
    writeFileSync(join(blobs, hex), bytes);
    return { digest: `sha256:${hex}`, size: bytes.length };
  };
  const layer = async (dir, names) => {
    const tar = join(work, 'layer.tar');
    await exec('tar', ['--sort=name', '--owner=0', '--group=0', '--numeric-owner', '--mtime=@0', '-C', dir, '-cf', tar, ...names]);
    const diffId = `sha256:${createHash('sha256').update(readFileSync(tar)).digest('hex')}`;
    await exec('gzip', ['-n', '-f', tar]);
    return { diffId, blob: put(readFileSync(`${tar}.gz`)) };
  };
  const layers = [await layer(root, ['bin', 'etc']), await layer(extra, ['etc/base-release'])];
  const image = (n) => {
    const config = put(Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', config: { Env: ['PATH=/bin'] },
      rootfs: { type: 'layers', diff_ids: layers.slice(0, n).map((l) => l.diffId) },
      // Buildah wants one history entry per layer.
      history: layers.slice(0, n).map((_, i) => ({ created: '1970-01-01T00:00:00Z', created_by: `bench base layer ${i + 1}` })) })));
    const manifest = put(Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: 'application/vnd.oci.image.manifest.v1+json',
      config: { mediaType: 'application/vnd.oci.image.config.v1+json', ...config },
      layers: layers.slice(0, n).map((l) => ({ mediaType: 'application/vnd.oci.image.layer.v1.tar+gzip', ...l.blob })) })));
    return { mediaType: 'application/vnd.oci.image.manifest.v1+json', ...manifest, annotations: { 'org.opencontainers.image.ref.name': `v${n}` } };
  };
  writeFileSync(join(layout, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  writeFileSync(join(layout, 'index.json'), JSON.stringify({ schemaVersion: 2, manifests: [image(1), image(2)] }));
}

async function startRegistry(dir) {
  mkdirSync(dir, { recursive: true });
  const port = await freePort();
  const config = join(dir, 'config.yml');
  writeFileSync(config, `version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: ${join(dir, 'data')}\nhttp:\n  addr: 127.0.0.1:${port}\n`);
  const logPath = join(dir, 'registry.log');
  const child = spawn('docker-registry', ['serve', config], { stdio: ['ignore', 'ignore', openSync(logPath, 'w')] });
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null) break;
    if (await fetch(`http://127.0.0.1:${port}/v2/`).then((r) => r.ok, () => false)) {
      return { port, close: () => child.kill('SIGTERM') };
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  child.kill('SIGTERM');
  throw new Error(`docker-registry did not start: ${readFileSync(logPath, 'utf8').trim().split('\n').at(-1)}`);
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer().listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on('error', reject);
  });
}
