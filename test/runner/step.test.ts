/**
 * The step actor every capture step runs as, run for real by xstate: what the driver function is given,
 * and what reaches the machine (and the log) when it succeeds, throws, runs out of time or is stopped.
 */
import { pino } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { assign, createActor, setup, waitFor } from 'xstate';
import type { StepFn, StepRun } from '../../src/drivers/contract.js';
import { VclError } from '../../src/errors.js';
import { type Logger, silentLogger } from '../../src/log.js';
import { boundStepActor, type StepBinding, stepActor, stepErrorData } from '../../src/runner/step.js';

interface Input {
  deadline: number;
  step: string;
  value?: string;
}

type Logic = ReturnType<typeof stepActor<Input, string>>;

/** A machine that invokes `logic` in `running` and records what its onDone/onError events carry. */
function runStep(logic: Logic, input: Input) {
  const machine = setup({
    types: {} as {
      context: { output?: string; error?: unknown };
      events: { type: 'LEAVE' };
    },
    actors: { step: logic },
  }).createMachine({
    id: 'harness',
    context: {},
    initial: 'running',
    states: {
      running: {
        invoke: {
          src: 'step',
          input,
          onDone: { target: 'done', actions: assign({ output: ({ event }) => event.output }) },
          onError: { target: 'failed', actions: assign({ error: ({ event }) => event.error }) },
        },
        on: { LEAVE: 'elsewhere' },
      },
      done: { type: 'final' },
      failed: { type: 'final' },
      elsewhere: {},
    },
  });
  const actor = createActor(machine).start();
  return {
    actor,
    leave: () => actor.send({ type: 'LEAVE' }),
    settled: async () => {
      const s = await waitFor(actor, (snap) => snap.status === 'done', { timeout: 1500 });
      return { state: s.value, output: s.context.output, error: s.context.error };
    },
  };
}

/** What a machine sees of a step's error. */
function errorData(error: unknown) {
  const e = error as Record<string, unknown>;
  return { code: e.code, message: e.message, step: e.step, details: e.details };
}

/** A pino logger at `debug` that keeps its lines in memory. */
function memoryLogger(): { log: Logger; lines: Record<string, unknown>[] } {
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => void lines.push(JSON.parse(s)) });
  return { log, lines };
}

const soon = (ms = 10_000) => Date.now() + ms;
const delay = (ms: number) => new Promise((r) => setTimeout(r, ms));
/**
 * Until `deadline` (ms since the epoch) has passed by a margin. Deadlines in these tests are a second
 * away, so that a loaded machine still starts the step before them; a test waits for the deadline to
 * pass instead of sleeping a fixed time past it.
 */
const pastDeadline = async (deadline: number) => {
  while (Date.now() <= deadline + 20) await delay(10);
};

/** Resolves when `signal` aborts. */
const aborted = (signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });

afterEach(() => {
  vi.useRealTimers();
});

describe('stepErrorData', () => {
  it('keeps a VclError’s code, message, its own step and a copy of its details', () => {
    const details = { host: 'esx-1', exit: 3 };
    const err = new VclError('SSH_EXIT_NONZERO', 'copy failed', { step: 'copy_disk', details });
    const data = stepErrorData(err, 'outer');
    expect(data).toEqual({ code: 'SSH_EXIT_NONZERO', message: 'copy failed', step: 'copy_disk', details });
    expect(data.details).not.toBe(details);
  });

  it('names the given step when the VclError has none, and has no details when it has none', () => {
    const data = stepErrorData(new VclError('NOT_FOUND', 'no such VM'), 'power_off');
    expect(data).toEqual({ code: 'NOT_FOUND', message: 'no such VM', step: 'power_off' });
    expect('details' in data).toBe(false);
  });

  it('reports an SSH command timeout as the step’s TIMEOUT', () => {
    expect(stepErrorData(new VclError('SSH_TIMEOUT', 'took too long'), 's').code).toBe('TIMEOUT');
  });

  it('reports a plain Error as STEP_FAILED with its message', () => {
    expect(stepErrorData(new TypeError('x is undefined'), 'boot')).toEqual({
      code: 'STEP_FAILED',
      message: 'x is undefined',
      step: 'boot',
    });
  });

  it('reports a thrown non-Error as STEP_FAILED with its text', () => {
    expect(stepErrorData(42, 'boot')).toEqual({ code: 'STEP_FAILED', message: '42', step: 'boot' });
    expect(stepErrorData({ toString: () => 'odd thing' }, 'boot').message).toBe('odd thing');
  });
});

describe('stepActor', () => {
  it('gives the driver its input, a live signal, the time left and resumed=false; its result is the output', async () => {
    let seen: StepRun<Input> | undefined;
    let left = 0;
    const fn: StepFn<Input, string> = async (run) => {
      seen = run;
      left = run.remainingMs();
      expect(run.signal.aborted).toBe(false);
      return `got ${run.input.value}`;
    };
    const input = { deadline: soon(10_000), step: 'inspect', value: 'v1' };
    const r = await runStep(stepActor('inspect', fn, silentLogger()), input).settled();
    expect(r).toMatchObject({ state: 'done', output: 'got v1' });
    expect(seen?.input).toEqual(input);
    expect(seen?.resumed).toBe(false);
    expect(left).toBeGreaterThan(9_000);
    expect(left).toBeLessThanOrEqual(10_000);
  });

  it('hands a thrown VclError to the machine as code, message, step and details', async () => {
    const fn: StepFn<Input, string> = async () => {
      throw new VclError('DISK_FULL', 'datastore full', { details: { freeBytes: 0 } });
    };
    const r = await runStep(stepActor('export', fn, silentLogger()), {
      deadline: soon(),
      step: 'export',
    }).settled();
    expect(r.state).toBe('failed');
    expect(errorData(r.error)).toEqual({
      code: 'DISK_FULL',
      message: 'datastore full',
      step: 'export',
      details: { freeBytes: 0 },
    });
  });

  it('hands a thrown plain Error to the machine as STEP_FAILED', async () => {
    const fn: StepFn<Input, string> = async () => {
      throw new Error('boom');
    };
    const r = await runStep(stepActor('export', fn, silentLogger()), {
      deadline: soon(),
      step: 'export',
    }).settled();
    expect(errorData(r.error)).toMatchObject({ code: 'STEP_FAILED', message: 'boom', step: 'export' });
  });

  it('fails with TIMEOUT without calling the driver when the deadline has already passed', async () => {
    const fn = vi.fn<StepFn<Input, string>>(async () => 'ran');
    const r = await runStep(stepActor('boot', fn, silentLogger()), {
      deadline: Date.now() - 1,
      step: 'boot',
    }).settled();
    expect(fn).not.toHaveBeenCalled();
    expect(r.state).toBe('failed');
    expect(errorData(r.error)).toMatchObject({
      code: 'TIMEOUT',
      message: 'boot: deadline passed before the step started',
      step: 'boot',
    });
  });

  it('counts a deadline of exactly now as passed', async () => {
    // A frozen clock: the deadline is the very millisecond the step starts in.
    vi.useFakeTimers({ toFake: ['Date'] });
    const fn = vi.fn<StepFn<Input, string>>(async () => 'ran');
    const r = await runStep(stepActor('boot', fn, silentLogger()), {
      deadline: Date.now(),
      step: 'boot',
    }).settled();
    expect(fn).not.toHaveBeenCalled();
    expect(errorData(r.error)).toMatchObject({ code: 'TIMEOUT', step: 'boot' });
  });

  it('aborts the driver’s signal at the deadline and reports TIMEOUT, whatever the driver threw', async () => {
    let signalAborted = false;
    const fn: StepFn<Input, string> = async (run) => {
      await aborted(run.signal);
      signalAborted = run.signal.aborted;
      throw new VclError('ABORTED', 'aborted');
    };
    const r = await runStep(stepActor('wait_boot', fn, silentLogger()), {
      deadline: soon(1000),
      step: 'wait_boot',
    }).settled();
    expect(signalAborted).toBe(true);
    expect(errorData(r.error)).toMatchObject({
      code: 'TIMEOUT',
      message: 'wait_boot did not finish before its deadline',
      step: 'wait_boot',
    });
  });

  it('lets a driver that returns after its deadline succeed, and never tells it less than 1 ms is left', async () => {
    let left = -1;
    const deadline = soon(1000);
    const fn: StepFn<Input, string> = async (run) => {
      await pastDeadline(deadline);
      left = run.remainingMs();
      return 'late but done';
    };
    const r = await runStep(stepActor('slow', fn, silentLogger()), { deadline, step: 'slow' }).settled();
    expect(r).toMatchObject({ state: 'done', output: 'late but done' });
    expect(left).toBe(1);
  });

  it.each([
    ['Infinity', Number.POSITIVE_INFINITY],
    ['NaN', Number.NaN],
  ])('has no deadline when it is %s', async (_, deadline) => {
    let left = 0;
    let signal: AbortSignal | undefined;
    const fn: StepFn<Input, string> = async (run) => {
      signal = run.signal;
      left = run.remainingMs();
      await delay(20);
      return 'ok';
    };
    const r = await runStep(stepActor('long', fn, silentLogger()), { deadline, step: 'long' }).settled();
    expect(r).toMatchObject({ state: 'done', output: 'ok' });
    expect(left).toBe(Number.POSITIVE_INFINITY);
    expect(signal?.aborted).toBe(false);
  });

  it('aborts the driver when the machine leaves the state, and that is not logged as a TIMEOUT', async () => {
    const { log, lines } = memoryLogger();
    let driverSignal: AbortSignal | undefined;
    let finished!: () => void;
    const thrown = new Promise<void>((r) => {
      finished = r;
    });
    // The driver ignores the abort for a while: by the time it throws, the deadline has passed too.
    const deadline = soon(1000);
    const fn: StepFn<Input, string> = async (run) => {
      driverSignal = run.signal;
      try {
        await aborted(run.signal);
        await pastDeadline(deadline);
        throw new VclError('ABORTED', 'aborted');
      } finally {
        setImmediate(finished);
      }
    };
    const h = runStep(stepActor('copy', fn, log), { deadline, step: 'copy' });
    await expect.poll(() => driverSignal, { timeout: 10_000 }).toBeDefined();
    expect(driverSignal?.aborted).toBe(false);
    h.leave();
    expect(h.actor.getSnapshot().value).toBe('elsewhere');
    expect(driverSignal?.aborted).toBe(true);
    await thrown;
    const failed = lines.filter((l) => l.msg === 'step failed');
    expect(failed).toEqual([expect.objectContaining({ level: 40, step: 'copy', code: 'ABORTED' })]);
  });

  it('aborts the driver when the step actor is stopped directly', async () => {
    let driverSignal: AbortSignal | undefined;
    const fn: StepFn<Input, string> = async (run) => {
      driverSignal = run.signal;
      await aborted(run.signal);
      throw new VclError('ABORTED', 'aborted');
    };
    const actor = createActor(stepActor('copy', fn, silentLogger()), {
      input: { deadline: soon(), step: 'copy' },
    }).start();
    await delay(1);
    expect(driverSignal?.aborted).toBe(false);
    actor.stop();
    expect(driverSignal?.aborted).toBe(true);
  });

  it('logs a failure at warn with the step, code and message, and a success at debug', async () => {
    const { log, lines } = memoryLogger();
    const failing: StepFn<Input, string> = async () => {
      throw new VclError('NOT_FOUND', 'no such VM');
    };
    await runStep(stepActor('power_off', failing, log), { deadline: soon(), step: 'power_off' }).settled();
    expect(lines.find((l) => l.msg === 'step failed')).toMatchObject({
      level: 40,
      step: 'power_off',
      code: 'NOT_FOUND',
      err: 'no such VM',
    });
    lines.length = 0;
    await runStep(
      stepActor('power_on', async () => 'on', log),
      {
        deadline: soon(),
        step: 'power_on',
      },
    ).settled();
    expect(lines).toEqual([
      expect.objectContaining({
        level: 20,
        msg: 'step done',
        step: 'power_on',
        durationMs: expect.any(Number),
      }),
    ]);
  });

  it('leaves no timer behind once the step is over (a CLI process would not exit before the deadline)', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const ok = await runStep(
      stepActor('quick', async () => 'ok', silentLogger()),
      {
        deadline: soon(3_600_000),
        step: 'quick',
      },
    ).settled();
    expect(ok.output).toBe('ok');
    const failing: StepFn<Input, string> = async () => {
      throw new Error('no');
    };
    const failed = await runStep(stepActor('quick', failing, silentLogger()), {
      deadline: soon(3_600_000),
      step: 'quick',
    }).settled();
    expect(failed.state).toBe('failed');
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('boundStepActor', () => {
  it('runs the function the capture’s system binds, with resumed set by the binding', async () => {
    const { log, lines } = memoryLogger();
    let resumed: boolean | undefined;
    let boundTo: object | undefined;
    const fn: StepFn<Input, string> = async (run) => {
      resumed = run.resumed;
      run.log.info('inside');
      return 'again';
    };
    const logic = boundStepActor<Input, string>('export', (system) => {
      boundTo = system;
      return { fn, log, resumed: true } satisfies StepBinding<Input, string>;
    });
    const h = runStep(logic, { deadline: soon(), step: 'export' });
    const r = await h.settled();
    expect(r).toMatchObject({ state: 'done', output: 'again' });
    expect(resumed).toBe(true);
    expect(boundTo).toBe(h.actor.system);
    // What the driver logs in a re-run says so, and names the step.
    expect(lines.find((l) => l.msg === 'inside')).toMatchObject({ step: 'export', resumed: true });
  });

  it('does not mark the driver’s log lines as resumed in a first run', async () => {
    const { log, lines } = memoryLogger();
    const fn: StepFn<Input, string> = async (run) => {
      run.log.info('inside');
      return 'first';
    };
    await runStep(
      boundStepActor<Input, string>('export', () => ({ fn, log })),
      { deadline: soon(), step: 'export' },
    ).settled();
    const line = lines.find((l) => l.msg === 'inside');
    expect(line).toMatchObject({ step: 'export' });
    expect(line).not.toHaveProperty('resumed');
  });

  it('fails the step with the binding’s error code, without calling any driver', async () => {
    const fn = vi.fn<StepFn<Input, string>>(async () => 'ran');
    const logic = boundStepActor<Input, string>('export', () => {
      throw new VclError('NOT_BOUND', 'no capture runs in this system', { details: { want: 'export' } });
    });
    const r = await runStep(logic, { deadline: soon(), step: 'export' }).settled();
    expect(fn).not.toHaveBeenCalled();
    expect(r.state).toBe('failed');
    expect(errorData(r.error)).toEqual({
      code: 'NOT_BOUND',
      message: 'no capture runs in this system',
      step: 'export',
      details: { want: 'export' },
    });
  });

  it('fails the step as STEP_FAILED when the binding throws a plain error', async () => {
    const logic = boundStepActor<Input, string>('export', () => {
      throw new Error('unbound');
    });
    const r = await runStep(logic, { deadline: soon(), step: 'export' }).settled();
    expect(errorData(r.error)).toMatchObject({ code: 'STEP_FAILED', message: 'unbound', step: 'export' });
  });
});
