/**
 * A promise made only when someone asks for it, and made once: for results
 * that cost I/O and that most runs never need (the directories of a layer).
 */
export function once<T>(make: () => Promise<T>): () => Promise<T> {
  let made: Promise<T> | undefined;
  return () => (made ??= make());
}
