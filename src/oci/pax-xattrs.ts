/**
 * Extended attributes in layer tars, as PAX `SCHILY.xattr.<name>` records
 * whose values are raw bytes (security.capability is binary), the way GNU
 * tar, Go's archive/tar and so containerd and Docker write them.
 *
 * tar-stream cannot carry them either way: it builds PAX records as JS
 * strings encoded to UTF-8, and decodes them the same way, so a value that is
 * not UTF-8 is mangled. Writing, the packer adds a plain file entry under a
 * one-off marker name whose body is the records, and `PaxMarkerPatcher`
 * rewrites that header into a PAX extended header in the byte stream.
 * Reading, `PaxXattrTap` follows the tar's blocks alongside tar-stream and
 * keeps each entry's records as bytes.
 */
import { randomBytes } from 'node:crypto';

export const SCHILY_XATTR = 'SCHILY.xattr.';

const BLOCK = 512;
const TYPEFLAG_OFFSET = 156;
const CHECKSUM_OFFSET = 148;
const PAX_HEADER_NAME = 'PaxHeader';

/** PAX records `"<len> <key>=<value>\n"`, where len counts the whole record in bytes. */
export function encodePaxRecords(records: ReadonlyArray<readonly [string, Buffer]>): Buffer {
  const out: Buffer[] = [];
  for (const [key, value] of records) {
    const rest = Buffer.concat([Buffer.from(` ${key}=`, 'utf8'), value, Buffer.from('\n')]);
    let digits = String(rest.length).length;
    if (String(rest.length + digits).length > digits) digits++;
    out.push(Buffer.from(String(rest.length + digits)), rest);
  }
  return Buffer.concat(out);
}

/** Records of a PAX header body, values as bytes; later keys win as in the format. */
export function decodePaxRecords(buf: Buffer): Map<string, Buffer> {
  const out = new Map<string, Buffer>();
  let at = 0;
  while (at < buf.length) {
    const space = buf.indexOf(0x20, at);
    if (space === -1) break;
    const len = Number(buf.subarray(at, space).toString('latin1'));
    if (!Number.isInteger(len) || len <= space - at + 1 || at + len > buf.length) break;
    const record = buf.subarray(space + 1, at + len - 1); // without the trailing "\n"
    const eq = record.indexOf(0x3d);
    if (eq !== -1) out.set(record.subarray(0, eq).toString('utf8'), Buffer.from(record.subarray(eq + 1)));
    at += len;
  }
  return out;
}

/**
 * The marker name for one pack: random, so no real entry or file body
 * carries it, and never in the output (every marker header is rewritten).
 */
export function newPaxMarker(): string {
  return `@layergraph-pax-${randomBytes(16).toString('hex')}`;
}

/**
 * Rewrites header blocks named `marker` (written by tar-stream as a regular
 * file) into PAX extended headers: name `PaxHeader`, type `x`, checksum
 * recomputed. tar-stream pushes every header as its own 512-byte chunk,
 * which is what this looks for.
 */
export class PaxMarkerPatcher {
  private readonly name: Buffer;
  patched = 0;

  constructor(marker: string) {
    this.name = Buffer.concat([Buffer.from(marker, 'latin1'), Buffer.alloc(1)]);
  }

  patch(chunk: Buffer): Buffer {
    if (chunk.length !== BLOCK || chunk[TYPEFLAG_OFFSET] !== 0x30 || !chunk.subarray(0, this.name.length).equals(this.name)) {
      return chunk;
    }
    const block = Buffer.from(chunk);
    block.fill(0, 0, 100);
    block.write(PAX_HEADER_NAME, 0, 'latin1');
    block[TYPEFLAG_OFFSET] = 0x78; // 'x'
    block.write(`${checksum(block).toString(8).padStart(6, '0')} `, CHECKSUM_OFFSET, 'latin1');
    this.patched++;
    return block;
  }
}

/** tar-stream's (and POSIX's) header checksum: the checksum field counted as spaces. */
function checksum(block: Buffer): number {
  let sum = 8 * 0x20;
  for (let i = 0; i < CHECKSUM_OFFSET; i++) sum += block[i]!;
  for (let i = CHECKSUM_OFFSET + 8; i < BLOCK; i++) sum += block[i]!;
  return sum;
}

interface Pending {
  /** the entry's name as tar-stream will report it, to catch the two readers falling out of step */
  name: string;
  xattrs: Map<string, Buffer>;
}

/**
 * Follows a tar's blocks as its bytes stream by (`push` each chunk before
 * tar-stream sees it) and queues, per entry, the SCHILY.xattr records that
 * came before it. `take(name)` hands out the next entry's, in tar order.
 */
export class PaxXattrTap {
  private buf: Buffer = Buffer.alloc(0);
  /** bytes to skip (an entry's body and padding) before the next header */
  private skip = 0;
  /** bytes of a PAX or GNU long-name body still to collect, and what it is */
  private collect: { type: number; size: number } | null = null;
  private pax: Map<string, Buffer> | null = null;
  private gnuLongName: string | null = null;
  private readonly queue: Pending[] = [];
  private ended = false;

  push(chunk: Buffer): void {
    if (this.ended) return;
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    for (;;) {
      if (this.skip > 0) {
        const n = Math.min(this.skip, this.buf.length);
        this.buf = this.buf.subarray(n);
        this.skip -= n;
        if (this.skip > 0) return;
      }
      if (this.collect) {
        const padded = roundUp(this.collect.size);
        if (this.buf.length < padded) return;
        this.body(this.collect.type, this.buf.subarray(0, this.collect.size));
        this.buf = this.buf.subarray(padded);
        this.collect = null;
        continue;
      }
      if (this.buf.length < BLOCK) return;
      const block = this.buf.subarray(0, BLOCK);
      this.buf = this.buf.subarray(BLOCK);
      if (block.every((b) => b === 0)) {
        this.ended = true;
        return;
      }
      this.header(block);
    }
  }

  /** The xattrs of the next entry, which tar-stream reports as `name`. */
  take(name: string): Map<string, Buffer> {
    const next = this.queue.shift();
    if (!next) throw new Error(`${name}: internal: extended attributes read out of step with the tar entries`);
    if (next.xattrs.size > 0 && next.name !== name) {
      throw new Error(`${name}: internal: extended attributes read for ${next.name} instead`);
    }
    return next.xattrs;
  }

  private header(block: Buffer): void {
    const type = block[TYPEFLAG_OFFSET]!;
    let size = readSize(block);
    // pax 'x', global 'g', GNU long name 'L' and long link 'K' describe the next entry.
    if (type === 0x78 || type === 0x67 || type === 0x4c || type === 0x4b) {
      this.collect = { type, size };
      return;
    }
    let name = cString(block, 0, 100);
    if (block.subarray(257, 262).toString('latin1') === 'ustar' && block[345] !== 0) name = `${cString(block, 345, 155)}/${name}`;
    const paxPath = this.pax?.get('path');
    if (paxPath) name = paxPath.toString('utf8');
    else if (this.gnuLongName !== null) name = this.gnuLongName;
    const paxSize = this.pax?.get('size');
    if (paxSize) size = Number(paxSize.toString('latin1'));
    // As tar-stream: a directory (or an old-style file name ending in "/") has no body.
    const isDir = type === 0x35 || ((type === 0x30 || type === 0) && cString(block, 0, 100).endsWith('/'));
    if (isDir) size = 0;

    const xattrs = new Map<string, Buffer>();
    for (const [key, value] of this.pax ?? []) {
      if (key.startsWith(SCHILY_XATTR)) xattrs.set(key.slice(SCHILY_XATTR.length), value);
    }
    this.queue.push({ name, xattrs });
    this.pax = null;
    this.gnuLongName = null;
    this.skip = roundUp(size);
  }

  private body(type: number, body: Buffer): void {
    if (type === 0x78) this.pax = decodePaxRecords(body);
    else if (type === 0x4c) this.gnuLongName = cString(body, 0, body.length);
    // 'g' (global records) and 'K' (long link names) carry no per-entry xattrs.
  }
}

function roundUp(size: number): number {
  return Math.ceil(size / BLOCK) * BLOCK;
}

function cString(buf: Buffer, offset: number, length: number): string {
  const field = buf.subarray(offset, offset + length);
  const nul = field.indexOf(0);
  return field.subarray(0, nul === -1 ? field.length : nul).toString('utf8');
}

/** The size field: octal text, or base-256 when its first byte has the high bit. */
function readSize(block: Buffer): number {
  const field = block.subarray(124, 136);
  if (field[0]! & 0x80) {
    let n = field[0]! & 0x7f;
    for (let i = 1; i < field.length; i++) n = n * 256 + field[i]!;
    return n;
  }
  const text = field.toString('latin1').replace(/[\0 ]+/g, ' ').trim();
  return text === '' ? 0 : parseInt(text, 8);
}
