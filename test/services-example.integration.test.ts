/**
 * The example services, as its README says to use them: prepare.sh copies
 * the host's busybox into the context, layergraph builds every image, and
 * runc runs them (umoci unpacks each into a runtime bundle). Root only.
 */
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasStaticBusybox } from './helpers/busybox.js';
import { REPO, runCli } from './helpers/cli.js';
import { runImage } from './helpers/runc.js';
import { hasTool } from './helpers/tools.js';

const ROOT = process.getuid?.() === 0;
const READY = ROOT && hasStaticBusybox() && hasTool('umoci') && hasTool('runc');

interface Report {
  steps: Array<{ image: string; id: string; status: string; startMs: number; durationMs: number; layer: { digest: string } | null }>;
}

let work: string;

beforeAll(async () => {
  if (READY) work = await mkdtemp(path.join(os.tmpdir(), 'lg-services-'));
});

afterAll(async () => {
  if (work) await rm(work, { recursive: true, force: true });
});

describe.skipIf(!READY)('example services', () => {
  it('builds with the busybox prepare.sh copies, and its images run with runc', async () => {
    const ctx = path.join(work, 'ctx');
    await cp(path.join(REPO, 'examples', 'services'), ctx, {
      recursive: true,
      filter: (src) => path.basename(src) !== 'busybox',
    });
    const prepared = await promisify(execFile)('sh', [path.join(ctx, 'prepare.sh')]);
    expect(prepared.stdout).toMatch(/^copied .*busybox/);

    const out = path.join(work, 'out');
    const reportFile = path.join(work, 'report.json');
    const args = ['run', path.join(ctx, 'build.yaml'), '--out', out, '--cache-dir', path.join(work, 'cache'), '--report', reportFile, '--progress', 'plain'];
    const res = await runCli(args);
    expect(res.exitCode, res.stderr + res.stdout).toBe(0);
    const report = JSON.parse(await readFile(reportFile, 'utf8')) as Report;
    const step = (image: string, id: string) => report.steps.find((s) => s.image === image && s.id === id)!;
    // the linked lib step: one layer for both services
    expect(step('api', 'lib').layer!.digest).toBe(step('worker', 'lib').layer!.digest);
    // the selfcheck ran (its output streams by) and changed nothing
    expect(res.stderr).toContain('api/selfcheck | [api] config ok: port 8080, 1 routes');
    expect(step('api', 'selfcheck').layer).toBeNull();

    const api = await runImage(out, 'api', path.join(work, 'api-bundle'));
    expect(api, api.stderr).toMatchObject({
      exitCode: 0,
      stdout: '[api] listening on :8080 as svc, data in /home/svc/api\n[api] GET /health -> ok\n',
    });
    const worker = await runImage(out, 'worker', path.join(work, 'worker-bundle'));
    expect(worker, worker.stderr).toMatchObject({
      exitCode: 0,
      stdout:
        '[worker] job 1: resize image-1.png\n[worker] job 2: resize image-2.png\n[worker] job 3: resize image-3.png\n' +
        '[worker] done: 3 jobs as svc, concurrency 2\n',
    });

    const again = await runCli(args);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(again.stdout).toMatch(/(\d+)\/\1 steps cached/);
  });
});
