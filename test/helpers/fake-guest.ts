/**
 * A driver environment whose guest answers every command from a function, with no SSH: for the OS
 * steps' decisions (fallbacks, boot-id probes, re-runs) without hosts.
 */
import type { DriverEnv } from '../../src/drivers/env.js';
import type { ExecResult } from '../../src/ssh/index.js';

export function fakeGuestEnv(
  os: 'linux' | 'windows',
  exec: (argv: readonly string[]) => Promise<ExecResult> | ExecResult,
  pollMs = 1,
): DriverEnv {
  return {
    computer: { os, reservationUsers: [] },
    computerName: 'pc1',
    guestHost: {
      name: 'pc1',
      host: '127.0.0.1',
      port: 22,
      username: os === 'windows' ? 'Administrator' : 'root',
    },
    pollMs,
    remote: {
      exec: async (_host: unknown, argv: readonly string[]) => exec(argv),
      copy: () => Promise.reject(new Error('no copies here')),
    },
  } as unknown as DriverEnv;
}

/** What a command on the fake guest returns. */
export function execResult(code: number | null, stdout = '', stderr = '', disconnected = false): ExecResult {
  return { code, signal: null, stdout, stderr, durationMs: 1, disconnected };
}
