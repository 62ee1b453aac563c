/**
 * VMware's step implementations one by one against the lab's ESXi host over real SSH, on what a user
 * would see: the facts a step hands on, the commands it sends (none it does not need), what it leaves on
 * the datastore and in the repository, and each refusal's code, message and details.
 */
import { mkdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, posix } from 'node:path';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CaptureStepInput, Facts } from '../../machines/index.js';
import type { Remote } from '../../src/drivers/contract.js';
import type { CopyStepProgress, DriverEnv } from '../../src/drivers/env.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { type Logger, silentLogger } from '../../src/log.js';
import { vmwareSteps } from '../../src/provisioners/vmware/steps.js';
import { SshPool } from '../../src/ssh/index.js';
import {
  captureOf,
  driverEnv,
  filesWith,
  interceptRemote,
  type RunOptions,
  refusal,
  stepRun,
  withoutTool,
} from './rerun-helpers.js';

const DS = '/vmfs/volumes/datastore1';
const REPO = '/srv/vcl/images';
const GiB = 1024 ** 3;

let lab: Lab;
let pool: SshPool;

beforeAll(async () => {
  lab = await startLab({ powerDelayMs: 20, diskBytes: 1024 * 1024, computers: { 'vmware-linux': 4 } });
  pool = new SshPool({ logger: silentLogger() });
});

afterAll(async () => {
  await pool?.close();
  await lab?.stop();
});

afterEach(() => {
  lab.faults.clear();
  expect(lab.internalErrors).toEqual([]);
});

interface Sent {
  host: string;
  line: string;
  timeoutMs: number | undefined;
}

/** A transport that keeps each command line (with its host and timeout) and each copy's endpoints. */
function watched(): Remote & { sent: Sent[]; copies: { from: string; to: string }[] } {
  const w = {
    sent: [] as Sent[],
    copies: [] as { from: string; to: string }[],
    exec: ((host, argv, options) => {
      w.sent.push({ host: host.name, line: argv.join(' '), timeoutMs: options?.timeoutMs });
      return pool.exec(host, argv, options);
    }) as Remote['exec'],
    copy: ((from, to, options) => {
      w.copies.push({ from: `${from.host?.name}:${from.path}`, to: `${to.host?.name}:${to.path}` });
      return pool.copy(from, to, options);
    }) as Remote['copy'],
  };
  return w;
}

/** Log lines a step wrote (pino's JSON objects), at debug and above. */
function recordingLog() {
  const lines: { level: number; msg: string; [k: string]: unknown }[] = [];
  const log = pino({ level: 'debug' }, { write: (s: string) => lines.push(JSON.parse(s)) });
  return { log, lines };
}

/** Writes a file on a lab host (its folders created), as another program would have left it. */
async function put(host: string, path: string, content = 'x'): Promise<void> {
  const real = await lab.realPath(host, path);
  await mkdir(dirname(real), { recursive: true });
  await writeFile(real, content);
}

async function drop(host: string, path: string): Promise<void> {
  await rm(await lab.realPath(host, path), { recursive: true, force: true });
}

/** A capture of `computer` (settings changed by `settings`), its steps run as the runner runs them. */
function capture(
  computer: string,
  remote: Remote = pool,
  settings: (p: Record<string, unknown>) => Record<string, unknown> = (p) => p,
) {
  const base = driverEnv(lab, remote, computer);
  const progress: { step: string; p: CopyStepProgress }[] = [];
  // The changed settings are what a hand-edited inventory would hold: not checked against its schema here.
  const provisioner = settings(base.computer.provisioner) as unknown as DriverEnv['computer']['provisioner'];
  const env: DriverEnv = {
    ...base,
    computer: { ...base.computer, provisioner },
    progress: (step, p) => progress.push({ step, p }),
  };
  const steps = vmwareSteps(env);
  const cap = captureOf(lab, computer, 'off');
  const run = (
    step: string,
    facts: Facts,
    options: RunOptions & { log?: Logger; artifact?: CaptureStepInput['artifact'] } = {},
  ) => {
    const fn = steps[step];
    if (!fn) throw new Error(`no step ${step}`);
    const input = { ...cap.input(step, facts), ...(options.artifact ? { artifact: options.artifact } : {}) };
    const r = stepRun(input, options);
    return fn(options.log ? { ...r, log: options.log } : r);
  };
  return { env, steps, cap, run, progress };
}

/** A capture past locate_vm and check_target: the facts its later steps work with. */
async function located(computer: string, remote: Remote = pool) {
  const c = capture(computer, remote);
  const found = (await c.run('locate_vm', {})).facts ?? {};
  const checked = (await c.run('check_target', found)).facts ?? {};
  const facts = { ...found, ...checked };
  return {
    ...c,
    facts,
    go: (step: string, options?: Parameters<typeof c.run>[2]) => c.run(step, facts, options),
  };
}

async function off(computer: string): Promise<void> {
  if (lab.computer(computer).power !== 'off') lab.powerOff(computer);
  await lab.waitForPower(computer, 'off');
}

async function on(computer: string): Promise<void> {
  if (lab.computer(computer).power === 'off') lab.powerOn(computer);
  await lab.waitForPower(computer, 'on');
}

/** The lines `remote` sent from index `from` on, matching `re`. */
function linesOf(remote: ReturnType<typeof watched>, re: RegExp, from = 0): string[] {
  return remote.sent
    .slice(from)
    .map((s) => s.line)
    .filter((l) => re.test(l));
}

describe('locate_vm and check_target', () => {
  it('hand on the VM, its .vmx, its one disk and sizes, then the clone and the repository target', async () => {
    const c = 'vm-linux-1';
    const { facts, cap } = await located(c);
    const real = await stat(lab.computer(c).disk.real);
    const vmid = Number(
      /^(\d+)\s+vm-linux-1\s/m.exec(
        (await pool.exec(driverEnv(lab, pool, c).provisionerHost, ['vim-cmd', 'vmsvc/getallvms'])).stdout,
      )?.[1],
    );
    expect(facts).toEqual({
      vmid,
      vmx: `${DS}/${c}/${c}.vmx`,
      disk: `${DS}/${c}/${c}.vmdk`,
      datastore: 'datastore1',
      virtualBytes: real.size,
      allocatedBytes: real.blocks * 512,
      clone: `${DS}/${cap.name}/${cap.name}.vmdk`,
      target: `${REPO}/${cap.name}.vmdk`,
    });
    // The lab's disk is sparse: allocation is read, not taken as the virtual size.
    expect(facts.allocatedBytes).toBeLessThan(real.size);
  });

  it('refuses a host that lacks a tool the path needs, before touching anything', async () => {
    const lacking = withoutTool(pool, 'vmkfstools');
    expect(await refusal(capture('vm-linux-3', lacking).run('locate_vm', {}))).toMatchObject({
      code: 'PREFLIGHT_TOOL_MISSING',
      message: 'esxi-host lacks vmkfstools (needed as vmware host): install it or fix the PATH of root',
      details: { host: 'esxi-host', missing: ['vmkfstools'] },
    });
  });

  it('counts an extent stat cannot read as fully allocated; takes the datastore the inventory names', async () => {
    const c = 'vm-linux-1';
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['stat', '-c', '%s %b %B'],
      exitCode: 1,
    });
    const unread = (await capture(c).run('locate_vm', {})).facts;
    expect(unread?.allocatedBytes).toBe(unread?.virtualBytes);
    const named = (await capture(c, pool, (p) => ({ ...p, datastore: 'fast-ds' })).run('locate_vm', {}))
      .facts;
    expect(named).toMatchObject({ datastore: 'fast-ds', vmx: `${DS}/${c}/${c}.vmx` });
  });

  it('takes the datastore from the .vmx path when the inventory names none: the clone and the space check go there', async () => {
    const c = 'vm-linux-1';
    const other = '/vmfs/volumes/ssd-2';
    // The VM registered on a second datastore (its files copied there), the inventory naming none.
    for (const f of [`${c}.vmx`, `${c}.vmdk`])
      await put(
        'esxi-host',
        `${other}/${c}/${f}`,
        (await lab.readFile('esxi-host', `${DS}/${c}/${f}`)).toString(),
      );
    const listed = (await pool.exec(driverEnv(lab, pool, c).provisionerHost, ['vim-cmd', 'vmsvc/getallvms']))
      .stdout;
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['vim-cmd', 'vmsvc/getallvms'],
      exitCode: 0,
      stdout: listed.replace(`[datastore1] ${c}/`, `[ssd-2] ${c}/`),
    });
    const remote = watched();
    const x = capture(c, remote);
    expect(x.env.computer.provisioner).not.toHaveProperty('datastore');
    const found = (await x.run('locate_vm', {})).facts ?? {};
    expect(found).toMatchObject({
      vmx: `${other}/${c}/${c}.vmx`,
      disk: `${other}/${c}/${c}.vmdk`,
      datastore: 'ssd-2',
    });
    const from = remote.sent.length;
    expect((await x.run('check_target', found)).facts).toEqual({
      clone: `${other}/${x.cap.name}/${x.cap.name}.vmdk`,
      target: `${REPO}/${x.cap.name}.vmdk`,
    });
    expect(linesOf(remote, /^vmkfstools -P/, from)).toEqual([`vmkfstools -P ${other}`]);
    await drop('esxi-host', other);
  });

  it('counts an extent without a file (a ZERO extent) whole, asking stat only about the extents with one', async () => {
    const c = 'vm-linux-1';
    const disk = `${DS}/${c}/${c}.vmdk`;
    const plain = (await capture(c).run('locate_vm', {})).facts ?? {};
    const descriptor = (await lab.readFile('esxi-host', disk)).toString();
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['cat', disk],
      exitCode: 0,
      stdout: descriptor.replace(/^(RW \d+ VMFS "[^"]+")$/m, '$1\nRW 2048 ZERO'),
    });
    const remote = watched();
    const zero = (await capture(c, remote).run('locate_vm', {})).facts ?? {};
    expect(zero).toMatchObject({
      virtualBytes: Number(plain.virtualBytes) + 2048 * 512,
      allocatedBytes: Number(plain.allocatedBytes) + 2048 * 512,
    });
    expect(linesOf(remote, /^stat /)).toEqual([`stat -c %s %b %B ${DS}/${c}/${c}-flat.vmdk`]);
  });

  it('refuses a VM not registered, one registered twice, and a VM with two disks or a nonpersistent one', async () => {
    const c = 'vm-linux-2';
    expect(await refusal(capture(c, pool, (p) => ({ ...p, vm: 'gone' })).run('locate_vm', {}))).toMatchObject(
      {
        code: 'NOT_FOUND',
        message: `no VM named gone is registered on esxi-host: register it or fix provisioner.vm of ${c} in the inventory`,
      },
    );
    const row = (id: number) => `${id}    ${c}    [datastore1] ${c}/${c}.vmx   ubuntu64Guest   vmx-19\n`;
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['vim-cmd', 'vmsvc/getallvms'],
      exitCode: 0,
      stdout: `Vmid   Name   File   Guest OS   Version   Annotation\n${row(7)}${row(8)}`,
    });
    expect(await refusal(capture(c).run('locate_vm', {}))).toMatchObject({
      code: 'AMBIGUOUS',
      message: `2 VMs are named ${c} on esxi-host`,
    });

    const vmx = `${DS}/${c}/${c}.vmx`;
    const original = (await lab.readFile('esxi-host', vmx)).toString('utf8');
    const twoDisks = `${original}scsi0:1.present = "TRUE"\nscsi0:1.fileName = "data.vmdk"\n`;
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['cat', vmx],
      exitCode: 0,
      stdout: twoDisks,
    });
    expect(await refusal(capture(c).run('locate_vm', {}))).toMatchObject({
      code: 'UNSUPPORTED_DISK',
      message: `${c} has 2 disks; a capture needs exactly one`,
      details: { disks: [`${c}.vmdk`, 'data.vmdk'] },
    });
    // Both nonpersistent modes drop the guest's writes (pre_capture's among them) at power-off.
    for (const mode of ['Nonpersistent', 'independent-nonpersistent']) {
      const nonpersistent = original.replace('scsi0:0.mode = "persistent"', `scsi0:0.mode = "${mode}"`);
      expect(nonpersistent).not.toBe(original);
      lab.faults.add({
        kind: 'failCommand',
        host: 'esxi-host',
        match: ['cat', vmx],
        exitCode: 0,
        stdout: nonpersistent,
      });
      expect(await refusal(capture(c).run('locate_vm', {})), mode).toMatchObject({
        code: 'UNSUPPORTED_DISK',
        message: `${c}'s disk is nonpersistent: its changes are never written`,
      });
    }
    // independent-persistent writes through: captured like persistent.
    const independent = original.replace(
      'scsi0:0.mode = "persistent"',
      'scsi0:0.mode = "independent-persistent"',
    );
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['cat', vmx],
      exitCode: 0,
      stdout: independent,
    });
    expect((await capture(c).run('locate_vm', {})).facts?.disk).toBe(`${DS}/${c}/${c}.vmdk`);
    const diskless = original.replace(/^scsi0:0\..*\n/gm, '');
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['cat', vmx],
      exitCode: 0,
      stdout: diskless,
    });
    expect(await refusal(capture(c).run('locate_vm', {}))).toMatchObject({
      code: 'UNSUPPORTED_DISK',
      message: `${c} has 0 disks; a capture needs exactly one`,
    });
    // A disk named by its full path is read there, not under the VM's folder; no mode is persistent.
    const absolute = original
      .replace(`fileName = "${c}.vmdk"`, `fileName = "${DS}/${c}/${c}.vmdk"`)
      .replace('scsi0:0.mode = "persistent"\n', '');
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['cat', vmx],
      exitCode: 0,
      stdout: absolute,
    });
    expect((await capture(c).run('locate_vm', {})).facts?.disk).toBe(`${DS}/${c}/${c}.vmdk`);
  });

  it('refuses a clone folder or any file of the repository set that exists, naming it; leaves it', async () => {
    const c = 'vm-linux-2';
    const x = capture(c);
    const found = (await x.run('locate_vm', {})).facts ?? {};
    const image = x.cap.name;
    // [host, file put there, path refused]: the clone's folder holding anything (remove_clone would take
    // it all), or any file of the repository set.
    for (const [host, file, path] of [
      ['esxi-host', `${DS}/${image}/${image}.vmdk`, `${DS}/${image}`],
      ['esxi-host', `${DS}/${image}/notes.txt`, `${DS}/${image}`],
      ['repo-host', `${REPO}/${image}.vmdk`, `${REPO}/${image}.vmdk`],
      ['repo-host', `${REPO}/${image}-s001.vmdk`, `${REPO}/${image}-s001.vmdk`],
      ['repo-host', `${REPO}/${image}.vmx`, `${REPO}/${image}.vmx`],
      ['repo-host', `${REPO}/${image}.vmdk.sha256`, `${REPO}/${image}.vmdk.sha256`],
    ] as const) {
      await put(host, file, 'theirs');
      expect(await refusal(x.run('check_target', found)), file).toMatchObject({
        code: 'TARGET_EXISTS',
        message: `${path} already exists on ${host}; nothing is overwritten`,
        details: { path },
      });
      expect((await lab.readFile(host, file)).toString()).toBe('theirs');
      await drop(host, path);
    }
    // A virtual size past one 2047 MiB extent makes the second extent part of the set.
    await put('repo-host', `${REPO}/${image}-s002.vmdk`);
    await x.run('check_target', found);
    expect(await refusal(x.run('check_target', { ...found, virtualBytes: 2048 * 1024 ** 2 }))).toMatchObject({
      code: 'TARGET_EXISTS',
      details: { path: `${REPO}/${image}-s002.vmdk` },
    });
    await drop('repo-host', `${REPO}/${image}-s002.vmdk`);
  });

  it('asks the datastore for twice the allocation and the repository for it once, each with the margin', async () => {
    const c = 'vm-linux-2';
    const x = capture(c);
    const found = (await x.run('locate_vm', {})).facts ?? {};
    const allocated = Number(found.allocatedBytes);
    expect(allocated).toBeGreaterThan(0);
    const needed = { datastore: 2 * allocated + GiB, repository: allocated + GiB };
    lab.faults.add({ kind: 'diskFull', host: 'esxi-host', afterBytes: needed.datastore });
    await x.run('check_target', found);
    lab.faults.clear();
    lab.faults.add({ kind: 'diskFull', host: 'esxi-host', afterBytes: needed.datastore - 1 });
    expect(await refusal(x.run('check_target', found))).toMatchObject({
      code: 'PREFLIGHT_NO_SPACE',
      message: expect.stringMatching(/^datastore datastore1 \(esxi-host:\/vmfs\/volumes\/datastore1\) has /),
      details: { host: 'esxi-host', dir: DS, freeBytes: needed.datastore - 1, neededBytes: needed.datastore },
    });
    lab.faults.clear();
    lab.faults.add({ kind: 'diskFull', host: 'repo-host', afterBytes: needed.repository });
    await x.run('check_target', found);
    lab.faults.clear();
    lab.faults.add({ kind: 'diskFull', host: 'repo-host', afterBytes: needed.repository - 1 });
    expect(await refusal(x.run('check_target', found))).toMatchObject({
      code: 'PREFLIGHT_NO_SPACE',
      message: expect.stringMatching(/^repository images \(repo-host:\/srv\/vcl\/images\) has /),
      details: { host: 'repo-host', dir: REPO, neededBytes: needed.repository },
    });
  });
});

describe('power', () => {
  it('sends neither shutdown nor power.off to a VM already off', async () => {
    const c = 'vm-linux-3';
    await off(c);
    const remote = watched();
    const { go, facts } = await located(c, remote);
    const from = remote.sent.length;
    for (const step of ['request_power_off', 'wait_power_off', 'force_power_off', 'wait_forced_off'])
      expect(await go(step)).toEqual({});
    expect(linesOf(remote, /^vim-cmd/, from)).toEqual(
      Array(4).fill(`vim-cmd vmsvc/power.getstate ${facts.vmid}`),
    );
  });

  it('asks a running VM’s guest to shut down and waits for it; a hard power off after that is not sent', async () => {
    const c = 'vm-linux-3';
    await on(c);
    const remote = watched();
    const { go, facts } = await located(c, remote);
    const from = remote.sent.length;
    await go('request_power_off');
    await go('wait_power_off');
    expect(lab.computer(c).power).toBe('off');
    await go('force_power_off');
    expect(linesOf(remote, /^vim-cmd vmsvc\/power\.(shutdown|off)/, from)).toEqual([
      `vim-cmd vmsvc/power.shutdown ${facts.vmid}`,
    ]);
  });

  it('a guest shutdown refused (Tools down or another reason) is logged, not a failure; the wait is bounded', async () => {
    const c = 'vm-linux-4';
    await on(c);
    const { go } = await located(c);
    lab.faults.add({ kind: 'neverPowersOff', computer: c, mode: 'hang' });
    const first = recordingLog();
    expect(await go('request_power_off', { log: first.log })).toEqual({});
    expect(first.lines).toEqual([]);
    // The OS is going down and no longer answers: its Tools are gone, vim-cmd says ToolsUnavailable.
    const tools = recordingLog();
    expect(await go('request_power_off', { log: tools.log })).toEqual({});
    expect(tools.lines.map((l) => [l.level, l.msg])).toEqual([
      [30, 'VMware Tools not running (the OS is going down); waiting for the power off'],
    ]);
    await expect(go('wait_power_off', { timeoutMs: 150 })).rejects.toThrow();
    expect(lab.computer(c).power).not.toBe('off');

    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['vim-cmd', 'vmsvc/power.shutdown'],
      exitCode: 1,
      stderr: '(vim.fault.TaskInProgress) {\n   msg = "busy"\n}\n',
    });
    const other = recordingLog();
    expect(await go('request_power_off', { log: other.log })).toEqual({});
    expect(other.lines).toEqual([
      expect.objectContaining({
        level: 40,
        msg: 'guest shutdown refused; waiting for the OS to power off',
        stderr: '(vim.fault.TaskInProgress) {\n   msg = "busy"\n}',
      }),
    ]);
    await go('force_power_off');
    await go('wait_forced_off');
    expect(lab.computer(c).power).toBe('off');
  });

  it('a hard power off that fails because the VM went off meanwhile (on its own, or an earlier attempt) is done', async () => {
    const c = 'vm-linux-4';
    await on(c);
    let sent = 0;
    // The VM goes off just before power.off reaches ESXi, which then refuses it: "Powered off".
    const racing = interceptRemote(pool, ['vim-cmd', 'vmsvc/power.off'], async () => {
      sent++;
      lab.powerOff(c);
      await lab.waitForPower(c, 'off');
    });
    const { go } = await located(c, racing);
    expect(await go('force_power_off')).toEqual({});
    expect(sent).toBe(1);
    expect(await go('wait_forced_off')).toEqual({});
    expect(lab.computer(c).power).toBe('off');
  });

  it('a hard power off that fails on a VM still on fails the step with vim-cmd’s error', async () => {
    const c = 'vm-linux-4';
    await on(c);
    const { go } = await located(c);
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['vim-cmd', 'vmsvc/power.off'],
      exitCode: 1,
      stderr: 'Connection failed\n',
    });
    const err = await refusal(go('force_power_off'));
    expect(err).toMatchObject({
      code: 'SSH_EXIT_NONZERO',
      message: expect.stringContaining('Connection failed'),
    });
    expect(lab.computer(c).power).toBe('on');
  });
});

describe('clone_disk and repair_disk', () => {
  it('thin-clones the disk into the clone folder, over what an earlier attempt left; the source untouched', async () => {
    const c = 'vm-linux-1';
    await off(c);
    const remote = watched();
    const { go, facts } = await located(c, remote);
    const clone = String(facts.clone);
    const flat = clone.replace(/\.vmdk$/, '-flat.vmdk');
    await put('esxi-host', flat, 'half-written');
    const from = remote.sent.length;
    expect(await go('clone_disk')).toEqual({});
    expect(linesOf(remote, /./, from)).toEqual([
      `mkdir -p ${posix.dirname(clone)}`,
      `rm -f -- ${clone} ${flat}`,
      `vmkfstools -i ${facts.disk} ${clone} -d thin`,
    ]);
    expect(await lab.sha256('esxi-host', flat)).toBe(await lab.diskSha256(c));
    expect((await lab.readFile('esxi-host', clone)).toString()).toMatch(/^RW \d+ VMFS "[^"]+-flat\.vmdk"$/m);
    await go('remove_clone');
    expect(await lab.exists('esxi-host', posix.dirname(clone))).toBe(false);
  });

  it('a disk that needs repair fails NEEDS_REPAIR; repair_disk removes the partial clone and repairs; the clone then works', async () => {
    const c = 'vm-linux-1';
    const remote = watched();
    const { go, facts } = await located(c, remote);
    lab.faults.add({ kind: 'needsRepair', host: 'esxi-host' });
    expect(await refusal(go('clone_disk'))).toMatchObject({
      code: 'NEEDS_REPAIR',
      message: 'vmkfstools: the source disk needs repair',
      details: { disk: facts.disk },
    });
    const from = remote.sent.length;
    expect(await go('repair_disk')).toEqual({});
    expect(linesOf(remote, /./, from)).toEqual([
      `rm -rf ${posix.dirname(String(facts.clone))}`,
      `vmkfstools -x repair ${facts.disk}`,
    ]);
    expect(await lab.exists('esxi-host', posix.dirname(String(facts.clone)))).toBe(false);
    await go('clone_disk');
    await go('remove_clone');
  });

  it('a full datastore fails NO_SPACE and leaves no clone data; any other vmkfstools failure is vmkfstools’ own', async () => {
    const c = 'vm-linux-1';
    const { go, facts } = await located(c);
    lab.faults.add({ kind: 'diskFull', host: 'esxi-host' });
    expect(await refusal(go('clone_disk'))).toMatchObject({
      code: 'NO_SPACE',
      message: 'no space left for the clone on esxi-host',
    });
    lab.faults.clear();
    expect(await filesWith(lab, 'esxi-host', posix.dirname(String(facts.clone)), '.vmdk')).toEqual([]);
    // A thin clone whose source is missing is not the 2gbsparse module's problem.
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['vmkfstools', '-i'],
      exitCode: 1,
      stderr: "Failed to open 'x': The system cannot find the file specified (25).\n",
    });
    expect(await refusal(go('clone_disk'))).toMatchObject({
      code: 'SSH_EXIT_NONZERO',
      message: expect.stringContaining('The system cannot find the file specified'),
    });
    await go('remove_clone');
  });
});

describe('copy_to_repository, verify_image and the cleanups', () => {
  /** A capture of vm-linux-2 off, cloned: ready to copy. */
  async function cloned(remote: Remote = pool) {
    const c = 'vm-linux-2';
    await off(c);
    const x = await located(c, remote);
    await x.go('clone_disk');
    return x;
  }

  it('streams the extents, the descriptor, the reference .vmx and the manifest last; records the manifest’s hash', async () => {
    const remote = watched();
    const x = await cloned(remote);
    const image = x.cap.name;
    const staging = `${DS}/${image}/repository`;
    // What a killed earlier attempt left: a transport temporary file of the extent in the repository.
    await put('repo-host', `${REPO}/.${image}-s001.vmdk.vcl-tmp-0123456789ab`, 'partial');
    const out = await x.go('copy_to_repository');
    const names = [`${image}-s001.vmdk`, `${image}.vmdk`, `${image}.vmx`, `${image}.vmdk.sha256`];
    expect(remote.copies).toEqual(
      names.map((n) => ({ from: `esxi-host:${staging}/${n}`, to: `repo-host:${REPO}/${n}` })),
    );
    const real = (n: string) => lab.realPath('repo-host', `${REPO}/${n}`);
    const sizes = await Promise.all(names.map(async (n) => (await stat(await real(n))).size));
    expect(out.artifact).toEqual({
      path: `${REPO}/${image}.vmdk`,
      sizeBytes: (sizes[0] ?? 0) + (sizes[1] ?? 0) + (sizes[2] ?? 0),
      sha256: await lab.sha256('repo-host', `${REPO}/${image}.vmdk.sha256`),
      format: 'vmdk',
    });
    const manifest = (await readFile(await real(`${image}.vmdk.sha256`))).toString();
    const hashes = await Promise.all(names.slice(0, 3).map((n) => lab.sha256('repo-host', `${REPO}/${n}`)));
    expect(manifest).toBe(
      names
        .slice(0, 3)
        .map((n, i) => `${hashes[i]}  ${n}\n`)
        .join(''),
    );
    // The reference .vmx names the stored descriptor and the image, not the captured VM's identity.
    const vmx = (await readFile(await real(`${image}.vmx`))).toString();
    expect(vmx).toMatch(new RegExp(`^scsi0:0\\.fileName = "${image}\\.vmdk"$`, 'm'));
    expect(vmx).toMatch(new RegExp(`^displayName = "${image}"$`, 'm'));
    expect(vmx).not.toMatch(/generatedAddress|uuid\.bios/);
    // One progress total for the whole set (the manifest's bytes join it once it is written), reached at
    // the end; bytes never go back.
    const reports = x.progress.filter((r) => r.step === 'copy_to_repository').map((r) => r.p);
    const total = sizes.reduce((a, b) => a + b, 0);
    expect(reports.length).toBeGreaterThan(1);
    expect(new Set(reports.map((p) => p.total))).toEqual(new Set([total - (sizes[3] ?? 0), total]));
    expect(reports.at(-1)?.bytes).toBe(total);
    for (let i = 1; i < reports.length; i++) {
      expect(reports[i]?.bytes).toBeGreaterThanOrEqual(reports[i - 1]?.bytes ?? 0);
      expect(reports[i]?.wireBytes).toBeGreaterThanOrEqual(reports[i - 1]?.wireBytes ?? 0);
    }
    expect(reports.at(-1)?.wireBytes).toBeGreaterThan(0);
    expect(reports.at(-1)?.resumes ?? 0).toBe(0);
    // Nothing staged stays on the datastore; only the set in the repository.
    expect(await lab.exists('esxi-host', staging)).toBe(false);
    expect(await filesWith(lab, 'repo-host', REPO, image)).toEqual([...names].sort());
    // Every command of the step is bounded by the step's deadline.
    for (const s of remote.sent) expect(s.timeoutMs).toBeLessThanOrEqual(20_000);

    // verify_image reads the set back: the manifest's files and qemu-img's reading of the descriptor.
    const from = remote.sent.length;
    const artifact = out.artifact;
    expect(await x.go('verify_image', { artifact })).toEqual({});
    expect(linesOf(remote, /^qemu-img/, from)).toEqual([
      `qemu-img info --output=json ${REPO}/${image}.vmdk`,
      `qemu-img check -q ${REPO}/${image}.vmdk`,
    ]);

    // Re-run after it completed: the set written anew (its descriptor's CID is new), once.
    const again = await x.go('copy_to_repository');
    expect(again.artifact).toEqual({
      ...out.artifact,
      sha256: await lab.sha256('repo-host', `${REPO}/${image}.vmdk.sha256`),
    });
    expect(await filesWith(lab, 'repo-host', REPO, image)).toEqual([...names].sort());

    await x.go('remove_repository_copy');
    await x.go('remove_clone');
    expect(await filesWith(lab, 'repo-host', REPO, image)).toEqual([]);
    expect(await lab.exists('esxi-host', `${DS}/${image}`)).toBe(false);
  });

  it('a file whose copy loses its connection resumes; the step’s progress counts that resume to the end of the set', async () => {
    const x = await cloned();
    const image = x.cap.name;
    // The extent's reader on the ESXi host drops its connection once it has sent some of the extent.
    const fault = lab.faults.add({
      kind: 'dropConnection',
      host: 'esxi-host',
      match: new RegExp(`^sh -c .* sh \\S*/${image}-s001\\.vmdk$`),
      afterBytes: 64 * 1024,
    });
    const out = await x.go('copy_to_repository');
    expect(fault.fired).toBe(1);
    // The set arrived whole all the same.
    expect(await x.go('verify_image', { artifact: out.artifact })).toEqual({});
    // One resume, counted from the moment it happened through the last file of the set; never less.
    const resumes = x.progress.filter((r) => r.step === 'copy_to_repository').map((r) => r.p.resumes);
    for (const r of resumes) expect([0, 1]).toContain(r);
    for (let i = 1; i < resumes.length; i++) expect(resumes[i]).toBeGreaterThanOrEqual(resumes[i - 1] ?? 0);
    expect(resumes.at(-1)).toBe(1);
    await x.go('remove_repository_copy');
    await x.go('remove_clone');
  });

  it('verify_image: a manifest that leaves out an extent, a vmdk qemu-img reads otherwise, and check errors (exit 3 passes)', async () => {
    const remote = watched();
    const x = await cloned(remote);
    const image = x.cap.name;
    const out = await x.go('copy_to_repository');
    const artifact = out.artifact;
    if (!artifact) throw new Error('no artifact');
    const descriptor = artifact.path;

    lab.faults.add({
      kind: 'failCommand',
      host: 'repo-host',
      match: ['qemu-img', 'info'],
      exitCode: 0,
      stdout: '{"format": "raw", "virtual-size": 4194304}\n',
    });
    expect(await refusal(x.go('verify_image', { artifact }))).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: `qemu-img reads ${descriptor} as raw , not a twoGbMaxExtentSparse vmdk`,
      details: { path: descriptor, format: 'raw', createType: undefined },
    });
    // The create type alone is not enough: the format must be vmdk too.
    lab.faults.add({
      kind: 'failCommand',
      host: 'repo-host',
      match: ['qemu-img', 'info'],
      exitCode: 0,
      stdout: '{"format": "qcow2", "format-specific": {"data": {"create-type": "twoGbMaxExtentSparse"}}}\n',
    });
    expect(await refusal(x.go('verify_image', { artifact }))).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: `qemu-img reads ${descriptor} as qcow2 twoGbMaxExtentSparse, not a twoGbMaxExtentSparse vmdk`,
      details: { path: descriptor, format: 'qcow2', createType: 'twoGbMaxExtentSparse' },
    });
    lab.faults.add({
      kind: 'failCommand',
      host: 'repo-host',
      match: ['qemu-img', 'info'],
      exitCode: 0,
      stdout:
        '{"format": "vmdk", "format-specific": {"type": "vmdk", "data": {"create-type": "monolithicSparse"}}}\n',
    });
    expect(await refusal(x.go('verify_image', { artifact }))).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: `qemu-img reads ${descriptor} as vmdk monolithicSparse, not a twoGbMaxExtentSparse vmdk`,
    });
    lab.faults.add({
      kind: 'failCommand',
      host: 'repo-host',
      match: ['qemu-img', 'info'],
      exitCode: 0,
      stdout: 'no\n',
    });
    expect(await refusal(x.go('verify_image', { artifact }))).toMatchObject({
      code: 'PARSE_FAILED',
      message: 'qemu-img info printed no JSON',
    });
    lab.faults.add({
      kind: 'failCommand',
      host: 'repo-host',
      match: ['qemu-img', 'check'],
      exitCode: 2,
      stderr: '2 errors were found on the image.\n',
    });
    expect(await refusal(x.go('verify_image', { artifact }))).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: `qemu-img check found errors in ${descriptor}: 2 errors were found on the image.`,
      details: { path: descriptor, code: 2 },
    });
    lab.faults.add({
      kind: 'failCommand',
      host: 'repo-host',
      match: ['qemu-img', 'check'],
      exitCode: 3,
      stderr: '1 leaked clusters were found on the image.\n',
    });
    const leaked = recordingLog();
    expect(await x.go('verify_image', { artifact, log: leaked.log })).toEqual({});
    expect(leaked.lines.map((l) => l.msg)).toContain('qemu-img check: leaked clusters');

    // A repository host without qemu-img: the hashes alone verify, no qemu-img command is sent.
    lab.faults.add({ kind: 'failCommand', host: 'repo-host', match: /^sh -c .* sh qemu-img$/, exitCode: 1 });
    const from = remote.sent.length;
    expect(await x.go('verify_image', { artifact })).toEqual({});
    expect(linesOf(remote, /^qemu-img/, from)).toEqual([]);

    // A manifest (recorded as written) that leaves out the extent, or the descriptor itself.
    const manifestPath = `${descriptor}.sha256`;
    const full = (await lab.readFile('repo-host', manifestPath)).toString();
    let recorded = artifact;
    for (const left of [`${image}-s001.vmdk`, `${image}.vmdk`]) {
      const lines = full.split('\n').filter((l) => l !== '' && !l.endsWith(`  ${left}`));
      await put('repo-host', manifestPath, `${lines.join('\n')}\n`);
      let listedSize = 0;
      for (const l of lines)
        listedSize += (await stat(await lab.realPath('repo-host', `${REPO}/${l.slice(66)}`))).size;
      recorded = {
        ...artifact,
        sha256: await lab.sha256('repo-host', manifestPath),
        sizeBytes: listedSize,
      };
      expect(await refusal(x.go('verify_image', { artifact: recorded })), left).toMatchObject({
        code: 'VERIFY_MISMATCH',
        message: `the manifest of ${descriptor} does not list ${left}`,
        details: { path: descriptor, unlisted: [left] },
      });
    }
    // The descriptor left out holding an extent without a file (a ZERO extent): only the descriptor is named.
    const text = (await lab.readFile('repo-host', descriptor)).toString();
    const zeroed = text.replace(/^(RW \d+ SPARSE "[^"]+")$/m, '$1\nRW 100 ZERO');
    expect(zeroed).not.toBe(text);
    await put('repo-host', descriptor, zeroed);
    expect(await refusal(x.go('verify_image', { artifact: recorded }))).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: `the manifest of ${descriptor} does not list ${image}.vmdk`,
      details: { path: descriptor, unlisted: [`${image}.vmdk`] },
    });
    // Two files left out (the descriptor, and a second extent it names now): both are named.
    await put('repo-host', descriptor, zeroed.replace('RW 100 ZERO', `RW 100 SPARSE "${image}-s002.vmdk"`));
    expect(await refusal(x.go('verify_image', { artifact: recorded }))).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: `the manifest of ${descriptor} does not list ${image}.vmdk, ${image}-s002.vmdk`,
      details: { path: descriptor, unlisted: [`${image}.vmdk`, `${image}-s002.vmdk`] },
    });
    await x.go('remove_repository_copy');
    await x.go('remove_clone');
  });

  it('refuses extents vmkfstools named outside the set; explains a 2gbsparse clone ESXi cannot write; a failed copy leaves nothing once cleaned', async () => {
    const x = await cloned();
    const image = x.cap.name;
    const clone = String(x.facts.clone);
    const staged = `${DS}/${image}/repository/${image}.vmdk`;
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['cat', staged],
      exitCode: 0,
      stdout: '# Disk DescriptorFile\nRW 8192 SPARSE "other-s001.vmdk"\nRW 100 ZERO\n',
    });
    expect(await refusal(x.go('copy_to_repository'))).toMatchObject({
      code: 'PARSE_FAILED',
      message: `vmkfstools named extents outside the 2gbsparse set of ${image}`,
      details: { extents: ['other-s001.vmdk', undefined], expected: [`${image}-s001.vmdk`] },
    });
    expect(await filesWith(lab, 'repo-host', REPO, image)).toEqual([]);

    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      match: ['vmkfstools', '-i', clone],
      exitCode: 1,
      stderr: "Failed to open 'x': The system cannot find the file specified (25).\n",
    });
    expect(await refusal(x.go('copy_to_repository'))).toMatchObject({
      code: 'COMMAND_FAILED',
      message: `vmkfstools could not write the 2gbsparse copy of ${clone} on esxi-host (Failed to open 'x': The system cannot find the file specified (25).): ESXi 5.1 and later need the multiextent module for it (esxcli system module load -m multiextent)`,
      details: { disk: clone },
    });

    // The repository fills up while the extent streams: the step fails; its cleanups leave nothing.
    lab.faults.add({ kind: 'diskFull', host: 'repo-host', afterBytes: 1024 });
    await expect(x.go('copy_to_repository')).rejects.toThrow();
    lab.faults.clear();
    expect(await filesWith(lab, 'repo-host', REPO, image)).toEqual([]);
    await x.go('remove_repository_copy');
    await x.go('remove_clone');
    expect(await filesWith(lab, 'repo-host', REPO, image)).toEqual([]);
    expect(await lab.exists('esxi-host', `${DS}/${image}`)).toBe(false);
  });

  it('the cleanups send nothing without their fact, and remove exactly the set the virtual size makes', async () => {
    const remote = watched();
    const x = capture('vm-linux-3', remote);
    await x.run('remove_repository_copy', {});
    await x.run('remove_clone', {});
    expect(remote.sent).toEqual([]);
    const target = `${REPO}/big.vmdk`;
    await x.run('remove_repository_copy', { target, virtualBytes: 3 * 2047 * 1024 ** 2 + 1 });
    const files = [
      'big-s001.vmdk',
      'big-s002.vmdk',
      'big-s003.vmdk',
      'big-s004.vmdk',
      'big.vmdk',
      'big.vmx',
      'big.vmdk.sha256',
    ];
    expect(remote.sent[0]).toEqual({
      host: 'repo-host',
      line: `rm -f -- ${files.map((f) => `${REPO}/${f}`).join(' ')}`,
      timeoutMs: expect.any(Number),
    });
    // Then each file's transport leftovers, by name.
    expect(remote.sent.slice(1).map((s) => s.host)).toEqual(Array(files.length).fill('repo-host'));
    for (const [i, f] of files.entries()) expect(remote.sent[i + 1]?.line).toContain(f);
    remote.sent.length = 0;
    await x.run('remove_clone', { clone: `${DS}/img/img.vmdk` });
    expect(remote.sent.map((s) => s.line)).toEqual([`rm -rf ${DS}/img`]);
  });
});
