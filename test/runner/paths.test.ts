/**
 * The machines' paths, forced through the runner against the lab with its fault injection: for every
 * forward step of every provisioner, a run where that step fails and a run cancelled while it works
 * (plus the escalations: power-off timeout, "needs repair", a failing cleanup step). Each run must end
 * as the machine predicts for that outcome (the same machine run with scripted effects), enter the same
 * states in the same order, and leave the right effects behind: the image in the repository with the
 * source's hash, or nothing; the computer in `reload`, `maintenance`, or back where it was; the source
 * disk unchanged.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type AnyStateMachine, createActor, fromPromise, waitFor } from 'xstate';
import {
  type CaptureResult,
  defaultEndStateOf,
  type EndState,
  effectNames,
  type OsResult,
  type ProvisionerName,
  provisioners,
} from '../../machines/index.js';
import type { Inventory } from '../../src/inventory/schema.js';
import { COPY_READ_SCRIPT, startLab } from '../../src/lab/index.js';
import type { CommandMatch, Fault, Lab } from '../../src/lab/types.js';
import { labTransientDomains } from '../../src/provisioners/libvirt/lab-commands.js';
import { createRunner, type Runner, type RunnerEvent } from '../../src/runner/runner.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import { withBootTest } from '../helpers/boot-test.js';
import { expectStoredImage } from '../helpers/stored-image.js';
import { ARTIFACT } from '../model/catalogue.js';

type Inject =
  /** The step's characteristic command fails (exit 1) when the step starts. */
  | { fail: CommandMatch; host?: string }
  /** A lab fault added before the capture starts. */
  | { before: (computer: string) => Fault };

interface Run {
  name: string;
  provisioner: ProvisionerName;
  os: 'linux' | 'windows';
  endState?: EndState;
  /** The effect whose outcome the run forces. */
  step: string;
  outcome: 'error' | 'cancel';
  /** Its error code in the scripted prediction. */
  code?: string;
  inject: Inject;
  /** Faults that make earlier steps take the path to `step` (e.g. a power-off timeout). */
  setup?: (computer: string) => Fault[];
  timeouts?: Record<string, number>;
  /** The computer's inventory turns the boot test on (libvirt; its repository then on the libvirt host). */
  bootTest?: boolean;
}

/** How to make each step fail, by the command that does its work. */
const FAIL: Record<ProvisionerName, Record<string, CommandMatch>> = {
  libvirt: {
    inspect_domain: ['virsh', 'domblklist'],
    request_power_off: ['virsh', 'shutdown'],
    wait_power_off: ['virsh', 'domstate'],
    force_power_off: ['virsh', 'destroy'],
    wait_forced_off: ['virsh', 'domstate'],
    copy_image: ['qemu-img', 'convert'],
    verify_image: ['sha256sum'],
  },
  vmware: {
    locate_vm: ['vim-cmd', 'vmsvc/getallvms'],
    check_target: ['test'],
    request_power_off: ['vim-cmd', 'vmsvc/power.getstate'],
    wait_power_off: ['vim-cmd', 'vmsvc/power.getstate'],
    force_power_off: ['vim-cmd', 'vmsvc/power.off'],
    wait_forced_off: ['vim-cmd', 'vmsvc/power.getstate'],
    clone_disk: ['vmkfstools', '-i'],
    repair_disk: ['vmkfstools', '-x'],
    // The transport's reader: `sh -c 'stat … && exec cat …'` (src/ssh/copy.ts); ESXi has no zstd, so the
    // raw one (matched in full: the pool's `sh -c 'command -v "$1"' sh zstd` probe comes first).
    copy_to_repository: ['sh', '-c', COPY_READ_SCRIPT],
    verify_image: ['sha256sum'],
  },
  xcat: {
    check_target: ['test'],
    set_capture_boot: ['nodeset'],
    ensure_node_on: ['rpower'],
    wait_capture_env: ['nodestat'],
    // The repository listing that also tells the upload's markers (src/provisioners/xcat/steps.ts).
    watch_upload: ['find'],
    verify_image: ['sha256sum'],
    reset_boot: ['nodeset'],
  },
  proxmox: {
    inspect_vm: ['qm', 'config'],
    request_power_off: ['qm', 'shutdown'],
    wait_power_off: ['qm', 'status'],
    force_power_off: ['qm', 'stop'],
    wait_forced_off: ['qm', 'status'],
    copy_image: ['qemu-img', 'convert'],
    verify_image: ['sha256sum'],
  },
};
/** What makes the OS sub-machine fail: a critical pre_capture step. */
const OS_FAIL: Record<'linux' | 'windows', CommandMatch> = {
  linux: ['umount'],
  windows: ['netsh', 'advfirewall', 'firewall', 'set'],
};
/** A host a step's failing command goes to, when it is not the provisioner's. */
const HOST_OF: Record<string, string> = {
  verify_image: 'repo-host',
  copy_to_repository: 'esxi-host',
};

const KIND = { libvirt: 'lv', vmware: 'vm', xcat: 'xc', proxmox: 'px' } as const;
const PROVISIONER_HOST = {
  libvirt: 'libvirt-host',
  vmware: 'esxi-host',
  xcat: 'xcat-mn',
  proxmox: 'pve-node',
} as const;
/** The step that checks the source before anything is touched, and the one that moves the image. */
const CHECK_STEP = {
  libvirt: 'inspect_domain',
  vmware: 'locate_vm',
  xcat: 'check_target',
  proxmox: 'inspect_vm',
};
const COPY_STEP = {
  libvirt: 'copy_image',
  vmware: 'copy_to_repository',
  xcat: 'watch_upload',
  proxmox: 'copy_image',
};
const CHECK_FAIL: Record<ProvisionerName, CommandMatch> = {
  libvirt: ['virsh', 'domstate'],
  vmware: ['vim-cmd'],
  xcat: ['test'],
  proxmox: ['qm', 'config'],
};

function runs(): Run[] {
  const out: Run[] = [];
  for (const p of ['libvirt', 'vmware', 'xcat', 'proxmox'] as const) {
    const os = 'linux' as const;
    // libvirt and Proxmox with end state on: the provisioner shuts the VM down itself (request_power_off works).
    const endState: EndState = p === 'libvirt' || p === 'proxmox' ? 'on' : defaultEndStateOf(p, os);
    const timeoutSetup = (c: string): Fault[] => [{ kind: 'neverPowersOff', computer: c, mode: 'ignore' }];
    for (const [step, match] of Object.entries(FAIL[p])) {
      const escalated = step === 'force_power_off' || step === 'wait_forced_off';
      const repair = step === 'repair_disk';
      const host =
        p === 'xcat' && ['watch_upload', 'check_target', 'verify_image'].includes(step)
          ? 'xcat-mn'
          : HOST_OF[step];
      const base = {
        provisioner: p,
        os,
        endState,
        step,
        ...(escalated
          ? { setup: timeoutSetup, timeouts: { powerOffMs: 600, osShutdownMs: 600 } }
          : repair
            ? { setup: (): Fault[] => [{ kind: 'needsRepair', host: 'esxi-host' }] }
            : {}),
      };
      out.push({
        ...base,
        name: `${p}: ${step} fails`,
        outcome: 'error',
        code: 'STEP_FAILED',
        inject: { fail: match, ...(host ? { host } : {}) },
      });
    }
    out.push({
      name: `${p}: the OS fails a critical step`,
      provisioner: p,
      os,
      endState,
      step: 'os',
      outcome: 'error',
      code: 'STEP_FAILED',
      inject: { before: (c) => ({ kind: 'failCommand', host: c, match: OS_FAIL[os], exitCode: 32 }) },
    });
    if (p !== 'xcat') {
      out.push({
        name: `${p}: the power-off wait times out and escalates`,
        provisioner: p,
        os,
        endState,
        step: 'wait_power_off',
        outcome: 'error',
        code: 'TIMEOUT',
        inject: { before: (c) => ({ kind: 'neverPowersOff', computer: c, mode: 'ignore' }) },
        timeouts: { powerOffMs: 600, osShutdownMs: 600 },
      });
    }
    // Cancelled while a long step runs: the copy.
    const copyStep = COPY_STEP[p];
    out.push({
      name: `${p}: cancelled during ${copyStep}`,
      provisioner: p,
      os,
      endState,
      step: copyStep,
      outcome: 'cancel',
      inject: {
        fail: FAIL[p][copyStep] as CommandMatch,
        ...(HOST_OF[copyStep] ? { host: HOST_OF[copyStep] } : {}),
      },
    });
    out.push({
      name: `${p}: cancelled right after reservation`,
      provisioner: p,
      os,
      endState,
      step: CHECK_STEP[p],
      outcome: 'cancel',
      inject: { fail: CHECK_FAIL[p] },
    });
  }
  out.push({
    name: 'vmware: needs repair, repaired, completes',
    provisioner: 'vmware',
    os: 'linux',
    step: 'clone_disk',
    outcome: 'error',
    code: 'NEEDS_REPAIR',
    inject: { before: () => ({ kind: 'needsRepair', host: 'esxi-host' }) },
  });
  // The repository copy is several commands and copies: a failure or a cancel at its first (the 2gbsparse
  // clone on the datastore) and at its last (the manifest, once the rest of the set is in place) must leave
  // no file of the set anywhere.
  const sparseClone = /^vmkfstools -i .* -d 2gbsparse$/;
  const manifestRead = /^sh -c .* \S+\.vmdk\.sha256$/;
  for (const [what, match] of [
    ['the 2gbsparse clone', sparseClone],
    ['the manifest, the set already in place', manifestRead],
  ] as const) {
    out.push({
      name: `vmware: copy_to_repository fails at ${what}`,
      provisioner: 'vmware',
      os: 'linux',
      step: 'copy_to_repository',
      outcome: 'error',
      code: 'STEP_FAILED',
      inject: { fail: match, host: 'esxi-host' },
    });
    out.push({
      name: `vmware: cancelled during copy_to_repository at ${what}`,
      provisioner: 'vmware',
      os: 'linux',
      step: 'copy_to_repository',
      outcome: 'cancel',
      inject: { fail: match, host: 'esxi-host' },
    });
  }
  // The boot test (libvirt, switched on for these computers only): passes, the image does not boot, its
  // command fails, cancelled while it runs. Each run has its own computer (computerOf).
  const boot = { provisioner: 'libvirt', os: 'linux', endState: 'on', bootTest: true } as const;
  out.push(
    {
      ...boot,
      name: 'libvirt: the boot test passes',
      step: 'none',
      outcome: 'error',
      inject: { before: (c) => ({ kind: 'failCommand', host: c, match: ['never-sent'], exitCode: 1 }) },
    },
    {
      ...boot,
      name: 'libvirt: boot_test fails: the image does not boot (BOOT_TEST_FAILED)',
      step: 'boot_test',
      outcome: 'error',
      code: 'BOOT_TEST_FAILED',
      inject: { before: () => ({ kind: 'doesNotBoot', host: 'libvirt-host' }) },
      timeouts: { bootTestMs: 1500 },
    },
    {
      ...boot,
      name: 'libvirt: boot_test fails: virsh create',
      step: 'boot_test',
      outcome: 'error',
      code: 'STEP_FAILED',
      inject: { fail: ['virsh', 'create'] },
    },
    {
      ...boot,
      name: 'libvirt: cancelled during boot_test',
      step: 'boot_test',
      outcome: 'cancel',
      inject: { fail: ['virsh', 'create'] },
    },
  );
  out.push({
    name: 'xcat + windows (end state off): OS first, then the capture image',
    provisioner: 'xcat',
    os: 'windows',
    step: 'none',
    outcome: 'error',
    inject: { before: (c) => ({ kind: 'failCommand', host: c, match: ['never-sent'], exitCode: 1 }) },
  });
  return out;
}

/**
 * What the machine does for this outcome: the same machine with scripted effects, all succeeding except
 * the forced one. Returns the provisioner states entered and the final result.
 */
async function predict(run: Run, endState: EndState): Promise<{ states: string[]; status: string }> {
  const machine = provisioners[run.provisioner].machine as AnyStateMachine;
  const escalates =
    run.setup !== undefined && (run.step === 'force_power_off' || run.step === 'wait_forced_off');
  const repairs = run.step === 'repair_disk' || run.code === 'NEEDS_REPAIR';
  const seen = new Map<string, number>();
  const actors = Object.fromEntries(
    effectNames(machine).map((name) => [
      name,
      fromPromise<unknown, { artifact?: unknown }>(async () => {
        const n = (seen.get(name) ?? 0) + 1;
        seen.set(name, n);
        if (name === 'os') {
          if (run.step === 'os')
            return { ok: false, error: { code: 'STEP_FAILED', step: 'x', message: 'x' }, warnings: [] };
          return {
            ok: true,
            powerState: endState === 'on' ? 'on' : endState === 'reboot' ? 'rebooting' : 'off',
            warnings: [],
          } satisfies OsResult;
        }
        if (
          name === 'wait_power_off' &&
          (escalates || (run.step === 'wait_power_off' && run.code === 'TIMEOUT'))
        )
          throw Object.assign(new Error('t'), { code: 'TIMEOUT' });
        if (name === 'clone_disk' && repairs && n === 1)
          throw Object.assign(new Error('r'), { code: 'NEEDS_REPAIR' });
        if (
          name === run.step &&
          run.outcome === 'error' &&
          (run.code === 'STEP_FAILED' || run.code === 'BOOT_TEST_FAILED')
        )
          throw Object.assign(new Error('f'), { code: run.code });
        if (name === 'inspect_domain' && run.bootTest) return { facts: { bootTest: true } };
        if (name === run.step && run.outcome === 'cancel') return new Promise(() => {});
        if (['copy_image', 'copy_to_repository', 'watch_upload'].includes(name))
          return { artifact: ARTIFACT };
        return {};
      }),
    ]),
  );
  const states: string[] = [];
  const actor = createActor(machine.provide({ actors }), {
    input: {
      captureId: 'p',
      computer: 'pc',
      os: run.os,
      image: { name: 'x-A1-v0', imageId: 1, revision: 0 },
      endState,
    },
  });
  actor.subscribe((s) => {
    const v = stateName(s.value);
    if (states.at(-1) !== v) states.push(v);
    if (run.outcome === 'cancel' && v === `capturing.${run.step}`)
      queueMicrotask(() => actor.send({ type: 'CANCEL' }));
  });
  actor.start();
  const final = await waitFor(actor, (s) => s.status === 'done', { timeout: 2000 });
  return { states, status: (final.output as CaptureResult).status };
}

function stateName(value: unknown): string {
  if (typeof value === 'string') return value;
  const [k, v] = Object.entries(value as Record<string, unknown>)[0] ?? ['', ''];
  return `${k}.${stateName(v)}`;
}

let lab: Lab;
let store: SqliteCaptureStore;
let runner: Runner;
let dir: string;
const all = runs();
/** Each run's own computer, numbered per provisioner and OS in the runs' order (filtered runs too). */
const computerOf = (() => {
  const used = new Map<string, number>();
  return new Map(
    all.map((r) => {
      const kind = `${KIND[r.provisioner]}-${r.os}`;
      used.set(kind, (used.get(kind) ?? 0) + 1);
      return [r, `${kind}-${used.get(kind)}`] as const;
    }),
  );
})();
/** Computers whose inventory entry turns the boot test on, and the inventory the runner uses. */
const bootComputers = all.filter((r) => r.bootTest).map((r) => computerOf.get(r) as string);
let inventory: Inventory;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-paths-'));
  const count = (p: ProvisionerName, os: string) =>
    all.filter((r) => r.provisioner === p && r.os === os).length;
  lab = await startLab({
    powerDelayMs: 15,
    captureChunkMs: 10,
    computers: {
      'libvirt-linux': count('libvirt', 'linux'),
      'vmware-linux': count('vmware', 'linux'),
      'xcat-linux': count('xcat', 'linux'),
      'xcat-windows': count('xcat', 'windows'),
      'proxmox-linux': count('proxmox', 'linux'),
    },
  });
  store = openSqliteStore(join(dir, 'store.sqlite'));
  inventory = withBootTest(lab.inventory, bootComputers);
  runner = createRunner({ inventory, store, pollMs: 15 });
});

afterAll(async () => {
  await runner?.close();
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('paths forced through the runner against the lab', () => {
  it.each(all.map((r) => [r.name, r] as const))('%s', async (_name, run) => {
    const computer = computerOf.get(run) as string;
    const endState = run.endState ?? defaultEndStateOf(run.provisioner, run.os);
    const source = await lab.diskSha256(computer);
    for (const f of run.setup?.(computer) ?? []) lab.faults.add(f);
    if ('before' in run.inject) lab.faults.add(run.inject.before(computer));
    const states: string[] = [];
    let handleCancel: (() => void) | undefined;
    let captureId = '';
    const off = runner.on((e: RunnerEvent) => {
      // Events can come before runner.capture() resolves: the queued event names the capture first.
      if (e.type === 'queued' && e.computer === computer) captureId = e.captureId;
      if (e.type !== 'state' || e.captureId !== captureId) return;
      const v = stateName(e.state);
      if (states.at(-1) !== v) states.push(v);
      if (v === `capturing.${run.step}` && 'fail' in run.inject) {
        const host = run.inject.host ?? PROVISIONER_HOST[run.provisioner];
        if (run.outcome === 'error')
          lab.faults.add({
            kind: 'failCommand',
            host,
            match: run.inject.fail,
            exitCode: 2,
            stderr: 'injected',
          });
        else {
          lab.faults.add({ kind: 'hangCommand', host, match: run.inject.fail });
          const poll = setInterval(() => {
            if (lab.runningCommands(host) > 0) {
              clearInterval(poll);
              handleCancel?.();
            }
          }, 5);
        }
      }
    });
    const handle = await runner.capture({
      computer,
      image: { osName: run.os, prettyName: `Path ${computer}`, owner: 'test' },
      endState,
      ...(run.timeouts ? { timeouts: run.timeouts } : {}),
    });
    handleCancel = () => handle.cancel('test');
    const result = await handle.result;
    off();
    lab.faults.clear();

    const expected = await predict(run, endState);
    expect(result.status, JSON.stringify(result.status === 'completed' ? {} : result.error)).toBe(
      expected.status,
    );
    // The runner reports the first state only once it is running; compare from reserve on.
    expect(states.slice(states.indexOf('capturing.reserve'))).toEqual(
      expected.states.slice(expected.states.indexOf('capturing.reserve')),
    );

    const repo = inventory.repositories[inventory.computers[computer]?.repository ?? ''];
    if (!repo) throw new Error('no repository');
    const files = readdirSync(await lab.realPath(repo.host, repo.path)).filter((f) =>
      f.includes(handle.image.name),
    );
    const record = await store.getCapture(handle.id);
    const computerState = (await store.getComputer(computer))?.state;
    if (result.status === 'completed') {
      await expectStoredImage(lab, computer, result.artifact, source, inventory);
      expect(computerState).toBe('reload');
      expect(record?.status).toBe('completed');
    } else {
      // Nothing half-made is kept: no image, no marker, no temporary file.
      expect(files).toEqual([]);
      // VMware: nor the clone, nor the 2gbsparse set staged beside it on the datastore.
      if (run.provisioner === 'vmware')
        expect(await lab.exists('esxi-host', `/vmfs/volumes/datastore1/${handle.image.name}`)).toBe(false);
      expect(record?.status).toBe(result.status);
      if (run.code === 'BOOT_TEST_FAILED')
        expect(result.error).toMatchObject({ code: 'BOOT_TEST_FAILED', step: 'boot_test' });
      // No revision of the image was recorded.
      expect((await store.getImage(handle.image.imageId))?.revisions.filter((r) => !r.deleted)).toEqual([]);
      // Failed or cancelled alike: back where it was unless the computer was touched (the OS sub-machine
      // got past its first look, which every OS run here does) or an undo failed.
      const touched = expected.states.includes('capturing.pre_capture') || result.cleanupFailures.length > 0;
      expect(computerState).toBe(touched ? 'maintenance' : 'available');
    }
    if (run.bootTest) {
      // Whatever the outcome, the boot test left no domain and no overlay, console log or definition.
      expect(labTransientDomains()).toEqual([]);
      const disks = readdirSync(await lab.realPath('libvirt-host', '/var/lib/libvirt/images'));
      expect(disks.filter((f) => f.startsWith('.vcl-'))).toEqual([]);
      expect(states.includes('capturing.boot_test')).toBe(true);
    }
    if (run.provisioner === 'proxmox')
      // The staging file on the node (the repository is repo-host) is gone whatever the outcome.
      expect(readdirSync(await lab.realPath('pve-node', '/var/lib/vz/dump'))).toEqual([]);
    expect(await lab.diskSha256(computer)).toBe(source);
    expect(lab.internalErrors).toEqual([]);
  });
});
