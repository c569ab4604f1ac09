/**
 * What a layer's tar headers mean, and which ones a layer may not have: the
 * rules every reader of a layer applies (the applier, the header reader, the
 * check a base image's layers get when they are imported), so they all agree
 * on what an entry names.
 *
 * The rules, for untrusted layers:
 * - a name climbing out of the root with `..` is refused (as Docker does); a
 *   leading `/` is dropped, as Docker, containerd and umoci do: a layer's
 *   paths are relative to the image's root whichever way they are written,
 *   and refusing them would reject images every runtime accepts;
 * - names and link targets with a NUL byte, longer than Linux takes (4096
 *   bytes, 255 a component) or of a type we do not know are refused;
 * - a whiteout naming its own directory or a parent (`.wh.`, `.wh..`,
 *   `.wh...`) is refused; a hard link must name a path inside the root;
 * - PAX and GNU long-name headers are capped at 4 MiB each (tar-stream's
 *   cap), and a PAX size that is not a plain number is refused.
 * Symlinks may point anywhere: they are resolved inside the root when
 * something is written through them (layer-apply.ts), never on the host.
 */
import { createHash } from 'node:crypto';
import type { Readable } from 'node:stream';
import tar from 'tar-stream';
import type { ContentStore } from '../cache/content-store.js';
import { InvalidImageError, LayergraphError } from '../errors.js';
import { LayerLimitError, uncompressed, type LayerLimits } from './layer-stream.js';

/** Linux's PATH_MAX and NAME_MAX, in bytes: no longer name can be created, so none is accepted. */
const PATH_MAX = 4096;
const NAME_MAX = 255;

export const WHITEOUT_PREFIX = '.wh.';
export const OPAQUE_MARKER = '.wh..wh..opq';
/** AUFS bookkeeping (`.wh..wh.plnk`, `.wh..wh.aufs`): not content, never applied. */
const WHITEOUT_META_PREFIX = '.wh..wh.';

const ENTRY_TYPES = new Set(['file', 'contiguous-file', 'directory', 'symlink', 'link', 'character-device', 'block-device', 'fifo']);

export type Header = tar.Header & { pax?: Record<string, string> | null };

/** One entry, checked: where it is and what kind of change it makes. */
export interface CheckedEntry {
  /** Clean path relative to the root: no leading `/` or `./`, no `.`, `..` or empty component; '' for the root itself. */
  rel: string;
  /** `rel`'s directory ('' for the root) and last component. */
  dir: string;
  base: string;
  /** `opaque`: `.wh..wh..opq`, empties `dir`; `deletes`: `.wh.<name>`, removes `dir/<name>`; `ignored`: AUFS bookkeeping. */
  whiteout?: { opaque: true } | { deletes: string } | { ignored: true };
  /** A hard link's target, clean as `rel`. */
  linkRel?: string;
}

/** A header that breaks the rules above; readers say which layer and entry. */
export class EntryRefused extends Error {}

/** Checks one header against the rules; throws EntryRefused. */
export function checkEntry(header: Header): CheckedEntry {
  const type = header.type ?? 'file';
  if (!ENTRY_TYPES.has(type)) throw new EntryRefused(`it has an entry type layergraph does not apply (${String(header.type)})`);
  const paxSize = header.pax?.size;
  if (paxSize !== undefined && !/^\d{1,15}$/.test(paxSize)) throw new EntryRefused(`its PAX size ${show(paxSize)} is not a number of bytes`);
  if (!(Number.isSafeInteger(header.size ?? 0) && (header.size ?? 0) >= 0)) throw new EntryRefused(`its size ${String(header.size)} is not a number of bytes`);

  const rel = cleanName(header.name, 'its path');
  const i = rel.lastIndexOf('/');
  const dir = i === -1 ? '' : rel.slice(0, i);
  const base = rel.slice(i + 1);
  const entry: CheckedEntry = { rel, dir, base };

  if (base.startsWith(WHITEOUT_PREFIX)) {
    if (base === OPAQUE_MARKER) entry.whiteout = { opaque: true };
    else if (base.startsWith(WHITEOUT_META_PREFIX)) entry.whiteout = { ignored: true };
    else {
      const name = base.slice(WHITEOUT_PREFIX.length);
      if (name === '' || name === '.' || name === '..') throw new EntryRefused('it is a whiteout of its own directory or a parent');
      entry.whiteout = { deletes: dir === '' ? name : `${dir}/${name}` };
    }
    return entry;
  }
  if (type === 'link') {
    entry.linkRel = cleanName(header.linkname ?? '', 'its hard link target');
    if (entry.linkRel === '') throw new EntryRefused('it is a hard link to the root directory');
  } else if (type === 'symlink') {
    const target = header.linkname ?? '';
    if (target === '') throw new EntryRefused('it is a symlink to nothing (an empty target)');
    if (target.includes('\0')) throw new EntryRefused('its symlink target holds a NUL byte');
    if (Buffer.byteLength(target) > PATH_MAX) throw new EntryRefused(`its symlink target is ${Buffer.byteLength(target)} bytes long; Linux takes at most ${PATH_MAX}`);
  }
  return entry;
}

/** `unsafeName` as a clean relative path (see CheckedEntry.rel); `what` names it in the refusal. */
function cleanName(unsafeName: string, what: string): string {
  if (unsafeName === '') throw new EntryRefused(`${what} is empty`);
  if (unsafeName.includes('\0')) throw new EntryRefused(`${what} holds a NUL byte`);
  const bytes = Buffer.byteLength(unsafeName);
  if (bytes > PATH_MAX) throw new EntryRefused(`${what} is ${bytes} bytes long; Linux takes at most ${PATH_MAX}`);
  const out: string[] = [];
  for (const part of unsafeName.split('/')) {
    if (part === '' || part === '.') continue;
    if (part === '..') {
      if (out.length === 0) throw new EntryRefused(`${what} climbs out of the root with ".."`);
      out.pop();
      continue;
    }
    if (Buffer.byteLength(part) > NAME_MAX) throw new EntryRefused(`${what} has a component of ${Buffer.byteLength(part)} bytes; Linux takes at most ${NAME_MAX}`);
    out.push(part);
  }
  return out.join('/');
}

/**
 * `layer sha256:… of <image>: entry "<name>": <reason>`, the way every
 * refusal of a layer reads. `entry` undefined: the problem is not one
 * entry's (the stream itself); `after` then says where in the tar it was.
 */
export function layerError(
  layer: string,
  err: unknown,
  where: { entry: string } | { after: string | undefined },
): InvalidImageError {
  const reason = err instanceof Error ? err.message : String(err);
  if ('entry' in where) return new InvalidImageError(`${layer}: entry ${show(where.entry)}: ${reason}`, { cause: err });
  const at = where.after === undefined ? 'before its first entry' : `after entry ${show(where.after)}`;
  return new InvalidImageError(`${layer}: ${reason} (${at})`, { cause: err });
}

/** How a layer is named in messages: `layer sha256:…`, and `of <image>` when known. */
export function describeLayer(layer: { digest?: string; image?: string } | undefined): string {
  if (!layer?.digest) return layer?.image ? `a layer of ${layer.image}` : 'a layer';
  return layer.image ? `layer ${layer.digest} of ${layer.image}` : `layer ${layer.digest}`;
}

/**
 * A name from a tar as a message may show it: quoted, control characters
 * escaped (a name must not drive the terminal), and cut short when huge.
 */
export function show(unsafeName: string): string {
  const shown = JSON.stringify(unsafeName.length > 200 ? unsafeName.slice(0, 200) : unsafeName);
  return unsafeName.length > 200 ? `${shown.slice(0, -1)}…" (${Buffer.byteLength(unsafeName)} bytes)` : shown;
}

/** tar-stream's own messages for a tar that does not parse. */
const TAR_ERRORS = new Set(['Unexpected end of data', 'Invalid header', 'Invalid tar header. Maybe the tar is corrupted or it needs to be gunzipped?', 'Invalid tar header: unknown format.']);

/** What was wrong with a layer's bytes, said for people: damaged gzip, a tar that does not parse, a header too large. */
export function streamProblem(err: unknown): Error {
  const message = err instanceof Error ? err.message : String(err);
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  if (typeof code === 'string' && code.startsWith('Z_')) return new Error(`its gzip stream is damaged: ${message}`, { cause: err });
  if (TAR_ERRORS.has(message)) return new Error(`it is not a valid tar: ${message}`, { cause: err });
  if (message === 'Header exceeds max size') return new Error('a PAX or GNU long-name header is larger than 4 MiB, the most layergraph reads', { cause: err });
  return err instanceof Error ? err : new Error(message);
}

export interface LayerEntry {
  /** Path relative to the root, no leading `./` or `/`, no trailing `/`; '' for the root itself. */
  rel: string;
  header: tar.Header;
  /**
   * What the entry means when it is a whiteout: `.wh..wh..opq` empties its
   * directory (`opaque`, '' for the root), `.wh.<name>` deletes `<name>`.
   */
  whiteout?: { opaque: string } | { deletes: string };
}

/** The entries of a stored layer, headers only (bodies are skipped), checked by the rules above. */
export async function* layerEntries(digest: string, store: ContentStore): AsyncGenerator<LayerEntry> {
  const ex = tar.extract();
  const bytes = await uncompressed(store.read(digest));
  bytes.on('error', (err) => ex.destroy(err));
  bytes.pipe(ex as unknown as NodeJS.WritableStream);
  for await (const entry of ex) {
    let checked: CheckedEntry;
    try {
      checked = checkEntry(entry.header as Header);
    } catch (err) {
      ex.destroy();
      throw layerError(describeLayer({ digest }), err, { entry: entry.header.name });
    }
    const { rel, dir, whiteout } = checked;
    if (whiteout && 'opaque' in whiteout) yield { rel, header: entry.header, whiteout: { opaque: dir } };
    else if (whiteout && 'deletes' in whiteout) yield { rel, header: entry.header, whiteout };
    else if (!whiteout) yield { rel, header: entry.header };
    entry.resume();
  }
}

export interface LayerCheck {
  /** sha256 of the uncompressed tar. */
  diffId: string;
  entries: number;
}

/**
 * Reads a whole layer the way the applier would, writing nothing: every
 * header against the rules, the stream against `limits`, and the diffID
 * computed. For layers from outside (base images), before anything uses them.
 * `layer` names the layer in errors (see describeLayer).
 */
export async function checkLayer(blob: Readable, layer: string, limits: LayerLimits): Promise<LayerCheck> {
  const hash = createHash('sha256');
  const ex = tar.extract();
  let bytes: Readable;
  try {
    bytes = await uncompressed(blob, limits);
  } catch (err) {
    throw layerError(layer, err, { after: undefined });
  }
  bytes.on('data', (chunk: Buffer) => hash.update(chunk));
  bytes.on('error', (err) => ex.destroy(err));
  bytes.pipe(ex as unknown as NodeJS.WritableStream);
  let last: string | undefined;
  let entries = 0;
  try {
    for await (const entry of ex) {
      const name = entry.header.name;
      try {
        checkEntry(entry.header as Header);
      } catch (err) {
        throw layerError(layer, err, { entry: name });
      }
      last = name;
      entries++;
      entry.resume();
    }
  } catch (err) {
    ex.destroy();
    bytes.destroy();
    if (err instanceof LayergraphError) throw err;
    // A limit crossed while an entry's body streams by is met in that entry.
    if (err instanceof LayerLimitError) throw layerError(layer, err, last === undefined ? { after: undefined } : { entry: last });
    throw layerError(layer, streamProblem(err), { after: last });
  }
  return { diffId: `sha256:${hash.digest('hex')}`, entries };
}
