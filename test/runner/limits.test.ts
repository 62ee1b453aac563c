/**
 * The runner's slot keeping, without a lab: `Limiter` (this runner's FIFO semaphores) and `HostSlots`
 * (per-host slots held in a real SQLite store, shared by two "runners" through two handles on one file).
 */
import { performance } from 'node:perf_hooks';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.js';
import { HostSlots, Limiter } from '../../src/runner/limits.js';
import {
  type CaptureFence,
  type CaptureStore,
  openSqliteStore,
  type SqliteCaptureStore,
} from '../../src/store/index.js';
import { overriding } from '../helpers/store-override.js';
import { expectVclError, REPO, seed, tempFolder } from '../store/helpers.js';

/** Lets every promise already settled run its callbacks (and a store call on SQLite finish). */
const settle = () => new Promise((r) => setTimeout(r, 0));

/** A promise's state, read without waiting for it. */
function track<T>(p: Promise<T>): { done: () => boolean; value: Promise<T> } {
  let done = false;
  const value = p.finally(() => {
    done = true;
  });
  // A rejection is asserted by the test that awaits `value`; this only keeps it from going unhandled.
  value.catch(() => undefined);
  return { done: () => done, value };
}

describe('Limiter', () => {
  it('grants up to the limit at once and makes the next caller wait', async () => {
    const limiter = new Limiter(() => 2);
    await limiter.acquire('esx-1');
    await limiter.acquire('esx-1');
    expect(limiter.usage('esx-1')).toEqual({ active: 2, waiting: 0 });
    const third = track(limiter.acquire('esx-1'));
    await settle();
    expect(third.done()).toBe(false);
    expect(limiter.usage('esx-1')).toEqual({ active: 2, waiting: 1 });
  });

  it('hands a released slot to the waiters in the order they came, the count staying at the limit', async () => {
    const limiter = new Limiter(() => 1);
    const releaseFirst = await limiter.acquire('esx-1');
    const order: string[] = [];
    const second = limiter.acquire('esx-1').then((release) => {
      order.push('second');
      return release;
    });
    const third = track(
      limiter.acquire('esx-1').then((release) => {
        order.push('third');
        return release;
      }),
    );
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 2 });

    releaseFirst();
    const releaseSecond = await second;
    await settle();
    expect(order).toEqual(['second']);
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 1 });

    releaseSecond();
    const releaseThird = await third.value;
    expect(order).toEqual(['second', 'third']);
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 0 });
    releaseThird();
    expect(limiter.usage('esx-1')).toEqual({ active: 0, waiting: 0 });
  });

  it('counts a release called twice once: it frees one slot, and wakes one waiter', async () => {
    const limiter = new Limiter(() => 2);
    const a = await limiter.acquire('esx-1');
    await limiter.acquire('esx-1');
    a();
    a();
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 0 });

    const full = new Limiter(() => 1);
    const holder = await full.acquire('esx-1');
    const b = track(full.acquire('esx-1'));
    const c = track(full.acquire('esx-1'));
    holder();
    holder();
    await settle();
    expect([b.done(), c.done()]).toEqual([true, false]);
    expect(full.usage('esx-1')).toEqual({ active: 1, waiting: 1 });
  });

  it('rejects a waiter whose signal aborts with ABORTED naming the key, and gives it no slot', async () => {
    const limiter = new Limiter(() => 1);
    const holder = await limiter.acquire('esx-7');
    const stop = new AbortController();
    const waiter = limiter.acquire('esx-7', stop.signal);
    const behind = track(limiter.acquire('esx-7'));
    stop.abort();
    await expectVclError(waiter, 'ABORTED', /gave up waiting for a esx-7 slot/);
    expect(limiter.usage('esx-7')).toEqual({ active: 1, waiting: 1 });
    // The slot skips the aborted waiter and goes to the one behind it.
    holder();
    (await behind.value)();
    expect(limiter.usage('esx-7')).toEqual({ active: 0, waiting: 0 });
  });

  it('gives up at once, without queuing, when the signal was already aborted and the key is full', async () => {
    const limiter = new Limiter(() => 1);
    const holder = await limiter.acquire('esx-8');
    const stopped = new AbortController();
    stopped.abort();
    await expectVclError(
      limiter.acquire('esx-8', stopped.signal),
      'ABORTED',
      /gave up waiting for a esx-8 slot/,
    );
    expect(limiter.usage('esx-8')).toEqual({ active: 1, waiting: 0 });
    // The slot, once free, is not handed to the caller that gave up.
    holder();
    expect(limiter.usage('esx-8')).toEqual({ active: 0, waiting: 0 });
  });

  it('ignores an abort after the slot was granted: the slot stays held until released', async () => {
    const limiter = new Limiter(() => 1);
    const stop = new AbortController();
    const release = await limiter.acquire('esx-1', stop.signal);
    stop.abort();
    await settle();
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 0 });
    const next = track(limiter.acquire('esx-1'));
    await settle();
    expect(next.done()).toBe(false);
    release();
    await next.value;
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 0 });
  });

  it('ignores an abort after a waited-for slot was granted: the capture queued behind keeps its place', async () => {
    const limiter = new Limiter(() => 1);
    const holder = await limiter.acquire('esx-1');
    const stop = new AbortController();
    const waited = limiter.acquire('esx-1', stop.signal);
    holder();
    const release = await waited;
    const behind = track(limiter.acquire('esx-1'));
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 1 });
    // The capture that got its slot is stopped: its abort must not touch the queue it has left.
    stop.abort();
    await settle();
    expect(behind.done()).toBe(false);
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 1 });
    release();
    (await behind.value)();
    expect(limiter.usage('esx-1')).toEqual({ active: 0, waiting: 0 });
  });

  it('keeps keys apart: a full key does not hold back another, each with its own limit', async () => {
    const limits: Record<string, number> = { 'esx-1': 1, 'esx-2': 2 };
    const limiter = new Limiter((key) => limits[key] ?? 0);
    await limiter.acquire('esx-1');
    const waiting = track(limiter.acquire('esx-1'));
    await limiter.acquire('esx-2');
    await limiter.acquire('esx-2');
    await settle();
    expect(waiting.done()).toBe(false);
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 1 });
    expect(limiter.usage('esx-2')).toEqual({ active: 2, waiting: 0 });
    expect(limiter.usage('esx-3')).toEqual({ active: 0, waiting: 0 });
  });

  it('queues a newcomer behind a waiter even when a slot is free (the limit was raised meanwhile)', async () => {
    let limit = 1;
    const limiter = new Limiter(() => limit);
    await limiter.acquire('esx-1');
    const first = track(limiter.acquire('esx-1'));
    limit = 2;
    const newcomer = track(limiter.acquire('esx-1'));
    await settle();
    // FIFO: the newcomer may not overtake the capture that waited before it.
    expect([first.done(), newcomer.done()]).toEqual([false, false]);
    expect(limiter.usage('esx-1')).toEqual({ active: 1, waiting: 2 });
  });
});

describe('HostSlots on a store shared by two runners', () => {
  const HOST = 'esx-1';
  let folder: ReturnType<typeof tempFolder>;
  let storeA: SqliteCaptureStore;
  let storeB: SqliteCaptureStore;
  const open: HostSlots[] = [];
  const aborts: AbortController[] = [];

  beforeEach(async () => {
    folder = tempFolder('vcl-limits-');
    storeA = openSqliteStore(folder.file('store.sqlite'));
    storeB = openSqliteStore(folder.file('store.sqlite'));
    await seed(storeA);
  });

  afterEach(async () => {
    for (const a of aborts.splice(0)) a.abort();
    open.length = 0;
    await settle();
    await storeA.close();
    await storeB.close();
    folder.cleanup();
  });

  /** A capture created claimed by `owner` (60 s lease), and its fence. */
  async function claimed(store: CaptureStore, id: string, owner: string): Promise<CaptureFence> {
    const r = await store.createCapture({
      id,
      computer: 'pc-01',
      imageId: 12345,
      provisioner: 'vmware',
      os: 'windows',
      repository: REPO,
      reserve: false,
      owner,
      leaseMs: 60_000,
    });
    return { owner, generation: r.generation };
  }

  function slots(store: CaptureStore, pollMs: number, limit = 1, log = silentLogger()): HostSlots {
    const s = new HostSlots(store, 'capture', () => limit, pollMs, log);
    open.push(s);
    return s;
  }

  function signal(): AbortController {
    const c = new AbortController();
    aborts.push(c);
    return c;
  }

  it('holds the host limit across runners: the second waits until the first gives its slot back', async () => {
    const fa = await claimed(storeA, 'c-a', 'runner-a');
    const fb = await claimed(storeB, 'c-b', 'runner-b');
    const a = slots(storeA, 20);
    const b = slots(storeB, 20);
    const releaseA = await a.acquire(storeA, 'c-a', fa, HOST, signal().signal);
    expect(a.usage(HOST)).toEqual({ active: 1, waiting: 0 });

    const gotB = track(b.acquire(storeB, 'c-b', fb, HOST, signal().signal));
    await new Promise((r) => setTimeout(r, 80));
    expect(gotB.done()).toBe(false);
    // B holds its local slot while it asks the store again and again.
    expect(b.usage(HOST)).toEqual({ active: 1, waiting: 0 });
    expect(await storeA.hostSlotUsage()).toEqual([{ host: HOST, kind: 'capture', held: 1 }]);

    releaseA();
    await gotB.value;
    expect(a.usage(HOST)).toEqual({ active: 0, waiting: 0 });
    expect(await storeA.hostSlotUsage()).toEqual([{ host: HOST, kind: 'capture', held: 1 }]);
  });

  it('a release gives the store slot back, so the other runner can take it', async () => {
    const fa = await claimed(storeA, 'c-a', 'runner-a');
    const fb = await claimed(storeB, 'c-b', 'runner-b');
    const a = slots(storeA, 20);
    const b = slots(storeB, 20);
    const release = await a.acquire(storeA, 'c-a', fa, HOST, signal().signal);
    release();
    await expect.poll(() => storeB.hostSlotUsage(), { timeout: 10_000 }).toEqual([]);
    await expect.poll(() => a.usage(HOST), { timeout: 10_000 }).toEqual({ active: 0, waiting: 0 });
    (await b.acquire(storeB, 'c-b', fb, HOST, signal().signal))();
    await expect.poll(() => storeB.hostSlotUsage(), { timeout: 10_000 }).toEqual([]);
  });

  it('queues this runner’s own captures locally in order, asking the store only for one that fits', async () => {
    const f1 = await claimed(storeA, 'c-1', 'runner-a');
    const f2 = await claimed(storeA, 'c-2', 'runner-a');
    const a = slots(storeA, 10_000);
    const release1 = await a.acquire(storeA, 'c-1', f1, HOST, signal().signal);
    const second = track(a.acquire(storeA, 'c-2', f2, HOST, signal().signal));
    await settle();
    expect(a.usage(HOST)).toEqual({ active: 1, waiting: 1 });
    release1();
    // The store slot is given back before the local one: the local waiter finds the store free at once.
    const started = performance.now();
    await second.value;
    expect(performance.now() - started).toBeLessThan(5000);
    expect(a.usage(HOST)).toEqual({ active: 1, waiting: 0 });
  });

  it('a wake for the host ends the pause at once, long before the next poll; a wake for another does not', async () => {
    const fa = await claimed(storeA, 'c-a', 'runner-a');
    const fb = await claimed(storeB, 'c-b', 'runner-b');
    const a = slots(storeA, 20);
    const b = slots(storeB, 10_000);
    const releaseA = await a.acquire(storeA, 'c-a', fa, HOST, signal().signal);
    const gotB = track(b.acquire(storeB, 'c-b', fb, HOST, signal().signal));
    await new Promise((r) => setTimeout(r, 50));
    releaseA();
    await expect.poll(() => storeB.hostSlotUsage(), { timeout: 10_000 }).toEqual([]);

    b.wake('esx-2');
    await new Promise((r) => setTimeout(r, 60));
    expect(gotB.done()).toBe(false);

    const woken = performance.now();
    b.wake(HOST);
    await gotB.value;
    expect(performance.now() - woken).toBeLessThan(5000);
    expect(await storeA.hostSlotUsage()).toEqual([{ host: HOST, kind: 'capture', held: 1 }]);
  });

  it('an abort during the pause rejects with ABORTED naming the host and frees the local slot', async () => {
    const fa = await claimed(storeA, 'c-a', 'runner-a');
    const fb = await claimed(storeB, 'c-b', 'runner-b');
    const a = slots(storeA, 20);
    const b = slots(storeB, 10_000);
    await a.acquire(storeA, 'c-a', fa, HOST, signal().signal);
    const stop = signal();
    const gotB = b.acquire(storeB, 'c-b', fb, HOST, stop.signal);
    await new Promise((r) => setTimeout(r, 50));
    expect(b.usage(HOST)).toEqual({ active: 1, waiting: 0 });
    const aborted = performance.now();
    stop.abort();
    await expectVclError(gotB, 'ABORTED', /gave up waiting for a esx-1 slot/);
    expect(performance.now() - aborted).toBeLessThan(5000);
    expect(b.usage(HOST)).toEqual({ active: 0, waiting: 0 });
    // Only runner A's slot is held.
    expect(await storeB.hostSlotUsage()).toEqual([{ host: HOST, kind: 'capture', held: 1 }]);
  });

  it('a capture stopped before it got its slot does not start: ABORTED, and both slots given back', async () => {
    const fa = await claimed(storeA, 'c-a', 'runner-a');
    const a = slots(storeA, 20);
    const stop = signal();
    stop.abort();
    await expectVclError(a.acquire(storeA, 'c-a', fa, HOST, stop.signal), 'ABORTED', /esx-1 slot/);
    await expect.poll(() => storeA.hostSlotUsage(), { timeout: 10_000 }).toEqual([]);
    await expect.poll(() => a.usage(HOST), { timeout: 10_000 }).toEqual({ active: 0, waiting: 0 });
  });

  it('a capture already stopped when it finds the host full gives up at once, not at the next poll', async () => {
    const fa = await claimed(storeA, 'c-a', 'runner-a');
    const fb = await claimed(storeB, 'c-b', 'runner-b');
    await slots(storeA, 20).acquire(storeA, 'c-a', fa, HOST, signal().signal);
    const b = slots(storeB, 10_000);
    const stop = signal();
    stop.abort();
    const started = performance.now();
    await expectVclError(b.acquire(storeB, 'c-b', fb, HOST, stop.signal), 'ABORTED', /esx-1 slot/);
    expect(performance.now() - started).toBeLessThan(5000);
    expect(b.usage(HOST)).toEqual({ active: 0, waiting: 0 });
  });

  it('a capture another runner took over fails with FENCED and leaves no local slot held', async () => {
    const fa = await claimed(storeA, 'c-a', 'runner-a');
    await storeB.claimCapture('c-a', 'runner-b', { leaseMs: 60_000, replacing: 'runner-a' });
    const a = slots(storeA, 20);
    await expectVclError(a.acquire(storeA, 'c-a', fa, HOST, signal().signal), 'FENCED', /c-a/);
    expect(a.usage(HOST)).toEqual({ active: 0, waiting: 0 });
    expect(await storeA.hostSlotUsage()).toEqual([]);
  });

  it('a release the store refuses is logged, not thrown, and the local slot is still freed', async () => {
    const fa = await claimed(storeA, 'c-a', 'runner-a');
    const lines: string[] = [];
    const log = pino({ level: 'warn' }, { write: (line: string) => lines.push(line) });
    const failing = overriding(storeA, {
      releaseHostSlot: async () => Promise.reject(new Error('database is locked')),
    });
    const a = new HostSlots(failing, 'capture', () => 1, 20, log);
    const release = await a.acquire(storeA, 'c-a', fa, HOST, signal().signal);
    expect(() => release()).not.toThrow();
    await expect.poll(() => a.usage(HOST), { timeout: 10_000 }).toEqual({ active: 0, waiting: 0 });
    expect(lines).toHaveLength(1);
    const line = JSON.parse(lines[0] ?? '{}') as Record<string, unknown>;
    expect(line).toMatchObject({
      level: 40,
      msg: 'could not give a host slot back',
      captureId: 'c-a',
      host: HOST,
      kind: 'capture',
      err: { message: 'database is locked' },
    });
  });
});
