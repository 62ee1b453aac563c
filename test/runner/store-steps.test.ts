/**
 * The store's own steps (`reserve`, `record_revision`, `release_computer`) run against a real SQLite store,
 * as the machine would invoke them: each one transaction, safe to repeat after a restart, coming after the
 * transitions still being written.
 */
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  type CaptureStepInput,
  type CaptureStepOutput,
  DEFAULT_TIMEOUTS,
  type ReleaseOutcome,
  type StepFailure,
} from '../../machines/index.js';
import type { StepFn, StepRun } from '../../src/drivers/contract.js';
import { type Logger, silentLogger } from '../../src/log.js';
import { storeSteps } from '../../src/runner/store-steps.js';
import {
  type CaptureRecord,
  type NewCapture,
  openSqliteStore,
  type SqliteCaptureStore,
} from '../../src/store/index.js';
import { expectVclError, REPO, SHA, seed, tempFolder } from '../store/helpers.js';

type Step = StepFn<CaptureStepInput, CaptureStepOutput>;

let folder: ReturnType<typeof tempFolder>;
let store: SqliteCaptureStore;

beforeEach(async () => {
  folder = tempFolder('vcl-store-steps-');
  store = openSqliteStore(folder.file('store.sqlite'));
  await seed(store);
});

afterEach(async () => {
  await store.close();
  folder.cleanup();
});

const ARTIFACT = { path: 'c-1.vmdk', sizeBytes: 4096, sha256: SHA, format: 'vmdk' } as const;
const WARNINGS = [{ step: 'defrag', code: 'COMMAND_FAILED', message: 'defrag exited 1' }];

const create = (more: Partial<NewCapture> = {}) =>
  store.createCapture({
    id: 'c-1',
    computer: 'pc-01',
    imageId: 12345,
    provisioner: 'vmware',
    os: 'windows',
    repository: REPO,
    ...more,
  });

/** What the machine gives a step of capture `record`. */
function run(
  record: CaptureRecord,
  step: string,
  more: Partial<CaptureStepInput> = {},
  log: Logger = silentLogger(),
): StepRun<CaptureStepInput> {
  return {
    input: {
      step,
      captureId: record.id,
      provisioner: record.provisioner,
      computer: record.computer,
      os: record.os,
      image: record.image,
      endState: 'off',
      deadline: Date.now() + 60_000,
      timeouts: { ...DEFAULT_TIMEOUTS },
      facts: {},
      ...more,
    },
    signal: new AbortController().signal,
    remainingMs: () => 60_000,
    log,
    resumed: false,
  };
}

/** The steps, with `warnings` as the capture's warnings and nothing left to flush. */
function steps(
  warnings: () => unknown[] = () => [],
  flush: () => Promise<void> = async () => undefined,
): Record<string, Step> {
  return storeSteps(store, warnings, flush);
}

function step(all: Record<string, Step>, name: string): Step {
  const fn = all[name];
  if (!fn) throw new Error(`no step ${name}`);
  return fn;
}

async function rejection(p: Promise<unknown>): Promise<Error & { code?: unknown }> {
  return p.then(
    () => {
      throw new Error('expected the step to fail');
    },
    (err: unknown) => err as Error & { code?: unknown },
  );
}

/**
 * A flush whose transition is written only after a delay, as one still on its way to the store: a closing
 * write made before it ends would refuse it (the capture would be finished).
 */
function lateTransition(captureId: string) {
  const log: string[] = [];
  const flush = async () => {
    log.push('flush started');
    await new Promise((r) => setTimeout(r, 30));
    await store.recordTransition(captureId, {
      stateValue: { capturing: 'verify_image' },
      event: { type: 'state.entered', step: 'verify_image' },
    });
    log.push('flush done');
  };
  return { flush, log };
}

describe('reserve', () => {
  it('reserves the capture’s computer and says so in the log', async () => {
    const queued = await create({ reserve: false });
    const lines: string[] = [];
    const log = pino({ level: 'info' }, { write: (line: string) => lines.push(line) });
    expect(await step(steps(), 'reserve')(run(queued, 'reserve', {}, log))).toEqual({});
    expect(await store.getComputer('pc-01')).toMatchObject({ state: 'image', heldBy: 'c-1' });
    expect((await store.getCaptureRecord('c-1'))?.status).toBe('running');
    expect(lines.map((l) => JSON.parse(l) as unknown)).toEqual([
      expect.objectContaining({ msg: 'computer reserved', computer: 'pc-01' }),
    ]);
  });

  it('run again after a restart, keeps the reservation it holds without reserving twice', async () => {
    const queued = await create({ reserve: false });
    const reserve = step(steps(), 'reserve');
    await reserve(run(queued, 'reserve'));
    const once = await store.getCapture('c-1');
    const computer = await store.getComputer('pc-01');
    expect(await reserve({ ...run(queued, 'reserve'), resumed: true })).toEqual({});
    const twice = await store.getCapture('c-1');
    expect(twice?.eventCount).toBe(once?.eventCount);
    expect(twice?.events.filter((e) => e.type === 'computer.reserved')).toHaveLength(1);
    expect(await store.getComputer('pc-01')).toEqual(computer);
  });

  it('fails with COMPUTER_BUSY when another capture holds the computer', async () => {
    await store.createCapture({
      id: 'holder',
      computer: 'pc-01',
      imageId: 12345,
      provisioner: 'vmware',
      os: 'windows',
      repository: REPO,
    });
    const queued = await create({ reserve: false });
    await expectVclError(step(steps(), 'reserve')(run(queued, 'reserve')), 'COMPUTER_BUSY', /holder/);
    expect((await store.getCaptureRecord('c-1'))?.status).toBe('queued');
  });

  it('fails with the store’s NOT_FOUND for a capture and computer the store does not know', async () => {
    const queued = await create({ reserve: false });
    const ghost = run(queued, 'reserve', { captureId: 'ghost', computer: 'pc-99' });
    await expectVclError(step(steps(), 'reserve')(ghost), 'NOT_FOUND', /^capture "ghost" does not exist$/);
    expect(await store.getComputer('pc-99')).toBeUndefined();
    expect((await store.getCaptureRecord('c-1'))?.status).toBe('queued');
  });
});

describe('record_revision', () => {
  it('without a verified copy fails with STEP_FAILED and records nothing', async () => {
    const running = await create();
    const err = await rejection(step(steps(), 'record_revision')(run(running, 'record_revision')));
    expect(err.code).toBe('STEP_FAILED');
    expect(err.message).toBe('no verified copy to record');
    expect(await store.getCaptureRecord('c-1')).toEqual(running);
  });

  it('completes the capture with the artifact and the warnings, after the transitions still on their way', async () => {
    const running = await create();
    const { flush, log } = lateTransition('c-1');
    const out = await step(
      steps(() => WARNINGS, flush),
      'record_revision',
    )(run(running, 'record_revision', { artifact: ARTIFACT }));
    expect(out).toEqual({});
    expect(log).toEqual(['flush started', 'flush done']);
    const detail = await store.getCapture('c-1');
    expect(detail?.status).toBe('completed');
    expect(detail?.events.map((e) => e.type).slice(-2)).toEqual(['state.entered', 'capture.completed']);
    expect(detail?.events.at(-1)?.details).toMatchObject({
      warnings: WARNINGS,
      artifact: { path: 'c-1.vmdk', sizeBytes: 4096, sha256: SHA, format: 'vmdk' },
    });
    const image = await store.getImage(12345);
    expect(image?.revisions[0]).toMatchObject({ deleted: false, sizeBytes: 4096, sha256: SHA });
  });

  it('run again on a completed capture completes nothing a second time', async () => {
    const running = await create();
    const record = step(
      steps(() => WARNINGS),
      'record_revision',
    );
    await record(run(running, 'record_revision', { artifact: ARTIFACT }));
    const before = await store.getCaptureRecord('c-1');
    expect(
      await record({ ...run(running, 'record_revision', { artifact: ARTIFACT }), resumed: true }),
    ).toEqual({});
    expect(await store.getCaptureRecord('c-1')).toEqual(before);
  });
});

describe('release_computer', () => {
  const release = (outcome: ReleaseOutcome, error: StepFailure) => ({ release: { outcome, error } });
  const cancelled: StepFailure = { code: 'CANCELLED', step: 'copy_image', message: 'operator asked' };
  const timeout: StepFailure = { code: 'TIMEOUT', step: 'copy_image', message: 'copy took too long' };

  it('without an outcome fails with STEP_FAILED and records nothing', async () => {
    const running = await create();
    const err = await rejection(step(steps(), 'release_computer')(run(running, 'release_computer')));
    expect(err.code).toBe('STEP_FAILED');
    expect(err.message).toBe('release without an outcome');
    expect((await store.getCaptureRecord('c-1'))?.status).toBe('running');
  });

  it('a cancellation cancels the capture and hands the computer back as the outcome says', async () => {
    const running = await create({ computer: 'pc-04' });
    await step(
      steps(() => WARNINGS),
      'release_computer',
    )(run(running, 'release_computer', release('restore', cancelled)));
    expect(await store.getCaptureRecord('c-1')).toMatchObject({
      status: 'cancelled',
      lastError: cancelled,
      releaseOutcome: 'restore',
    });
    // Restored to the state it was reserved from.
    expect(await store.getComputer('pc-04')).toMatchObject({ state: 'reserved', heldBy: null });
    const last = (await store.getCapture('c-1'))?.events.at(-1);
    expect(last).toMatchObject({ type: 'capture.cancelled', details: { warnings: WARNINGS } });
  });

  it('a cancellation after the computer was touched sends it to maintenance', async () => {
    const running = await create();
    await step(
      steps(),
      'release_computer',
    )(run(running, 'release_computer', release('maintenance', cancelled)));
    expect(await store.getCaptureRecord('c-1')).toMatchObject({
      status: 'cancelled',
      releaseOutcome: 'maintenance',
    });
    expect((await store.getComputer('pc-01'))?.state).toBe('maintenance');
  });

  it('any other error fails the capture, with its warnings, the computer as the outcome says', async () => {
    const running = await create();
    await step(
      steps(() => WARNINGS),
      'release_computer',
    )(run(running, 'release_computer', release('maintenance', timeout)));
    expect(await store.getCaptureRecord('c-1')).toMatchObject({
      status: 'failed',
      lastError: timeout,
      releaseOutcome: 'maintenance',
    });
    expect((await store.getComputer('pc-01'))?.state).toBe('maintenance');
    const last = (await store.getCapture('c-1'))?.events.at(-1);
    expect(last).toMatchObject({ type: 'capture.failed', details: { warnings: WARNINGS } });
  });

  it('a failure before anything changed restores the computer', async () => {
    const running = await create();
    await step(steps(), 'release_computer')(run(running, 'release_computer', release('restore', timeout)));
    expect(await store.getCaptureRecord('c-1')).toMatchObject({
      status: 'failed',
      releaseOutcome: 'restore',
    });
    expect(await store.getComputer('pc-01')).toMatchObject({ state: 'available', heldBy: null });
  });

  it('comes after the transitions still on their way', async () => {
    const running = await create();
    const { flush, log } = lateTransition('c-1');
    await step(
      steps(() => [], flush),
      'release_computer',
    )(run(running, 'release_computer', release('maintenance', timeout)));
    expect(log).toEqual(['flush started', 'flush done']);
    const types = (await store.getCapture('c-1'))?.events.map((e) => e.type);
    expect(types?.slice(-2)).toEqual(['state.entered', 'capture.failed']);
  });

  it.each([
    ['completed', 'completeCapture'],
    ['failed', 'failCapture'],
    ['cancelled', 'cancelCapture'],
  ])('run again on a %s capture writes nothing', async (status) => {
    const running = await create();
    if (status === 'completed') await store.completeCapture('c-1', ARTIFACT);
    if (status === 'failed') await store.failCapture('c-1', timeout, 'restore');
    if (status === 'cancelled') await store.cancelCapture('c-1', cancelled, 'restore');
    const before = await store.getCaptureRecord('c-1');
    const computer = await store.getComputer('pc-01');
    const out = await step(
      steps(() => WARNINGS),
      'release_computer',
    )({ ...run(running, 'release_computer', release('maintenance', timeout)), resumed: true });
    expect(out).toEqual({});
    expect(await store.getCaptureRecord('c-1')).toEqual(before);
    expect(await store.getComputer('pc-01')).toEqual(computer);
  });
});
