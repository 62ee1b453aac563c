/**
 * Coordination of several runners through the store (issue 18), on both backends: every claim is a new
 * generation and a runner's writes name the claim they are made under, so a runner that lost a capture
 * changes nothing of it; per-host capture and copy slots are counted in the store over every runner, and a
 * slot counts only while its holder's claim holds.
 */
import { describe, expect, it } from 'vitest';
import type { CaptureFence, CaptureStore, StoreWake } from '../../src/store/index.js';
import { type OpenedStore, openEach, storeBackends } from './backends.js';
import { expectVclError, REPO, SHA } from './helpers.js';

let now = Date.parse('2025-03-01T08:00:00.000Z');
const clock = () => new Date(now);

describe.each(storeBackends())('$name store', (backend) => {
  let store: CaptureStore;
  let opened: OpenedStore;
  openEach(
    backend,
    (o) => {
      opened = o;
      store = o.store;
    },
    () => {
      now = Date.parse('2025-03-01T08:00:00.000Z');
      return { now: clock };
    },
  );

  const base = { imageId: 12345, provisioner: 'vmware', os: 'windows', repository: REPO } as const;
  const fenceOf = (r: { owner: string | null; generation: number }): CaptureFence => ({
    owner: r.owner ?? '',
    generation: r.generation,
  });

  describe('claim generations and fenced writes', () => {
    it('every claim is a new generation; created claimed is the first', async () => {
      const queued = await store.createCapture({ ...base, id: 'g-1', computer: 'pc-01', reserve: false });
      expect(queued.generation).toBe(0);
      expect((await store.claimCapture('g-1', 'runner-a', { leaseMs: 10_000 })).generation).toBe(1);
      // The same owner claiming again is a new claim too: its earlier execution's writes are fenced off.
      expect((await store.claimCapture('g-1', 'runner-a', { leaseMs: 10_000 })).generation).toBe(2);
      now += 11_000;
      expect((await store.claimCapture('g-1', 'runner-b', { leaseMs: 10_000 })).generation).toBe(3);
      const [batch] = await store.claimQueuedCaptures('runner-c', { leaseMs: 10_000, limit: 5 });
      expect(batch).toBeUndefined();
      now += 11_000;
      const [taken] = await store.claimQueuedCaptures('runner-c', { leaseMs: 10_000, limit: 5 });
      expect(taken).toMatchObject({ id: 'g-1', owner: 'runner-c', generation: 4 });
      const owned = await store.createCapture({ ...base, id: 'g-2', computer: 'pc-02', owner: 'runner-a' });
      expect(owned.generation).toBe(1);
    });

    it('a runner that lost a capture can change nothing of it; the new owner can', async () => {
      const created = await store.createCapture({
        ...base,
        id: 'f-1',
        computer: 'pc-01',
        reserve: false,
        owner: 'runner-a',
        leaseMs: 10_000,
      });
      const a = fenceOf(created);
      await store.reserveComputer('f-1', { fence: a });
      await store.recordTransition('f-1', {
        stateValue: { capturing: 'copy_image' },
        event: { type: 'state.entered', step: 'copy_image' },
        fence: a,
      });
      await store.recordRemoteTag('f-1', 'esx-1', 'aaaa', { fence: a });
      expect(await store.acquireHostSlot('f-1', { host: 'esx-1', kind: 'copy', limit: 1 }, a)).toBe(true);

      now += 11_000; // runner-a was cut off: its lease ran out, and runner-b takes the capture over.
      const b = fenceOf(await store.claimCapture('f-1', 'runner-b', { leaseMs: 10_000 }));
      expect(b.generation).toBe(a.generation + 1);
      const before = await opened.dump();

      // Thunks: each write starts only once the one before has been refused.
      const lost = [
        () =>
          store.recordTransition('f-1', {
            stateValue: { capturing: 'verify_image' },
            event: { type: 'state.entered', step: 'verify_image' },
            fence: a,
          }),
        () => store.reserveComputer('f-1', { fence: a }),
        () =>
          store.completeCapture(
            'f-1',
            { path: 'f-1.vmdk', sizeBytes: 1, sha256: SHA, format: 'vmdk' },
            { fence: a },
          ),
        () =>
          store.failCapture('f-1', { code: 'TIMEOUT', step: 'copy_image', message: 'late' }, 'maintenance', {
            fence: a,
          }),
        () =>
          store.cancelCapture('f-1', { code: 'CANCELLED', step: 'copy_image', message: 'late' }, 'restore', {
            fence: a,
          }),
        () => store.recordRemoteTag('f-1', 'esx-1', 'bbbb', { fence: a }),
        () => store.forgetRemoteTags('f-1', undefined, { fence: a }),
        () => store.acquireHostSlot('f-1', { host: 'esx-1', kind: 'capture', limit: 5 }, a),
      ];
      for (const write of lost) {
        const err = await expectVclError(
          write(),
          'FENCED',
          /capture f-1 is no longer run by runner-a under claim 1/,
        );
        expect(err.details).toMatchObject({ captureId: 'f-1', owner: 'runner-b', generation: b.generation });
      }
      expect(await opened.dump()).toBe(before);
      // The slot runner-a took under its old claim no longer counts: runner-b's copy finds the host free.
      expect(await store.hostSlotUsage()).toEqual([]);

      await store.recordTransition('f-1', {
        stateValue: { capturing: 'verify_image' },
        event: { type: 'state.entered', step: 'verify_image' },
        fence: b,
      });
      expect(await store.acquireHostSlot('f-1', { host: 'esx-1', kind: 'copy', limit: 1 }, b)).toBe(true);
      const done = await store.completeCapture(
        'f-1',
        { path: 'f-1.vmdk', sizeBytes: 1, sha256: SHA, format: 'vmdk' },
        { fence: b },
      );
      expect(done).toMatchObject({ status: 'completed', owner: 'runner-b', generation: b.generation });
    });

    it('a released capture fences its former owner; unfenced writes are not checked', async () => {
      const created = await store.createCapture({ ...base, id: 'f-2', computer: 'pc-02', owner: 'runner-a' });
      expect(await store.releaseCaptures('runner-a')).toBe(1);
      await expectVclError(
        store.recordRemoteTag('f-2', 'esx-1', 'cccc', { fence: fenceOf(created) }),
        'FENCED',
        /it is run by nobody/,
      );
      await store.recordRemoteTag('f-2', 'esx-1', 'cccc');
      expect((await store.remoteTags('f-2')).map((t) => t.tag)).toEqual(['cccc']);
      await expectVclError(
        store.recordRemoteTag('f-2', 'esx-1', 'dddd', { fence: { owner: 'runner-a', generation: -1 } }),
        'INVALID_INPUT',
      );
    });
  });

  describe('per-host slots', () => {
    /** Captures c-<i> on pc-01..03 (created claimed by `owner`), with their fences. */
    async function claimed(owner: string, ids: string[], leaseMs = 10_000): Promise<CaptureFence[]> {
      const out: CaptureFence[] = [];
      for (const id of ids)
        out.push(
          fenceOf(
            await store.createCapture({ ...base, id, computer: 'pc-01', reserve: false, owner, leaseMs }),
          ),
        );
      return out;
    }

    it('a host limit holds over two runners at once, and a released slot is taken again', async () => {
      const other = await opened.openAgain({ now: clock });
      const a = await claimed('runner-a', ['s-1', 's-2', 's-3']);
      const b = await claimed('runner-b', ['s-4', 's-5', 's-6']);
      const slot = { host: 'esx-1', kind: 'capture', limit: 2 } as const;
      const ids = ['s-1', 's-2', 's-3', 's-4', 's-5', 's-6'];
      const fences = [...a, ...b];
      // Every capture of both runners asks at once, each runner through its own store handle.
      const got = await Promise.all(
        ids.map((id, i) => (i < 3 ? store : other).acquireHostSlot(id, slot, fences[i] as CaptureFence)),
      );
      expect(got.filter(Boolean)).toHaveLength(2);
      expect(await store.hostSlotUsage()).toEqual([{ host: 'esx-1', kind: 'capture', held: 2 }]);
      // Copy slots are counted apart from capture slots, and per host.
      expect(
        await store.acquireHostSlot('s-1', { host: 'esx-1', kind: 'copy', limit: 1 }, a[0] as CaptureFence),
      ).toBe(true);
      expect(
        await store.acquireHostSlot(
          's-1',
          { host: 'esx-2', kind: 'capture', limit: 1 },
          a[0] as CaptureFence,
        ),
      ).toBe(true);

      const holder = ids[got.indexOf(true)] as string;
      const waiter = got.indexOf(false);
      // A holder asking again keeps its one slot.
      expect(await store.acquireHostSlot(holder, slot, fences[ids.indexOf(holder)] as CaptureFence)).toBe(
        true,
      );
      expect(await store.acquireHostSlot(ids[waiter] as string, slot, fences[waiter] as CaptureFence)).toBe(
        false,
      );
      expect(await store.releaseHostSlot(holder, 'esx-1', 'capture')).toBe(true);
      expect(await store.releaseHostSlot(holder, 'esx-1', 'capture')).toBe(false);
      expect(await other.acquireHostSlot(ids[waiter] as string, slot, fences[waiter] as CaptureFence)).toBe(
        true,
      );
      expect(
        (await store.hostSlotUsage()).find((u) => u.host === 'esx-1' && u.kind === 'capture')?.held,
      ).toBe(2);
    });

    it('a slot counts only while its holder’s lease runs, or until the capture ends', async () => {
      const [dead] = await claimed('runner-dead', ['d-1'], 5_000);
      const [live] = await claimed('runner-live', ['d-2'], 60_000);
      const slot = { host: 'esx-1', kind: 'copy', limit: 1 } as const;
      expect(await store.acquireHostSlot('d-1', slot, dead as CaptureFence)).toBe(true);
      expect(await store.acquireHostSlot('d-2', slot, live as CaptureFence)).toBe(false);
      now += 6_000; // runner-dead stopped renewing
      expect(await store.acquireHostSlot('d-2', slot, live as CaptureFence)).toBe(true);
      // The dead holder's row is gone, not only passed over.
      expect(await store.releaseHostSlot('d-1', 'esx-1', 'copy')).toBe(false);

      const [ends] = await claimed('runner-live', ['d-3'], 60_000);
      await store.releaseHostSlot('d-2', 'esx-1', 'copy');
      expect(await store.acquireHostSlot('d-3', slot, ends as CaptureFence)).toBe(true);
      await store.cancelCapture('d-3', { code: 'CANCELLED', step: 'queued', message: 'x' }, 'restore', {
        fence: ends as CaptureFence,
      });
      expect(await store.acquireHostSlot('d-2', slot, live as CaptureFence)).toBe(true);
    });

    it('many rounds of concurrent acquires from two handles never exceed the limit', async () => {
      const other = await opened.openAgain({ now: clock });
      const ids = Array.from({ length: 8 }, (_, i) => `m-${i}`);
      const fences = [
        ...(await claimed('runner-a', ids.slice(0, 4), 600_000)),
        ...(await claimed('runner-b', ids.slice(4), 600_000)),
      ];
      const slot = { host: 'esx-1', kind: 'copy', limit: 3 } as const;
      for (let round = 0; round < 5; round++) {
        const got = await Promise.all(
          ids.map((id, i) =>
            (i % 2 === 0 ? store : other).acquireHostSlot(id, slot, fences[i] as CaptureFence),
          ),
        );
        expect(got.filter(Boolean)).toHaveLength(3);
        expect(await other.hostSlotUsage()).toEqual([{ host: 'esx-1', kind: 'copy', held: 3 }]);
        await Promise.all(
          ids.map((id, i) => (i % 2 === 0 ? other : store).releaseHostSlot(id, 'esx-1', 'copy')),
        );
      }
    });
  });

  describe('wakes', () => {
    it('another handle’s queued capture, cancel request and freed slot wake a subscriber within 1 s (PostgreSQL); SQLite polls', async () => {
      const wakes: StoreWake[] = [];
      const subscription = await store.subscribe((w) => wakes.push(w));
      try {
        expect(subscription.live).toBe(backend.name === 'postgres');
        if (!subscription.live) return;
        await expect.poll(() => wakes, { timeout: 1000 }).toContainEqual({ kind: 'resync' });
        const other = await opened.openAgain({ now: clock });
        await other.createCapture({ ...base, id: 'w-1', computer: 'pc-01', reserve: false });
        await expect.poll(() => wakes, { timeout: 1000 }).toContainEqual({ kind: 'queued' });
        const [claim] = await other.claimQueuedCaptures('runner-a', { leaseMs: 60_000, limit: 1 });
        await other.requestCancel('w-1', 'not wanted');
        await expect
          .poll(() => wakes, { timeout: 1000 })
          .toContainEqual({ kind: 'cancel', captureId: 'w-1' });
        await other.acquireHostSlot(
          'w-1',
          { host: 'esx-1', kind: 'copy', limit: 1 },
          fenceOf(claim ?? { owner: null, generation: 0 }),
        );
        await other.releaseHostSlot('w-1', 'esx-1', 'copy');
        await expect.poll(() => wakes, { timeout: 1000 }).toContainEqual({ kind: 'slot', host: 'esx-1' });
        // A refused change wakes nobody: its transaction rolled back, and NOTIFY with it.
        const count = wakes.length;
        await other.cancelCapture('w-1', { code: 'CANCELLED', step: 'queued', message: 'x' }, 'restore');
        await expectVclError(other.requestCancel('w-1', 'again'), 'INVALID_TRANSITION');
        await other.releaseHostSlot('w-1', 'esx-1', 'copy');
        await other.createCapture({ ...base, id: 'w-2', computer: 'pc-02', reserve: false });
        await expect.poll(() => wakes.length, { timeout: 1000 }).toBe(count + 1);
        expect(wakes.slice(count)).toEqual([{ kind: 'queued' }]);
      } finally {
        await subscription.close();
      }
    });
  });
});
