/**
 * A dry run: a capture machine driven by simulated effects that touch nothing, answering after a short
 * pause with plausible outputs. It shows the sequence a real capture would take (and, with `failAt`,
 * its cleanup) without any host. The real runner replaces these effects with drivers over SSH.
 */
import { createActor, fromPromise } from 'xstate';
import {
  type CaptureResult,
  composeCaptureMachine,
  type EndState,
  effectNames,
  type OsName,
  operatingSystems,
  type ProvisionerName,
  provisioners,
} from '../../machines/index.js';
import { OS_DRY_RUN_OUTPUTS } from '../drivers/os.js';
import { PROVISIONER_ENTRIES } from '../provisioners/index.js';

export interface DryRunOptions {
  provisioner: ProvisionerName;
  os: OsName;
  endState?: EndState;
  /** An effect that fails (code STEP_FAILED), to watch the cleanup. */
  failAt?: string;
  /** Simulated duration of each effect. */
  stepMs?: number;
  onEvent?: (line: DryRunEvent) => void;
}

export type DryRunEvent =
  | { kind: 'state'; value: string; atMs: number }
  | { kind: 'effect'; name: string; outcome: 'ok' | 'failed'; atMs: number };

/** Success outputs that carry what later steps need (the OS's and each provisioner's); others answer `{}`. */
export const DRY_RUN_OUTPUTS: Readonly<Record<string, unknown>> = Object.assign(
  { ...OS_DRY_RUN_OUTPUTS },
  ...PROVISIONER_ENTRIES.map(([, p]) => p.dryRun.outputs),
);

/** The step of each provisioner whose output is the image artifact. */
export const ARTIFACT_STEPS: ReadonlySet<string> = new Set(
  PROVISIONER_ENTRIES.map(([, p]) => p.dryRun.artifactStep),
);

function flatten(value: unknown): string {
  if (typeof value === 'string') return value;
  return Object.entries(value as Record<string, unknown>)
    .map(([k, v]) => (typeof v === 'string' || !v || Object.keys(v).length === 0 ? k : `${k}.${flatten(v)}`))
    .join(',');
}

export async function dryRun(o: DryRunOptions): Promise<CaptureResult> {
  const started = Date.now();
  const at = () => Date.now() - started;
  const artifactFor = (image: { name: string }) => ({
    path: `/images/${image.name}.qcow2`,
    sizeBytes: 10 * 1024 ** 3,
    sha256: '0'.repeat(64),
    format: 'qcow2',
  });
  const simulated = (name: string) =>
    fromPromise<unknown, { image?: { name: string } }>(async ({ input, signal }) => {
      await new Promise((resolve) => setTimeout(resolve, o.stepMs ?? 20));
      if (signal.aborted) throw new Error('aborted');
      if (o.failAt === name) {
        o.onEvent?.({ kind: 'effect', name, outcome: 'failed', atMs: at() });
        throw Object.assign(new Error(`${name} failed (simulated)`), { code: 'STEP_FAILED' });
      }
      o.onEvent?.({ kind: 'effect', name, outcome: 'ok', atMs: at() });
      if (ARTIFACT_STEPS.has(name) && input.image) return { artifact: artifactFor(input.image) };
      return DRY_RUN_OUTPUTS[name] ?? {};
    });
  const provisionerMachine = provisioners[o.provisioner].machine;
  const osMachine = operatingSystems[o.os].machine;
  const of = (names: string[]) => Object.fromEntries(names.map((n) => [n, simulated(n)]));
  const machine = composeCaptureMachine({
    provisioner: o.provisioner,
    os: o.os,
    provisionerActors: of(effectNames(provisionerMachine).filter((n) => n !== 'os')),
    osActors: of(effectNames(osMachine)),
  });
  const actor = createActor(machine, {
    input: {
      captureId: `dry-${o.provisioner}-${o.os}`,
      computer: 'pc1',
      os: o.os,
      image: { name: `${o.os}-Base1-v0`, imageId: 1, revision: 0 },
      ...(o.endState ? { endState: o.endState } : {}),
    },
  });
  return new Promise((resolve, reject) => {
    let last = '';
    actor.subscribe({
      next: (s) => {
        const value = flatten(s.value);
        if (value !== last) o.onEvent?.({ kind: 'state', value, atMs: at() });
        last = value;
        if (s.status === 'done') resolve(s.output as CaptureResult);
      },
      error: reject,
    });
    actor.start();
  });
}
