/** Counting semaphores keyed by name (a host, or the whole runner), FIFO, abortable while waiting. */
import { VclError } from '../errors.js';

export class Limiter {
  private readonly active = new Map<string, number>();
  private readonly waiting = new Map<string, { resolve: () => void; reject: (e: unknown) => void }[]>();

  constructor(private readonly limitOf: (key: string) => number) {}

  async acquire(key: string, signal?: AbortSignal): Promise<() => void> {
    if ((this.active.get(key) ?? 0) < this.limitOf(key) && !(this.waiting.get(key)?.length ?? 0)) {
      this.active.set(key, (this.active.get(key) ?? 0) + 1);
      return this.releaser(key);
    }
    await new Promise<void>((resolve, reject) => {
      const entry = { resolve, reject };
      const queue = this.waiting.get(key) ?? [];
      queue.push(entry);
      this.waiting.set(key, queue);
      signal?.addEventListener(
        'abort',
        () => {
          const q = this.waiting.get(key) ?? [];
          const i = q.indexOf(entry);
          if (i >= 0) {
            q.splice(i, 1);
            reject(new VclError('ABORTED', `gave up waiting for a ${key} slot`));
          }
        },
        { once: true },
      );
    });
    return this.releaser(key);
  }

  /** Captures or copies running under `key`, and how many wait. */
  usage(key: string): { active: number; waiting: number } {
    return { active: this.active.get(key) ?? 0, waiting: this.waiting.get(key)?.length ?? 0 };
  }

  private releaser(key: string): () => void {
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.get(key)?.shift();
      // The slot passes straight to the next waiter: the count stays the same.
      if (next) next.resolve();
      else this.active.set(key, (this.active.get(key) ?? 1) - 1);
    };
  }
}
