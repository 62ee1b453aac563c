/**
 * The runner a daemon embeds: it validates capture requests against the inventory, records them in the
 * store, and runs them under the concurrency limits with the real drivers provided. A started runner
 * also resumes the captures a stopped or crashed runner left unfinished (from their persisted snapshots)
 * and runs captures queued in the store by other processes. Each capture is owned by one runner at a
 * time (a lease in the store), so two runners never run the same capture.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { performance } from 'node:perf_hooks';
import type { AnyActorLogic, InspectionEvent } from 'xstate';
import {
  allowedEndStates,
  type CaptureMachine,
  composeCaptureMachine,
  defaultEndStateOf,
  type EndState,
  effectNames,
  type OsName,
  operatingSystems,
  type ProvisionerName,
  provisioners,
  type Timeouts,
  upgradeCaptureSnapshot,
} from '../../machines/index.js';
import { resolveTimeouts } from '../../machines/steps.js';
import type { Remote } from '../drivers/contract.js';
import { isVclError, VclError } from '../errors.js';
import { computerEntry, inventoryHosts } from '../inventory/hosts.js';
import { type Inventory, runnerInventory } from '../inventory/schema.js';
import { type Logger, silentLogger } from '../log.js';
import { SshPool } from '../ssh/index.js';
import {
  CAPTURABLE_COMPUTER_STATES,
  type CaptureRecord,
  type CaptureStore,
  type ComputerStatus,
  type ImageRegistration,
  maintenanceCauseText,
  type StoreWake,
} from '../store/index.js';
import { cancelThroughStore } from './cancel.js';
import {
  type CaptureHandle,
  type CaptureSteps,
  type Execution,
  type ExecutionContext,
  endedResult,
  execute,
  type RunnerEvent,
  type RunResult,
  resumeProblem,
  timeoutsOf,
} from './execution.js';
import { HostSlots, Limiter } from './limits.js';
import { machineVersion } from './resume.js';
import { boundStepActor } from './step.js';

export type { CaptureHandle, RunnerEvent, RunResult, SuspendedResult } from './execution.js';

export interface RunnerOptions {
  /**
   * Validated here unless this process validated it already (`parseInventory`, `loadInventoryFile`): an
   * invalid inventory fails with INVALID_INVENTORY naming each wrong field.
   */
  inventory: unknown;
  store: CaptureStore;
  logger?: Logger;
  /** The transport (default: an SshPool the runner owns and closes). */
  remote?: Remote & { close?: () => Promise<void> | void };
  /** Passed to every capture actor: `@statelyai/inspect`'s `inspector.inspect`, or any observer. */
  inspect?: (event: InspectionEvent) => void;
  /** Interval of polling waits (default 2000 ms). */
  pollMs?: number;
  /** This runner's name as the owner of its captures in the store (default `<host>/<pid>/<random>`). */
  id?: string;
  /** How long this runner's claim on a capture holds unless renewed (default 60 s; renewed every third). */
  leaseMs?: number;
  /**
   * How long before its lease could run out a capture whose lease this runner could not renew is stopped
   * (default a quarter of the lease): the time its running step and remote commands have to end before
   * another runner may take the capture over (docs/resume.md, "Fencing").
   */
  stopBudgetMs?: number;
  /** How often a capture waiting for a host slot another runner holds asks the store again (default 1000 ms). */
  slotPollMs?: number;
  /** How often a started runner looks for captures queued in the store (default 1000 ms). */
  queuePollMs?: number;
}

export interface CaptureRequest {
  computer: string;
  /** A registered image id, or an image to register. */
  image: number | ImageRegistration;
  endState?: EndState;
  timeouts?: Partial<Timeouts>;
  /** Capture id (default: a random UUID). */
  id?: string;
}

/** What `runner.start()` found in the store. */
export interface StartReport {
  /** Captures that were running under a runner that is gone, resumed from their snapshots. */
  resumed: string[];
  /** Queued captures this runner took. */
  started: string[];
  /** Captures that could not be resumed (they failed: snapshot incompatible, computer unknown). */
  failed: { captureId: string; code: string; message: string }[];
}

/**
 * What an operator's readiness probe and metrics read of a runner (`runner.health()`): counters since it
 * was created and the outcome of its last lease renewal. Kept by the runner because only it sees them.
 */
export interface RunnerHealth {
  /** `stop()` or `close()` was called: the runner takes no new work. */
  stopping: boolean;
  /** Captures this runner runs or has queued for a slot now. */
  captures: number;
  leases: {
    leaseMs: number;
    /** Renewal rounds that succeeded / failed (a round runs every third of the lease while captures run). */
    renewals: number;
    failures: number;
    /** The last round, or null when none was needed yet. */
    last: { at: string; ok: boolean; error?: string } | null;
  };
  /** Captures this runner claimed from another owner (gone, or its lease ran out). */
  takeovers: number;
  /** Capture and copy slots in use (and waited for) per provisioner host. */
  slots: Record<string, { captures: number; copies: number; waiting: number }>;
  /** Remote commands and copies that failed, by error code (expected ones included: a shutdown's `SSH_DISCONNECTED`). */
  remoteFailures: Record<string, number>;
}

/** An unfinished capture as `runner.list()` reports it. */
export interface ListedCapture extends CaptureRecord {
  /** This runner runs it. */
  local: boolean;
}

export interface Runner {
  /** The owner name of this runner's captures in the store. */
  id: string;
  inventory: Inventory;
  /**
   * Resumes the unfinished captures whose runner is gone (this process's previous life, a crashed
   * daemon), then keeps taking captures queued in the store until `stop()`.
   */
  start(): Promise<StartReport>;
  /** Records the capture and runs it in this runner (it waits for a slot under the limits). */
  capture(request: CaptureRequest): Promise<CaptureHandle>;
  /** Records the capture as queued, for a started runner (this one, or a daemon) to run. */
  enqueue(request: CaptureRequest): Promise<CaptureRecord>;
  /** Unfinished captures in the store (queued or running, by any runner), oldest first. */
  list(): Promise<ListedCapture[]>;
  /** Captures this runner runs or has queued now. */
  active(): CaptureHandle[];
  /**
   * Cancels a capture: this runner's at once (with cleanup); a queued one nobody runs yet, in the store;
   * one another runner runs, by asking it through the store (it acts within a third of its lease).
   */
  cancel(captureId: string, reason?: string): Promise<void>;
  /** Counters and the last lease renewal, for readiness probes and metrics. */
  health(): RunnerHealth;
  /** Listens to every capture's events; returns the unsubscribe function. A listener never blocks a capture. */
  on(listener: (event: RunnerEvent) => void): () => void;
  /**
   * Graceful stop: takes no new work; each running capture goes on to its next transition, which is
   * persisted, and stops there (after `timeoutMs`, the step in flight is stopped and re-runs on
   * resume). Its captures stay unfinished in the store for the next start.
   */
  stop(options?: { timeoutMs?: number }): Promise<void>;
  /** Cancels every capture of this runner, waits for their cleanup, closes the transport it owns. */
  close(): Promise<void>;
}

/**
 * Why a capture may not take `computer` now, as the COMPUTER_BUSY error its request is refused with, or
 * undefined: held by another capture (wait, or cancel it), in maintenance (an operator looks, then
 * releases it), or in another state a capture may not take it from. `details.reason` says which.
 */
export function reservationRefusal(
  computer: string,
  status: ComputerStatus | undefined,
  queuedBy?: string,
): VclError | undefined {
  const refuse = (reason: string, message: string, details: Record<string, unknown> = {}) =>
    new VclError('COMPUTER_BUSY', message, {
      step: 'request',
      details: { computer, reason, state: status?.state ?? null, ...details },
    });
  const holder = status?.heldBy ?? queuedBy;
  if (holder) {
    return refuse(
      'held',
      `computer ${computer} is held by capture ${holder}: wait until it ends, or cancel it with \`vcl-capture cancel ${holder}\``,
      { heldBy: holder },
    );
  }
  if (status === undefined || (CAPTURABLE_COMPUTER_STATES as readonly string[]).includes(status.state))
    return undefined;
  if (status.state === 'maintenance') {
    const cause = status.maintenance;
    const why = cause ? ` since ${maintenanceCauseText(cause)}` : '';
    return refuse(
      'maintenance',
      `computer ${computer} is in maintenance${why}. Look at it, then put it back with \`vcl-capture release ${computer} --reason "<what was checked or fixed>"\``,
      { maintenance: cause },
    );
  }
  return refuse(
    'state',
    `computer ${computer} is in state ${status.state}; a capture may only take it from ${CAPTURABLE_COMPUTER_STATES.join(' or ')}`,
  );
}

/** The transport, counting its failures by code for `health()`; what it does is unchanged. */
function countingFailures(inner: Remote, count: (code: string) => void): Remote {
  const counted = <T>(p: Promise<T>): Promise<T> =>
    p.catch((err: unknown) => {
      count(isVclError(err) ? err.code : 'ERROR');
      throw err;
    });
  return {
    exec: (host, argv, o) => counted(inner.exec(host, argv, o)),
    copy: (from, to, o) => counted(inner.copy(from, to, o)),
    ...(inner.answers ? { answers: inner.answers.bind(inner) } : {}),
  };
}

/** `<host>/<pid>/<random>`: a runner on this host whose process is gone can be replaced at once. */
function defaultRunnerId(): string {
  return `${hostname()}/${process.pid}/${randomBytes(4).toString('hex')}`;
}

/** True when `owner` names a runner of another process on this host that no longer exists. */
function ownerIsGone(owner: string): boolean {
  const [host, pidText] = owner.split('/');
  const pid = Number(pidText);
  if (host !== hostname() || !Number.isSafeInteger(pid) || pid <= 0 || pid === process.pid) return false;
  try {
    process.kill(pid, 0);
    return false;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'ESRCH';
  }
}

export function createRunner(options: RunnerOptions): Runner {
  const inventory = runnerInventory(options.inventory);
  const hosts = inventoryHosts(inventory);
  const runnerId = options.id ?? defaultRunnerId();
  const leaseMs = options.leaseMs ?? 60_000;
  const baseLog = (options.logger ?? silentLogger()).child({ runner: runnerId });
  const ownsRemote = options.remote === undefined;
  const ownRemote = options.remote ?? new SshPool({ logger: baseLog });
  const remoteFailures: Record<string, number> = {};
  const remote = countingFailures(ownRemote, (code) => {
    remoteFailures[code] = (remoteFailures[code] ?? 0) + 1;
  });
  const store = options.store;
  const stopBudgetMs = options.stopBudgetMs ?? Math.floor(leaseMs / 4);
  if (!(stopBudgetMs > 0 && stopBudgetMs < leaseMs / 2))
    throw new VclError(
      'INVALID_INPUT',
      `stopBudgetMs must be above 0 and below half the lease (${leaseMs} ms): ${stopBudgetMs}`,
    );
  const runnerSlots = new Limiter(() => inventory.defaults.maxConcurrentCaptures);
  const slotPollMs = options.slotPollMs ?? 1000;
  const hostSlots = (kind: 'capture' | 'copy', limitOf: (host: string) => number) =>
    new HostSlots(options.store, kind, limitOf, slotPollMs, baseLog);
  const hostCaptureSlots = hostSlots('capture', (host) => inventory.hosts[host]?.maxCaptures ?? 5);
  const hostCopySlots = hostSlots('copy', (host) => inventory.hosts[host]?.maxCopies ?? 2);
  const handles = new Map<string, Execution>();
  const listeners = new Set<(event: RunnerEvent) => void>();
  const emit = (event: RunnerEvent) => {
    for (const l of listeners) {
      try {
        l(event);
      } catch (err) {
        baseLog.warn({ err }, 'a runner event listener threw');
      }
    }
  };
  const stepsBySystem = new WeakMap<object, CaptureSteps>();
  const sharedMachine = machineCache(stepsBySystem);
  const registered = store.registerComputers(Object.keys(inventory.computers).map((name) => ({ name })));
  const context = {
    inventory,
    hosts,
    store,
    runnerId,
    remote,
    log: baseLog,
    emit,
    runnerSlots,
    hostCaptureSlots,
    hostCopySlots,
    sharedMachine,
    stepsBySystem,
    pollMs: options.pollMs ?? 2000,
    ...(options.inspect ? { inspect: options.inspect } : {}),
  };

  let closing = false;
  let takeovers = 0;
  const leaseHealth: RunnerHealth['leases'] = { leaseMs, renewals: 0, failures: 0, last: null };
  let queueTimer: NodeJS.Timeout | undefined;
  let picking: Promise<void> | undefined;
  const leases = startLeaseRenewal({
    store,
    runnerId,
    leaseMs,
    stopBudgetMs,
    handles,
    health: leaseHealth,
    log: baseLog,
  });

  /** Checks a request against the inventory: what the capture will run with. */
  async function prepare(request: CaptureRequest) {
    if (closing) throw new VclError('RUNNER_STOPPED', 'the runner is stopping; it takes no new captures');
    await registered;
    const computer = computerEntry(inventory, request.computer, { step: 'request' });
    const provisioner = computer.provisioner.type;
    const endState = request.endState ?? defaultEndStateOf(provisioner, computer.os);
    if (endState === undefined || !allowedEndStates(provisioner).includes(endState)) {
      throw new VclError(
        'INVALID_END_STATE',
        `${provisioner} cannot capture with end state '${request.endState}'; it allows ${allowedEndStates(provisioner).join(', ')}`,
        { step: 'request' },
      );
    }
    // Checked now, so that a bad value fails the request rather than the capture later.
    resolveTimeouts(timeoutsOf(inventory, request.computer, request.timeouts));
    // Refused at once, before anything is recorded: the reservation's compare-and-swap still decides
    // any race (the capture then fails with the same code in `reserve`).
    const queued = [...handles.values()].find((h) => h.computer === request.computer);
    const refusal = reservationRefusal(
      request.computer,
      await store.describeComputer(request.computer),
      queued?.id,
    );
    if (refusal) throw refusal;
    const repository = inventory.repositories[computer.repository] as Inventory['repositories'][string];
    const imageId =
      typeof request.image === 'number' ? request.image : (await store.registerImage(request.image)).id;
    return { computer, provisioner, endState, repository, imageId };
  }

  /** The capture, and when (`performance.now()`) the request that created it claimed was sent. */
  async function record(
    request: CaptureRequest,
    owned: boolean,
  ): Promise<CaptureRecord & { sentAt: number }> {
    const p = await prepare(request);
    const sentAt = performance.now();
    const created = await store.createCapture({
      ...(request.id ? { id: request.id } : {}),
      computer: request.computer,
      imageId: p.imageId,
      provisioner: p.provisioner,
      os: p.computer.os,
      endState: p.endState,
      repository: p.repository.path,
      reserve: false,
      ...(request.timeouts ? { request: { timeouts: request.timeouts } } : {}),
      ...(owned ? { owner: runnerId, leaseMs } : {}),
    });
    baseLog.info(
      { captureId: created.id, computer: created.computer, image: created.image.name, endState: p.endState },
      owned ? 'capture queued' : 'capture queued for a started runner',
    );
    emit({ type: 'queued', captureId: created.id, computer: created.computer, image: created.image.name });
    return { ...created, sentAt };
  }

  /** Runs a capture this runner claimed by a request sent at `claimedAt` (`performance.now()`). */
  function launch(r: CaptureRecord, claimedAt: number, snapshot?: unknown): Execution {
    const execution = execute(context, r, snapshot, claimedAt);
    handles.set(r.id, execution);
    const forget = () => {
      handles.delete(r.id);
      // A slot came free: a started runner takes the next queued capture now, not at its next poll.
      if (queueTimer && !closing)
        pickUpNow({ resumed: [], started: [], failed: [] }).catch((err: unknown) =>
          baseLog.error({ err }, 'could not take queued captures'),
        );
    };
    execution.result.then(forget, forget);
    if (r.cancelRequested) execution.cancel(r.cancelRequested);
    return execution;
  }

  /** A capture this runner claimed: resumed from its snapshot, or started; or failed when it cannot be. */
  async function takeOver(r: CaptureRecord, claimedAt: number, report: StartReport): Promise<void> {
    const fail = async (code: string, message: string, details: Record<string, unknown> = {}) => {
      // A running capture holds its computer: it goes to maintenance; a queued one never took it.
      await store.failCapture(
        r.id,
        { code, step: 'resume', message },
        r.status === 'running' ? 'maintenance' : 'restore',
        { fence: { owner: runnerId, generation: r.generation } },
      );
      report.failed.push({ captureId: r.id, code, message });
      baseLog.error({ captureId: r.id, code, ...details }, message);
    };
    if (!inventory.computers[r.computer]) {
      return fail(
        'UNKNOWN_COMPUTER',
        `capture ${r.id} cannot run: computer ${r.computer} is no longer in the inventory`,
      );
    }
    if (r.status === 'queued') {
      launch(r, claimedAt);
      report.started.push(r.id);
      return;
    }
    const resumable = await snapshotToResume(context, r, baseLog);
    if ('refused' in resumable) return fail('SNAPSHOT_INCOMPATIBLE', resumable.refused, resumable.details);
    launch(r, claimedAt, resumable.snapshot);
    report.resumed.push(r.id);
  }

  /**
   * Claims and runs what is unfinished and not run by a live runner: every capture a gone runner left
   * (it may hold its computer), and as many queued captures nobody owns as this runner has free capture
   * slots, oldest first, so that several runners on one store share a backlog.
   */
  async function pickUp(report: StartReport): Promise<void> {
    // A runner that cannot renew its leases takes no work: its claims would not hold.
    if (!leases.healthy()) return;
    const now = new Date().toISOString();
    for (const r of await store.listResumableCaptures()) {
      if (closing) return;
      if (handles.has(r.id)) continue;
      if (r.status === 'queued' && r.owner === null) continue;
      const gone = r.owner !== null && r.owner !== runnerId && ownerIsGone(r.owner);
      const free = r.owner === null || r.owner === runnerId || gone || (r.leaseUntil ?? '') < now;
      if (!free) continue;
      let claimed: CaptureRecord;
      const sentAt = performance.now();
      try {
        claimed = await store.claimCapture(r.id, runnerId, {
          leaseMs,
          ...(gone && r.owner ? { replacing: r.owner } : {}),
        });
      } catch (err) {
        if (isVclError(err) && (err.code === 'CAPTURE_CLAIMED' || err.code === 'INVALID_TRANSITION'))
          continue;
        throw err;
      }
      if (r.owner !== null && r.owner !== runnerId) {
        takeovers += 1;
        baseLog.info(
          { captureId: r.id, previousOwner: r.owner },
          'took over a capture of a runner that is gone',
        );
      }
      await takeOver(claimed, sentAt, report);
    }
    const room = inventory.defaults.maxConcurrentCaptures - handles.size;
    if (closing || room <= 0) return;
    const sentAt = performance.now();
    for (const claimed of await store.claimQueuedCaptures(runnerId, { leaseMs, limit: room })) {
      if (closing) return;
      await takeOver(claimed, sentAt, report);
    }
  }

  const pickUpNow = (report: StartReport): Promise<void> => {
    picking ??= pickUp(report).finally(() => {
      picking = undefined;
    });
    return picking;
  };

  /**
   * Wakes from the store (PostgreSQL's NOTIFY): new work is claimed, a cancellation carried out and a
   * freed host slot asked for at once instead of at the next poll or lease renewal, which stay the
   * fallback (and all there is on SQLite).
   */
  const onWake = (wake: StoreWake) => {
    if (closing) return;
    if (wake.kind === 'slot') {
      hostCaptureSlots.wake(wake.host);
      hostCopySlots.wake(wake.host);
      return;
    }
    if (wake.kind === 'cancel') {
      const h = handles.get(wake.captureId);
      if (h)
        store.getCaptureRecord(wake.captureId).then(
          (r) => {
            if (r?.cancelRequested) h.cancel(r.cancelRequested);
          },
          (err: unknown) => baseLog.warn({ err, captureId: wake.captureId }, 'could not read a cancellation'),
        );
      return;
    }
    if (queueTimer)
      pickUpNow({ resumed: [], started: [], failed: [] }).catch((err: unknown) =>
        baseLog.error({ err }, 'could not take queued captures'),
      );
  };
  const subscription = store.subscribe(onWake).catch((err: unknown) => {
    baseLog.warn({ err }, 'no wakes from the store: polling only');
    return undefined;
  });
  const unsubscribe = async () => (await subscription)?.close();

  return {
    id: runnerId,
    inventory,
    async start() {
      if (closing) throw new VclError('RUNNER_STOPPED', 'the runner was stopped; create a new one');
      await registered;
      const report: StartReport = { resumed: [], started: [], failed: [] };
      await pickUpNow(report);
      if (!queueTimer) {
        queueTimer = setInterval(() => {
          pickUpNow({ resumed: [], started: [], failed: [] }).catch((err: unknown) =>
            baseLog.error({ err }, 'could not take queued captures'),
          );
        }, options.queuePollMs ?? 1000);
      }
      baseLog.info(
        { resumed: report.resumed.length, started: report.started.length, failed: report.failed.length },
        'runner started',
      );
      return report;
    },
    async capture(request) {
      const { sentAt, ...r } = await record(request, true);
      return launch(r, sentAt);
    },
    enqueue: async (request) => {
      const { sentAt: _, ...r } = await record(request, false);
      return r;
    },
    async list() {
      return (await store.listResumableCaptures()).map((r) => ({ ...r, local: handles.has(r.id) }));
    },
    active: () => [...handles.values()],
    async cancel(captureId, reason = 'cancelled') {
      const local = handles.get(captureId);
      if (local) return local.cancel(reason);
      const { outcome, record: r, error } = await cancelThroughStore(store, captureId, reason);
      if (outcome === 'cancelled' && error)
        emit({ type: 'finished', captureId, result: endedResult('cancelled', captureId, r.image, error) });
    },
    health() {
      const slots: RunnerHealth['slots'] = {};
      for (const c of Object.values(inventory.computers)) {
        const host = c.provisioner.host;
        const captures = hostCaptureSlots.usage(host);
        const copies = hostCopySlots.usage(host);
        slots[host] = {
          captures: captures.active,
          copies: copies.active,
          waiting: captures.waiting + copies.waiting,
        };
      }
      return {
        stopping: closing,
        captures: handles.size,
        leases: { ...leaseHealth, last: leaseHealth.last && { ...leaseHealth.last } },
        takeovers,
        slots,
        remoteFailures: { ...remoteFailures },
      };
    },
    on(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async stop(o = {}) {
      closing = true;
      if (queueTimer) clearInterval(queueTimer);
      queueTimer = undefined;
      await picking?.catch(() => undefined);
      await Promise.allSettled([...handles.values()].map((h) => h.suspend(o.timeoutMs)));
      leases.stop();
      await unsubscribe();
      await store.releaseCaptures(runnerId);
      if (ownsRemote) await (ownRemote as SshPool).close();
      baseLog.info('runner stopped');
    },
    async close() {
      closing = true;
      if (queueTimer) clearInterval(queueTimer);
      queueTimer = undefined;
      await picking?.catch(() => undefined);
      const pending = [...handles.values()];
      for (const h of pending) h.cancel('runner closing');
      await Promise.allSettled(pending.map((h) => h.result));
      leases.stop();
      await unsubscribe();
      if (ownsRemote) await (ownRemote as SshPool).close();
    },
  };
}

/**
 * One composed machine per provisioner x OS, shared by every capture of a runner: composing one per
 * capture cost about 1.2 ms of CPU and 117 KiB of heap (docs/performance-scale.md). A step finds its
 * capture's drivers through the capture's actor system (`stepsBySystem`), which the capture's root actor
 * and its OS child share.
 */
function machineCache(
  stepsBySystem: WeakMap<object, CaptureSteps>,
): (provisioner: ProvisionerName, os: OsName) => CaptureMachine {
  const machines = new Map<string, CaptureMachine>();
  const bound = (kind: 'provisioner' | 'os', name: string) =>
    boundStepActor<{ deadline: number; step: string }, unknown>(name, (system) => {
      const steps = stepsBySystem.get(system);
      const fn = steps?.[kind][name];
      if (!steps || !fn) throw new VclError('NOT_PROVIDED', `no driver for ${name}`, { step: name });
      return { fn, log: steps.log, resumed: steps.rerun.delete(name) };
    });
  return (provisioner, os) => {
    const key = `${provisioner}/${os}`;
    let machine = machines.get(key);
    if (!machine) {
      const actorsOf = (kind: 'provisioner' | 'os', names: string[]): Record<string, AnyActorLogic> =>
        Object.fromEntries(names.filter((n) => n !== 'os').map((n) => [n, bound(kind, n)]));
      machine = composeCaptureMachine({
        provisioner,
        os,
        provisionerActors: actorsOf('provisioner', effectNames(provisioners[provisioner].machine)),
        osActors: actorsOf('os', effectNames(operatingSystems[os].machine)),
      });
      machines.set(key, machine);
    }
    return machine;
  };
}

/**
 * Lease renewal: renews a runner's claims while it runs captures, carries out the cancellations other
 * processes asked for, and fences this runner off what it may have lost (docs/resume.md, "Fencing"):
 * - a capture the renewal no longer returns, whose claim the store shows as another's, is dropped at once;
 * - a capture whose lease could run out within `stopBudgetMs` (no renewal of it succeeded since
 *   `leaseBase + leaseMs - stopBudgetMs`) is dropped too: its step and remote commands stop, and it
 *   writes nothing more, before another runner may claim it.
 * Renewal runs every third of the lease, and after a failure again every 1/24 of it, so a short outage
 * costs nothing. The timers are unref'd: they never keep the process alive.
 */
function startLeaseRenewal(o: {
  store: CaptureStore;
  runnerId: string;
  leaseMs: number;
  stopBudgetMs: number;
  handles: ReadonlyMap<string, Execution>;
  health: RunnerHealth['leases'];
  log: Logger;
}): { stop(): void; healthy(): boolean } {
  const { store, runnerId, leaseMs, stopBudgetMs, handles, health } = o;
  const every = Math.max(50, Math.floor(leaseMs / 3));
  const retry = Math.max(20, Math.floor(leaseMs / 24));
  let inFlightSince: number | undefined;
  let failing = false;
  let stopped = false;
  let timer: NodeJS.Timeout | undefined;

  /** A capture the renewal did not return: lost when the store says another claim holds it. */
  const checkLost = async (h: Execution) => {
    const r = await store.getCaptureRecord(h.id);
    if (!r || (r.status !== 'queued' && r.status !== 'running') || handles.get(h.id) !== h) return;
    if (r.owner !== runnerId || r.generation !== h.fence.generation)
      h.lose(
        new VclError(
          'FENCED',
          `capture ${h.id} is now run by ${r.owner ?? 'nobody'} under claim ${r.generation} (this runner's claim was ${h.fence.generation})`,
        ),
      );
  };

  const renew = async (): Promise<boolean> => {
    const sentAt = performance.now();
    // A renewal that hangs (a dead connection) does not hold back the next one for long.
    if (inFlightSince !== undefined && sentAt - inFlightSince < every) return !failing;
    inFlightSince = sentAt;
    try {
      const owned = await store.renewLeases(runnerId, leaseMs);
      health.renewals += 1;
      health.last = { at: new Date().toISOString(), ok: true };
      failing = false;
      const returned = new Set<string>();
      for (const c of owned) {
        returned.add(c.captureId);
        const h = handles.get(c.captureId);
        h?.renewed(sentAt);
        if (c.cancelRequested) h?.cancel(c.cancelRequested);
      }
      for (const h of handles.values())
        if (!returned.has(h.id))
          checkLost(h).catch((err: unknown) =>
            o.log.warn({ err, captureId: h.id }, 'could not check a claim'),
          );
      return true;
    } catch (err) {
      health.failures += 1;
      health.last = {
        at: new Date().toISOString(),
        ok: false,
        error: err instanceof Error ? err.message : String(err),
      };
      failing = true;
      o.log.error({ err }, 'could not renew the leases of running captures');
      return false;
    } finally {
      if (inFlightSince === sentAt) inFlightSince = undefined;
    }
  };

  const loop = () => {
    if (stopped) return;
    // With nothing to renew, nothing can be lost: a failure before no longer holds back new work.
    if (handles.size === 0) failing = false;
    const round = handles.size === 0 ? Promise.resolve(true) : renew();
    round.then((ok) => {
      if (stopped) return;
      timer = setTimeout(loop, ok ? every : retry);
      timer.unref();
    });
  };
  timer = setTimeout(loop, every);
  timer.unref();

  // The deadline of each capture, checked often enough to leave most of the stop budget to the stop.
  const watchdog = setInterval(
    () => {
      const now = performance.now();
      for (const h of handles.values()) {
        if (now < h.leaseBase + leaseMs - stopBudgetMs) continue;
        h.lose(
          new VclError(
            'LEASE_LOST',
            `the lease of capture ${h.id} could not be renewed for ${Math.round(now - h.leaseBase)} ms (lease ${leaseMs} ms): stopped before another runner may take it over`,
          ),
        );
      }
    },
    Math.max(10, Math.floor(stopBudgetMs / 4)),
  );
  watchdog.unref();

  return {
    stop() {
      stopped = true;
      clearTimeout(timer);
      clearInterval(watchdog);
    },
    healthy: () => !failing,
  };
}

/**
 * Take-over of a running capture: the snapshot it resumes from (undefined: it crashed between its
 * reservation and its first recorded state, and starts again from the reservation, which it holds), or
 * why it cannot resume.
 */
async function snapshotToResume(
  context: ExecutionContext,
  r: CaptureRecord,
  log: Logger,
): Promise<{ snapshot: unknown } | { refused: string; details: Record<string, unknown> }> {
  const stored = await context.store.loadSnapshot(r.id);
  // A snapshot of an older version of the machines gets the context fields added since (defaults).
  const snapshot = stored?.snapshot == null ? undefined : upgradeCaptureSnapshot(stored.snapshot);
  if (snapshot === undefined) return { snapshot };
  const problem = resumeProblem(context, r, snapshot);
  const version = machineVersion(context.sharedMachine(r.provisioner, r.os));
  if (problem) {
    // Its cleanup cannot run either (the machine that would run it does not fit): say what may remain.
    const facts = (snapshot as { context?: { facts?: Record<string, unknown> } }).context?.facts;
    const left = facts?.target === undefined ? '' : `; a copy may remain at ${String(facts.target)}`;
    return {
      refused: `capture ${r.id} cannot resume: its stored snapshot (machine ${stored?.machineVersion ?? 'unknown'}) does not fit this version of the machine (${version}): ${problem}; the computer goes to maintenance${left}`,
      details: { storedVersion: stored?.machineVersion, version, problem },
    };
  }
  if (stored?.machineVersion !== version)
    log.warn(
      { captureId: r.id, storedVersion: stored?.machineVersion },
      'resuming a snapshot written by another version of the machine: it still fits',
    );
  return { snapshot };
}

export type { RunResult as CaptureRunResult };
