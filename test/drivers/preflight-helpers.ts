/**
 * A provisioner's preflight run at step level as `vcl-capture preflight` runs it (a collecting checklist,
 * every check recorded), under the lab's inventory or a test's changed copy of it; and the report's checks
 * read by name.
 */
import type { Remote } from '../../src/drivers/contract.js';
import type { DriverEnv } from '../../src/drivers/env.js';
import { Checklist, type PreflightCheck } from '../../src/drivers/preflight.js';
import { captureHostsOf, inventoryHosts } from '../../src/inventory/hosts.js';
import type { Inventory } from '../../src/inventory/schema.js';
import type { PreflightRun } from '../../src/provisioners/types.js';
import { stepRun } from './rerun-helpers.js';

/** The environment the runner gives a capture of `computer` under `inventory`. */
export function inventoryEnv(inventory: Inventory, remote: Remote, computer: string): DriverEnv {
  const entry = inventory.computers[computer];
  if (!entry) throw new Error(`no computer ${computer}`);
  return {
    remote,
    computerName: computer,
    computer: entry,
    ...captureHostsOf(inventory, inventoryHosts(inventory), entry),
    pollMs: 20,
  };
}

/** A copy of `inventory` with `computer`'s entry changed (as a hand edit would: not checked against its schema). */
export function changed(
  inventory: Inventory,
  computer: string,
  change: (entry: Record<string, unknown>) => void,
): Inventory {
  const copy = structuredClone(inventory);
  const entry = copy.computers[computer];
  if (!entry) throw new Error(`no computer ${computer}`);
  change(entry as unknown as Record<string, unknown>);
  return copy;
}

/** A provisioner's preflight (its registry entry's signature, with the facts it returns). */
export type PreflightFn<F> = (
  env: DriverEnv,
  run: PreflightRun,
  list: Checklist,
  options: { target: boolean },
) => Promise<F>;

/**
 * `preflight` as `vcl-capture preflight` runs it: every check recorded; the image name checked free when
 * `target` (by default when a name is given, as the CLI does).
 */
export async function preflightOf<F>(
  preflight: PreflightFn<F>,
  env: DriverEnv,
  imageName?: string,
  target = imageName !== undefined,
) {
  const list = new Checklist(false);
  const run = stepRun({
    step: 'preflight',
    ...(imageName === undefined ? {} : { image: { name: imageName } }),
  });
  const facts = await preflight(env, run, list, { target });
  return { facts, checks: list.checks, ok: list.ok };
}

/** The check named `name` (fails the test when the report has none). */
export function check(checks: readonly PreflightCheck[], name: string): PreflightCheck {
  const c = checks.find((x) => x.name === name);
  if (!c) throw new Error(`no check ${name} in ${checks.map((x) => x.name).join(', ')}`);
  return c;
}

/** Each check's name and status, in the report's order. */
export const statuses = (checks: readonly { name: string; status: string }[]) =>
  checks.map((c) => [c.name, c.status]);
