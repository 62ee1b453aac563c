/**
 * The notification outbox: an event is written by the very transaction that makes the change it
 * announces (none by a refused one), each configured target gets its own delivery, a claim is a lease,
 * and outcomes move a delivery to delivered, a later retry, or dead (and an operator's retry back).
 */
import { beforeEach, describe, expect, it } from 'vitest';
import type { CaptureStore } from '../../src/store/index.js';
import type { NotificationTarget } from '../../src/store/types.js';
import { type OpenedStore, openEach, storeBackends } from './backends.js';
import { expectVclError, REPO, SHA } from './helpers.js';

const base = { imageId: 12345, provisioner: 'vmware', os: 'windows', repository: REPO } as const;
const failure = { code: 'TIMEOUT', step: 'wait_for_power_off', message: 'still on after 600 s' };
const ALL: NotificationTarget = {
  name: 'ops',
  events: ['capture.completed', 'capture.failed', 'capture.cancelled', 'computer.maintenance'],
};
const claimAll = (store: CaptureStore, owner = 'w1', targets = [ALL]) =>
  store.claimNotifications(owner, { targets, leaseMs: 60_000, limit: 100 });

/** A clock the test moves: 1 ms per call, plus what `advance` adds. */
let t: number;

describe.each(storeBackends())('$name store', (backend) => {
  let db: OpenedStore;
  let store: CaptureStore;
  openEach(
    backend,
    (opened) => {
      db = opened;
      store = opened.store;
    },
    () => {
      t = Date.parse('2025-03-01T08:00:00.000Z');
      return { now: () => new Date(t++) };
    },
  );

  describe('events written with the change they announce', () => {
    it('a completed capture: one capture.completed with the image, the artifact and the computer', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-04' });
      expect(await claimAll(store)).toEqual([]);
      await store.completeCapture('cap-1', { path: 'v0.vmdk', sizeBytes: 42, sha256: SHA, format: 'vmdk' });
      const [d, ...more] = await claimAll(store);
      expect(more).toEqual([]);
      expect(d).toMatchObject({ target: 'ops', status: 'pending', attempts: 0 });
      expect(d?.event).toMatchObject({
        version: 1,
        type: 'capture.completed',
        capture: {
          id: 'cap-1',
          status: 'completed',
          provisioner: 'vmware',
          error: null,
          releaseOutcome: null,
        },
        computer: { name: 'pc-04', state: 'reload' },
        image: {
          id: 12345,
          name: 'vmwarewin7-Base12345-v0',
          revision: 0,
          owner: 'admin',
          prettyName: 'Base',
        },
        artifact: {
          path: 'v0.vmdk',
          location: `${REPO}/v0.vmdk`,
          sizeBytes: 42,
          sha256: SHA,
          format: 'vmdk',
        },
      });
      expect(d?.event.id).toMatch(/^[0-9a-f-]{36}$/);
    });

    it('a failure to maintenance announces the failure and the computer; a restore only the failure', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      await store.failCapture('cap-1', failure, 'maintenance');
      await store.createCapture({ ...base, id: 'cap-2', computer: 'pc-02' });
      await store.cancelCapture('cap-2', { ...failure, code: 'CANCELLED' }, 'restore');
      const events = (await claimAll(store)).map((d) => d.event);
      expect(events.map((e) => [e.type, e.capture.id, e.computer.state])).toEqual([
        ['capture.failed', 'cap-1', 'maintenance'],
        ['computer.maintenance', 'cap-1', 'maintenance'],
        ['capture.cancelled', 'cap-2', 'available'],
      ]);
      expect(events[0]?.capture).toMatchObject({ error: failure, releaseOutcome: 'maintenance' });
      expect(new Set(events.map((e) => e.id)).size).toBe(3);
    });

    it('a refused terminal operation writes no event', async () => {
      const a = { path: 'same.vmdk', sizeBytes: 1, sha256: SHA, format: 'vmdk' };
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      await store.completeCapture('cap-1', a);
      await store.createCapture({ ...base, id: 'cap-2', computer: 'pc-02' });
      const before = await db.dump();
      await expectVclError(store.completeCapture('cap-2', a), 'LOCATION_IN_USE');
      await expectVclError(store.failCapture('cap-1', failure, 'maintenance'), 'INVALID_TRANSITION');
      expect(await db.dump()).toBe(before);
      expect((await claimAll(store)).map((d) => d.event.capture.id)).toEqual(['cap-1']);
    });
  });

  describe('deliveries', () => {
    beforeEach(async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      await store.failCapture('cap-1', failure, 'maintenance');
    });

    it('each target gets the events it asked for, once; a claimed delivery is not claimed again during its lease', async () => {
      const mail: NotificationTarget = { name: 'mail', events: ['computer.maintenance'] };
      const first = await claimAll(store, 'w1', [ALL, mail]);
      expect(first.map((d) => [d.target, d.event.type])).toEqual([
        ['ops', 'capture.failed'],
        ['ops', 'computer.maintenance'],
        ['mail', 'computer.maintenance'],
      ]);
      expect(await claimAll(store, 'w2', [ALL, mail])).toEqual([]);
      // The lease ran out (a worker that crashed mid-attempt): another worker gets them, nothing more.
      t += 61_000;
      expect((await claimAll(store, 'w2', [ALL, mail])).map((d) => d.id)).toEqual(first.map((d) => d.id));
    });

    it('delivered, failed with a retry time, dead; an operator retries a dead one', async () => {
      const [a, b] = await claimAll(store);
      if (!a || !b) throw new Error('two deliveries expected');
      expect(await store.finishDelivery(a.id, { result: 'delivered' })).toMatchObject({
        status: 'delivered',
        attempts: 1,
      });
      const retryAt = new Date(t + 5_000).toISOString();
      expect(
        await store.finishDelivery(b.id, { result: 'failed', error: 'HTTP 503', retryAt }),
      ).toMatchObject({
        status: 'pending',
        attempts: 1,
        nextAttemptAt: retryAt,
        lastError: 'HTTP 503',
      });
      expect(await claimAll(store)).toEqual([]); // not due yet
      t += 5_000;
      const [again] = await claimAll(store);
      expect(again?.id).toBe(b.id);
      await store.finishDelivery(b.id, { result: 'failed', error: 'HTTP 500', retryAt: null });
      expect(await store.countNotifications()).toEqual({ pending: 0, delivered: 1, dead: 1 });
      expect(
        (await store.listNotifications({ status: 'dead' })).map((d) => [d.id, d.attempts, d.lastError]),
      ).toEqual([[b.id, 2, 'HTTP 500']]);
      await expectVclError(store.finishDelivery(a.id, { result: 'delivered' }), 'INVALID_TRANSITION');
      await expectVclError(store.retryNotification(a.id), 'INVALID_TRANSITION', /only a dead one/);
      expect(await store.retryNotification(b.id)).toMatchObject({ status: 'pending', attempts: 2 });
      expect((await claimAll(store)).map((d) => d.id)).toEqual([b.id]);
    });

    it('a released delivery is due again at once and its attempt is not counted', async () => {
      const [a] = await claimAll(store);
      if (!a) throw new Error('a delivery expected');
      await store.finishDelivery(a.id, { result: 'released' });
      const again = await claimAll(store);
      expect(again.find((d) => d.id === a.id)).toMatchObject({ attempts: 0, status: 'pending' });
    });

    it('a target configured later is not sent events older than maxAgeMs', async () => {
      t += 3_600_000;
      const late: NotificationTarget = { name: 'late', events: ALL.events };
      const claim = (maxAgeMs: number) =>
        store.claimNotifications('w1', { targets: [late], leaseMs: 1000, maxAgeMs });
      expect(await claim(1_800_000)).toEqual([]);
      expect(await claim(7_200_000)).toHaveLength(2);
    });
  });
});
