/**
 * What each effect may answer in the model: success (with the output later steps rely on), a generic
 * failure, and every failure code some guard on its error transition tells apart.
 */
import type { AnyMachineSnapshot, AnyStateMachine, AnyStateNode } from 'xstate';
import { FAILURE_CODES, type ImageArtifact } from '../../machines/types.js';
import { ARTIFACT_STEPS, DRY_RUN_OUTPUTS } from '../../src/simulate/dry-run.js';
import { activeNodes, allNodeIds, allTransitionKeys, type Outcome } from './graph.js';
import type { Coverage } from './replay.js';

export const ARTIFACT: ImageArtifact = {
  path: '/repo/image/linux-Base1-v0.qcow2',
  sizeBytes: 1_048_576,
  sha256: 'a'.repeat(64),
  format: 'qcow2',
};

/** Success outputs that carry what later steps need (the dry run's); every other effect answers `{}`. */
const OUTPUTS: Record<string, unknown> = {
  ...DRY_RUN_OUTPUTS,
  ...Object.fromEntries([...ARTIFACT_STEPS].map((step) => [step, { artifact: ARTIFACT }])),
};

/**
 * Success outputs that send the capture down another branch: the check steps of provisioners with a boot
 * test report the inventory's switch in their facts (`bootTest`), so both ways are generated.
 */
const VARIANT_OUTPUTS: Record<string, unknown[]> = {
  inspect_domain: [
    {
      facts: {
        ...(DRY_RUN_OUTPUTS.inspect_domain as { facts: Record<string, unknown> }).facts,
        bootTest: true,
      },
    },
  ],
};

/** Named guards that test an error code without saying it in their params. */
const GUARD_CODES: Record<string, string> = { mayRepairOnce: FAILURE_CODES.NEEDS_REPAIR };

function invokingNode(snapshot: AnyMachineSnapshot, id: string): AnyStateNode | undefined {
  return activeNodes(snapshot).find((n) => n.invoke.some((i) => i.id === id));
}

/** Failure codes the machine distinguishes on `id`'s error transition. */
export function distinguishedCodes(node: AnyStateNode, id: string): string[] {
  const codes = new Set<string>();
  for (const t of node.transitions.get(`xstate.error.actor.${id}`) ?? []) {
    const guard = t.guard as { type?: string; params?: { code?: string } } | string | undefined;
    if (typeof guard === 'object' && guard?.type === 'failedWith' && guard.params?.code)
      codes.add(guard.params.code);
    const named = typeof guard === 'string' ? guard : guard?.type;
    if (named && GUARD_CODES[named]) codes.add(GUARD_CODES[named]);
  }
  return [...codes];
}

export function stepOutcomes(id: string, snapshot: AnyMachineSnapshot): Outcome[] {
  const node = invokingNode(snapshot, id);
  const meta = (node?.meta as { step?: { kind?: string; effect?: string } } | undefined)?.step;
  const outcomes: Outcome[] = [{ kind: 'done', output: OUTPUTS[id] ?? {} }];
  for (const output of VARIANT_OUTPUTS[id] ?? []) outcomes.push({ kind: 'done', output });
  // An advisory OS step may find nothing to do (busybox has no userdel): reported, not failed.
  if (meta?.kind === 'advisory' && meta.effect === 'os') {
    outcomes.push({ kind: 'done', output: { notApplicable: `${id}: tool not present on this computer` } });
  }
  outcomes.push({
    kind: 'error',
    error: { code: FAILURE_CODES.STEP_FAILED, message: `injected failure in ${id}` },
  });
  for (const code of node ? distinguishedCodes(node, id) : []) {
    outcomes.push({ kind: 'error', error: { code, message: `injected ${code} in ${id}` } });
  }
  return outcomes;
}

/** Warnings and cleanup failures only matter for control flow as "some" or "none". */
export function abstractContext(context: Record<string, unknown>): unknown {
  const { deadlines: _deadlines, warnings, cleanupFailures, ...rest } = context;
  return {
    ...rest,
    warnings: Array.isArray(warnings) && warnings.length > 0,
    cleanupFailures: Array.isArray(cleanupFailures) ? cleanupFailures.length : 0,
  };
}

export interface CoverageLine {
  machine: string;
  states: string;
  transitions: string;
  missingStates: string[];
  missingTransitions: string[];
}

export function coverageOf(machine: AnyStateMachine, coverage: Coverage): CoverageLine {
  const nodes = allNodeIds(machine);
  const transitions = allTransitionKeys(machine);
  const missingStates = nodes.filter((n) => !coverage.nodes.has(n));
  const missingTransitions = transitions.filter((t) => !coverage.transitions.has(t));
  const pct = (covered: number, total: number) =>
    `${covered}/${total} (${((100 * covered) / total).toFixed(1)}%)`;
  return {
    machine: machine.id,
    states: pct(nodes.length - missingStates.length, nodes.length),
    transitions: pct(transitions.length - missingTransitions.length, transitions.length),
    missingStates,
    missingTransitions,
  };
}

export function printCoverage(title: string, lines: CoverageLine[]): void {
  const rows = lines.map(
    (l) => `  ${l.machine.padEnd(10)} states ${l.states.padEnd(18)} transitions ${l.transitions}`,
  );
  console.log(`${title}\n${rows.join('\n')}`);
}
