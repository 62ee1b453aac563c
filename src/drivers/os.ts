/**
 * The OS sub-machine's effects over SSH to the computer itself: the pre_capture plans of os-commands.ts,
 * and the end state (shutdown, reboot, sysprep) with the waits that confirm it. A guest that goes down
 * drops its SSH session; that is the expected outcome of an end-state command (`expectDisconnect`).
 */
import type { OsStepInput, OsStepOutput } from '../../machines/index.js';
import { VclError } from '../errors.js';
import { isSshError } from '../ssh/index.js';
import { type StepFn, type StepRun, sleep } from './contract.js';
import { type DriverEnv, execFor } from './env.js';
import { driverError } from './errors.js';
import {
  bootIdCommand,
  COMMAND_NOT_FOUND,
  endStateCommand,
  endStateFallback,
  type OsStepContext,
  osPlans,
  parseBootId,
} from './os-commands.js';

type Step = StepFn<OsStepInput, OsStepOutput>;

/** Errors that mean "the computer does not answer" rather than "the command failed". */
const UNREACHABLE = ['SSH_UNREACHABLE', 'SSH_DISCONNECTED', 'SSH_HANDSHAKE_FAILED', 'SSH_TIMEOUT'] as const;

/** Short per-probe budget: a guest going down must not hold a probe for the whole step. */
const PROBE_MS = 10_000;

/** The dry run's (and the model tests') success outputs of the OS steps that carry facts. */
export const OS_DRY_RUN_OUTPUTS: Readonly<Record<string, OsStepOutput>> = {
  ensure_responding: { bootId: 'boot-1' },
  wait_up: { bootId: 'boot-2' },
};

export function osSteps(env: DriverEnv): Record<string, Step> {
  const guest = env.guestHost;
  const plans = osPlans(env.computer.os);
  const ctx = (input: OsStepInput): OsStepContext => ({
    computer: input.computer,
    image: input.image,
    reservationUsers: env.computer.reservationUsers,
  });

  /**
   * The boot id, or undefined when the computer does not answer within a short budget. The transport
   * retries connections to a host that is booting; a probe must not, so it gives up on its own signal.
   *
   * A computer changing state (going down, coming up) still accepts SSH while its probe command fails:
   * a shutdown kills processes and unmounts /proc under a running sshd (busybox init does both before it
   * stops sshd). With `changing`, such a failure is `null` ("answers, but not normally": keep waiting)
   * instead of an error; a computer expected to be up and well fails the step with the command's error.
   */
  async function probeBootId(run: StepRun<OsStepInput>): Promise<string | undefined>;
  async function probeBootId(run: StepRun<OsStepInput>, changing: true): Promise<string | null | undefined>;
  async function probeBootId(
    run: StepRun<OsStepInput>,
    changing = false,
  ): Promise<string | null | undefined> {
    const budgetMs = Math.min(15_000, Math.max(1_000, env.pollMs * 3));
    // A guest going down or booting mostly refuses connections: find that out without an SSH handshake
    // (and without starting the transport's connection retries against a host that is not there).
    if (env.remote.answers !== undefined) {
      const answers = await env.remote.answers(guest, { timeoutMs: budgetMs, signal: run.signal });
      if (run.signal.aborted) throw new VclError('ABORTED', 'aborted');
      if (!answers) return undefined;
    }
    const budget = AbortSignal.timeout(budgetMs);
    try {
      const r = await env.remote.exec(guest, bootIdCommand(env.computer.os), {
        step: run.input.step,
        signal: AbortSignal.any([run.signal, budget]),
        timeoutMs: Math.min(PROBE_MS, run.remainingMs()),
      });
      return parseBootId(r.stdout) ?? '';
    } catch (err) {
      if (run.signal.aborted) throw err;
      if (budget.aborted || isSshError(err, ...UNREACHABLE)) return undefined;
      if (changing && isSshError(err, 'SSH_EXIT_NONZERO', 'SSH_EXIT_SIGNAL')) {
        run.log.debug({ err: err.message }, 'boot id probe failed while the computer changes state');
        return null;
      }
      throw err;
    }
  }

  /** Waits for a boot id other than `notBoot`; `changing`: the computer is coming back from a reboot. */
  const waitAnswering = async (
    run: StepRun<OsStepInput>,
    notBoot?: string,
    changing = false,
  ): Promise<string> => {
    for (;;) {
      const id = changing ? await probeBootId(run, true) : await probeBootId(run);
      if (typeof id === 'string' && id !== notBoot) return id;
      await sleep(env.pollMs, run.signal);
    }
  };

  const waitGone = async (run: StepRun<OsStepInput>, orBootOtherThan?: string): Promise<void> => {
    for (;;) {
      const id = await probeBootId(run, true);
      if (id === undefined) return;
      // Already back from a fast reboot (a failing probe, null, is a computer still on its way down).
      if (id !== null && orBootOtherThan !== undefined && id !== orBootOtherThan) return;
      await sleep(env.pollMs, run.signal);
    }
  };

  /**
   * Whether a command that takes the computer down, sent by an attempt a crash interrupted, already took
   * effect: the computer no longer answers, answers while going down (its probe fails), or, for a
   * reboot (`newBoot`), answers with a boot id other than the one it had before. Only the re-run of an
   * interrupted step asks: in a first run, a computer that does not answer is a failure.
   */
  const wentDown = async (run: StepRun<OsStepInput>, newBoot: boolean): Promise<boolean> => {
    const id = await probeBootId(run, true);
    if (id === undefined || id === null) return true;
    return newBoot && run.input.bootId !== undefined && id !== run.input.bootId;
  };

  /**
   * Runs an end-state command that takes the computer down; `fallback` runs instead when the computer
   * does not have the command (status 127). A re-run after a crash (`run.resumed`) first looks whether
   * the interrupted attempt's command already took effect, and sends it again only if not.
   */
  const goDown = async (
    run: StepRun<OsStepInput>,
    command: string[],
    fallback: string[] | undefined,
    newBoot: boolean,
  ): Promise<void> => {
    if (run.resumed && (await wentDown(run, newBoot))) {
      run.log.info({ command: command[0] }, 'the interrupted attempt already took the computer down');
      return;
    }
    const exec = execFor(env, run);
    let argv = command;
    let alternative = fallback;
    for (let attempt = 1; ; attempt++) {
      const r = await exec(guest, argv, { expectDisconnect: true, check: false });
      if (r.disconnected || r.code === 0) return;
      if (r.code === COMMAND_NOT_FOUND && alternative !== undefined) {
        run.log.info(
          { missing: argv[0], instead: alternative[0] },
          'end-state command not found: falling back',
        );
        argv = alternative;
        alternative = undefined;
        continue;
      }
      // Re-sent after a crash: the shutdown in progress is the interrupted attempt's own.
      if (run.resumed && /shutdown is in progress/i.test(r.stderr)) return;
      // Windows refuses a shutdown while another one is being processed: VCL retries 12 x 10 s.
      if (/processing another action|shutdown is in progress/i.test(r.stderr) && attempt < 12) {
        await sleep(Math.min(10_000, env.pollMs * 5), run.signal);
        continue;
      }
      throw driverError('COMMAND_FAILED', `${argv[0]} exited with status ${r.code}: ${r.stderr.trim()}`);
    }
  };

  const steps: Record<string, Step> = {
    ensure_responding: async (run) => ({ bootId: await waitAnswering(run) }),
    confirm_on: async (run) => {
      const id = await probeBootId(run);
      if (id === undefined) throw driverError('COMMAND_FAILED', `${env.computerName} does not answer`);
      return { bootId: id };
    },
    shutdown: async (run) => {
      await goDown(
        run,
        endStateCommand(env.computer.os, 'shutdown'),
        endStateFallback(env.computer.os, 'shutdown'),
        false,
      );
      return {};
    },
    reboot: async (run) => {
      await goDown(
        run,
        endStateCommand(env.computer.os, 'reboot'),
        endStateFallback(env.computer.os, 'reboot'),
        true,
      );
      return {};
    },
    sysprep: async (run) => {
      if (env.computer.os !== 'windows') throw driverError('COMMAND_FAILED', 'sysprep runs on Windows only');
      const argv = endStateCommand('windows', 'sysprep', run.input.endState);
      if (run.input.endState === 'on') {
        // Nothing tells a finished `/quit` sysprep from one never run: a re-run generalises again.
        await execFor(env, run)(guest, argv);
      } else {
        await goDown(run, argv, undefined, run.input.endState === 'reboot');
      }
      return {};
    },
    wait_gone: async (run) => {
      await waitGone(run);
      return {};
    },
    wait_down: async (run) => {
      await waitGone(run, run.input.bootId);
      return {};
    },
    wait_up: async (run) => ({ bootId: await waitAnswering(run, run.input.bootId, true) }),
  };

  for (const [id, plan] of Object.entries(plans)) {
    steps[id] = async (run) => {
      const exec = execFor(env, run);
      const p = plan(ctx(run.input));
      // A step that reboots, re-run after a crash: when the computer is down, on its way, or back with a
      // new boot id, the interrupted attempt got as far as its last command (the reboot).
      if (p.reboots && run.resumed && (await wentDown(run, true))) {
        run.log.info('the interrupted attempt already rebooted the computer');
        return { bootId: await waitAnswering(run, run.input.bootId, true) };
      }
      if (p.probe) {
        const r = await exec(guest, p.probe.argv, { check: false });
        if (r.code !== 0 || (p.probe.applies && !p.probe.applies(r.stdout)))
          return { notApplicable: p.probe.notApplicable };
      }
      const before = p.reboots ? await probeBootId(run) : undefined;
      for (const [i, c] of p.commands.entries()) {
        const last = i === p.commands.length - 1;
        const r = await exec(guest, c.argv, {
          check: false,
          ...(c.stdin === undefined ? {} : { stdin: c.stdin }),
          ...(p.reboots && last ? { expectDisconnect: true } : {}),
        });
        if (r.disconnected) continue;
        if (!(c.okCodes ?? [0]).includes(r.code ?? -1)) {
          // A secret-bearing command's output is never repeated.
          const why = c.secretOutput ? '(output withheld)' : r.stderr.trim().slice(-500);
          throw driverError('COMMAND_FAILED', `${c.argv[0]} exited with status ${r.code} ${why}`.trim(), {
            command: c.argv[0],
            exitCode: r.code,
          });
        }
      }
      if (p.reboots) return { bootId: await waitAnswering(run, before, true) };
      return {};
    };
  }
  return steps;
}
