/**
 * Fencing, against the lab over real SSH: a runner that cannot renew its leases stops its captures' steps
 * (and their remote commands) before its lease can run out, and writes nothing more for them; a runner
 * whose capture another runner claimed drops it without touching it; per-host slots hold across runners.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { VclError } from '../../src/errors.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { createRunner, type Runner, type RunnerEvent, type RunnerOptions } from '../../src/runner/runner.js';
import {
  type CaptureStore,
  openPostgresStore,
  openSqliteStore,
  type SqliteCaptureStore,
} from '../../src/store/index.js';
import { clusterForSuite, postgresAvailable } from '../helpers/postgres.js';
import { eventOf, inState } from '../helpers/runner-events.js';
import { overriding } from '../helpers/store-override.js';

let lab: Lab;
let store: SqliteCaptureStore;
let dir: string;
let dbPath: string;
const runners: Runner[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-fencing-'));
  lab = await startLab({ powerDelayMs: 300, computers: { 'libvirt-linux': 6 } });
  dbPath = join(dir, 'store.sqlite');
  store = openSqliteStore(dbPath);
});

// A hang that never fired (its capture stopped before the command) must not hang the next test's copy.
afterEach(() => {
  lab.faults.clear();
});

afterAll(async () => {
  for (const r of runners) await r.close().catch(() => undefined);
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function runner(options: Partial<RunnerOptions> & { id: string; store?: CaptureStore }): Runner {
  const r = createRunner({ inventory: lab.inventory, store, pollMs: 20, queuePollMs: 50, ...options });
  runners.push(r);
  return r;
}

const image = (name: string) => ({ osName: 'linux', prettyName: name, owner: 'test' });

/**
 * The next `qemu-img convert` on the hypervisor hangs until it is killed. `running` holds once that
 * command runs: not merely any command of copy_image (an earlier quick one), which under load can be the
 * one a fence or cut stops, leaving the hang for a later copy.
 */
function hangConvert() {
  const hang = lab.faults.add({
    kind: 'hangCommand',
    host: 'libvirt-host',
    match: ['qemu-img', 'convert'],
    times: 1,
  });
  return { running: () => hang.fired > 0 && lab.runningCommands('libvirt-host') > 0 };
}

/** When (performance.now()) `test` first held, polling every 5 ms; throws after `timeoutMs`. */
async function whenTrue(test: () => boolean, timeoutMs: number): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  while (!test()) {
    if (performance.now() > deadline) throw new Error(`not true within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 5));
  }
  return performance.now();
}

/** The store, with lease renewals that fail while `cut.off` (the runner cut off from its database). */
function cutOffStore(inner: CaptureStore) {
  const cut = { off: false, lastOkSentAt: 0, failed: 0 };
  const store = overriding(inner, {
    renewLeases: async (owner, leaseMs) => {
      const sentAt = performance.now();
      if (cut.off) {
        cut.failed += 1;
        throw new VclError('STORE_ERROR', 'renewLeases failed in the database: connection refused');
      }
      const owned = await inner.renewLeases(owner, leaseMs);
      cut.lastOkSentAt = Math.max(cut.lastOkSentAt, sentAt);
      return owned;
    },
  });
  return { store, cut };
}

describe('a runner cut off from the store', () => {
  it('stops the step and its remote command before its lease can run out, and writes nothing more', async () => {
    const leaseMs = 3000;
    const { store: flaky, cut } = cutOffStore(store);
    const a = runner({ id: 'cut-a', store: flaky, leaseMs });
    const hang = hangConvert();
    const claimSentBefore = performance.now();
    const handle = await a.capture({ computer: 'lv-linux-1', image: image('Cut') });
    await eventOf(a, handle.id, inState('copy_image'));
    await whenTrue(hang.running, 10_000);
    // At least one renewal went through: the cut comes in the middle of a capture's life.
    await whenTrue(() => cut.lastOkSentAt > 0, leaseMs);
    cut.off = true;
    const before = await store.getCapture(handle.id);

    const result = await handle.result;
    const stoppedAt = performance.now();
    const gone = await whenTrue(() => lab.runningCommands('libvirt-host') === 0, leaseMs);
    // The earliest the lease could run out: the last request that extended it was sent no earlier.
    const leaseEnd = Math.max(cut.lastOkSentAt, claimSentBefore) + leaseMs;
    expect(result.status).toBe('suspended');
    if (result.status !== 'suspended') return;
    expect(result.error).toMatchObject({ code: 'LEASE_LOST', step: 'copy_image' });
    expect(cut.failed).toBeGreaterThan(0);
    expect(stoppedAt).toBeLessThan(leaseEnd);
    expect(gone).toBeLessThan(leaseEnd);
    expect(a.health().leases.failures).toBeGreaterThan(0);

    // Nothing was written for the capture after the cut: it waits, unchanged, for whoever claims it next.
    const after = await store.getCapture(handle.id);
    expect(after?.eventCount).toBe(before?.eventCount);
    expect(after).toMatchObject({
      status: 'running',
      owner: 'cut-a',
      stateValue: { capturing: 'copy_image' },
    });

    // Once the lease ran out, another runner takes it over under the next claim and finishes it.
    await expect
      .poll(async () => (await store.getCaptureRecord(handle.id))?.leaseUntil ?? '', {
        timeout: leaseMs + 1000,
      })
      .toSatisfy((until: string) => until < new Date().toISOString());
    const b = runner({ id: 'cut-b', leaseMs: 60_000 });
    const done = eventOf(b, handle.id, (e) => e.type === 'finished');
    expect((await b.start()).resumed).toEqual([handle.id]);
    const finished = (await done) as Extract<RunnerEvent, { type: 'finished' }>;
    expect(finished.result.status).toBe('completed');
    expect(await store.getCaptureRecord(handle.id)).toMatchObject({
      owner: 'cut-b',
      generation: (before?.generation ?? 0) + 1,
    });
    await b.stop();
  });
});

describe('a runner whose capture another runner claimed', () => {
  it('drops it at its next renewal: the step and its command stop, the store keeps the new claim', async () => {
    const a = runner({ id: 'fenced-a', leaseMs: 600 });
    const hang = hangConvert();
    const handle = await a.capture({ computer: 'lv-linux-2', image: image('Fenced') });
    await eventOf(a, handle.id, inState('copy_image'));
    await whenTrue(hang.running, 10_000);

    // Another process decides runner fenced-a is gone and claims the capture (a new generation).
    const other = openSqliteStore(dbPath);
    try {
      const taken = await other.claimCapture(handle.id, 'fenced-b', {
        leaseMs: 60_000,
        replacing: 'fenced-a',
      });
      const result = await handle.result;
      expect(result.status).toBe('suspended');
      if (result.status !== 'suspended') return;
      expect(result.error).toMatchObject({ code: 'FENCED', step: 'copy_image' });
      await whenTrue(() => lab.runningCommands('libvirt-host') === 0, 5000);
      const after = await other.getCaptureRecord(handle.id);
      expect(after).toMatchObject({
        status: 'running',
        owner: 'fenced-b',
        generation: taken.generation,
        eventCount: taken.eventCount,
      });
    } finally {
      await other.close();
    }
  });
});

describe('per-host slots across runners', () => {
  it('two runners together never run more captures on one hypervisor than its maxCaptures', async () => {
    const host = lab.inventory.hosts['libvirt-host'];
    if (host === undefined) throw new Error('the lab has no libvirt-host');
    const inventory = {
      ...lab.inventory,
      hosts: { ...lab.inventory.hosts, 'libvirt-host': { ...host, maxCaptures: 1 } },
    };
    const a = runner({ id: 'slots-a', inventory, slotPollMs: 20 });
    const b = runner({ id: 'slots-b', inventory, slotPollMs: 20 });
    /** [first state entered, finished] of a capture, in performance.now() time. */
    const span = (r: Runner, captureId: string) =>
      new Promise<[number, number]>((resolve) => {
        let first: number | undefined;
        const off = r.on((e) => {
          if (!('captureId' in e) || e.captureId !== captureId) return;
          if (e.type === 'state') first ??= performance.now();
          if (e.type === 'finished') {
            off();
            resolve([first ?? Number.NaN, performance.now()]);
          }
        });
      });
    const [x, y] = await Promise.all([
      a.capture({ computer: 'lv-linux-3', image: image('Slots A') }),
      b.capture({ computer: 'lv-linux-4', image: image('Slots B') }),
    ]);
    const [spanX, spanY] = await Promise.all([span(a, x?.id ?? ''), span(b, y?.id ?? '')]);
    expect((await x?.result)?.status).toBe('completed');
    expect((await y?.result)?.status).toBe('completed');
    // One ran after the other: the one slot of the host was held in the store, not in each runner.
    const [earlier, later] = spanX[0] < spanY[0] ? [spanX, spanY] : [spanY, spanX];
    expect(later[0]).toBeGreaterThan(earlier[1]);
    expect(await store.hostSlotUsage()).toEqual([]);
  });
});

describe.runIf(postgresAvailable('runner on PostgreSQL'))('a runner on PostgreSQL', () => {
  const cluster = clusterForSuite();

  it('gets a cancellation asked through another store handle within 1 s (NOTIFY), long before its next renewal', async () => {
    const url = await cluster().createDatabase();
    const mine = await openPostgresStore(url);
    const other = await openPostgresStore(url);
    try {
      // Renewal every 20 s: a cancellation seen within 1 s came by the wake, not by the renewal.
      const owner = runner({ id: 'pg-owner', store: mine, leaseMs: 60_000 });
      const hang = hangConvert();
      const handle = await owner.capture({ computer: 'lv-linux-5', image: image('Wake') });
      await eventOf(owner, handle.id, inState('copy_image'));
      await whenTrue(hang.running, 10_000);
      const left = eventOf(owner, handle.id, (e) => e.type === 'state' && !inState('copy_image')(e));
      const asked = performance.now();
      await other.requestCancel(handle.id, 'operator changed their mind');
      await left;
      expect(performance.now() - asked).toBeLessThan(1000);
      const result = await handle.result;
      expect(result.status).toBe('cancelled');
      expect(await other.getCaptureRecord(handle.id)).toMatchObject({
        status: 'cancelled',
        owner: 'pg-owner',
      });
      await owner.close();
    } finally {
      await other.close();
      await mine.close();
    }
  });
});
