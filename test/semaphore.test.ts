import { describe, expect, it } from 'vitest';
import { Semaphore } from '../src/util/semaphore.js';

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Runs `n` tasks through `sem`, recording how many run at once. */
async function runTasks(sem: Semaphore, n: number, work: (i: number) => Promise<void>): Promise<{ peak: number; results: number[] }> {
  let running = 0;
  let peak = 0;
  const results = await Promise.all(
    Array.from({ length: n }, (_, i) =>
      sem.run(async () => {
        running++;
        peak = Math.max(peak, running);
        try {
          await work(i);
          return i;
        } finally {
          running--;
        }
      }),
    ),
  );
  return { peak, results };
}

describe('Semaphore', () => {
  it('never runs more than `limit` tasks at once, and runs all of them', async () => {
    for (const limit of [1, 2, 3, 8]) {
      const sem = new Semaphore(limit);
      const { peak, results } = await runTasks(sem, 20, (i) => sleep((i * 7) % 5));
      expect(peak, `limit ${limit}`).toBe(Math.min(limit, 20));
      expect(results).toEqual(Array.from({ length: 20 }, (_, i) => i));
    }
  });

  it('uses every slot when tasks wait', async () => {
    const sem = new Semaphore(4);
    const { peak } = await runTasks(sem, 4, () => sleep(10));
    expect(peak).toBe(4);
  });

  it('returns what the task returns', async () => {
    const sem = new Semaphore(1);
    expect(await sem.run(async () => 'value')).toBe('value');
  });

  it('starts waiters first come, first served', async () => {
    const sem = new Semaphore(1);
    const started: number[] = [];
    await Promise.all(
      [0, 1, 2, 3, 4].map((i) =>
        sem.run(async () => {
          started.push(i);
          await sleep(1);
        }),
      ),
    );
    expect(started).toEqual([0, 1, 2, 3, 4]);
  });

  it('releases the slot of a task that throws', async () => {
    const sem = new Semaphore(1);
    await expect(sem.run(async () => Promise.reject(new Error('boom')))).rejects.toThrow('boom');
    // the only slot is free again: this would hang if it were not
    let ran = false;
    await sem.run(async () => {
      ran = true;
    });
    expect(ran).toBe(true);
  });

  it('keeps the limit and finishes the rest when some tasks fail while others wait', async () => {
    const sem = new Semaphore(2);
    let running = 0;
    let peak = 0;
    const settled = await Promise.allSettled(
      Array.from({ length: 10 }, (_, i) =>
        sem.run(async () => {
          running++;
          peak = Math.max(peak, running);
          try {
            await sleep(2);
            if (i % 3 === 0) throw new Error(`task ${i} failed`);
            return i;
          } finally {
            running--;
          }
        }),
      ),
    );
    expect(peak).toBe(2);
    expect(settled.filter((s) => s.status === 'rejected')).toHaveLength(4);
    expect(settled.filter((s) => s.status === 'fulfilled').map((s) => (s as PromiseFulfilledResult<number>).value)).toEqual([
      1, 2, 4, 5, 7, 8,
    ]);
    // all slots are free afterwards
    const { peak: after } = await runTasks(sem, 2, () => sleep(5));
    expect(after).toBe(2);
  });

  it('releases the slot of a task that throws synchronously', async () => {
    const sem = new Semaphore(1);
    const bad = (() => {
      throw new Error('sync boom');
    }) as unknown as () => Promise<void>;
    await expect(sem.run(bad)).rejects.toThrow('sync boom');
    await expect(Promise.race([sem.run(async () => 'free'), sleep(500).then(() => 'stuck')])).resolves.toBe('free');
  });

  it('serves waiters that ask to go first before the others, each kind in the order it came', async () => {
    const sem = new Semaphore(1);
    const order: string[] = [];
    let release!: () => void;
    const holder = sem.run(() => new Promise<void>((r) => (release = r)));
    const task = (name: string, first: boolean) => sem.run(async () => void order.push(name), { first });
    const all = [task('copy-1', false), task('copy-2', false), task('run-1', true), task('copy-3', false), task('run-2', true)];
    await sleep(5);
    expect(order).toEqual([]); // the slot is still held
    release();
    await Promise.all([holder, ...all]);
    expect(order).toEqual(['run-1', 'run-2', 'copy-1', 'copy-2', 'copy-3']);
  });
});
