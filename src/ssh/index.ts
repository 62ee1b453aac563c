/**
 * SSH transport: one pooled connection per host, commands with deadlines, verified host keys, and copies
 * that compute sha256 in the same pass. Everything a driver needs is exported here; the other modules of
 * this folder are internal.
 *
 * ```ts
 * const pool = new SshPool({ logger });
 * const { stdout } = await pool.exec(host, ['uname', '-r'], { timeoutMs: 10_000 });
 * await pool.exec(host, ['reboot'], { expectDisconnect: true });
 * const { sha256 } = await pool.copy({ host, path: '/var/lib/img.qcow2' }, { path: '/store/img.qcow2' });
 * await pool.close();
 * ```
 */
export { copyLeftoversCommand, durableMoveCommand } from './copy.js';
export { isSshError, SshError, type SshErrorCode, SshExitError } from './errors.js';
export { fingerprintSha256 } from './hostkeys.js';
export {
  isRemoteTag,
  LEFTOVER_SWEEP_SCRIPT,
  leftoverSweep,
  newRemoteTag,
  type SweepOutcome,
  sweepOutcome,
  TAG_VARIABLE,
} from './leftovers.js';
export { SshPool, type SshPoolOptions } from './pool.js';
export type { RemoteProcess } from './process.js';
export { shellQuote, toCommandLine } from './quote.js';
export type {
  CopyEndpoint,
  CopyOptions,
  CopyProgress,
  CopyResult,
  ExecOptions,
  ExecResult,
  SpawnOptions,
  SshHost,
  SshHostKeyPolicy,
} from './types.js';
