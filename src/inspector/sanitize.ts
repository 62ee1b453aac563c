/**
 * From xstate inspection events to the few facts the inspector shows. An inspection event holds live
 * actor references (with their logic: the whole machine config, its context, its implementations) and
 * the events themselves (step outputs, errors): none of it is forwarded. Only the capture's root actor
 * and its OS sub-machine (`os`) are looked at; step actors are seen through the events they send back.
 */
import type { InspectionEvent } from 'xstate';
import type { StateValueJson } from './messages.js';
import { redact, redactString } from './redact.js';

/** What the inspector keeps of one inspection event. */
export type Inspected =
  | { kind: 'root'; rootId: string; captureId: string | undefined; snapshot: SnapshotFacts }
  | { kind: 'os'; rootId: string; snapshot: SnapshotFacts }
  | { kind: 'event'; rootId: string; actor: 'capture' | 'os'; type: string; detail?: string };

export interface SnapshotFacts {
  value: StateValueJson | null;
  status: string;
  /** Redacted. */
  context: unknown;
}

interface ActorLike {
  id?: unknown;
  sessionId?: unknown;
  _parent?: { sessionId?: unknown } | undefined;
}

/** A state value rebuilt from strings only (anything else is dropped). */
export function stateValueOf(value: unknown, depth = 0): StateValueJson | null {
  if (typeof value === 'string') return value.slice(0, 200);
  if (!value || typeof value !== 'object' || Array.isArray(value) || depth > 8) return null;
  const out: Record<string, StateValueJson> = {};
  for (const [k, v] of Object.entries(value)) {
    const child = stateValueOf(v, depth + 1);
    if (child !== null) out[k.slice(0, 200)] = child;
  }
  return out;
}

/** Leaf paths of a state value joined by `.` (`capturing.reserve`). */
export function statePath(value: StateValueJson | null): string | null {
  if (value === null) return null;
  if (typeof value === 'string') return value;
  const [k, v] = Object.entries(value)[0] ?? [];
  if (k === undefined || v === undefined) return null;
  const rest = statePath(v);
  return rest ? `${k}.${rest}` : k;
}

/**
 * Redacted contexts by the context object they came from: xstate never mutates a context (`assign`
 * makes a new one), so a snapshot that kept its context costs no second redaction.
 */
const redactedContexts = new WeakMap<readonly string[], WeakMap<object, unknown>>();

function redactContext(context: unknown, secrets: readonly string[]): unknown {
  if (!context || typeof context !== 'object') return redact(context, { secrets });
  let cache = redactedContexts.get(secrets);
  if (!cache) {
    cache = new WeakMap();
    redactedContexts.set(secrets, cache);
  }
  const cached = cache.get(context);
  if (cached !== undefined) return cached;
  const out = redact(context, { secrets });
  cache.set(context, out);
  return out;
}

function snapshotFacts(snapshot: unknown, secrets: readonly string[]): SnapshotFacts {
  const s = snapshot as { value?: unknown; status?: unknown; context?: unknown };
  return {
    value: stateValueOf(s.value),
    status: typeof s.status === 'string' ? s.status : 'unknown',
    context: redactContext(s.context, secrets),
  };
}

/** The one-line detail of an event worth showing (never its output: that may hold anything). */
function eventDetail(event: Record<string, unknown>, secrets: readonly string[]): string | undefined {
  const error = event.error as { code?: unknown; message?: unknown } | undefined;
  if (error && typeof error === 'object') {
    const code = typeof error.code === 'string' ? `${error.code}: ` : '';
    const message = typeof error.message === 'string' ? error.message : String(error);
    return redactString(`${code}${message}`, secrets, 300);
  }
  if (typeof event.reason === 'string') return redactString(event.reason, secrets, 300);
  return undefined;
}

/**
 * The facts of one inspection event, or undefined for the events the inspector does not show (step
 * actors' own snapshots, actions, microsteps, actor registrations: `@xstate.actor` carries the actor and
 * with it the machine config and context).
 */
export function sanitizeInspection(
  event: InspectionEvent,
  secrets: readonly string[],
): Inspected | undefined {
  const actor = event.actorRef as unknown as ActorLike;
  const isRoot = actor.sessionId === event.rootId;
  const isOs = !isRoot && actor.id === 'os' && actor._parent?.sessionId === event.rootId;
  if (!isRoot && !isOs) return undefined;
  if (event.type === '@xstate.snapshot') {
    const snapshot = snapshotFacts(event.snapshot, secrets);
    if (isOs) return { kind: 'os', rootId: event.rootId, snapshot };
    const captureId = (snapshot.context as { captureId?: unknown } | null)?.captureId;
    return {
      kind: 'root',
      rootId: event.rootId,
      captureId: typeof captureId === 'string' ? captureId : undefined,
      snapshot,
    };
  }
  if (event.type === '@xstate.event') {
    const e = event.event as Record<string, unknown>;
    const type = typeof e.type === 'string' ? e.type.slice(0, 200) : 'unknown';
    if (type === 'xstate.init') return undefined;
    const detail = eventDetail(e, secrets);
    return {
      kind: 'event',
      rootId: event.rootId,
      actor: isOs ? 'os' : 'capture',
      type,
      ...(detail ? { detail } : {}),
    };
  }
  return undefined;
}
