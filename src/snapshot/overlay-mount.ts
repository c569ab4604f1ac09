/**
 * Mounting and unmounting overlayfs, through util-linux `mount`/`umount`
 * (Node has no mount(2)), and finding mounts a killed run left behind.
 */
import { execFile, execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, symlink } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import { LayergraphError } from '../errors.js';
import { faultPoint } from '../util/fault-point.js';
import { onForcedExit } from '../util/forced-exit.js';

const run = promisify(execFile);

export interface OverlayDirs {
  /** Lower directories, nearest (top-most) first. */
  lowers: string[];
  upper: string;
  work: string;
  target: string;
}

/** Forced-exit cleanups of the mounts this process holds, by target. */
const held = new Map<string, () => void>();

/**
 * Mount `dirs.target`. Options keep the upper a plain changeset any reader
 * understands: no metacopy (an upper file without its data), no redirects (a
 * renamed lower directory recorded as an xattr), no inode index.
 */
export async function mountOverlay(dirs: OverlayDirs): Promise<void> {
  // The option string is limited to a page, and a cache path per lower fills
  // it at about 60 layers: name each lower by a short symlink (as Docker's
  // overlay2 does), relative to where the mount helper runs.
  const links = await mkdtemp(path.join(path.dirname(path.resolve(dirs.target)), 'lowers-'));
  await Promise.all(dirs.lowers.map((l, i) => symlink(path.resolve(l), path.join(links, i.toString(36)))));
  const lowers = dirs.lowers.map((_, i) => i.toString(36)).join(':');
  const options = `lowerdir=${lowers},upperdir=${dirs.upper},workdir=${dirs.work},index=off,redirect_dir=off,metacopy=off`;
  try {
    await run('mount', ['-t', 'overlay', 'overlay', '-o', options, dirs.target], { cwd: links });
    held.set(path.resolve(dirs.target), onForcedExit(() => execFileSync('umount', ['-l', dirs.target], { stdio: 'ignore' })));
    faultPoint('mount');
  } catch (err) {
    const e = err as { stderr?: string; message: string };
    const many = dirs.lowers.length > 100 ? ` (with ${dirs.lowers.length} layers below; overlayfs takes at most 500)` : '';
    throw new LayergraphError('STEP_FAILED', `cannot mount overlayfs on ${dirs.target}${many}: ${(e.stderr || e.message).trim()}`, { cause: err });
  } finally {
    // The kernel resolved them at mount time.
    await rm(links, { recursive: true, force: true });
  }
}

/** Unmount `target`; a mount still busy after a few tries is detached lazily so nothing is left mounted. */
export async function unmount(target: string): Promise<void> {
  held.get(path.resolve(target))?.();
  held.delete(path.resolve(target));
  for (let attempt = 0; ; attempt++) {
    try {
      await run('umount', [target]);
      return;
    } catch (err) {
      if (!(await isMountPoint(target))) return;
      if (attempt < 5) {
        await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
        continue;
      }
      await run('umount', ['-l', target]).catch(() => {
        throw new LayergraphError('STEP_FAILED', `cannot unmount ${target}: ${(err as { stderr?: string }).stderr ?? err}`);
      });
      return;
    }
  }
}

/** Mount points at or below `dir`, deepest first (the order to unmount them in). */
export async function mountsUnder(dir: string): Promise<string[]> {
  const prefix = path.resolve(dir);
  const info = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '');
  const points = info
    .split('\n')
    .map((line) => line.split(' ')[4])
    .filter((p): p is string => p !== undefined)
    .map(unescapeMountPath)
    .filter((p) => p === prefix || p.startsWith(`${prefix}/`));
  return points.sort((a, b) => b.length - a.length);
}

/** Whether this process may mount overlayfs here: tried once, on a scratch mount under `scratchParent`. */
export async function canMountOverlay(scratchParent: string): Promise<boolean> {
  await mkdir(scratchParent, { recursive: true });
  const dir = await mkdtemp(path.join(scratchParent, 'probe-'));
  const d = (n: string) => path.join(dir, n);
  try {
    await Promise.all(['lower', 'upper', 'work', 'merged'].map((n) => mkdir(d(n))));
    await mountOverlay({ lowers: [d('lower')], upper: d('upper'), work: d('work'), target: d('merged') });
    await unmount(d('merged'));
    return true;
  } catch {
    return false;
  } finally {
    await rm(dir, { recursive: true, force: true }).catch(() => undefined);
  }
}

async function isMountPoint(target: string): Promise<boolean> {
  return (await mountsUnder(target)).includes(path.resolve(target));
}

/** mountinfo escapes space, tab, newline and backslash as octal. */
function unescapeMountPath(p: string): string {
  return p.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)));
}
