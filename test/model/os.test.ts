/**
 * Model-based path tests of the OS sub-machines on their own: every input variant a provisioner can
 * give (end state, who watches a reboot's return, sysprep), every generated path replayed through the
 * real machine with the in-memory executor, and the end-state rules checked on each effect log.
 */
import { afterAll, describe, expect, it } from 'vitest';
import { effectNames, operatingSystems } from '../../machines/index.js';
import { LINUX_STEPS } from '../../machines/os/linux.js';
import type { OsStepSpec } from '../../machines/os/os-machine.js';
import { WINDOWS_STEPS } from '../../machines/os/windows.js';
import type { EndState, OsInput, OsName, OsResult } from '../../machines/types.js';
import { abstractContext, type CoverageLine, coverageOf, printCoverage, stepOutcomes } from './catalogue.js';
import { allNodeIds, buildGraph, type MachineGraph } from './graph.js';
import {
  type Coverage,
  type Effect,
  formatEffect,
  newCoverage,
  replay,
  ScriptedExecutor,
  scriptFor,
} from './replay.js';

const STEPS: Record<OsName, readonly OsStepSpec[]> = { linux: LINUX_STEPS, windows: WINDOWS_STEPS };
const IMAGE = { name: 'linux-Base1-v0', imageId: 1, revision: 0 };

interface Variant {
  endState: EndState;
  provisionerWatchesReturn: boolean;
  sysprep: boolean;
}

function variants(os: OsName): Variant[] {
  const out: Variant[] = [];
  for (const endState of ['off', 'on', 'reboot'] as const) {
    for (const provisionerWatchesReturn of endState === 'reboot' ? [false, true] : [false]) {
      for (const sysprep of os === 'windows' ? [false, true] : [false]) {
        out.push({ endState, provisionerWatchesReturn, sysprep });
      }
    }
  }
  return out;
}

const coverage: Record<OsName, Coverage> = { linux: newCoverage(), windows: newCoverage() };
const reachable: Record<OsName, Set<string>> = { linux: new Set(), windows: new Set() };
const report: CoverageLine[] = [];

/** The end-state rules, checked on one effect log and the machine's output. */
function checkEndState(os: OsName, v: Variant, log: Effect[], output: OsResult): string[] {
  const problems: string[] = [];
  const names = log.map((e) => e.src);
  const table = STEPS[os].map((s) => s.id);
  if (names[0] !== 'ensure_responding') problems.push('the first effect is not ensure_responding');
  // Preparation steps run in VCL's order, never twice, never after the end state began.
  const prep = names.filter((n) => table.includes(n));
  const expectedOrder = table.filter((t) => prep.includes(t));
  if (JSON.stringify(prep) !== JSON.stringify(expectedOrder))
    problems.push(`steps out of order: ${prep.join(',')}`);
  if (new Set(prep).size !== prep.length) problems.push('a step ran twice');
  const failedCritical = log.find(
    (e) => e.outcome === 'error' && STEPS[os].find((s) => s.id === e.src)?.kind === 'critical',
  );
  if (failedCritical) {
    if (output.ok) problems.push(`critical step ${failedCritical.src} failed but the OS reported success`);
    if (log.at(-1) !== failedCritical)
      problems.push(`effects ran after critical step ${failedCritical.src} failed`);
    return problems;
  }
  // Exactly the advisory failures and the steps that did not apply become warnings.
  const expectedWarnings = log
    .filter((e) =>
      e.outcome === 'error'
        ? STEPS[os].find((s) => s.id === e.src)?.kind === 'advisory' ||
          (e.src === 'wait_gone' && e.code === 'TIMEOUT')
        : e.outcome === 'ok' &&
          e.output !== null &&
          typeof e.output === 'object' &&
          'notApplicable' in e.output,
    )
    .map((e) => `${e.src}:${e.outcome === 'error' ? e.code : 'NOT_APPLICABLE'}`);
  const warnings = output.warnings.map((w) => `${w.step}:${w.code}`);
  if (JSON.stringify(warnings) !== JSON.stringify(expectedWarnings)) {
    problems.push(`warnings ${warnings.join(',')} but the log implies ${expectedWarnings.join(',')}`);
  }
  if (!output.ok) {
    const last = log.at(-1);
    if (last?.outcome !== 'error') problems.push('the OS failed without a failing effect');
    return problems;
  }
  const tail = names.slice(prep.length);
  const command = v.sysprep
    ? 'sysprep'
    : v.endState === 'off'
      ? 'shutdown'
      : v.endState === 'reboot'
        ? 'reboot'
        : null;
  const expectedTail =
    v.endState === 'off'
      ? [command, 'wait_gone']
      : v.endState === 'reboot'
        ? [command, 'wait_down', ...(v.provisionerWatchesReturn ? [] : ['wait_up'])]
        : [...(v.sysprep ? ['sysprep'] : []), 'confirm_on'];
  if (JSON.stringify(tail) !== JSON.stringify(expectedTail)) {
    problems.push(`end state ${v.endState}: expected ${expectedTail.join(' > ')}, ran ${tail.join(' > ')}`);
  }
  const expectedPower =
    v.endState === 'off'
      ? log.at(-1)?.outcome === 'ok'
        ? 'off'
        : 'shutting_down'
      : v.endState === 'reboot' && v.provisionerWatchesReturn
        ? 'rebooting'
        : 'on';
  if (output.powerState !== expectedPower)
    problems.push(`power state ${output.powerState}, expected ${expectedPower}`);
  if (v.endState === 'reboot' && !v.provisionerWatchesReturn && output.bootId !== 'boot-2') {
    problems.push('a reboot did not report the new boot id');
  }
  return problems;
}

describe.each(['linux', 'windows'] as const)('OS sub-machine %s', (os) => {
  const machine = operatingSystems[os].machine;

  describe.each(variants(os))(
    'end state $endState (provisioner watches return: $provisionerWatchesReturn, sysprep: $sysprep)',
    (v) => {
      const input: OsInput = { computer: 'pc1', image: IMAGE, ...v };
      let graph: MachineGraph;

      it('has no dead ends and reaches both done and failed', () => {
        graph = buildGraph({ machine, input, outcomes: stepOutcomes, abstractContext });
        for (const n of graph.reachableNodes) reachable[os].add(n);
        expect(graph.deadEnds).toEqual([]);
        expect([...graph.finalsReached].sort()).toEqual(['done', 'failed']);
        expect(graph.paths.length).toBeGreaterThan(0);
      });

      it('every generated path runs as predicted and carries out the end state', async () => {
        const snapshotOf = (k: string) => {
          const v2 = graph.adjacency[k as keyof typeof graph.adjacency];
          if (!v2) throw new Error(`no snapshot ${k}`);
          return v2.state;
        };
        for (const path of graph.paths) {
          const executor = new ScriptedExecutor();
          const provided = machine.provide({ actors: executor.actors(effectNames(machine)) });
          const script = scriptFor(path, snapshotOf);
          const { final, log } = await replay(provided, input, executor, script, undefined, coverage[os]);
          expect(log.map(formatEffect)).toEqual(script.expectedLog);
          expect(final.value).toEqual(path.final.value);
          // Snapshots that differ only in which warnings they carry are merged in the graph, so the
          // warnings are checked against the effect log below rather than against the representative.
          expect({ ...(final.output as OsResult), warnings: [] }).toEqual({
            ...(path.final.output as OsResult),
            warnings: [],
          });
          expect(checkEndState(os, v, log, final.output as OsResult)).toEqual([]);
        }
      });
    },
  );

  it('every state is reachable under some input', () => {
    expect(allNodeIds(machine).filter((n) => !reachable[os].has(n))).toEqual([]);
  });
});

afterAll(() => {
  for (const os of ['linux', 'windows'] as const)
    report.push(coverageOf(operatingSystems[os].machine, coverage[os]));
  printCoverage('OS sub-machine path coverage (generated paths replayed):', report);
  for (const line of report) {
    expect(line.missingStates, `${line.machine}: states never entered`).toEqual([]);
    expect(line.missingTransitions, `${line.machine}: transitions never taken`).toEqual([]);
  }
});
