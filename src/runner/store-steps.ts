/**
 * The effects that change shared state: reservation, recording the revision, releasing the computer.
 * Each is one store transaction, and each is safe to repeat after a crash: the store refuses a second
 * reservation by another capture, and finishing an already finished capture is reported, not redone.
 */
import type { CaptureStepInput, CaptureStepOutput } from '../../machines/index.js';
import type { StepFn } from '../drivers/contract.js';
import type { CaptureStore } from '../store/index.js';

type Step = StepFn<CaptureStepInput, CaptureStepOutput>;

/**
 * `flush` waits for the transitions already being recorded: a closing transaction must come after the
 * audit events of the states before it, or they would be refused as writes to a finished capture.
 */
export function storeSteps(
  store: CaptureStore,
  warnings: () => unknown[],
  flush: () => Promise<void>,
): Record<string, Step> {
  return {
    reserve: async (run) => {
      // Repeated after a restart: the reservation this capture already holds is not taken twice.
      const held = await store.getComputer(run.input.computer);
      if (held?.heldBy === run.input.captureId) return {};
      const record = await store.reserveComputer(run.input.captureId);
      run.log.info({ computer: record.computer }, 'computer reserved');
      return {};
    },
    record_revision: async (run) => {
      const artifact = run.input.artifact;
      if (!artifact) throw Object.assign(new Error('no verified copy to record'), { code: 'STEP_FAILED' });
      await flush();
      const current = await store.getCaptureRecord(run.input.captureId);
      if (current?.status === 'completed') return {};
      await store.completeCapture(run.input.captureId, artifact, { details: { warnings: warnings() } });
      return {};
    },
    release_computer: async (run) => {
      const release = run.input.release;
      if (!release) throw Object.assign(new Error('release without an outcome'), { code: 'STEP_FAILED' });
      await flush();
      const current = await store.getCaptureRecord(run.input.captureId);
      if (current && ['failed', 'cancelled', 'completed'].includes(current.status)) return {};
      const details = { warnings: warnings() };
      if (release.error.code === 'CANCELLED')
        await store.cancelCapture(run.input.captureId, release.error, release.outcome, { details });
      else await store.failCapture(run.input.captureId, release.error, release.outcome, { details });
      return {};
    },
  };
}
