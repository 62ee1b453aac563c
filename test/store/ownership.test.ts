/**
 * Ownership of unfinished captures: which runner runs a capture, for how long its claim holds, how a
 * restarted runner takes back what a dead one left, and a cancellation asked by another process.
 */
import { describe, expect, it } from 'vitest';
import type { CaptureStore } from '../../src/store/index.js';
import { openEach, storeBackends } from './backends.js';
import { expectVclError, REPO } from './helpers.js';

let now = Date.parse('2025-03-01T08:00:00.000Z');

describe.each(storeBackends())('$name store', (backend) => {
  let store: CaptureStore;
  openEach(
    backend,
    (opened) => {
      store = opened.store;
    },
    () => {
      now = Date.parse('2025-03-01T08:00:00.000Z');
      return { now: () => new Date(now) };
    },
  );

  const base = { imageId: 12345, provisioner: 'vmware', os: 'windows', repository: REPO } as const;

  describe('claims and leases', () => {
    it('a queued capture keeps its request and is claimed by the first runner only', async () => {
      await store.createCapture({
        ...base,
        id: 'q-1',
        computer: 'pc-01',
        reserve: false,
        request: { timeouts: { copyMs: 5000 } },
      });
      const claimed = await store.claimCapture('q-1', 'runner-a', { leaseMs: 30_000 });
      expect(claimed).toMatchObject({
        owner: 'runner-a',
        leaseUntil: '2025-03-01T08:00:30.000Z',
        request: { timeouts: { copyMs: 5000 } },
        status: 'queued',
      });
      const err = await expectVclError(
        store.claimCapture('q-1', 'runner-b', { leaseMs: 30_000 }),
        'CAPTURE_CLAIMED',
        /capture q-1 is run by runner-a \(lease until 2025-03-01T08:00:30.000Z\)/,
      );
      expect(err.details).toMatchObject({ owner: 'runner-a' });
      // Claiming again as the owner is not a change of owner: no second audit event.
      await store.claimCapture('q-1', 'runner-a', { leaseMs: 30_000 });
      const events = (await store.getCapture('q-1'))?.events.map((e) => e.type);
      expect(events).toEqual(['capture.created', 'capture.claimed']);
      // The record alone, without reading the audit trail.
      const record = await store.getCaptureRecord('q-1');
      expect(record).toMatchObject({ id: 'q-1', owner: 'runner-a', eventCount: 2 });
      expect(record && 'events' in record).toBe(false);
      expect(await store.getCaptureRecord('nope')).toBeUndefined();
    });

    it('renewing keeps a claim; once the lease runs out another runner takes it, and the trail says so', async () => {
      await store.createCapture({
        ...base,
        id: 'r-1',
        computer: 'pc-01',
        owner: 'runner-a',
        leaseMs: 10_000,
      });
      now += 8_000;
      expect(await store.renewLeases('runner-a', 10_000)).toEqual([
        { captureId: 'r-1', cancelRequested: null },
      ]);
      now += 8_000; // 16 s after creation, 8 s after the renewal
      await expectVclError(store.claimCapture('r-1', 'runner-b', { leaseMs: 10_000 }), 'CAPTURE_CLAIMED');
      now += 3_000;
      const taken = await store.claimCapture('r-1', 'runner-b', { leaseMs: 10_000 });
      expect(taken.owner).toBe('runner-b');
      expect(await store.renewLeases('runner-a', 10_000)).toEqual([]);
      const claimed = (await store.getCapture('r-1'))?.events.find((e) => e.type === 'capture.claimed');
      expect(claimed?.details).toEqual({ owner: 'runner-b', previousOwner: 'runner-a', status: 'running' });
    });

    it('claims queued captures nobody runs, oldest first, up to the free slots, each once', async () => {
      for (const [i, pc] of ['pc-01', 'pc-02', 'pc-03'].entries()) {
        await store.createCapture({ ...base, id: `q-${i}`, computer: pc, reserve: false });
        now += 1;
      }
      await store.createCapture({ ...base, id: 'running', computer: 'pc-04' });
      await store.claimCapture('q-1', 'runner-b', { leaseMs: 10_000 });
      const first = await store.claimQueuedCaptures('runner-a', { leaseMs: 30_000, limit: 1 });
      expect(first.map((c) => [c.id, c.owner, c.leaseUntil])).toEqual([
        ['q-0', 'runner-a', '2025-03-01T08:00:30.003Z'],
      ]);
      expect(
        (await store.claimQueuedCaptures('runner-a', { leaseMs: 30_000, limit: 5 })).map((c) => c.id),
      ).toEqual(['q-2']);
      // Neither a running capture nor one whose owner's lease still runs.
      expect(await store.claimQueuedCaptures('runner-c', { leaseMs: 30_000, limit: 5 })).toEqual([]);
      // Once runner-b's lease ran out, its capture is claimable again, and the trail says who had it.
      now += 11_000;
      expect(
        (await store.claimQueuedCaptures('runner-c', { leaseMs: 30_000, limit: 5 })).map((c) => c.id),
      ).toEqual(['q-1']);
      const claimed = (await store.getCapture('q-1'))?.events.filter((e) => e.type === 'capture.claimed');
      expect(claimed?.map((e) => e.details)).toEqual([
        { owner: 'runner-b', previousOwner: null, status: 'queued' },
        { owner: 'runner-c', previousOwner: 'runner-b', status: 'queued' },
      ]);
      await expectVclError(store.claimQueuedCaptures('runner-c', { leaseMs: 0, limit: 1 }), 'INVALID_INPUT');
    });

    it('a runner known to be gone is replaced at once; a graceful stop releases its captures', async () => {
      await store.createCapture({ ...base, id: 'r-1', computer: 'pc-01', owner: 'dead', leaseMs: 60_000 });
      await store.createCapture({
        ...base,
        id: 'r-2',
        computer: 'pc-02',
        owner: 'stopping',
        leaseMs: 60_000,
      });
      expect((await store.claimCapture('r-1', 'new', { leaseMs: 60_000, replacing: 'dead' })).owner).toBe(
        'new',
      );
      await expectVclError(
        store.claimCapture('r-2', 'new', { leaseMs: 60_000, replacing: 'dead' }),
        'CAPTURE_CLAIMED',
      );
      expect(await store.releaseCaptures('stopping')).toBe(1);
      expect((await store.claimCapture('r-2', 'new', { leaseMs: 60_000 })).owner).toBe('new');
    });

    it('finished captures cannot be claimed, and leases of finished captures are not renewed', async () => {
      await store.createCapture({ ...base, id: 'f-1', computer: 'pc-01', owner: 'runner-a' });
      await store.failCapture('f-1', { code: 'X', step: 's', message: 'm' }, 'maintenance');
      await expectVclError(store.claimCapture('f-1', 'runner-a', { leaseMs: 1000 }), 'INVALID_TRANSITION');
      expect(await store.renewLeases('runner-a', 1000)).toEqual([]);
    });

    it('lists unfinished captures, queued and running, oldest first', async () => {
      await store.createCapture({ ...base, id: 'a', computer: 'pc-01' });
      now += 1;
      await store.createCapture({ ...base, id: 'b', computer: 'pc-02', reserve: false });
      now += 1;
      await store.createCapture({ ...base, id: 'c', computer: 'pc-03' });
      await store.failCapture('c', { code: 'X', step: 's', message: 'm' }, 'maintenance');
      expect((await store.listResumableCaptures()).map((c) => [c.id, c.status])).toEqual([
        ['a', 'running'],
        ['b', 'queued'],
      ]);
    });
  });

  describe('cancellation asked by another process', () => {
    it('is recorded for the owner to see when it renews, with an audit event', async () => {
      await store.createCapture({ ...base, id: 'r-1', computer: 'pc-01', owner: 'runner-a' });
      const asked = await store.requestCancel('r-1', 'operator: wrong image');
      expect(asked.cancelRequested).toBe('operator: wrong image');
      expect(await store.renewLeases('runner-a', 1000)).toEqual([
        { captureId: 'r-1', cancelRequested: 'operator: wrong image' },
      ]);
      const event = (await store.getCapture('r-1'))?.events.at(-1);
      expect(event).toMatchObject({
        type: 'capture.cancel_requested',
        details: { reason: 'operator: wrong image' },
      });
    });

    it('is refused for a finished or unknown capture', async () => {
      await store.createCapture({ ...base, id: 'f-1', computer: 'pc-01' });
      await store.failCapture('f-1', { code: 'X', step: 's', message: 'm' }, 'maintenance');
      await expectVclError(store.requestCancel('f-1', 'late'), 'INVALID_TRANSITION', /it is failed/);
      await expectVclError(store.requestCancel('nope', 'late'), 'NOT_FOUND');
    });
  });

  describe('remote command tags', () => {
    it('are recorded once per capture, host and tag, listed oldest first, and forgotten one or all', async () => {
      await store.createCapture({ ...base, id: 't-1', computer: 'pc-01' });
      await store.recordRemoteTag('t-1', 'esxi-1', '0123456789abcdef');
      now += 1000;
      await store.recordRemoteTag('t-1', 'repo', '0123456789abcdef');
      await store.recordRemoteTag('t-1', 'esxi-1', '0123456789abcdef');
      now += 1000;
      await store.recordRemoteTag('t-1', 'esxi-1', 'fedcba9876543210');
      expect(await store.remoteTags('t-1')).toEqual([
        { host: 'esxi-1', tag: '0123456789abcdef', recordedAt: '2025-03-01T08:00:00.000Z' },
        { host: 'repo', tag: '0123456789abcdef', recordedAt: '2025-03-01T08:00:01.000Z' },
        { host: 'esxi-1', tag: 'fedcba9876543210', recordedAt: '2025-03-01T08:00:02.000Z' },
      ]);
      expect(await store.forgetRemoteTags('t-1', { host: 'esxi-1', tag: '0123456789abcdef' })).toBe(1);
      expect((await store.remoteTags('t-1')).map((t) => t.host)).toEqual(['repo', 'esxi-1']);
      expect(await store.forgetRemoteTags('t-1')).toBe(2);
      expect(await store.remoteTags('t-1')).toEqual([]);
    });

    it('refuse an unknown capture and a host name that is not one line of text', async () => {
      await expectVclError(store.recordRemoteTag('nope', 'esxi-1', '0123456789abcdef'), 'NOT_FOUND');
      await store.createCapture({ ...base, id: 't-2', computer: 'pc-02' });
      await expectVclError(store.recordRemoteTag('t-2', 'a\nb', '0123456789abcdef'), 'INVALID_INPUT');
      expect(await store.remoteTags('t-2')).toEqual([]);
    });
  });
});
