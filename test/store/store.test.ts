import { describe, expect, it } from 'vitest';
import type { CaptureStore } from '../../src/store/index.js';
import { type OpenedStore, openEach, storeBackends } from './backends.js';
import { expectVclError, openStore, REPO, SHA, seed, tempFolder } from './helpers.js';

describe.each(storeBackends())('$name store', (backend) => {
  let db: OpenedStore;
  let store: CaptureStore;
  openEach(backend, (opened) => {
    [db, store] = [opened, opened.store];
  });

  const base = { imageId: 12345, provisioner: 'vmware', os: 'windows', repository: REPO } as const;
  const failure = { code: 'TIMEOUT', step: 'wait_for_power_off', message: 'still on after 600 s' };

  describe('reservation (compare-and-swap)', () => {
    it('takes an available computer to image, held by the capture', async () => {
      const capture = await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      expect(capture.status).toBe('running');
      expect(capture.image).toEqual({ name: 'vmwarewin7-Base12345-v0', imageId: 12345, revision: 0 });
      const pc = await store.getComputer('pc-01');
      expect(pc).toMatchObject({ state: 'image', heldBy: 'cap-1', heldFromState: 'available', version: 1 });
    });

    it('takes a reserved computer too', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-04' });
      expect(await store.getComputer('pc-04')).toMatchObject({ state: 'image', heldFromState: 'reserved' });
    });

    it('refuses a second capture of a held computer at once, naming the holder, and writes nothing', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      const before = await db.dump();
      const err = await expectVclError(
        store.createCapture({ ...base, id: 'cap-2', computer: 'pc-01' }),
        'COMPUTER_BUSY',
        /computer pc-01 is held by capture cap-1 \(image vmwarewin7-Base12345-v0, running since/,
      );
      expect(err.details).toMatchObject({ computer: 'pc-01', heldBy: 'cap-1' });
      expect(await db.dump()).toBe(before);
    });

    it('refuses a computer whose state forbids capture, naming the state', async () => {
      await expectVclError(
        store.createCapture({ ...base, computer: 'pc-05' }),
        'COMPUTER_BUSY',
        /pc-05 is in state maintenance; a capture may only take it from available or reserved/,
      );
      for (const state of ['inuse', 'reload', 'failed', 'deleted'] as const) {
        await store.setComputerState('pc-03', state);
        await expectVclError(
          store.createCapture({ ...base, computer: 'pc-03' }),
          'COMPUTER_BUSY',
          new RegExp(state),
        );
      }
      expect((await db.tableCounts()).captures).toBe(0);
    });

    it('reserves a queued capture later, honouring expectedVersion', async () => {
      const queued = await store.createCapture({ ...base, id: 'cap-q', computer: 'pc-02', reserve: false });
      expect(queued.status).toBe('queued');
      expect((await store.getComputer('pc-02'))?.state).toBe('available');
      const pc = await store.getComputer('pc-02');
      await store.setComputerState('pc-02', 'reserved');
      await expectVclError(
        store.reserveComputer('cap-q', { expectedVersion: pc?.version ?? -1 }),
        'COMPUTER_CHANGED',
        /expected version 0, it is at version 1/,
      );
      const running = await store.reserveComputer('cap-q', { expectedVersion: 1 });
      expect(running.status).toBe('running');
      await expectVclError(store.reserveComputer('cap-q'), 'INVALID_TRANSITION', /it is running/);
    });

    it('a queued capture of a held computer waits, and its reservation fails with COMPUTER_BUSY', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      await store.createCapture({ ...base, id: 'cap-2', computer: 'pc-01', reserve: false });
      await expectVclError(store.reserveComputer('cap-2'), 'COMPUTER_BUSY', /held by capture cap-1/);
      expect((await store.getCapture('cap-2'))?.status).toBe('queued');
    });

    it('operators cannot change a held computer, nor put one in image by hand', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      await expectVclError(
        store.setComputerState('pc-01', 'available'),
        'COMPUTER_BUSY',
        /held by capture cap-1/,
      );
      await expectVclError(store.setComputerState('pc-02', 'image'), 'INVALID_TRANSITION');
      await expectVclError(store.setComputerState('nope', 'available'), 'UNKNOWN_COMPUTER');
    });
  });

  describe('capture lifecycle', () => {
    it('records transitions with their audit events and keeps the last snapshot', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      const seq1 = await store.recordTransition('cap-1', {
        stateValue: { os: 'pre_capture' },
        snapshot: { value: { os: 'pre_capture' }, context: { n: 1 } },
        machineVersion: 'vmware@1',
        event: { type: 'state.entered' },
      });
      const seq2 = await store.recordTransition('cap-1', {
        stateValue: { os: 'shutdown' },
        error: failure,
        event: { type: 'step.finished', step: 'clean_disk', durationMs: 1234.4, details: { exitCode: 0 } },
      });
      expect([seq1, seq2]).toEqual([3, 4]); // 1: capture.created, 2: computer.reserved
      const detail = await store.getCapture('cap-1');
      expect(detail).toMatchObject({
        stateValue: { os: 'shutdown' },
        lastError: failure,
        machineVersion: 'vmware@1',
      });
      expect(detail?.events.map((e) => e.type)).toEqual([
        'capture.created',
        'computer.reserved',
        'state.entered',
        'step.finished',
      ]);
      expect(detail?.events[3]).toMatchObject({
        seq: 4,
        stateValue: { os: 'shutdown' },
        step: 'clean_disk',
        durationMs: 1234,
        details: { exitCode: 0 },
      });
      expect(await store.loadSnapshot('cap-1')).toMatchObject({
        status: 'running',
        snapshot: { value: { os: 'pre_capture' }, context: { n: 1 } },
        machineVersion: 'vmware@1',
      });
      expect((await store.listResumableCaptures()).map((c) => c.id)).toEqual(['cap-1']);
    });

    it('completes: un-deletes the revision with size, sha256, location; computer to reload; hold released', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-04' });
      const revBefore = (await store.getImage(12345))?.revisions[0];
      expect(revBefore).toMatchObject({ deleted: true, production: false, sizeBytes: null, sha256: null });
      const done = await store.completeCapture('cap-1', {
        path: `${REPO}/vmwarewin7-Base12345-v0/vmwarewin7-Base12345-v0.vmdk`,
        sizeBytes: 21474836480,
        sha256: SHA.toUpperCase(),
        format: 'vmdk',
      });
      expect(done).toMatchObject({ status: 'completed', releaseOutcome: null });
      expect(done.finishedAt).not.toBeNull();
      expect((await store.getImage(12345))?.revisions[0]).toMatchObject({
        deleted: false,
        production: false,
        sizeBytes: 21474836480,
        sha256: SHA,
        format: 'vmdk',
        repository: REPO,
        path: 'vmwarewin7-Base12345-v0/vmwarewin7-Base12345-v0.vmdk',
      });
      expect(await store.getComputer('pc-04')).toMatchObject({
        state: 'reload',
        heldBy: null,
        heldFromState: null,
      });
      const events = (await store.getCapture('cap-1'))?.events ?? [];
      expect(events.at(-1)).toMatchObject({ type: 'capture.completed' });
      expect(await store.listResumableCaptures()).toEqual([]);
      await expectVclError(
        store.recordTransition('cap-1', { stateValue: 'x', event: { type: 'state.entered' } }),
        'INVALID_TRANSITION',
        /it is completed/,
      );
      await expectVclError(
        store.completeCapture('cap-1', { path: 'b', sizeBytes: 1, sha256: SHA, format: 'raw' }),
        'INVALID_TRANSITION',
      );
    });

    it('fails to maintenance: revision stays deleted, error recorded', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-04' });
      const failed = await store.failCapture('cap-1', failure, 'maintenance', {
        details: { cleanupFailures: [] },
      });
      expect(failed).toMatchObject({ status: 'failed', lastError: failure, releaseOutcome: 'maintenance' });
      expect(await store.getComputer('pc-04')).toMatchObject({ state: 'maintenance', heldBy: null });
      expect((await store.getImage(12345))?.revisions[0]?.deleted).toBe(true);
      const last = (await store.getCapture('cap-1'))?.events.at(-1);
      expect(last).toMatchObject({ type: 'capture.failed', step: 'wait_for_power_off' });
      expect(last?.details).toMatchObject({ outcome: 'maintenance', computer: { state: 'maintenance' } });
    });

    it('cancels with restore: the computer goes back to the state it was reserved from', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-04' });
      await store.cancelCapture(
        'cap-1',
        { code: 'CANCELLED', step: 'reserve', message: 'operator cancelled' },
        'restore',
      );
      expect(await store.getComputer('pc-04')).toMatchObject({ state: 'reserved', heldBy: null });
      expect((await store.getCapture('cap-1'))?.status).toBe('cancelled');
      // The computer can be captured again: the next revision is v1.
      const again = await store.createCapture({ ...base, id: 'cap-2', computer: 'pc-04' });
      expect(again.image.name).toBe('vmwarewin7-Base12345-v1');
    });

    it('cancels a queued capture without touching its computer', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      await store.createCapture({ ...base, id: 'cap-2', computer: 'pc-01', reserve: false });
      const cancelled = await store.cancelCapture(
        'cap-2',
        { code: 'CANCELLED', step: 'queued', message: 'no' },
        'maintenance',
      );
      expect(cancelled).toMatchObject({ status: 'cancelled', releaseOutcome: null });
      expect(await store.getComputer('pc-01')).toMatchObject({ state: 'image', heldBy: 'cap-1' });
      await expectVclError(
        store.failCapture('cap-2', failure, 'maintenance'),
        'INVALID_TRANSITION',
        /it is cancelled/,
      );
    });

    it('refuses operations on unknown captures with NOT_FOUND', async () => {
      await expectVclError(
        store.recordTransition('nope', { stateValue: 'a', event: { type: 'state.entered' } }),
        'NOT_FOUND',
      );
      await expectVclError(store.failCapture('nope', failure, 'maintenance'), 'NOT_FOUND');
      await expectVclError(store.reserveComputer('nope'), 'NOT_FOUND');
      expect(await store.getCapture('nope')).toBeUndefined();
      expect(await store.loadSnapshot('nope')).toBeUndefined();
    });
  });

  describe('computers in maintenance: what put them there, and their release', () => {
    it('describes the capture and error that sent a computer to maintenance', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-04' });
      await store.failCapture('cap-1', failure, 'maintenance');
      const computers = await store.describeComputers();
      expect(computers.find((c) => c.name === 'pc-04')).toMatchObject({
        state: 'maintenance',
        maintenance: {
          captureId: 'cap-1',
          image: 'vmwarewin7-Base12345-v0',
          status: 'failed',
          error: failure,
        },
      });
      // In maintenance by other means (registered so): no capture to name.
      expect(computers.find((c) => c.name === 'pc-05')).toMatchObject({
        state: 'maintenance',
        maintenance: null,
      });
      expect(computers.find((c) => c.name === 'pc-01')?.maintenance).toBeNull();
    });

    it('releases to the state the capture reserved it from, with the reason in that capture’s audit trail', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-04' });
      await store.failCapture('cap-1', failure, 'maintenance');
      const released = await store.releaseComputer('pc-04', 'powered it off by hand');
      expect(released).toMatchObject({
        computer: { name: 'pc-04', state: 'reserved', heldBy: null },
        cause: { captureId: 'cap-1' },
        reason: 'powered it off by hand',
      });
      expect((await store.getCapture('cap-1'))?.events.at(-1)).toMatchObject({
        type: 'computer.released',
        details: { computer: 'pc-04', from: 'maintenance', to: 'reserved', reason: 'powered it off by hand' },
      });
      // Released from that capture: it no longer counts as the cause.
      expect((await store.describeComputer('pc-04'))?.maintenance).toBeNull();
      await expectVclError(store.releaseComputer('pc-04', 'again'), 'INVALID_TRANSITION', /not maintenance/);
    });

    it('releases a computer no capture put in maintenance to available', async () => {
      const released = await store.releaseComputer('pc-05', 'repaired');
      expect(released).toMatchObject({ computer: { state: 'available' }, cause: null });
    });

    it('refuses while a capture holds the computer, and bad input, writing nothing', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      const before = await db.dump();
      await expectVclError(store.releaseComputer('pc-01', 'x'), 'COMPUTER_BUSY', /held by capture cap-1/);
      await expectVclError(store.releaseComputer('pc-02', 'x'), 'INVALID_TRANSITION', /in state available/);
      await expectVclError(store.releaseComputer('nope', 'x'), 'UNKNOWN_COMPUTER');
      await expectVclError(store.releaseComputer('pc-05', ''), 'INVALID_INPUT', /reason/);
      expect(await db.dump()).toEqual(before);
    });
  });

  describe('revisions and names', () => {
    it('numbers revisions highest + 1 and renames the trailing -vN, even after the pretty name changed', async () => {
      const names: string[] = [];
      for (let i = 0; i < 3; i++) {
        const c = await store.createCapture({ ...base, id: `cap-${i}`, computer: 'pc-01' });
        names.push(c.image.name);
        await store.failCapture(c.id, failure, 'restore');
      }
      expect(names).toEqual([
        'vmwarewin7-Base12345-v0',
        'vmwarewin7-Base12345-v1',
        'vmwarewin7-Base12345-v2',
      ]);
      // An explicit revision leaves a gap; the next automatic one is after the highest.
      const c7 = await store.createCapture({ ...base, id: 'cap-7', computer: 'pc-01', revision: 7 });
      expect(c7.image).toMatchObject({ name: 'vmwarewin7-Base12345-v7', revision: 7 });
      await store.failCapture('cap-7', failure, 'restore');
      const c8 = await store.createCapture({ ...base, id: 'cap-8', computer: 'pc-01' });
      expect(c8.image.name).toBe('vmwarewin7-Base12345-v8');
    });

    it('refuses a revision that already exists, and writes nothing', async () => {
      const c = await store.createCapture({ ...base, id: 'cap-0', computer: 'pc-01' });
      await store.failCapture(c.id, failure, 'restore');
      const before = await db.dump();
      await expectVclError(
        store.createCapture({ ...base, computer: 'pc-01', revision: 0 }),
        'REVISION_EXISTS',
        /revision 0 of image 12345 already exists \(vmwarewin7-Base12345-v0, deleted\)/,
      );
      expect(await db.dump()).toBe(before);
    });

    it('refuses a name another image already took (VCL names can collide: Base + 12345 = Base1 + 2345)', async () => {
      await store.registerImage({ id: 2345, osName: 'vmwarewin7', prettyName: 'Base1', owner: 'bob' });
      await store.createCapture({ ...base, id: 'cap-a', computer: 'pc-01' });
      await expectVclError(
        store.createCapture({ ...base, imageId: 2345, computer: 'pc-02' }),
        'REVISION_EXISTS',
        /vmwarewin7-Base12345-v0 is already taken by revision 0 of image 12345/,
      );
    });

    it('keeps the name of a running capture fixed', async () => {
      const c = await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      await store.recordTransition('cap-1', { stateValue: 'copy', event: { type: 'state.entered' } });
      await store.createCapture({ ...base, id: 'cap-2', computer: 'pc-02' });
      expect((await store.getCapture('cap-1'))?.image).toEqual(c.image);
    });

    it('makes one completed revision the production one', async () => {
      for (const [i, pc] of ['pc-01', 'pc-02'].entries()) {
        await store.createCapture({ ...base, id: `cap-${i}`, computer: pc });
        await store.completeCapture(`cap-${i}`, {
          path: `v${i}.vmdk`,
          sizeBytes: 10,
          sha256: SHA,
          format: 'vmdk',
        });
      }
      await store.createCapture({ ...base, id: 'cap-2', computer: 'pc-03' });
      await store.setProductionRevision(12345, 0);
      await store.setProductionRevision(12345, 1);
      const revisions = (await store.getImage(12345))?.revisions ?? [];
      expect(revisions.map((r) => [r.revision, r.production, r.deleted])).toEqual([
        [0, false, false],
        [1, true, false],
        [2, false, true],
      ]);
      await expectVclError(store.setProductionRevision(12345, 2), 'INVALID_TRANSITION', /is deleted/);
      await expectVclError(store.setProductionRevision(12345, 9), 'NOT_FOUND');
    });
  });

  describe('bad input: typed error, nothing written', () => {
    it('refuses each kind of bad capture input before writing', async () => {
      const before = await db.dump();
      await expectVclError(
        store.createCapture({ ...base, computer: 'pc-99' }),
        'UNKNOWN_COMPUTER',
        /pc-99 is not registered/,
      );
      await expectVclError(store.createCapture({ ...base, computer: 'pc 01' }), 'INVALID_INPUT');
      await expectVclError(
        store.createCapture({ ...base, computer: 'pc-01', imageId: 999 }),
        'NOT_FOUND',
        /image 999/,
      );
      await expectVclError(store.createCapture({ ...base, computer: 'pc-01', imageId: -1 }), 'INVALID_INPUT');
      await expectVclError(
        // @ts-expect-error: a provisioner the machines do not know
        store.createCapture({ ...base, computer: 'pc-01', provisioner: 'hyperv' }),
        'INVALID_INPUT',
        /provisioner "hyperv" is not one of libvirt, vmware, xcat/,
      );
      await expectVclError(
        store.createCapture({ ...base, computer: 'pc-01', repository: 'relative/repo' }),
        'INVALID_PATH',
      );
      await expectVclError(
        store.createCapture({ ...base, computer: 'pc-01', id: 'x;rm -rf' }),
        'INVALID_INPUT',
      );
      await expectVclError(
        store.registerImage({ osName: '', prettyName: 'A', owner: 'o' }),
        'INVALID_IMAGE_NAME',
      );
      await expectVclError(
        store.registerImage({ osName: 'win7', prettyName: '  ', owner: 'o' }),
        'INVALID_IMAGE_NAME',
      );
      await expectVclError(
        store.registerImage({ id: 12345, osName: 'win7', prettyName: 'Other', owner: 'o' }),
        'IMAGE_CONFLICT',
      );
      await expectVclError(
        store.registerComputers([{ name: 'pc-09' }, { name: 'bad name' }]),
        'INVALID_INPUT',
      );
      await expectVclError(store.registerComputers([{ name: 'pc-09' }, { name: 'pc-09' }]), 'INVALID_INPUT');
      expect(await db.dump()).toBe(before);
    });

    it('refuses an artifact outside the repository, or malformed, leaving the capture running and held', async () => {
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      const before = await db.dump();
      const ok = { sizeBytes: 1, sha256: SHA, format: 'vmdk' };
      await expectVclError(
        store.completeCapture('cap-1', { ...ok, path: '../../etc/shadow' }),
        'PATH_OUTSIDE_REPOSITORY',
      );
      await expectVclError(
        store.completeCapture('cap-1', { ...ok, path: '/tmp/x.vmdk' }),
        'PATH_OUTSIDE_REPOSITORY',
        /outside repository/,
      );
      await expectVclError(store.completeCapture('cap-1', { ...ok, path: 'x\n.vmdk' }), 'INVALID_PATH');
      await expectVclError(store.completeCapture('cap-1', { ...ok, path: 'x\u0000.vmdk' }), 'INVALID_PATH');
      await expectVclError(
        store.completeCapture('cap-1', { ...ok, path: 'x.vmdk', sha256: 'abc' }),
        'INVALID_INPUT',
        /sha256/,
      );
      await expectVclError(
        store.completeCapture('cap-1', { ...ok, path: 'x.vmdk', sizeBytes: -1 }),
        'INVALID_INPUT',
      );
      await expectVclError(
        store.completeCapture('cap-1', { ...ok, path: 'x.vmdk', format: 'vm dk' }),
        'INVALID_INPUT',
      );
      const circular: Record<string, unknown> = {};
      circular.self = circular;
      await expectVclError(
        store.recordTransition('cap-1', {
          stateValue: 'a',
          snapshot: circular,
          event: { type: 'state.entered' },
        }),
        'INVALID_INPUT',
        /snapshot is not JSON-serialisable/,
      );
      await expectVclError(
        store.recordTransition('cap-1', { stateValue: '', event: { type: 'state.entered' } }),
        'INVALID_INPUT',
      );
      await expectVclError(
        store.recordTransition('cap-1', { stateValue: 'a', event: { type: 'State Entered' } }),
        'INVALID_INPUT',
      );
      // @ts-expect-error: an outcome that does not exist
      await expectVclError(store.failCapture('cap-1', failure, 'reload'), 'INVALID_INPUT');
      await expectVclError(
        store.failCapture('cap-1', { ...failure, message: '' }, 'maintenance'),
        'INVALID_INPUT',
      );
      expect(await db.dump()).toBe(before);
    });

    it('refuses a location another live revision already occupies', async () => {
      const a = { path: 'same.vmdk', sizeBytes: 1, sha256: SHA, format: 'vmdk' };
      await store.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });
      await store.completeCapture('cap-1', a);
      await store.createCapture({ ...base, id: 'cap-2', computer: 'pc-02' });
      await expectVclError(
        store.completeCapture('cap-2', a),
        'LOCATION_IN_USE',
        /already holds revision vmwarewin7-Base12345-v0/,
      );
    });
  });

  describe('read API', () => {
    it('lists captures by status and computer, newest first', async () => {
      await store.createCapture({ ...base, id: 'a', computer: 'pc-01' });
      await store.createCapture({ ...base, id: 'b', computer: 'pc-02' });
      await store.createCapture({ ...base, id: 'c', computer: 'pc-01', reserve: false });
      await store.failCapture('b', failure, 'maintenance');
      expect((await store.listCaptures()).map((c) => c.id)).toEqual(['c', 'b', 'a']);
      expect((await store.listCaptures({ status: 'running' })).map((c) => c.id)).toEqual(['a']);
      expect((await store.listCaptures({ status: ['queued', 'failed'] })).map((c) => c.id)).toEqual([
        'c',
        'b',
      ]);
      expect((await store.listCaptures({ computer: 'pc-01' })).map((c) => c.id)).toEqual(['c', 'a']);
      expect((await store.listCaptures({ limit: 1, offset: 1 })).map((c) => c.id)).toEqual(['b']);
      // @ts-expect-error: not a status
      await expectVclError(store.listCaptures({ status: 'done' }), 'INVALID_INPUT');
    });

    it('lists images with their revisions, optionally without deleted ones', async () => {
      await store.registerImage({ id: 7, osName: 'centos7', prettyName: 'Web', owner: 'bob' });
      await store.createCapture({ ...base, id: 'a', computer: 'pc-01' });
      await store.completeCapture('a', { path: 'a.vmdk', sizeBytes: 5, sha256: SHA, format: 'vmdk' });
      await store.createCapture({ ...base, id: 'b', computer: 'pc-02' });
      const all = await store.listImages();
      expect(all.map((i) => [i.id, i.revisions.length])).toEqual([
        [7, 0],
        [12345, 2],
      ]);
      const live = await store.listImages({ includeDeleted: false, owner: 'admin' });
      expect(live.map((i) => [i.id, i.revisions.map((r) => r.name)])).toEqual([
        [12345, ['vmwarewin7-Base12345-v0']],
      ]);
    });

    it('registers computers idempotently: the inventory never overrides runtime state', async () => {
      await store.createCapture({ ...base, id: 'a', computer: 'pc-01' });
      const again = await store.registerComputers([{ name: 'pc-01', state: 'available' }, { name: 'pc-06' }]);
      expect(again.map((c) => [c.name, c.state])).toEqual([
        ['pc-01', 'image'],
        ['pc-06', 'available'],
      ]);
      expect((await store.listComputers()).map((c) => c.name)).toEqual([
        'pc-01',
        'pc-02',
        'pc-03',
        'pc-04',
        'pc-05',
        'pc-06',
      ]);
    });
  });

  describe('the store across close and reopen', () => {
    it('keeps everything across close and reopen, and refuses calls after close', async () => {
      await store.createCapture({ ...base, id: 'a', computer: 'pc-01' });
      await store.recordTransition('a', {
        stateValue: { vmware: 'copy' },
        snapshot: { big: 'x'.repeat(5000) },
        event: { type: 'state.entered' },
      });
      const before = await db.dump();
      await store.close();
      await expectVclError(store.getCapture('a'), 'STORE_CLOSED');
      store = await db.openAgain();
      expect(await db.dump()).toBe(before);
      expect((await store.listResumableCaptures()).map((c) => c.id)).toEqual(['a']);
      expect((await store.loadSnapshot('a'))?.snapshot).toEqual({ big: 'x'.repeat(5000) });
      expect(await store.getComputer('pc-01')).toMatchObject({ state: 'image', heldBy: 'a' });
    });
  });
});

describe('the SQLite file', () => {
  it('uses WAL, foreign keys and the busy timeout it was given', async () => {
    const folder = tempFolder();
    const path = folder.file('store.sqlite');
    const store = openStore(path);
    const base = { imageId: 12345, provisioner: 'vmware', os: 'windows', repository: REPO } as const;
    try {
      await seed(store);
      const Database = (await import('better-sqlite3')).default;
      const db = new Database(path, { readonly: true });
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      db.close();
      // The append-only trigger holds even for someone writing SQL by hand.
      const rw = new Database(path);
      await store.createCapture({ ...base, id: 'a', computer: 'pc-01' });
      expect(() => rw.prepare('DELETE FROM capture_events').run()).toThrow(/append-only/);
      expect(() => rw.prepare("UPDATE capture_events SET type = 'x'").run()).toThrow(/append-only/);
      rw.close();
    } finally {
      await store.close();
      folder.cleanup();
    }
  });
});
