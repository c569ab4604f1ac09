/**
 * The entries of a stored layer, headers only (bodies are skipped): for what
 * can be known about a layer without unpacking it.
 */
import path from 'node:path';
import tar from 'tar-stream';
import type { ContentStore } from '../cache/content-store.js';
import { uncompressed } from './layer-apply.js';

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

export async function* layerEntries(digest: string, store: ContentStore): AsyncGenerator<LayerEntry> {
  const ex = tar.extract();
  const bytes = await uncompressed(store.read(digest));
  bytes.on('error', (err) => ex.destroy(err));
  bytes.pipe(ex as unknown as NodeJS.WritableStream);
  for await (const entry of ex) {
    const rel = path.posix.normalize(entry.header.name).replace(/^(\.\/)+|^\/+|\/+$/g, '').replace(/^\.$/, '');
    const whiteout = whiteoutOf(rel);
    yield whiteout ? { rel, header: entry.header, whiteout } : { rel, header: entry.header };
    entry.resume();
  }
}

function whiteoutOf(rel: string): LayerEntry['whiteout'] {
  const base = path.posix.basename(rel);
  if (!base.startsWith('.wh.')) return undefined;
  const dir = path.posix.dirname(rel) === '.' ? '' : path.posix.dirname(rel);
  if (base === '.wh..wh..opq') return { opaque: dir };
  const name = base.slice('.wh.'.length);
  return { deletes: dir ? `${dir}/${name}` : name };
}
