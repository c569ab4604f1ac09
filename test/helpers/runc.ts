/**
 * Running a built image with tools we did not write: umoci unpacks it into an
 * OCI runtime bundle (rootfs + config.json made from the image config), runc
 * runs it. Root only.
 */
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { tool } from './tools.js';

export interface ContainerResult {
  stdout: string;
  stderr: string;
  exitCode: number;
}

/**
 * Unpacks `image` of the OCI layout `layout` into `bundle` (which must not
 * exist) and runs its entrypoint/cmd to completion with `runc run`, without a
 * terminal. The container is deleted afterwards, whatever happened.
 */
export async function runImage(layout: string, image: string, bundle: string): Promise<ContainerResult> {
  await tool('umoci', ['unpack', '--image', `${layout}:${image}`, bundle]);
  const configFile = path.join(bundle, 'config.json');
  const config = JSON.parse(await readFile(configFile, 'utf8')) as { process: { terminal?: boolean } };
  // umoci writes a config for an interactive run; ours has no terminal to give it.
  config.process.terminal = false;
  await writeFile(configFile, JSON.stringify(config, null, 2));
  const id = `lg-test-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    return await new Promise<ContainerResult>((resolve) => {
      execFile('runc', ['run', '--bundle', bundle, id], { timeout: 30_000 }, (err, stdout, stderr) => {
        const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? ((err as { code: number }).code) : -1) : 0;
        resolve({ stdout, stderr, exitCode: code });
      });
    });
  } finally {
    await tool('runc', ['delete', '-f', id]).catch(() => undefined);
  }
}
