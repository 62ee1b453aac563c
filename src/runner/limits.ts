/** Counting semaphores keyed by name (a host, or the whole runner), FIFO, abortable while waiting. */
import { VclError } from '../errors.js';
import type { Logger } from '../log.js';
import type { CaptureFence, CaptureStore, HostSlotKind } from '../store/index.js';

export class Limiter {
  private readonly active = new Map<string, number>();
  private readonly waiting = new Map<string, { resolve: () => void; reject: (e: unknown) => void }[]>();

  constructor(private readonly limitOf: (key: string) => number) {}

  async acquire(key: string, signal?: AbortSignal): Promise<() => void> {
    if ((this.active.get(key) ?? 0) < this.limitOf(key) && !(this.waiting.get(key)?.length ?? 0)) {
      this.active.set(key, (this.active.get(key) ?? 0) + 1);
      return this.releaser(key);
    }
    // An abort that already happened fires no event: without this the caller would queue and be handed a slot.
    if (signal?.aborted) throw new VclError('ABORTED', `gave up waiting for a ${key} slot`);
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

/**
 * Per-host slots held in the store (`acquireHostSlot`), so that a hypervisor's `maxCaptures` and
 * `maxCopies` hold across every runner on the store at every instant. A local {@link Limiter} with the same
 * limit comes first: this runner's own captures queue in order (FIFO) without asking the store, and the
 * store is asked only by a capture that would fit here; one that finds the host full across runners asks
 * again every `pollMs`. A release gives the store's slot back before the local one, so the next local
 * waiter finds it free at once.
 */
export class HostSlots {
  private readonly local: Limiter;
  /** Captures waiting for a host another runner fills, by host: a wake ends their pause early. */
  private readonly sleepers = new Map<string, Set<() => void>>();

  constructor(
    private readonly store: CaptureStore,
    private readonly kind: HostSlotKind,
    private readonly limitOf: (host: string) => number,
    private readonly pollMs: number,
    private readonly log: Logger,
  ) {
    this.local = new Limiter(limitOf);
  }

  /** A slot of `host` came free in another runner (a store wake): its waiters ask again now. */
  wake(host: string): void {
    for (const resume of this.sleepers.get(host) ?? []) resume();
  }

  /** Held here (and waited for), as `runner.health()` reports it. */
  usage(host: string): { active: number; waiting: number } {
    return this.local.usage(host);
  }

  /**
   * Waits for a slot of `host` for the capture; `store` is the execution's (fenced) view, so a capture
   * this runner lost fails with `FENCED` instead of taking a slot.
   */
  async acquire(
    store: CaptureStore,
    captureId: string,
    fence: CaptureFence,
    host: string,
    signal: AbortSignal,
  ): Promise<() => void> {
    const releaseLocal = await this.local.acquire(host, signal);
    try {
      const slot = { host, kind: this.kind, limit: this.limitOf(host) };
      while (!(await store.acquireHostSlot(captureId, slot, fence))) await this.pause(host, signal);
    } catch (err) {
      releaseLocal();
      throw err;
    }
    let released = false;
    const release = () => {
      if (released) return;
      released = true;
      this.store
        .releaseHostSlot(captureId, host, this.kind)
        .catch((err: unknown) =>
          // The row stays until the capture's claim ends (then it no longer counts).
          this.log.warn({ err, captureId, host, kind: this.kind }, 'could not give a host slot back'),
        )
        .finally(releaseLocal);
    };
    // Stopped while the store answered: the step must not start after its abort (nothing would stop it).
    if (signal.aborted) {
      release();
      throw new VclError('ABORTED', `gave up waiting for a ${host} slot`);
    }
    return release;
  }

  /** Until the next poll, a wake for `host`, or the abort. */
  private pause(host: string, signal: AbortSignal): Promise<void> {
    const sleepers = this.sleepers.get(host) ?? new Set<() => void>();
    this.sleepers.set(host, sleepers);
    return new Promise((resolve, reject) => {
      const done = () => {
        clearTimeout(timer);
        signal.removeEventListener('abort', abort);
        sleepers.delete(resume);
        if (sleepers.size === 0) this.sleepers.delete(host);
      };
      const resume = () => {
        done();
        resolve();
      };
      const abort = () => {
        done();
        reject(new VclError('ABORTED', `gave up waiting for a ${host} slot`));
      };
      const timer = setTimeout(resume, this.pollMs);
      sleepers.add(resume);
      if (signal.aborted) abort();
      else signal.addEventListener('abort', abort, { once: true });
    });
  }
}
