/**
 * What every provisioner (capture) machine shares: its context, the effects it names, the CANCEL event,
 * and the cleanup that undoes, in reverse order, what the forward steps did.
 *
 * A provisioner machine is one capture. Its forward steps live in the compound state `capturing`; the
 * provisioner-specific sequence is written out in each provisioner's module. Cleanup is a stack of
 * compensations: a forward step pushes the compensation that undoes it when it starts (a step interrupted
 * half-way may have done part of its work), and `cleanup` pops them, newest first.
 *
 * Every forward step says whether it touches the computer (`touches` in its `meta.step`, like its effect
 * and timeout): checks, the reservation and the boot setting xCAT undoes itself do not; the OS
 * sub-machine's changing steps, power commands and copies do. `touched` in the context is set when a
 * touching step starts (the OS sub-machine reports its own), and when an undo fails. The last undo,
 * the computer's release, is chosen by one guard, `computerUntouched`: an untouched computer goes back
 * to the state it was reserved from (`restore_computer`), a touched one to maintenance
 * (`release_computer`), whether the capture failed or was cancelled.
 */
import { assign, setup } from 'xstate';
import type { OsMachine } from '../os/os-machine.js';
import {
  type Deadlines,
  deadlineOf,
  errorCode,
  placeholder,
  resolveTimeouts,
  type StepMeta,
  toFailure,
  toWarning,
  withDeadline,
} from '../steps.js';
import {
  type CaptureInput,
  type CaptureResult,
  DEFAULT_TIMEOUTS,
  type EndState,
  FAILURE_CODES,
  type ImageArtifact,
  type ImageRef,
  type OsInput,
  type OsName,
  type OsResult,
  type ProvisionerName,
  type ReleaseOutcome,
  type StepFailure,
  type StepKind,
  type StepWarning,
  type TimeoutName,
  type Timeouts,
} from '../types.js';

/** Facts a step learns and later steps need (disk path, VM id, ...). Persisted with the snapshot. */
export type Facts = Record<string, string | number | boolean>;

/** What every provisioner step receives. */
export interface CaptureStepInput {
  step: string;
  captureId: string;
  provisioner: ProvisionerName;
  computer: string;
  os: OsName;
  image: ImageRef;
  endState: EndState;
  /** Epoch ms after which the step must give up with code `TIMEOUT`. */
  deadline: number;
  timeouts: Timeouts;
  facts: Facts;
  /** The copy made so far (after `copy`), verified after `verify`. */
  artifact?: ImageArtifact;
  /** `release_computer` only: how the computer is handed back, and why. */
  release?: { outcome: ReleaseOutcome; error: StepFailure };
}

export interface CaptureStepOutput {
  facts?: Facts;
  artifact?: ImageArtifact;
}

export type CaptureStepLogic = ReturnType<typeof placeholder<CaptureStepOutput, CaptureStepInput>>;

export interface CaptureContext {
  captureId: string;
  provisioner: ProvisionerName;
  computer: string;
  os: OsName;
  image: ImageRef;
  endState: EndState;
  sysprep: boolean;
  provisionerWatchesReturn: boolean;
  timeouts: Timeouts;
  deadlines: Deadlines;
  /** The forward step in progress (or last started): where a CANCEL or failure happened. */
  step: string;
  facts: Facts;
  artifact: ImageArtifact | undefined;
  warnings: StepWarning[];
  error: StepFailure | undefined;
  cancelled: boolean;
  /**
   * True once a step that touches the computer started, or an undo failed: a capture that ends without
   * an image then sends the computer to maintenance; until then it hands it back as it was.
   */
  touched: boolean;
  /** Compensations still owed, newest last. */
  compensations: string[];
  cleanupFailures: StepFailure[];
  /** VMware: one repair-and-retry of the clone. */
  repairAttempted: boolean;
}

export type CaptureEvent = { type: 'CANCEL'; reason?: string };

/** What a provisioner declares about itself. */
export interface ProvisionerSpec {
  name: ProvisionerName;
  /** End states this provisioner can work with; the first is its default. */
  endStates: readonly [EndState, ...EndState[]];
  /** Reboot end state: the provisioner watches the computer come back itself. */
  watchesReturn: boolean;
  /** Default for Windows sysprep (VCL: never on VMware, off on libvirt). */
  sysprepByDefault: boolean;
  /** A different default end state for an OS (xCAT + Windows: `off`, see xcat.ts). */
  endStateFor?: Partial<Record<OsName, EndState>>;
}

/** The end state a capture gets when its request names none. */
export function defaultEndState(spec: ProvisionerSpec, os: OsName): EndState {
  return spec.endStateFor?.[os] ?? spec.endStates[0];
}

export function initialCaptureContext(spec: ProvisionerSpec, input: CaptureInput): CaptureContext {
  const endState = input.endState ?? defaultEndState(spec, input.os);
  if (!spec.endStates.includes(endState)) {
    throw new RangeError(
      `provisioner ${spec.name} cannot capture with end state '${endState}'; it allows: ${spec.endStates.join(', ')}`,
    );
  }
  return {
    captureId: input.captureId,
    provisioner: spec.name,
    computer: input.computer,
    os: input.os,
    image: input.image,
    endState,
    sysprep: input.os === 'windows' && (input.sysprep ?? spec.sysprepByDefault),
    provisionerWatchesReturn: spec.watchesReturn,
    timeouts: resolveTimeouts(input.timeouts),
    deadlines: {},
    step: 'reserve',
    facts: {},
    artifact: undefined,
    warnings: [],
    error: undefined,
    cancelled: false,
    touched: false,
    compensations: [],
    cleanupFailures: [],
    repairAttempted: false,
  };
}

export function captureResult(context: CaptureContext): CaptureResult {
  const base = { captureId: context.captureId, image: context.image, warnings: context.warnings };
  if (context.cancelled || context.error || !context.artifact) {
    return {
      ...base,
      status: context.cancelled ? 'cancelled' : 'failed',
      error: context.error ?? {
        code: FAILURE_CODES.STEP_FAILED,
        step: context.step,
        message: 'capture ended without an image',
      },
      cleanupFailures: context.cleanupFailures,
    };
  }
  return { ...base, status: 'completed', artifact: context.artifact };
}

/** How a capture that ends now without an image hands its computer back: the one rule, see `touched`. */
export function releaseOutcome(context: Pick<CaptureContext, 'touched'>): ReleaseOutcome {
  return context.touched ? 'maintenance' : 'restore';
}

/**
 * A persisted capture snapshot written by an earlier version gets what its context lacks: `touched` from
 * the field it replaces, `osTouched` (the same flag then: every touching step came after the OS
 * sub-machine started), and timeouts added since (`bootTestMs`) their defaults, so a resumed capture
 * that reaches such a step arms a real deadline. Returns the snapshot unchanged when it needs nothing.
 */
export function upgradeCaptureSnapshot(snapshot: unknown): unknown {
  const context = (snapshot as { context?: Record<string, unknown> } | null)?.context;
  if (typeof context !== 'object' || context === null) return snapshot;
  const timeouts = context.timeouts;
  const missing =
    typeof timeouts === 'object' && timeouts !== null
      ? (Object.keys(DEFAULT_TIMEOUTS) as TimeoutName[]).filter((k) => !(k in timeouts))
      : [];
  if ('touched' in context && missing.length === 0) return snapshot;
  let upgraded: Record<string, unknown> = context;
  if (!('touched' in context)) {
    const { osTouched, ...rest } = context;
    upgraded = { ...rest, touched: osTouched !== false };
  }
  if (missing.length > 0)
    upgraded = {
      ...upgraded,
      timeouts: {
        ...Object.fromEntries(missing.map((k) => [k, DEFAULT_TIMEOUTS[k]])),
        ...(timeouts as object),
      },
    };
  return { ...(snapshot as object), context: upgraded };
}

function stepInput(
  context: CaptureContext,
  step: string,
  outcome: ReleaseOutcome = releaseOutcome(context),
): CaptureStepInput {
  return {
    step,
    captureId: context.captureId,
    provisioner: context.provisioner,
    computer: context.computer,
    os: context.os,
    image: context.image,
    endState: context.endState,
    deadline: deadlineOf(context.deadlines, step),
    timeouts: context.timeouts,
    facts: context.facts,
    ...(context.artifact ? { artifact: context.artifact } : {}),
    ...(step === 'release_computer'
      ? {
          release: {
            outcome,
            error: context.error ?? {
              code: FAILURE_CODES.STEP_FAILED,
              step: context.step,
              message: 'failed',
            },
          },
        }
      : {}),
  };
}

/** The OS sub-machine placeholder: `machines/index.ts` provides the OS module the computer runs. */
const osPlaceholder = placeholder<OsResult, OsInput>('os');

/**
 * The setup every provisioner machine is created from. `stepIds` names the provisioner's own effects
 * (forward steps and compensations); each becomes a typed placeholder the runner replaces.
 */
export function captureSetup(stepIds: readonly string[]) {
  const steps: Record<string, CaptureStepLogic> = Object.fromEntries(
    stepIds.map((id) => [id, placeholder<CaptureStepOutput, CaptureStepInput>(id)]),
  );
  return setup({
    types: {
      context: {} as CaptureContext,
      input: {} as CaptureInput,
      events: {} as CaptureEvent,
      output: {} as CaptureResult,
    },
    // One index-signature record: xstate's typing drops string-keyed actors when mixed with literal keys.
    actors: { ...steps, os: osPlaceholder } as Record<
      string,
      CaptureStepLogic | typeof osPlaceholder | OsMachine
    >,
    actions: {
      /**
       * Every forward step starts here: stamp its deadline, note it as the current step, and note that
       * the computer is touched if the step touches it.
       */
      beginStep: assign(
        (
          { context },
          params: { step: string; timeout: TimeoutName; touches: boolean; compensation?: string },
        ) => ({
          step: params.step,
          touched: context.touched || params.touches,
          deadlines: withDeadline(
            context.deadlines,
            context.timeouts,
            params.step,
            params.timeout,
            Date.now(),
          ),
          compensations:
            params.compensation && !context.compensations.includes(params.compensation)
              ? [...context.compensations, params.compensation]
              : context.compensations,
        }),
      ),
      armDeadline: assign(({ context }, params: { step: string; timeout: TimeoutName }) => ({
        deadlines: withDeadline(context.deadlines, context.timeouts, params.step, params.timeout, Date.now()),
      })),
      mergeOutput: assign(({ context, event }) => {
        const output = (event as { output?: CaptureStepOutput }).output ?? {};
        return {
          facts: output.facts ? { ...context.facts, ...output.facts } : context.facts,
          artifact: output.artifact ?? context.artifact,
        };
      }),
      recordFailure: assign(({ context, event }) => ({
        error: context.error ?? toFailure((event as { error?: unknown }).error, context.step),
      })),
      recordWarning: assign(({ context, event }) => ({
        warnings: [...context.warnings, toWarning((event as { error?: unknown }).error, context.step)],
      })),
      /** The OS sub-machine was stopped or crashed: whether it touched the computer is unknown. */
      markTouched: assign({ touched: true }),
      recordOsResult: assign(({ context, event }) => {
        const result = (event as { output?: OsResult }).output;
        if (!result) return { touched: true };
        return {
          touched: context.touched || result.touched !== false,
          warnings: [...context.warnings, ...result.warnings],
          error: result.ok ? context.error : (context.error ?? result.error),
          facts: result.ok
            ? {
                ...context.facts,
                osPowerState: result.powerState,
                ...(result.bootId === undefined ? {} : { bootId: result.bootId }),
              }
            : context.facts,
        };
      }),
      markCancelled: assign(({ context, event }) => ({
        cancelled: true,
        error: {
          code: FAILURE_CODES.CANCELLED,
          step: context.step,
          message: `cancelled during ${context.step}${event.type === 'CANCEL' && event.reason ? `: ${event.reason}` : ''}`,
        },
      })),
      markRepairAttempted: assign({ repairAttempted: true }),
      /** A compensation is no longer owed (done, or settled by a forward step). */
      settle: assign(({ context }, params: { compensation: string }) => ({
        compensations: context.compensations.filter((c) => c !== params.compensation),
      })),
      /** An undo that failed may have left the computer changed: it counts as touched. */
      recordCleanupFailure: assign(({ context, event }, params: { step: string }) => ({
        touched: true,
        cleanupFailures: [
          ...context.cleanupFailures,
          toFailure((event as { error?: unknown }).error, params.step),
        ],
      })),
    },
    guards: {
      failedWith: ({ event }, params: { code: string }) =>
        errorCode((event as { error?: unknown }).error) === params.code,
      osFailed: ({ event }) => (event as { output?: OsResult }).output?.ok !== true,
      nextCompensationIs: ({ context }, params: { compensation: string }) =>
        context.compensations.at(-1) === params.compensation,
      wasCancelled: ({ context }) => context.cancelled,
      /**
       * The one rule for a capture that ends without an image: when the computer's release is all that
       * is left to undo and nothing touched the computer, it goes back to the state it was reserved from.
       */
      computerUntouched: ({ context }, params: { compensation: string }) =>
        context.compensations.at(-1) === params.compensation && releaseOutcome(context) === 'restore',
      endStateIs: ({ context }, params: { endState: EndState }) => context.endState === params.endState,
      /** The computer's inventory asks for a boot test of its images (its check step's `bootTest` fact). */
      bootTestEnabled: ({ context }) => context.facts.bootTest === true,
      mayRepairOnce: ({ context, event }) =>
        !context.repairAttempted &&
        errorCode((event as { error?: unknown }).error) === FAILURE_CODES.NEEDS_REPAIR,
    },
  });
}

type CaptureSetup = ReturnType<typeof captureSetup>;
type StateConfig = NonNullable<Parameters<CaptureSetup['createMachine']>[0]['states']>[string];
/** Invoke config of a provisioner step (every actor but the OS sub-machine). */
type InvokeConfig = Extract<NonNullable<StateConfig['invoke']>, { src: unknown }>;

export interface ForwardStepOptions<TStep extends string> {
  kind?: StepKind;
  title: string;
  effect: string;
  /** Whether starting the step touches the computer (see `CaptureContext.touched`); always decided. */
  touches: boolean;
  timeout?: TimeoutName;
  /** Where success goes. */
  next: string;
  /** The compensation this step makes owed as soon as it starts. */
  compensation?: TStep;
  /** Overrides (escalations, retries); a failure otherwise goes to cleanup. */
  onDone?: NonNullable<InvokeConfig['onDone']>;
  onError?: NonNullable<InvokeConfig['onError']>;
  /** Actions after the default `mergeOutput` on success. */
  doneActions?: readonly { type: 'settle'; params: { compensation: TStep } }[];
}

/**
 * Builders for the states every provisioner shares, bound to that provisioner's setup so the generated
 * configs are type-checked like literal ones.
 */
export function captureStates<TStep extends string>(machineId: ProvisionerName) {
  const cleanup = `#${machineId}.cleanup`;
  /** The release every capture owes from its reservation, and the state that releases without maintenance. */
  const RELEASE = 'release_computer' as TStep;
  const RESTORE = 'restore_computer';

  function forwardStep(id: TStep, o: ForwardStepOptions<TStep>): StateConfig {
    const meta: { step: StepMeta } = {
      step: {
        kind: o.kind ?? 'critical',
        title: o.title,
        timeout: o.timeout ?? 'commandMs',
        effect: o.effect,
        touches: o.touches,
      },
    };
    return {
      meta,
      entry: {
        type: 'beginStep',
        params: {
          step: id,
          timeout: o.timeout ?? 'commandMs',
          touches: o.touches,
          ...(o.compensation ? { compensation: o.compensation } : {}),
        },
      },
      invoke: {
        id: id as string,
        src: id as string,
        input: ({ context }) => stepInput(context, id),
        onDone: o.onDone ?? { target: o.next, actions: ['mergeOutput', ...(o.doneActions ?? [])] },
        onError: o.onError ?? { target: cleanup, actions: 'recordFailure' },
      },
    };
  }

  /**
   * The OS sub-machine, asked for the end state this capture needs. Its own steps say whether they touch
   * the computer (its first, `ensure_responding`, only looks) and its result reports it; a CANCEL while
   * it runs cannot know, so it counts as touched. `when` sends success elsewhere for one end state (xCAT
   * points the node at its image after an `off`); `compensation` is made owed when it starts.
   */
  function preCapture(
    next: string,
    when?: { endState: EndState; target: string },
    compensation?: TStep,
  ): StateConfig {
    const meta: { step: StepMeta } = {
      step: {
        kind: 'critical',
        title: 'OS pre_capture (sub-machine; touches from its first changing step)',
        timeout: 'commandMs',
        effect: 'os',
        touches: false,
      },
    };
    return {
      meta,
      entry: {
        type: 'beginStep',
        params: {
          step: 'pre_capture',
          timeout: 'commandMs',
          touches: false,
          ...(compensation ? { compensation } : {}),
        },
      },
      on: { CANCEL: { target: cleanup, actions: ['markTouched', 'markCancelled'] } },
      invoke: {
        id: 'os',
        src: 'os',
        input: ({ context }): OsInput => ({
          computer: context.computer,
          image: context.image,
          endState: context.endState,
          provisionerWatchesReturn: context.provisionerWatchesReturn,
          sysprep: context.sysprep,
          timeouts: context.timeouts,
        }),
        onDone: [
          { guard: 'osFailed', target: cleanup, actions: 'recordOsResult' },
          ...(when
            ? [
                {
                  guard: { type: 'endStateIs' as const, params: { endState: when.endState } },
                  target: when.target,
                  actions: 'recordOsResult' as const,
                },
              ]
            : []),
          { target: next, actions: 'recordOsResult' },
        ],
        onError: { target: cleanup, actions: ['markTouched', 'recordFailure'] },
      },
    };
  }

  /**
   * Reverse-order cleanup: `route` pops the newest owed compensation until none is left, then the
   * capture ends `cancelled` or `failed`. A compensation that fails is recorded and cleanup goes on.
   */
  function cleanupState(compensations: readonly TStep[]): StateConfig {
    const states: Record<string, StateConfig> = {
      route: {
        always: [
          ...compensations.flatMap((c) => [
            ...(c === RELEASE
              ? [
                  {
                    guard: { type: 'computerUntouched' as const, params: { compensation: c } },
                    target: RESTORE,
                  },
                ]
              : []),
            {
              guard: { type: 'nextCompensationIs' as const, params: { compensation: c } },
              target: c,
            },
          ]),
          { guard: 'wasCancelled' as const, target: `#${machineId}.cancelled` },
          { target: `#${machineId}.failed` },
        ],
      },
    };
    const undo = (c: TStep, title: string, outcome?: ReleaseOutcome): StateConfig => {
      const meta: { step: StepMeta } = {
        step: { kind: 'advisory', title, timeout: 'commandMs', effect: 'cleanup', touches: false },
      };
      return {
        meta,
        entry: { type: 'armDeadline', params: { step: c, timeout: 'commandMs' } },
        invoke: {
          id: c as string,
          src: c as string,
          input: ({ context }) => stepInput(context, c, outcome),
          onDone: { target: 'route', actions: { type: 'settle', params: { compensation: c } } },
          onError: {
            target: 'route',
            actions: [
              { type: 'recordCleanupFailure', params: { step: c } },
              { type: 'settle', params: { compensation: c } },
            ],
          },
        },
      };
    };
    for (const c of compensations) {
      states[c] =
        c === RELEASE
          ? undo(c, 'Undo: release_computer to maintenance (the computer was touched)', 'maintenance')
          : undo(c, `Undo: ${c}`);
      if (c === RELEASE)
        states[RESTORE] = undo(
          c,
          'Undo: release_computer back to the state it was reserved from (nothing touched it)',
          'restore',
        );
    }
    return {
      description:
        'Undo what was done, newest first; the computer goes to maintenance (or back, if untouched)',
      initial: 'route',
      states,
    };
  }

  const finals = {
    completed: { type: 'final', output: { status: 'completed' } },
    failed: { type: 'final', output: { status: 'failed' } },
    cancelled: { type: 'final', output: { status: 'cancelled' } },
  } as const satisfies Record<string, StateConfig>;

  /**
   * The reservation every capture starts with. Its compensation (release) is owed from the start; a
   * refused reservation took nothing, so it ends the capture at once with nothing to release.
   */
  function reserveStep(next: string): StateConfig {
    return forwardStep('reserve' as TStep, {
      title: 'Reserve the computer (compare-and-swap) and create the image revision',
      effect: 'reserve',
      touches: false,
      next,
      compensation: RELEASE,
      onError: {
        target: `#${machineId}.failed`,
        actions: ['recordFailure', { type: 'settle', params: { compensation: 'release_computer' } }],
      },
    });
  }

  /**
   * Graceful power off with escalation: request, wait (a TIMEOUT is a warning and escalates), force,
   * wait again; both waits go on to `next`.
   */
  function powerOffSteps(
    next: string,
    titles: { request: string; wait: string; force: string; waitForced: string },
  ): Record<'request_power_off' | 'wait_power_off' | 'force_power_off' | 'wait_forced_off', StateConfig> {
    return {
      request_power_off: forwardStep('request_power_off' as TStep, {
        title: titles.request,
        effect: 'power',
        touches: true,
        next: 'wait_power_off',
      }),
      wait_power_off: forwardStep('wait_power_off' as TStep, {
        title: titles.wait,
        effect: 'power',
        touches: true,
        timeout: 'powerOffMs',
        next,
        onError: [
          {
            guard: { type: 'failedWith', params: { code: 'TIMEOUT' } },
            target: 'force_power_off',
            actions: 'recordWarning',
          },
          { target: cleanup, actions: 'recordFailure' },
        ],
      }),
      force_power_off: forwardStep('force_power_off' as TStep, {
        title: titles.force,
        effect: 'power',
        touches: true,
        next: 'wait_forced_off',
      }),
      wait_forced_off: forwardStep('wait_forced_off' as TStep, {
        title: titles.waitForced,
        effect: 'power',
        touches: true,
        timeout: 'forcedOffMs',
        next,
      }),
    };
  }

  return { forwardStep, preCapture, cleanupState, finals, reserveStep, powerOffSteps };
}
