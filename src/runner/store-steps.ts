/**
 * The effects that change shared state: reservation, recording the revision, releasing the computer.
 * Each is one store transaction, and each is safe to repeat after a crash: the store refuses a second
 * reservation by another capture, and finishing an already finished capture is reported, not redone.
 */
import type { CaptureStepInput, CaptureStepOutput } from '../../machines/index.js';
import type { CaptureStore } from '../store/index.js';
import type { StepFn } from './step.js';

type Step = StepFn<CaptureStepInput, CaptureStepOutput>;

export function storeSteps(store: CaptureStore, warnings: () => unknown[]): Record<string, Step> {
  return {
    reserve: async (run) => {
      const record = await store.reserveComputer(run.input.captureId);
      run.log.info({ computer: record.computer }, 'computer reserved');
      return {};
    },
    record_revision: async (run) => {
      const artifact = run.input.artifact;
      if (!artifact) throw Object.assign(new Error('no verified copy to record'), { code: 'STEP_FAILED' });
      const current = await store.getCapture(run.input.captureId);
      if (current?.status === 'completed') return {};
      await store.completeCapture(run.input.captureId, artifact, { details: { warnings: warnings() } });
      return {};
    },
    release_computer: async (run) => {
      const release = run.input.release;
      if (!release) throw Object.assign(new Error('release without an outcome'), { code: 'STEP_FAILED' });
      const current = await store.getCapture(run.input.captureId);
      if (current && ['failed', 'cancelled', 'completed'].includes(current.status)) return {};
      const details = { warnings: warnings() };
      if (release.error.code === 'CANCELLED')
        await store.cancelCapture(run.input.captureId, release.error, release.outcome, { details });
      else await store.failCapture(run.input.captureId, release.error, release.outcome, { details });
      return {};
    },
  };
}
