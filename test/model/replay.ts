/**
 * The in-memory executor: every effect of a machine replaced (via `machine.provide()`) by a scripted
 * actor that logs its call and answers what the path under test says it answers. Replaying a generated
 * path through a real actor checks that the running machine does what the pure traversal predicted, and
 * yields the effect log the ordering invariants are checked on.
 */
import {
  type AnyMachineSnapshot,
  type AnyStateMachine,
  createActor,
  type EventObject,
  fromPromise,
  waitFor,
} from 'xstate';
import { activeInvokes, type ModelPath, takenTransitionKey } from './graph.js';

export type Scripted =
  | { kind: 'done'; output: unknown }
  | { kind: 'error'; error: { code: string; message: string } }
  /** Never settles: the path cancels while this effect runs. */
  | { kind: 'hang' };

export interface Effect {
  src: string;
  outcome: 'ok' | 'error' | 'hang';
  code?: string;
  input: unknown;
  /** What a successful effect answered. */
  output?: unknown;
}

export function formatEffect(e: Pick<Effect, 'src' | 'outcome' | 'code'>): string {
  return e.outcome === 'ok' ? `${e.src} ok` : e.outcome === 'hang' ? `${e.src} …` : `${e.src} ✗${e.code}`;
}

export class ScriptedExecutor {
  private readonly queues = new Map<string, Scripted[]>();
  readonly log: Effect[] = [];
  private onHang: (() => void) | undefined;
  readonly hung: Promise<void>;

  constructor() {
    this.hung = new Promise((resolve) => {
      this.onHang = resolve;
    });
  }

  enqueue(src: string, s: Scripted): void {
    this.queues.set(src, [...(this.queues.get(src) ?? []), s]);
  }

  /** Scripted implementations for the given effect names. */
  actors(srcs: readonly string[]) {
    return Object.fromEntries(srcs.map((src) => [src, this.actor(src)]));
  }

  actor(src: string) {
    // biome-ignore lint/suspicious/noExplicitAny: one scripted actor stands in for effects of every input/output type.
    return fromPromise<any, any>(async ({ input, signal }) => {
      const next = this.queues.get(src)?.shift();
      if (!next) {
        this.log.push({ src, outcome: 'error', code: 'UNSCRIPTED', input });
        throw Object.assign(new Error(`unscripted effect ${src}`), { code: 'UNSCRIPTED' });
      }
      if (next.kind === 'done') {
        this.log.push({ src, outcome: 'ok', input, output: next.output });
        return next.output;
      }
      if (next.kind === 'error') {
        this.log.push({ src, outcome: 'error', code: next.error.code, input });
        throw Object.assign(new Error(next.error.message), next.error);
      }
      this.log.push({ src, outcome: 'hang', input });
      this.onHang?.();
      return new Promise((_, reject) => {
        signal.addEventListener('abort', () => reject(new Error(`${src} aborted`)), { once: true });
      });
    });
  }
}

export interface Coverage {
  nodes: Set<string>;
  transitions: Set<string>;
}

export function newCoverage(): Coverage {
  return { nodes: new Set(), transitions: new Set() };
}

/** What the path says each effect answers, and the effect log it implies. */
export interface Script {
  enqueue(executor: ScriptedExecutor): void;
  expectedLog: string[];
  cancels: boolean;
}

/**
 * Turns a path into per-effect answers and the expected log. `expand` lets a caller replace one invoke's
 * outcome by a whole sub-script (the OS sub-machine running for real inside its provisioner).
 */
export function scriptFor(
  path: ModelPath,
  snapshotOf: (key: string) => AnyMachineSnapshot,
  expand?: (id: string, event: EventObject) => Script | undefined,
): Script {
  const steps: { src: string; scripted: Scripted }[] = [];
  const expectedLog: string[] = [];
  const subScripts: Script[] = [];
  let cancels = false;
  path.events.forEach((event, i) => {
    const done = /^xstate\.done\.actor\.(.+)$/.exec(event.type);
    const error = /^xstate\.error\.actor\.(.+)$/.exec(event.type);
    const id = done?.[1] ?? error?.[1];
    if (id !== undefined) {
      const sub = expand?.(id, event);
      if (sub) {
        subScripts.push(sub);
        expectedLog.push(...sub.expectedLog);
        return;
      }
      if (done) {
        steps.push({ src: id, scripted: { kind: 'done', output: (event as { output?: unknown }).output } });
        expectedLog.push(formatEffect({ src: id, outcome: 'ok' }));
      } else {
        const err = (event as unknown as { error: { code: string; message: string } }).error;
        steps.push({ src: id, scripted: { kind: 'error', error: err } });
        expectedLog.push(formatEffect({ src: id, outcome: 'error', code: err.code }));
      }
      return;
    }
    // An external event (CANCEL): whatever runs in the state it is sent from must still be running.
    cancels = true;
    const before = snapshotOf(path.keys[i] as string);
    for (const invoke of activeInvokes(before)) {
      const sub = expand?.(invoke.id, event);
      if (sub) {
        subScripts.push(sub);
        expectedLog.push(...sub.expectedLog);
      } else {
        steps.push({ src: invoke.src, scripted: { kind: 'hang' } });
        expectedLog.push(formatEffect({ src: invoke.src, outcome: 'hang' }));
      }
    }
  });
  return {
    expectedLog,
    cancels,
    enqueue(executor) {
      for (const s of steps) executor.enqueue(s.src, s.scripted);
      for (const sub of subScripts) sub.enqueue(executor);
    },
  };
}

export interface ReplayResult {
  final: AnyMachineSnapshot;
  log: Effect[];
}

/**
 * Runs `machine` (already given the executor's actors) with `input`, sends the path's external event
 * when an effect hangs, and waits for a final state. Records every state node entered and every
 * transition taken, across the machine and its children, into `coverage`.
 */
export async function replay(
  machine: AnyStateMachine,
  input: unknown,
  executor: ScriptedExecutor,
  script: Script,
  externalEvent: EventObject | undefined,
  coverage: Coverage,
  timeoutMs = 2_000,
): Promise<ReplayResult> {
  const noteNodes = (snapshot: unknown) => {
    const nodes = (snapshot as { _nodes?: { id: string }[] })._nodes;
    for (const n of nodes ?? []) coverage.nodes.add(n.id);
  };
  const actor = createActor(machine, {
    input,
    inspect: (ev) => {
      if (ev.type === '@xstate.microstep') {
        for (const t of ev._transitions) coverage.transitions.add(takenTransitionKey(t));
        noteNodes(ev.snapshot);
      } else if (ev.type === '@xstate.snapshot') {
        noteNodes(ev.snapshot);
      }
    },
  });
  script.enqueue(executor);
  actor.start();
  noteNodes(actor.getSnapshot());
  if (script.cancels && externalEvent) {
    await Promise.race([
      executor.hung,
      new Promise((_, reject) =>
        setTimeout(() => reject(new Error('no effect hung before the external event')), timeoutMs),
      ),
    ]);
    actor.send(externalEvent);
  }
  try {
    const final = await waitFor(actor, (s) => s.status !== 'active', { timeout: timeoutMs });
    return { final, log: executor.log };
  } catch (err) {
    const at = JSON.stringify(actor.getSnapshot().value);
    throw new Error(
      `replay did not finish (stuck in ${at}): ${(err as Error).message}\nlog: ${executor.log.map(formatEffect).join(', ')}`,
    );
  } finally {
    actor.stop();
  }
}
