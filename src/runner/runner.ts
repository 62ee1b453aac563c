/**
 * The runner a daemon embeds: it validates a capture request against the inventory, creates the capture
 * in the store (queued), waits for a slot under the concurrency limits, then runs the provisioner's
 * machine with the real drivers provided, recording every state it enters.
 */
import { type Actor, type AnyActorLogic, createActor, type InspectionEvent } from 'xstate';
import {
  allowedEndStates,
  type CaptureMachine,
  type CaptureResult,
  composeCaptureMachine,
  defaultEndStateOf,
  type EndState,
  effectNames,
  type ImageRef,
  type OsName,
  operatingSystems,
  type ProvisionerName,
  provisioners,
  type Timeouts,
} from '../../machines/index.js';
import { resolveTimeouts } from '../../machines/steps.js';
import type { DriverEnv } from '../drivers/env.js';
import { libvirtSteps } from '../drivers/libvirt.js';
import { osSteps } from '../drivers/os.js';
import { vmwareSteps } from '../drivers/vmware.js';
import { xcatSteps } from '../drivers/xcat.js';
import { VclError } from '../errors.js';
import { type Inventory, parseInventory } from '../inventory/schema.js';
import { type Logger, silentLogger } from '../log.js';
import { SshPool } from '../ssh/index.js';
import type { CaptureStore, ImageRegistration } from '../store/index.js';
import { Limiter } from './limits.js';
import { inventoryHosts, type Remote } from './remote.js';
import { boundStepActor, type StepFn } from './step.js';
import { storeSteps } from './store-steps.js';

export interface RunnerOptions {
  /** Validated here; an invalid inventory fails with INVALID_INVENTORY naming each wrong field. */
  inventory: unknown;
  store: CaptureStore;
  logger?: Logger;
  /** The transport (default: an SshPool the runner owns and closes). */
  remote?: Remote & { close?: () => Promise<void> | void };
  /** Passed to every capture actor: `@statelyai/inspect`'s `inspector.inspect`, or any observer. */
  inspect?: (event: InspectionEvent) => void;
  /** Interval of polling waits (default 2000 ms). */
  pollMs?: number;
}

/** What a runner tells its listeners: every capture's state changes, copy progress, and its end. */
export type RunnerEvent =
  | { type: 'queued'; captureId: string; computer: string; image: string }
  | { type: 'state'; captureId: string; state: unknown; step: string; atMs: number }
  | {
      type: 'progress';
      captureId: string;
      step: string;
      bytes: number;
      total?: number;
      bytesPerSecond: number;
    }
  | { type: 'finished'; captureId: string; result: CaptureResult };

export interface CaptureRequest {
  computer: string;
  /** A registered image id, or an image to register. */
  image: number | ImageRegistration;
  endState?: EndState;
  timeouts?: Partial<Timeouts>;
  /** Capture id (default: a random UUID). */
  id?: string;
}

export interface CaptureHandle {
  id: string;
  image: ImageRef;
  computer: string;
  /** The running actor; undefined while the capture waits for a slot. */
  readonly actor: Actor<CaptureMachine> | undefined;
  /** Settles with the typed result: completed, failed or cancelled. Never rejects for a capture failure. */
  result: Promise<CaptureResult>;
  /** Cancels: a queued capture ends at once, a running one runs its cleanup. */
  cancel(reason?: string): void;
}

export interface Runner {
  inventory: Inventory;
  capture(request: CaptureRequest): Promise<CaptureHandle>;
  /** Captures running or queued now. */
  active(): CaptureHandle[];
  /** Listens to every capture's events; returns the unsubscribe function. A listener never blocks a capture. */
  on(listener: (event: RunnerEvent) => void): () => void;
  /** Waits for nothing: cancels every capture, waits for their cleanup, closes the transport it owns. */
  close(): Promise<void>;
}

/** The copy steps share a per-host copy limit besides the capture limit. */
const COPY_STEPS = new Set(['copy_image', 'clone_disk', 'copy_to_repository', 'watch_upload']);

type AnyStepFn = StepFn<{ deadline: number; step: string }, unknown>;

/** One capture's drivers, by the names its machines invoke, and its logger. */
interface CaptureSteps {
  provisioner: Record<string, AnyStepFn>;
  os: Record<string, AnyStepFn>;
  log: Logger;
}

export function createRunner(options: RunnerOptions): Runner {
  const inventory = parseInventory(options.inventory);
  const hosts = inventoryHosts(inventory);
  const baseLog = options.logger ?? silentLogger();
  const ownsRemote = options.remote === undefined;
  const remote = options.remote ?? new SshPool({ logger: baseLog });
  const store = options.store;
  const captureSlots = new Limiter((key) =>
    key === '*' ? inventory.defaults.maxConcurrentCaptures : (inventory.hosts[key]?.maxCaptures ?? 5),
  );
  const copySlots = new Limiter((key) => inventory.hosts[key]?.maxCopies ?? 2);
  const handles = new Map<string, CaptureHandle>();
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
  // One composed machine per provisioner x OS, shared by every capture of this runner: composing one per
  // capture cost about 1.2 ms of CPU and 117 KiB of heap (docs/performance-scale.md). A step finds its
  // capture's drivers through the capture's actor system, which the capture's root actor and its OS child
  // share.
  const stepsBySystem = new WeakMap<object, CaptureSteps>();
  const machines = new Map<string, CaptureMachine>();
  const bound = (kind: 'provisioner' | 'os', name: string) =>
    boundStepActor<{ deadline: number; step: string }, unknown>(name, (system) => {
      const steps = stepsBySystem.get(system);
      const fn = steps?.[kind][name];
      if (!steps || !fn) throw new VclError('NOT_PROVIDED', `no driver for ${name}`, { step: name });
      return { fn, log: steps.log };
    });
  const sharedMachine = (provisioner: ProvisionerName, os: OsName): CaptureMachine => {
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
  const registered = store.registerComputers(Object.keys(inventory.computers).map((name) => ({ name })));

  async function capture(request: CaptureRequest): Promise<CaptureHandle> {
    await registered;
    const computer = inventory.computers[request.computer];
    if (!computer) {
      throw new VclError(
        'UNKNOWN_COMPUTER',
        `computer '${request.computer}' is not in the inventory; known: ${Object.keys(inventory.computers).join(', ')}`,
        { step: 'request' },
      );
    }
    const provisioner = computer.provisioner.type;
    const endState = request.endState ?? defaultEndStateOf(provisioner, computer.os);
    if (endState === undefined || !allowedEndStates(provisioner).includes(endState)) {
      throw new VclError(
        'INVALID_END_STATE',
        `${provisioner} cannot capture with end state '${request.endState}'; it allows ${allowedEndStates(provisioner).join(', ')}`,
        { step: 'request' },
      );
    }
    const timeouts = resolveTimeouts({
      ...inventory.defaults.timeouts,
      ...inventory.hosts[computer.provisioner.host]?.timeouts,
      ...computer.timeouts,
      ...request.timeouts,
    });
    // Fail at once, not after queueing: the reservation's compare-and-swap still decides any race.
    const queued = [...handles.values()].find((h) => h.computer === request.computer);
    const held = (await store.getComputer(request.computer))?.heldBy ?? queued?.id;
    if (held) {
      throw new VclError('COMPUTER_BUSY', `computer ${request.computer} is held by capture ${held}`, {
        step: 'request',
        details: { computer: request.computer, heldBy: held },
      });
    }
    const repository = inventory.repositories[computer.repository] as Inventory['repositories'][string];
    const imageId =
      typeof request.image === 'number' ? request.image : (await store.registerImage(request.image)).id;
    const record = await store.createCapture({
      ...(request.id ? { id: request.id } : {}),
      computer: request.computer,
      imageId,
      provisioner,
      os: computer.os,
      endState,
      repository: repository.path,
      reserve: false,
    });
    const log = baseLog.child({ captureId: record.id, computer: request.computer, image: record.image.name });
    log.info({ provisioner, os: computer.os, endState }, 'capture queued');
    emit({ type: 'queued', captureId: record.id, computer: request.computer, image: record.image.name });

    const env: DriverEnv = {
      remote,
      computerName: request.computer,
      computer,
      provisionerHost: hosts.get(computer.provisioner.host) as NonNullable<ReturnType<typeof hosts.get>>,
      guestHost: hosts.get(computer.host) as NonNullable<ReturnType<typeof hosts.get>>,
      repository: {
        host: hosts.get(repository.host) as NonNullable<ReturnType<typeof hosts.get>>,
        path: repository.path,
      },
      pollMs: options.pollMs ?? 2000,
      progress: (step, p) => emit({ type: 'progress', captureId: record.id, step, ...p }),
    };

    const cancelQueued = new AbortController();
    let actor: Actor<CaptureMachine> | undefined;
    let cancelReason: string | undefined;
    const handle: CaptureHandle = {
      id: record.id,
      image: record.image,
      computer: request.computer,
      get actor() {
        return actor;
      },
      result: undefined as unknown as Promise<CaptureResult>,
      cancel(reason?: string) {
        cancelReason = reason ?? 'cancelled';
        if (actor) actor.send({ type: 'CANCEL', reason: cancelReason });
        else cancelQueued.abort();
      },
    };
    handles.set(record.id, handle);

    handle.result = (async (): Promise<CaptureResult> => {
      const releases: (() => void)[] = [];
      try {
        try {
          // The host's slot first, then the global one: a global slot is then only ever held by a capture
          // that runs. The other way round, captures queued behind one busy host held the global slots
          // and left the other hosts idle (bench/scale.ts, 500 captures requested host by host: 166 s
          // against an ideal of 110 s; 113 s now).
          releases.push(await captureSlots.acquire(computer.provisioner.host, cancelQueued.signal));
          releases.push(await captureSlots.acquire('*', cancelQueued.signal));
        } catch {
          const error = {
            code: 'CANCELLED',
            step: 'queued',
            message: `cancelled while queued: ${cancelReason}`,
          };
          await store.cancelCapture(record.id, error, 'restore');
          log.info('capture cancelled while queued');
          const result: CaptureResult = {
            status: 'cancelled',
            captureId: record.id,
            image: record.image,
            error,
            warnings: [],
            cleanupFailures: [],
          };
          emit({ type: 'finished', captureId: record.id, result });
          return result;
        }
        const result = await run();
        emit({ type: 'finished', captureId: record.id, result });
        return result;
      } finally {
        for (const r of releases.reverse()) r();
        handles.delete(record.id);
      }
    })();

    async function run(): Promise<CaptureResult> {
      let warnings: unknown[] = [];
      let writes = Promise.resolve();
      const wrap = <I extends { deadline: number; step: string }, O>(
        name: string,
        fn: StepFn<I, O>,
      ): StepFn<I, O> => {
        const copyHost = COPY_STEPS.has(name) ? computer?.provisioner.host : undefined;
        return copyHost
          ? async (r) => {
              const release = await copySlots.acquire(copyHost, r.signal);
              try {
                return await fn(r);
              } finally {
                release();
              }
            }
          : fn;
      };
      const provisionerImpls: Record<string, StepFn<never, unknown>> = {
        ...storeSteps(
          store,
          () => warnings,
          () => writes,
        ),
        ...(provisioner === 'libvirt'
          ? libvirtSteps(env)
          : provisioner === 'vmware'
            ? vmwareSteps(env)
            : xcatSteps(env)),
      };
      const osImpls = osSteps(env);
      const missing = [
        ...effectNames(provisioners[provisioner].machine).filter(
          (n) => n !== 'os' && !(n in provisionerImpls),
        ),
        ...effectNames(operatingSystems[computer?.os ?? 'linux'].machine).filter((n) => !(n in osImpls)),
      ];
      if (missing.length) throw new VclError('NOT_PROVIDED', `no driver for ${missing.join(', ')}`);
      const steps: CaptureSteps = {
        provisioner: Object.fromEntries(
          Object.entries(provisionerImpls).map(([n, f]) => [n, wrap(n, f as AnyStepFn)]),
        ),
        os: Object.fromEntries(Object.entries(osImpls).map(([n, f]) => [n, wrap(n, f as AnyStepFn)])),
        log,
      };
      const machine = sharedMachine(provisioner, env.computer.os);
      const a = createActor(machine, {
        input: {
          captureId: record.id,
          computer: request.computer,
          os: env.computer.os,
          image: record.image,
          endState,
          ...(env.computer.sysprep === undefined ? {} : { sysprep: env.computer.sysprep }),
          timeouts,
        },
        ...(options.inspect ? { inspect: options.inspect } : {}),
      });
      stepsBySystem.set(a.system, steps);
      actor = a;
      let last = '';
      let enteredAt = Date.now();
      const done = new Promise<CaptureResult>((resolve, reject) => {
        a.subscribe({
          next: (s) => {
            warnings = s.context.warnings;
            const value = JSON.stringify(s.value);
            if (value === last) return;
            const now = Date.now();
            if (last) log.info({ state: JSON.parse(last), durationMs: now - enteredAt }, 'state left');
            log.info({ state: s.value }, 'state entered');
            last = value;
            enteredAt = now;
            emit({ type: 'state', captureId: record.id, state: s.value, step: s.context.step, atMs: now });
            const stateValue = s.value;
            const snapshot = a.getPersistedSnapshot();
            // Finished captures are closed by their last step's own transaction.
            if (s.status === 'active') {
              writes = writes
                .then(() =>
                  store.recordTransition(record.id, {
                    stateValue,
                    snapshot,
                    event: { type: 'state.entered', step: s.context.step },
                  }),
                )
                .then(
                  () => undefined,
                  (err: unknown) => log.error({ err }, 'could not record a transition'),
                );
            }
            if (s.status === 'done') resolve(s.output as CaptureResult);
          },
          error: reject,
        });
      });
      if (cancelQueued.signal.aborted)
        a.start().send({ type: 'CANCEL', reason: cancelReason ?? 'cancelled' });
      else a.start();
      const result = await done;
      await writes;
      // A machine that ended without its closing transaction (reservation refused, release failed):
      // close the capture here so no record stays running.
      const after = await store.getCapture(record.id);
      if (after && (after.status === 'running' || after.status === 'queued')) {
        const error =
          result.status === 'completed'
            ? { code: 'STEP_FAILED', step: 'record_revision', message: 'completed without a record' }
            : result.error;
        const outcome =
          result.status === 'cancelled' && !a.getSnapshot().context.osTouched ? 'restore' : 'maintenance';
        await (result.status === 'cancelled'
          ? store.cancelCapture(record.id, error, outcome)
          : store.failCapture(record.id, error, outcome));
      }
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

    return handle;
  }

  return {
    inventory,
    capture,
    active: () => [...handles.values()],
    on(listener) {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    async close() {
      const pending = [...handles.values()];
      for (const h of pending) h.cancel('runner closing');
      await Promise.allSettled(pending.map((h) => h.result));
      if (ownsRemote) await (remote as SshPool).close();
    },
  };
}
