/**
 * At most `limit` holders at once. Waiters are served first come, first
 * served, except that those who ask to go `first` are served before all the
 * others (first come, first served among themselves).
 */
export class Semaphore {
  private active = 0;
  private readonly waiting: Array<() => void> = [];
  private readonly waitingFirst: Array<() => void> = [];

  constructor(private readonly limit: number) {}

  async run<T>(fn: () => Promise<T>, opts: { first?: boolean } = {}): Promise<T> {
    if (this.active >= this.limit) await new Promise<void>((resolve) => (opts.first ? this.waitingFirst : this.waiting).push(resolve));
    else this.active++;
    try {
      return await fn();
    } finally {
      const next = this.waitingFirst.shift() ?? this.waiting.shift();
      if (next) next();
      else this.active--;
    }
  }
}
