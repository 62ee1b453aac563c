/**
 * The preflights of VMware (locate_vm, check_target), xCAT (check_target) and Proxmox (inspect_vm) as
 * `vcl-capture preflight` runs them, at step level against the lab: each check's name, status and the
 * text a user reads in the report, each failure's code and message, which checks a failure skips (and
 * with what text), and the facts returned or none.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { Remote } from '../../src/drivers/contract.js';
import type { Inventory } from '../../src/inventory/schema.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { silentLogger } from '../../src/log.js';
import { proxmoxPreflight } from '../../src/provisioners/proxmox/steps.js';
import { vmwarePreflight } from '../../src/provisioners/vmware/steps.js';
import { xcatPreflight } from '../../src/provisioners/xcat/steps.js';
import { SshPool } from '../../src/ssh/index.js';
import {
  changed,
  check,
  inventoryEnv,
  type PreflightFn,
  preflightOf,
  statuses,
} from './preflight-helpers.js';
import { withoutTool } from './rerun-helpers.js';

const DS = '/vmfs/volumes/datastore1';
const REPO = '/srv/vcl/images';
const XCAT_REPO = '/install/image/x86';
const MiB = 1024 ** 2;
const GiB = 1024 ** 3;
/** What every lab host's file systems report free (the lab's default). */
const FREE = '512.0 GiB (549755813888 bytes) free';
const HOST_FAILED = 'a host on the path failed its check';

let lab: Lab;
let pool: SshPool;

beforeAll(async () => {
  lab = await startLab({
    powerDelayMs: 20,
    diskBytes: MiB,
    computers: { 'vmware-linux': 2, 'xcat-linux': 2, 'proxmox-linux': 2, 'proxmox-windows': 1 },
  });
  pool = new SshPool({ logger: silentLogger() });
});

afterEach(() => {
  lab.faults.clear();
  expect(lab.internalErrors).toEqual([]);
});

afterAll(async () => {
  await pool?.close();
  await lab?.stop();
});

/** `preflight` of `computer` as `vcl-capture preflight` runs it (image name and target as the CLI gives them). */
function run<F>(
  preflight: PreflightFn<F>,
  computer: string,
  o: { image?: string; target?: boolean; remote?: Remote; inventory?: Inventory } = {},
) {
  const env = inventoryEnv(o.inventory ?? lab.inventory, o.remote ?? pool, computer);
  return preflightOf(preflight, env, o.image, o.target);
}

/** Writes a file on a lab host (its folders created), as another program or capture would have left it. */
async function put(host: string, path: string): Promise<void> {
  const real = await lab.realPath(host, path);
  await mkdir(dirname(real), { recursive: true });
  await writeFile(real, 'theirs');
}

async function drop(host: string, path: string): Promise<void> {
  await rm(await lab.realPath(host, path), { recursive: true, force: true });
}

async function power(computer: string, state: 'on' | 'off'): Promise<void> {
  const now = lab.computer(computer).power;
  if (state === 'off' && now !== 'off') lab.powerOff(computer);
  if (state === 'on' && now === 'off') lab.powerOn(computer);
  await lab.waitForPower(computer, state);
}

/** A lab host's free space as df and vmkfstools -P report it: `bytes` (what a diskFull fault still lets through). */
function freeOn(host: string, bytes: number) {
  lab.faults.add({ kind: 'diskFull', host, afterBytes: bytes });
}

describe('VMware preflight: locate_vm, then check_target', () => {
  /** The disk's extent allocates 512 KiB of its 1 MiB (stat's answer, not the lab's file system's). */
  function allocated512KiB() {
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['stat', '-c', '%s %b %B'],
      exitCode: 0,
      stdout: `${MiB} 1024 512\n`,
      times: Number.POSITIVE_INFINITY,
    });
  }
  const VM1 = `vmid 1, one disk ${DS}/vm-linux-1/vm-linux-1.vmdk (1.0 MiB (1048576 bytes), 512.0 KiB (524288 bytes) allocated)`;
  // The datastore holds the thin clone and its staged 2gbsparse copy: twice the allocation, plus the margin.
  const DATASTORE_NEEDS = '1.0 GiB (1074790400 bytes)';
  const REPOSITORY_NEEDS = '1.0 GiB (1074266112 bytes)';

  it('all passing with an image name: the VM and its disk, clone folder and repository copy free, room on the datastore (read by vmkfstools) and in the repository; returns the paths', async () => {
    allocated512KiB();
    const sentBefore = lab.commands('esxi-host').length;
    const { facts, checks, ok } = await run(vmwarePreflight, 'vm-linux-1', { image: 'linux-Vm1-v0' });
    expect(ok).toBe(true);
    expect(statuses(checks)).toEqual([
      ['reach esxi-host', 'ok'],
      ['tools on esxi-host', 'ok'],
      ['reach repo-host', 'ok'],
      ['tools on repo-host', 'ok'],
      ['VM vm-linux-1', 'ok'],
      ['target', 'ok'],
      ['space in datastore datastore1', 'ok'],
      ['space in repository images', 'ok'],
    ]);
    expect(checks.slice(4).map((c) => c.detail)).toEqual([
      VM1,
      `${DS}/linux-Vm1-v0/ and ${REPO}/linux-Vm1-v0.vmdk are free`,
      `${FREE}, ${DATASTORE_NEEDS} needed`,
      `${FREE}, ${REPOSITORY_NEEDS} needed`,
    ]);
    expect(facts).toStrictEqual({
      clone: `${DS}/linux-Vm1-v0/linux-Vm1-v0.vmdk`,
      target: `${REPO}/linux-Vm1-v0.vmdk`,
    });
    // ESXi's df takes neither -P nor -B: the datastore's free space is vmkfstools'.
    const space = lab
      .commands('esxi-host')
      .slice(sentBefore)
      .map((a) => a.join(' '))
      .filter((l) => /^(df|vmkfstools) /.test(l));
    expect(space).toEqual([`vmkfstools -P ${DS}`]);
  });

  it('without an image name, or with the target check off, the target is skipped as no image name given; the space is still checked; no paths returned', async () => {
    allocated512KiB();
    for (const [image, target] of [
      [undefined, undefined],
      [undefined, true],
      ['linux-Vm2-v0', false],
    ] as const) {
      const { facts, checks, ok } = await run(vmwarePreflight, 'vm-linux-1', { image, target });
      const label = `${image} ${target}`;
      expect(ok, label).toBe(true);
      expect(checks.slice(4), label).toEqual([
        { name: 'VM vm-linux-1', status: 'ok', detail: VM1 },
        { name: 'target', status: 'skipped', detail: 'no image name given' },
        { name: 'space in datastore datastore1', status: 'ok', detail: `${FREE}, ${DATASTORE_NEEDS} needed` },
        { name: 'space in repository images', status: 'ok', detail: `${FREE}, ${REPOSITORY_NEEDS} needed` },
      ]);
      expect(facts, label).toStrictEqual({});
    }
  });

  it('a VM not registered fails NOT_FOUND; the target and space are skipped, naming the VM; no facts', async () => {
    const gone = changed(lab.inventory, 'vm-linux-2', (e) => {
      (e.provisioner as { vm: string }).vm = 'vm-gone';
    });
    const { facts, checks, ok } = await run(vmwarePreflight, 'vm-linux-2', {
      image: 'linux-Vm3-v0',
      inventory: gone,
    });
    expect(ok).toBe(false);
    expect(facts).toBeUndefined();
    const message =
      'no VM named vm-gone is registered on esxi-host: register it or fix provisioner.vm of vm-linux-2 in the inventory';
    expect(checks.slice(4)).toEqual([
      { name: 'VM vm-gone', status: 'failed', detail: message, error: { code: 'NOT_FOUND', message } },
      { name: 'target and space', status: 'skipped', detail: 'the check of VM vm-gone failed' },
    ]);
  });

  it('a host without a tool the path needs fails PREFLIGHT_TOOL_MISSING; the VM is skipped, then the target and space', async () => {
    const { facts, checks, ok } = await run(vmwarePreflight, 'vm-linux-1', {
      image: 'linux-Vm4-v0',
      remote: withoutTool(pool, 'vmkfstools'),
    });
    expect(ok).toBe(false);
    expect(facts).toBeUndefined();
    const message = 'esxi-host lacks vmkfstools (needed as vmware host): install it or fix the PATH of root';
    expect(statuses(checks)).toEqual([
      ['reach esxi-host', 'ok'],
      ['tools on esxi-host', 'failed'],
      ['reach repo-host', 'ok'],
      ['tools on repo-host', 'ok'],
      ['VM vm-linux-1', 'skipped'],
      ['target and space', 'skipped'],
    ]);
    expect(check(checks, 'tools on esxi-host').error).toEqual({ code: 'PREFLIGHT_TOOL_MISSING', message });
    expect(checks.slice(4).map((c) => c.detail)).toEqual([HOST_FAILED, 'the check of VM vm-linux-1 failed']);
  });

  it('a clone folder or any file of the repository copy that exists fails the target with TARGET_EXISTS; no space is checked; no facts', async () => {
    const image = 'linux-Vm5-v0';
    // [host, file put there, path the report names]
    for (const [host, file, path] of [
      ['esxi-host', `${DS}/${image}/notes.txt`, `${DS}/${image}`],
      ['repo-host', `${REPO}/${image}.vmdk`, `${REPO}/${image}.vmdk`],
      ['repo-host', `${REPO}/${image}-s001.vmdk`, `${REPO}/${image}-s001.vmdk`],
      ['repo-host', `${REPO}/${image}.vmx`, `${REPO}/${image}.vmx`],
      ['repo-host', `${REPO}/${image}.vmdk.sha256`, `${REPO}/${image}.vmdk.sha256`],
    ] as const) {
      await put(host, file);
      const { facts, checks, ok } = await run(vmwarePreflight, 'vm-linux-2', { image });
      await drop(host, path);
      expect(ok, file).toBe(false);
      expect(facts, file).toBeUndefined();
      expect(statuses(checks).slice(4), file).toEqual([
        ['VM vm-linux-2', 'ok'],
        ['target', 'failed'],
      ]);
      const message = `${path} already exists on ${host}; nothing is overwritten`;
      expect(check(checks, 'target'), file).toEqual({
        name: 'target',
        status: 'failed',
        detail: message,
        error: { code: 'TARGET_EXISTS', message },
      });
    }
  });

  it('a datastore short of room fails PREFLIGHT_NO_SPACE and the repository is still checked; a full repository fails too; no facts either way', async () => {
    allocated512KiB();
    freeOn('esxi-host', 2 * 512 * 1024 + GiB - 1);
    const datastore = await run(vmwarePreflight, 'vm-linux-1', { image: 'linux-Vm6-v0' });
    expect(datastore.ok).toBe(false);
    expect(datastore.facts).toBeUndefined();
    expect(statuses(datastore.checks).slice(5)).toEqual([
      ['target', 'ok'],
      ['space in datastore datastore1', 'failed'],
      ['space in repository images', 'ok'],
    ]);
    expect(check(datastore.checks, 'space in datastore datastore1').error).toEqual({
      code: 'PREFLIGHT_NO_SPACE',
      message: `datastore datastore1 (esxi-host:${DS}) has 1.0 GiB (1074790399 bytes) free; the capture needs ${DATASTORE_NEEDS} (the copy's 1.0 MiB (1048576 bytes) plus the margin): free space there or point the inventory at a larger one`,
    });
    lab.faults.clear();
    allocated512KiB();
    freeOn('repo-host', 0);
    // Without an image name too: nothing to go on with once a check failed.
    const repository = await run(vmwarePreflight, 'vm-linux-1');
    expect(repository.facts).toBeUndefined();
    expect(statuses(repository.checks).slice(5)).toEqual([
      ['target', 'skipped'],
      ['space in datastore datastore1', 'ok'],
      ['space in repository images', 'failed'],
    ]);
    expect(check(repository.checks, 'space in repository images').error).toEqual({
      code: 'PREFLIGHT_NO_SPACE',
      message: `repository images (repo-host:${REPO}) has 0 bytes free; the capture needs ${REPOSITORY_NEEDS} (the copy's 512.0 KiB (524288 bytes) plus the margin): free space there or point the inventory at a larger one`,
    });
  });
});

describe('xCAT preflight: check_target', () => {
  const SPACE = `${FREE}, 1.0 GiB (1073741824 bytes) needed`;

  it('all passing with an image name: one host for xCAT and the repository, the node’s power, the image and its markers free, the margin free; returns the target', async () => {
    await power('xc-linux-1', 'on');
    const { facts, checks, ok } = await run(xcatPreflight, 'xc-linux-1', { image: 'linux-Xc1-v0' });
    expect(ok).toBe(true);
    expect(statuses(checks)).toEqual([
      ['reach xcat-mn', 'ok'],
      ['tools on xcat-mn', 'ok'],
      ['node xc-linux-1', 'ok'],
      ['target', 'ok'],
      ['space in repository xcat-images', 'ok'],
    ]);
    expect(checks.slice(2).map((c) => c.detail)).toEqual([
      'power on',
      `${XCAT_REPO}/linux-Xc1-v0.img and its markers are free`,
      SPACE,
    ]);
    expect(facts).toStrictEqual({ target: `${XCAT_REPO}/linux-Xc1-v0.img` });
  });

  it('a node that is off, without an image name or with the target check off: the target skipped as no image name given; no target returned', async () => {
    await power('xc-linux-2', 'off');
    for (const [image, target] of [
      [undefined, undefined],
      [undefined, true],
      ['linux-Xc2-v0', false],
    ] as const) {
      const { facts, checks, ok } = await run(xcatPreflight, 'xc-linux-2', { image, target });
      const label = `${image} ${target}`;
      expect(ok, label).toBe(true);
      expect(checks.slice(2), label).toEqual([
        { name: 'node xc-linux-2', status: 'ok', detail: 'power off' },
        { name: 'target', status: 'skipped', detail: 'no image name given' },
        { name: 'space in repository xcat-images', status: 'ok', detail: SPACE },
      ]);
      expect(facts, label).toStrictEqual({});
    }
    await power('xc-linux-2', 'on');
  });

  it('a node xCAT does not know fails NOT_FOUND, and nothing after it is checked; no facts', async () => {
    const unknown = changed(lab.inventory, 'xc-linux-1', (e) => {
      (e.provisioner as { node: string }).node = 'xc-nope';
    });
    const { facts, checks, ok } = await run(xcatPreflight, 'xc-linux-1', {
      image: 'linux-Xc3-v0',
      inventory: unknown,
    });
    expect(ok).toBe(false);
    expect(facts).toBeUndefined();
    const message =
      'xCAT on xcat-mn does not know node xc-nope: define it (mkdef) or fix provisioner.node of xc-linux-1 in the inventory';
    expect(checks.slice(2)).toEqual([
      { name: 'node xc-nope', status: 'failed', detail: message, error: { code: 'NOT_FOUND', message } },
    ]);
  });

  it('a host without a tool the path needs fails PREFLIGHT_TOOL_MISSING; the node is skipped and rpower never asked', async () => {
    const before = lab.commands('xcat-mn').length;
    const { facts, checks, ok } = await run(xcatPreflight, 'xc-linux-1', {
      image: 'linux-Xc4-v0',
      remote: withoutTool(pool, 'rpower'),
    });
    expect(ok).toBe(false);
    expect(facts).toBeUndefined();
    const message =
      'xcat-mn lacks rpower (needed as xcat and repository host): install it or fix the PATH of root';
    expect(checks.slice(1)).toEqual([
      {
        name: 'tools on xcat-mn',
        status: 'failed',
        detail: message,
        error: { code: 'PREFLIGHT_TOOL_MISSING', message },
      },
      { name: 'node xc-linux-1', status: 'skipped', detail: HOST_FAILED },
    ]);
    expect(
      lab
        .commands('xcat-mn')
        .slice(before)
        .filter((a) => a[0] === 'rpower'),
    ).toEqual([]);
  });

  it('the image or either marker that exists fails the target with TARGET_EXISTS; no space is checked; no facts', async () => {
    const image = `${XCAT_REPO}/linux-Xc5-v0.img`;
    for (const path of [image, `${image}.capturedone`, `${image}.capturefailed`]) {
      await put('xcat-mn', path);
      const { facts, checks, ok } = await run(xcatPreflight, 'xc-linux-1', { image: 'linux-Xc5-v0' });
      await drop('xcat-mn', path);
      expect(ok, path).toBe(false);
      expect(facts, path).toBeUndefined();
      const message = `${path} already exists; nothing is overwritten`;
      expect(checks.slice(2), path).toEqual([
        { name: 'node xc-linux-1', status: 'ok', detail: 'power on' },
        { name: 'target', status: 'failed', detail: message, error: { code: 'TARGET_EXISTS', message } },
      ]);
    }
  });

  it('a repository short of the margin fails PREFLIGHT_NO_SPACE, with or without an image name; no facts', async () => {
    freeOn('xcat-mn', GiB - 1);
    const message = `repository xcat-images (xcat-mn:${XCAT_REPO}) has 1024.0 MiB (1073741823 bytes) free; the capture needs the margin of 1.0 GiB (1073741824 bytes) (the upload's size is not known before it): free space there or point the inventory at a larger one`;
    for (const [image, target] of [
      ['linux-Xc6-v0', 'ok'],
      [undefined, 'skipped'],
    ] as const) {
      const { facts, checks, ok } = await run(xcatPreflight, 'xc-linux-1', { image });
      expect(ok, image).toBe(false);
      expect(facts, image).toBeUndefined();
      expect(statuses(checks).slice(3), image).toEqual([
        ['target', target],
        ['space in repository xcat-images', 'failed'],
      ]);
      expect(check(checks, 'space in repository xcat-images').error, image).toEqual({
        code: 'PREFLIGHT_NO_SPACE',
        message,
      });
    }
  });
});

describe('Proxmox preflight: inspect_vm', () => {
  /** qemu-img info's answer on the node: a disk of `virtual` bytes with `actual` allocated. */
  function imageInfo(format: string, virtual: number, actual: number) {
    lab.faults.add({
      kind: 'failCommand',
      host: 'pve-node',
      match: ['qemu-img', 'info'],
      exitCode: 0,
      stdout: JSON.stringify({ format, 'virtual-size': virtual, 'actual-size': actual }),
      times: Number.POSITIVE_INFINITY,
    });
  }
  const LINUX_FACTS = {
    vmid: 10001,
    diskKey: 'scsi0',
    disk: '/dev/pve/vm-10001-disk-0',
    sourceFormat: 'raw',
  };

  it('all passing with an image name: a block device is copied whole, into the repository and the staging folder; returns the facts with the target', async () => {
    await power('px-linux-1', 'on');
    imageInfo('raw', 8 * GiB, 3 * GiB);
    const { facts, checks, ok } = await run(proxmoxPreflight, 'px-linux-1', { image: 'linux-Px1-v0' });
    expect(ok).toBe(true);
    expect(statuses(checks)).toEqual([
      ['reach pve-node', 'ok'],
      ['tools on pve-node', 'ok'],
      ['reach repo-host', 'ok'],
      ['tools on repo-host', 'ok'],
      ['VM 10001', 'ok'],
      ['target', 'ok'],
      ['space in repository images', 'ok'],
      ['space in staging folder', 'ok'],
    ]);
    // A block device's allocation is its storage's: the copy is taken to need its whole size.
    expect(checks.slice(4).map((c) => c.detail)).toEqual([
      'running; scsi0, its boot disk: local-lvm:vm-10001-disk-0 at /dev/pve/vm-10001-disk-0 (block device, 8.0 GiB (8589934592 bytes))',
      `${REPO}/linux-Px1-v0.qcow2 is free`,
      `${FREE}, 9.0 GiB (9663676416 bytes) needed`,
      `${FREE}, 9.0 GiB (9663676416 bytes) needed`,
    ]);
    expect(facts).toStrictEqual({ ...LINUX_FACTS, target: `${REPO}/linux-Px1-v0.qcow2` });
  });

  it('a qcow2 file needs what it allocates; a disk the VM does not boot from is not called its boot disk; a stopped VM says so', async () => {
    imageInfo('qcow2', 40 * GiB, 3 * GiB);
    const qcow2 = await run(proxmoxPreflight, 'px-windows-1', { image: 'windows-Px2-v0' });
    expect(qcow2.checks.slice(4).map((c) => [c.name, c.detail])).toEqual([
      [
        'VM 20001',
        'running; scsi0, its boot disk: local:20001/vm-20001-disk-0.qcow2 at /var/lib/vz/images/20001/vm-20001-disk-0.qcow2 (qcow2, 40.0 GiB (42949672960 bytes))',
      ],
      ['target', `${REPO}/windows-Px2-v0.qcow2 is free`],
      ['space in repository images', `${FREE}, 4.0 GiB (4294967296 bytes) needed`],
      ['space in staging folder', `${FREE}, 4.0 GiB (4294967296 bytes) needed`],
    ]);
    expect(qcow2.facts).toStrictEqual({
      vmid: 20001,
      diskKey: 'scsi0',
      disk: '/var/lib/vz/images/20001/vm-20001-disk-0.qcow2',
      sourceFormat: 'qcow2',
      target: `${REPO}/windows-Px2-v0.qcow2`,
    });
    // The data disk (the VM boots from scsi0).
    const data = changed(lab.inventory, 'px-windows-1', (e) => {
      (e.provisioner as { disk: string }).disk = 'scsi1';
    });
    const scsi1 = await run(proxmoxPreflight, 'px-windows-1', { inventory: data });
    expect(check(scsi1.checks, 'VM 20001').detail).toBe(
      'running; scsi1: local-lvm:vm-20001-disk-1 at /dev/pve/vm-20001-disk-1 (block device, 40.0 GiB (42949672960 bytes))',
    );
    await power('px-linux-2', 'off');
    const stopped = await run(proxmoxPreflight, 'px-linux-2');
    expect(check(stopped.checks, 'VM 10002').detail).toMatch(/^stopped; scsi0, its boot disk: /);
    await power('px-linux-2', 'on');
  });

  it('without an image name, or with the target check off, the target is skipped as no image name given; no target returned', async () => {
    for (const [image, target] of [
      [undefined, undefined],
      [undefined, true],
      ['linux-Px3-v0', false],
    ] as const) {
      const { facts, checks, ok } = await run(proxmoxPreflight, 'px-linux-1', { image, target });
      const label = `${image} ${target}`;
      expect(ok, label).toBe(true);
      expect(statuses(checks).slice(4), label).toEqual([
        ['VM 10001', 'ok'],
        ['target', 'skipped'],
        ['space in repository images', 'ok'],
        ['space in staging folder', 'ok'],
      ]);
      expect(check(checks, 'target').detail, label).toBe('no image name given');
      expect(facts, label).toStrictEqual(LINUX_FACTS);
    }
  });

  it('a VM the node does not have fails NOT_FOUND; the target is skipped naming the VM, and nothing after it checked; no facts', async () => {
    const unknown = changed(lab.inventory, 'px-linux-1', (e) => {
      (e.provisioner as { vmid: number }).vmid = 999;
    });
    const { facts, checks, ok } = await run(proxmoxPreflight, 'px-linux-1', {
      image: 'linux-Px4-v0',
      inventory: unknown,
    });
    expect(ok).toBe(false);
    expect(facts).toBeUndefined();
    const message =
      'pve-node has no VM 999: fix provisioner.vmid (or provisioner.host, the node it runs on) of px-linux-1 in the inventory';
    expect(checks.slice(4)).toEqual([
      { name: 'VM 999', status: 'failed', detail: message, error: { code: 'NOT_FOUND', message } },
      { name: 'target', status: 'skipped', detail: 'the check of VM 999 failed' },
    ]);
  });

  it('a host without a tool the path needs fails PREFLIGHT_TOOL_MISSING; the VM is skipped and qm never asked', async () => {
    const before = lab.commands('pve-node').length;
    const { facts, checks, ok } = await run(proxmoxPreflight, 'px-linux-1', {
      image: 'linux-Px5-v0',
      remote: withoutTool(pool, 'qm'),
    });
    expect(ok).toBe(false);
    expect(facts).toBeUndefined();
    const message = 'pve-node lacks qm (needed as proxmox host): install it or fix the PATH of root';
    expect(statuses(checks)).toEqual([
      ['reach pve-node', 'ok'],
      ['tools on pve-node', 'failed'],
      ['reach repo-host', 'ok'],
      ['tools on repo-host', 'ok'],
      ['VM 10001', 'skipped'],
    ]);
    expect(check(checks, 'tools on pve-node').error).toEqual({ code: 'PREFLIGHT_TOOL_MISSING', message });
    expect(check(checks, 'VM 10001').detail).toBe(HOST_FAILED);
    expect(
      lab
        .commands('pve-node')
        .slice(before)
        .filter((a) => a[0] === 'qm'),
    ).toEqual([]);
  });

  it('a target the repository already holds fails TARGET_EXISTS; no space is checked; no facts', async () => {
    const path = `${REPO}/linux-Px6-v0.qcow2`;
    await put('repo-host', path);
    const { facts, checks, ok } = await run(proxmoxPreflight, 'px-linux-1', { image: 'linux-Px6-v0' });
    await drop('repo-host', path);
    expect(ok).toBe(false);
    expect(facts).toBeUndefined();
    const message = `the repository already holds ${path}; nothing is overwritten`;
    expect(checks.slice(5)).toEqual([
      { name: 'target', status: 'failed', detail: message, error: { code: 'TARGET_EXISTS', message } },
    ]);
  });

  it('a full repository or staging folder fails PREFLIGHT_NO_SPACE, the other still checked; no facts', async () => {
    for (const [host, failed, ok] of [
      ['repo-host', 'space in repository images', 'space in staging folder'],
      ['pve-node', 'space in staging folder', 'space in repository images'],
    ] as const) {
      freeOn(host, 0);
      const report = await run(proxmoxPreflight, 'px-linux-1', { image: 'linux-Px7-v0' });
      lab.faults.clear();
      expect(report.ok, host).toBe(false);
      expect(report.facts, host).toBeUndefined();
      expect(check(report.checks, failed).error?.code, host).toBe('PREFLIGHT_NO_SPACE');
      expect(check(report.checks, ok).status, host).toBe('ok');
    }
  });
});
