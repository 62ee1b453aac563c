/**
 * A counting semaphore with a FIFO queue: how a host's channel limit is enforced. Waiting is abortable so
 * that a command cancelled while queued never takes a slot.
 */
export class Slots {
  private used = 0;
  private readonly waiters: Array<() => void> = [];

  constructor(readonly limit: number) {}

  get inUse(): number {
    return this.used;
  }

  get queued(): number {
    return this.waiters.length;
  }

  /**
   * Resolves with a release function once a slot is free. Rejects with `onAbort()`'s error if `signal`
   * aborts first. The release function is idempotent.
   */
  async acquire(signal: AbortSignal | undefined, onAbort: () => Error): Promise<() => void> {
    if (signal?.aborted) throw onAbort();
    if (this.used < this.limit && this.waiters.length === 0) {
      this.used++;
      return this.releaser();
    }
    return await new Promise<() => void>((resolve, reject) => {
      const grant = () => {
        signal?.removeEventListener('abort', abort);
        this.used++;
        resolve(this.releaser());
      };
      const abort = () => {
        const i = this.waiters.indexOf(grant);
        if (i >= 0) this.waiters.splice(i, 1);
        reject(onAbort());
      };
      signal?.addEventListener('abort', abort, { once: true });
      this.waiters.push(grant);
    });
  }

  private releaser(): () => void {
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.used--;
      const next = this.waiters.shift();
      if (next !== undefined) next();
    };
  }
}
