/**
 * The copying snapshotter's differ, for machines without overlayfs: note
 * every entry of a root before the command runs (`indexTree`), then write
 * what changed as the upper directory overlayfs would have left for the same
 * command (`diffTree`). The same packUpper then makes the layer, so both
 * snapshotters give the same digests.
 *
 * What overlayfs does, and so what this copies:
 * - an entry created or changed (content, mode, owner, times, attributes) is
 *   copied up whole, with its metadata and extended attributes;
 * - every directory above a copied entry is copied up too (just the
 *   directory), and so is a directory whose own metadata changed;
 * - a deleted entry that was there before becomes a 0/0 character device
 *   (only the top-most one: the contents of a deleted directory need none);
 * - a directory created where something was deleted (`rm -rf d && mkdir d`,
 *   or a file replaced by a directory) is opaque (`trusted.overlay.opaque=y`)
 *   and holds only what is in it now;
 * - a hard link to a file makes both names copies, linked together.
 *
 * "Changed" is read from lstat: type, mode, owner, size, mtime, ctime, and
 * identity (inode and birth time, as ext4 reuses inode numbers at once).
 * Known differences from overlayfs: a file opened for writing but left as it
 * was is not copied (overlay copies it up), and a write through one name of
 * a file hard-linked before the command shows under every name (overlay
 * breaks the link and changes just that name).
 */
import { execFile } from 'node:child_process';
import type { BigIntStats } from 'node:fs';
import { constants as fsConstants } from 'node:fs';
import { chmod, copyFile, lchown, link, lstat, lutimes, mkdir, readdir, readlink, symlink, utimes } from 'node:fs/promises';
import path from 'node:path';
import { promisify } from 'node:util';
import type { ContentStore } from '../cache/content-store.js';
import type { LayerRef } from '../cache/step-records.js';
import { CacheCorruptError } from '../errors.js';
import { applyLayer } from '../oci/layer-apply.js';
import { isOverlayXattr, readXattrs, setXattrs, type Xattrs } from './xattrs.js';

/** What a tree looked like, entry by entry (by path relative to its root, `/`-separated; the root itself is not in it). */
export interface TreeIndex {
  root: string;
  entries: Map<string, BigIntStats>;
}

/**
 * Notes every entry below `root`, without following symlinks. Returns once
 * the clock has moved past the newest change it saw, so a change made after
 * it cannot get the same (coarse) ctime as before and go unnoticed.
 */
export async function indexTree(root: string): Promise<TreeIndex> {
  const abs = path.resolve(root);
  const entries = new Map<string, BigIntStats>();
  await walk(abs, '', entries);
  let newest = 0n;
  for (const st of entries.values()) if (st.ctimeNs > newest) newest = st.ctimeNs;
  const wait = Number(newest / 1_000_000n) + CLOCK_TICK_MS - Date.now();
  if (wait > 0) await new Promise((resolve) => setTimeout(resolve, wait));
  return { root: abs, entries };
}

/**
 * File times come from the kernel's coarse clock, a tick (up to 10 ms) behind
 * the real one; kernels before 6.13 give every change within a tick the same ctime.
 */
const CLOCK_TICK_MS = 20;

/**
 * Writes into `upperOut` (created; must not exist) what changed in `root`
 * since `before` was taken, in overlayfs upper format. Needs root to write
 * whiteouts, owners and `trusted.*` attributes, as the overlay snapshotter does.
 */
export async function diffTree(before: TreeIndex, root: string, upperOut: string): Promise<void> {
  const now = await indexTree(root);
  const changes = compare(before.entries, now.entries);
  const xattrs = changes.copy.size > 0 ? await readXattrs(now.root) : new Map<string, Xattrs>();
  await writeUpper(now, changes, xattrs, path.resolve(upperOut));
}

/**
 * Applies `layers` (bottom first) into `dest` as an image's root: whiteouts
 * applied, owners and extended attributes kept (as root). The copying
 * snapshotter's "lowers". Each layer's diffID is checked.
 */
export async function materializeRoot(layers: LayerRef[], store: Pick<ContentStore, 'read'>, dest: string): Promise<void> {
  const isRoot = process.getuid?.() === 0;
  await mkdir(dest, { recursive: true });
  for (const layer of layers) {
    const { diffId } = await applyLayer(store.read(layer.digest), dest, { xattrs: isRoot, layer: { digest: layer.digest } });
    if (diffId !== layer.diffId) {
      throw new CacheCorruptError(`layer ${layer.digest} unpacked to diffID ${diffId}, expected ${layer.diffId}`);
    }
  }
}

interface Changes {
  /** entries to copy into the upper; true for a directory that must be opaque */
  copy: Map<string, boolean>;
  /** deleted entries: whiteouts */
  deleted: string[];
}

function compare(before: Map<string, BigIntStats>, now: Map<string, BigIntStats>): Changes {
  const copy = new Map<string, boolean>();
  /** directories that are new or recreated: everything below them is new too */
  const fresh = new Set<string>();

  // Paths sort parents first, so a fresh directory is known before its children.
  for (const rel of [...now.keys()].sort(byPath)) {
    const st = now.get(rel)!;
    const was = before.get(rel);
    if (fresh.has(parentOf(rel)) || !was) {
      copy.set(rel, false);
      if (st.isDirectory()) fresh.add(rel);
    } else if (!sameIdentity(was, st)) {
      // overlayfs marks any directory made where a whiteout was as opaque.
      copy.set(rel, st.isDirectory());
      if (st.isDirectory()) fresh.add(rel);
    } else if (changed(was, st)) {
      copy.set(rel, false);
    }
  }

  // Linking to a file copies the target up, and the link is made in the upper.
  const byInode = new Map<string, string[]>();
  for (const [rel, st] of now) {
    if (st.isFile() && st.nlink > 1n) byInode.set(inodeKey(st), [...(byInode.get(inodeKey(st)) ?? []), rel]);
  }
  for (const rel of [...copy.keys()]) {
    const st = now.get(rel)!;
    if (!st.isFile() || st.nlink <= 1n) continue;
    for (const other of byInode.get(inodeKey(st)) ?? []) if (!copy.has(other)) copy.set(other, false);
  }

  const deleted: string[] = [];
  for (const rel of before.keys()) {
    if (now.has(rel)) continue;
    const parent = parentOf(rel);
    // Below a deleted, replaced or new directory no whiteout is needed: only the top-most deleted entry gets one.
    if (parent !== '' && (!now.get(parent)?.isDirectory() || fresh.has(parent))) continue;
    deleted.push(rel);
  }

  // overlayfs copies up every directory above what it copies up or deletes.
  for (const rel of [...copy.keys(), ...deleted]) {
    for (let p = parentOf(rel); p !== '' && !copy.has(p); p = parentOf(p)) copy.set(p, false);
  }
  return { copy, deleted };
}

/** Same file: not replaced by another that happens to have its inode number. */
function sameIdentity(a: BigIntStats, b: BigIntStats): boolean {
  return (
    a.dev === b.dev && a.ino === b.ino && a.birthtimeNs === b.birthtimeNs && (a.mode & BigInt(fsConstants.S_IFMT)) === (b.mode & BigInt(fsConstants.S_IFMT))
  );
}

function changed(a: BigIntStats, b: BigIntStats): boolean {
  if (a.mode !== b.mode || a.uid !== b.uid || a.gid !== b.gid || a.size !== b.size || a.mtimeNs !== b.mtimeNs || a.rdev !== b.rdev) {
    return true;
  }
  if (a.ctimeNs === b.ctimeNs) return false;
  // Only the link count moved (another name of the file was removed or
  // added): overlayfs copies nothing for that; a new link is handled apart.
  return a.nlink === b.nlink || !b.isFile();
}

async function writeUpper(now: TreeIndex, changes: Changes, xattrs: Map<string, Xattrs>, upper: string): Promise<void> {
  await mkdir(upper);
  const isRoot = process.getuid?.() === 0;
  const firstCopyOf = new Map<string, string>();
  const attrs: Array<[string, Xattrs]> = [];
  const dirs: Array<{ dst: string; st: BigIntStats }> = [];

  for (const rel of [...changes.copy.keys()].sort(byPath)) {
    const st = now.entries.get(rel)!;
    const src = path.join(now.root, rel);
    const dst = path.join(upper, rel);
    const own = new Map([...(xattrs.get(rel) ?? [])].filter(([name]) => !isOverlayXattr(name)));
    if (st.isDirectory()) {
      await mkdir(dst, { mode: 0o700 });
      if (changes.copy.get(rel)) own.set('trusted.overlay.opaque', Buffer.from('y'));
      dirs.push({ dst, st });
    } else if (st.isFile()) {
      const first = st.nlink > 1n ? firstCopyOf.get(inodeKey(st)) : undefined;
      if (first !== undefined) {
        await link(first, dst);
        continue;
      }
      if (st.nlink > 1n) firstCopyOf.set(inodeKey(st), dst);
      // A reflink where the file system has them, else a copy.
      await copyFile(src, dst, fsConstants.COPYFILE_FICLONE);
    } else if (st.isSymbolicLink()) {
      await symlink(await readlink(src), dst);
    } else if (st.isFIFO() || st.isCharacterDevice() || st.isBlockDevice()) {
      const kind = st.isFIFO() ? ['p'] : [st.isCharacterDevice() ? 'c' : 'b', String(major(st.rdev)), String(minor(st.rdev))];
      await mknod(dst, kind);
    } else {
      continue; // sockets: no layer can hold them
    }
    if (isRoot) await lchown(dst, Number(st.uid), Number(st.gid));
    // A directory's mode waits until its children are in: it may be read-only.
    if (!st.isSymbolicLink() && !st.isDirectory()) await chmod(dst, Number(st.mode & 0o7777n));
    if (!st.isDirectory()) await setTimes(dst, st);
    if (own.size > 0) attrs.push([dst, own]);
  }
  for (const rel of changes.deleted) await mknod(path.join(upper, rel), ['c', '0', '0']);

  // After chown, which clears file capabilities.
  await setXattrs(attrs);
  // Directories last, children first: writing their children changed their times.
  for (const { dst, st } of dirs.reverse()) {
    await chmod(dst, Number(st.mode & 0o7777n));
    await setTimes(dst, st);
  }
}

async function walk(absDir: string, relDir: string, out: Map<string, BigIntStats>): Promise<void> {
  const names = await readdir(absDir, { encoding: 'buffer' });
  const entries = names.map((raw) => {
    const name = raw.toString('utf8');
    if (!Buffer.from(name, 'utf8').equals(raw)) {
      throw new Error(`${path.join(absDir, raw.toString('latin1'))}: file name is not valid UTF-8; layers need UTF-8 names`);
    }
    return { name, abs: path.join(absDir, name), rel: relDir === '' ? name : `${relDir}/${name}` };
  });
  const stats = await Promise.all(entries.map((e) => lstat(e.abs, { bigint: true })));
  const subdirs: Array<Promise<void>> = [];
  entries.forEach((e, i) => {
    const st = stats[i]!;
    out.set(e.rel, st);
    if (st.isDirectory()) subdirs.push(walk(e.abs, e.rel, out));
  });
  await Promise.all(subdirs);
}

async function setTimes(dst: string, st: BigIntStats): Promise<void> {
  const atime = Number(st.atimeNs / 1000n) / 1e6;
  const mtime = Number(st.mtimeNs / 1000n) / 1e6;
  await (st.isSymbolicLink() ? lutimes(dst, atime, mtime) : utimes(dst, atime, mtime));
}

/** Node has no mknod(2); mknod(1) does the same. Device nodes (and so whiteouts) need root. */
async function mknod(dst: string, kind: string[]): Promise<void> {
  try {
    await promisify(execFile)('mknod', [dst, ...kind]);
  } catch (err) {
    const stderr = String((err as { stderr?: unknown }).stderr ?? '').trim();
    const what = kind[0] === 'c' && kind[1] === '0' && kind[2] === '0' ? 'a whiteout for a deleted entry' : 'a device node';
    throw new Error(`${dst}: cannot create ${what}: ${stderr || String(err)} (the copy snapshotter needs root for that)`, { cause: err });
  }
}

function inodeKey(st: BigIntStats): string {
  return `${st.dev}:${st.ino}`;
}

/** glibc's gnu_dev_major/gnu_dev_minor. */
function major(rdev: bigint): number {
  return Number(((rdev >> 8n) & 0xfffn) | ((rdev >> 32n) & ~0xfffn));
}

function minor(rdev: bigint): number {
  return Number((rdev & 0xffn) | ((rdev >> 12n) & ~0xffn));
}

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i === -1 ? '' : rel.slice(0, i);
}

/** Parents before children, whatever the names: compare component by component. */
function byPath(a: string, b: string): number {
  const pa = a.split('/');
  const pb = b.split('/');
  for (let i = 0; i < Math.min(pa.length, pb.length); i++) {
    if (pa[i] !== pb[i]) return pa[i]! < pb[i]! ? -1 : 1;
  }
  return pa.length - pb.length;
}
