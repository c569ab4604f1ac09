/**
 * External tools our output is checked with (umoci, skopeo, oci-image-tool).
 * Locally a missing tool skips the checks that need it; under CI=true it is a
 * failure, so a green CI always means the independent checks ran.
 */
import { execFileSync, execFile } from 'node:child_process';
import { promisify } from 'node:util';

const run = promisify(execFile);

export function hasTool(name: string): boolean {
  try {
    execFileSync('sh', ['-c', `command -v ${name}`], { stdio: 'ignore' });
    return true;
  } catch {
    if (process.env.CI === 'true') throw new Error(`${name} is not installed, and CI=true makes that a failure (.ci/run installs it)`);
    return false;
  }
}

export async function tool(name: string, args: string[], cwd?: string): Promise<string> {
  try {
    const { stdout } = await run(name, args, { cwd, maxBuffer: 64 << 20 });
    return stdout;
  } catch (err) {
    const e = err as { stderr?: string; stdout?: string; message: string };
    throw new Error(`${name} ${args.join(' ')} failed: ${e.stderr || e.stdout || e.message}`);
  }
}
