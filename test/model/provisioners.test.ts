/**
 * Model-based path tests of the capture machines: for every provisioner, OS and allowed end state, the
 * provisioner's graph is generated with every step outcome (and CANCEL wherever it is accepted), and
 * every path is replayed with the real OS sub-machine running inside it. The OS answers the provisioner
 * with one representative result per kind (success per power state, each failure code, with or without
 * warnings); each representative is produced by replaying a real OS path that ends in it.
 *
 * Each replayed effect log is then checked against the capture rules that do not depend on how the
 * machines are written: reservation first, no copy before the power state is confirmed, record only
 * after verification, cleanup of exactly what was started in reverse order, release last; and, on
 * every path that ends without an image, the computer's release: an untouched computer is never sent to
 * maintenance, a touched one that fails (or is cancelled) always is.
 */

import { afterAll, describe, expect, it } from 'vitest';
import type { AnyMachineSnapshot, EventObject } from 'xstate';
import {
  allowedEndStates,
  composeCaptureMachine,
  effectNames,
  operatingSystems,
  provisioners,
} from '../../machines/index.js';
import type {
  CaptureInput,
  CaptureResult,
  EndState,
  OsInput,
  OsName,
  OsResult,
  ProvisionerName,
} from '../../machines/types.js';
import { abstractContext, type CoverageLine, coverageOf, printCoverage, stepOutcomes } from './catalogue.js';
import { allNodeIds, buildGraph, type MachineGraph, type ModelPath, type Outcome } from './graph.js';
import {
  type Coverage,
  type Effect,
  formatEffect,
  newCoverage,
  replay,
  type Script,
  ScriptedExecutor,
  scriptFor,
} from './replay.js';

const IMAGE = { name: 'linux-Base1-v0', imageId: 1, revision: 0 };
const CANCEL = { type: 'CANCEL', reason: 'operator' } as const;

/**
 * The capture rules, written from the domain (docs/capture-flow.md), not read from the machines: which
 * forward step makes which undo owed, which effects move image bytes, which confirm the power state.
 */
const RULES: Record<
  ProvisionerName,
  {
    /** forward step (or `pre_capture` for the OS) -> the compensation its start makes owed */
    owes: Record<string, string>;
    /** forward step whose success settles a compensation */
    settles: Record<string, string>;
    copies: string[];
    powerConfirmed: string[];
    /** forward steps that touch the computer itself: power commands and waits, copies of its disk */
    touches: string[];
  }
> = {
  libvirt: {
    owes: { reserve: 'release_computer', copy_image: 'remove_copy', boot_test: 'remove_boot_test' },
    // A boot test that ended well removed its domain and overlay itself.
    settles: { boot_test: 'remove_boot_test' },
    copies: ['copy_image'],
    powerConfirmed: ['wait_power_off', 'wait_forced_off'],
    touches: ['request_power_off', 'wait_power_off', 'force_power_off', 'wait_forced_off', 'copy_image'],
  },
  vmware: {
    owes: {
      reserve: 'release_computer',
      clone_disk: 'remove_clone',
      copy_to_repository: 'remove_repository_copy',
    },
    settles: {},
    copies: ['clone_disk', 'copy_to_repository'],
    powerConfirmed: ['wait_power_off', 'wait_forced_off'],
    touches: [
      'request_power_off',
      'wait_power_off',
      'force_power_off',
      'wait_forced_off',
      'clone_disk',
      'repair_disk',
      'copy_to_repository',
    ],
  },
  xcat: {
    owes: { reserve: 'release_computer', set_capture_boot: 'reset_boot', pre_capture: 'remove_upload' },
    settles: { reset_boot: 'reset_boot' },
    copies: ['watch_upload'],
    powerConfirmed: ['wait_capture_env'],
    // set_capture_boot changes the node's boot setting in xCAT, which reset_boot undoes: not the node.
    touches: ['ensure_node_on', 'wait_capture_env', 'watch_upload'],
  },
  proxmox: {
    owes: { reserve: 'release_computer', copy_image: 'remove_copy' },
    settles: {},
    copies: ['copy_image'],
    powerConfirmed: ['wait_power_off', 'wait_forced_off'],
    touches: ['request_power_off', 'wait_power_off', 'force_power_off', 'wait_forced_off', 'copy_image'],
  },
};

function comparable(result: CaptureResult): unknown {
  return result.status === 'completed'
    ? { ...result, warnings: [] }
    : { ...result, warnings: [], cleanupFailures: result.cleanupFailures.length };
}

const OS_EFFECTS = new Set(
  (['linux', 'windows'] as const).flatMap((os) => effectNames(operatingSystems[os].machine)),
);
/** The OS's first step only connects and reads the boot id: refused there, nothing on the computer changed. */
const OS_LOOK_ONLY = 'ensure_responding';

interface Combination {
  provisioner: ProvisionerName;
  os: OsName;
  endState: EndState;
}

function combinations(): Combination[] {
  const out: Combination[] = [];
  for (const provisioner of Object.keys(provisioners) as ProvisionerName[]) {
    for (const os of ['linux', 'windows'] as const) {
      for (const endState of allowedEndStates(provisioner)) out.push({ provisioner, os, endState });
    }
  }
  return out;
}

const snapshotLookup = (graph: MachineGraph) => (k: string) => {
  const v = graph.adjacency[k as keyof typeof graph.adjacency];
  if (!v) throw new Error(`no snapshot ${k}`);
  return v.state;
};

interface OsWitness {
  output: OsResult;
  path: ModelPath;
  snapshotOf: (k: string) => AnyMachineSnapshot;
}

/**
 * One real OS path per kind of result the provisioner can tell apart, replayed to get the exact output
 * the OS sub-machine produces for it.
 */
async function osWitnesses(os: OsName, input: OsInput): Promise<OsWitness[]> {
  const machine = operatingSystems[os].machine;
  const graph = buildGraph({ machine, input, outcomes: stepOutcomes, abstractContext });
  const snapshotOf = snapshotLookup(graph);
  const byKind = new Map<string, OsWitness>();
  for (const path of graph.paths) {
    const out = path.final.output as OsResult;
    const kind = JSON.stringify(
      out.ok
        ? { ok: true, power: out.powerState, boot: out.bootId, warned: out.warnings.length > 0 }
        : { ok: false, code: out.error.code, warned: out.warnings.length > 0, touched: out.touched },
    );
    if (byKind.has(kind)) continue;
    const executor = new ScriptedExecutor();
    const script = scriptFor(path, snapshotOf);
    const { final } = await replay(
      machine.provide({ actors: executor.actors(effectNames(machine)) }),
      input,
      executor,
      script,
      undefined,
      newCoverage(),
    );
    byKind.set(kind, { output: final.output as OsResult, path, snapshotOf });
  }
  return [...byKind.values()];
}

/**
 * Where cleanup begins in a failed or cancelled capture's log: the longest tail made of compensations,
 * each at most once (xCAT's reset_boot is also a forward step; a failed forward reset_boot is followed
 * by its own compensation, so it cannot belong to the same tail).
 */
function cleanupStart(provisioner: ProvisionerName, log: Effect[]): number {
  const compensations = new Set(Object.values(RULES[provisioner].owes));
  let start = log.length;
  const seen = new Set<string>();
  while (start > 0) {
    const src = log[start - 1]?.src as string;
    if (!compensations.has(src) || seen.has(src)) break;
    seen.add(src);
    start -= 1;
  }
  return start;
}

/** The capture rules, checked on one effect log and the capture's result. */
function checkCaptureRules(provisioner: ProvisionerName, log: Effect[], result: CaptureResult): string[] {
  const rules = RULES[provisioner];
  const problems: string[] = [];
  const names = log.map((e) => e.src);
  const okAt = (src: string) => names.findIndex((n, i) => n === src && log[i]?.outcome === 'ok');
  const first = log[0];
  if (first?.src !== 'reserve') return ['the first effect is not reserve'];
  // A reservation cancelled while in flight may have taken the computer: cleanup releases it (a release of
  // a computer the capture does not hold is a no-op). One that failed took nothing.
  if (first.outcome === 'error') {
    if (log.length !== 1) problems.push('effects ran after the reservation failed');
    if (result.status !== 'failed') problems.push('a failed reservation did not fail the capture');
    return problems;
  }
  // Nothing touches image bytes before the computer is confirmed in the power state the copy needs.
  const firstCopy = names.findIndex((n) => rules.copies.includes(n));
  if (firstCopy >= 0) {
    const confirmed = log.findIndex((e) => rules.powerConfirmed.includes(e.src) && e.outcome === 'ok');
    if (confirmed < 0 || confirmed > firstCopy)
      problems.push(`${names[firstCopy]} ran before the power state was confirmed`);
    const lastOs = names.findLastIndex((n) => OS_EFFECTS.has(n) || n === 'os');
    if (lastOs > firstCopy) problems.push('the OS was still working when the copy started');
  }
  // A revision is recorded only after the copy it records was verified.
  const record = names.indexOf('record_revision');
  if (record >= 0) {
    const verified = okAt('verify_image');
    const lastCopy = names.findLastIndex((n) => rules.copies.includes(n));
    if (verified < 0 || verified > record || verified < lastCopy)
      problems.push('record_revision ran without a verified copy');
  }
  // A boot test, when it runs, boots the verified image, and a revision is recorded only after it passed.
  const boot = names.indexOf('boot_test');
  if (boot >= 0) {
    if (okAt('verify_image') < 0 || okAt('verify_image') > boot)
      problems.push('boot_test ran before verify_image');
    if (record >= 0 && (okAt('boot_test') < 0 || okAt('boot_test') > record))
      problems.push('record_revision ran without a passed boot test');
  }
  if (result.status === 'completed') {
    if (log.at(-1)?.src !== 'record_revision' || log.at(-1)?.outcome !== 'ok')
      problems.push('completed without record_revision as its last effect');
    if (names.includes('release_computer')) problems.push('a completed capture ran release_computer');
    return problems;
  }
  // Failed or cancelled: the tail of the log is the cleanup, each compensation once.
  const start = cleanupStart(provisioner, log);
  const owed: string[] = [];
  log.slice(0, start).forEach((e, i) => {
    const step = OS_EFFECTS.has(e.src) || e.src === 'os' ? 'pre_capture' : e.src;
    const owes = rules.owes[step];
    if (owes && !owed.includes(owes) && names.indexOf(e.src) === i) owed.push(owes);
    const settles = rules.settles[step];
    if (settles && e.outcome === 'ok') owed.splice(owed.indexOf(settles), 1);
  });
  const cleanup = names.slice(start);
  const expected = [...owed].reverse();
  if (JSON.stringify(cleanup) !== JSON.stringify(expected))
    problems.push(`cleanup ran ${cleanup.join(' > ')}, expected ${expected.join(' > ')}`);
  const release = log.at(-1);
  if (release?.src !== 'release_computer') {
    problems.push('the computer was not released last');
  } else {
    // Touched: a forward step that touches the computer started, the OS went past its look-only first
    // step (or was stopped or crashed while running: nobody can tell how far it got), or an undo failed.
    const touched =
      log
        .slice(0, start)
        .some(
          (e) =>
            rules.touches.includes(e.src) ||
            e.src === 'os' ||
            (OS_EFFECTS.has(e.src) && (e.src !== OS_LOOK_ONLY || e.outcome === 'hang')),
        ) || log.slice(start, -1).some((e) => e.outcome === 'error');
    const outcome = (release.input as { release?: { outcome?: string } }).release?.outcome;
    if (!touched && outcome !== 'restore')
      problems.push(`an untouched computer was sent to ${outcome} (never to maintenance)`);
    if (touched && outcome !== 'maintenance')
      problems.push(`a touched computer that ${result.status} was released to ${outcome}, not maintenance`);
  }
  return problems;
}

const coverage = Object.fromEntries(Object.keys(provisioners).map((p) => [p, newCoverage()])) as Record<
  ProvisionerName,
  Coverage
>;
const reachable = Object.fromEntries(Object.keys(provisioners).map((p) => [p, new Set<string>()])) as Record<
  ProvisionerName,
  Set<string>
>;
let pathsReplayed = 0;

describe('effect names', () => {
  it('the OS and provisioner effects never share a name (one executor serves both)', () => {
    for (const { machine } of Object.values(provisioners)) {
      const shared = effectNames(machine).filter((n) => OS_EFFECTS.has(n));
      expect(shared).toEqual([]);
    }
  });
});

describe.each(combinations())('$provisioner capture of $os, end state $endState', (c) => {
  const spec = provisioners[c.provisioner].spec;
  const machine = provisioners[c.provisioner].machine;
  const input: CaptureInput = {
    captureId: 'cap-1',
    computer: 'pc1',
    os: c.os,
    image: IMAGE,
    endState: c.endState,
  };
  const osInput: OsInput = {
    computer: 'pc1',
    image: IMAGE,
    endState: c.endState,
    provisionerWatchesReturn: spec.watchesReturn,
    sysprep: c.os === 'windows' && spec.sysprepByDefault,
  };
  let witnesses: OsWitness[];
  let graph: MachineGraph;

  it('has no dead ends and reaches completed, failed and cancelled', async () => {
    witnesses = await osWitnesses(c.os, osInput);
    expect(witnesses.some((w) => w.output.ok)).toBe(true);
    expect(witnesses.some((w) => !w.output.ok)).toBe(true);
    const outcomes = (id: string, snapshot: AnyMachineSnapshot): Outcome[] =>
      id === 'os'
        ? [
            ...witnesses.map((w): Outcome => ({ kind: 'done', output: w.output })),
            { kind: 'error', error: { code: 'STEP_FAILED', message: 'the OS sub-machine crashed' } },
          ]
        : stepOutcomes(id, snapshot);
    graph = buildGraph({ machine, input, outcomes, externalEvents: [CANCEL], abstractContext });
    for (const n of graph.reachableNodes) reachable[c.provisioner].add(n);
    expect(graph.deadEnds).toEqual([]);
    expect([...graph.finalsReached].sort()).toEqual(['cancelled', 'completed', 'failed']);
  });

  it('every generated path runs as predicted with the real OS sub-machine and keeps the capture rules', async () => {
    const snapshotOf = snapshotLookup(graph);
    const osEffects = effectNames(operatingSystems[c.os].machine);
    // How failed captures released the computer, and whether one the OS refused in its look-only step did.
    const releases = new Set<string>();
    for (const path of graph.paths) {
      const executor = new ScriptedExecutor();
      const osCrashes = path.events.some((e) => e.type === 'xstate.error.actor.os');
      const provisionerEffects = effectNames(machine).filter((n) => osCrashes || n !== 'os');
      const provided = osCrashes
        ? machine.provide({ actors: executor.actors(provisionerEffects) })
        : composeCaptureMachine({
            provisioner: c.provisioner,
            os: c.os,
            provisionerActors: executor.actors(provisionerEffects),
            osActors: executor.actors(osEffects),
          });
      // The OS result a path asks for is produced by the OS path that ends in it; a CANCEL during
      // pre_capture arrives while the OS's first step is still running.
      const expand = (id: string, event: EventObject): Script | undefined => {
        if (id !== 'os' || osCrashes) return undefined;
        if (event.type === CANCEL.type) {
          return {
            expectedLog: [formatEffect({ src: 'ensure_responding', outcome: 'hang' })],
            cancels: true,
            enqueue: (e) => e.enqueue('ensure_responding', { kind: 'hang' }),
          };
        }
        const wanted = (event as { output?: unknown }).output;
        const witness = witnesses.find((w) => w.output === wanted);
        if (!witness) throw new Error('no OS path produces the result this path needs');
        return scriptFor(witness.path, witness.snapshotOf);
      };
      const script = scriptFor(path, snapshotOf, expand);
      const { final, log } = await replay(provided, input, executor, script, CANCEL, coverage[c.provisioner]);
      pathsReplayed += 1;
      const trace = log.map(formatEffect);
      expect(trace).toEqual(script.expectedLog);
      expect(final.value).toEqual(path.final.value);
      const result = final.output as CaptureResult;
      // The graph merges snapshots that differ only in which warnings and cleanup failures they carry,
      // so those are checked against the effect log instead of the path's representative.
      expect(comparable(result)).toEqual(comparable(path.final.output as CaptureResult));
      for (const w of result.warnings) expect(log.map((e) => e.src)).toContain(w.step);
      if (result.status !== 'completed') {
        const failedCleanup = log
          .slice(cleanupStart(c.provisioner, log))
          .filter((e) => e.outcome === 'error')
          .map((e) => e.src);
        expect(result.cleanupFailures.map((f) => f.step)).toEqual(failedCleanup);
      }
      expect(checkCaptureRules(c.provisioner, log, result), trace.join(', ')).toEqual([]);
      const release = log.at(-1);
      if (result.status === 'failed' && release?.src === 'release_computer') {
        const outcome = (release.input as { release?: { outcome?: string } }).release?.outcome;
        const osRefused = log.some((e) => e.src === OS_LOOK_ONLY && e.outcome === 'error');
        releases.add(`${outcome}${osRefused ? ' after the OS refused' : ''}`);
      }
    }
    // The generated paths include failures on both sides of the first touch, the OS's refusal among them.
    expect([...releases]).toEqual(
      expect.arrayContaining(['maintenance', 'restore', 'restore after the OS refused']),
    );
  });
});

describe.each(Object.keys(provisioners) as ProvisionerName[])('%s machine', (p) => {
  it('every state is reachable under some OS and end state', () => {
    expect(allNodeIds(provisioners[p].machine).filter((n) => !reachable[p].has(n))).toEqual([]);
  });
});

afterAll(() => {
  const report: CoverageLine[] = (Object.keys(provisioners) as ProvisionerName[]).map((p) =>
    coverageOf(provisioners[p].machine, coverage[p]),
  );
  printCoverage(`Capture machine path coverage (${pathsReplayed} generated paths replayed):`, report);
  for (const line of report) {
    expect(line.missingStates, `${line.machine}: states never entered`).toEqual([]);
    expect(line.missingTransitions, `${line.machine}: transitions never taken`).toEqual([]);
  }
});
