/**
 * The Linux end-state commands on a computer without `shutdown` (busybox, minimal systems): the step
 * falls back to `poweroff` / `reboot`; a computer that has `shutdown` never sees the fallback.
 */
import { describe, expect, it } from 'vitest';
import type { OsStepInput } from '../../machines/index.js';
import type { DriverEnv } from '../../src/drivers/env.js';
import { osSteps } from '../../src/drivers/os.js';
import { silentLogger } from '../../src/log.js';
import type { ExecResult } from '../../src/ssh/index.js';

function fakeGuest(has: (cmd: string) => boolean) {
  const ran: string[][] = [];
  const env = {
    computer: { os: 'linux', reservationUsers: [] },
    computerName: 'pc1',
    guestHost: { name: 'pc1', host: '127.0.0.1', port: 22, username: 'root' },
    pollMs: 10,
    remote: {
      async exec(_host: unknown, argv: readonly string[]): Promise<ExecResult> {
        ran.push([...argv]);
        const found = has(argv[0] as string);
        return {
          code: found ? null : 127,
          signal: null,
          stdout: '',
          stderr: found ? '' : `sh: ${argv[0]}: not found\n`,
          durationMs: 1,
          disconnected: found,
        };
      },
      copy: () => Promise.reject(new Error('no copies here')),
    },
  } as unknown as DriverEnv;
  return { steps: osSteps(env), ran };
}

function run(step: string) {
  const input = { step, os: 'linux', deadline: Date.now() + 5000 } as unknown as OsStepInput;
  return { input, signal: new AbortController().signal, remainingMs: () => 5000, log: silentLogger() };
}

describe('Linux end state without shutdown', () => {
  it('powers off with poweroff and reboots with reboot when shutdown is not found', async () => {
    const g = fakeGuest((cmd) => cmd !== 'shutdown');
    await g.steps.shutdown?.(run('shutdown'));
    await g.steps.reboot?.(run('reboot'));
    expect(g.ran).toEqual([['shutdown', '-h', 'now'], ['poweroff'], ['shutdown', '-r', 'now'], ['reboot']]);
  });

  it('uses shutdown where it exists', async () => {
    const g = fakeGuest(() => true);
    await g.steps.shutdown?.(run('shutdown'));
    expect(g.ran).toEqual([['shutdown', '-h', 'now']]);
  });

  it('fails naming the command when neither exists', async () => {
    const g = fakeGuest(() => false);
    await expect(g.steps.shutdown?.(run('shutdown'))).rejects.toThrow(/poweroff exited with status 127/);
  });
});
