/**
 * `vcl-capture preflight` (and any embedder): the checks a capture's first steps run, on demand, without
 * reserving the computer or recording anything. Every check runs (one failing skips only those that need
 * its result) and is reported with what it found or what to fix.
 */
import { DEFAULT_TIMEOUTS, type ProvisionerName } from '../../machines/index.js';
import type { Remote } from '../drivers/contract.js';
import type { DriverEnv } from '../drivers/env.js';
import { Checklist, type CheckRun, checkLogin, type PreflightCheck } from '../drivers/preflight.js';
import { captureHostsOf, computerEntry, inventoryHosts } from '../inventory/hosts.js';
import type { Inventory } from '../inventory/schema.js';
import { type Logger, silentLogger } from '../log.js';
import { provisioners } from '../provisioners/index.js';
import { validateImageName } from '../store/naming.js';
import { timeoutsOf } from './execution.js';

export type { PreflightCheck } from '../drivers/preflight.js';

export interface PreflightRequest {
  inventory: Inventory;
  computer: string;
  /** The image revision name to check free in the repository (e.g. `linux-Base12-v0`); absent: not checked. */
  imageName?: string;
  remote: Remote;
  logger?: Logger;
  signal?: AbortSignal;
}

export interface PreflightReport {
  computer: string;
  provisioner: ProvisionerName;
  ok: boolean;
  checks: PreflightCheck[];
  /** The first failed check's error (its message names what to fix). */
  error?: { code: string; message: string; check: string };
}

export async function preflight(request: PreflightRequest): Promise<PreflightReport> {
  const { inventory, computer: name } = request;
  const computer = computerEntry(inventory, name);
  const imageName = request.imageName === undefined ? undefined : validateImageName(request.imageName);
  const env: DriverEnv = {
    remote: request.remote,
    computerName: name,
    computer,
    ...captureHostsOf(inventory, inventoryHosts(inventory), computer),
    pollMs: 2000,
  };
  // The capture's check step gets commandMs; so does the whole preflight here.
  const budgetMs = timeoutsOf(inventory, name, undefined).commandMs ?? DEFAULT_TIMEOUTS.commandMs;
  const deadline = Date.now() + budgetMs;
  const timeout = AbortSignal.timeout(budgetMs);
  const run: CheckRun & { input: { step: string; image?: { name: string } } } = {
    input: { step: 'preflight', ...(imageName === undefined ? {} : { image: { name: imageName } }) },
    signal: request.signal ? AbortSignal.any([request.signal, timeout]) : timeout,
    remainingMs: () => Math.max(1, deadline - Date.now()),
    log: (request.logger ?? silentLogger()).child({ computer: name, step: 'preflight' }),
    resumed: false,
  };
  const list = new Checklist(false);
  const options = { target: imageName !== undefined };
  const provisioner = computer.provisioner.type;
  await provisioners[provisioner].preflight(env, run, list, options);
  await checkLogin(env, run, list, env.guestHost);
  const failed = list.checks.find((c) => c.status === 'failed');
  return {
    computer: name,
    provisioner,
    ok: failed === undefined,
    checks: list.checks,
    ...(failed?.error ? { error: { ...failed.error, check: failed.name } } : {}),
  };
}
