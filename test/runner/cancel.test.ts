/**
 * `cancelThroughStore`, as a process that does not run the capture uses it, on a real SQLite store: a
 * queued capture nobody took is cancelled at once; any other unfinished one is asked of its runner.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { cancelThroughStore } from '../../src/runner/cancel.js';
import { type NewCapture, openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import { expectVclError, REPO, seed, tempFolder } from '../store/helpers.js';

let folder: ReturnType<typeof tempFolder>;
let store: SqliteCaptureStore;

beforeEach(async () => {
  folder = tempFolder('vcl-cancel-');
  store = openSqliteStore(folder.file('store.sqlite'));
  await seed(store);
});

afterEach(async () => {
  await store.close();
  folder.cleanup();
});

const create = (id: string, more: Partial<NewCapture>) =>
  store.createCapture({
    id,
    computer: 'pc-01',
    imageId: 12345,
    provisioner: 'vmware',
    os: 'windows',
    repository: REPO,
    ...more,
  });

describe('cancelThroughStore', () => {
  it('cancels a queued capture nobody runs at once, with the reason, leaving its computer alone', async () => {
    await create('q-1', { reserve: false });
    const done = await cancelThroughStore(store, 'q-1', 'operator changed their mind');
    const error = {
      code: 'CANCELLED',
      step: 'queued',
      message: 'cancelled while queued: operator changed their mind',
    };
    expect(done.outcome).toBe('cancelled');
    expect(done.error).toEqual(error);
    expect(done.record).toMatchObject({ id: 'q-1', status: 'cancelled', lastError: error });
    expect(await store.getCaptureRecord('q-1')).toMatchObject({
      status: 'cancelled',
      lastError: error,
      cancelRequested: null,
    });
    expect((await store.getComputer('pc-01'))?.state).toBe('available');
  });

  it('asks the runner that owns a capture, with the reason, and cancels nothing itself', async () => {
    await create('o-1', { owner: 'runner-a', leaseMs: 60_000 });
    const asked = await cancelThroughStore(store, 'o-1', 'wrong image');
    expect(asked.outcome).toBe('requested');
    expect(asked.error).toBeUndefined();
    expect(asked.record).toMatchObject({ status: 'running', cancelRequested: 'wrong image' });
    expect(await store.getCaptureRecord('o-1')).toMatchObject({
      status: 'running',
      owner: 'runner-a',
      cancelRequested: 'wrong image',
    });
    expect(await store.renewLeases('runner-a', 60_000)).toEqual([
      { captureId: 'o-1', cancelRequested: 'wrong image' },
    ]);
  });

  it('asks, not cancels, a queued capture a runner already claimed', async () => {
    await create('q-2', { reserve: false, owner: 'runner-a', leaseMs: 60_000 });
    const asked = await cancelThroughStore(store, 'q-2', 'not needed');
    expect(asked.outcome).toBe('requested');
    expect(await store.getCaptureRecord('q-2')).toMatchObject({
      status: 'queued',
      cancelRequested: 'not needed',
    });
  });

  it('asks, not cancels, a running capture whose runner let it go (its computer is held)', async () => {
    await create('r-1', { owner: 'runner-a', leaseMs: 60_000 });
    await store.releaseCaptures('runner-a');
    const asked = await cancelThroughStore(store, 'r-1', 'stop it');
    expect(asked.outcome).toBe('requested');
    expect(await store.getCaptureRecord('r-1')).toMatchObject({
      status: 'running',
      owner: null,
      cancelRequested: 'stop it',
    });
    expect((await store.getComputer('pc-01'))?.heldBy).toBe('r-1');
  });

  it('refuses an unknown capture with NOT_FOUND naming it', async () => {
    await expectVclError(
      cancelThroughStore(store, 'no-such-capture', 'x'),
      'NOT_FOUND',
      /capture no-such-capture does not exist/,
    );
  });
});
