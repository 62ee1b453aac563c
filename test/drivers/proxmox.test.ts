/**
 * Proxmox VE: the steps one by one against the lab's node: which disk is captured (and which
 * configurations are refused), the commands the power steps send, and a sparse copy of a block device,
 * staged and streamed or converted in place. The qm/pvesm command lines and parsers alone, which need no
 * lab, are in proxmox-commands.test.ts.
 */
import { stat } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Facts } from '../../machines/index.js';
import type { Remote } from '../../src/drivers/contract.js';
import type { DriverEnv } from '../../src/drivers/env.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { silentLogger } from '../../src/log.js';
import { proxmoxSteps, shutdownWaitSeconds } from '../../src/provisioners/proxmox/steps.js';
import { SshPool } from '../../src/ssh/index.js';
import { captureOf, driverEnv, filesWith, interceptRemote, refusal, stepRun } from './rerun-helpers.js';

/** The qm shutdown timeout the request step gives (a pure function of steps.ts, kept beside its steps). */
describe('the qm shutdown wait', () => {
  it('lets qm shutdown wait the power-off timeout within the request step, at least a second', () => {
    expect(shutdownWaitSeconds(300_000, 120_000)).toBe(115);
    expect(shutdownWaitSeconds(30_000, 120_000)).toBe(30);
    expect(shutdownWaitSeconds(600, 120_000)).toBe(1);
    expect(shutdownWaitSeconds(300_000, 2_000)).toBe(1);
  });
});

let separate: Lab;
let local: Lab;
let pool: SshPool;

beforeAll(async () => {
  const computers = { 'proxmox-linux': 3, 'proxmox-windows': 1 } as const;
  [separate, local] = await Promise.all([
    startLab({ powerDelayMs: 20, diskBytes: 8 * 1024 * 1024, computers }),
    startLab({
      powerDelayMs: 20,
      diskBytes: 8 * 1024 * 1024,
      computers,
      repositories: { proxmox: 'pve-local' },
    }),
  ]);
  pool = new SshPool({ logger: silentLogger() });
});

afterAll(async () => {
  await pool?.close();
  await Promise.all([separate?.stop(), local?.stop()]);
});

/** A transport that keeps the command lines it sends (and the timeout each was given). */
function watched(inner: Remote = pool): Remote & { sent: string[]; timeouts: (number | undefined)[] } {
  const w = {
    sent: [] as string[],
    timeouts: [] as (number | undefined)[],
    exec: ((host, argv, options) => {
      w.sent.push(argv.join(' '));
      w.timeouts.push(options?.timeoutMs);
      return inner.exec(host, argv, options);
    }) as Remote['exec'],
    copy: ((from, to, options) => inner.copy(from, to, options)) as Remote['copy'],
  };
  return w;
}

/** A capture of `computer`, inspected (its settings changed by `settings`): what its later steps see. */
async function inspected(
  lab: Lab,
  computer: string,
  remote: Remote = pool,
  settings: (p: Record<string, unknown>) => Record<string, unknown> = (p) => p,
) {
  const base = driverEnv(lab, remote, computer);
  const env = {
    ...base,
    computer: { ...base.computer, provisioner: settings(base.computer.provisioner) },
  } as DriverEnv;
  const steps = proxmoxSteps(env);
  const cap = captureOf(lab, computer, 'off');
  const run = (step: string, f: Facts = {}, timeoutMs?: number) => {
    const fn = steps[step];
    if (!fn) throw new Error(`no step ${step}`);
    return fn(stepRun(cap.input(step, f), timeoutMs === undefined ? {} : { timeoutMs }));
  };
  const facts = ((await run('inspect_vm'))?.facts ?? {}) as Facts;
  return { env, cap, facts, run: (step: string, timeoutMs?: number) => run(step, facts, timeoutMs) };
}

describe('the lab node', () => {
  it('answers qm and pvesm in their documented formats and errors', async () => {
    const node = driverEnv(separate, pool, 'px-windows-1').provisionerHost;
    const sh = (argv: string[]) => pool.exec(node, argv, { check: false });
    const config = await sh(['qm', 'config', '20001']);
    expect(config.code).toBe(0);
    // Sorted `key: value` lines; the CD drive, EFI and TPM volumes beside the two disks.
    const keys = config.stdout
      .trim()
      .split('\n')
      .map((l) => l.slice(0, l.indexOf(':')));
    expect(keys).toEqual([...keys].sort());
    expect(config.stdout).toMatch(/^boot: order=scsi0;ide2;net0$/m);
    expect(config.stdout).toMatch(/^scsi0: local:20001\/vm-20001-disk-0\.qcow2,iothread=1,size=8M$/m);
    expect(config.stdout).toMatch(/^scsi1: local-lvm:vm-20001-disk-1,iothread=1,size=8M$/m);
    expect(config.stdout).toMatch(/^ide2: none,media=cdrom$/m);
    expect(await sh(['qm', 'status', '20001'])).toMatchObject({
      code: 0,
      stdout: expect.stringMatching(/^status: (running|stopped)\n$/),
    });
    expect(await sh(['qm', 'status', '4242'])).toMatchObject({
      code: 2,
      stderr: "Configuration file 'nodes/pve-node/qemu-server/4242.conf' does not exist\n",
    });
    expect(await sh(['pvesm', 'path', 'local-lvm:vm-20001-disk-1'])).toMatchObject({
      code: 0,
      stdout: '/dev/pve/vm-20001-disk-1\n',
    });
    expect(await sh(['pvesm', 'path', 'local:20001/vm-20001-disk-0.qcow2'])).toMatchObject({
      stdout: '/var/lib/vz/images/20001/vm-20001-disk-0.qcow2\n',
    });
    expect(await sh(['pvesm', 'path', 'ceph:vm-1-disk-0'])).toMatchObject({
      code: 255,
      stderr: "storage 'ceph' does not exist\n",
    });
  });
});

describe('Proxmox steps against the lab node', () => {
  it('finds an LVM-backed VM’s block device, and a Windows VM’s named qcow2 disk beside a data disk', async () => {
    const linux = await inspected(separate, 'px-linux-1');
    expect(linux.facts).toMatchObject({
      vmid: 10001,
      diskKey: 'scsi0',
      disk: '/dev/pve/vm-10001-disk-0',
      sourceFormat: 'raw',
      target: `/srv/vcl/images/${linux.cap.name}.qcow2`,
    });
    const windows = await inspected(separate, 'px-windows-1');
    expect(windows.facts).toMatchObject({
      diskKey: 'scsi0',
      disk: '/var/lib/vz/images/20001/vm-20001-disk-0.qcow2',
      sourceFormat: 'qcow2',
    });
  });

  it('refuses a VM with two disks when the inventory names none, an unknown VM, and an existing target', async () => {
    const err = await refusal(inspected(separate, 'px-windows-1', pool, ({ disk: _disk, ...p }) => p));
    expect(err).toMatchObject({
      code: 'AMBIGUOUS',
      message:
        'the VM has 2 disks (scsi0, scsi1; it boots from scsi0): name the one to capture in provisioner.disk',
    });
    expect(
      await refusal(inspected(separate, 'px-linux-1', pool, (p) => ({ ...p, vmid: 999 }))),
    ).toMatchObject({
      code: 'NOT_FOUND',
      message: expect.stringContaining('pve-node has no VM 999: fix provisioner.vmid'),
    });
    const first = await inspected(separate, 'px-linux-2');
    separate.powerOff('px-linux-2');
    await first.run('copy_image');
    const again = proxmoxSteps(first.env).inspect_vm?.(stepRun(first.cap.input('inspect_vm')));
    expect(await refusal(again)).toMatchObject({
      code: 'TARGET_EXISTS',
      details: { target: first.facts.target },
    });
    await first.run('remove_copy');
  });

  it('asks qm shutdown, lets a guest that ignores it time out, then qm stop; sends neither to a stopped VM', async () => {
    const remote = watched();
    const c = await inspected(separate, 'px-linux-3', remote);
    separate.faults.add({ kind: 'neverPowersOff', computer: 'px-linux-3', mode: 'ignore' });
    if (separate.computer('px-linux-3').power === 'off') separate.powerOn('px-linux-3');
    await separate.waitForPower('px-linux-3', 'on');
    const from = remote.sent.length;
    // qm shutdown's own timeout (1 s: what the step's deadline leaves past the grace) runs out: not a failure.
    await c.run('request_power_off', 6500);
    expect(separate.computer('px-linux-3').power).toBe('on');
    // The wait gives up at its deadline (the runner turns that into TIMEOUT and escalates).
    await expect(c.run('wait_power_off', 300)).rejects.toThrow();
    await c.run('force_power_off');
    await c.run('wait_forced_off');
    expect(separate.computer('px-linux-3').power).toBe('off');
    const power = remote.sent.slice(from).filter((l) => /^qm (shutdown|stop)/.test(l));
    expect(power).toEqual([expect.stringMatching(/^qm shutdown 10003 --timeout \d+$/), 'qm stop 10003']);
    separate.faults.clear();

    const after = remote.sent.length;
    await c.run('request_power_off');
    await c.run('force_power_off');
    expect(remote.sent.slice(after).filter((l) => /^qm (shutdown|stop)/.test(l))).toEqual([]);
  });

  it.each([
    ['staged on the node and streamed to the repository host', () => separate],
    ['converted in place into a repository on the node', () => local],
  ])('copies a block device sparse (%s), and leaves no staging file', async (_how, labOf) => {
    const lab = labOf();
    const remote = watched();
    const c = await inspected(lab, 'px-linux-1', remote);
    lab.powerOff('px-linux-1');
    await lab.waitForPower('px-linux-1', 'off');
    const out = await c.run('copy_image');
    const artifact = out.artifact;
    if (!artifact) throw new Error('no artifact');
    // Told the source format, never probing a raw device's content.
    expect(remote.sent).toContainEqual(
      expect.stringMatching(/^qemu-img convert -f raw -O qcow2 \/dev\/pve\/vm-10001-disk-0 /),
    );
    expect(artifact.sha256).toBe(await lab.diskSha256('px-linux-1'));
    const repo = lab.inventory.repositories[lab.inventory.computers['px-linux-1']?.repository ?? ''];
    if (!repo) throw new Error('no repository');
    const real = await stat(await lab.realPath(repo.host, artifact.path));
    expect(real.size).toBe(8 * 1024 * 1024);
    // The lab's disk holds data in about 200 KiB of its 8 MiB: a fully allocated copy would take all.
    expect(real.blocks * 512).toBeLessThan(real.size / 4);
    expect(await filesWith(lab, 'pve-node', '/var/lib/vz/dump', '.vcl-capture-')).toEqual([]);
    await c.run('remove_copy');
    expect(await lab.exists(repo.host, artifact.path)).toBe(false);
  });
});

describe('Proxmox steps: deadlines, refusals and settings', () => {
  async function running(lab: Lab, computer: string): Promise<void> {
    if (lab.computer(computer).power === 'off') lab.powerOn(computer);
    await lab.waitForPower(computer, 'on');
  }

  it('gives qm shutdown what the step’s deadline leaves past the grace, and the command that plus the grace', async () => {
    await running(separate, 'px-linux-2');
    const remote = watched();
    const c = await inspected(separate, 'px-linux-2', remote);
    const from = remote.sent.length;
    await c.run('request_power_off', 8000);
    // 8 s left less the 5 s grace: 2 s, or 1 s when the steps before it took over a second (a loaded
    // machine); the command itself gets that plus the grace.
    const i = remote.sent.findIndex((l, n) => n >= from && /^qm shutdown 10002 --timeout [12]$/.test(l));
    expect(i, remote.sent.slice(from).join('\n')).toBeGreaterThan(0);
    const seconds = Number(remote.sent[i]?.split(' ').at(-1));
    expect(remote.timeouts[i]).toBe(seconds * 1000 + 5000);
    // Its success is the power off: nothing more is asked.
    expect(remote.sent.slice(i + 1)).toEqual([]);
    await c.run('wait_power_off');
    expect(separate.computer('px-linux-2').power).toBe('off');
  });

  it('a qm shutdown that fails otherwise is COMMAND_FAILED while the VM runs, and nothing once it stopped meanwhile', async () => {
    await running(separate, 'px-linux-2');
    const c = await inspected(separate, 'px-linux-2');
    const stderr =
      "VM 10002 qmp command 'system_powerdown' failed - unable to connect to VM 10002 qmp socket\n";
    separate.faults.add({
      kind: 'failCommand',
      host: 'pve-node',
      match: ['qm', 'shutdown'],
      exitCode: 255,
      stderr,
    });
    expect(await refusal(c.run('request_power_off'))).toMatchObject({
      code: 'COMMAND_FAILED',
      message: `qm shutdown 10002 on pve-node failed: ${stderr.trim()}`,
    });
    expect(separate.computer('px-linux-2').power).toBe('on');
    // The VM stopped (an interrupted earlier attempt's request took effect) just as qm failed.
    const racing = await inspected(
      separate,
      'px-linux-2',
      interceptRemote(pool, ['qm', 'shutdown'], () => separate.powerOff('px-linux-2')),
    );
    separate.faults.add({
      kind: 'failCommand',
      host: 'pve-node',
      match: ['qm', 'shutdown'],
      exitCode: 2,
      stderr,
    });
    expect(await racing.run('request_power_off')).toEqual({});
    separate.faults.clear();
  });

  it('inspect_vm: a qm config failure other than an unknown VM is COMMAND_FAILED in qm’s words; an unknown VM names its id', async () => {
    separate.faults.add({
      kind: 'failCommand',
      host: 'pve-node',
      match: ['qm', 'config'],
      exitCode: 1,
      stderr: 'ipcc_send_rec[1] failed: Connection refused\n',
    });
    expect(await refusal(inspected(separate, 'px-linux-1'))).toMatchObject({
      code: 'COMMAND_FAILED',
      message: 'qm config 10001 on pve-node failed: ipcc_send_rec[1] failed: Connection refused',
    });
    expect(
      await refusal(inspected(separate, 'px-linux-1', pool, (p) => ({ ...p, vmid: 999 }))),
    ).toMatchObject({
      code: 'NOT_FOUND',
      message:
        'pve-node has no VM 999: fix provisioner.vmid (or provisioner.host, the node it runs on) of px-linux-1 in the inventory',
      details: { vmid: 999 },
    });
  });

  it('inspect_vm: a host device passed through is UNSUPPORTED_DISK, before any pvesm path', async () => {
    const remote = watched();
    separate.faults.add({
      kind: 'failCommand',
      host: 'pve-node',
      match: ['qm', 'config'],
      exitCode: 0,
      stdout:
        'boot: order=scsi1;net0\nname: px-linux-1\nscsi0: local-lvm:vm-10001-disk-0,size=32G\nscsi1: /dev/disk/by-id/ata-WDC_WD40EFRX-68N32N0_WD-WCC7K1234567,size=3907018584K\n',
    });
    expect(
      await refusal(inspected(separate, 'px-linux-1', remote, (p) => ({ ...p, disk: 'scsi1' }))),
    ).toMatchObject({
      code: 'UNSUPPORTED_DISK',
      message:
        'scsi1 of VM 10001 is the host device /dev/disk/by-id/ata-WDC_WD40EFRX-68N32N0_WD-WCC7K1234567 passed through, not a storage volume: a capture copies a volume (name another disk with provisioner.disk of px-linux-1)',
      details: { disk: 'scsi1', volid: '/dev/disk/by-id/ata-WDC_WD40EFRX-68N32N0_WD-WCC7K1234567' },
    });
    expect(remote.sent.filter((l) => l.startsWith('pvesm '))).toEqual([]);
    separate.faults.clear();
  });

  it('stages in the inventory’s stagingDir; verify_image finds a flipped byte; remove_copy sends nothing without a target', async () => {
    const remote = watched();
    const c = await inspected(separate, 'px-linux-3', remote, (p) => ({ ...p, stagingDir: '/root' }));
    separate.powerOff('px-linux-3');
    await separate.waitForPower('px-linux-3', 'off');
    const out = await c.run('copy_image');
    const staged = `/root/.vcl-capture-${c.cap.input('copy_image').captureId}.qcow2`;
    expect(remote.sent).toContainEqual(
      expect.stringMatching(new RegExp(`^qemu-img convert .* ${staged.replace(/\./g, '\\.')}$`)),
    );
    expect(await filesWith(separate, 'pve-node', '/root', '.vcl-capture-')).toEqual([]);
    const artifact = out.artifact;
    if (!artifact) throw new Error('no artifact');
    const steps = proxmoxSteps(c.env);
    const verify = () => steps.verify_image?.(stepRun({ ...c.cap.input('verify_image', c.facts), artifact }));
    expect(await verify()).toEqual({});
    separate.faults.add({ kind: 'corrupt', at: 'file', host: 'repo-host', path: artifact.path });
    expect(await refusal(verify())).toMatchObject({
      code: 'VERIFY_MISMATCH',
      details: { path: artifact.path },
    });
    const before = remote.sent.length;
    await c.run('remove_copy');
    expect(remote.sent.slice(before)).toContain(`rm -f -- ${staged}`);
    expect(await separate.exists('repo-host', artifact.path)).toBe(false);
    const from = remote.sent.length;
    await steps.remove_copy?.(stepRun(c.cap.input('remove_copy', {})));
    expect(remote.sent.slice(from)).toEqual([]);
  });
});
