/**
 * `fencedStore`, one execution's view of a real SQLite store: its capture's writes carry the claim it runs
 * under, so after another runner claimed the capture each is refused with FENCED (and reported once);
 * everything else reaches the store as it is.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { VclError } from '../../src/errors.js';
import { fencedStore } from '../../src/runner/fence.js';
import {
  type CaptureFence,
  type CaptureStore,
  openSqliteStore,
  type SqliteCaptureStore,
} from '../../src/store/index.js';
import { dump, expectVclError, REPO, SHA, seed, tempFolder } from '../store/helpers.js';

let folder: ReturnType<typeof tempFolder>;
let store: SqliteCaptureStore;
/** The fence of `mine` (claimed by runner-a), and of `other` (claimed by runner-c). */
let fenceA: CaptureFence;
let fenceOther: CaptureFence;
const fencedErrors: VclError[] = [];

const ARTIFACT = { path: 'mine.vmdk', sizeBytes: 10, sha256: SHA, format: 'vmdk' } as const;
const SLOT = { host: 'esx-1', kind: 'copy', limit: 5 } as const;
const transition = (step: string) => ({
  stateValue: { capturing: step },
  event: { type: 'state.entered', step, details: { why: `entered ${step}` } },
});

beforeEach(async () => {
  folder = tempFolder('vcl-fence-');
  store = openSqliteStore(folder.file('store.sqlite'));
  await seed(store);
  const base = { imageId: 12345, provisioner: 'vmware', os: 'windows', repository: REPO } as const;
  const mine = await store.createCapture({
    ...base,
    id: 'mine',
    computer: 'pc-01',
    reserve: false,
    owner: 'runner-a',
    leaseMs: 60_000,
  });
  fenceA = { owner: 'runner-a', generation: mine.generation };
  const other = await store.createCapture({
    ...base,
    id: 'other',
    computer: 'pc-02',
    reserve: false,
    owner: 'runner-c',
    leaseMs: 60_000,
  });
  fenceOther = { owner: 'runner-c', generation: other.generation };
  fencedErrors.length = 0;
});

afterEach(async () => {
  await store.close();
  folder.cleanup();
});

/** runner-a's view of the store for `mine`, under `fence`. */
const view = (fence: CaptureFence): CaptureStore =>
  fencedStore(store, 'mine', fence, (err) => fencedErrors.push(err));

/** runner-b takes `mine` over: runner-a's fence is stale from now on. */
async function takenOver(): Promise<CaptureFence> {
  const r = await store.claimCapture('mine', 'runner-b', { leaseMs: 60_000, replacing: 'runner-a' });
  return { owner: 'runner-b', generation: r.generation };
}

describe('writes for its own capture', () => {
  it('are refused with FENCED once another runner claimed it, each reported once, nothing changed', async () => {
    // Reserved and in copy_image, so that every write below would succeed without the fence.
    await store.reserveComputer('mine', { fence: fenceA });
    await store.recordRemoteTag('mine', 'esx-1', 'aaaa', { fence: fenceA });
    await takenOver();
    const s = view(fenceA);
    const before = dump(store.path);
    const writes: [string, () => Promise<unknown>][] = [
      ['reserveComputer', () => s.reserveComputer('mine')],
      ['recordTransition', () => s.recordTransition('mine', transition('verify_image'))],
      ['completeCapture', () => s.completeCapture('mine', ARTIFACT)],
      [
        'failCapture',
        () => s.failCapture('mine', { code: 'TIMEOUT', step: 'copy_image', message: 'late' }, 'maintenance'),
      ],
      [
        'cancelCapture',
        () => s.cancelCapture('mine', { code: 'CANCELLED', step: 'copy_image', message: 'late' }, 'restore'),
      ],
      ['recordRemoteTag', () => s.recordRemoteTag('mine', 'esx-1', 'bbbb')],
      ['forgetRemoteTags', () => s.forgetRemoteTags('mine')],
      // The fence given by the caller is replaced by the execution's own.
      ['acquireHostSlot', () => s.acquireHostSlot('mine', SLOT, { owner: 'runner-b', generation: 99 })],
    ];
    for (const [name, write] of writes) {
      const count = fencedErrors.length;
      const err = await expectVclError(write(), 'FENCED', /capture mine is no longer run by runner-a/);
      expect(fencedErrors.length, name).toBe(count + 1);
      expect(fencedErrors.at(-1), name).toBe(err);
    }
    expect(dump(store.path)).toBe(before);
  });

  it('go through under the current claim, with the caller’s options kept', async () => {
    const s = view(await takenOver());
    await expectVclError(s.reserveComputer('mine', { expectedVersion: 999 }), 'COMPUTER_CHANGED');
    await s.reserveComputer('mine');
    await s.recordTransition('mine', transition('copy_image'));
    await s.recordRemoteTag('mine', 'esx-1', 'aaaa');
    await s.recordRemoteTag('mine', 'esx-1', 'bbbb');
    expect(await s.forgetRemoteTags('mine', { host: 'esx-1', tag: 'aaaa' })).toBe(1);
    expect((await store.remoteTags('mine')).map((t) => t.tag)).toEqual(['bbbb']);
    expect(await s.acquireHostSlot('mine', SLOT, fenceA)).toBe(true);
    await s.completeCapture('mine', ARTIFACT, { details: { warnings: ['slow disk'] } });
    expect(fencedErrors).toEqual([]);

    const detail = await store.getCapture('mine');
    expect(detail?.status).toBe('completed');
    expect(detail?.events.find((e) => e.type === 'state.entered')?.details).toEqual({
      why: 'entered copy_image',
    });
    expect(detail?.events.find((e) => e.type === 'capture.completed')?.details).toMatchObject({
      warnings: ['slow disk'],
    });
  });

  it('a failure and a cancellation keep their details too', async () => {
    const s = view(fenceA);
    await s.failCapture('mine', { code: 'TIMEOUT', step: 'queued', message: 'x' }, 'restore', {
      details: { warnings: ['w1'] },
    });
    await fencedStore(store, 'other', fenceOther, (err) => fencedErrors.push(err)).cancelCapture(
      'other',
      { code: 'CANCELLED', step: 'queued', message: 'y' },
      'restore',
      { details: { warnings: ['w2'] } },
    );
    const failed = await store.getCapture('mine');
    const cancelled = await store.getCapture('other');
    expect(failed?.events.at(-1)).toMatchObject({ type: 'capture.failed', details: { warnings: ['w1'] } });
    expect(cancelled?.events.at(-1)).toMatchObject({
      type: 'capture.cancelled',
      details: { warnings: ['w2'] },
    });
    expect(fencedErrors).toEqual([]);
  });
});

describe('writes for another capture', () => {
  it('go through without the execution’s (stale) fence', async () => {
    await takenOver();
    const s = view(fenceA);
    await s.reserveComputer('other');
    await s.recordTransition('other', transition('copy_image'));
    await s.recordRemoteTag('other', 'esx-1', 'cccc');
    expect(await s.forgetRemoteTags('other')).toBe(1);
    expect(await s.acquireHostSlot('other', SLOT, fenceOther)).toBe(true);
    await s.failCapture('other', { code: 'TIMEOUT', step: 'copy_image', message: 'slow' }, 'maintenance');
    expect(await store.getCaptureRecord('other')).toMatchObject({
      status: 'failed',
      stateValue: { capturing: 'copy_image' },
      releaseOutcome: 'maintenance',
    });
    expect((await store.getComputer('pc-02'))?.state).toBe('maintenance');
    expect(fencedErrors).toEqual([]);
  });

  it('keep a fence the caller gave for that capture', async () => {
    const s = view(fenceA);
    await store.claimCapture('other', 'runner-d', { leaseMs: 60_000, replacing: 'runner-c' });
    await expectVclError(
      s.recordRemoteTag('other', 'esx-1', 'dddd', { fence: fenceOther }),
      'FENCED',
      /capture other is no longer run by runner-c/,
    );
    await expectVclError(s.acquireHostSlot('other', SLOT, fenceOther), 'FENCED', /runner-c/);
    expect(await store.remoteTags('other')).toEqual([]);
  });
});

describe('everything else', () => {
  it('reads and properties are the store’s, its methods bound to it', async () => {
    const s = view(fenceA);
    const { getCaptureRecord, listCaptures } = s;
    expect((await getCaptureRecord('mine'))?.owner).toBe('runner-a');
    expect((await listCaptures()).map((c) => c.id).sort()).toEqual(['mine', 'other']);
    expect((s as SqliteCaptureStore).path).toBe(store.path);
    expect((s as SqliteCaptureStore).schemaVersion).toBe(store.schemaVersion);
  });

  it('errors other than FENCED are thrown as they are, without reporting the capture lost', async () => {
    const s = view(fenceA);
    await expectVclError(s.completeCapture('mine', ARTIFACT), 'INVALID_TRANSITION');
    await expectVclError(s.recordRemoteTag('nobody', 'esx-1', 'eeee'), 'NOT_FOUND', /nobody/);
    await expectVclError(
      s.failCapture('mine', { code: '', step: 'x', message: 'y' }, 'maintenance'),
      'INVALID_INPUT',
    );
    expect(fencedErrors).toEqual([]);
  });
});
