/**
 * What a capture machine hands on, run with scripted effects: each step's input (facts, artifact, the
 * release's outcome and error), the OS result it takes in (warnings, boot id, failures), the warnings of
 * escalations, the cancel message, and the result a caller gets. The model tests check the order of
 * effects on every path; these check the values that travel along one.
 */

import { describe, expect, it } from 'vitest';
import { createActor, fromPromise, waitFor } from 'xstate';
import {
  type CaptureInput,
  type CaptureResult,
  type CaptureStepInput,
  composeCaptureMachine,
  effectNames,
  type OsResult,
  type ProvisionerName,
  provisioners,
  releaseOutcome,
  upgradeCaptureSnapshot,
} from '../machines/index.js';
import { DEFAULT_TIMEOUTS } from '../machines/types.js';
import { ARTIFACT } from './model/catalogue.js';

const IMAGE = { name: 'linux-Base1-v0', imageId: 1, revision: 0 };
const OS_OK: OsResult = { ok: true, touched: true, powerState: 'off', warnings: [] };

/** A step's scripted answer: an output, or an error to throw. */
type Answer = { output: unknown } | { error: Error & { code?: string } };

interface Scripted {
  /** Answers per step; a list answers successive calls. Unlisted steps answer `{}` (copies: the artifact). */
  answers?: Record<string, Answer | Answer[]>;
  /** The OS sub-machine's result (`undefined`: it ends without one). */
  os?: OsResult | undefined;
  input?: Partial<CaptureInput>;
  /** Sends CANCEL (with this reason, or none) when this step starts. */
  cancelAt?: { step: string; reason?: string };
}

function failure(code: string, message: string): Answer {
  return { error: Object.assign(new Error(message), { code }) };
}

/** Runs one capture of `provisioner` + Linux with scripted effects; returns the step inputs in order. */
async function runCapture(provisioner: ProvisionerName, script: Scripted = {}) {
  const calls: { step: string; input: CaptureStepInput }[] = [];
  const osInputs: unknown[] = [];
  const count: Record<string, number> = {};
  let cancel: ((reason?: string) => void) | undefined;
  const stepActors = Object.fromEntries(
    effectNames(provisioners[provisioner].machine)
      .filter((n) => n !== 'os')
      .map((step) => [
        step,
        fromPromise<unknown, CaptureStepInput>(async ({ input }) => {
          calls.push({ step, input });
          const n = count[step] ?? 0;
          count[step] = n + 1;
          if (script.cancelAt?.step === step) {
            cancel?.(script.cancelAt.reason);
            await new Promise(() => {});
          }
          const listed = script.answers?.[step];
          const answer = Array.isArray(listed) ? listed[n] : listed;
          if (answer && 'error' in answer) throw answer.error;
          if (answer) return answer.output;
          return step === 'copy_image' || step === 'copy_to_repository' || step === 'watch_upload'
            ? { artifact: ARTIFACT }
            : {};
        }),
      ]),
  );
  const machine = composeCaptureMachine({ provisioner, os: 'linux' }).provide({
    actors: {
      ...stepActors,
      os: fromPromise(async ({ input }) => {
        calls.push({ step: 'os', input: input as unknown as CaptureStepInput });
        osInputs.push(input);
        // An OS sub-machine that ends without a result is what `os: undefined` scripts.
        return ('os' in script ? script.os : OS_OK) as OsResult;
      }),
    },
  });
  const actor = createActor(machine, {
    input: { captureId: 'c1', computer: 'pc1', os: 'linux', image: IMAGE, ...script.input },
  });
  cancel = (reason) => actor.send(reason === undefined ? { type: 'CANCEL' } : { type: 'CANCEL', reason });
  actor.start();
  const done = await waitFor(actor, (s) => s.status === 'done', { timeout: 5_000 });
  const inputOf = (step: string) => calls.find((c) => c.step === step)?.input;
  return {
    output: done.output as CaptureResult,
    steps: calls.map((c) => c.step),
    inputOf,
    osInputs,
  };
}

describe('a capture machine run with scripted effects', () => {
  it('completes with the artifact and no warnings, handing the copy to the steps after it only', async () => {
    const run = await runCapture('libvirt');
    expect(run.output).toEqual({
      captureId: 'c1',
      image: IMAGE,
      warnings: [],
      status: 'completed',
      artifact: ARTIFACT,
    });
    expect(run.inputOf('copy_image')).not.toHaveProperty('artifact');
    expect(run.inputOf('verify_image')?.artifact).toEqual(ARTIFACT);
    // Only the release is told how to release.
    expect(run.inputOf('copy_image')).not.toHaveProperty('release');
    expect(run.inputOf('record_revision')).not.toHaveProperty('release');
  });

  it('never asks a Linux guest for sysprep, whatever the request says', async () => {
    const run = await runCapture('libvirt', { input: { sysprep: true } });
    expect(run.osInputs).toEqual([expect.objectContaining({ sysprep: false, endState: 'off' })]);
  });

  it("keeps the OS result's warnings in the capture's and its power state and boot id as facts", async () => {
    const warning = { step: 'run_stage_scripts', code: 'NOT_APPLICABLE', message: 'no scripts' };
    const run = await runCapture('libvirt', { os: { ...OS_OK, warnings: [warning], bootId: 'b1' } });
    expect(run.output.warnings).toEqual([warning]);
    expect(run.inputOf('request_power_off')?.facts).toMatchObject({ osPowerState: 'off', bootId: 'b1' });
    const none = await runCapture('libvirt', { os: { ...OS_OK, powerState: 'on' } });
    expect(none.inputOf('request_power_off')?.facts).toStrictEqual({ osPowerState: 'on' });
  });

  it('adds the facts each step learns to those learned before', async () => {
    const run = await runCapture('libvirt', {
      answers: {
        inspect_domain: { output: { facts: { disk: '/var/lib/libvirt/images/pc1.qcow2' } } },
        copy_image: { output: { artifact: ARTIFACT, facts: { copiedBytes: 42 } } },
      },
    });
    expect(run.inputOf('verify_image')?.facts).toStrictEqual({
      disk: '/var/lib/libvirt/images/pc1.qcow2',
      osPowerState: 'off',
      copiedBytes: 42,
    });
  });

  it("fails with the OS sub-machine's own error and restores an untouched computer", async () => {
    const error = { code: 'GUEST_UNREACHABLE', step: 'ensure_responding', message: 'no answer' };
    const run = await runCapture('libvirt', {
      os: { ok: false, touched: false, warnings: [], error },
    });
    expect(run.output).toMatchObject({ status: 'failed', error });
    expect(run.steps).toEqual(['reserve', 'inspect_domain', 'os', 'release_computer']);
    expect(run.inputOf('release_computer')?.release).toEqual({ outcome: 'restore', error });
  });

  it('an OS sub-machine that ends without a result counts as touched and sends the computer to maintenance', async () => {
    const run = await runCapture('libvirt', { os: undefined });
    expect(run.steps.at(-1)).toBe('release_computer');
    expect(run.inputOf('release_computer')?.release).toEqual({
      outcome: 'maintenance',
      error: { code: 'STEP_FAILED', step: 'pre_capture', message: 'failed' },
    });
    expect(run.output).toEqual({
      captureId: 'c1',
      image: IMAGE,
      warnings: [],
      status: 'failed',
      error: { code: 'STEP_FAILED', step: 'pre_capture', message: 'capture ended without an image' },
      cleanupFailures: [],
    });
  });

  it('tells the release the error that sent the computer to maintenance', async () => {
    const run = await runCapture('libvirt', { answers: { copy_image: failure('NO_SPACE', 'disk full') } });
    expect(run.inputOf('release_computer')?.release).toEqual({
      outcome: 'maintenance',
      error: { code: 'NO_SPACE', step: 'copy_image', message: 'disk full' },
    });
  });

  it('a capture whose steps all succeed without an artifact is failed, not completed', async () => {
    const run = await runCapture('libvirt', { answers: { copy_image: { output: {} } } });
    expect(run.output).toMatchObject({
      status: 'failed',
      error: { code: 'STEP_FAILED', step: 'record_revision', message: 'capture ended without an image' },
    });
  });

  it('escalates only a power-off wait that timed out, with a warning naming it', async () => {
    const timedOut = await runCapture('libvirt', {
      os: { ...OS_OK, powerState: 'on' },
      input: { endState: 'on' },
      answers: { wait_power_off: failure('TIMEOUT', 'still running after 600 s') },
    });
    expect(timedOut.steps).toContain('force_power_off');
    expect(timedOut.output).toMatchObject({
      status: 'completed',
      warnings: [{ step: 'wait_power_off', code: 'TIMEOUT', message: 'still running after 600 s' }],
    });
    const refused = await runCapture('libvirt', {
      answers: { wait_power_off: failure('SSH_ABORTED', 'connection lost') },
    });
    expect(refused.steps).not.toContain('force_power_off');
    expect(refused.output).toMatchObject({ status: 'failed', error: { code: 'SSH_ABORTED' } });
  });

  it('repairs a VMware disk once when the clone needs it, and fails when it needs it again', async () => {
    const needsRepair = failure('NEEDS_REPAIR', 'disk needs repair');
    const once = await runCapture('vmware', { answers: { clone_disk: [needsRepair, { output: {} }] } });
    expect(once.steps.filter((s) => s === 'clone_disk' || s === 'repair_disk')).toEqual([
      'clone_disk',
      'repair_disk',
      'clone_disk',
    ]);
    expect(once.output).toMatchObject({
      status: 'completed',
      warnings: [{ step: 'clone_disk', code: 'NEEDS_REPAIR', message: 'disk needs repair' }],
    });
    const twice = await runCapture('vmware', { answers: { clone_disk: [needsRepair, needsRepair] } });
    expect(twice.steps.filter((s) => s === 'repair_disk')).toHaveLength(1);
    expect(twice.output).toMatchObject({ status: 'failed', error: { code: 'NEEDS_REPAIR' } });
    const other = await runCapture('vmware', { answers: { clone_disk: failure('NO_SPACE', 'full') } });
    expect(other.steps).not.toContain('repair_disk');
  });

  it('xCAT with end state off points the node at its image after the OS shut it down', async () => {
    const off = await runCapture('xcat', { input: { endState: 'off' } });
    expect(off.steps.slice(0, 6)).toEqual([
      'reserve',
      'check_target',
      'os',
      'set_capture_boot',
      'ensure_node_on',
      'wait_capture_env',
    ]);
    // With reboot the node must already point at the capture image when the OS reboots.
    const reboot = await runCapture('xcat', { input: { endState: 'reboot' } });
    expect(reboot.steps.slice(0, 5)).toEqual([
      'reserve',
      'check_target',
      'set_capture_boot',
      'os',
      'ensure_node_on',
    ]);
    expect(reboot.osInputs).toEqual([expect.objectContaining({ endState: 'reboot' })]);
    expect(reboot.output.status).toBe('completed');
  });

  it('says in the error which step a cancel came in, and why when the canceller said', async () => {
    const withReason = await runCapture('libvirt', { cancelAt: { step: 'copy_image', reason: 'operator' } });
    expect(withReason.output).toMatchObject({
      status: 'cancelled',
      error: { code: 'CANCELLED', step: 'copy_image', message: 'cancelled during copy_image: operator' },
    });
    const bare = await runCapture('libvirt', { cancelAt: { step: 'copy_image' } });
    expect(bare.output.status === 'cancelled' && bare.output.error.message).toBe(
      'cancelled during copy_image',
    );
  });

  it('boots the verified image only when the check step found the inventory asks for a boot test', async () => {
    const withFact = (bootTest: unknown) =>
      runCapture('libvirt', { answers: { inspect_domain: { output: { facts: { bootTest } } } } });
    const tested = await withFact(true);
    expect(tested.steps.slice(-3)).toEqual(['verify_image', 'boot_test', 'record_revision']);
    expect(tested.output.status).toBe('completed');
    for (const value of [false, undefined, 'true']) {
      const untested = await withFact(value);
      expect(untested.steps).not.toContain('boot_test');
      expect(untested.steps.slice(-2)).toEqual(['verify_image', 'record_revision']);
    }
  });

  it('releases a touched computer to maintenance and an untouched one back (releaseOutcome)', () => {
    expect(releaseOutcome({ touched: true })).toBe('maintenance');
    expect(releaseOutcome({ touched: false })).toBe('restore');
  });

  it('upgrades a snapshot persisted before `touched` existed from its osTouched, and leaves others alone', () => {
    const old = { value: { capturing: 'copy_image' }, context: { step: 'copy_image', osTouched: false } };
    expect(upgradeCaptureSnapshot(old)).toEqual({
      value: { capturing: 'copy_image' },
      context: { step: 'copy_image', touched: false },
    });
    expect(upgradeCaptureSnapshot({ context: { osTouched: true } })).toEqual({ context: { touched: true } });
    // A snapshot from before the OS sub-machine reported anything: it may have touched the computer.
    expect(upgradeCaptureSnapshot({ context: {} })).toEqual({ context: { touched: true } });
    const current = { context: { touched: false } };
    expect(upgradeCaptureSnapshot(current)).toBe(current);
    expect(upgradeCaptureSnapshot(null)).toBeNull();
    expect(upgradeCaptureSnapshot({ value: 'done' })).toEqual({ value: 'done' });
    expect(upgradeCaptureSnapshot({ context: null })).toEqual({ context: null });
  });

  it('gives a snapshot persisted before bootTestMs existed its default, so a resumed boot test arms a deadline', () => {
    const { bootTestMs: _added, ...before } = DEFAULT_TIMEOUTS;
    const old = { context: { touched: true, timeouts: { ...before, copyMs: 5 } } };
    expect(upgradeCaptureSnapshot(old)).toEqual({
      context: { touched: true, timeouts: { ...DEFAULT_TIMEOUTS, copyMs: 5 } },
    });
    const current = { context: { touched: true, timeouts: { ...DEFAULT_TIMEOUTS } } };
    expect(upgradeCaptureSnapshot(current)).toBe(current);
  });
});
