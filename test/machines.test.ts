/**
 * The rules the machine definitions live by: no I/O in `machines/`, every effect a named placeholder the
 * runner must replace, waits as invoked actors with deadlines (no `after` timers: they are lost when a
 * persisted snapshot is restored), stable invoke ids, and input validated at creation.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';
import { type AnyStateMachine, type AnyStateNode, createActor, fromPromise, waitFor } from 'xstate';
import {
  allowedEndStates,
  composeCaptureMachine,
  defaultEndStateOf,
  effectNames,
  linuxMachine,
  type OsStepInput,
  type OsStepOutput,
  operatingSystems,
  provisioners,
  windowsMachine,
} from '../machines/index.js';
import { LINUX_STEPS } from '../machines/os/linux.js';
import { createOsMachine } from '../machines/os/os-machine.js';
import {
  deadlineOf,
  errorCode,
  placeholder,
  resolveTimeouts,
  toFailure,
  toWarning,
  withDeadline,
} from '../machines/steps.js';
import { DEFAULT_TIMEOUTS } from '../machines/types.js';

const MACHINES_DIR = new URL('../machines/', import.meta.url).pathname;

function sourceFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sourceFiles(path) : path.endsWith('.ts') ? [path] : [];
  });
}

function nodes(machine: AnyStateMachine): AnyStateNode[] {
  const out: AnyStateNode[] = [];
  const walk = (n: AnyStateNode) => {
    out.push(n);
    for (const child of Object.values(n.states)) walk(child as AnyStateNode);
  };
  walk(machine.root);
  return out;
}

/**
 * An OS without pre_capture steps. Built at import, as the real OS machines are: built inside a test, it
 * would make every mutant of the builder per-test covered, and Stryker would run those mutants against
 * the machines already built at import, which they cannot change (docs/testing.md, `machines/`).
 */
const BARE_OS = createOsMachine({ id: 'linux', steps: [], supportsSysprep: false });

const ALL: [string, AnyStateMachine][] = [
  ...Object.entries(provisioners).map(([n, p]): [string, AnyStateMachine] => [n, p.machine]),
  ...Object.entries(operatingSystems).map(([n, o]): [string, AnyStateMachine] => [n, o.machine]),
];

describe('machines/ imports', () => {
  it('imports only xstate and other machine files', () => {
    const offenders: string[] = [];
    for (const file of sourceFiles(MACHINES_DIR)) {
      const text = readFileSync(file, 'utf8');
      for (const m of text.matchAll(/^\s*(?:import|export)\b[^'"]*?from\s+['"]([^'"]+)['"]/gm)) {
        const spec = m[1] as string;
        const ok =
          spec === 'xstate' ||
          ((spec.startsWith('./') || spec.startsWith('../')) && !join(file, '..', spec).includes('/src/'));
        if (!ok) offenders.push(`${relative(MACHINES_DIR, file)}: ${spec}`);
      }
      if (/\bimport\s*\(/.test(text)) offenders.push(`${relative(MACHINES_DIR, file)}: dynamic import`);
    }
    expect(offenders).toEqual([]);
  });
});

describe.each(ALL)('%s machine', (_name, machine) => {
  it('has no `after` timers: every wait is an invoked actor with a deadline', () => {
    const timed = nodes(machine)
      .filter((n) => n.after.length > 0)
      .map((n) => n.id);
    expect(timed).toEqual([]);
  });

  it('gives every invoke an explicit id equal to its src, and every src an implementation', () => {
    const names = new Set(effectNames(machine));
    for (const n of nodes(machine)) {
      for (const inv of n.invoke) {
        expect(inv.id, `${n.id} invokes without an explicit id`).not.toMatch(/^0\./);
        expect(String(inv.src)).toBe(inv.id);
        expect(names.has(inv.id), `${n.id}: ${inv.id} has no placeholder`).toBe(true);
      }
    }
  });

  it('describes every invoking state for the diagrams (title, kind, timeout)', () => {
    for (const n of nodes(machine).filter((x) => x.invoke.length > 0)) {
      const step = (n.meta as { step?: { title?: string; kind?: string; timeout?: string } } | undefined)
        ?.step;
      expect(step?.title, `${n.id} has no step title`).toBeTruthy();
      expect(['critical', 'advisory']).toContain(step?.kind);
      expect(Object.keys(DEFAULT_TIMEOUTS)).toContain(step?.timeout);
    }
  });
});

describe('placeholders', () => {
  it('an effect the runner forgot to provide fails the capture with NOT_PROVIDED, never passes silently', async () => {
    const actor = createActor(provisioners.libvirt.machine, {
      input: {
        captureId: 'c1',
        computer: 'pc1',
        os: 'linux',
        image: { name: 'linux-A1-v0', imageId: 1, revision: 0 },
      },
    });
    actor.start();
    const final = await waitFor(actor, (s) => s.status === 'done', { timeout: 2_000 });
    expect(final.value).toBe('failed');
    expect(final.output).toMatchObject({
      status: 'failed',
      error: { code: 'NOT_PROVIDED', step: 'reserve' },
    });
  });

  it('composeCaptureMachine plugs the OS sub-machine into the provisioner', () => {
    const machine = composeCaptureMachine({ provisioner: 'vmware', os: 'windows' });
    const os = machine.implementations.actors.os as unknown as AnyStateMachine;
    expect(os.id).toBe('windows');
    expect(() => composeCaptureMachine({ provisioner: 'hyperv' as 'vmware', os: 'linux' })).toThrow(
      /unknown provisioner 'hyperv'; known: libvirt, vmware, xcat/,
    );
    expect(() => composeCaptureMachine({ provisioner: 'xcat', os: 'beos' as 'linux' })).toThrow(
      /unknown OS 'beos'; known: linux, windows/,
    );
  });

  it("plugs the runner's OS effects into the OS sub-machine", () => {
    const writeMetadata = fromPromise(async () => ({}));
    const machine = composeCaptureMachine({
      provisioner: 'libvirt',
      os: 'linux',
      osActors: { write_metadata: writeMetadata },
    });
    const os = machine.implementations.actors.os as unknown as AnyStateMachine;
    expect(os.implementations.actors.write_metadata).toBe(writeMetadata);
  });

  it('tells the end states each provisioner allows and the one a request without one gets', () => {
    expect(allowedEndStates('xcat')).toEqual(['reboot', 'off']);
    expect(allowedEndStates('libvirt')).toEqual(['off', 'on']);
    expect(defaultEndStateOf('xcat', 'linux')).toBe('reboot');
    expect(defaultEndStateOf('xcat', 'windows')).toBe('off');
    expect(defaultEndStateOf('vmware', 'windows')).toBe('off');
  });
});

describe('input validation', () => {
  const image = { name: 'linux-A1-v0', imageId: 1, revision: 0 };

  it('refuses an end state the provisioner cannot work with, naming the allowed ones', () => {
    const actor = createActor(provisioners.libvirt.machine, {
      input: { captureId: 'c1', computer: 'pc1', os: 'linux', image, endState: 'reboot' },
    });
    const errors: unknown[] = [];
    actor.subscribe({ error: (e) => errors.push(e) });
    actor.start();
    expect(String(errors[0])).toMatch(/libvirt cannot capture with end state 'reboot'; it allows: off, on/);
  });

  it("defaults the end state to the provisioner's first, xCAT + Windows to off", () => {
    for (const [name, { machine, spec }] of Object.entries(provisioners)) {
      const actor = createActor(machine, { input: { captureId: 'c1', computer: 'pc1', os: 'linux', image } });
      expect(actor.getSnapshot().context.endState, name).toBe(spec.endStates[0]);
    }
    const win = createActor(provisioners.xcat.machine, {
      input: { captureId: 'c1', computer: 'pc1', os: 'windows', image },
    });
    expect(win.getSnapshot().context.endState).toBe('off');
  });

  it('validates timeout overrides by name and value', () => {
    expect(resolveTimeouts({ copyMs: 5 }).copyMs).toBe(5);
    expect(resolveTimeouts(undefined)).toEqual(DEFAULT_TIMEOUTS);
    expect(() => resolveTimeouts({ copyMs: -1 })).toThrow(/copyMs must be a positive number/);
    expect(() => resolveTimeouts({ copyMS: 5 } as never)).toThrow(
      /unknown timeout 'copyMS'; known timeouts: commandMs, respondMs, osShutdownMs/,
    );
    expect(() => resolveTimeouts({ copyMs: 0 })).toThrow(
      'timeout copyMs must be a positive number of milliseconds, got 0',
    );
    expect(resolveTimeouts({ copyMs: undefined, verifyMs: 7 })).toEqual({ ...DEFAULT_TIMEOUTS, verifyMs: 7 });
  });

  it('arms a step deadline at now + its timeout and refuses to read one never armed', () => {
    const timeouts = resolveTimeouts({ copyMs: 500 });
    const deadlines = withDeadline({ other: 1 }, timeouts, 'copy_image', 'copyMs', 10_000);
    expect(deadlines).toEqual({ other: 1, copy_image: 10_500 });
    expect(deadlineOf(deadlines, 'copy_image')).toBe(10_500);
    expect(() => deadlineOf(deadlines, 'verify_image')).toThrow('no deadline armed for step verify_image');
  });
});

describe('OS step deadlines', () => {
  it('give wait_gone the sysprep timeout when Windows is sysprepped, the shutdown timeout otherwise', async () => {
    for (const [sysprep, expected] of [
      [true, 9_000_000],
      [false, 5_000],
    ] as const) {
      const inputs: Record<string, OsStepInput> = {};
      const actors = Object.fromEntries(
        effectNames(windowsMachine).map((name) => [
          name,
          fromPromise<OsStepOutput, OsStepInput>(async ({ input }) => {
            inputs[name] = input;
            return {};
          }),
        ]),
      );
      const before = Date.now();
      const actor = createActor(windowsMachine.provide({ actors }), {
        input: {
          computer: 'pc1',
          image: { name: 'windows-A1-v0', imageId: 1, revision: 0 },
          endState: 'off',
          sysprep,
          timeouts: { sysprepMs: 9_000_000, osShutdownMs: 5_000 },
        },
      }).start();
      await waitFor(actor, (s) => s.status === 'done');
      expect(inputs.sysprep === undefined, `sysprep step run: ${sysprep}`).toBe(!sysprep);
      const left = (inputs.wait_gone?.deadline ?? 0) - before;
      expect(left).toBeGreaterThanOrEqual(expected);
      expect(left).toBeLessThan(expected + 60_000);
    }
  });
});

describe('OS sub-machine defaults and boot ids', () => {
  /** Runs an OS machine whose effects all succeed; `outputs` gives some of them an output. */
  async function runOs(
    machine: typeof windowsMachine,
    input: Record<string, unknown>,
    outputs: Record<string, OsStepOutput> = {},
  ) {
    const inputs: Record<string, OsStepInput> = {};
    const actors = Object.fromEntries(
      effectNames(machine).map((name) => [
        name,
        fromPromise<OsStepOutput, OsStepInput>(async ({ input: stepInput }) => {
          inputs[name] = stepInput;
          return outputs[name] ?? {};
        }),
      ]),
    );
    const actor = createActor(machine.provide({ actors }), {
      // Partial on purpose: the tests check the defaults the machine fills in.
      input: { computer: 'pc1', image: { name: 'x-A1-v0', imageId: 1, revision: 0 }, ...input } as never,
    }).start();
    const done = await waitFor(actor, (s) => s.status === 'done');
    return { inputs, output: done.output };
  }

  it('syspreps Windows and leaves it off when the request says neither', async () => {
    const { inputs, output } = await runOs(windowsMachine, {});
    expect(inputs.sysprep?.sysprep).toBe(true);
    expect(inputs.wait_gone).toBeDefined();
    expect(output).toEqual({ ok: true, touched: true, powerState: 'off', warnings: [] });
  });

  it('counts the computer touched from the first step that changes it, not the check before it', async () => {
    /** The Linux OS machine with `failing` failing and every other step succeeding. */
    const failAt = async (failing: string) => {
      const actors = Object.fromEntries(
        effectNames(linuxMachine).map((name) => [
          name,
          fromPromise<OsStepOutput, OsStepInput>(async () => {
            if (name === failing) throw Object.assign(new Error('no'), { code: 'COMMAND_FAILED' });
            return {};
          }),
        ]),
      );
      const actor = createActor(linuxMachine.provide({ actors }), {
        input: { computer: 'pc1', image: { name: 'x-A1-v0', imageId: 1, revision: 0 }, endState: 'off' },
      }).start();
      return (await waitFor(actor, (s) => s.status === 'done')).output;
    };
    // ensure_responding only connects: a computer that refuses us there is handed back as it was.
    expect(await failAt('ensure_responding')).toMatchObject({ ok: false, touched: false });
    expect(await failAt('write_metadata')).toMatchObject({ ok: false, touched: true });
  });

  it('refuses an OS definition that uses a step id twice, naming that step', () => {
    const third = LINUX_STEPS[2];
    if (!third) throw new Error('fewer than 3 Linux steps');
    expect(() =>
      createOsMachine({ id: 'linux', steps: [...LINUX_STEPS, third], supportsSysprep: false }),
    ).toThrow(`OS machine linux: step id ${third.id} is used twice`);
  });

  it('runs an OS with no pre_capture steps straight to the requested end state', async () => {
    const { inputs, output } = await runOs(BARE_OS, { endState: 'reboot' }, { wait_up: { bootId: 'b2' } });
    expect(Object.keys(inputs)).toEqual(['reboot', 'wait_down', 'wait_up']);
    expect(output).toEqual({ ok: true, touched: true, powerState: 'on', bootId: 'b2', warnings: [] });
  });

  it('records a step that does not apply here as a NOT_APPLICABLE warning, and goes on', async () => {
    const { output } = await runOs(
      linuxMachine,
      { endState: 'off' },
      { run_stage_scripts: { notApplicable: 'no /etc/vcl/pre_capture scripts' } },
    );
    expect(output).toEqual({
      ok: true,
      touched: true,
      powerState: 'off',
      warnings: [
        { step: 'run_stage_scripts', code: 'NOT_APPLICABLE', message: 'no /etc/vcl/pre_capture scripts' },
      ],
    });
  });

  it('hands the boot id a step learned to the later steps and to its result', async () => {
    const { inputs, output } = await runOs(
      linuxMachine,
      { endState: 'reboot' },
      { write_metadata: { bootId: 'b1' } },
    );
    expect(inputs.write_metadata?.bootId).toBeUndefined();
    expect(inputs.reboot?.bootId).toBe('b1');
    // Nobody said the provisioner watches the return: the OS machine waits for the guest itself.
    expect(inputs.wait_up).toBeDefined();
    expect(output).toMatchObject({ ok: true, bootId: 'b1' });
    const none = await runOs(linuxMachine, { endState: 'off' });
    expect(none.output).not.toHaveProperty('bootId');
    expect(none.inputs.shutdown).not.toHaveProperty('bootId');
  });
});

describe('step failures as recorded', () => {
  it("keep a typed error's code, step and message", () => {
    const e = Object.assign(new Error('disk full'), { code: 'NO_SPACE', step: 'clone_disk' });
    expect(toFailure(e, 'copy_image')).toEqual({
      code: 'NO_SPACE',
      step: 'clone_disk',
      message: 'disk full',
    });
    expect(errorCode(e)).toBe('NO_SPACE');
    expect(toWarning(e, 'copy_image')).toEqual({
      step: 'copy_image',
      code: 'NO_SPACE',
      message: 'disk full',
    });
  });

  it('default to STEP_FAILED of the running step, with a message even when none was given', () => {
    expect(toFailure(new Error('boom'), 'verify_image')).toEqual({
      code: 'STEP_FAILED',
      step: 'verify_image',
      message: 'boom',
    });
    expect(toFailure('plain words', 's')).toEqual({ code: 'STEP_FAILED', step: 's', message: 'plain words' });
    for (const odd of [null, undefined, 42, { message: '', code: '', step: '' }, { code: 7 }]) {
      expect(toFailure(odd, 's')).toEqual({
        code: 'STEP_FAILED',
        step: 's',
        message: 'step failed without a message',
      });
      expect(errorCode(odd)).toBeUndefined();
    }
  });

  it('name the effect nobody provided', async () => {
    const actor = createActor(placeholder<void, void>('copy_image')).start();
    const error = await new Promise<unknown>((resolve) => actor.subscribe({ error: resolve }));
    expect(error).toMatchObject({
      name: 'NotProvidedError',
      code: 'NOT_PROVIDED',
      message: 'copy_image is not provided: supply it with machine.provide({ actors: { copy_image } })',
    });
  });
});
