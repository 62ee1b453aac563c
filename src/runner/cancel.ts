/**
 * Cancelling a capture through the store, for a process that does not run it: a queued capture nobody
 * has taken yet is cancelled at once; one a runner owns is asked of that runner, which sees the request
 * when it renews its leases (within a third of its lease) and runs the capture's cleanup.
 */
import { VclError } from '../errors.js';
import type { CaptureRecord, CaptureStore } from '../store/index.js';

export type CancelOutcome = 'cancelled' | 'requested';

export async function cancelThroughStore(
  store: CaptureStore,
  captureId: string,
  reason: string,
): Promise<{ outcome: CancelOutcome; record: CaptureRecord }> {
  const r = await store.getCaptureRecord(captureId);
  if (!r) throw new VclError('NOT_FOUND', `capture ${captureId} does not exist`);
  if (r.status === 'queued' && r.owner === null) {
    const record = await store.cancelCapture(
      captureId,
      { code: 'CANCELLED', step: 'queued', message: `cancelled while queued: ${reason}` },
      'restore',
    );
    return { outcome: 'cancelled', record };
  }
  return { outcome: 'requested', record: await store.requestCancel(captureId, reason) };
}
