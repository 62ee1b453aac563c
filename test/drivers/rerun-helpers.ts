/**
 * Driver steps run one by one against the lab, as the runner runs them: the same DriverEnv built from the
 * inventory (src/runner/execution.ts), and a StepRun with a deadline, an abort signal and `resumed`.
 */

import { readdir, stat } from 'node:fs/promises';
import type { CaptureStepInput, EndState, OsStepInput } from '../../machines/index.js';
import { resolveTimeouts } from '../../machines/steps.js';
import type { Remote, StepRun } from '../../src/drivers/contract.js';
import type { DriverEnv } from '../../src/drivers/env.js';
import { VclError } from '../../src/errors.js';
import { inventoryHosts } from '../../src/inventory/hosts.js';
import type { Lab } from '../../src/lab/types.js';
import { silentLogger } from '../../src/log.js';
import type { ExecOptions, SshHost } from '../../src/ssh/index.js';

/** The environment the runner gives a capture of `computer`. */
export function driverEnv(lab: Lab, remote: Remote, computer: string, pollMs = 20): DriverEnv {
  const inventory = lab.inventory;
  const hosts = inventoryHosts(inventory);
  const entry = inventory.computers[computer];
  if (!entry) throw new Error(`no computer ${computer} in the lab`);
  const repository = inventory.repositories[entry.repository];
  if (!repository) throw new Error(`no repository ${entry.repository}`);
  const host = (name: string) => {
    const h = hosts.get(name);
    if (!h) throw new Error(`no host ${name}`);
    return h;
  };
  return {
    remote,
    computerName: computer,
    computer: entry,
    provisionerHost: host(entry.provisioner.host),
    guestHost: host(entry.host),
    repository: { host: host(repository.host), path: repository.path },
    pollMs,
  };
}

export interface RunOptions {
  /** The re-run of a step that was in flight when the process stopped. */
  resumed?: boolean;
  /** Aborts the step (as CANCEL does). */
  signal?: AbortSignal;
  /** Time left before the step's deadline (default 20 s). */
  timeoutMs?: number;
}

/** A StepRun as boundStepActor makes it: aborted by the caller or at the deadline. */
export function stepRun<T>(input: T, options: RunOptions = {}): StepRun<T> {
  const timeoutMs = options.timeoutMs ?? 20_000;
  const deadline = Date.now() + timeoutMs;
  const signals = [AbortSignal.timeout(timeoutMs), ...(options.signal ? [options.signal] : [])];
  return {
    input,
    signal: AbortSignal.any(signals),
    remainingMs: () => Math.max(1, deadline - Date.now()),
    log: silentLogger(),
    resumed: options.resumed ?? false,
  };
}

let images = 0;

/** What one capture's provisioner steps share: its id, image and facts, as the machine passes them. */
export function captureOf(lab: Lab, computer: string, endState: EndState) {
  const c = lab.computer(computer);
  const n = ++images;
  const input = (
    step: string,
    facts: CaptureStepInput['facts'] = {},
    timeoutMs = 20_000,
  ): CaptureStepInput => ({
    step,
    captureId: `rerun-${n}`,
    provisioner: c.provisioner,
    computer,
    os: c.os,
    image: { name: `${c.os}-Rerun${n}-v0`, imageId: 1000 + n, revision: 0 },
    endState,
    deadline: Date.now() + timeoutMs,
    timeouts: resolveTimeouts({ uploadNoProgressMs: 10_000 }),
    facts,
  });
  return { name: `${c.os}-Rerun${n}-v0`, input };
}

export function osInput(lab: Lab, computer: string, step: string, bootId?: string): OsStepInput {
  const c = lab.computer(computer);
  return {
    step,
    os: c.os,
    computer,
    image: { name: `${c.os}-RerunOs-v0`, imageId: 999, revision: 0 },
    endState: 'off',
    sysprep: false,
    deadline: Date.now() + 20_000,
    ...(bootId === undefined ? {} : { bootId }),
    timeouts: resolveTimeouts({}),
  };
}

/** Names in a host's folder (the real directory behind it) that contain `part`, sorted. */
export async function filesWith(lab: Lab, host: string, dir: string, part: string): Promise<string[]> {
  const names = await readdir(await lab.realPath(host, dir));
  return names.filter((n) => n.includes(part)).sort();
}

/** Resolves with the first file in `dir` on `host` whose name matches and whose size reaches `bytes`. */
export async function waitForFile(
  lab: Lab,
  host: string,
  dir: string,
  match: (name: string) => boolean,
  bytes: number,
  timeoutMs = 20_000,
): Promise<string> {
  const real = await lab.realPath(host, dir);
  const until = Date.now() + timeoutMs;
  for (;;) {
    for (const name of await readdir(real)) {
      if (!match(name)) continue;
      const size = await stat(`${real}/${name}`).then(
        (s) => s.size,
        () => -1,
      );
      if (size >= bytes) return name;
    }
    if (Date.now() > until) throw new Error(`no file in ${host}:${dir} reached ${bytes} bytes`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

/**
 * A transport that runs `before` ahead of every command whose argv starts with `prefix`: the world moving
 * between a step's check and its action (another attempt's command taking effect just then).
 */
export function interceptRemote(
  remote: Remote,
  prefix: readonly string[],
  before: (host: SshHost, argv: readonly string[]) => void | Promise<void>,
): Remote {
  return {
    async exec(host: SshHost, argv: readonly string[], options?: ExecOptions) {
      if (prefix.every((w, i) => argv[i] === w)) await before(host, argv);
      return remote.exec(host, argv, options);
    },
    copy: (from, to, options) => remote.copy(from, to, options),
  };
}

/** The VclError `p` rejects with; fails the test when it resolves or rejects with anything else. */
export async function refusal(p: unknown): Promise<VclError> {
  const err = await Promise.resolve(p).then(
    () => undefined,
    (e: unknown) => e,
  );
  if (!(err instanceof VclError)) throw new Error(`expected a VclError, got ${String(err)}`);
  return err;
}

/** The code and message of the error `f` throws, as the operator reads them (undefined: no throw). */
export function thrownBy(f: () => unknown): { code: string; message: string } | undefined {
  try {
    f();
  } catch (e) {
    return e instanceof VclError
      ? { code: e.code, message: e.message }
      : { code: 'not a VclError', message: String(e) };
  }
  return undefined;
}

/** `remote`, except that the hosts' tool check reports `tool` missing (a host without it). */
export function withoutTool(remote: Remote, tool: string): Remote {
  return {
    async exec(host, argv, options) {
      const r = await remote.exec(host, argv, options);
      if (argv[0] !== 'sh' || !argv.includes(tool)) return r;
      return { ...r, stdout: r.stdout.replace(`present ${tool}\n`, `missing ${tool}\n`) };
    },
    copy: (from, to, options) => remote.copy(from, to, options),
  };
}
