/**
 * Whether a stored snapshot can be resumed by the machine this code runs, against small real xstate
 * machines (a step actor, and a sub-machine with a step of its own, like the capture machines' OS part):
 * the machine's version, each reason to refuse a snapshot, and the steps a resume runs again.
 */
import { describe, expect, it } from 'vitest';
import { type AnyStateMachine, createActor, createMachine, fromPromise, setup } from 'xstate';
import { composeCaptureMachine, effectNames } from '../../machines/index.js';
import { inFlightSteps, machineVersion, snapshotProblem } from '../../src/runner/resume.js';

/** A step that never settles: the snapshot is taken while it runs. */
const pending = () => fromPromise<string, void>(() => new Promise<string>(() => undefined));

function subMachine(extraState = false) {
  return setup({ actors: { innerStep: pending() } }).createMachine({
    id: 'sub',
    initial: 'busy',
    states: {
      busy: { invoke: { id: 'inner', src: 'innerStep' } },
      idle: {},
      ...(extraState ? { extra: {} } : {}),
    },
  });
}

type Ev = { type: 'GO' } | { type: 'NEST' } | { type: 'BOTH' };

function harness(
  options: { extraState?: boolean; sub?: AnyStateMachine; initial?: 'idle' | 'working' } = {},
) {
  return setup({
    types: {} as { context: { count: number; note: string }; events: Ev },
    actors: { fetchThing: pending(), sub: options.sub ?? subMachine() },
  }).createMachine({
    id: 'harness',
    context: { count: 0, note: '' },
    initial: options.initial ?? 'idle',
    states: {
      idle: { on: { GO: 'working', NEST: 'nested', BOTH: 'both' } },
      working: { invoke: { id: 'fetch', src: 'fetchThing' } },
      nested: { invoke: { id: 'os', src: 'sub' } },
      both: {
        type: 'parallel',
        states: {
          left: { invoke: { id: 'fetch', src: 'fetchThing' } },
          right: { invoke: { id: 'os', src: 'sub' } },
        },
      },
      ...(options.extraState ? { extra: {} } : {}),
    },
  });
}

const KEYS = ['count', 'note'] as const;

// biome-ignore lint/suspicious/noExplicitAny: the tests reach into and edit arbitrary parts of a JSON snapshot.
type JsonSnapshot = Record<string, any>;

/** The persisted snapshot of `machine` after `event` (JSON round-tripped, as the store keeps it). */
function persisted(machine: AnyStateMachine, event?: Ev): JsonSnapshot {
  const actor = createActor(machine).start();
  if (event) actor.send(event);
  const snap = JSON.parse(JSON.stringify(actor.getPersistedSnapshot()));
  actor.stop();
  return snap as JsonSnapshot;
}

describe('machineVersion', () => {
  it('is `<id>@<16 hex>`, the same for one machine and for the same definition built again', () => {
    const m = harness();
    const v = machineVersion(m);
    expect(v).toMatch(/^harness@[0-9a-f]{16}$/);
    expect(machineVersion(m)).toBe(v);
    // A new process builds its machines again: a snapshot it wrote must keep its version.
    expect(machineVersion(harness())).toBe(v);
  });

  it('differs when the definition differs', () => {
    expect(machineVersion(harness({ extraState: true }))).not.toBe(machineVersion(harness()));
  });

  it('differs when only an invoked sub-machine’s definition differs', () => {
    const plain = harness();
    const changed = plain.provide({ actors: { sub: subMachine(true) } });
    // Precondition: the parent's own definition is the same in both.
    expect(JSON.stringify(changed.root.definition)).toBe(JSON.stringify(plain.root.definition));
    expect(machineVersion(changed)).not.toBe(machineVersion(plain));
  });

  it('does not depend on the step implementations provided, nor on the order actors are listed in', () => {
    const plain = harness();
    const real = plain.provide({ actors: { fetchThing: fromPromise(async () => 'real') } });
    expect(machineVersion(real)).toBe(machineVersion(plain));

    const two = (order: 'ab' | 'ba') => {
      const a = subMachine();
      const b = subMachine(true);
      const actors = order === 'ab' ? { a, b } : { b, a };
      return setup({ actors }).createMachine({
        id: 'two',
        type: 'parallel',
        states: { x: { invoke: { src: 'a' } }, y: { invoke: { src: 'b' } } },
      });
    };
    expect(machineVersion(two('ab'))).toBe(machineVersion(two('ba')));
  });

  it('tells the real capture machines apart by their OS sub-machine, and is stable for each', () => {
    const linux = machineVersion(composeCaptureMachine({ provisioner: 'libvirt', os: 'linux' }));
    const windows = machineVersion(composeCaptureMachine({ provisioner: 'libvirt', os: 'windows' }));
    expect(linux).toMatch(/^libvirt@[0-9a-f]{16}$/);
    expect(windows).not.toBe(linux);
    expect(machineVersion(composeCaptureMachine({ provisioner: 'libvirt', os: 'linux' }))).toBe(linux);
  });
});

describe('snapshotProblem', () => {
  const m = harness();

  it('accepts the persisted snapshots of the machine, in every state', () => {
    for (const event of [undefined, { type: 'GO' }, { type: 'NEST' }, { type: 'BOTH' }] as const)
      expect(snapshotProblem(m, persisted(m, event), KEYS), event?.type).toBeUndefined();
  });

  it('accepts a real capture machine’s snapshot taken while its first step runs', () => {
    const shape = composeCaptureMachine({ provisioner: 'libvirt', os: 'linux' });
    const stalled = Object.fromEntries(
      effectNames(shape)
        .filter((n) => n !== 'os')
        .map((n) => [n, pending()]),
    );
    const capture = composeCaptureMachine({
      provisioner: 'libvirt',
      os: 'linux',
      provisionerActors: stalled,
    });
    const actor = createActor(capture, {
      input: {
        captureId: 'c1',
        computer: 'pc1',
        os: 'linux',
        image: { name: 'linux-Base-v0', imageId: 1, revision: 0 },
      },
    }).start();
    const fresh = Object.entries(actor.getSnapshot().context)
      .filter(([, v]) => v !== undefined)
      .map(([k]) => k);
    const snap = JSON.parse(JSON.stringify(actor.getPersistedSnapshot()));
    actor.stop();
    expect(snapshotProblem(capture, snap, fresh)).toBeUndefined();
    expect(inFlightSteps(snap).size).toBe(1);
    expect(snapshotProblem(capture, { ...snap, children: {} }, fresh)).toMatch(
      /^libvirt: state invokes '.+' but the snapshot has no such child$/,
    );
  });

  it.each([
    ['null', null],
    ['a string', 'active'],
  ])('refuses %s', (_, value) => {
    expect(snapshotProblem(m, value, KEYS)).toBe('harness: no snapshot');
  });

  it('refuses a snapshot that is not active', () => {
    const s = { ...persisted(m), status: 'done' };
    expect(snapshotProblem(m, s, KEYS)).toBe('harness: snapshot status is done, not active');
    const { status: _, ...noStatus } = persisted(m);
    expect(snapshotProblem(m, noStatus, KEYS)).toBe('harness: snapshot status is undefined, not active');
  });

  it('refuses a snapshot with no state value', () => {
    expect(snapshotProblem(m, { ...persisted(m), value: null }, KEYS)).toBe(
      'harness: snapshot has no state value',
    );
    const { value: _, ...noValue } = persisted(m);
    expect(snapshotProblem(m, noValue, KEYS)).toBe('harness: snapshot has no state value');
  });

  it('refuses a snapshot with no context', () => {
    expect(snapshotProblem(m, { ...persisted(m), context: null }, KEYS)).toBe(
      'harness: snapshot has no context',
    );
    expect(snapshotProblem(m, { ...persisted(m), context: 'x' }, KEYS)).toBe(
      'harness: snapshot has no context',
    );
  });

  it('lists the context fields a fresh context has and the snapshot lacks', () => {
    const s = { ...persisted(m), context: { note: 'n' } };
    expect(snapshotProblem(m, s, ['count', 'note', 'facts'])).toBe('harness: context lacks count, facts');
    expect(snapshotProblem(m, s, ['note'])).toBeUndefined();
  });

  it('refuses a state the machine does not have', () => {
    expect(snapshotProblem(m, { ...persisted(m), value: 'gone' }, KEYS)).toMatch(/^harness: .*'gone'/);
    const nested = { ...persisted(m, { type: 'BOTH' }) };
    nested.value = { both: { left: {}, middle: {} } };
    expect(snapshotProblem(m, nested, KEYS)).toMatch(/^harness: .*'middle'/);
  });

  it('refuses an incomplete state value whose filled-in states invoke steps the snapshot lacks', () => {
    // xstate restores `{ both: { left: {} } }` as both regions: `right` would wait forever for its `os`.
    const s = persisted(m, { type: 'BOTH' });
    s.value = { both: { left: {} } };
    delete s.children.os;
    expect(snapshotProblem(m, s, KEYS)).toBe(
      "harness: state invokes 'os' but the snapshot has no such child",
    );
    // An empty value is restored as the initial state, here `working`, whose step is missing too.
    const fromWorking = harness({ initial: 'working' });
    const empty = { ...persisted(m), value: {}, children: {} };
    expect(snapshotProblem(fromWorking, empty, KEYS)).toBe(
      "harness: state invokes 'fetch' but the snapshot has no such child",
    );
  });

  it('refuses a state whose invoked step is missing from the snapshot', () => {
    const s = persisted(m, { type: 'GO' });
    delete s.children.fetch;
    expect(snapshotProblem(m, s, KEYS)).toBe(
      "harness: state invokes 'fetch' but the snapshot has no such child",
    );
  });

  it('refuses a parallel state missing one region’s child', () => {
    const s = persisted(m, { type: 'BOTH' });
    delete s.children.os;
    expect(snapshotProblem(m, s, KEYS)).toBe(
      "harness: state invokes 'os' but the snapshot has no such child",
    );
  });

  it('refuses a child that runs another actor than the state invokes', () => {
    const s = persisted(m, { type: 'GO' });
    s.children.fetch.src = 'sub';
    expect(snapshotProblem(m, s, KEYS)).toBe(
      "harness: child 'fetch' runs 'sub', the machine invokes 'fetchThing'",
    );
  });

  it('refuses a child no active state invokes', () => {
    const s = persisted(m, { type: 'GO' });
    s.children.stray = s.children.fetch;
    expect(snapshotProblem(m, s, KEYS)).toBe(
      "harness: the snapshot has a child 'stray' no active state invokes",
    );
    const idle = persisted(m);
    idle.children = { fetch: s.children.fetch };
    expect(snapshotProblem(m, idle, KEYS)).toBe(
      "harness: the snapshot has a child 'fetch' no active state invokes",
    );
  });

  it('refuses a child whose actor the machine does not provide', () => {
    // The same states, invoking the same names, but with no implementation given for them.
    const bare = createMachine({
      id: 'harness',
      context: { count: 0, note: '' },
      initial: 'idle',
      states: { idle: {}, working: { invoke: { id: 'fetch', src: 'fetchThing' } } },
    });
    expect(snapshotProblem(bare, persisted(m, { type: 'GO' }), KEYS)).toBe(
      "harness: child 'fetch' runs 'fetchThing', which the machine does not provide",
    );
  });

  it('checks a running sub-machine’s snapshot too, naming it by its path', () => {
    const s = persisted(m, { type: 'NEST' });
    expect(s.children.os.snapshot.value).toBe('busy');
    const gone = structuredClone(s);
    delete gone.children.os.snapshot.children.inner;
    expect(snapshotProblem(m, gone, KEYS)).toBe(
      "harness.os: state invokes 'inner' but the snapshot has no such child",
    );
    const badState = structuredClone(s);
    badState.children.os.snapshot.value = 'vanished';
    expect(snapshotProblem(m, badState, KEYS)).toMatch(/^harness\.os: .*'vanished'/);
    // A sub-machine's context is its own: the parent's fields are not asked of it.
    expect(snapshotProblem(m, s, [...KEYS, 'onlyInParent'])).toBe('harness: context lacks onlyInParent');
  });

  it('checks every running sub-machine, not only the first one', () => {
    const two = setup({ actors: { sub: subMachine() } }).createMachine({
      id: 'two',
      type: 'parallel',
      states: {
        a: { invoke: { id: 'first', src: 'sub' } },
        b: { invoke: { id: 'second', src: 'sub' } },
      },
    });
    const s = persisted(two);
    expect(Object.keys(s.children).sort()).toEqual(['first', 'second']);
    expect(snapshotProblem(two, s, [])).toBeUndefined();
    // Each one broken while the other is sound: whichever is looked at first, the broken one is found.
    for (const id of ['first', 'second']) {
      const broken = structuredClone(s);
      delete broken.children[id].snapshot.children.inner;
      expect(snapshotProblem(two, broken, []), id).toBe(
        `two.${id}: state invokes 'inner' but the snapshot has no such child`,
      );
    }
  });

  it('does not look into a sub-machine that has finished', () => {
    const s = persisted(m, { type: 'NEST' });
    s.children.os.snapshot.status = 'done';
    s.children.os.snapshot.value = 'vanished';
    expect(snapshotProblem(m, s, KEYS)).toBeUndefined();
  });
});

describe('inFlightSteps', () => {
  const m = harness();

  it('names the running step actors, also those of a running sub-machine, not the sub-machine', () => {
    expect(inFlightSteps(persisted(m))).toEqual(new Set());
    expect(inFlightSteps(persisted(m, { type: 'GO' }))).toEqual(new Set(['fetchThing']));
    expect(inFlightSteps(persisted(m, { type: 'NEST' }))).toEqual(new Set(['innerStep']));
    expect(inFlightSteps(persisted(m, { type: 'BOTH' }))).toEqual(new Set(['fetchThing', 'innerStep']));
  });

  it('ignores finished children, and what a finished sub-machine still holds', () => {
    const s = persisted(m, { type: 'BOTH' });
    s.children.fetch.snapshot.status = 'done';
    expect(inFlightSteps(s)).toEqual(new Set(['innerStep']));
    s.children.os.snapshot.status = 'done';
    expect(inFlightSteps(s)).toEqual(new Set());
  });

  it('finds nothing in no snapshot', () => {
    expect(inFlightSteps(undefined)).toEqual(new Set());
    expect(inFlightSteps({ status: 'active', value: 'idle' })).toEqual(new Set());
  });
});
