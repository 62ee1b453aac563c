/**
 * libvirt power waits ride the domain's lifecycle events (`virsh event`) and read its state after each:
 * a shutdown of any length costs a handful of commands instead of one `virsh domstate` per poll. A virsh
 * without `event` is polled. Against the lab over real SSH.
 */
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Remote } from '../../src/drivers/contract.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { commandText } from '../../src/lab/words.js';
import { silentLogger } from '../../src/log.js';
import { eventWaitSeconds, libvirtSteps } from '../../src/provisioners/libvirt/steps.js';
import { SshPool } from '../../src/ssh/index.js';
import { captureOf, driverEnv, stepRun } from './rerun-helpers.js';

/** A graceful shutdown that takes this long: 30 polls of POLL_MS. */
const POWER_DELAY_MS = 1500;
const POLL_MS = 50;

let lab: Lab;
let pool: SshPool;

beforeAll(async () => {
  lab = await startLab({ powerDelayMs: POWER_DELAY_MS, computers: { 'libvirt-linux': 4 } });
  pool = new SshPool({ logger: silentLogger() });
});

afterAll(async () => {
  await pool?.close();
  await lab?.stop();
});

/** The virsh commands `fn` sent to the libvirt host, as argv-ish lines. */
async function virshDuring(fn: () => Promise<unknown> | undefined): Promise<string[]> {
  const from = lab.commandLog.length;
  await fn();
  return lab.commandLog
    .slice(from)
    .filter((e) => e.host === 'libvirt-host')
    .map((e) => commandText(e.line));
}

async function shutDown(computer: string, pool: SshPool): Promise<string[]> {
  const env = driverEnv(lab, pool, computer, POLL_MS);
  const steps = libvirtSteps(env);
  const cap = captureOf(lab, computer, 'off');
  const { facts } = (await steps.inspect_domain?.(stepRun(cap.input('inspect_domain')))) ?? {};
  await steps.request_power_off?.(stepRun(cap.input('request_power_off', facts)));
  expect(lab.computer(computer).power).not.toBe('off');
  const sent = await virshDuring(() => steps.wait_power_off?.(stepRun(cap.input('wait_power_off', facts))));
  // That the event ended the wait (not a timeout, not polling) is asserted on the commands sent: a time
  // bound could not tell them apart on a loaded machine.
  expect(lab.computer(computer).power).toBe('off');
  return sent;
}

describe('libvirt wait_power_off', () => {
  it('waits on the lifecycle event: a few commands for a 1.5 s shutdown where polling sends ~30', async () => {
    const sent = await shutDown('lv-linux-1', pool);
    const events = sent.filter((l) => l.startsWith('virsh event'));
    const domstates = sent.filter((l) => l.startsWith('virsh domstate'));
    expect(events.length).toBeGreaterThanOrEqual(1);
    expect(events[0]).toBe('virsh event --domain lv-linux-1 --event lifecycle --timeout 1');
    // The first read, one after each event (the lab's shutdown emits one event), and a spare: not ~30.
    expect(domstates.length).toBeLessThanOrEqual(events.length + 1);
    expect(sent.length).toBeLessThanOrEqual(6);
  });

  it('polls virsh domstate on a host whose virsh has no event command, and asks it once', async () => {
    const noEvents = lab.faults.add({
      kind: 'failCommand',
      host: 'libvirt-host',
      match: ['virsh', 'event'],
      exitCode: 1,
      stderr: "error: unknown command: 'event'\n",
      times: Number.POSITIVE_INFINITY,
    });
    try {
      const sent = await shutDown('lv-linux-2', pool);
      expect(sent.filter((l) => l.startsWith('virsh event'))).toHaveLength(1);
      // Polled every POLL_MS through a 1.5 s shutdown.
      expect(sent.filter((l) => l.startsWith('virsh domstate')).length).toBeGreaterThan(10);
    } finally {
      lab.faults.clear(noEvents);
    }
  });

  it('ends when the step is aborted at its deadline (the runner reports TIMEOUT), the event wait in flight included', async () => {
    const computer = 'lv-linux-3';
    const stuck = lab.faults.add({ kind: 'neverPowersOff', computer, mode: 'ignore' });
    try {
      const env = driverEnv(lab, pool, computer, POLL_MS);
      const steps = libvirtSteps(env);
      const cap = captureOf(lab, computer, 'off');
      const { facts } = (await steps.inspect_domain?.(stepRun(cap.input('inspect_domain')))) ?? {};
      await steps.request_power_off?.(stepRun(cap.input('request_power_off', facts)));
      const started = Date.now();
      const logged: { level: number; msg: string }[] = [];
      const log = pino({ level: 'debug' }, { write: (line: string) => logged.push(JSON.parse(line)) });
      const sent = await virshDuring(() =>
        expect(
          steps.wait_power_off?.({
            ...stepRun(cap.input('wait_power_off', facts), { timeoutMs: 2500 }),
            log,
          }),
        ).rejects.toMatchObject({ code: 'SSH_ABORTED' }),
      );
      // The abort ends the event wait in flight (1 s each here) instead of letting it run out; with room
      // for a loaded machine.
      expect(Date.now() - started).toBeLessThan(2500 + 2000);
      expect(lab.computer(computer).power).toBe('on');
      // Event waits that time out (virsh exits 1, "event loop timed out") follow each other: no warning.
      expect(sent.filter((l) => l.startsWith('virsh event')).length).toBeGreaterThanOrEqual(2);
      expect(sent.filter((l) => l.startsWith('virsh domstate')).length).toBeLessThanOrEqual(4);
      expect(logged.filter((l) => l.level >= 40)).toEqual([]);
    } finally {
      lab.faults.clear(stuck);
    }
  });

  it("gives each event command more time than virsh's own wait, so that virsh ends it, not the transport", async () => {
    const computer = 'lv-linux-4';
    const events: { argv: readonly string[]; timeoutMs: number | undefined }[] = [];
    const remote: Remote = {
      exec: (host, argv, options) => {
        if (argv[0] === 'virsh' && argv[1] === 'event') events.push({ argv, timeoutMs: options?.timeoutMs });
        return pool.exec(host, argv, options);
      },
      copy: (from, to, options) => pool.copy(from, to, options),
    };
    // Polls of a second: virsh waits 10 s for an event, the shutdown takes 1.5 s.
    const env = driverEnv(lab, remote, computer, 1000);
    const steps = libvirtSteps(env);
    const cap = captureOf(lab, computer, 'off');
    const { facts } = (await steps.inspect_domain?.(stepRun(cap.input('inspect_domain')))) ?? {};
    await steps.request_power_off?.(stepRun(cap.input('request_power_off', facts)));
    const logged: { level: number; msg: string }[] = [];
    const log = pino({ level: 'debug' }, { write: (line: string) => logged.push(JSON.parse(line)) });
    await steps.wait_power_off?.({
      ...stepRun(cap.input('wait_power_off', facts), { timeoutMs: 60_000 }),
      log,
    });
    expect(lab.computer(computer).power).toBe('off');
    expect(events.length).toBeGreaterThanOrEqual(1);
    for (const e of events) {
      expect(e.argv.slice(-2)).toEqual(['--timeout', '10']);
      expect(e.timeoutMs).toBeGreaterThan(10_000);
      expect(e.timeoutMs).toBeLessThanOrEqual(20_000);
    }
    // The event that ended the wait is no failure: nothing warned.
    expect(logged.filter((l) => l.level >= 40)).toEqual([]);
  });

  it('bounds each event wait: whole seconds, ten polls, within the deadline', () => {
    expect(eventWaitSeconds(100, 60_000)).toBe(1);
    expect(eventWaitSeconds(2000, 600_000)).toBe(20);
    expect(eventWaitSeconds(10_000, 600_000)).toBe(60);
    expect(eventWaitSeconds(2000, 7_500)).toBe(7);
    expect(eventWaitSeconds(2000, 300)).toBe(1);
  });
});
