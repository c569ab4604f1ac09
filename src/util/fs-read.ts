/** Reading files that may legitimately be absent. */
import { readFile } from 'node:fs/promises';

/** ENOENT, or ENOTDIR (a path below a regular file): as missing as a path that is not there. */
export function isMissing(err: unknown): boolean {
  const code = (err as NodeJS.ErrnoException | undefined)?.code;
  return code === 'ENOENT' || code === 'ENOTDIR';
}

/**
 * JSON the cache wrote itself (records, sidecars), or undefined when the file
 * is missing. Such files are written atomically, so text that does not parse
 * means outside damage: treated as absent (and `onDamaged` told), and rebuilt
 * by the caller.
 */
export async function readJsonIfPresent<T>(file: string, onDamaged?: () => void): Promise<T | undefined> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    if (isMissing(err)) return undefined;
    throw err;
  }
  try {
    return JSON.parse(text) as T;
  } catch {
    onDamaged?.();
    return undefined;
  }
}
