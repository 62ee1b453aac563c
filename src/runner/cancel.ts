/**
 * Cancelling a capture through the store, for a process that does not run it: a queued capture nobody
 * has taken yet is cancelled at once; one a runner owns is asked of that runner, which sees the request
 * when it renews its leases (within a third of its lease) and runs the capture's cleanup.
 */

import type { StepFailure } from '../../machines/index.js';
import { VclError } from '../errors.js';
import type { CaptureRecord, CaptureStore } from '../store/index.js';

export type CancelOutcome = 'cancelled' | 'requested';

/** Ends a queued capture that never ran: its computer was never taken, so nothing is given back. */
export async function cancelQueued(
  store: CaptureStore,
  captureId: string,
  reason: string,
): Promise<{ record: CaptureRecord; error: StepFailure }> {
  const error = { code: 'CANCELLED', step: 'queued', message: `cancelled while queued: ${reason}` };
  return { record: await store.cancelCapture(captureId, error, 'restore'), error };
}

export async function cancelThroughStore(
  store: CaptureStore,
  captureId: string,
  reason: string,
): Promise<{ outcome: CancelOutcome; record: CaptureRecord; error?: StepFailure }> {
  const r = await store.getCaptureRecord(captureId);
  if (!r) throw new VclError('NOT_FOUND', `capture ${captureId} does not exist`);
  if (r.status === 'queued' && r.owner === null) {
    return { outcome: 'cancelled', ...(await cancelQueued(store, captureId, reason)) };
  }
  return { outcome: 'requested', record: await store.requestCancel(captureId, reason) };
}
