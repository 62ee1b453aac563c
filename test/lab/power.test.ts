/**
 * The world model through the hosts: power transitions that take time, boot ids that change at each boot,
 * guest sessions that drop as the computer goes down and are refused until it is back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { bootIdCommand, endStateCommand, parseBootId } from '../../src/drivers/os-commands.js';
import { libvirt, parseDomstate } from '../../src/provisioners/libvirt/commands.js';
import { parseGetallvms, parsePowerState, vmware } from '../../src/provisioners/vmware/commands.js';
import { parseNodestat, parseRpowerStat, xcat } from '../../src/provisioners/xcat/commands.js';
import { isSshError } from '../../src/ssh/index.js';
import { type LabHarness, openLab } from './helpers.js';

let h: LabHarness;
beforeAll(async () => {
  // Long enough that a command sent right after a transition started still sees it in progress.
  h = await openLab({ powerDelayMs: 200, sysprepMs: 60 });
});
afterAll(async () => {
  await h?.close();
});

async function bootId(guest: string, os: 'linux' | 'windows'): Promise<string | undefined> {
  return parseBootId((await h.exec(guest, bootIdCommand(os))).stdout);
}

/** A probe that gives up fast, for a guest that is not there. */
async function unreachable(guest: string): Promise<boolean> {
  const quick = { ...h.host(guest), name: `${guest}-probe`, connectDeadlineMs: 150 };
  const err = await h.pool.exec(quick, ['true'], { timeoutMs: 2000 }).catch((e: unknown) => e);
  return isSshError(err, 'SSH_UNREACHABLE');
}

describe('Linux guest', () => {
  it('shutdown -h now drops the session, powers off after the delay, and refuses SSH until powered on', async () => {
    const before = await bootId('lv-linux-1', 'linux');
    expect(before).toBe(h.lab.computer('lv-linux-1').bootId);
    const r = await h.exec('lv-linux-1', endStateCommand('linux', 'shutdown'), { expectDisconnect: true });
    expect(r.disconnected).toBe(true);
    expect(h.lab.computer('lv-linux-1').power).toBe('goingDown');
    expect(await unreachable('lv-linux-1')).toBe(true);
    await h.lab.waitForPower('lv-linux-1', 'off');
    const libvirtState = parseDomstate((await h.exec('libvirt-host', libvirt.domstate('lv-linux-1'))).stdout);
    expect(libvirtState).toEqual({ state: 'shut off', reason: 'shutdown' });
    expect(h.lab.computer('lv-linux-1').bootId).toBeUndefined();

    expect((await h.exec('libvirt-host', ['virsh', 'start', 'lv-linux-1'])).stdout).toBe(
      "Domain 'lv-linux-1' started\n\n",
    );
    expect(h.lab.computer('lv-linux-1').power).toBe('booting');
    await h.lab.waitForPower('lv-linux-1', 'on');
    const after = await bootId('lv-linux-1', 'linux');
    expect(after).toMatch(/^[0-9a-f-]{36}$/);
    expect(after).not.toBe(before);
    expect(h.lab.computer('lv-linux-1').boots).toBe(2);
  });

  it('shutdown -r now comes back with a new boot id', async () => {
    const before = await bootId('vm-linux-1', 'linux');
    const r = await h.exec('vm-linux-1', endStateCommand('linux', 'reboot'), { expectDisconnect: true });
    expect(r.disconnected).toBe(true);
    await h.lab.waitForPower('vm-linux-1', 'booting');
    await h.lab.waitForPower('vm-linux-1', 'on');
    const after = await bootId('vm-linux-1', 'linux');
    expect(after).not.toBe(before);
    // A reboot inside the guest is no power event for the hypervisor.
    expect(parsePowerState((await h.exec('esxi-host', vmware.powerState(1))).stdout)).toBe('on');
  });
});

describe('Windows guest', () => {
  it('shutdown.exe /r reboots with a new LastBootUpTime', async () => {
    const before = await bootId('lv-windows-1', 'windows');
    const r = await h.exec('lv-windows-1', endStateCommand('windows', 'reboot'), { expectDisconnect: true });
    expect(r.disconnected).toBe(true);
    await h.lab.waitForPower('lv-windows-1', 'on');
    const after = await bootId('lv-windows-1', 'windows');
    expect(after).toMatch(/^\d{14}\.\d{6}\+000$/);
    expect(after).not.toBe(before);
  });

  it('sysprep /quit returns and stays on; /shutdown works, then drops the session and powers off', async () => {
    const quit = await h.exec('vm-windows-1', endStateCommand('windows', 'sysprep', 'on'));
    expect(quit.code).toBe(0);
    expect(h.lab.computer('vm-windows-1').power).toBe('on');
    const started = Date.now();
    const r = await h.exec('vm-windows-1', endStateCommand('windows', 'sysprep', 'off'), {
      expectDisconnect: true,
    });
    expect(r.disconnected).toBe(true);
    expect(Date.now() - started).toBeGreaterThanOrEqual(55);
    await h.lab.waitForPower('vm-windows-1', 'off');
    expect(parsePowerState((await h.exec('esxi-host', vmware.powerState(2))).stdout)).toBe('off');
  });

  it('shutdown.exe /s powers a Windows guest off', async () => {
    h.lab.powerOn('xc-windows-1');
    await h.lab.waitForPower('xc-windows-1', 'on');
    const r = await h.exec('xc-windows-1', endStateCommand('windows', 'shutdown'), {
      expectDisconnect: true,
    });
    expect(r.disconnected).toBe(true);
    await h.lab.waitForPower('xc-windows-1', 'off');
  });
});

describe('libvirt host', () => {
  it('virsh shutdown is graceful and virsh event reports it; destroy is immediate', async () => {
    const domain = 'lv-windows-1';
    const watching = h.exec('libvirt-host', libvirt.awaitLifecycle(domain, 5));
    await new Promise((r) => setTimeout(r, 20));
    const down = await h.exec('libvirt-host', libvirt.shutdown(domain));
    expect(down.stdout).toBe(`Domain '${domain}' is being shutdown\n\n`);
    // The guest takes its time going down; the domain runs until it is done.
    expect(h.lab.computer(domain).power).toBe('goingDown');
    expect(parseDomstate((await h.exec('libvirt-host', libvirt.domstate(domain))).stdout).state).toBe(
      'running',
    );
    const event = await watching;
    expect(event.stdout).toBe(
      `event 'lifecycle' for domain '${domain}': Stopped Shutdown\nevents received: 1\n\n`,
    );
    expect(parseDomstate((await h.exec('libvirt-host', libvirt.domstate(domain))).stdout)).toEqual({
      state: 'shut off',
      reason: 'shutdown',
    });
    const again = await h.exec('libvirt-host', libvirt.shutdown(domain));
    expect(again.code).toBe(1);
    expect(again.stderr).toContain('domain is not running');

    await h.exec('libvirt-host', ['virsh', 'start', domain]);
    const destroyed = await h.exec('libvirt-host', libvirt.destroy(domain));
    expect(destroyed.stdout).toBe(`Domain '${domain}' destroyed\n\n`);
    expect(parseDomstate((await h.exec('libvirt-host', libvirt.domstate(domain))).stdout)).toEqual({
      state: 'shut off',
      reason: 'destroyed',
    });
    expect((await h.exec('libvirt-host', libvirt.destroy(domain))).code).toBe(1);
  });

  it('virsh event times out with no event (exit 1, as virsh 9 does)', async () => {
    const started = Date.now();
    const r = await h.exec('libvirt-host', libvirt.awaitLifecycle('lv-linux-1', 1));
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('event loop timed out\nevents received: 0\n\n');
    expect(Date.now() - started).toBeGreaterThanOrEqual(990);
  });
});

describe('ESXi host', () => {
  it('power.shutdown, power.on, power.off, unregister', async () => {
    h.lab.powerOn('vm-windows-1');
    await h.lab.waitForPower('vm-windows-1', 'on');
    expect((await h.exec('esxi-host', vmware.shutdown(2))).code).toBe(0);
    await h.lab.waitForPower('vm-windows-1', 'off');
    const refused = await h.exec('esxi-host', vmware.shutdown(2));
    expect(refused.code).toBe(1);
    expect(refused.stderr).toContain(
      'The attempted operation cannot be performed in the current state (Powered off).',
    );
    expect((await h.exec('esxi-host', vmware.powerOn(2))).stdout).toBe('Powering on VM:\n');
    // VMware Tools do not run before the guest has booted.
    const early = await h.exec('esxi-host', vmware.shutdown(2));
    expect(early.stderr).toContain('VMware Tools is not running');
    expect((await h.exec('esxi-host', vmware.unregister(2))).code).toBe(1);
    expect((await h.exec('esxi-host', vmware.powerOff(2))).code).toBe(0);
    expect(h.lab.computer('vm-windows-1').power).toBe('off');
    expect((await h.exec('esxi-host', vmware.unregister(2))).code).toBe(0);
    const vms = parseGetallvms((await h.exec('esxi-host', vmware.getallvms())).stdout);
    expect(vms.map((v) => v.vmid)).toEqual([1]);
  });
});

describe('xCAT management node', () => {
  it('rpower off is immediate, rpower on boots; nodestat follows', async () => {
    const node = 'xc-linux-1';
    const stat = async () => parseNodestat((await h.exec('xcat-mn', xcat.nodestat(node))).stdout, node);
    expect((await h.exec('xcat-mn', xcat.powerOff(node))).stdout).toBe(`${node}: off\n`);
    expect(parseRpowerStat((await h.exec('xcat-mn', xcat.powerStat(node))).stdout, node)).toBe('off');
    expect(await stat()).toBe('noping');
    await h.exec('xcat-mn', xcat.powerOn(node));
    expect(await stat()).toBe('booting');
    await h.lab.waitForPower(node, 'on');
    expect(await stat()).toBe('sshd');
    expect(parseRpowerStat((await h.exec('xcat-mn', xcat.powerStat(node))).stdout, node)).toBe('on');
    expect(h.lab.internalErrors).toEqual([]);
  });
});
