/**
 * Run tasks at most `limit` at a time. For work that waits on the filesystem
 * (many small reads, copies), where one at a time leaves the disk idle and
 * all at once exhausts file descriptors.
 */
import { Semaphore } from './semaphore.js';

export async function runBounded(tasks: ReadonlyArray<() => Promise<void>>, limit: number): Promise<void> {
  const slots = new Semaphore(limit);
  await Promise.all(tasks.map((task) => slots.run(task)));
}
