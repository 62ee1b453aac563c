/**
 * The Linux end-state commands on a computer without `shutdown` (busybox, minimal systems): the step
 * falls back to `poweroff` / `reboot`; a computer that has `shutdown` never sees the fallback.
 */
import { describe, expect, it } from 'vitest';
import type { OsStepInput } from '../../machines/index.js';
import { osSteps } from '../../src/drivers/os.js';
import { silentLogger } from '../../src/log.js';
import { SshError, SshExitError } from '../../src/ssh/index.js';
import { execResult, fakeGuestEnv } from '../helpers/fake-guest.js';

function fakeGuest(has: (cmd: string) => boolean) {
  const ran: string[][] = [];
  const env = fakeGuestEnv(
    'linux',
    (argv) => {
      ran.push([...argv]);
      const found = has(argv[0] as string);
      return execResult(found ? null : 127, '', found ? '' : `sh: ${argv[0]}: not found\n`, found);
    },
    10,
  );
  return { steps: osSteps(env), ran };
}

function run(step: string) {
  const input = { step, os: 'linux', deadline: Date.now() + 5000 } as unknown as OsStepInput;
  return {
    input,
    signal: new AbortController().signal,
    remainingMs: () => 5000,
    log: silentLogger(),
    resumed: false,
  };
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

/** A guest whose boot-id probes answer from a script: an id, a failing command, or no connection. */
function scriptedGuest(script: ('id-a' | 'id-b' | 'fails' | 'gone')[]) {
  const seen: string[] = [];
  const env = fakeGuestEnv('linux', (argv) => {
    const next = script.shift() ?? 'gone';
    seen.push(next);
    if (next === 'gone') throw new SshError('SSH_UNREACHABLE', 'pc1 unreachable');
    if (next === 'fails')
      throw new SshExitError(
        'pc1',
        argv.join(' '),
        execResult(1, '', "cat: can't open '/proc/sys/kernel/random/boot_id': No such file or directory"),
      );
    return execResult(
      0,
      next === 'id-a'
        ? `${'a'.repeat(8)}-0000-0000-0000-000000000000\n`
        : `${'b'.repeat(8)}-0000-0000-0000-000000000000\n`,
    );
  });
  return { steps: osSteps(env), seen };
}

const ID_A = `${'a'.repeat(8)}-0000-0000-0000-000000000000`;
const ID_B = `${'b'.repeat(8)}-0000-0000-0000-000000000000`;

describe('boot-id probes while the computer changes state', () => {
  it('wait_gone: a probe command failing during shutdown (/proc unmounted) is a computer on its way down', async () => {
    const g = scriptedGuest(['id-a', 'fails', 'fails', 'gone']);
    await expect(g.steps.wait_gone?.(run('wait_gone'))).resolves.toEqual({});
    expect(g.seen).toEqual(['id-a', 'fails', 'fails', 'gone']);
  });

  it('wait_down: a failing probe is not taken for the new boot; wait_up waits past it for a new id', async () => {
    const g = scriptedGuest(['id-a', 'fails', 'gone', 'fails', 'id-a', 'id-b']);
    const input = { ...run('wait_down').input, bootId: ID_A };
    await g.steps.wait_down?.({ ...run('wait_down'), input });
    expect(g.seen).toEqual(['id-a', 'fails', 'gone']);
    const up = await g.steps.wait_up?.({ ...run('wait_up'), input: { ...input, step: 'wait_up' } });
    expect(up).toEqual({ bootId: ID_B });
  });

  it('ensure_responding and confirm_on still fail on a computer that should be up but cannot read its boot id', async () => {
    await expect(
      scriptedGuest(['fails']).steps.ensure_responding?.(run('ensure_responding')),
    ).rejects.toThrow(/boot_id/);
    await expect(scriptedGuest(['fails']).steps.confirm_on?.(run('confirm_on'))).rejects.toThrow(/boot_id/);
  });
});
