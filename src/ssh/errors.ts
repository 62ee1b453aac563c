import { VclError } from '../errors.js';
import type { ExecResult } from './types.js';

/**
 * Every way an SSH operation can fail, as a machine-readable code:
 * - `SSH_EXIT_NONZERO`, `SSH_EXIT_SIGNAL`: the command ran and failed (`SshExitError`, carries the result).
 * - `SSH_TIMEOUT`, `SSH_ABORTED`, `SSH_OUTPUT_LIMIT`: we stopped the command; the remote process group was
 *   signalled (`details.remoteKilled` says whether that was confirmed).
 * - `SSH_DISCONNECTED`: the session or connection closed before an exit status (a reboot, a crashed sshd, a
 *   dead keep-alive). The next command reconnects.
 * - `SSH_UNREACHABLE`: no connection within the host's `connectDeadlineMs` (refused, timed out, reset).
 * - `SSH_AUTH_FAILED`, `SSH_HOSTKEY_UNKNOWN`, `SSH_HOSTKEY_MISMATCH`, `SSH_HANDSHAKE_FAILED`,
 *   `SSH_CONFIG_INVALID`: problems retrying cannot fix; they fail at once.
 * - `SSH_CHANNEL_FAILED`: the server refused to open a channel.
 * - `SSH_POOL_CLOSED`: the pool was closed.
 * - `COPY_FAILED`, `COPY_SIZE_MISMATCH`, `COPY_HASH_MISMATCH`: a copy did not complete; nothing was left
 *   under the destination name.
 */
export type SshErrorCode =
  | 'SSH_EXIT_NONZERO'
  | 'SSH_EXIT_SIGNAL'
  | 'SSH_TIMEOUT'
  | 'SSH_ABORTED'
  | 'SSH_OUTPUT_LIMIT'
  | 'SSH_DISCONNECTED'
  | 'SSH_UNREACHABLE'
  | 'SSH_AUTH_FAILED'
  | 'SSH_HOSTKEY_UNKNOWN'
  | 'SSH_HOSTKEY_MISMATCH'
  | 'SSH_HANDSHAKE_FAILED'
  | 'SSH_CONFIG_INVALID'
  | 'SSH_CHANNEL_FAILED'
  | 'SSH_POOL_CLOSED'
  | 'COPY_FAILED'
  | 'COPY_SIZE_MISMATCH'
  | 'COPY_HASH_MISMATCH';

export class SshError extends VclError {
  declare readonly code: SshErrorCode;

  constructor(
    code: SshErrorCode,
    message: string,
    options: { step?: string; cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(code, message, options);
  }
}

/** A command that ran to completion but failed: non-zero exit status or death by a signal. */
export class SshExitError extends SshError {
  readonly result: ExecResult;

  constructor(host: string, command: string, result: ExecResult, step?: string) {
    const how =
      result.signal !== null ? `was killed by ${result.signal}` : `exited with status ${result.code}`;
    const stderr = result.stderr.trim();
    const tail = stderr.length > 2000 ? `...${stderr.slice(-2000)}` : stderr;
    super(
      result.signal !== null ? 'SSH_EXIT_SIGNAL' : 'SSH_EXIT_NONZERO',
      `${command} on ${host} ${how}${tail === '' ? '' : `: ${tail}`}`,
      {
        ...(step === undefined ? {} : { step }),
        details: {
          host,
          command,
          exitCode: result.code,
          signal: result.signal,
          stderr: result.stderr.slice(-8192),
          durationMs: result.durationMs,
        },
      },
    );
    this.result = result;
  }
}

/** Whether `err` is an `SshError`, optionally with one of the given codes. */
export function isSshError(err: unknown, ...codes: SshErrorCode[]): err is SshError {
  return err instanceof SshError && (codes.length === 0 || codes.includes(err.code));
}
