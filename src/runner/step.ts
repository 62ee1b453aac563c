/**
 * Turns a driver function into the invoked actor a machine runs: it gets an AbortSignal that fires when
 * the machine stops the actor (CANCEL, the machine leaving the state) or when the step's deadline from
 * the machine passes, and whatever it throws reaches the machine as a plain `{ code, message, step }`.
 */
import { fromPromise } from 'xstate';
import type { StepFn } from '../drivers/contract.js';
import { VclError } from '../errors.js';
import type { Logger } from '../log.js';

/** What crosses into the machine (and so into persisted snapshots and the inspector): no stack, no cause. */
export interface StepErrorData {
  code: string;
  message: string;
  step: string;
  details?: Record<string, unknown>;
}

const SSH_TO_STEP: Record<string, string> = {
  SSH_TIMEOUT: 'TIMEOUT',
};

export function stepErrorData(err: unknown, step: string): StepErrorData {
  if (err instanceof VclError) {
    return {
      code: SSH_TO_STEP[err.code] ?? err.code,
      message: err.message,
      step: err.step ?? step,
      ...(err.details ? { details: { ...err.details } } : {}),
    };
  }
  const message = err instanceof Error ? err.message : String(err);
  return { code: 'STEP_FAILED', message, step };
}

export function stepActor<TInput extends { deadline: number; step: string }, TOutput>(
  name: string,
  fn: StepFn<TInput, TOutput>,
  log: Logger,
) {
  return boundStepActor<TInput, TOutput>(name, () => ({ fn, log }));
}

/** What a step runs for one capture: its driver function and the capture's logger. */
export interface StepBinding<TInput, TOutput> {
  fn: StepFn<TInput, TOutput>;
  log: Logger;
  /** This start is the re-run of a step that was in flight when the capture was persisted. */
  resumed?: boolean;
}

/**
 * A step actor whose driver function is looked up when it starts, from the actor system of the capture
 * that runs it: one machine (and its actor logic) can then serve every capture. `bind` throws when the
 * system has no binding; the step then fails like any step.
 */
export function boundStepActor<TInput extends { deadline: number; step: string }, TOutput>(
  name: string,
  bind: (system: object) => StepBinding<TInput, TOutput>,
) {
  return fromPromise<TOutput, TInput>(async ({ input, signal, system }) => {
    let binding: StepBinding<TInput, TOutput>;
    try {
      binding = bind(system);
    } catch (err) {
      const data = stepErrorData(err, name);
      throw Object.assign(new Error(data.message), data);
    }
    const { fn, log, resumed = false } = binding;
    const started = Date.now();
    const deadline = Number.isFinite(input.deadline) ? input.deadline : Number.POSITIVE_INFINITY;
    const timeout = new AbortController();
    const left = deadline - Date.now();
    const timer = Number.isFinite(left) ? setTimeout(() => timeout.abort(), Math.max(0, left)) : undefined;
    const both = AbortSignal.any([signal, timeout.signal]);
    // A silent logger's children are silent too: skip making one per step.
    const stepLog = log.level === 'silent' ? log : log.child({ step: name });
    try {
      if (left <= 0)
        throw new VclError('TIMEOUT', `${name}: deadline passed before the step started`, { step: name });
      const out = await fn({
        input,
        signal: both,
        remainingMs: () => Math.max(1, deadline - Date.now()),
        log: resumed && stepLog !== log ? stepLog.child({ resumed }) : stepLog,
        resumed,
      });
      stepLog.debug({ durationMs: Date.now() - started }, 'step done');
      return out;
    } catch (err) {
      const data =
        timeout.signal.aborted && !signal.aborted
          ? { code: 'TIMEOUT', message: `${name} did not finish before its deadline`, step: name }
          : stepErrorData(err, name);
      stepLog.warn({ durationMs: Date.now() - started, code: data.code, err: data.message }, 'step failed');
      throw Object.assign(new Error(data.message), data);
    } finally {
      if (timer) clearTimeout(timer);
    }
  });
}
