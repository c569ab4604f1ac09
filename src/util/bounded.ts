/**
 * Run tasks at most `limit` at a time, in order of start. For work that waits
 * on the filesystem (many small reads, copies), where one at a time leaves
 * the disk idle and all at once exhausts file descriptors.
 */
export async function runBounded(tasks: ReadonlyArray<() => Promise<void>>, limit: number): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) await tasks[next++]!();
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
}
