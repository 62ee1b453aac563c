/**
 * libvirt's preflight (the checks of `vcl-capture preflight` and of inspect_domain) and its boot test
 * steps (boot_test, remove_boot_test) one by one against the lab: each check's name, status and the text
 * a user reads, each failure's code and message; the commands the boot test sends, what it returns, how
 * it fails, and what its removal tolerates.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CaptureStepInput, Facts } from '../../machines/index.js';
import type { Remote } from '../../src/drivers/contract.js';
import type { DriverEnv } from '../../src/drivers/env.js';
import { Checklist } from '../../src/drivers/preflight.js';
import { VclError } from '../../src/errors.js';
import { captureHostsOf, inventoryHosts } from '../../src/inventory/hosts.js';
import type { Inventory } from '../../src/inventory/schema.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { silentLogger } from '../../src/log.js';
import { labTransientDomains } from '../../src/provisioners/libvirt/lab-commands.js';
import { libvirtPreflight, libvirtSteps } from '../../src/provisioners/libvirt/steps.js';
import { SshPool } from '../../src/ssh/index.js';
import { type BootTestSetting, withBootTest } from '../helpers/boot-test.js';
import { captureOf, filesWith, stepRun } from './rerun-helpers.js';

const IMAGES = '/var/lib/libvirt/images';
const SSH_PORT = 20122;

let lab: Lab;
let pool: SshPool;

beforeAll(async () => {
  lab = await startLab({ powerDelayMs: 20, computers: { 'libvirt-linux': 3 } });
  pool = new SshPool({ logger: silentLogger() });
});

afterEach(() => {
  lab.faults.clear();
});

afterAll(async () => {
  await pool?.close();
  await lab?.stop();
});

/** The environment the runner gives a capture of `computer` under `inventory` (changed by the test). */
function envOf(computer: string, inventory: Inventory = lab.inventory, remote: Remote = pool): DriverEnv {
  const entry = inventory.computers[computer];
  if (!entry) throw new Error(`no computer ${computer}`);
  return {
    remote,
    computerName: computer,
    computer: entry,
    ...captureHostsOf(inventory, inventoryHosts(inventory), entry),
    pollMs: 20,
  };
}

/** The lab's inventory with `computer`'s entry changed. */
function changed(computer: string, change: (entry: Record<string, unknown>) => void): Inventory {
  const inventory = structuredClone(lab.inventory);
  const entry = inventory.computers[computer];
  if (!entry) throw new Error(`no computer ${computer}`);
  change(entry as unknown as Record<string, unknown>);
  return inventory;
}

/** The collecting preflight as `vcl-capture preflight` runs it: every check recorded. */
async function preflightOf(env: DriverEnv, imageName?: string, target = imageName !== undefined) {
  const list = new Checklist(false);
  const run = stepRun({
    step: 'preflight',
    ...(imageName === undefined ? {} : { image: { name: imageName } }),
  });
  const facts = await libvirtPreflight(env, run, list, { target });
  return { facts, checks: list.checks, ok: list.ok };
}

function check(checks: { name: string }[], name: string) {
  const c = checks.find((x) => x.name === name);
  if (!c) throw new Error(`no check ${name} in ${checks.map((x) => x.name).join(', ')}`);
  return c;
}

async function refusal(p: Promise<unknown>): Promise<VclError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof VclError)) throw new Error(`expected a VclError, got ${String(err)}`);
  return err;
}

/** The lines `lab` received on the libvirt host while `fn` ran. */
async function sentDuring(fn: () => Promise<unknown>): Promise<string[]> {
  const from = lab.commandLog.length;
  await fn();
  return lab.commandLog
    .slice(from)
    .filter((e) => e.host === 'libvirt-host' && e.argv)
    .map((e) => (e.argv as string[]).join(' '));
}

const GiB = 1024 ** 3;

/** qemu-img info's answer for a disk of `virtual` bytes with `actual` allocated (absent: a block device). */
function imageInfo(format: string, virtual: number, actual?: number) {
  return {
    kind: 'failCommand' as const,
    host: 'libvirt-host',
    match: ['qemu-img', 'info'],
    exitCode: 0,
    stdout: JSON.stringify({
      format,
      'virtual-size': virtual,
      ...(actual === undefined ? {} : { 'actual-size': actual }),
    }),
  };
}

function domblklist(rows: string) {
  return {
    kind: 'failCommand' as const,
    host: 'libvirt-host',
    match: ['virsh', 'domblklist'],
    exitCode: 0,
    stdout: ` Type      Device   Target   Source\n------------------------------------\n${rows}`,
  };
}

const statuses = (checks: { name: string; status: string }[]) => checks.map((c) => [c.name, c.status]);

describe('libvirt preflight', () => {
  it('reports each host, the domain with its state and disk, the target free and the room for the copy; returns the facts', async () => {
    lab.faults.add(imageInfo('qcow2', 40 * GiB, 3 * GiB));
    const { facts, checks, ok } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre1-v0');
    expect(ok).toBe(true);
    expect(statuses(checks)).toEqual([
      ['reach libvirt-host', 'ok'],
      ['tools on libvirt-host', 'ok'],
      ['reach repo-host', 'ok'],
      ['tools on repo-host', 'ok'],
      ['domain lv-linux-1', 'ok'],
      ['target', 'ok'],
      ['space in repository images', 'ok'],
      ['space in staging folder', 'ok'],
    ]);
    expect(check(checks, 'domain lv-linux-1').detail).toBe(
      `running, first disk ${IMAGES}/lv-linux-1.qcow2 (qcow2, 3.0 GiB (3221225472 bytes) allocated)`,
    );
    expect(check(checks, 'target').detail).toBe('/srv/vcl/images/linux-Pre1-v0.qcow2 is free');
    // A qcow2 copy takes what the disk has allocated, in the repository and in the staging folder.
    for (const name of ['space in repository images', 'space in staging folder'])
      expect(check(checks, name).detail).toBe(
        '512.0 GiB (549755813888 bytes) free, 4.0 GiB (4294967296 bytes) needed',
      );
    expect(facts).toStrictEqual({
      domain: 'lv-linux-1',
      disk: `${IMAGES}/lv-linux-1.qcow2`,
      sourceFormat: 'qcow2',
      target: '/srv/vcl/images/linux-Pre1-v0.qcow2',
    });
  });

  it('a domain that is off, copied raw to another host: the repository needs the whole virtual size', async () => {
    lab.powerOff('lv-linux-3');
    await lab.waitForPower('lv-linux-3', 'off');
    lab.faults.add(imageInfo('qcow2', 40 * GiB, 3 * GiB));
    const raw = changed('lv-linux-3', (e) => {
      (e.provisioner as { format: string }).format = 'raw';
    });
    const { facts, checks } = await preflightOf(envOf('lv-linux-3', raw), 'linux-Raw1-v0');
    lab.powerOn('lv-linux-3');
    expect(check(checks, 'domain lv-linux-3').detail).toMatch(/^shut off, first disk /);
    expect(check(checks, 'space in repository images').detail).toBe(
      '512.0 GiB (549755813888 bytes) free, 42.0 GiB (45097156608 bytes) needed',
    );
    expect(check(checks, 'space in staging folder').detail).toBe(
      '512.0 GiB (549755813888 bytes) free, 4.0 GiB (4294967296 bytes) needed',
    );
    expect(facts?.target).toBe('/srv/vcl/images/linux-Raw1-v0.raw');
    await lab.waitForPower('lv-linux-3', 'on');
  });

  it('without the target check (no image name from the CLI) the target is skipped and no target fact returned', async () => {
    const named = await preflightOf(envOf('lv-linux-1'), 'linux-Pre2-v0', false);
    expect(check(named.checks, 'target')).toEqual({
      name: 'target',
      status: 'skipped',
      detail: 'no image name given',
    });
    expect(named.ok).toBe(true);
    expect(named.facts).toStrictEqual({
      domain: 'lv-linux-1',
      disk: `${IMAGES}/lv-linux-1.qcow2`,
      sourceFormat: 'qcow2',
    });
  });

  it('a repository on the libvirt host: one host checked, no staging folder', async () => {
    const local = changed('lv-linux-1', (e) => {
      e.repository = 'kvm-local';
    });
    const { checks, facts } = await preflightOf(envOf('lv-linux-1', local), 'linux-Pre3-v0');
    expect(statuses(checks)).toEqual([
      ['reach libvirt-host', 'ok'],
      ['tools on libvirt-host', 'ok'],
      ['domain lv-linux-1', 'ok'],
      ['target', 'ok'],
      ['space in repository kvm-local', 'ok'],
    ]);
    expect(facts?.target).toBe('/var/lib/vcl/images/linux-Pre3-v0.qcow2');
  });

  it('a block device disk is copied: its size is its virtual size', async () => {
    lab.faults.add(domblklist(' block     disk     vda      /dev/vg0/lv-linux-1\n'));
    lab.faults.add(imageInfo('raw', 8 * GiB));
    const local = changed('lv-linux-1', (e) => {
      e.repository = 'kvm-local';
    });
    const { checks, facts, ok } = await preflightOf(envOf('lv-linux-1', local), 'linux-Blk1-v0');
    expect(ok).toBe(true);
    expect(check(checks, 'domain lv-linux-1').detail).toBe(
      'running, first disk /dev/vg0/lv-linux-1 (raw, 8.0 GiB (8589934592 bytes) allocated)',
    );
    expect(check(checks, 'space in repository kvm-local').detail).toMatch(
      /, 9\.0 GiB \(9663676416 bytes\) needed$/,
    );
    expect(facts).toMatchObject({ disk: '/dev/vg0/lv-linux-1', sourceFormat: 'raw' });
  });

  it('a host that fails its check skips the domain and asks the libvirt host nothing about it', async () => {
    lab.faults.add({ kind: 'unreachable', host: 'repo-host' });
    let result: Awaited<ReturnType<typeof preflightOf>> | undefined;
    const sent = await sentDuring(async () => {
      result = await preflightOf(envOf('lv-linux-1'), 'linux-Pre4-v0');
    });
    expect(result?.facts).toBeUndefined();
    expect(statuses(result?.checks ?? [])).toEqual([
      ['reach libvirt-host', 'ok'],
      ['tools on libvirt-host', 'ok'],
      ['reach repo-host', 'failed'],
      ['tools on repo-host', 'skipped'],
      ['domain lv-linux-1', 'skipped'],
    ]);
    expect(check(result?.checks ?? [], 'domain lv-linux-1').detail).toBe(
      'a host on the path failed its check',
    );
    expect(sent.filter((l) => l.startsWith('virsh'))).toEqual([]);
  });

  it('a domain the libvirt host does not have: NOT_FOUND saying what to fix; the target is skipped', async () => {
    const gone = changed('lv-linux-1', (e) => {
      (e.provisioner as { domain: string }).domain = 'lv-gone';
    });
    const { checks, facts } = await preflightOf(envOf('lv-linux-1', gone), 'linux-Pre5-v0');
    expect(facts).toBeUndefined();
    expect(checks.slice(-2)).toEqual([
      {
        name: 'domain lv-gone',
        status: 'failed',
        detail:
          'libvirt-host has no domain lv-gone: define it there (virsh define) or fix provisioner.domain of lv-linux-1 in the inventory',
        error: {
          code: 'NOT_FOUND',
          message:
            'libvirt-host has no domain lv-gone: define it there (virsh define) or fix provisioner.domain of lv-linux-1 in the inventory',
        },
      },
      { name: 'target', status: 'skipped', detail: 'domain lv-gone was not found' },
    ]);
    // The capture's step (stopping at the first failure) throws it with the domain named.
    const steps = libvirtSteps(envOf('lv-linux-1', gone));
    const cap = captureOf(lab, 'lv-linux-1', 'off');
    const err = await refusal(Promise.resolve(steps.inspect_domain?.(stepRun(cap.input('inspect_domain')))));
    expect(err).toMatchObject({ code: 'NOT_FOUND', details: { domain: 'lv-gone' } });
  });

  it('virsh domstate failing otherwise is COMMAND_FAILED with its stderr, not NOT_FOUND', async () => {
    lab.faults.add({
      kind: 'failCommand',
      host: 'libvirt-host',
      match: ['virsh', 'domstate'],
      exitCode: 1,
      stdout: 'running (booted)\n',
      stderr: 'error: failed to connect to the hypervisor\n',
    });
    const { checks } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre6-v0');
    expect(check(checks, 'domain lv-linux-1').error).toEqual({
      code: 'COMMAND_FAILED',
      message: 'virsh domstate lv-linux-1 on libvirt-host failed: error: failed to connect to the hypervisor',
    });
  });

  it('a network (rbd) disk is refused as UNSUPPORTED_DISK, naming its target and type', async () => {
    lab.faults.add({ ...domblklist(' network   disk     vda      libvirt-pool/lv-linux-1\n'), times: 2 });
    const { checks, facts } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre7-v0');
    expect(facts).toBeUndefined();
    expect(check(checks, 'domain lv-linux-1').error).toEqual({
      code: 'UNSUPPORTED_DISK',
      message: "lv-linux-1's first disk (vda) is a network disk; a capture copies file or block disks only",
    });
    expect(check(checks, 'target').status).toBe('skipped');
    const steps = libvirtSteps(envOf('lv-linux-1'));
    const cap = captureOf(lab, 'lv-linux-1', 'off');
    const err = await refusal(Promise.resolve(steps.inspect_domain?.(stepRun(cap.input('inspect_domain')))));
    expect(err.details).toEqual({ type: 'network', source: 'libvirt-pool/lv-linux-1' });
  });

  it('a target the repository already holds fails TARGET_EXISTS; no space is checked', async () => {
    const path = '/srv/vcl/images/linux-Taken9-v0.qcow2';
    const { writeFile, rm } = await import('node:fs/promises');
    const real = await lab.realPath('repo-host', path);
    await writeFile(real, 'an older image');
    const { checks, facts } = await preflightOf(envOf('lv-linux-1'), 'linux-Taken9-v0');
    await rm(real);
    expect(facts).toBeUndefined();
    expect(statuses(checks).slice(4)).toEqual([
      ['domain lv-linux-1', 'ok'],
      ['target', 'failed'],
    ]);
    expect(check(checks, 'target').error).toEqual({
      code: 'TARGET_EXISTS',
      message: `the repository already holds ${path}; nothing is overwritten`,
    });
  });

  it('a full repository fails PREFLIGHT_NO_SPACE; the staging folder is still checked; no facts', async () => {
    lab.faults.add(imageInfo('qcow2', 40 * GiB, 3 * GiB));
    lab.faults.add({ kind: 'diskFull', host: 'repo-host' });
    const { checks, facts, ok } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre8-v0');
    expect(ok).toBe(false);
    expect(facts).toBeUndefined();
    expect(statuses(checks).slice(-2)).toEqual([
      ['space in repository images', 'failed'],
      ['space in staging folder', 'ok'],
    ]);
    expect(check(checks, 'space in repository images').error).toEqual({
      code: 'PREFLIGHT_NO_SPACE',
      message:
        "repository images (repo-host:/srv/vcl/images) has 0 bytes free; the capture needs 4.0 GiB (4294967296 bytes) (the copy's 3.0 GiB (3221225472 bytes) plus the margin): free space there or point the inventory at a larger one",
    });
  });

  it('a full staging folder beside the disk fails PREFLIGHT_NO_SPACE there', async () => {
    lab.faults.add({ kind: 'diskFull', host: 'libvirt-host' });
    const { checks, facts } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre9-v0');
    expect(facts).toBeUndefined();
    expect(check(checks, 'space in staging folder').error?.message).toMatch(
      /^staging folder \(libvirt-host:\/var\/lib\/libvirt\/images\) has 0 bytes free/,
    );
  });

  // The detail's text is matched with an optional `}`: steps.ts has a stray brace after the check's text.
  it('with the boot test on: checks it can boot the image where it lies, and says how it sees the boot', async () => {
    const console = await preflightOf(
      envOf('lv-linux-1', withBootTest(lab.inventory, ['lv-linux-1'])),
      'linux-Bt1-v0',
    );
    expect(statuses(console.checks).slice(-1)).toEqual([['boot test', 'ok']]);
    expect(check(console.checks, 'boot test').detail).toMatch(
      /^console line \/login:\/\}?, from an overlay beside the disk$/,
    );
    expect(console.facts).toStrictEqual({
      domain: 'lv-linux-1',
      disk: `${IMAGES}/lv-linux-1.qcow2`,
      sourceFormat: 'qcow2',
      target: '/var/lib/vcl/images/linux-Bt1-v0.qcow2',
      bootTest: true,
    });
    const ssh = await preflightOf(
      envOf('lv-linux-1', withBootTest(lab.inventory, ['lv-linux-1'], { check: 'ssh', port: SSH_PORT })),
    );
    expect(check(ssh.checks, 'boot test').detail).toMatch(
      /^SSH banner on 127\.0\.0\.1:20122\}?, from an overlay beside the disk$/,
    );
  });

  it('the boot test of an image on another host is refused as BOOT_TEST_UNSUPPORTED; none after a failed check', async () => {
    const far = withBootTest(lab.inventory, ['lv-linux-1']);
    const entry = far.computers['lv-linux-1'];
    if (entry) entry.repository = 'images';
    const refused = await preflightOf(envOf('lv-linux-1', far), 'linux-Bt2-v0');
    expect(refused.facts).toBeUndefined();
    expect(check(refused.checks, 'boot test').error).toEqual({
      code: 'BOOT_TEST_UNSUPPORTED',
      message:
        'the boot test of lv-linux-1 boots the image on libvirt-host, but repository images is on repo-host: capture into a repository on libvirt-host or set provisioner.bootTest.enabled to false',
    });
    lab.faults.add({ kind: 'diskFull', host: 'libvirt-host' });
    const full = await preflightOf(
      envOf('lv-linux-1', withBootTest(lab.inventory, ['lv-linux-1'])),
      'linux-Bt3-v0',
    );
    expect(full.checks.map((c) => c.name)).not.toContain('boot test');
  });
});
