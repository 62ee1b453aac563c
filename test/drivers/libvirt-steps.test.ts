/**
 * libvirt's step implementations one by one against the lab, on what a user would see: the commands a
 * step sends (none it does not need), what it leaves on each host, and the error a broken copy gets.
 * Two labs: the repository on its own host (the copy is staged, then streamed) and on the libvirt host
 * itself (the copy is converted in place and moved).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Facts } from '../../machines/index.js';
import type { Remote } from '../../src/drivers/contract.js';
import type { DriverEnv } from '../../src/drivers/env.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { silentLogger } from '../../src/log.js';
import { libvirtSteps } from '../../src/provisioners/libvirt/steps.js';
import { SshPool } from '../../src/ssh/index.js';
import { captureOf, driverEnv, filesWith, interceptRemote, refusal, stepRun } from './rerun-helpers.js';

let separate: Lab;
let local: Lab;
let pool: SshPool;

beforeAll(async () => {
  [separate, local] = await Promise.all([
    startLab({ powerDelayMs: 20, computers: { 'libvirt-linux': 4 } }),
    startLab({ powerDelayMs: 20, repositories: { libvirt: 'kvm-local' }, computers: { 'libvirt-linux': 2 } }),
  ]);
  pool = new SshPool({ logger: silentLogger() });
});

afterAll(async () => {
  await pool?.close();
  await Promise.all([separate?.stop(), local?.stop()]);
});

/** A transport that counts streamed copies and keeps each command's options. */
function watched(): Remote & { copies: number; options: { argv: readonly string[]; timeoutMs?: number }[] } {
  const w = {
    copies: 0,
    options: [] as { argv: readonly string[]; timeoutMs?: number }[],
    exec: ((host, argv, options) => {
      w.options.push({ argv, ...(options?.timeoutMs === undefined ? {} : { timeoutMs: options.timeoutMs }) });
      return pool.exec(host, argv, options);
    }) as Remote['exec'],
    copy: ((from, to, options) => {
      w.copies += 1;
      return pool.copy(from, to, options);
    }) as Remote['copy'],
  };
  return w;
}

/** A capture of `computer` with its domain off, inspected: what its later steps work with. */
async function inspected(lab: Lab, computer: string, remote: Remote = pool) {
  if (lab.computer(computer).power !== 'off') lab.powerOff(computer);
  await lab.waitForPower(computer, 'off');
  const env: DriverEnv = { ...driverEnv(lab, remote, computer), pollMs: 20 };
  const steps = libvirtSteps(env);
  const cap = captureOf(lab, computer, 'off');
  const out = await steps.inspect_domain?.(stepRun(cap.input('inspect_domain')));
  const facts = (out?.facts ?? {}) as Facts;
  const run = (step: string, f: Facts = facts) => {
    const fn = steps[step];
    if (!fn) throw new Error(`no step ${step}`);
    return fn(stepRun(cap.input(step, f)));
  };
  return { env, cap, facts, run };
}

/** The lines `lab` received while `fn` ran, on `host`, without the transport's prefix. */
async function sentDuring(lab: Lab, host: string, fn: () => Promise<unknown>): Promise<string[]> {
  const from = lab.commandLog.length;
  await fn();
  return lab.commandLog
    .slice(from)
    .filter((e) => e.host === host && e.argv)
    .map((e) => (e.argv as string[]).join(' '));
}

describe('libvirt steps', () => {
  it('sends no shutdown or destroy to a domain already off', async () => {
    const { run } = await inspected(separate, 'lv-linux-1');
    const sent = await sentDuring(separate, 'libvirt-host', async () => {
      await run('request_power_off');
      await run('force_power_off');
    });
    expect(sent.filter((l) => /^virsh (shutdown|destroy)/.test(l))).toEqual([]);
    expect(sent.filter((l) => l.startsWith('virsh domstate'))).toHaveLength(2);
  });

  it('a shutdown that fails because the domain went off meanwhile did what was asked; on a running domain it fails', async () => {
    const computer = 'lv-linux-3';
    const shutdownFails = (stderr: string) =>
      separate.faults.add({
        kind: 'failCommand',
        host: 'libvirt-host',
        match: ['virsh', 'shutdown', computer],
        exitCode: 1,
        stderr,
      });
    // The domain goes off between the step's state read and its shutdown (on its own, or an earlier attempt's).
    const goesOff = interceptRemote(pool, ['virsh', 'shutdown'], async () => {
      separate.powerOff(computer);
      await separate.waitForPower(computer, 'off');
    });
    const off = await inspected(separate, computer, goesOff);
    separate.powerOn(computer);
    await separate.waitForPower(computer, 'on');
    shutdownFails(
      'error: Failed to shutdown domain lv-linux-3\nerror: Requested operation is not valid: domain is not running\n',
    );
    expect(await off.run('request_power_off')).toEqual({});
    expect(separate.computer(computer).power).toBe('off');

    const running = await inspected(separate, computer);
    separate.powerOn(computer);
    await separate.waitForPower(computer, 'on');
    shutdownFails(
      'error: Failed to shutdown domain lv-linux-3\nerror: internal error: cannot connect to the monitor\n',
    );
    const err = await refusal(running.run('request_power_off'));
    expect(err.code).toBe('SSH_EXIT_NONZERO');
    expect(err.message).toContain('cannot connect to the monitor');
    expect(separate.computer(computer).power).toBe('on');
  });

  it('verify_image passes the copy as written and refuses one that changed in the repository', async () => {
    const c = await inspected(separate, 'lv-linux-1');
    const { artifact } = await c.run('copy_image');
    if (!artifact) throw new Error('copy_image recorded no copy');
    const verify = () =>
      libvirtSteps(c.env).verify_image?.(stepRun({ ...c.cap.input('verify_image', c.facts), artifact }));
    expect(await verify()).toEqual({});
    separate.faults.add({ kind: 'corrupt', at: 'file', host: 'repo-host', path: artifact.path });
    expect(await refusal(verify())).toMatchObject({
      code: 'VERIFY_MISMATCH',
      details: { path: artifact.path, size: artifact.sizeBytes, expectedSha256: artifact.sha256 },
    });
    await c.run('remove_copy');
  });

  it('refuses an existing target by name, and leaves it as it was', async () => {
    const first = await inspected(separate, 'lv-linux-2');
    await first.run('copy_image');
    const target = String(first.facts.target);
    const again = first.env;
    const steps = libvirtSteps(again);
    const err = await refusal(
      Promise.resolve(steps.inspect_domain?.(stepRun(first.cap.input('inspect_domain')))),
    );
    expect(err).toMatchObject({
      code: 'TARGET_EXISTS',
      message: `the repository already holds ${target}; nothing is overwritten`,
      details: { target },
    });
    await first.run('remove_copy');
  });

  it('a qcow2 copy that qemu-img check finds broken fails VERIFY_MISMATCH; leaked clusters (exit 3) pass', async () => {
    const broken = await inspected(separate, 'lv-linux-3');
    separate.faults.add({
      kind: 'failCommand',
      host: 'libvirt-host',
      match: ['qemu-img', 'check'],
      exitCode: 2,
      stderr: '2 errors were found on the image.\n',
    });
    expect(await refusal(broken.run('copy_image'))).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: 'qemu-img check found errors in the copy: 2 errors were found on the image.',
    });
    await broken.run('remove_copy');
    separate.faults.add({
      kind: 'failCommand',
      host: 'libvirt-host',
      match: ['qemu-img', 'check'],
      exitCode: 3,
      stderr: '1 leaked clusters were found on the image.\n',
    });
    const leaked = await broken.run('copy_image');
    expect(leaked.artifact?.path).toBe(broken.facts.target);
    await broken.run('remove_copy');
  });

  it('streams to a separate repository and leaves no staging file; converts in place on the same host', async () => {
    const remote = watched();
    const far = await inspected(separate, 'lv-linux-4', remote);
    const dir = String(far.facts.disk).replace(/\/[^/]+$/, '');
    const out = await far.run('copy_image');
    expect(remote.copies).toBe(1);
    expect(out.artifact?.path).toBe(far.facts.target);
    expect(await filesWith(separate, 'libvirt-host', dir, '.vcl-capture-')).toEqual([]);
    await far.run('remove_copy');

    const near = watched();
    const here = await inspected(local, 'lv-linux-1', near);
    const copied = await here.run('copy_image');
    expect(near.copies).toBe(0);
    expect(copied.artifact?.path).toBe(here.facts.target);
    await here.run('remove_copy');
  });

  it('remove_copy removes only what a copy to its target may leave, and nothing without a target', async () => {
    const far = await inspected(separate, 'lv-linux-1');
    const nothing = await sentDuring(separate, 'libvirt-host', () => far.run('remove_copy', {}));
    const nothingRepo = await sentDuring(separate, 'repo-host', () => far.run('remove_copy', {}));
    expect([...nothing, ...nothingRepo]).toEqual([]);
    const target = String(far.facts.target);
    // Without the disk (a capture that stopped before learning it) the staging file is not known.
    const noDisk = await sentDuring(separate, 'libvirt-host', () => far.run('remove_copy', { target }));
    expect(noDisk).toEqual([]);
    const withDisk = await sentDuring(separate, 'libvirt-host', () => far.run('remove_copy'));
    expect(withDisk).toEqual([expect.stringMatching(/^rm -f -- \/.*\/\.vcl-capture-[^/]+\.qcow2$/)]);

    const here = await inspected(local, 'lv-linux-2');
    const sameHost = await sentDuring(local, 'libvirt-host', () => here.run('remove_copy'));
    expect(sameHost.filter((l) => l.includes('.vcl-capture-'))).toEqual([]);
    expect(sameHost).toContain(`rm -f -- ${here.facts.target} ${here.facts.target}.partial`);
  });

  it('bounds each lifecycle event wait a little beyond virsh’s own timeout, and keeps waiting on events after a failed one', async () => {
    const remote = watched();
    const c = await inspected(separate, 'lv-linux-2', remote);
    separate.powerOn('lv-linux-2');
    await separate.waitForPower('lv-linux-2', 'on');
    separate.faults.add({
      kind: 'failCommand',
      host: 'libvirt-host',
      match: ['virsh', 'event'],
      exitCode: 1,
      stderr: 'error: Disconnected from qemu:///system due to end of file\n',
    });
    await c.run('request_power_off');
    await c.run('wait_power_off');
    const eventsOf = (from: number) =>
      remote.options.slice(from).filter((o) => o.argv[0] === 'virsh' && o.argv[1] === 'event');
    expect(eventsOf(0)).toHaveLength(1);
    // That failure (not "unknown command") does not make the host a polled one: the next wait uses events.
    separate.powerOn('lv-linux-2');
    await separate.waitForPower('lv-linux-2', 'on');
    const from = remote.options.length;
    await c.run('request_power_off');
    await c.run('wait_power_off');
    expect(eventsOf(from).length).toBeGreaterThanOrEqual(1);
    for (const e of eventsOf(0)) {
      const seconds = Number(e.argv[e.argv.indexOf('--timeout') + 1]);
      expect(seconds).toBeGreaterThanOrEqual(1);
      expect(e.timeoutMs).toBeGreaterThan(seconds * 1000);
      expect(e.timeoutMs).toBeLessThanOrEqual(seconds * 1000 + 10_000);
    }
    expect(separate.computer('lv-linux-2').power).toBe('off');
  });
});
