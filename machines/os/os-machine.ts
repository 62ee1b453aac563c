/**
 * The OS sub-machine: VCL's `pre_capture(end_state)` as explicit steps. One builder makes every OS module
 * from its step table, so Linux and Windows differ only in their steps and in whether sysprep carries out
 * the end state.
 */
import { assign, setup } from 'xstate';
import {
  type Deadlines,
  deadlineOf,
  placeholder,
  resolveTimeouts,
  type StepMeta,
  toFailure,
  toWarning,
  withDeadline,
} from '../steps.js';
import {
  type EndState,
  FAILURE_CODES,
  type ImageRef,
  type OsInput,
  type OsName,
  type OsPowerState,
  type OsResult,
  type StepFailure,
  type StepKind,
  type StepWarning,
  type TimeoutName,
  type Timeouts,
} from '../types.js';

/** What every OS step receives from the machine. */
export interface OsStepInput {
  step: string;
  os: OsName;
  computer: string;
  image: ImageRef;
  endState: EndState;
  sysprep: boolean;
  /** Epoch ms after which the step must give up with code `TIMEOUT`. */
  deadline: number;
  /** Boot id seen when the computer first answered: a reboot is detected by its change. */
  bootId?: string;
  timeouts: Timeouts;
}

/** What an OS step may report back. */
export interface OsStepOutput {
  bootId?: string;
  /** The step does not apply on this computer (tool absent, nothing to do): recorded as a warning. */
  notApplicable?: string;
}

export interface OsStepSpec {
  id: string;
  kind: StepKind;
  title: string;
  timeout?: TimeoutName;
  /**
   * Whether the step touches the computer (changes something on it). Default true; a read-only check
   * (`ensure_responding`) does not, so a computer that refuses us there is handed back as it was.
   */
  touches?: boolean;
}

export interface OsContext {
  os: OsName;
  computer: string;
  image: ImageRef;
  endState: EndState;
  provisionerWatchesReturn: boolean;
  sysprep: boolean;
  timeouts: Timeouts;
  deadlines: Deadlines;
  bootId: string | undefined;
  powerState: OsPowerState | undefined;
  warnings: StepWarning[];
  error: StepFailure | undefined;
  /** True once a step that touches the computer started (reported to the provisioner in the result). */
  touched: boolean;
}

/** Steps every OS module runs first (docs/capture-flow.md, "OS modules": common first steps). */
export const COMMON_FIRST_STEPS: readonly OsStepSpec[] = [
  {
    id: 'ensure_responding',
    kind: 'critical',
    title: 'Make sure the computer answers',
    timeout: 'respondMs',
    // Only connects and reads the boot id: nothing on the computer changes.
    touches: false,
  },
  { id: 'write_metadata', kind: 'critical', title: 'Write the image metadata file' },
  { id: 'run_stage_scripts', kind: 'advisory', title: 'Run pre_capture stage scripts' },
];

/** The end-state steps, identical for every OS except for sysprep. */
const END_STATE_STEPS = {
  sysprep: {
    kind: 'critical',
    title: 'Generalise with sysprep and end in the requested state',
    timeout: 'sysprepMs',
  },
  shutdown: { kind: 'critical', title: 'Shut down', timeout: 'commandMs' },
  reboot: { kind: 'critical', title: 'Reboot', timeout: 'commandMs' },
  wait_gone: { kind: 'advisory', title: 'Wait until the computer stops answering', timeout: 'osShutdownMs' },
  wait_down: { kind: 'critical', title: 'Wait until the computer has gone down', timeout: 'rebootDownMs' },
  wait_up: {
    kind: 'critical',
    title: 'Wait until the computer answers with a new boot id',
    timeout: 'rebootUpMs',
  },
  confirm_on: { kind: 'critical', title: 'Confirm the computer still answers', timeout: 'respondMs' },
} as const satisfies Record<string, Omit<OsStepSpec, 'id'>>;
type EndStateStep = keyof typeof END_STATE_STEPS;

function stepMeta(spec: Omit<OsStepSpec, 'id'>, effect: string): { step: StepMeta } {
  return {
    step: {
      kind: spec.kind,
      title: spec.title,
      timeout: spec.timeout ?? 'commandMs',
      effect,
      touches: spec.touches ?? true,
    },
  };
}

export interface OsMachineSpec {
  id: OsName;
  steps: readonly OsStepSpec[];
  /** Whether this OS can carry out the end state with sysprep (Windows). */
  supportsSysprep: boolean;
}

export function createOsMachine(spec: OsMachineSpec) {
  const ids = spec.steps.map((s) => s.id);
  const clash = ids.find((id, i) => ids.indexOf(id) !== i || id in END_STATE_STEPS);
  if (clash) throw new Error(`OS machine ${spec.id}: step id ${clash} is used twice`);
  const endStateIds = (Object.keys(END_STATE_STEPS) as EndStateStep[]).filter(
    (id) => spec.supportsSysprep || id !== 'sysprep',
  );

  const actors = Object.fromEntries(
    [...ids, ...endStateIds].map((id) => [id, placeholder<OsStepOutput, OsStepInput>(id)]),
  );

  const machineSetup = setup({
    types: {
      context: {} as OsContext,
      input: {} as OsInput,
      output: {} as OsResult,
    },
    actors,
    actions: {
      armDeadline: assign(
        (
          { context },
          params: {
            step: string;
            timeout: TimeoutName;
            sysprepTimeout?: TimeoutName | undefined;
            touches?: boolean;
          },
        ) => ({
          touched: context.touched || params.touches === true,
          deadlines: withDeadline(
            context.deadlines,
            context.timeouts,
            params.step,
            context.sysprep && params.sysprepTimeout ? params.sysprepTimeout : params.timeout,
            Date.now(),
          ),
        }),
      ),
      noteOutput: assign(({ context, event }, params: { step: string }) => {
        const output = (event as { output?: OsStepOutput }).output ?? {};
        return {
          bootId: output.bootId ?? context.bootId,
          warnings: output.notApplicable
            ? [
                ...context.warnings,
                { step: params.step, code: 'NOT_APPLICABLE', message: output.notApplicable },
              ]
            : context.warnings,
        };
      }),
      recordWarning: assign(({ context, event }, params: { step: string }) => ({
        warnings: [...context.warnings, toWarning((event as { error?: unknown }).error, params.step)],
      })),
      recordFailure: assign(({ event }, params: { step: string }) => ({
        error: toFailure((event as { error?: unknown }).error, params.step),
      })),
      setPowerState: assign((_, params: { powerState: OsPowerState }) => ({ powerState: params.powerState })),
    },
    guards: {
      endStateIs: ({ context }, params: { endState: EndState }) => context.endState === params.endState,
      useSysprep: ({ context }) => context.sysprep,
      provisionerWatchesReturn: ({ context }) => context.provisionerWatchesReturn,
      failedWith: ({ event }, params: { code: string }) =>
        toFailure((event as { error?: unknown }).error, '').code === params.code,
    },
  });

  const failed = `#${spec.id}.failed`;
  const done = `#${spec.id}.done`;

  function input(step: string) {
    return ({ context }: { context: OsContext }): OsStepInput => ({
      step,
      os: context.os,
      computer: context.computer,
      image: context.image,
      endState: context.endState,
      sysprep: context.sysprep,
      deadline: deadlineOf(context.deadlines, step),
      ...(context.bootId === undefined ? {} : { bootId: context.bootId }),
      timeouts: context.timeouts,
    });
  }

  // The config types of this very setup, so dynamically built states are checked like literal ones.
  type StateConfig = NonNullable<Parameters<typeof machineSetup.createMachine>[0]['states']>[string];
  type InvokeConfig = Extract<NonNullable<StateConfig['invoke']>, { src: unknown }>;
  type OnDone = NonNullable<InvokeConfig['onDone']>;
  type OnError = NonNullable<InvokeConfig['onError']>;
  interface StepOptions {
    next: string;
    kind: StepKind;
    timeout: TimeoutName;
    /** A different timeout when sysprep carries out the end state. */
    sysprepTimeout?: TimeoutName;
    meta: { step: StepMeta };
    onDone?: OnDone;
    onError?: OnError;
  }

  /** One invoked step; `next` is where success (and an advisory failure) goes. */
  function stepState(id: string, o: StepOptions): StateConfig {
    return {
      entry: {
        type: 'armDeadline',
        params: {
          step: id,
          timeout: o.timeout,
          sysprepTimeout: o.sysprepTimeout,
          touches: o.meta.step.touches,
        },
      },
      meta: o.meta,
      invoke: {
        id,
        src: id,
        input: input(id),
        onDone: o.onDone ?? { target: o.next, actions: { type: 'noteOutput', params: { step: id } } },
        onError:
          o.onError ??
          (o.kind === 'critical'
            ? { target: failed, actions: { type: 'recordFailure', params: { step: id } } }
            : { target: o.next, actions: { type: 'recordWarning', params: { step: id } } }),
      },
    };
  }

  const prepareStates = Object.fromEntries(
    spec.steps.map((s, i) => [
      s.id,
      stepState(s.id, {
        next: spec.steps[i + 1]?.id ?? 'end_state',
        kind: s.kind,
        timeout: s.timeout ?? 'commandMs',
        meta: stepMeta(s, 'os'),
      }),
    ]),
  );

  const endStep = (id: EndStateStep, next: string, more: Partial<StepOptions> = {}) => {
    const s = END_STATE_STEPS[id];
    return stepState(id, { next, kind: s.kind, timeout: s.timeout, meta: stepMeta(s, 'power'), ...more });
  };
  /** Success of a step that ends the end state: keep what it reported, note the power state reached. */
  const finish = (step: EndStateStep, powerState: OsPowerState, guard?: 'provisionerWatchesReturn') => ({
    target: done,
    ...(guard ? { guard } : {}),
    actions: [
      { type: 'noteOutput', params: { step } } as const,
      { type: 'setPowerState', params: { powerState } } as const,
    ],
  });

  const endStateStates: Record<string, StateConfig> = {
    choose: {
      always: [
        ...(spec.supportsSysprep ? [{ guard: 'useSysprep' as const, target: 'sysprep' }] : []),
        { guard: { type: 'endStateIs', params: { endState: 'off' } }, target: 'shutdown' },
        { guard: { type: 'endStateIs', params: { endState: 'reboot' } }, target: 'reboot' },
        { target: 'confirm_on' },
      ],
    },
    ...(spec.supportsSysprep
      ? {
          sysprep: endStep('sysprep', 'after_sysprep'),
          after_sysprep: {
            always: [
              { guard: { type: 'endStateIs', params: { endState: 'off' } }, target: 'wait_gone' },
              { guard: { type: 'endStateIs', params: { endState: 'reboot' } }, target: 'wait_down' },
              { target: 'confirm_on' },
            ],
          },
        }
      : {}),
    shutdown: endStep('shutdown', 'wait_gone'),
    reboot: endStep('reboot', 'wait_down'),
    wait_gone: endStep('wait_gone', done, {
      sysprepTimeout: 'sysprepMs',
      onDone: finish('wait_gone', 'off'),
      // VCL: an OS that still answers is not a failure; the provisioner forces the power off.
      onError: [
        {
          guard: { type: 'failedWith', params: { code: FAILURE_CODES.TIMEOUT } },
          target: done,
          actions: [
            { type: 'recordWarning', params: { step: 'wait_gone' } },
            { type: 'setPowerState', params: { powerState: 'shutting_down' } },
          ],
        },
        { target: failed, actions: { type: 'recordFailure', params: { step: 'wait_gone' } } },
      ],
    }),
    wait_down: endStep('wait_down', 'wait_up', {
      onDone: [
        finish('wait_down', 'rebooting', 'provisionerWatchesReturn'),
        { target: 'wait_up', actions: { type: 'noteOutput', params: { step: 'wait_down' } } },
      ],
    }),
    wait_up: endStep('wait_up', done, { onDone: finish('wait_up', 'on') }),
    confirm_on: endStep('confirm_on', done, { onDone: finish('confirm_on', 'on') }),
  };

  return machineSetup.createMachine({
    id: spec.id,
    description: `${spec.id} pre_capture: prepare the OS for capture and leave it in the requested end state`,
    context: ({ input }) => ({
      os: spec.id,
      computer: input.computer,
      image: input.image,
      endState: input.endState ?? 'off',
      provisionerWatchesReturn: input.provisionerWatchesReturn ?? false,
      sysprep: spec.supportsSysprep && (input.sysprep ?? true),
      timeouts: resolveTimeouts(input.timeouts),
      deadlines: {},
      bootId: undefined,
      powerState: undefined,
      warnings: [],
      error: undefined,
      touched: false,
    }),
    initial: spec.steps[0]?.id ?? 'end_state',
    states: {
      ...prepareStates,
      end_state: {
        description: 'Carry out the requested end state: on, off or reboot',
        initial: 'choose',
        states: endStateStates,
      },
      done: { type: 'final', output: { ok: true } },
      failed: { type: 'final', output: { ok: false } },
    },
    output: ({ context }): OsResult =>
      context.error
        ? { ok: false, error: context.error, warnings: context.warnings, touched: context.touched }
        : {
            ok: true,
            touched: context.touched,
            powerState: context.powerState ?? 'on',
            ...(context.bootId === undefined ? {} : { bootId: context.bootId }),
            warnings: context.warnings,
          },
  });
}

export type OsMachine = ReturnType<typeof createOsMachine>;
