/**
 * The preflight's checks (issue 19, part 5): each host on a capture's path answers with a verified host
 * key and has the tools the path needs; the file systems the copy writes to have room for it plus the
 * margin. The provisioners' check steps run them before anything touches the computer, stopping at the
 * first failure (its typed error fails the capture, which hands the computer back untouched);
 * `vcl-capture preflight` runs the same functions and collects every result.
 */

import { isVclError } from '../errors.js';
import { SshError } from '../ssh/errors.js';
import type { SshHost } from '../ssh/index.js';
import type { StepRun } from './contract.js';
import { type DriverEnv, type Exec, execFor, sameHost } from './env.js';
import { driverError } from './errors.js';
import {
  dfCommand,
  formatBytes,
  type HostRole,
  type PathTools,
  parseDf,
  parseTools,
  parseVmfs,
  requiredBytes,
  toolsCommand,
  toolsFor,
  vmfsCommand,
} from './preflight-commands.js';

export interface PreflightCheck {
  /** What was checked, e.g. `tools on libvirt-host`, `space in repository images`. */
  name: string;
  status: 'ok' | 'failed' | 'skipped';
  /** What was found, or why the check did not run. */
  detail: string;
  /** A failure's code and message (the message names what to fix). */
  error?: { code: string; message: string };
}

/**
 * The checks of one preflight as they ran. `stopAtFirst` (a capture): a failing check throws its error.
 * Otherwise (the CLI) it is recorded and `check` returns undefined; checks that need its value are
 * recorded as skipped.
 */
export class Checklist {
  readonly checks: PreflightCheck[] = [];

  constructor(readonly stopAtFirst: boolean) {}

  get ok(): boolean {
    return this.checks.every((c) => c.status !== 'failed');
  }

  async check<T>(name: string, fn: () => Promise<{ value: T; detail: string }>): Promise<T | undefined> {
    try {
      const { value, detail } = await fn();
      this.checks.push({ name, status: 'ok', detail });
      return value;
    } catch (err) {
      const error = isVclError(err)
        ? { code: err.code, message: err.message }
        : { code: 'STEP_FAILED', message: err instanceof Error ? err.message : String(err) };
      this.checks.push({ name, status: 'failed', detail: error.message, error });
      if (this.stopAtFirst) throw err;
      return undefined;
    }
  }

  skip(name: string, why: string): void {
    this.checks.push({ name, status: 'skipped', detail: why });
  }
}

/** A check step's run: the step's deadline and signal bound to every command. */
export type CheckRun = StepRun<{ step: string }>;

/** How long the reachability probe waits for a host's SSH banner (within the step's deadline). */
const REACH_MS = 15_000;

/**
 * The host answers SSH (a banner within REACH_MS, without logging in) and, logged in with its host key
 * verified, has every tool its roles on this path need. An unreachable host fails at once with
 * SSH_UNREACHABLE rather than after the transport's connection retries; a wrong or unknown host key
 * fails with the transport's SSH_HOSTKEY_* code and the fingerprint it saw.
 */
export async function checkHost(
  env: DriverEnv,
  run: CheckRun,
  list: Checklist,
  host: SshHost,
  roles: readonly HostRole[],
  pathTools: PathTools,
): Promise<boolean> {
  const reached = await list.check(`reach ${host.name}`, async () => {
    const answers = await env.remote.answers?.(host, {
      timeoutMs: Math.min(REACH_MS, run.remainingMs()),
      signal: run.signal,
    });
    if (answers === false) throw run.signal.aborted ? probeStopped(host) : unreachable(host);
    return { value: true, detail: `${host.host}:${host.port ?? 22} answers SSH` };
  });
  if (!reached) {
    list.skip(`tools on ${host.name}`, `${host.name} was not reached`);
    return false;
  }
  const tools = toolsFor(roles, pathTools);
  const ok = await list.check(`tools on ${host.name}`, async () => {
    const r = await execFor(env, run)(host, toolsCommand(tools));
    const { missing } = parseTools(r.stdout, tools);
    if (missing.length > 0)
      throw driverError(
        'PREFLIGHT_TOOL_MISSING',
        `${host.name} lacks ${missing.join(', ')} (needed as ${roles.join(' and ')} host): install ${missing.length > 1 ? 'them' : 'it'} or fix the PATH of ${host.username}`,
        { host: host.name, missing },
      );
    return { value: true, detail: `host key verified; ${tools.join(', ')} present` };
  });
  return ok === true;
}

/** Every host a capture's provisioner steps use, each once, with its roles (the guest is the OS's). */
export function pathHosts(env: DriverEnv): { host: SshHost; roles: HostRole[] }[] {
  const provisioner = env.computer.provisioner.type;
  if (sameHost(env.provisionerHost, env.repository.host))
    return [{ host: env.provisionerHost, roles: [provisioner, 'repository'] }];
  return [
    { host: env.provisionerHost, roles: [provisioner] },
    { host: env.repository.host, roles: ['repository'] },
  ];
}

/** Checks every host of the path; false when one failed (its checks are recorded). */
export async function checkHosts(
  env: DriverEnv,
  run: CheckRun,
  list: Checklist,
  tools: PathTools,
): Promise<boolean> {
  let all = true;
  for (const { host, roles } of pathHosts(env))
    all = (await checkHost(env, run, list, host, roles, tools)) && all;
  return all;
}

/** Where a copy is written and what reads its free space there. */
export interface SpaceTarget {
  /** For messages: `repository images`, `staging folder`, `datastore datastore1`. */
  what: string;
  host: SshHost;
  dir: string;
  /** `df` on POSIX hosts; `vmfs` (vmkfstools -P) for an ESXi datastore (the default under /vmfs/volumes/). */
  reader?: 'df' | 'vmfs';
}

/** Free bytes of the file system holding `target.dir`. */
export async function freeBytes(exec: Exec, target: SpaceTarget): Promise<number> {
  // A repository on an ESXi datastore is read as one: ESXi's df takes neither -P nor -B.
  const reader = target.reader ?? (target.dir.startsWith('/vmfs/volumes/') ? 'vmfs' : 'df');
  if (reader === 'vmfs')
    return parseVmfs((await exec(target.host, vmfsCommand(target.dir))).stdout).availableBytes;
  return parseDf((await exec(target.host, dfCommand(target.dir))).stdout).availableBytes;
}

/**
 * The target's file system has at least `copyBytes` plus the margin free (`copyBytes` undefined: the size
 * is not known before the copy, as for an xCAT upload; the margin alone is asked for).
 */
export async function checkSpace(
  env: DriverEnv,
  run: CheckRun,
  list: Checklist,
  target: SpaceTarget,
  copyBytes: number | undefined,
): Promise<void> {
  await list.check(`space in ${target.what}`, async () => {
    const free = await freeBytes(execFor(env, run), target);
    const needed = requiredBytes(copyBytes ?? 0);
    const what = `${target.what} (${target.host.name}:${target.dir})`;
    const asked =
      copyBytes === undefined
        ? `the margin of ${formatBytes(needed)} (the upload's size is not known before it)`
        : `${formatBytes(needed)} (the copy's ${formatBytes(copyBytes)} plus the margin)`;
    if (free < needed)
      throw driverError(
        'PREFLIGHT_NO_SPACE',
        `${what} has ${formatBytes(free)} free; the capture needs ${asked}: free space there or point the inventory at a larger one`,
        { host: target.host.name, dir: target.dir, freeBytes: free, neededBytes: needed },
      );
    return { value: free, detail: `${formatBytes(free)} free, ${formatBytes(needed)} needed` };
  });
}

/** Logs the checks a capture's step passed: the audit of what was verified before the computer was touched. */
export function logPassed(run: CheckRun, list: Checklist): void {
  run.log.info({ checks: list.checks.map((c) => `${c.name}: ${c.detail}`) }, 'preflight checks passed');
}

/**
 * A capture's check step made of a provisioner's preflight: its checks stop at the first failure (whose
 * typed error fails the capture) and those passed are logged; the facts found go on to the next steps.
 */
export function preflightStep<TRun extends CheckRun, TFacts extends object>(
  preflight: (run: TRun, list: Checklist, options: { target: boolean }) => Promise<TFacts | undefined>,
): (run: TRun) => Promise<{ facts: TFacts | Record<string, never> }> {
  return async (run) => {
    const list = new Checklist(true);
    const facts = await preflight(run, list, { target: true });
    logPassed(run, list);
    return { facts: facts ?? {} };
  };
}

/**
 * The host answers SSH and lets us in with its host key verified (`true` runs). For the computer's own
 * OS in `vcl-capture preflight`: a capture checks it in ensure_responding instead, which also waits for a
 * computer that is still booting.
 */
export async function checkLogin(
  env: DriverEnv,
  run: CheckRun,
  list: Checklist,
  host: SshHost,
): Promise<void> {
  await list.check(`reach ${host.name}`, async () => {
    const answers = await env.remote.answers?.(host, {
      timeoutMs: Math.min(REACH_MS, run.remainingMs()),
      signal: run.signal,
    });
    if (answers === false) throw run.signal.aborted ? probeStopped(host) : unreachable(host);
    await execFor(env, run)(host, ['true']);
    return { value: true, detail: `${host.host}:${host.port ?? 22} answers SSH; host key verified` };
  });
}

/** The probe also answers false when the step's signal stopped it: then the host is not to blame. */
function probeStopped(host: SshHost): SshError {
  return new SshError('SSH_ABORTED', `the SSH check of ${host.name} was aborted before it answered`, {
    details: { host: host.name },
  });
}

function unreachable(host: SshHost): SshError {
  return new SshError(
    'SSH_UNREACHABLE',
    `${host.name} (${host.host}:${host.port ?? 22}) does not answer SSH: check its address and port in the inventory, the network, and that sshd runs`,
    { details: { host: host.name, address: host.host, port: host.port ?? 22 } },
  );
}
