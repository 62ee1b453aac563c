/**
 * The last copy progress of each capture this runner runs, from its `progress` events: the store keeps
 * states and the audit trail, not every progress tick, so `GET /captures/:id` gets it from here.
 */
import type { Runner } from '../runner/runner.js';

export interface Progress {
  step: string;
  bytes: number;
  total?: number;
  bytesPerSecond: number;
  at: string;
}

export interface ProgressTracker {
  /** The capture's last progress while it is in a copying step, or null. */
  of(captureId: string): Progress | null;
  close(): void;
}

export function trackProgress(runner: Runner): ProgressTracker {
  const last = new Map<string, Progress>();
  const off = runner.on((e) => {
    if (e.type === 'progress')
      last.set(e.captureId, {
        step: e.step,
        bytes: e.bytes,
        ...(e.total === undefined ? {} : { total: e.total }),
        bytesPerSecond: e.bytesPerSecond,
        at: new Date().toISOString(),
      });
    // The copy is over when the capture moves on (or ends).
    else if (e.type === 'state' || e.type === 'finished') last.delete(e.captureId);
  });
  return { of: (id) => last.get(id) ?? null, close: off };
}
