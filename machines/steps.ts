/**
 * Building blocks shared by every capture machine: step descriptions, deadlines kept in context,
 * failures turned into plain data, and placeholder implementations that fail loudly until the runner
 * provides the real ones.
 */
import { fromPromise } from 'xstate';
import {
  DEFAULT_TIMEOUTS,
  FAILURE_CODES,
  type StepFailure,
  type StepKind,
  type StepWarning,
  type TimeoutName,
  type Timeouts,
} from './types.js';

/** Description of one step, kept in its state node's `meta.step` (read by diagrams, runner and inspector). */
export interface StepMeta {
  kind: StepKind;
  title: string;
  /** Which timeout bounds it. */
  timeout: TimeoutName;
  /**
   * What the step does to the world, for ordering invariants and audit:
   * `reserve`, `os`, `power`, `copy`, `verify`, `record`, `release`, `check`, `boot-config`, `boot-test`, `cleanup`.
   */
  effect: string;
  /**
   * Whether starting this step touches the computer itself (the OS sub-machine, a power command, a copy
   * of its disk). A capture that fails or is cancelled before any touching step started hands the
   * computer back to the state it was reserved from; after one, it goes to maintenance.
   */
  touches: boolean;
}

/** Deadlines live in context (epoch ms) so a wait resumed from a persisted snapshot keeps its original one. */
export type Deadlines = Record<string, number>;

export function resolveTimeouts(overrides: Partial<Timeouts> | undefined): Timeouts {
  const merged: Timeouts = { ...DEFAULT_TIMEOUTS };
  for (const [name, value] of Object.entries(overrides ?? {}) as [TimeoutName, number | undefined][]) {
    if (!(name in DEFAULT_TIMEOUTS)) {
      throw new RangeError(
        `unknown timeout '${name}'; known timeouts: ${Object.keys(DEFAULT_TIMEOUTS).join(', ')}`,
      );
    }
    if (value === undefined) continue;
    if (!Number.isFinite(value) || value <= 0) {
      throw new RangeError(`timeout ${name} must be a positive number of milliseconds, got ${String(value)}`);
    }
    merged[name] = value;
  }
  return merged;
}

export function withDeadline(
  deadlines: Deadlines,
  timeouts: Timeouts,
  step: string,
  timeout: TimeoutName,
  now: number,
): Deadlines {
  return { ...deadlines, [step]: now + timeouts[timeout] };
}

export function deadlineOf(deadlines: Deadlines, step: string): number {
  const deadline = deadlines[step];
  if (deadline === undefined) throw new Error(`no deadline armed for step ${step}`);
  return deadline;
}

function readString(value: unknown, key: string): string | undefined {
  if (typeof value !== 'object' || value === null) return undefined;
  const field = (value as Record<string, unknown>)[key];
  return typeof field === 'string' && field.length > 0 ? field : undefined;
}

/** Turns whatever an actor rejected with into a plain, persistable failure of `step`. */
export function toFailure(error: unknown, step: string): StepFailure {
  const message =
    readString(error, 'message') ?? (typeof error === 'string' ? error : 'step failed without a message');
  return {
    code: readString(error, 'code') ?? FAILURE_CODES.STEP_FAILED,
    step: readString(error, 'step') ?? step,
    message,
  };
}

export function toWarning(error: unknown, step: string): StepWarning {
  const { code, message } = toFailure(error, step);
  return { step, code, message };
}

export function errorCode(error: unknown): string | undefined {
  return readString(error, 'code');
}

/** Thrown by placeholder implementations: the runner must provide every effect with `machine.provide()`. */
export class NotProvidedError extends Error {
  readonly code = FAILURE_CODES.NOT_PROVIDED;
  constructor(readonly implementation: string) {
    super(
      `${implementation} is not provided: supply it with machine.provide({ actors: { ${implementation} } })`,
    );
    this.name = 'NotProvidedError';
  }
}

/** A typed placeholder for an effect the runner provides. */
export function placeholder<TOutput, TInput>(name: string) {
  return fromPromise<TOutput, TInput>(async () => {
    throw new NotProvidedError(name);
  });
}
