/**
 * Packing a directory (a step's upper) into an OCI layer:
 * a tar whose bytes depend only on the tree's content, gzipped so the blob
 * does not depend on the machine either.
 */
import { createHash, type Hash } from 'node:crypto';
import type fs from 'node:fs';
import { closeSync, constants as fsConstants } from 'node:fs';
import { lstat, open, readdir, readlink } from 'node:fs/promises';
import path from 'node:path';
import { pipeline, Transform, type Readable } from 'node:stream';
import tar from 'tar-stream';
import { parallelGzip } from './parallel-gzip.js';
import { openSource, readFull, SMALL_FILE_MAX } from '../util/source-read.js';
import { encodePaxRecords, newPaxMarker, PaxMarkerPatcher, SCHILY_XATTR } from './pax-xattrs.js';

export interface PackOptions {
  /** seconds since epoch for every entry's mtime (SOURCE_DATE_EPOCH or 0) */
  mtime: number;
  /** uid/gid for an entry; default: the file's own lstat uid/gid */
  owner?: (relPath: string, st: fs.Stats) => { uid: number; gid: number };
  /**
   * Permission bits for an entry; default: the file's own. Lets a caller keep
   * its upper readable on disk (no root needed) while the layer says 0500.
   */
  mode?: (relPath: string, st: fs.Stats) => number;
  /** gzip level, default 6 */
  level?: number;
  /**
   * Whether an upper directory is overlay-opaque (xattr
   * `trusted.overlay.opaque` or `user.overlay.opaque` = "y"). Node cannot read
   * xattrs, so the caller supplies this; default: never opaque.
   */
  isOpaque?: (absDir: string) => Promise<boolean>;
  /**
   * Extended attributes of an entry (by path relative to the upper dir),
   * packed as PAX `SCHILY.xattr.<name>` records with raw byte values, sorted
   * by name. Never packed whatever this returns: overlayfs's own
   * (`trusted.overlay.*`, `user.overlay.*`) and `security.selinux`, a label
   * of the host's policy. Default: none.
   */
  xattrs?: (relPath: string) => ReadonlyMap<string, Buffer> | undefined;
}

export interface PackedLayer {
  /** "sha256:<hex>" of the uncompressed tar */
  diffId: string;
  /** gzip bytes */
  stream: Readable;
}

/**
 * Streams `upperDir` as a gzipped layer tar. `diffId` and `entries` settle
 * once the whole tar has gone through the hash, so only after the caller has
 * read `stream` (nearly) to its end; they reject if packing fails, as does
 * the stream.
 *
 * Extended attributes come from the caller (`opts.xattrs`; Node cannot read
 * them), and the overlay opaque flag through `opts.isOpaque`.
 */
export function packLayer(
  upperDir: string,
  opts: PackOptions,
): { stream: Readable; diffId: Promise<string>; entries: Promise<number> } {
  return packFound(async () => {
    const found: Found[] = [];
    await walk(path.resolve(upperDir), '', found);
    return found;
  }, opts);
}

/** An entry of a tree that is described rather than on disk (a copy step's plan). */
export interface TreeEntry {
  /** Path in the layer, relative, no trailing slash. */
  rel: string;
  kind: 'file' | 'directory' | 'symlink';
  /** For a file: where its bytes are read from, and that file's stat (its size is what is packed). */
  abs?: string;
  st?: fs.Stats;
  /** For a symlink: its target. */
  linkTarget?: string;
}

/**
 * Packs a tree described entry by entry, reading each file from where it
 * is: a copy step's layer straight from the build context, without first
 * copying it into an upper directory. Gives the same tar as packLayer on an
 * upper holding the same entries (each file its own inode: files the source
 * hardlinks are packed as separate files, as a copy makes them). Owners and
 * modes come from the caller.
 */
export function packTree(
  entries: readonly TreeEntry[],
  opts: PackOptions & Required<Pick<PackOptions, 'owner' | 'mode'>>,
): { stream: Readable; diffId: Promise<string>; entries: Promise<number> } {
  return packFound(async () => entries.map(treeFound), opts);
}

function treeFound(e: TreeEntry): Found {
  const base = e.rel.slice(e.rel.lastIndexOf('/') + 1);
  if (base.startsWith(WHITEOUT_PREFIX)) {
    throw new Error(`${e.abs ?? e.rel}: a file named "${WHITEOUT_PREFIX}*" cannot be stored in a layer (it would read as a whiteout)`);
  }
  const name = e.kind === 'directory' ? `${e.rel}/` : e.rel;
  if (e.kind === 'file' && (!e.abs || !e.st)) throw new Error(`internal: file ${e.rel} of a packed tree has no source`);
  // Directories and links are described whole by the caller's owner/mode and linkTarget: their stat is never read.
  return { rel: e.rel, abs: e.abs ?? '', st: e.st ?? NO_STAT, kind: e.kind, name, sortKey: Buffer.from(name, 'utf8'), independent: true, linkTarget: e.linkTarget };
}

const NO_STAT = Object.freeze({ nlink: 1, size: 0, rdev: 0, uid: 0, gid: 0, mode: 0 }) as fs.Stats;

function packFound(
  collect: () => Promise<Found[]>,
  opts: PackOptions,
): { stream: Readable; diffId: Promise<string>; entries: Promise<number> } {
  // tar-stream writes mtime through a 32-bit `| 0`, so anything outside this
  // range would silently come out as a different date.
  if (!Number.isInteger(opts.mtime) || opts.mtime < 0 || opts.mtime > 0x7fffffff) {
    throw new RangeError(`layer mtime must be whole seconds between 0 and 2^31-1, got ${opts.mtime}`);
  }

  const pack = tar.pack();
  const hash = createHash('sha256');
  const diffId = deferred<string>();
  const entries = deferred<number>();

  const pax: PaxState | undefined = opts.xattrs ? { marker: newPaxMarker(), written: 0 } : undefined;
  const patcher = pax ? new PaxMarkerPatcher(pax.marker) : undefined;
  const producing = writeEntries(pack, collect, opts, pax);
  producing.then(
    () => pack.finalize(),
    (err: unknown) => pack.destroy(err as Error),
  );

  const stream = pipeline(
    hashing(pack, hash, patcher, async () => {
      if (pax && patcher!.patched !== pax.written) {
        throw new Error(`internal: ${pax.written} extended attribute headers written but ${patcher!.patched} found in the tar stream`);
      }
      diffId.resolve(`sha256:${hash.digest('hex')}`);
      entries.resolve(await producing);
    }),
    parallelGzip({ level: opts.level ?? 6 }),
    (err) => {
      if (!err) return;
      diffId.reject(err);
      entries.reject(err);
    },
  );
  return { stream, diffId: diffId.promise, entries: entries.promise };
}

/** True when `dir` has no entries at all (a missing directory counts as empty): there is no layer to make. */
export async function isEmptyTree(dir: string): Promise<boolean> {
  try {
    return (await readdir(dir)).length === 0;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return true;
    throw err;
  }
}

const WHITEOUT_PREFIX = '.wh.';
const OPAQUE_MARKER = '.wh..wh..opq';
/** Largest id tar-stream writes into the ustar field (6 octal digits); larger ones go into a PAX record. */
const USTAR_MAX_ID = 0o777777;

type EntryHeader = Partial<tar.Header> & { name: string };
/** tar-stream's entry sink: a streamx Writable, not a Node one. */
type EntrySink = ReturnType<tar.Pack['entry']>;

type Kind = 'file' | 'directory' | 'symlink' | 'whiteout' | 'character-device' | 'block-device' | 'fifo';

interface Found {
  /** path relative to the upper dir, no trailing slash */
  rel: string;
  abs: string;
  st: fs.Stats;
  kind: Kind;
  /** name in the tar */
  name: string;
  /** the same string as UTF-8, which is what the tar order is defined on */
  sortKey: Buffer;
  /** Never a hardlink to another entry, whatever its link count (a file of a packed tree). */
  independent?: boolean;
  /** A symlink's target when known without reading the link. */
  linkTarget?: string | undefined;
}

/** Entries with extended attributes go out as a marker entry that becomes their PAX header (see pax-xattrs.ts). */
interface PaxState {
  marker: string;
  written: number;
}

async function writeEntries(pack: tar.Pack, collect: () => Promise<Found[]>, opts: PackOptions, pax: PaxState | undefined): Promise<number> {
  const found = await collect();
  found.sort((a, b) => Buffer.compare(a.sortKey, b.sortKey));

  const owner = opts.owner ?? ((_rel: string, st: fs.Stats) => ({ uid: st.uid, gid: st.gid }));
  const modeOf = opts.mode ?? ((_rel: string, st: fs.Stats) => st.mode & 0o7777);
  const isOpaque = opts.isOpaque ?? (async () => false);
  const mtime = new Date(opts.mtime * 1000);
  const firstNameOfInode = new Map<string, string>();
  const queue = new EntryQueue();
  let count = 0;

  for (const f of found) {
    if (f.kind === 'whiteout') {
      await queue.add(pack, whiteoutHeader(f.name, mtime));
      count++;
      continue;
    }

    const { uid, gid } = owner(f.rel, f.st);
    const header: EntryHeader = {
      name: f.name,
      // tar-stream replaces a falsy mode with 0644/0755, so the file-type bits
      // ride along to keep a real 0000 mode; its encoder masks them off.
      mode: (modeOf(f.rel, f.st) & 0o7777) | fsConstants.S_IFREG,
      uid,
      gid,
      uname: '',
      gname: '',
      mtime,
      type: f.kind,
    };
    const ids = largeIds(uid, gid);
    if (ids) header.pax = ids;
    const attrs = pax && opts.xattrs ? packableXattrs(opts.xattrs(f.rel)) : [];
    /** The entry's header, after its PAX header when it has extended attributes. */
    const withAttrs = async (h: EntryHeader): Promise<EntryHeader> => {
      if (attrs.length === 0) return h;
      const { records, plain } = paxRecordsFor(h, attrs);
      const ids = { uid: Math.min(uid, USTAR_MAX_ID), gid: Math.min(gid, USTAR_MAX_ID) };
      const marker: EntryHeader = { name: pax!.marker, type: 'file', mode: h.mode, ...ids, uname: '', gname: '', mtime };
      await queue.add(pack, marker, records);
      pax!.written++;
      return plain;
    };

    switch (f.kind) {
      case 'file': {
        const key = f.st.nlink > 1 && !f.independent ? await inodeKey(f.abs) : null;
        const first = key === null ? undefined : firstNameOfInode.get(key);
        if (first !== undefined) {
          await queue.add(pack, await withAttrs({ ...header, type: 'link', linkname: first, size: 0 }));
        } else {
          if (key !== null) firstNameOfInode.set(key, f.name);
          if (f.st.size <= SMALL_FILE_MAX && (f.st.nlink === 1 || f.independent)) {
            await queue.add(pack, await withAttrs({ ...header, size: f.st.size }), readSmall(f.abs, f.st.size), f.abs);
          }
          else {
            const h = await withAttrs({ ...header, size: f.st.size });
            await queue.drain();
            await addFileEntry(pack, h, f.abs);
          }
        }
        break;
      }
      case 'directory':
        await queue.add(pack, await withAttrs(header));
        // Right after the directory, not in sorted position: applying the
        // marker must empty the directory before any of this layer's children
        // land in it (appliers that do not track what they wrote rely on this).
        if (await isOpaque(f.abs)) {
          await queue.add(pack, whiteoutHeader(`${f.name}${OPAQUE_MARKER}`, mtime));
          count++;
        }
        break;
      case 'symlink':
        await queue.add(pack, await withAttrs({ ...header, linkname: f.linkTarget ?? (await readlink(f.abs)) }));
        break;
      case 'character-device':
      case 'block-device':
        await queue.add(pack, await withAttrs({ ...header, devmajor: devMajor(f.st.rdev), devminor: devMinor(f.st.rdev) }));
        break;
      case 'fifo':
        await queue.add(pack, await withAttrs(header));
        break;
    }
    count++;
  }
  await queue.drain();
  return count;
}

/** Collects every entry below `absDir` without following symlinks. */
async function walk(absDir: string, relDir: string, out: Found[]): Promise<void> {
  const names = await readdir(absDir, { encoding: 'buffer' });
  const entries = names.map((raw) => {
    const name = raw.toString('utf8');
    // Node hands us names as strings; a name that is not UTF-8 would come
    // back with U+FFFD in it and then name a different (missing) file.
    if (!Buffer.from(name, 'utf8').equals(raw)) {
      throw new Error(`${path.join(absDir, raw.toString('latin1'))}: file name is not valid UTF-8; layers need UTF-8 names`);
    }
    const abs = path.join(absDir, name);
    if (name.startsWith(WHITEOUT_PREFIX)) {
      // Packed as is it would delete something when applied, not create itself.
      throw new Error(`${abs}: a file named "${WHITEOUT_PREFIX}*" cannot be stored in a layer (it would read as a whiteout)`);
    }
    return { name, abs };
  });
  // One directory's entries are stat'ed together: one after the other, a tree of
  // small files spends its time waiting on the filesystem.
  const stats = await Promise.all(entries.map((e) => lstat(e.abs)));
  const subdirs: Array<Promise<void>> = [];
  entries.forEach(({ name, abs }, i) => {
    const st = stats[i]!;
    const rel = relDir === '' ? name : `${relDir}/${name}`;
    const kind = kindOf(st);
    if (kind === null) return; // sockets: tar has no type for them, and they are meaningless in an image
    const tarName =
      kind === 'whiteout'
        ? relDir === ''
          ? `${WHITEOUT_PREFIX}${name}`
          : `${relDir}/${WHITEOUT_PREFIX}${name}`
        : kind === 'directory'
          ? `${rel}/`
          : rel;
    out.push({ rel, abs, st, kind, name: tarName, sortKey: Buffer.from(tarName, 'utf8') });
    if (kind === 'directory') subdirs.push(walk(abs, rel, out));
  });
  // The caller sorts what is found, so the order subdirectories finish in does not matter.
  await Promise.all(subdirs);
}

function kindOf(st: fs.Stats): Kind | null {
  if (st.isFile()) return 'file';
  if (st.isDirectory()) return 'directory';
  if (st.isSymbolicLink()) return 'symlink';
  // overlayfs marks a deleted lower file with a 0:0 character device.
  if (st.isCharacterDevice()) return st.rdev === 0 ? 'whiteout' : 'character-device';
  if (st.isBlockDevice()) return 'block-device';
  if (st.isFIFO()) return 'fifo';
  return null;
}

function whiteoutHeader(name: string, mtime: Date): EntryHeader {
  return { name, type: 'file', mode: fsConstants.S_IFREG, uid: 0, gid: 0, uname: '', gname: '', mtime, size: 0 };
}

function largeIds(uid: number, gid: number): Record<string, string> | null {
  if (uid <= USTAR_MAX_ID && gid <= USTAR_MAX_ID) return null;
  // tar-stream would write 7777777 for these without complaint.
  const pax: Record<string, string> = {};
  if (uid > USTAR_MAX_ID) pax.uid = String(uid);
  if (gid > USTAR_MAX_ID) pax.gid = String(gid);
  return pax;
}

/** Attributes that belong in a layer, sorted by name (as bytes) so the tar does not depend on the order they were read in. */
function packableXattrs(attrs: ReadonlyMap<string, Buffer> | undefined): Array<[string, Buffer]> {
  if (!attrs) return [];
  return [...attrs]
    .filter(([name]) => !name.startsWith('trusted.overlay.') && !name.startsWith('user.overlay.') && name !== 'security.selinux')
    .sort(([a], [b]) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
}

/**
 * The PAX records for an entry with extended attributes, and its header
 * without PAX. Everything tar-stream would have put in a PAX header of its
 * own (a long or non-ASCII name or link target, large ids) goes into ours
 * instead: a second PAX header would replace the first for most readers.
 * The header keeps an ASCII stand-in for such a name, as Go's archive/tar does.
 */
function paxRecordsFor(header: EntryHeader, attrs: Array<[string, Buffer]>): { records: Buffer; plain: EntryHeader } {
  const records: Array<[string, Buffer]> = [];
  const plain: EntryHeader = { ...header };
  delete plain.pax;
  if (!ustarNameFits(header.name)) {
    records.push(['path', Buffer.from(header.name, 'utf8')]);
    plain.name = asciiStandIn(header.name);
  }
  if (header.linkname && Buffer.byteLength(header.linkname) > 100) {
    records.push(['linkpath', Buffer.from(header.linkname, 'utf8')]);
    plain.linkname = asciiStandIn(header.linkname);
  }
  for (const [key, value] of Object.entries(header.pax ?? {})) records.push([key, Buffer.from(value, 'utf8')]);
  for (const [name, value] of attrs) records.push([`${SCHILY_XATTR}${name}`, value]);
  records.sort(([a], [b]) => Buffer.compare(Buffer.from(a), Buffer.from(b)));
  return { records: encodePaxRecords(records), plain };
}

/** Whether tar-stream can write `name` into the ustar name and prefix fields (its rules, in headers.js). */
function ustarNameFits(name: string): boolean {
  if (Buffer.byteLength(name) !== name.length) return false;
  let rest = name;
  let prefix = '';
  while (rest.length > 100) {
    const i = rest.indexOf('/');
    if (i === -1) return false;
    prefix += prefix ? `/${rest.slice(0, i)}` : rest.slice(0, i);
    rest = rest.slice(i + 1);
  }
  return prefix.length <= 155;
}

function asciiStandIn(name: string): string {
  return name.replace(/[^\x20-\x7e]/g, '_').slice(0, 100);
}

/** glibc's gnu_dev_major/gnu_dev_minor for the 32-bit dev_t layout. */
function devMajor(rdev: number): number {
  return (rdev >> 8) & 0xfff;
}

function devMinor(rdev: number): number {
  return (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
}

/** dev and ino exactly: as doubles, 64-bit inode numbers (overlayfs xino, btrfs) could collide. */
async function inodeKey(abs: string): Promise<string> {
  const st = await lstat(abs, { bigint: true });
  return `${st.dev}:${st.ino}`;
}

/**
 * Entries whose bytes are in memory go to tar-stream without waiting for each
 * to pass through gzip: waiting made every small file a round trip to zlib's
 * thread. At most QUEUE_BYTES are outstanding, so memory stays bounded. An
 * entry without a body that is an (empty) regular file still gets an empty
 * body, which tar-stream wants written.
 */
class EntryQueue {
  private readonly pending: Array<{ done: Promise<void>; size: number }> = [];
  private bytes = 0;

  async add(pack: tar.Pack, header: EntryHeader, body?: Buffer, abs?: string): Promise<void> {
    const done = new Promise<void>((resolve, reject) => {
      const cb = (err?: Error | null): void => (err ? reject(abs ? new Error(`${abs}: ${err.message}`) : err) : resolve());
      if (body) pack.entry(header, body, cb);
      else if (header.type === 'file') pack.entry(header, Buffer.alloc(0), cb);
      else pack.entry(header, cb);
    });
    done.catch(() => undefined);
    const size = 512 + (body?.length ?? 0);
    this.pending.push({ done, size });
    this.bytes += size;
    while (this.bytes > QUEUE_BYTES) await this.shift();
  }

  async drain(): Promise<void> {
    while (this.pending.length) await this.shift();
  }

  private async shift(): Promise<void> {
    const first = this.pending.shift()!;
    this.bytes -= first.size;
    await first.done;
  }
}

const QUEUE_BYTES = 8 * 1024 * 1024;

/**
 * The bytes of a small file: exactly `size` bytes, the size in the header.
 * A file that grew is cut (the caller re-checks its sources), one that shrank fails.
 */
function readSmall(abs: string, size: number): Buffer {
  const fd = openSource(abs);
  try {
    const buf = Buffer.allocUnsafe(size);
    const got = readFull(fd, buf);
    if (got !== size) throw new Error(`${abs}: changed size while it was packed (${size} bytes expected, ${got} read)`);
    return buf;
  } finally {
    closeSync(fd);
  }
}

/** Streams the file into the entry; never holds more than a chunk of it. */
async function addFileEntry(pack: tar.Pack, header: EntryHeader, abs: string): Promise<void> {
  // O_NOFOLLOW: if the file was swapped for a symlink since the walk, fail
  // rather than pack whatever it points at.
  const fh = await open(abs, fsConstants.O_RDONLY | fsConstants.O_NOFOLLOW);
  try {
    const size = header.size ?? 0;
    let sink!: EntrySink;
    const finished = new Promise<void>((resolve, reject) => {
      sink = pack.entry(header, (err) => (err ? reject(err) : resolve()));
    });
    if (size > 0) {
      // Exactly the size recorded in the header: a file that grew meanwhile
      // is cut, one that shrank makes tar-stream fail with "Size mismatch".
      const input = fh.createReadStream({ start: 0, end: size - 1, autoClose: false });
      for await (const chunk of input) {
        if (!sink.write(chunk as Buffer)) await drained(sink);
      }
    }
    sink.end(undefined);
    await finished;
  } finally {
    await fh.close();
  }
}

function drained(sink: EntrySink): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (err?: unknown) => {
      sink.off('drain', onDrain);
      sink.off('close', onClose);
      sink.off('error', done);
      if (err) reject(err);
      else resolve();
    };
    const onDrain = () => done();
    const onClose = () => done(new Error('tar entry closed while writing'));
    sink.on('drain', onDrain);
    sink.on('close', onClose);
    sink.on('error', done);
  });
}

/**
 * tar-stream's pack is a streamx stream; reading it as an async iterable keeps
 * it out of Node's stream internals. Its chunks (a 512-byte header, a small
 * file's body) are gathered into larger ones before gzip: each write to zlib
 * is a trip to its thread, and per tiny chunk those trips dominated packing
 * trees of small files.
 */
async function* hashing(
  pack: tar.Pack,
  hash: Hash,
  patcher: PaxMarkerPatcher | undefined,
  onEnd: () => Promise<void>,
): AsyncGenerator<Buffer> {
  let batch: Buffer[] = [];
  let size = 0;
  for await (const raw of pack as AsyncIterable<Buffer>) {
    const chunk = patcher ? patcher.patch(raw) : raw;
    hash.update(chunk);
    batch.push(chunk);
    size += chunk.length;
    if (size >= GZIP_BATCH) {
      yield Buffer.concat(batch, size);
      batch = [];
      size = 0;
    }
  }
  if (size) yield Buffer.concat(batch, size);
  await onEnd();
}

const GZIP_BATCH = 256 * 1024;

/**
 * zlib writes the OS it was built for into byte 9 of the gzip header; pin it
 * so the blob digest is the same on every platform.
 */
interface Deferred<T> {
  promise: Promise<T>;
  resolve: (v: T) => void;
  reject: (e: unknown) => void;
}

function deferred<T>(): Deferred<T> {
  let resolve!: (v: T) => void;
  let reject!: (e: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  // Callers that only read the stream would otherwise crash the process on
  // an unhandled rejection; the stream reports the same error.
  promise.catch(() => {});
  return { promise, resolve, reject };
}
