/**
 * Applying an OCI layer (gzip or plain tar) onto a directory, by the image
 * spec's changeset rules, without letting any entry touch anything outside
 * that directory.
 *
 * How nothing gets out. Entry names are checked and cleaned first
 * (layer-headers.ts: `..` out of the root is refused, a leading `/` dropped).
 * Every directory an entry is written into is resolved the way the kernel
 * would inside a chroot at the root: symlinks followed, an absolute target
 * starting again at the root, `..` stopping there; the entry's own name is
 * never followed. What is on disk is known from an in-memory tree of the
 * directory (what this layer made, and what it found, each path looked at
 * once), so resolving costs no system call for a path seen before. The last
 * step never writes through what is there: files are opened O_EXCL|O_NOFOLLOW,
 * and anything in the way is removed first. Only we write the tree while a
 * layer is applied, which is what makes the in-memory view true.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  type Dirent,
  chmodSync,
  closeSync,
  constants as fsConstants,
  fchmodSync,
  fchownSync,
  futimesSync,
  lchownSync,
  linkSync,
  lstatSync,
  lutimesSync,
  mkdirSync,
  openSync,
  readdirSync,
  readlinkSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeSync,
} from 'node:fs';
import { mkdir, realpath } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { promisify } from 'node:util';
import tar from 'tar-stream';
import { LayergraphError } from '../errors.js';
import { isOverlayXattr, setXattrs } from '../snapshot/xattrs.js';
import { isMissing } from '../util/fs-read.js';
import { checkEntry, describeLayer, EntryRefused, layerError, show, streamProblem, type CheckedEntry, type Header } from './layer-headers.js';
import { LayerLimitError, layerLimits, uncompressed, type LayerLimits } from './layer-stream.js';
import { PaxXattrTap } from './pax-xattrs.js';

export { uncompressed } from './layer-stream.js';

export interface ApplyOptions {
  /** chown entries to their uid/gid (only works as root); default: only when process.getuid?.() === 0 */
  preserveOwner?: boolean;
  /**
   * Keep the tree usable by us without root: directories get at least u+rwx
   * and files u+rw on disk, so a later layer can write into a 0555 directory
   * and a reader can open a 0000 file. The mode each such entry really has is
   * recorded here (keyed by path relative to the root; an entry written with
   * its exact mode, or removed, is removed), across as many layers as share the map.
   */
  realModes?: Map<string, number>;
  /**
   * Set the extended attributes in PAX `SCHILY.xattr.*` records (with the
   * `attr` package's setfattr, after the entries are written). `trusted.*`
   * and `security.*` ones need root. Default: ignored.
   */
  xattrs?: boolean;
  /**
   * What whiteouts become. `apply` (default): the image spec's changeset
   * rules, `.wh.<name>` deletes `<name>` below and `.wh..wh..opq` empties its
   * directory. `overlay`: the layer is written as an overlayfs lower directory
   * (apply it alone into an empty directory): `.wh.<name>` becomes a 0/0
   * character device `<name>` and `.wh..wh..opq` sets
   * `trusted.overlay.opaque=y` on its directory. Needs root.
   */
  whiteouts?: 'apply' | 'overlay';
  /** Which layer this is, for errors: its digest, and the image it comes from when known. */
  layer?: { digest?: string; image?: string };
  /** What the blob may decompress to (layer-stream.ts); default: the environment's limits. */
  limits?: LayerLimits;
}

export interface ApplyResult {
  /** "sha256:<hex>" of the uncompressed tar, for the caller to check against the manifest's diff_id */
  diffId: string;
}

// Layers from base images (registries, layouts, archives) and from `run`
// steps (their overlay uppers) bring whiteouts, opaque directories,
// hardlinks and device nodes; the safety rules hold for all of them.

/**
 * Extracts `gzipOrTar` into `destDir` (created if missing). Entries are
 * applied as they stream; on error the directory is left partly applied, so
 * callers apply into a scratch directory they can throw away.
 *
 * A layer that breaks the rules (layer-headers.ts), that crosses the limits
 * (layer-stream.ts) or that does not parse is refused with an
 * InvalidImageError naming the layer and the entry. Running out of disk
 * space is not the layer's fault: that error is passed on as it is.
 *
 * Extended attributes (PAX `SCHILY.xattr.*`) are applied only when asked
 * (`opts.xattrs`).
 */
export async function applyLayer(gzipOrTar: Readable, destDir: string, opts: ApplyOptions = {}): Promise<ApplyResult> {
  const layer = describeLayer(opts.layer);
  const limits = opts.limits ?? layerLimits();
  await mkdir(destDir, { recursive: true });
  // The tree is resolved from its real path, so a symlinked destDir cannot
  // make "inside" mean two different places.
  const root = await realpath(destDir);
  const isRoot = process.getuid?.() === 0;
  const overlay = opts.whiteouts === 'overlay';
  if (overlay && !isRoot) {
    throw new Error(`cannot unpack a layer as an overlay lower into ${destDir}: whiteout devices and trusted.overlay.* attributes need root`);
  }
  const applier = new Applier(root, opts.preserveOwner ?? isRoot, isRoot, opts.realModes, overlay);

  const hash = createHash('sha256');
  const extract = tar.extract();
  let tarBytes: Readable;
  try {
    tarBytes = await uncompressed(gzipOrTar, limits);
  } catch (err) {
    throw refusal(layer, err, { after: undefined });
  }
  // tar-stream decodes PAX values as UTF-8, which mangles binary attribute values; this reads them from the bytes.
  const tap = opts.xattrs ? new PaxXattrTap() : undefined;
  const feeding = feed(tarBytes, extract, (chunk) => {
    hash.update(chunk);
    tap?.push(chunk);
  });

  let current: string | undefined;
  let last: string | undefined;
  try {
    for await (const entry of extract) {
      const header = entry.header as Header;
      current = header.name;
      await applier.apply(header, entry, tap);
      last = current;
      current = undefined;
    }
    await feeding;
    await applier.finish();
  } catch (err) {
    extract.destroy();
    tarBytes.destroy();
    await feeding.catch(() => {});
    throw refusal(layer, err, current !== undefined ? { entry: current } : { after: last });
  }
  return { diffId: `sha256:${hash.digest('hex')}` };
}

/**
 * The system running out of something, or the blob itself going missing:
 * not the layer's content, so passed on as it is (callers name the place).
 */
const PASSED_ON = new Set(['ENOSPC', 'EDQUOT', 'EROFS', 'EIO', 'EMFILE', 'ENFILE', 'ENOMEM', 'ENOENT']);

/** What to throw for `err`, met while applying `layer` at `where`. */
function refusal(layer: string, err: unknown, where: { entry: string } | { after: string | undefined }): unknown {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (code && PASSED_ON.has(code)) return err;
  if (err instanceof LayergraphError) return err;
  if (err instanceof EntryRefused || err instanceof LayerLimitError) return layerError(layer, err, where);
  return layerError(layer, streamProblem(err), where);
}

type EntryStream = AsyncIterable<unknown> & { resume(): unknown };

/** What the applier knows is at a path under the root. */
type Node = DirNode | LinkNode | { kind: 'other' };
interface DirNode {
  kind: 'dir';
  children: Map<string, Node>;
  /** Every child is in `children`: a directory we made, or one we have read. */
  complete: boolean;
}
interface LinkNode {
  kind: 'link';
  /** Read when first needed. */
  target: string | undefined;
}

/** Linux gives up after 40 nested links; we allow more but still stop loops. */
const MAX_SYMLINKS = 255;

class Applier {
  private readonly top: DirNode = newDir(false);
  private readonly prefix: string;
  /** Paths (relative to root, symlinks resolved) this layer created or replaced. */
  private readonly written = new Set<string>();
  /** Every ancestor of a path in `written`: directories that hold something of this layer. */
  private readonly holdsWritten = new Set<string>();
  /** Directory metadata to set last, keyed by relative path. */
  private readonly dirMeta = new Map<string, { mode: number; mtime: Date }>();
  /** Extended attributes to set last (after chown, which clears file capabilities), keyed by relative path. */
  private readonly xattrs = new Map<string, Map<string, Buffer>>();
  /**
   * resolveDir's answers for directories that exist, by the name asked for.
   * Entries come grouped by directory, so most are answered here. Only a
   * removal can change an answer (a new entry lands where nothing was, and a
   * cached path runs only through things that were there): `remove` clears it.
   */
  private readonly resolved = new Map<string, { rel: string; node: DirNode }>();

  constructor(
    private readonly root: string,
    private readonly preserveOwner: boolean,
    private readonly mayMknod: boolean,
    private readonly realModes: Map<string, number> | undefined,
    /** Write overlay-format whiteouts instead of applying them (see ApplyOptions.whiteouts). */
    private readonly overlay: boolean,
  ) {
    this.prefix = root.endsWith('/') ? root : `${root}/`;
  }

  async apply(header: Header, body: EntryStream, tap: PaxXattrTap | undefined): Promise<void> {
    const entry = checkEntry(header);
    // Taken for every entry, in order, so the tap stays in step with the tar.
    const xattrs = tap?.take(header.name);
    await this.applyEntry(entry, header, body, xattrs);
    // tar-stream stalls until every entry's body has been read. (After an
    // error the extractor is destroyed instead, so no drain then.)
    await drain(body);
  }

  /** Directory modes and times go last: a read-only directory must not stop its children being written, and writing children changes the directory's mtime. */
  async finish(): Promise<void> {
    const attrs: Array<[string, Map<string, Buffer>]> = [];
    for (const [rel, map] of this.xattrs) {
      if (this.nodeAt(rel)) attrs.push([this.abs(rel), map]);
    }
    await setXattrs(attrs);
    // Deepest first, so a parent's mode (say 0500) is set after its children are done.
    const rels = [...this.dirMeta.keys()].sort((a, b) => b.length - a.length);
    for (const rel of rels) {
      const meta = this.dirMeta.get(rel)!;
      if (this.nodeAt(rel)?.kind !== 'dir') continue;
      const host = this.abs(rel);
      // chmod follows symlinks: make sure, on disk, that this is the directory we made.
      if (!lstatSync(host).isDirectory()) continue;
      chmodSync(host, this.diskMode(rel, meta.mode, 0o700));
      utimesSync(host, meta.mtime, meta.mtime);
    }
  }

  private async applyEntry(entry: CheckedEntry, header: Header, body: EntryStream, xattrs: Map<string, Buffer> | undefined): Promise<void> {
    if (entry.rel === '') return; // "./": the destination itself, which we own
    const w = entry.whiteout;
    if (w) {
      if ('ignored' in w) return;
      if ('opaque' in w) return this.overlay ? this.markOpaque(entry.dir) : this.opaque(entry.dir);
      return this.overlay ? this.whiteoutDevice(entry) : this.whiteout(entry);
    }

    const parent = this.resolveDir(entry.dir, true)!;
    const rel = join(parent.rel, entry.base);
    const host = this.abs(rel);
    const type = header.type === 'contiguous-file' ? 'file' : header.type;
    let existing = this.child(parent.node, parent.rel, entry.base);
    if (existing && !(existing.kind === 'dir' && type === 'directory')) {
      // Never write into what is there: it may be a symlink to anywhere.
      this.remove(parent.node, entry.base, rel, existing);
      existing = undefined;
    }

    const mode = header.mode & 0o7777;
    const { uid, gid, mtime } = paxOverrides(header);
    let node: Node = { kind: 'other' };

    switch (type) {
      case 'directory':
        if (existing) node = existing;
        else {
          mkdirSync(host, { mode: 0o700 });
          // Whatever the umask: we write its children before its own mode is set (in finish).
          chmodSync(host, 0o700);
          node = newDir(true);
        }
        if (this.preserveOwner) lchownSync(host, uid, gid);
        this.dirMeta.set(rel, { mode, mtime });
        break;
      case 'file': {
        const fd = openSync(host, fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW, 0o600);
        try {
          for await (const chunk of body) writeAll(fd, chunk as Buffer);
          if (this.preserveOwner) fchownSync(fd, uid, gid);
          // After chown, which clears setuid/setgid.
          fchmodSync(fd, this.diskMode(rel, mode, 0o600));
          futimesSync(fd, mtime, mtime);
        } finally {
          closeSync(fd);
        }
        break;
      }
      case 'symlink':
        symlinkSync(header.linkname!, host);
        if (this.preserveOwner) lchownSync(host, uid, gid);
        lutimesSync(host, mtime, mtime);
        node = { kind: 'link', target: header.linkname! };
        break;
      case 'link': {
        const target = this.hardlinkTarget(entry.linkRel!, header);
        // link(2) does not follow a symlink at the target, so a link to an
        // escaping symlink only copies the symlink.
        linkSync(this.abs(target.rel), host);
        if (target.node.kind === 'link') node = { kind: 'link', target: target.node.target };
        break;
      }
      case 'character-device':
      case 'block-device':
      case 'fifo':
        // A layer's device node is refused, not left out, where it cannot be made: the image would not be the one asked for.
        await this.mknod(host, type, header.devmajor ?? 0, header.devminor ?? 0);
        if (this.preserveOwner) lchownSync(host, uid, gid);
        chmodSync(host, mode);
        utimesSync(host, mtime, mtime);
        break;
      default:
        throw new EntryRefused(`it has an entry type layergraph does not apply (${String(header.type)})`);
    }
    parent.node.children.set(entry.base, node);
    this.markWritten(rel);
    // Linux refuses user.* attributes on symlinks (EPERM), as GNU tar finds: leave them out.
    // overlayfs's own markers are ours to write (from whiteouts), never a
    // layer's: a foreign layer could otherwise hide or redirect lower content.
    const attrs = [...(xattrs ?? [])].filter(([name]) => (type !== 'symlink' || !name.startsWith('user.')) && !isOverlayXattr(name));
    if (attrs.length > 0) {
      // A hard link shares its target's inode, so its attributes land there too.
      const prior = type === 'directory' ? this.xattrs.get(rel) : undefined;
      this.xattrs.set(rel, new Map([...(prior ?? []), ...attrs]));
    }
  }

  /** The existing, non-directory path a hard link names, resolved inside the root. */
  private hardlinkTarget(linkRel: string, header: Header): { rel: string; node: Node } {
    const i = linkRel.lastIndexOf('/');
    const dir = this.resolveDir(i === -1 ? '' : linkRel.slice(0, i), false);
    const base = linkRel.slice(i + 1);
    const node = dir && this.child(dir.node, dir.rel, base);
    if (!dir || !node) {
      throw new EntryRefused(`it is a hard link to ${show(header.linkname ?? '')}, which is not in the image (so far): a hard link must name a file extracted before it`);
    }
    if (node.kind === 'dir') throw new EntryRefused(`it is a hard link to ${show(header.linkname ?? '')}, a directory`);
    return { rel: join(dir.rel, base), node };
  }

  /** `.wh.<name>`: remove `<name>` as lower layers left it. */
  private whiteout(entry: CheckedEntry): void {
    const dir = this.resolveDir(entry.dir, false);
    if (!dir) return;
    this.removeLower(dir.node, dir.rel, entry.base.slice('.wh.'.length));
  }

  /** Overlay format: `.wh.<name>` is the 0/0 character device overlayfs reads as "deleted". */
  private async whiteoutDevice(entry: CheckedEntry): Promise<void> {
    const dir = this.resolveDir(entry.dir, true)!;
    const name = entry.base.slice('.wh.'.length);
    // Whatever is there already is this layer's own, which a whiteout never hides.
    if (this.child(dir.node, dir.rel, name)) return;
    const rel = join(dir.rel, name);
    await this.mknod(this.abs(rel), 'character-device', 0, 0, 'the whiteout device of an overlay lower');
    dir.node.children.set(name, { kind: 'other' });
    this.markWritten(rel);
  }

  /** Overlay format: `.wh..wh..opq` is the `trusted.overlay.opaque` attribute on its directory. */
  private markOpaque(dirRel: string): void {
    if (dirRel === '') return; // the root of a lower cannot be opaque; below the root nothing is hidden anyway
    const { parent, base } = this.parentOf(dirRel, true);
    const rel = join(parent!.rel, base);
    if (rel === '') return;
    let node = this.child(parent!.node, parent!.rel, base);
    if (!node) {
      this.mkdirs(rel);
      node = newDir(true);
      parent!.node.children.set(base, node);
    }
    if (node.kind !== 'dir') return;
    const attrs = this.xattrs.get(rel) ?? new Map<string, Buffer>();
    attrs.set('trusted.overlay.opaque', Buffer.from('y'));
    this.xattrs.set(rel, attrs);
  }

  /** `.wh..wh..opq`: the directory keeps only what this layer puts in it. */
  private opaque(dirRel: string): void {
    let dir: { node: DirNode; rel: string };
    if (dirRel === '') dir = { node: this.top, rel: '' };
    else {
      const { parent, base } = this.parentOf(dirRel, false);
      // The last component is not followed, so a symlink here is not a directory and is left alone.
      const node = parent && this.child(parent.node, parent.rel, base);
      if (node?.kind !== 'dir') return;
      dir = { node, rel: join(parent!.rel, base) };
    }
    this.fill(dir.node, dir.rel);
    for (const name of [...dir.node.children.keys()]) this.removeLower(dir.node, dir.rel, name);
  }

  /**
   * Deletes `name` under `parent` and everything below it that lower layers
   * put there, keeping what this layer already wrote (the spec lets
   * whiteouts hide only lower content, and a layer need not list the opaque
   * marker first).
   */
  private removeLower(parent: DirNode, parentRel: string, name: string): void {
    const node = this.child(parent, parentRel, name);
    if (!node) return;
    const rel = join(parentRel, name);
    if (!this.written.has(rel) && !this.holdsWritten.has(rel)) {
      this.remove(parent, name, rel, node);
      return;
    }
    if (node.kind !== 'dir') return;
    this.fill(node, rel);
    for (const child of [...node.children.keys()]) this.removeLower(node, rel, child);
  }

  /** Removes `rel` (the child `name` of `parent`) from disk and from everything pending for it. */
  private remove(parent: DirNode, name: string, rel: string, node: Node): void {
    rmSync(this.abs(rel), { recursive: true, force: true });
    parent.children.delete(name);
    this.resolved.clear();
    const pending: Array<Map<string, unknown>> = [this.dirMeta, this.xattrs];
    if (this.realModes) pending.push(this.realModes);
    for (const map of pending) {
      map.delete(rel);
      if (node.kind !== 'dir') continue;
      for (const key of map.keys()) if (key.startsWith(`${rel}/`)) map.delete(key);
    }
  }

  /**
   * The directory `unsafeDir` (a clean relative path) names, resolved as the
   * kernel would inside a chroot at the root: symlinks in it are followed,
   * an absolute target starts again at the root, and `..` stops there. With
   * `create`, directories that do not exist are made (0755, as other
   * appliers make the parents a tar does not list); without, a path that
   * does not exist is undefined.
   */
  private resolveDir(unsafeDir: string, create: boolean): { rel: string; node: DirNode } | undefined {
    const known = this.resolved.get(unsafeDir);
    if (known) return known;
    const names: string[] = [];
    /** The node of each of `names`; null once a component does not exist (nor does anything below it). */
    const nodes: Array<DirNode | null> = [];
    const pending = unsafeDir === '' ? [] : unsafeDir.split('/').reverse();
    let links = 0;
    while (pending.length > 0) {
      const part = pending.pop()!;
      if (part === '' || part === '.') continue;
      if (part === '..') {
        names.pop();
        nodes.pop();
        continue;
      }
      const parent = nodes.length === 0 ? this.top : nodes[nodes.length - 1]!;
      const node = parent === null ? undefined : this.child(parent, names.join('/'), part);
      if (node === undefined || node.kind === 'dir') {
        names.push(part);
        nodes.push(node ?? null);
        continue;
      }
      const here = [...names, part].join('/');
      if (node.kind === 'other') throw new EntryRefused(`${show(here)} is in its path, and is not a directory`);
      if (++links > MAX_SYMLINKS) throw new EntryRefused(`its path has too many levels of symbolic links (at ${show(here)})`);
      node.target ??= readlinkSync(this.abs(here));
      if (node.target.startsWith('/')) {
        names.length = 0;
        nodes.length = 0;
      }
      for (const p of node.target.split('/').reverse()) pending.push(p);
    }
    const firstMissing = nodes.indexOf(null);
    if (firstMissing !== -1) {
      if (!create) return undefined;
      for (let i = firstMissing; i < names.length; i++) {
        const rel = names.slice(0, i + 1).join('/');
        this.mkdirs(rel);
        const made = newDir(true);
        (i === 0 ? this.top : nodes[i - 1]!).children.set(names[i]!, made);
        nodes[i] = made;
      }
    }
    const found = { rel: names.join('/'), node: nodes.length === 0 ? this.top : nodes[nodes.length - 1]! };
    this.resolved.set(unsafeDir, found);
    return found;
  }

  /** `rel`'s parent directory resolved (see resolveDir), and its last component, not followed. */
  private parentOf(rel: string, create: boolean): { parent: { rel: string; node: DirNode } | undefined; base: string } {
    const i = rel.lastIndexOf('/');
    return { parent: this.resolveDir(i === -1 ? '' : rel.slice(0, i), create), base: rel.slice(i + 1) };
  }

  /** The node at `rel`, a real path (no symlink in it, as the keys of dirMeta and xattrs are); undefined when not there. */
  private nodeAt(rel: string): Node | undefined {
    let node: Node = this.top;
    let at = '';
    for (const part of rel === '' ? [] : rel.split('/')) {
      if (node.kind !== 'dir') return undefined;
      const next = this.child(node, at, part);
      if (!next) return undefined;
      node = next;
      at = join(at, part);
    }
    return node;
  }

  /** The child `name` of the directory `parent` (at `parentRel`); a directory we did not make is read once, on first need. */
  private child(parent: DirNode, parentRel: string, name: string): Node | undefined {
    const known = parent.children.get(name);
    if (known || parent.complete) return known;
    this.fill(parent, parentRel);
    return parent.children.get(name);
  }

  /** Learns every child of a directory that lower layers (or another process before us) made. */
  private fill(dir: DirNode, rel: string): void {
    if (dir.complete) return;
    let dirents: Dirent[];
    try {
      dirents = readdirSync(this.abs(rel), { withFileTypes: true });
    } catch (err) {
      if (!isMissing(err)) throw err;
      dirents = [];
    }
    for (const d of dirents) {
      if (dir.children.has(d.name)) continue;
      dir.children.set(d.name, d.isDirectory() ? newDir(false) : d.isSymbolicLink() ? { kind: 'link', target: undefined } : { kind: 'other' });
    }
    dir.complete = true;
  }

  /** Makes the directory `rel` (its parent exists) with mode 0755 whatever the umask. */
  private mkdirs(rel: string): void {
    const host = this.abs(rel);
    mkdirSync(host, { mode: 0o755 });
    chmodSync(host, 0o755);
  }

  /** The mode to put on disk for `rel`: the layer's, or widened for us when asked to keep the tree usable. */
  private diskMode(rel: string, mode: number, needed: number): number {
    if (!this.realModes) return mode;
    const disk = mode | needed;
    if (disk === mode) this.realModes.delete(rel);
    else this.realModes.set(rel, mode);
    return disk;
  }

  private markWritten(rel: string): void {
    this.written.add(rel);
    for (let p = parentRel(rel); p !== ''; p = parentRel(p)) {
      if (this.holdsWritten.has(p)) break;
      this.holdsWritten.add(p);
    }
  }

  /**
   * Node has no mknod(2); the mknod(1) program does the same. A device node
   * needs root, and even root may be refused (a user namespace, a dropped
   * CAP_MKNOD): either is an EntryRefused saying so.
   */
  private async mknod(host: string, type: 'character-device' | 'block-device' | 'fifo', major: number, minor: number, what = `a ${type.replace('-', ' ')}`): Promise<void> {
    if (type !== 'fifo' && !this.mayMknod) {
      throw new EntryRefused(`it is ${what}; creating device nodes needs root — run as root, or use an image without device nodes`);
    }
    const args = type === 'fifo' ? [host, 'p'] : [host, type === 'character-device' ? 'c' : 'b', String(major), String(minor)];
    try {
      await promisify(execFile)('mknod', args);
    } catch (err) {
      const stderr = String((err as { stderr?: unknown }).stderr ?? '').trim();
      const reason = /: ([^:\n]+)$/.exec(stderr)?.[1] ?? (stderr || String(err));
      // A user namespace (or a dropped capability) maps us to root but still refuses device nodes.
      if (type !== 'fifo' && /not permitted/i.test(stderr)) {
        throw new EntryRefused(`it is ${what}, and the kernel refused to create it (${reason}): device nodes need root with CAP_MKNOD, outside a user namespace — or use an image without device nodes`);
      }
      throw new Error(`mknod failed: ${stderr || String(err)}`, { cause: err });
    }
  }

  private abs(rel: string): string {
    return rel === '' ? this.root : this.prefix + rel;
  }
}

function newDir(complete: boolean): DirNode {
  return { kind: 'dir', children: new Map(), complete };
}

function join(dir: string, name: string): string {
  return dir === '' ? name : `${dir}/${name}`;
}

function parentRel(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i === -1 ? '' : rel.slice(0, i);
}

function writeAll(fd: number, chunk: Buffer): void {
  for (let off = 0; off < chunk.length; ) off += writeSync(fd, chunk, off);
}

/**
 * Writes the tar bytes into tar-stream's extractor (a streamx stream, which
 * Node's pipeline does not understand) with backpressure, hashing them on
 * the way. A source error is handed to the extractor so the entry loop sees it.
 */
async function feed(source: Readable, extract: tar.Extract, onChunk: (chunk: Buffer) => void): Promise<void> {
  try {
    for await (const chunk of source as AsyncIterable<Buffer>) {
      onChunk(chunk);
      if (extract.destroying) return;
      if (!extract.write(chunk)) await drainedOrClosed(extract);
    }
    extract.end(undefined);
  } catch (err) {
    extract.destroy(err as Error);
    throw err;
  }
}

function drainedOrClosed(w: tar.Extract): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      w.off('drain', done);
      w.off('close', done);
      resolve();
    };
    w.on('drain', done);
    w.on('close', done);
  });
}

async function drain(body: EntryStream): Promise<void> {
  // for-await on a streamx stream that has already ended returns at once.
  for await (const _ of body) {
    // discard
  }
}

/** PAX records override the ustar fields; tar-stream itself only applies path, linkpath and size. */
function paxOverrides(header: Header): { uid: number; gid: number; mtime: Date } {
  const pax = header.pax ?? {};
  const num = (v: string | undefined) => (v !== undefined && /^\d{1,10}$/.test(v) ? Number(v) : undefined);
  const seconds = pax.mtime !== undefined && /^-?\d{1,15}(\.\d+)?$/.test(pax.mtime) ? Number(pax.mtime) : undefined;
  return {
    uid: num(pax.uid) ?? header.uid,
    gid: num(pax.gid) ?? header.gid,
    mtime: seconds !== undefined ? new Date(seconds * 1000) : header.mtime,
  };
}
