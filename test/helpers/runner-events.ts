/** Waiting for a runner's events in tests: the first event of a capture that a test accepts. */
import type { Runner, RunnerEvent } from '../../src/runner/runner.js';

/** Resolves with the first event of `captureId` that `test` accepts. */
export function eventOf(
  r: Runner,
  captureId: string,
  test: (e: RunnerEvent) => boolean,
): Promise<RunnerEvent> {
  return new Promise((resolve) => {
    const off = r.on((e) => {
      if ('captureId' in e && e.captureId === captureId && test(e)) {
        off();
        resolve(e);
      }
    });
  });
}

/** A state event whose state value names `name`. */
export const inState = (name: string) => (e: RunnerEvent) =>
  e.type === 'state' && JSON.stringify(e.state).includes(`"${name}"`);

export const finished = (e: RunnerEvent) => e.type === 'finished';
