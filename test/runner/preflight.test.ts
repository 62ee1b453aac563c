/**
 * Preflight (issue 19, part 5): each refusal against the lab fails the capture in its check step with
 * its typed code and a message naming what to fix, before anything touched the computer: only read-only
 * commands reached the hosts, none the computer, its power and disk are unchanged, and it is back in the
 * state it was reserved from. Then the same checks on demand (`preflight()`, what the CLI runs): every
 * result reported, a failure skipping only what needs it, nothing reserved.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLab } from '../../src/lab/index.js';
import type { ComputerKind, Fault, Lab, LabOptions } from '../../src/lab/types.js';
import { commandText } from '../../src/lab/words.js';
import { preflight } from '../../src/runner/preflight.js';
import { createRunner } from '../../src/runner/runner.js';
import { SshPool } from '../../src/ssh/index.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import { expectStoredImage } from '../helpers/stored-image.js';

let dir: string;
let store: SqliteCaptureStore;
const labs: Lab[] = [];
const stores: SqliteCaptureStore[] = [];

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-preflight-'));
  store = openSqliteStore(join(dir, 'store.sqlite'));
});

afterAll(async () => {
  await store?.close();
  await Promise.all(stores.map((s) => s.close()));
  await Promise.all(labs.map((l) => l.stop()));
  rmSync(dir, { recursive: true, force: true });
});

async function labWith(kind: ComputerKind, options: LabOptions = {}): Promise<Lab> {
  const lab = await startLab({ powerDelayMs: 20, computers: { [kind]: 1 }, ...options });
  labs.push(lab);
  return lab;
}

/** What a check step may send: reads only (`sh` is the tool check, `cat` reads the .vmx and .vmdk). */
const READ_ONLY = [
  /^sh -c 'for t in /,
  /^virsh (domstate|domblklist) /,
  /^qemu-img info /,
  /^test -e /,
  /^df -P -B1 /,
  /^vmkfstools -P /,
  /^stat -c /,
  /^cat /,
  /^vim-cmd vmsvc\/getallvms$/,
  /^rpower \S+ stat$/,
];

interface Case {
  name: string;
  kind: ComputerKind;
  options?: LabOptions;
  /** Added before the capture, cleared after it: the capture that follows succeeds. */
  fault?: Fault;
  code: string;
  step: string;
  /** What the message must say (what to fix). */
  says: RegExp;
  /** Prepares the lab for a capture of `image` (its revision name) before it starts; `fix` undoes it. */
  prepare?: (lab: Lab, image: string) => Promise<void>;
  fix?: (lab: Lab, image: string) => Promise<void>;
}

const TWO_DISK_VMX = [
  '.encoding = "UTF-8"',
  'displayName = "vm-linux-1"',
  'scsi0:0.present = "TRUE"',
  'scsi0:0.fileName = "vm-linux-1.vmdk"',
  'scsi0:1.present = "TRUE"',
  'scsi0:1.fileName = "vm-linux-1_1.vmdk"',
  '',
].join('\n');

const cases: Case[] = [
  {
    name: 'libvirt: the first disk is a network disk (rbd), which qemu-img cannot copy as a file',
    kind: 'libvirt-linux',
    fault: {
      kind: 'failCommand',
      host: 'libvirt-host',
      match: ['virsh', 'domblklist'],
      exitCode: 0,
      stdout:
        ' Type      Device   Target   Source\n------------------------------------\n network   disk     vda      libvirt-pool/lv-linux-1\n',
    },
    code: 'UNSUPPORTED_DISK',
    step: 'inspect_domain',
    says: /lv-linux-1's first disk \(vda\) is a network disk; a capture copies file or block disks only/,
  },
  {
    name: 'vmware: the VM has two disks',
    kind: 'vmware-linux',
    fault: {
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['cat', '/vmfs/volumes/datastore1/vm-linux-1/vm-linux-1.vmx'],
      exitCode: 0,
      stdout: TWO_DISK_VMX,
    },
    code: 'UNSUPPORTED_DISK',
    step: 'locate_vm',
    says: /vm-linux-1 has 2 disks; a capture needs exactly one/,
  },
  {
    name: 'vmware: the clone folder already exists on the datastore',
    kind: 'vmware-linux',
    code: 'TARGET_EXISTS',
    step: 'check_target',
    says: /\/vmfs\/volumes\/datastore1\/linux-\w+-v0 already exists on esxi-host/,
    prepare: async (lab, image) => {
      // Not a clone: any file there would go with the folder when a failed capture removes its clone.
      const path = `/vmfs/volumes/datastore1/${image}/notes.txt`;
      await mkdir(dirname(await lab.realPath('esxi-host', path)), { recursive: true });
      await writeFile(await lab.realPath('esxi-host', path), 'someone else’s file');
    },
    fix: async (lab, image) => {
      await rm(await lab.realPath('esxi-host', `/vmfs/volumes/datastore1/${image}`), { recursive: true });
    },
  },
  {
    name: 'xcat: the upload’s done marker is already in the repository',
    kind: 'xcat-linux',
    code: 'TARGET_EXISTS',
    step: 'check_target',
    says: /\/install\/image\/x86\/linux-\w+-v0\.img\.capturedone already exists/,
    prepare: async (lab, image) => {
      await writeFile(await lab.realPath('xcat-mn', `/install/image/x86/${image}.img.capturedone`), '');
    },
    fix: async (lab, image) => {
      await rm(await lab.realPath('xcat-mn', `/install/image/x86/${image}.img.capturedone`));
    },
  },
  {
    name: 'libvirt: qemu-img missing on the libvirt host',
    kind: 'libvirt-linux',
    options: { missingTools: { 'libvirt-host': ['qemu-img'] } },
    code: 'PREFLIGHT_TOOL_MISSING',
    step: 'inspect_domain',
    says: /libvirt-host lacks qemu-img .*install it/,
  },
  {
    name: 'libvirt: sha256sum missing on the repository host',
    kind: 'libvirt-linux',
    options: { missingTools: { 'repo-host': ['sha256sum'] } },
    code: 'PREFLIGHT_TOOL_MISSING',
    step: 'inspect_domain',
    says: /repo-host lacks sha256sum \(needed as repository host\)/,
  },
  {
    name: 'libvirt: the repository is full',
    kind: 'libvirt-linux',
    fault: { kind: 'diskFull', host: 'repo-host' },
    code: 'PREFLIGHT_NO_SPACE',
    step: 'inspect_domain',
    says: /repository images \(repo-host:\/srv\/vcl\/images\) has 0 bytes free; the capture needs .*free space there/,
  },
  {
    name: 'libvirt: the staging folder beside the disk has less than the margin',
    kind: 'libvirt-linux',
    options: { freeBytes: { 'libvirt-host': 512 * 1024 ** 2 } },
    code: 'PREFLIGHT_NO_SPACE',
    step: 'inspect_domain',
    says: /staging folder \(libvirt-host:\/var\/lib\/libvirt\/images\) has 512\.0 MiB/,
  },
  {
    name: 'libvirt: the repository host does not answer',
    kind: 'libvirt-linux',
    fault: { kind: 'unreachable', host: 'repo-host' },
    code: 'SSH_UNREACHABLE',
    step: 'inspect_domain',
    says: /repo-host \(127\.0\.0\.1:\d+\) does not answer SSH: check its address and port/,
  },
  {
    name: 'vmware: vmkfstools missing on the ESXi host',
    kind: 'vmware-linux',
    options: { missingTools: { 'esxi-host': ['vmkfstools'] } },
    code: 'PREFLIGHT_TOOL_MISSING',
    step: 'locate_vm',
    says: /esxi-host lacks vmkfstools/,
  },
  {
    name: 'vmware: the datastore has no room for the clone',
    kind: 'vmware-linux',
    fault: { kind: 'diskFull', host: 'esxi-host' },
    code: 'PREFLIGHT_NO_SPACE',
    step: 'check_target',
    says: /datastore datastore1 \(esxi-host:\/vmfs\/volumes\/datastore1\) has 0 bytes free/,
  },
  {
    name: 'vmware: the ESXi host does not answer',
    kind: 'vmware-windows',
    fault: { kind: 'unreachable', host: 'esxi-host' },
    code: 'SSH_UNREACHABLE',
    step: 'locate_vm',
    says: /esxi-host .* does not answer SSH/,
  },
  {
    name: 'xcat: rpower missing on the management node',
    kind: 'xcat-linux',
    options: { missingTools: { 'xcat-mn': ['rpower', 'nodeset'] } },
    code: 'PREFLIGHT_TOOL_MISSING',
    step: 'check_target',
    says: /xcat-mn lacks rpower, nodeset .*install them/,
  },
  {
    name: 'xcat: the repository has less than the margin free',
    kind: 'xcat-linux',
    fault: { kind: 'diskFull', host: 'xcat-mn', afterBytes: 1024 },
    code: 'PREFLIGHT_NO_SPACE',
    step: 'check_target',
    says: /repository xcat-images \(xcat-mn:\/install\/image\/x86\) has 1\.0 KiB \(1024 bytes\) free; the capture needs the margin of 1\.0 GiB/,
  },
];

describe('a failed preflight fails the capture untouched', () => {
  it.each(cases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const lab = await labWith(c.kind, c.options);
    const computer = lab.computerNames()[0] as string;
    // Each lab's computers have the same names: a store of its own per case.
    const store = openSqliteStore(join(dir, `${c.name.replace(/\W+/g, '-')}.sqlite`));
    stores.push(store);
    const runner = createRunner({ inventory: lab.inventory, store, pollMs: 20 });
    const bootId = lab.computer(computer).bootId;
    const source = await lab.diskSha256(computer);
    const fault = c.fault === undefined ? undefined : lab.faults.add(c.fault);
    // Registered first: its first revision's name is known before the capture (the target of `prepare`).
    const registered = await store.registerImage({ osName: 'linux', prettyName: 'Preflight', owner: 'test' });
    const image = registered.id;
    const revision = `linux-Preflight${image}-v0`;
    await c.prepare?.(lab, revision);
    const capture = await runner.capture({ computer, image });
    const result = await capture.result;
    expect(result.status).toBe('failed');
    if (result.status !== 'failed') return;
    expect(result.error).toMatchObject({ code: c.code, step: c.step });
    expect(result.error.message).toMatch(c.says);
    expect(await store.getCapture(capture.id)).toMatchObject({ status: 'failed', releaseOutcome: 'restore' });
    expect(await store.getComputer(computer)).toMatchObject({ state: 'available', heldBy: null });
    // Nothing but reads reached the hosts; nothing at all the computer, whose power and disk are as they were.
    const sent = lab.commandLog.filter((e) => e.kind === 'exec');
    expect(sent.filter((e) => e.host === computer)).toEqual([]);
    expect(sent.map((e) => commandText(e.line)).filter((l) => !READ_ONLY.some((r) => r.test(l)))).toEqual([]);
    expect(lab.computer(computer).bootId).toBe(bootId);
    expect(await lab.diskSha256(computer)).toBe(source);
    // The lab refused the connections; a full disk was found by df, not by a write that failed.
    if (fault?.fault.kind === 'unreachable') expect(fault.fired).toBeGreaterThan(0);
    if (fault?.fault.kind === 'diskFull') expect(fault.fired).toBe(0);
    await runner.close();

    if (fault || c.fix) {
      // The cause gone, the same computer captures.
      fault?.clear();
      await c.fix?.(lab, revision);
      const again = createRunner({ inventory: lab.inventory, store, pollMs: 20 });
      const second = await (await again.capture({ computer, image })).result;
      await again.close();
      if (second.status !== 'completed') throw new Error(`${second.status}: ${JSON.stringify(second.error)}`);
      await expectStoredImage(lab, computer, second.artifact, source);
    }
    expect(lab.internalErrors).toEqual([]);
  });
});

describe('preflight on demand', () => {
  let lab: Lab;
  let remote: SshPool;

  beforeAll(async () => {
    lab = await labWith('libvirt-linux');
    remote = new SshPool();
  });

  afterAll(async () => {
    await remote?.close();
  });

  it('reports every check it passed, each host, the domain, the target and the space', async () => {
    const report = await preflight({
      inventory: lab.inventory,
      computer: 'lv-linux-1',
      imageName: 'linux-Fresh1-v0',
      remote,
    });
    expect(report.ok).toBe(true);
    expect(report.checks.map((c) => [c.name, c.status])).toEqual([
      ['reach libvirt-host', 'ok'],
      ['tools on libvirt-host', 'ok'],
      ['reach repo-host', 'ok'],
      ['tools on repo-host', 'ok'],
      ['domain lv-linux-1', 'ok'],
      ['target', 'ok'],
      ['space in repository images', 'ok'],
      ['space in staging folder', 'ok'],
      ['reach lv-linux-1', 'ok'],
    ]);
    expect(report.checks.find((c) => c.name === 'target')?.detail).toBe(
      '/srv/vcl/images/linux-Fresh1-v0.qcow2 is free',
    );
  });

  it('goes on past a failure, skipping only what needs it; reserves nothing', async () => {
    const before = await store.listCaptures({ computer: 'lv-linux-1' });
    const fault = lab.faults.add({ kind: 'unreachable', host: 'repo-host' });
    try {
      const report = await preflight({ inventory: lab.inventory, computer: 'lv-linux-1', remote });
      expect(report.ok).toBe(false);
      expect(report.error).toMatchObject({ code: 'SSH_UNREACHABLE', check: 'reach repo-host' });
      expect(report.checks.map((c) => [c.name, c.status])).toEqual([
        ['reach libvirt-host', 'ok'],
        ['tools on libvirt-host', 'ok'],
        ['reach repo-host', 'failed'],
        ['tools on repo-host', 'skipped'],
        ['domain lv-linux-1', 'skipped'],
        ['reach lv-linux-1', 'ok'],
      ]);
    } finally {
      fault.clear();
    }
    expect(await store.listCaptures({ computer: 'lv-linux-1' })).toEqual(before);
  });

  it('reports a target that exists and a guest that is off', async () => {
    const path = '/srv/vcl/images/linux-Taken1-v0.qcow2';
    const { writeFile } = await import('node:fs/promises');
    await writeFile(await lab.realPath('repo-host', path), 'an older image');
    lab.powerOff('lv-linux-1');
    const report = await preflight({
      inventory: lab.inventory,
      computer: 'lv-linux-1',
      imageName: 'linux-Taken1-v0',
      remote,
    });
    lab.powerOn('lv-linux-1');
    await lab.waitForPower('lv-linux-1', 'on');
    expect(report.checks.filter((c) => c.status === 'failed').map((c) => [c.name, c.error?.code])).toEqual([
      ['target', 'TARGET_EXISTS'],
      ['reach lv-linux-1', 'SSH_UNREACHABLE'],
    ]);
  });

  it('stops when the caller’s signal aborts: the check that was waiting fails with SSH_ABORTED', async () => {
    const hang = lab.faults.add({ kind: 'hangCommand', host: 'libvirt-host', match: ['virsh', 'domstate'] });
    const stop = new AbortController();
    try {
      const running = preflight({
        inventory: lab.inventory,
        computer: 'lv-linux-1',
        remote,
        signal: stop.signal,
      });
      // Stopped while `virsh domstate` hangs: without the caller's signal it would wait out commandMs.
      await expect.poll(() => hang.fired, { timeout: 10_000 }).toBe(1);
      stop.abort();
      const report = await running;
      expect(report.ok).toBe(false);
      expect(report.error).toEqual({
        code: 'SSH_ABORTED',
        message: 'virsh on libvirt-host was aborted',
        check: 'domain lv-linux-1',
      });
      expect(report.checks.map((c) => [c.name, c.status, c.error?.code])).toEqual([
        ['reach libvirt-host', 'ok', undefined],
        ['tools on libvirt-host', 'ok', undefined],
        ['reach repo-host', 'ok', undefined],
        ['tools on repo-host', 'ok', undefined],
        ['domain lv-linux-1', 'failed', 'SSH_ABORTED'],
        ['target', 'skipped', undefined],
        // Stopped by the abort, not unreachable: the guest is up.
        ['reach lv-linux-1', 'failed', 'SSH_ABORTED'],
      ]);
    } finally {
      hang.clear();
    }
  });

  it('refuses an unknown computer and a bad image name before any host is asked', async () => {
    const sent = lab.commandLog.length;
    await expect(preflight({ inventory: lab.inventory, computer: 'nope', remote })).rejects.toMatchObject({
      code: 'UNKNOWN_COMPUTER',
    });
    await expect(
      preflight({ inventory: lab.inventory, computer: 'lv-linux-1', imageName: 'x; rm -rf /', remote }),
    ).rejects.toMatchObject({ code: 'INVALID_IMAGE_NAME' });
    expect(lab.commandLog.length).toBe(sent);
  });
});
