/**
 * Applying an OCI layer (gzip or plain tar) onto a directory, by the image
 * spec's changeset rules, without letting any entry touch anything outside
 * that directory.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import type fs from 'node:fs';
import { constants as fsConstants } from 'node:fs';
import { chmod, lchown, link, lstat, lutimes, mkdir, open, readdir, realpath, rm, symlink, utimes } from 'node:fs/promises';
import path from 'node:path';
import { pipeline, Readable } from 'node:stream';
import { promisify } from 'node:util';
import { createGunzip } from 'node:zlib';
import tar from 'tar-stream';
import { PathEscapeError } from '../errors.js';
import { isOverlayXattr, setXattrs } from '../snapshot/xattrs.js';
import { isMissing } from '../util/fs-read.js';
import { cleanRelative, secureJoin } from '../util/secure-join.js';
import { PaxXattrTap } from './pax-xattrs.js';

export interface ApplyOptions {
  /** chown entries to their uid/gid (only works as root); default: only when process.getuid?.() === 0 */
  preserveOwner?: boolean;
  /**
   * Keep the tree usable by us without root: directories get at least u+rwx
   * and files u+rw on disk, so a later layer can write into a 0555 directory
   * and a reader can open a 0000 file. The mode each such entry really has is
   * recorded here (keyed by path relative to the root; an entry written with
   * its exact mode is removed), across as many layers as share the map.
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
}

export interface ApplyResult {
  /** "sha256:<hex>" of the uncompressed tar, for the caller to check against the manifest's diff_id */
  diffId: string;
  /** device nodes left out because we may not create them (not root, or a user namespace said no) */
  skippedDevices: number;
}

// Today every layer applied here is one layergraph packed from a copy step;
// whiteouts, opaque directories, hardlinks and device nodes are handled on
// purpose all the same: base images from registries and `run` steps (their
// overlay uppers) bring them, and the safety rules must hold for those too.

/**
 * Extracts `gzipOrTar` into `destDir` (created if missing). Entries are
 * applied as they stream; on error the directory is left partly applied, so
 * callers apply into a scratch directory they can throw away.
 *
 * Extended attributes (PAX `SCHILY.xattr.*`) are applied only when asked
 * (`opts.xattrs`).
 */
export async function applyLayer(gzipOrTar: Readable, destDir: string, opts: ApplyOptions = {}): Promise<ApplyResult> {
  await mkdir(destDir, { recursive: true });
  // secureJoin trusts its root as given; resolve it once so a symlinked
  // destDir cannot make "inside" mean two different places.
  const root = await realpath(destDir);
  const isRoot = process.getuid?.() === 0;
  const overlay = opts.whiteouts === 'overlay';
  if (overlay && !isRoot) {
    throw new Error(`cannot unpack a layer as an overlay lower into ${destDir}: whiteout devices and trusted.overlay.* attributes need root`);
  }
  const applier = new Applier(root, opts.preserveOwner ?? isRoot, isRoot, opts.realModes, overlay);

  const hash = createHash('sha256');
  const extract = tar.extract();
  const tarBytes = await uncompressed(gzipOrTar);
  // tar-stream decodes PAX values as UTF-8, which mangles binary attribute values; this reads them from the bytes.
  const tap = opts.xattrs ? new PaxXattrTap() : undefined;
  const feeding = feed(tarBytes, extract, (chunk) => {
    hash.update(chunk);
    tap?.push(chunk);
  });

  try {
    for await (const entry of extract) {
      const header = entry.header as Entry;
      await applier.apply(header, entry, tap?.take(header.name));
    }
    await feeding;
  } catch (err) {
    extract.destroy();
    tarBytes.destroy();
    await feeding.catch(() => {});
    throw err;
  }
  await applier.finish();
  return { diffId: `sha256:${hash.digest('hex')}`, skippedDevices: applier.skippedDevices };
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';
const OVERLAY_OPAQUE_XATTR = 'trusted.overlay.opaque';
/** AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): not content, never applied. */
const WHITEOUT_META_PREFIX = '.wh..wh.';

type Entry = tar.Header & { pax?: Record<string, string> | null };
type EntryStream = AsyncIterable<unknown> & { resume(): unknown };

class Applier {
  skippedDevices = 0;
  /** Paths (relative to root, symlinks resolved) this layer created or replaced. */
  private readonly written = new Set<string>();
  /** Every ancestor of a path in `written`: directories that hold something of this layer. */
  private readonly holdsWritten = new Set<string>();
  /** Directory metadata to set last, keyed by relative path. */
  private readonly dirMeta = new Map<string, { mode: number; mtime: Date }>();
  /** Extended attributes to set last (after chown, which clears file capabilities), keyed by relative path. */
  private readonly xattrs = new Map<string, Map<string, Buffer>>();

  constructor(
    private readonly root: string,
    private readonly preserveOwner: boolean,
    private readonly mayMknod: boolean,
    private readonly realModes: Map<string, number> | undefined,
    /** Write overlay-format whiteouts instead of applying them (see ApplyOptions.whiteouts). */
    private readonly overlay: boolean,
  ) {}

  /** The mode to put on disk for `rel`: the layer's, or widened for us when asked to keep the tree usable. */
  private diskMode(rel: string, mode: number, needed: number): number {
    if (!this.realModes) return mode;
    const disk = mode | needed;
    if (disk === mode) this.realModes.delete(rel);
    else this.realModes.set(rel, mode);
    return disk;
  }

  async apply(header: Entry, body: EntryStream, xattrs?: Map<string, Buffer>): Promise<void> {
    await this.applyEntry(header, body, xattrs);
    // tar-stream stalls until every entry's body has been read. (After an
    // error the extractor is destroyed instead, so no drain then.)
    await drain(body);
  }

  /** Directory modes and times go last: a read-only directory must not stop its children being written, and writing children changes the directory's mtime. */
  async finish(): Promise<void> {
    const attrs: Array<[string, Map<string, Buffer>]> = [];
    for (const [rel, map] of this.xattrs) {
      const host = await secureJoin(this.root, rel);
      if (await lstatOrNull(host)) attrs.push([host, map]);
    }
    await setXattrs(attrs);
    // Deepest first, so a parent's mode (say 0500) is set after its children are done.
    const rels = [...this.dirMeta.keys()].sort((a, b) => b.length - a.length);
    for (const rel of rels) {
      const meta = this.dirMeta.get(rel);
      if (!meta) continue;
      // Resolve again: a later entry may have put a symlink where a parent
      // directory was, and the old host path would now lead through it.
      const host = await secureJoin(this.root, rel);
      const st = await lstatOrNull(host);
      if (!st?.isDirectory()) continue;
      await chmod(host, this.diskMode(rel, meta.mode, 0o700));
      await utimes(host, meta.mtime, meta.mtime);
    }
  }

  private async applyEntry(header: Entry, body: EntryStream, xattrs: Map<string, Buffer> | undefined): Promise<void> {
    const rel = this.entryPath(header.name);
    if (rel === '') return; // "./": the destination itself, which we own

    const dirRel = parentOf(rel);
    const base = rel.slice(dirRel === '' ? 0 : dirRel.length + 1);

    if (base === OPAQUE_MARKER) return this.overlay ? this.markOpaque(dirRel) : this.opaque(dirRel);
    if (base.startsWith(WHITEOUT_META_PREFIX)) return;
    if (base.startsWith(WHITEOUT_PREFIX)) {
      const name = base.slice(WHITEOUT_PREFIX.length);
      return this.overlay ? this.whiteoutDevice(dirRel, name, header.name) : this.whiteout(dirRel, name, header.name);
    }

    // `rel` has no "..", and secureJoin never follows the last component, so
    // `host` is a name directly inside a real directory under root.
    const host = await secureJoin(this.root, rel);
    const hostRel = this.relOf(host);
    await this.makeParents(path.dirname(host));

    const existing = await lstatOrNull(host);
    const type = header.type === 'contiguous-file' ? 'file' : header.type;
    if (existing && !(existing.isDirectory() && type === 'directory')) {
      // Never write into what is there: it may be a symlink to anywhere.
      await rm(host, { recursive: true, force: true });
      this.forget(hostRel);
    }

    const mode = header.mode & 0o7777;
    const { uid, gid, mtime } = paxOverrides(header);

    switch (type) {
      case 'directory':
        if (!existing?.isDirectory()) await mkdir(host, { mode: 0o700 });
        await this.chown(host, uid, gid);
        this.dirMeta.set(hostRel, { mode, mtime });
        break;
      case 'file':
        await writeFileExclusive(host, body);
        await this.chown(host, uid, gid);
        // After chown, which clears setuid/setgid.
        await chmod(host, this.diskMode(hostRel, mode, 0o600));
        await utimes(host, mtime, mtime);
        break;
      case 'symlink':
        await symlink(header.linkname ?? '', host);
        await this.chown(host, uid, gid);
        await lutimes(host, mtime, mtime);
        break;
      case 'link': {
        const target = await this.hardlinkTarget(header);
        const st = await lstatOrNull(target);
        if (!st) throw new Error(`${header.name}: hard link to ${header.linkname}, which does not exist`);
        if (st.isDirectory()) throw new Error(`${header.name}: hard link to directory ${header.linkname}`);
        // link(2) does not follow a symlink at `target`, so a link to an
        // escaping symlink only copies the symlink.
        await link(target, host);
        break;
      }
      case 'character-device':
      case 'block-device':
      case 'fifo':
        if (!(await this.mknod(host, type, header))) {
          this.skippedDevices++;
          return;
        }
        await this.chown(host, uid, gid);
        await chmod(host, mode);
        await utimes(host, mtime, mtime);
        break;
      default:
        throw new Error(`${header.name}: unsupported tar entry type ${String(header.type)}`);
    }
    this.markWritten(hostRel);
    // Linux refuses user.* attributes on symlinks (EPERM), as GNU tar finds: leave them out.
    // overlayfs's own markers are ours to write (from whiteouts), never a
    // layer's: a foreign layer could otherwise hide or redirect lower content.
    const attrs = [...(xattrs ?? [])].filter(([name]) => (type !== 'symlink' || !name.startsWith('user.')) && !isOverlayXattr(name));
    if (attrs.length > 0) {
      // A hard link shares its target's inode, so its attributes land there too.
      const prior = type === 'directory' ? this.xattrs.get(hostRel) : undefined;
      this.xattrs.set(hostRel, new Map([...(prior ?? []), ...attrs]));
    }
  }

  /** The entry's name as a clean relative path; refuses absolute and escaping names. */
  private entryPath(unsafeName: string): string {
    if (unsafeName.startsWith('/')) {
      throw new PathEscapeError(unsafeName, this.root, 'absolute path in a layer (layer paths are relative)');
    }
    const unsafeRel = unsafeName.startsWith('./') ? unsafeName.slice(2) : unsafeName;
    return cleanRelative(unsafeRel, this.root);
  }

  private async hardlinkTarget(header: Entry): Promise<string> {
    const unsafeTarget = header.linkname ?? '';
    const rel = this.entryPath(unsafeTarget);
    if (rel === '') throw new PathEscapeError(unsafeTarget, this.root, `hard link ${header.name} to the layer root`);
    return secureJoin(this.root, rel);
  }

  /** `.wh.<name>`: remove `<name>` as lower layers left it. */
  private async whiteout(dirRel: string, name: string, unsafeName: string): Promise<void> {
    if (name === '' || name === '.' || name === '..') {
      throw new PathEscapeError(unsafeName, this.root, 'whiteout names its own directory or a parent');
    }
    const host = await secureJoin(this.root, dirRel === '' ? name : `${dirRel}/${name}`);
    const hostRel = this.relOf(host);
    if (hostRel === '') throw new PathEscapeError(unsafeName, this.root, 'whiteout names the layer root');
    await this.removeLower(host, hostRel);
  }

  /** Overlay format: `.wh.<name>` is the 0/0 character device overlayfs reads as "deleted". */
  private async whiteoutDevice(dirRel: string, name: string, unsafeName: string): Promise<void> {
    if (name === '' || name === '.' || name === '..') {
      throw new PathEscapeError(unsafeName, this.root, 'whiteout names its own directory or a parent');
    }
    const host = await secureJoin(this.root, dirRel === '' ? name : `${dirRel}/${name}`);
    const hostRel = this.relOf(host);
    if (hostRel === '') throw new PathEscapeError(unsafeName, this.root, 'whiteout names the layer root');
    await this.makeParents(path.dirname(host));
    // Whatever is there already is this layer's own, which a whiteout never hides.
    if (await lstatOrNull(host)) return;
    if (!(await this.mknod(host, 'character-device', { name: unsafeName, devmajor: 0, devminor: 0 } as Entry))) {
      throw new Error(`${unsafeName}: cannot create the whiteout device of an overlay lower (mknod was refused)`);
    }
    this.markWritten(hostRel);
  }

  /** Overlay format: `.wh..wh..opq` is the `trusted.overlay.opaque` attribute on its directory. */
  private async markOpaque(dirRel: string): Promise<void> {
    const host = await secureJoin(this.root, dirRel);
    const hostRel = this.relOf(host);
    if (hostRel === '') return; // the root of a lower cannot be opaque; below the root nothing is hidden anyway
    await this.makeParents(host);
    const st = await lstatOrNull(host);
    if (!st?.isDirectory()) return;
    const attrs = this.xattrs.get(hostRel) ?? new Map<string, Buffer>();
    attrs.set(OVERLAY_OPAQUE_XATTR, Buffer.from('y'));
    this.xattrs.set(hostRel, attrs);
  }

  /** `.wh..wh..opq`: the directory keeps only what this layer puts in it. */
  private async opaque(dirRel: string): Promise<void> {
    const host = await secureJoin(this.root, dirRel);
    // The last component is not followed, so a symlink here is not a directory and is left alone.
    const st = await lstatOrNull(host);
    if (!st?.isDirectory()) return;
    const hostRel = this.relOf(host);
    for (const child of await readdir(host)) {
      await this.removeLower(path.join(host, child), hostRel === '' ? child : `${hostRel}/${child}`);
    }
  }

  /**
   * Deletes `host` and everything below it that lower layers put there,
   * keeping what this layer already wrote (the spec lets whiteouts hide only
   * lower content, and a layer need not list the opaque marker first).
   */
  private async removeLower(host: string, rel: string): Promise<void> {
    const st = await lstatOrNull(host);
    if (!st) return;
    if (!this.written.has(rel) && !this.holdsWritten.has(rel)) {
      await rm(host, { recursive: true, force: true });
      this.forget(rel);
      return;
    }
    if (!st.isDirectory()) return;
    for (const child of await readdir(host)) {
      await this.removeLower(path.join(host, child), `${rel}/${child}`);
    }
  }

  /** Drops what is pending for `rel` and below: it was removed or replaced. */
  private forget(rel: string): void {
    for (const pending of [this.dirMeta, this.xattrs]) {
      for (const key of pending.keys()) {
        if (key === rel || key.startsWith(`${rel}/`)) pending.delete(key);
      }
    }
  }

  /** Parents the tar did not list get 0755 whatever the umask, as other appliers give them. */
  private async makeParents(hostDir: string): Promise<void> {
    const missing: string[] = [];
    for (let p = hostDir; p !== this.root && (await lstatOrNull(p)) === null; p = path.dirname(p)) {
      missing.push(p);
    }
    for (const p of missing.reverse()) {
      await mkdir(p, { mode: 0o755 });
      await chmod(p, 0o755);
    }
  }

  private markWritten(rel: string): void {
    this.written.add(rel);
    for (let p = parentOf(rel); p !== ''; p = parentOf(p)) {
      if (this.holdsWritten.has(p)) break;
      this.holdsWritten.add(p);
    }
  }

  private async chown(host: string, uid: number, gid: number): Promise<void> {
    if (this.preserveOwner) await lchown(host, uid, gid);
  }

  /** Node has no mknod(2); the mknod(1) program does the same. False when we may not. */
  private async mknod(host: string, type: 'character-device' | 'block-device' | 'fifo', header: Entry): Promise<boolean> {
    if (type !== 'fifo' && !this.mayMknod) return false;
    const args =
      type === 'fifo'
        ? [host, 'p']
        : [host, type === 'character-device' ? 'c' : 'b', String(header.devmajor), String(header.devminor)];
    try {
      await promisify(execFile)('mknod', args);
      return true;
    } catch (err) {
      // A user namespace maps us to root but still refuses device nodes.
      if (type !== 'fifo' && /not permitted/i.test(String((err as { stderr?: unknown }).stderr ?? ''))) return false;
      throw new Error(`${header.name}: mknod failed: ${String((err as { stderr?: unknown }).stderr ?? err)}`.trim(), {
        cause: err,
      });
    }
  }

  private relOf(host: string): string {
    return host === this.root ? '' : path.relative(this.root, host);
  }
}

/** Opens the layer's bytes as a tar stream, unzipping when they start with the gzip magic. */
/** The tar bytes of a layer, gunzipped when it starts with gzip's magic. */
export async function uncompressed(input: Readable): Promise<Readable> {
  const it = (input as AsyncIterable<unknown>)[Symbol.asyncIterator]();
  const head: Buffer[] = [];
  let length = 0;
  while (length < 2) {
    const next = await it.next();
    if (next.done) break;
    const chunk = toBuffer(next.value);
    head.push(chunk);
    length += chunk.length;
  }
  const first = Buffer.concat(head);
  const raw = Readable.from(replay(first, it), { objectMode: false });
  if (first[0] === 0x1f && first[1] === 0x8b) {
    return pipeline(raw, createGunzip(), () => {});
  }
  return raw;
}

async function* replay(head: Buffer, rest: AsyncIterator<unknown>): AsyncGenerator<Buffer> {
  try {
    if (head.length > 0) yield head;
    for (;;) {
      const next = await rest.next();
      if (next.done) return;
      yield toBuffer(next.value);
    }
  } finally {
    await rest.return?.();
  }
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

/** Streams the entry body into a new file; O_EXCL|O_NOFOLLOW so nothing already there (a symlink, say) is written through. */
async function writeFileExclusive(host: string, body: EntryStream): Promise<void> {
  const flags = fsConstants.O_WRONLY | fsConstants.O_CREAT | fsConstants.O_EXCL | fsConstants.O_NOFOLLOW;
  const fh = await open(host, flags, 0o600);
  try {
    for await (const chunk of body) {
      await fh.write(chunk as Buffer);
    }
  } finally {
    await fh.close();
  }
}

async function drain(body: EntryStream): Promise<void> {
  // for-await on a streamx stream that has already ended returns at once.
  for await (const _ of body) {
    // discard
  }
}

/** PAX records override the ustar fields; tar-stream itself only applies path, linkpath and size. */
function paxOverrides(header: Entry): { uid: number; gid: number; mtime: Date } {
  const pax = header.pax ?? {};
  const num = (v: string | undefined) => (v !== undefined && /^\d+$/.test(v) ? Number(v) : undefined);
  const seconds = pax.mtime !== undefined && /^-?\d+(\.\d+)?$/.test(pax.mtime) ? Number(pax.mtime) : undefined;
  return {
    uid: num(pax.uid) ?? header.uid,
    gid: num(pax.gid) ?? header.gid,
    mtime: seconds !== undefined ? new Date(seconds * 1000) : header.mtime,
  };
}

function parentOf(rel: string): string {
  const i = rel.lastIndexOf('/');
  return i === -1 ? '' : rel.slice(0, i);
}

async function lstatOrNull(p: string): Promise<fs.Stats | null> {
  try {
    return await lstat(p);
  } catch (err) {
    if (isMissing(err)) return null;
    throw err;
  }
}

function toBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (chunk instanceof Uint8Array) return Buffer.from(chunk.buffer, chunk.byteOffset, chunk.byteLength);
  if (typeof chunk === 'string') return Buffer.from(chunk);
  throw new TypeError('layer stream must yield bytes');
}
