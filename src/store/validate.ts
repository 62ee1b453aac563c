/**
 * Checks of runner input that do not depend on the database. Everything here throws a typed
 * `VclError` before any transaction starts, so refused input never leaves a trace.
 */
import type { StateValue } from 'xstate';
import { PROVISIONERS } from '../../machines/index.js';
import {
  END_STATES,
  type EndState,
  type ImageArtifact,
  OPERATING_SYSTEMS,
  type OsName,
  type ProvisionerName,
  type ReleaseOutcome,
  type StepFailure,
} from '../../machines/types.js';
import { STORE_ERROR_CODES, storeError } from './errors.js';
import type { AuditEventInput, CaptureRecordStatus, CasOptions, ComputerState } from './types.js';
import { CAPTURE_STATUSES, COMPUTER_STATES } from './types.js';

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point.
const CONTROL_CHARACTERS = /[\u0000-\u0008\u000b-\u001f\u007f]/;
const EVENT_TYPE_PATTERN = /^[a-z][a-z0-9_.-]{0,63}$/;
const FORMAT_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$/;
const SHA256_PATTERN = /^[0-9a-fA-F]{64}$/;
/** Longest short text field (step names, error codes, owners, machine versions). */
const MAX_SHORT_TEXT = 200;
/** Longest error message kept (longer ones are cut, not refused: a failure must always be recordable). */
export const MAX_ERROR_MESSAGE = 4000;

export function invalid(message: string, details?: Record<string, unknown>) {
  return storeError(STORE_ERROR_CODES.INVALID_INPUT, message, details);
}

function oneOf<T extends string>(value: unknown, allowed: readonly T[], what: string): T {
  if (typeof value !== 'string' || !(allowed as readonly string[]).includes(value)) {
    throw invalid(`${what} ${JSON.stringify(value)} is not one of ${allowed.join(', ')}`, { [what]: value });
  }
  return value as T;
}

export const checkProvisioner = (value: unknown): ProvisionerName =>
  oneOf(value, PROVISIONERS, 'provisioner');
export const checkOs = (value: unknown): OsName => oneOf(value, OPERATING_SYSTEMS, 'os');
export const checkEndState = (value: unknown): EndState => oneOf(value, END_STATES, 'endState');
export const checkComputerState = (value: unknown): ComputerState =>
  oneOf(value, COMPUTER_STATES, 'computer state');
export const checkCaptureStatus = (value: unknown): CaptureRecordStatus =>
  oneOf(value, CAPTURE_STATUSES, 'capture status');
export const checkOutcome = (value: unknown): ReleaseOutcome =>
  oneOf(value, ['maintenance', 'restore'] as const, 'outcome');

/** A short single-line text: non-empty, at most 200 characters, no control characters. */
export function checkShortText(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.trim().length === 0) {
    throw invalid(`${what} must be a non-empty string`, { [what]: value });
  }
  if (value.length > MAX_SHORT_TEXT || CONTROL_CHARACTERS.test(value) || /[\n\r]/.test(value)) {
    throw invalid(
      `${what} ${JSON.stringify(value)} must be at most ${MAX_SHORT_TEXT} characters on one line`,
      {
        [what]: value,
      },
    );
  }
  return value;
}

export function checkInteger(value: unknown, what: string, min = 0): number {
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw invalid(`${what} must be an integer >= ${min}, got ${String(value)}`, { [what]: value });
  }
  return value;
}

export function checkCasOptions(options: CasOptions | undefined): number | null {
  if (options?.expectedVersion === undefined) return null;
  return checkInteger(options.expectedVersion, 'expectedVersion');
}

/** JSON text of `value`; `INVALID_INPUT` if it cannot be serialised (cycles, BigInt). */
export function toJson(value: unknown, what: string): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(value);
  } catch (err) {
    throw storeError(
      STORE_ERROR_CODES.INVALID_INPUT,
      `${what} is not JSON-serialisable: ${err instanceof Error ? err.message : String(err)}`,
      { field: what },
      err,
    );
  }
  if (text === undefined)
    throw invalid(`${what} is not JSON-serialisable (got ${typeof value})`, { field: what });
  return text;
}

export function checkDetails(value: unknown, what: string): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw invalid(`${what} must be a plain object`, { field: what });
  }
  return toJson(value, what);
}

/** An XState state value: a non-empty string, or an object of state values. Returns its JSON. */
export function checkStateValue(value: StateValue): string {
  const ok = (v: unknown, depth: number): boolean => {
    if (typeof v === 'string') return v.length > 0;
    if (depth > 32 || typeof v !== 'object' || v === null || Array.isArray(v)) return false;
    return Object.values(v).every((child) => child === undefined || ok(child, depth + 1));
  };
  if (!ok(value, 0)) {
    throw invalid(
      'stateValue must be a non-empty string or an object of state values (an XState StateValue)',
      {
        stateValue: value,
      },
    );
  }
  return toJson(value, 'stateValue');
}

export function checkStepFailure(value: StepFailure, what: string): StepFailure {
  if (typeof value !== 'object' || value === null) throw invalid(`${what} must be a StepFailure object`);
  const message = typeof value.message === 'string' ? value.message : '';
  if (message.trim().length === 0) throw invalid(`${what}.message must be a non-empty string`);
  return {
    code: checkShortText(value.code, `${what}.code`),
    step: checkShortText(value.step, `${what}.step`),
    message: message.length > MAX_ERROR_MESSAGE ? `${message.slice(0, MAX_ERROR_MESSAGE)}...` : message,
  };
}

export interface CheckedEvent {
  type: string;
  step: string | null;
  details: string | null;
  durationMs: number | null;
}

export function checkEvent(event: AuditEventInput): CheckedEvent {
  if (typeof event !== 'object' || event === null) throw invalid('event must be an object');
  if (typeof event.type !== 'string' || !EVENT_TYPE_PATTERN.test(event.type)) {
    throw invalid(
      `event type ${JSON.stringify(event.type)} is not allowed: 1-64 lower-case letters, digits, ".", "_", "-", starting with a letter`,
      { type: event.type },
    );
  }
  let durationMs: number | null = null;
  if (event.durationMs !== undefined) {
    if (typeof event.durationMs !== 'number' || !Number.isFinite(event.durationMs) || event.durationMs < 0) {
      throw invalid(`event durationMs must be a finite number >= 0, got ${String(event.durationMs)}`);
    }
    durationMs = Math.round(event.durationMs);
  }
  return {
    type: event.type,
    step: event.step === undefined ? null : checkShortText(event.step, 'event step'),
    details: checkDetails(event.details, 'event details'),
    durationMs,
  };
}

export interface CheckedArtifact {
  path: string;
  sizeBytes: number;
  sha256: string;
  format: string;
}

export function checkArtifact(artifact: ImageArtifact): CheckedArtifact {
  if (typeof artifact !== 'object' || artifact === null)
    throw invalid('artifact must be an ImageArtifact object');
  if (typeof artifact.sha256 !== 'string' || !SHA256_PATTERN.test(artifact.sha256)) {
    throw invalid(`artifact sha256 ${JSON.stringify(artifact.sha256)} is not 64 hexadecimal digits`, {
      sha256: artifact.sha256,
    });
  }
  if (typeof artifact.format !== 'string' || !FORMAT_PATTERN.test(artifact.format)) {
    throw invalid(
      `artifact format ${JSON.stringify(artifact.format)} is not allowed: 1-32 ASCII letters, digits, "_", ".", "-"`,
      { format: artifact.format },
    );
  }
  if (typeof artifact.path !== 'string') throw invalid('artifact path must be a string');
  return {
    path: artifact.path,
    sizeBytes: checkInteger(artifact.sizeBytes, 'artifact sizeBytes'),
    sha256: artifact.sha256.toLowerCase(),
    format: artifact.format,
  };
}
