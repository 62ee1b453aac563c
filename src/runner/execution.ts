/**
 * One capture in this process: it waits for its slots, runs (or resumes) the composed machine with the
 * capture's drivers, persists every transition of the capture machine and of its OS sub-machine with
 * the persisted snapshot, and can be suspended (runner stop) at its next transition without being
 * cancelled: the capture then stays in the store for the next runner to resume.
 */
import { type Actor, type AnyActorRef, createActor, type InspectionEvent } from 'xstate';
import {
  type CaptureMachine,
  type CaptureResult,
  effectNames,
  type ImageRef,
  operatingSystems,
  provisioners,
  releaseOutcome,
  type StepFailure,
  type Timeouts,
} from '../../machines/index.js';
import type { Remote, StepFn } from '../drivers/contract.js';
import type { DriverEnv } from '../drivers/env.js';
import { osSteps } from '../drivers/os.js';
import { isVclError, VclError } from '../errors.js';
import { captureHostsOf, computerEntry } from '../inventory/hosts.js';
import type { Inventory } from '../inventory/schema.js';
import type { Logger } from '../log.js';
import { COPY_STEPS, provisioners as registry } from '../provisioners/index.js';
import type { SshHost } from '../ssh/index.js';
import type { CaptureFence, CaptureRecord, CaptureStore } from '../store/index.js';
import { cancelQueued } from './cancel.js';
import { fencedStore } from './fence.js';
import { taggedRemote } from './leftovers.js';
import type { HostSlots, Limiter } from './limits.js';
import { inFlightSteps, machineVersion, snapshotProblem } from './resume.js';
import { storeSteps } from './store-steps.js';

/** A capture this runner stopped at a transition (runner.stop()): it stays unfinished in the store. */
export interface SuspendedResult {
  status: 'suspended';
  captureId: string;
  image: ImageRef;
  error: StepFailure;
  warnings: unknown[];
  cleanupFailures: StepFailure[];
}

/** How a capture ended in this process. */
export type RunResult = CaptureResult | SuspendedResult;

/** The result of a capture that ended outside its machine (queued, stopped, the runner failing). */
export function endedResult<S extends 'failed' | 'cancelled' | 'suspended'>(
  status: S,
  captureId: string,
  image: ImageRef,
  error: StepFailure,
): Extract<RunResult, { status: S }> {
  return { status, captureId, image, error, warnings: [], cleanupFailures: [] } as Extract<
    RunResult,
    { status: S }
  >;
}

/** What a runner tells its listeners: every capture's state changes, copy progress, and its end. */
export type RunnerEvent =
  | { type: 'queued'; captureId: string; computer: string; image: string }
  | { type: 'resumed'; captureId: string; computer: string; image: string; state: unknown }
  | { type: 'state'; captureId: string; state: unknown; step: string; atMs: number }
  | {
      type: 'progress';
      captureId: string;
      step: string;
      bytes: number;
      total?: number;
      bytesPerSecond: number;
      /** Bytes that crossed the network (a zstd frame: far fewer than `bytes` for a sparse disk). */
      wireBytes?: number;
      /** Times the copy resumed after a dropped connection. */
      resumes?: number;
    }
  | { type: 'finished'; captureId: string; result: RunResult };

export interface CaptureHandle {
  id: string;
  image: ImageRef;
  computer: string;
  /** The running actor; undefined while the capture waits for a slot. */
  readonly actor: Actor<CaptureMachine> | undefined;
  /** Settles with the typed result; never rejects for a capture failure. */
  result: Promise<RunResult>;
  /** Cancels: a queued capture ends at once, a running one runs its cleanup. */
  cancel(reason?: string): void;
}

type AnyStepFn = StepFn<{ deadline: number; step: string }, unknown>;

/** One capture's drivers, by the names its machines invoke, its logger, and the steps to re-run. */
export interface CaptureSteps {
  provisioner: Record<string, AnyStepFn>;
  os: Record<string, AnyStepFn>;
  log: Logger;
  /** Steps in flight in the snapshot a capture resumed from: their next start is a re-run. */
  rerun: Set<string>;
}

/** What every capture of one runner shares. */
export interface ExecutionContext {
  inventory: Inventory;
  hosts: Map<string, SshHost>;
  store: CaptureStore;
  /** The owner name of this runner's claims. */
  runnerId: string;
  remote: Remote;
  log: Logger;
  emit(event: RunnerEvent): void;
  /** This runner's captures at once (`'*'`, `maxConcurrentCaptures`). */
  runnerSlots: Limiter;
  /** Per-host slots, held in the store over every runner. */
  hostCaptureSlots: HostSlots;
  hostCopySlots: HostSlots;
  sharedMachine(provisioner: CaptureRecord['provisioner'], os: CaptureRecord['os']): CaptureMachine;
  stepsBySystem: WeakMap<object, CaptureSteps>;
  pollMs: number;
  inspect?: (event: InspectionEvent) => void;
}

/** A handle plus what only the runner uses: suspension at the next transition, and its claim. */
export interface Execution extends CaptureHandle {
  /** Stops the capture at its next persisted transition (at once if it waits for a slot). */
  suspend(timeoutMs?: number): Promise<void>;
  /** The claim this execution runs the capture under. */
  readonly fence: CaptureFence;
  /**
   * When (`performance.now()`) the request that last extended the claim's lease was sent: the lease
   * holds at least until this plus the lease's length, whatever the clocks of the runner and the
   * database say (both measure the same intervals).
   */
  readonly leaseBase: number;
  /** A lease renewal sent at `sentAt` extended this claim. */
  renewed(sentAt: number): void;
  /**
   * The capture is lost (another claim took it, or the lease may run out before it is renewed): the
   * running step is stopped at once (its AbortSignal kills its remote commands), nothing more is written
   * for the capture, and the result settles as suspended with `err`'s code. It stays unfinished in the
   * store for whoever claims it next.
   */
  lose(err: VclError): void;
}

/** The timeouts of a capture: inventory defaults, its host's, its computer's, then its request's. */
export function timeoutsOf(
  inventory: Inventory,
  computerName: string,
  request: Partial<Timeouts> | undefined,
): Partial<Timeouts> {
  const computer = inventory.computers[computerName];
  return {
    ...inventory.defaults.timeouts,
    ...(computer ? inventory.hosts[computer.provisioner.host]?.timeouts : {}),
    ...computer?.timeouts,
    ...request,
  };
}

/** What the capture machine starts from, rebuilt from the stored capture and the inventory. */
function machineInput(x: ExecutionContext, record: CaptureRecord) {
  const computer = x.inventory.computers[record.computer];
  const requestTimeouts = (record.request?.timeouts ?? undefined) as Partial<Timeouts> | undefined;
  return {
    captureId: record.id,
    computer: record.computer,
    os: record.os,
    image: record.image,
    ...(record.endState === null ? {} : { endState: record.endState }),
    ...(computer?.sysprep === undefined ? {} : { sysprep: computer.sysprep }),
    timeouts: timeoutsOf(x.inventory, record.computer, requestTimeouts),
  };
}

/**
 * Why the stored `snapshot` of `record` cannot be resumed by this version of its machine, or undefined.
 * Its machine version is only logged: a snapshot that still fits resumes whatever version wrote it.
 */
export function resumeProblem(
  x: ExecutionContext,
  record: CaptureRecord,
  snapshot: unknown,
): string | undefined {
  const machine = x.sharedMachine(record.provisioner, record.os);
  const context: object = createActor(machine, { input: machineInput(x, record) }).getSnapshot().context;
  const fresh = context as Record<string, unknown>;
  // JSON drops fields whose value is undefined: only those with a value must be present.
  const required = Object.keys(fresh).filter((k) => fresh[k] !== undefined);
  return snapshotProblem(machine, snapshot, required);
}

/**
 * Starts a capture recorded in the store and claimed by this runner; `snapshot` resumes it from there.
 * The computer must be in the inventory (the runner checks before).
 */
export function execute(
  x: ExecutionContext,
  record: CaptureRecord,
  snapshot: unknown,
  claimedAt: number,
): Execution {
  const computer = computerEntry(x.inventory, record.computer);
  const fence: CaptureFence = { owner: x.runnerId, generation: record.generation };
  // Every write for this capture names its claim; the first refusal drops the capture (lose).
  const store = fencedStore(x.store, record.id, fence, (err) => execution.lose(err));
  const log = x.log.child({ captureId: record.id, computer: record.computer, image: record.image.name });
  const driverEnv = (remote: Remote): DriverEnv => ({
    remote,
    computerName: record.computer,
    computer,
    ...captureHostsOf(x.inventory, x.hosts, computer),
    pollMs: x.pollMs,
    progress: (step, p) => x.emit({ type: 'progress', captureId: record.id, step, ...p }),
  });

  const waiting = new AbortController();
  let actor: Actor<CaptureMachine> | undefined;
  let cancelReason: string | undefined;
  let suspendAsked = false;
  let suspendNow: (() => void) | undefined;
  let lostWith: VclError | undefined;
  let haltNow: ((result: SuspendedResult) => void) | undefined;
  let leaseBase = claimedAt;
  const execution: Execution = {
    id: record.id,
    image: record.image,
    computer: record.computer,
    fence,
    get actor() {
      return actor;
    },
    get leaseBase() {
      return leaseBase;
    },
    renewed(sentAt) {
      leaseBase = Math.max(leaseBase, sentAt);
    },
    lose(err) {
      if (lostWith !== undefined) return;
      lostWith = err;
      log.warn(
        { code: err.code, err: err.message },
        'capture lost: its step is stopped, nothing more is written',
      );
      if (!actor) waiting.abort();
      else haltNow?.(lostResult(actor.getSnapshot().context.step));
    },
    result: undefined as unknown as Promise<RunResult>,
    cancel(reason?: string) {
      if (cancelReason !== undefined) return;
      cancelReason = reason ?? 'cancelled';
      if (actor) actor.send({ type: 'CANCEL', reason: cancelReason });
      else waiting.abort();
    },
    async suspend(timeoutMs?: number) {
      // A running capture stops at its next persisted transition (see persist), or at the timeout.
      suspendAsked = true;
      if (!actor) waiting.abort();
      else if (timeoutMs !== undefined) {
        const t = setTimeout(() => suspendNow?.(), timeoutMs);
        t.unref();
      }
      await execution.result.catch(() => undefined);
    },
  };

  const lostResult = (step: string): SuspendedResult =>
    endedResult('suspended', record.id, record.image, {
      code: lostWith?.code ?? 'FENCED',
      step,
      message: `this runner lost the capture: ${lostWith?.message ?? 'another claim took it'}`,
    });

  const suspended = (state: string): SuspendedResult =>
    endedResult('suspended', record.id, record.image, {
      code: 'RUNNER_STOPPED',
      step: state,
      message: 'the runner stopped; the capture resumes on its next start',
    });

  /**
   * The runner itself failed (no driver, the store refusing a write): the capture fails to maintenance
   * rather than stay running with nobody driving it, and the result still settles (a daemon must not
   * die of an unhandled rejection).
   */
  const crashed = async (err: unknown): Promise<RunResult> => {
    if (lostWith !== undefined || (isVclError(err) && err.code === 'FENCED')) {
      actor?.stop();
      if (isVclError(err)) execution.lose(err);
      return lostResult(actor?.getSnapshot().context.step ?? 'start');
    }
    const error = {
      code: err instanceof VclError ? err.code : 'INTERNAL',
      step: actor?.getSnapshot().context.step ?? 'start',
      message: `the runner failed: ${err instanceof Error ? err.message : String(err)}`,
    };
    log.error({ err }, 'capture failed in the runner');
    actor?.stop();
    const now = await store.getCaptureRecord(record.id).catch(() => undefined);
    if (now && (now.status === 'running' || now.status === 'queued'))
      await store
        .failCapture(record.id, error, now.status === 'running' ? 'maintenance' : 'restore')
        .catch((e: unknown) => log.error({ err: e }, 'could not record the failure'));
    return endedResult('failed', record.id, record.image, error);
  };

  execution.result = (async (): Promise<RunResult> => {
    const releases: (() => void)[] = [];
    try {
      try {
        await acquireCaptureSlots(
          x,
          store,
          record.id,
          fence,
          computer.provisioner.host,
          waiting.signal,
          releases,
        );
      } catch (err) {
        if (lostWith !== undefined || (isVclError(err) && err.code === 'FENCED')) {
          if (isVclError(err)) execution.lose(err);
          const result = lostResult('queued');
          x.emit({ type: 'finished', captureId: record.id, result });
          return result;
        }
        if (suspendAsked) return suspended('queued');
        // A capture that already holds its computer (resumed) is cancelled by its machine, with cleanup.
        if (record.status === 'queued') {
          const { error } = await cancelQueued(store, record.id, cancelReason ?? 'cancelled');
          log.info('capture cancelled while queued');
          const result = endedResult('cancelled', record.id, record.image, error);
          x.emit({ type: 'finished', captureId: record.id, result });
          return result;
        }
      }
      const result = await run().catch((err: unknown) => crashed(err));
      x.emit({ type: 'finished', captureId: record.id, result });
      return result;
    } finally {
      for (const r of releases.reverse()) r();
    }
  })();

  async function run(): Promise<RunResult> {
    // What an earlier execution (a runner that died or stopped) may have left running is stopped before
    // this one's first command on each host (leftovers.ts).
    const earlier = await store.remoteTags(record.id);
    const env = driverEnv(taggedRemote(x.remote, store, record.id, earlier, log));
    let warnings: unknown[] = [];
    const rerun = snapshot === undefined ? new Set<string>() : inFlightSteps(snapshot);
    const steps = captureSteps(x, store, record, fence, env, {
      warnings: () => warnings,
      writes: () => recorder.flushed(),
      log,
      rerun,
    });
    const machine = x.sharedMachine(record.provisioner, record.os);
    const a = createActor(machine, {
      // Restoring checked the snapshot's shape above; xstate's typing wants its own snapshot type.
      input: machineInput(x, record),
      ...(snapshot === undefined ? {} : { snapshot: snapshot as never }),
      ...(x.inspect ? { inspect: x.inspect } : {}),
    });
    x.stepsBySystem.set(a.system, steps);
    actor = a;
    const recorder = new TransitionRecorder(store, record.id, machineVersion(machine), log, a, snapshot);
    const announce = stateAnnouncer(x, record.id, log);
    let watchedOs: AnyActorRef | undefined;
    let settle: ((r: RunResult) => void) | undefined;
    let fail: ((e: unknown) => void) | undefined;

    const stop = (why: string) => {
      if (a.getSnapshot().status !== 'active') return;
      log.info({ state: a.getSnapshot().value, why }, 'capture suspended');
      a.stop();
      settle?.(suspended(a.getSnapshot().context.step));
    };
    suspendNow = () => stop('stop timeout: the step in flight re-runs on resume');
    haltNow = (result) => {
      if (a.getSnapshot().status !== 'active') return;
      // Stopping the actor aborts the running step's signal, which kills its remote commands.
      a.stop();
      settle?.(result);
    };
    /** Records the state now; a runner stopping suspends the capture at its first recorded transition. */
    const persist = () => {
      if (recorder.record() && suspendAsked)
        queueMicrotask(() => stop('runner stopping: reached a transition'));
    };

    const done = new Promise<RunResult>((resolve, reject) => {
      settle = resolve;
      fail = reject;
      a.subscribe({
        next: (s) => {
          warnings = s.context.warnings;
          announce(s);
          const os = s.children.os as AnyActorRef | undefined;
          if (os && os !== watchedOs) {
            watchedOs = os;
            os.subscribe({ next: () => persist(), error: () => undefined });
          }
          persist();
          if (s.status === 'done') resolve(s.output as CaptureResult);
        },
        error: (e) => fail?.(e),
      });
    });
    if (snapshot !== undefined) {
      log.info({ state: a.getSnapshot().value, rerun: [...rerun] }, 'capture resumed');
      x.emit({
        type: 'resumed',
        captureId: record.id,
        computer: record.computer,
        image: record.image.name,
        state: a.getSnapshot().value,
      });
    }
    // Lost while it was being prepared: nothing of it is started.
    if (lostWith !== undefined) return lostResult(a.getSnapshot().context.step);
    a.start();
    if (cancelReason !== undefined) a.send({ type: 'CANCEL', reason: cancelReason });
    const result = await done;
    await recorder.written;
    if (result.status === 'suspended') return result;
    if (lostWith !== undefined) return lostResult(a.getSnapshot().context.step);
    await closeUnrecorded(store, record.id, result, a.getSnapshot().context);
    // A finished capture is never resumed: its tags have no use any more.
    await store
      .forgetRemoteTags(record.id)
      .catch((err: unknown) => log.warn({ err }, 'could not forget the remote command tags'));
    log.info(
      {
        status: result.status,
        ...(result.status === 'completed'
          ? { path: result.artifact.path }
          : { code: result.error.code, step: result.error.step }),
      },
      'capture finished',
    );
    return result;
  }

  return execution;
}

/**
 * Slot handling: the capture's host slot first, then the global one, each pushed on `releases` as soon
 * as it is held (the caller releases them newest first). A global slot is then only ever held by a
 * capture that runs (bench/scale.ts: 500 captures requested host by host, 166 s -> 113 s, ideal 110 s).
 */
async function acquireCaptureSlots(
  x: ExecutionContext,
  store: CaptureStore,
  captureId: string,
  fence: CaptureFence,
  host: string,
  signal: AbortSignal,
  releases: (() => void)[],
): Promise<void> {
  releases.push(await x.hostCaptureSlots.acquire(store, captureId, fence, host, signal));
  releases.push(await x.runnerSlots.acquire('*', signal));
}

/** A step that holds one of the host's copy slots while it runs. */
function withCopySlot(
  x: ExecutionContext,
  store: CaptureStore,
  captureId: string,
  fence: CaptureFence,
  host: string,
  fn: AnyStepFn,
): AnyStepFn {
  return async (r) => {
    const release = await x.hostCopySlots.acquire(store, captureId, fence, host, r.signal);
    try {
      return await fn(r);
    } finally {
      release();
    }
  };
}

/**
 * One capture's step implementations by effect name: the store's steps, its provisioner's (from the
 * registry) and its OS's, the copy steps (StepMeta.effect 'copy' in its machine) behind the per-host copy
 * limit. NOT_PROVIDED when an effect of its machines has no implementation.
 */
function captureSteps(
  x: ExecutionContext,
  store: CaptureStore,
  record: CaptureRecord,
  fence: CaptureFence,
  env: DriverEnv,
  o: { warnings: () => unknown[]; writes: () => Promise<void>; log: Logger; rerun: Set<string> },
): CaptureSteps {
  const provisioner = record.provisioner;
  const provisionerImpls: Record<string, StepFn<never, unknown>> = {
    ...storeSteps(store, o.warnings, o.writes),
    ...registry[provisioner].steps(env),
  };
  const osImpls = osSteps(env);
  const missing = [
    ...effectNames(provisioners[provisioner].machine).filter((n) => n !== 'os' && !(n in provisionerImpls)),
    ...effectNames(operatingSystems[record.os].machine).filter((n) => !(n in osImpls)),
  ];
  if (missing.length) throw new VclError('NOT_PROVIDED', `no driver for ${missing.join(', ')}`);
  const copySteps = COPY_STEPS[provisioner];
  const copyHost = env.computer.provisioner.host;
  const wrap = (impls: Record<string, StepFn<never, unknown>>) =>
    Object.fromEntries(
      Object.entries(impls).map(([n, f]) => [
        n,
        copySteps.has(n)
          ? withCopySlot(x, store, record.id, fence, copyHost, f as AnyStepFn)
          : (f as AnyStepFn),
      ]),
    );
  return { provisioner: wrap(provisionerImpls), os: wrap(osImpls), log: o.log, rerun: o.rerun };
}

/**
 * Persisting transitions: every change of the capture machine's state, or of its OS sub-machine's, is
 * written to the store with the persisted snapshot and an audit event, in order, one write at a time.
 */
class TransitionRecorder {
  /** What was persisted last: capture and OS states, and the capture state alone. */
  private lastKey = '';
  private lastRoot = '';
  /** Settles when every transition recorded so far is written (a failed write is logged). */
  written: Promise<void> = Promise.resolve();

  constructor(
    private readonly store: CaptureStore,
    private readonly captureId: string,
    private readonly version: string,
    private readonly log: Logger,
    private readonly actor: Actor<CaptureMachine>,
    /** The snapshot resumed from: its state is already persisted. */
    resumedFrom: unknown,
  ) {
    if (resumedFrom === undefined) return;
    this.lastKey = this.key();
    this.lastRoot = JSON.stringify(actor.getSnapshot().value);
  }

  private osChild(): AnyActorRef | undefined {
    return this.actor.getSnapshot().children.os as AnyActorRef | undefined;
  }

  private key(): string {
    const os = this.osChild()?.getSnapshot() as { value?: unknown } | undefined;
    return JSON.stringify([this.actor.getSnapshot().value, os?.value ?? null]);
  }

  /**
   * Settles when the transition into the state being entered is written too. xstate starts a state's
   * invoked step before it tells observers of that state, so a closing step (record_revision,
   * release_computer) that flushed on its first line waited only for the writes before its own state's:
   * a slow write of that state then came after the closing transaction and was refused (its audit event
   * lost). One microtask lets the observer queue that write first.
   */
  async flushed(): Promise<void> {
    await Promise.resolve();
    await this.written;
  }

  /** Records the state the capture (and its OS sub-machine) is in now, if it changed; true if it did. */
  record(): boolean {
    const s = this.actor.getSnapshot();
    if (s.status !== 'active') return false;
    // An OS sub-machine that just ended hands over to the capture machine in the same step: the
    // capture's next state is what gets persisted.
    if ((this.osChild()?.getSnapshot() as { status?: string } | undefined)?.status === 'done') return false;
    const key = this.key();
    if (key === this.lastKey) return false;
    this.lastKey = key;
    const rootValue = JSON.stringify(s.value);
    const rootChanged = rootValue !== this.lastRoot;
    this.lastRoot = rootValue;
    const stateValue = s.value;
    const snap = this.actor.getPersistedSnapshot();
    const osSnap = this.osChild()?.getSnapshot() as
      | { value?: unknown; context?: { step?: string } }
      | undefined;
    const event = rootChanged
      ? { type: 'state.entered', step: s.context.step }
      : {
          type: 'os.state.entered',
          step: osSnap?.context?.step ?? s.context.step,
          details: { os: osSnap?.value ?? null },
        };
    const { store, captureId, version, log } = this;
    this.written = this.written
      .then(() =>
        store.recordTransition(captureId, { stateValue, snapshot: snap, machineVersion: version, event }),
      )
      .then(
        () => undefined,
        (err: unknown) => log.error({ err }, 'could not record a transition'),
      );
    return true;
  }
}

/** Logs and announces each capture state entered (and how long the last one took). */
function stateAnnouncer(x: ExecutionContext, captureId: string, log: Logger) {
  let announced = '';
  let enteredAt = Date.now();
  return (s: { value: unknown; context: { step: string } }) => {
    const value = JSON.stringify(s.value);
    if (value === announced) return;
    const now = Date.now();
    if (announced) log.info({ state: JSON.parse(announced), durationMs: now - enteredAt }, 'state left');
    log.info({ state: s.value }, 'state entered');
    announced = value;
    enteredAt = now;
    x.emit({ type: 'state', captureId, state: s.value, step: s.context.step, atMs: now });
  };
}

/**
 * A machine that ended without its closing transaction (reservation refused, release failed): the
 * capture is closed here so no record stays running.
 */
async function closeUnrecorded(
  store: CaptureStore,
  captureId: string,
  result: CaptureResult,
  context: Parameters<typeof releaseOutcome>[0],
): Promise<void> {
  const after = await store.getCaptureRecord(captureId);
  if (!after || (after.status !== 'running' && after.status !== 'queued')) return;
  const error =
    result.status === 'completed'
      ? { code: 'STEP_FAILED', step: 'record_revision', message: 'completed without a record' }
      : result.error;
  const outcome = releaseOutcome(context);
  await (result.status === 'cancelled'
    ? store.cancelCapture(captureId, error, outcome)
    : store.failCapture(captureId, error, outcome));
}
