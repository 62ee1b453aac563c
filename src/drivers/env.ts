/**
 * What a driver's steps see of one capture: the computer's inventory entry, the hosts it involves, the
 * transport, and helpers that run a command within the step's deadline and abort signal.
 */
import { posix } from 'node:path';
import type { ComputerEntry } from '../inventory/schema.js';
import { copyLeftoversCommand, type ExecOptions, type ExecResult, type SshHost } from '../ssh/index.js';
import type { Remote, StepRun } from './contract.js';
import { driverError } from './errors.js';

export interface DriverEnv {
  remote: Remote;
  computerName: string;
  computer: ComputerEntry;
  /** The provisioner's host (libvirt host, ESXi, xCAT management node). */
  provisionerHost: SshHost;
  /** The computer's own OS. */
  guestHost: SshHost;
  repository: { host: SshHost; path: string };
  /** Interval of polling waits (power state, upload growth). */
  pollMs: number;
  /** Bytes moved by a copy step so far (`total` when known). */
  progress?: (step: string, p: CopyStepProgress) => void;
}

/** A copy step's progress: bytes of the file so far, bytes on the wire, rate, resumes after a drop. */
export interface CopyStepProgress {
  bytes: number;
  total?: number;
  bytesPerSecond: number;
  wireBytes?: number;
  resumes?: number;
}

/** Copy options of a step: its deadline, abort signal, and progress reported to the runner. */
export function copyOptions(env: DriverEnv, run: StepRun<{ step: string }>) {
  const step = run.input.step;
  return {
    signal: run.signal,
    timeoutMs: run.remainingMs(),
    step,
    onProgress: (p: {
      bytes: number;
      total: number | undefined;
      bytesPerSecond: number;
      wireBytes?: number;
      resumes?: number;
    }) =>
      env.progress?.(step, {
        bytes: p.bytes,
        bytesPerSecond: p.bytesPerSecond,
        ...(p.total === undefined ? {} : { total: p.total }),
        ...(p.wireBytes === undefined ? {} : { wireBytes: p.wireBytes }),
        ...(p.resumes === undefined ? {} : { resumes: p.resumes }),
      }),
  };
}

export type Exec = (
  host: SshHost,
  argv: readonly string[],
  options?: Omit<ExecOptions, 'signal' | 'timeoutMs'> & { timeoutMs?: number },
) => Promise<ExecResult>;

/** A command bound to the step: its deadline and signal apply unless a shorter timeout is asked. */
export function execFor(env: DriverEnv, run: StepRun<{ step: string }>): Exec {
  return (host, argv, options = {}) =>
    env.remote.exec(host, argv, {
      ...options,
      step: run.input.step,
      signal: run.signal,
      timeoutMs: Math.min(options.timeoutMs ?? Number.POSITIVE_INFINITY, run.remainingMs()),
    });
}

/** `test -e`: 0 present, 1 absent; anything else (2: test itself failed, a signal) is an error. */
export async function exists(exec: Exec, host: SshHost, path: string): Promise<boolean> {
  const r = await exec(host, ['test', '-e', path], { check: false });
  if (r.code === 0 || r.code === 1) return r.code === 0;
  throw driverError(
    'COMMAND_FAILED',
    `test -e ${path} on ${host.name} failed (status ${r.code}): ${r.stderr.trim()}`,
  );
}

/**
 * Makes files written on `host` by another program (an upload, a converter) durable: coreutils `sync`
 * fsyncs each file, then the folders that name them, before anything is recorded about them.
 */
export async function syncPaths(exec: Exec, host: SshHost, files: readonly string[]): Promise<void> {
  const folders = [...new Set(files.map((f) => posix.dirname(f)))];
  await exec(host, ['sync', '--', ...files, ...folders]);
}

export async function sha256Of(exec: Exec, host: SshHost, path: string): Promise<string> {
  const r = await exec(host, ['sha256sum', '--', path]);
  const m = /^([0-9a-f]{64})\s/.exec(r.stdout);
  if (!m) throw driverError('PARSE_FAILED', `sha256sum printed no digest for ${path}`);
  return m[1] as string;
}

export async function sizeOf(exec: Exec, host: SshHost, path: string): Promise<number> {
  const r = await exec(host, ['stat', '-c', '%s', '--', path]);
  const printed = r.stdout.trim();
  // Number('') is 0: an empty answer must not read as an empty file.
  const n = /^\d+$/.test(printed) ? Number(printed) : Number.NaN;
  if (!Number.isSafeInteger(n)) throw driverError('PARSE_FAILED', `stat printed no size for ${path}`);
  return n;
}

/**
 * Removes from `host` what earlier attempts at a copy to `target` may have left: the transport's
 * temporary files of that destination (a copy whose process was killed never removed its own) and the
 * `files` given (the target itself, a `.partial`). Run before a copy step copies, so that a re-run after a
 * crash starts clean, and by its cleanup step. The caller vouches that `target` is this capture's own:
 * its check step refused a target that existed before the capture.
 */
export async function removeCopyLeftovers(
  exec: Exec,
  host: SshHost,
  target: string,
  files: readonly string[] = [target],
): Promise<void> {
  if (files.length > 0) await exec(host, ['rm', '-f', '--', ...files]);
  await exec(host, copyLeftoversCommand(target));
}

/** `<repository>/<name>` after checking the result stays inside the repository. */
export function repositoryPath(env: DriverEnv, name: string): string {
  const path = posix.join(env.repository.path, name);
  if (!path.startsWith(`${posix.normalize(env.repository.path).replace(/\/$/, '')}/`))
    throw driverError('COMMAND_FAILED', `${name} would leave the repository ${env.repository.path}`);
  return path;
}

/** Hosts are the same when they reach the same SSH endpoint: then a copy stays on that host. */
export function sameHost(a: SshHost, b: SshHost): boolean {
  return a.host === b.host && (a.port ?? 22) === (b.port ?? 22);
}

type ProvisionerSettings = ComputerEntry['provisioner'];

/** The computer's provisioner settings, checked to be of the driver's kind. */
export function provisionerSettings<T extends ProvisionerSettings['type']>(
  env: DriverEnv,
  type: T,
): Extract<ProvisionerSettings, { type: T }> {
  const p = env.computer.provisioner;
  if (p.type !== type)
    throw driverError(
      'COMMAND_FAILED',
      `computer ${env.computerName} is provisioned by ${p.type}, not ${type}`,
    );
  return p as Extract<ProvisionerSettings, { type: T }>;
}
