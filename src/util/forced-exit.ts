/**
 * Last-moment cleanups for a forced exit (a second Ctrl-C): the process is
 * about to leave without unwinding, so what must not outlive it — a mount, a
 * running container — is undone here, synchronously.
 */
const cleanups = new Set<() => void>();

/** Registers `fn`; the returned function unregisters it once the resource is released normally. */
export function onForcedExit(fn: () => void): () => void {
  cleanups.add(fn);
  return () => cleanups.delete(fn);
}

export function runForcedExitCleanups(): void {
  for (const fn of [...cleanups]) {
    try {
      fn();
    } catch {
      // Leaving anyway: one failed cleanup must not stop the others.
    }
  }
  cleanups.clear();
}
