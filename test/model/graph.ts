/**
 * Model-based path generation for the capture machines on top of `xstate/graph`.
 *
 * xstate/graph traverses a machine with pure transitions; invoked actors never run there, so the events
 * that would end them (`xstate.done.actor.<id>` / `xstate.error.actor.<id>`) are synthesised here from an
 * outcome catalogue, per active invoke. From the adjacency map we build, for every edge, one complete
 * path: the shortest way to the edge's source, the edge, and the shortest way on to a final state.
 */
import {
  type AnyActorScope,
  type AnyMachineSnapshot,
  type AnyStateMachine,
  type AnyStateNode,
  createEmptyActor,
  type EventObject,
} from 'xstate';
import { type AdjacencyMap, getAdjacencyMap } from 'xstate/graph';

export type Outcome =
  | { kind: 'done'; output: unknown }
  | { kind: 'error'; error: { code: string; message: string } };

export interface GraphOptions {
  machine: AnyStateMachine;
  input: unknown;
  /** Outcomes offered for the invoke `id` active in `snapshot`. */
  outcomes: (id: string, snapshot: AnyMachineSnapshot) => Outcome[];
  /** Events a user may send at any time (CANCEL); offered where the machine would take them. */
  externalEvents?: EventObject[];
  /** Reduces context to what matters for control flow, so equivalent snapshots merge. */
  abstractContext?: (context: Record<string, unknown>) => unknown;
}

export interface ModelPath {
  /** Events in order, from the initial snapshot to a final one. */
  events: EventObject[];
  /** Snapshot keys visited: before the first event, then after each. */
  keys: string[];
  final: AnyMachineSnapshot;
}

export interface MachineGraph {
  adjacency: AdjacencyMap<AnyMachineSnapshot, EventObject>;
  initialKey: string;
  /** State node ids active in some reachable snapshot. */
  reachableNodes: Set<string>;
  /** Keys of non-final snapshots from which no final snapshot can be reached. */
  deadEnds: string[];
  /** Top-level final state keys reached (e.g. `completed`, `failed`, `cancelled`). */
  finalsReached: Set<string>;
  paths: ModelPath[];
  edgeCount: number;
}

export function activeNodes(snapshot: AnyMachineSnapshot): AnyStateNode[] {
  // `_nodes` is the snapshot's own list of active state nodes: public in the type, internal by name.
  return snapshot._nodes as AnyStateNode[];
}

export function activeInvokes(snapshot: AnyMachineSnapshot): { id: string; src: string }[] {
  return activeNodes(snapshot).flatMap((n) => n.invoke.map((i) => ({ id: i.id, src: String(i.src) })));
}

export type OutcomeEvent =
  | { type: string; output: unknown }
  | { type: string; error: { code: string; message: string } };

export function outcomeEvent(id: string, outcome: Outcome): OutcomeEvent {
  return outcome.kind === 'done'
    ? { type: `xstate.done.actor.${id}`, output: outcome.output }
    : { type: `xstate.error.actor.${id}`, error: outcome.error };
}

export function buildGraph(o: GraphOptions): MachineGraph {
  const abstract = o.abstractContext ?? ((c) => c);
  const key = (s: AnyMachineSnapshot) =>
    JSON.stringify({ status: s.status, value: s.value, context: abstract(s.context) });

  const adjacency = getAdjacencyMap(o.machine, {
    input: o.input,
    serializeState: key,
    events: (snapshot: AnyMachineSnapshot) => {
      if (snapshot.status !== 'active') return [];
      const invokeEvents = activeInvokes(snapshot).flatMap(({ id }) =>
        o.outcomes(id, snapshot).map((outcome) => outcomeEvent(id, outcome)),
      );
      const external = (o.externalEvents ?? []).filter((e) => snapshot.can(e));
      return [...invokeEvents, ...external];
    },
  }) as AdjacencyMap<AnyMachineSnapshot, EventObject>;

  const keys = Object.keys(adjacency);
  const initialKey = keys[0];
  if (initialKey === undefined) throw new Error('empty graph');

  type Edge = { event: EventObject; to: string };
  const edges = new Map<string, Edge[]>();
  let edgeCount = 0;
  for (const k of keys) {
    const list = Object.values(adjacency[k as keyof typeof adjacency]?.transitions ?? {}).map((t) => ({
      event: t.event,
      to: key(t.state),
    }));
    edges.set(k, list);
    edgeCount += list.length;
  }
  const snapshotOf = (k: string) => {
    const v = adjacency[k as keyof typeof adjacency];
    if (!v) throw new Error(`unknown snapshot ${k}`);
    return v.state;
  };
  const isFinal = (k: string) => snapshotOf(k).status === 'done';

  // Shortest way in: BFS from the initial snapshot.
  const cameFrom = new Map<string, { from: string; event: EventObject } | null>([[initialKey, null]]);
  const queue = [initialKey];
  while (queue.length) {
    const k = queue.shift() as string;
    for (const e of edges.get(k) ?? []) {
      if (!cameFrom.has(e.to)) {
        cameFrom.set(e.to, { from: k, event: e.event });
        queue.push(e.to);
      }
    }
  }
  // Shortest way out: BFS backwards from every final snapshot.
  const reverse = new Map<string, { from: string; event: EventObject }[]>();
  for (const [k, list] of edges) {
    for (const e of list) reverse.set(e.to, [...(reverse.get(e.to) ?? []), { from: k, event: e.event }]);
  }
  const goesTo = new Map<string, { to: string; event: EventObject } | null>();
  const back = keys.filter(isFinal);
  for (const k of back) goesTo.set(k, null);
  while (back.length) {
    const k = back.shift() as string;
    for (const r of reverse.get(k) ?? []) {
      if (!goesTo.has(r.from)) {
        goesTo.set(r.from, { to: k, event: r.event });
        back.push(r.from);
      }
    }
  }

  const prefix = (k: string): { events: EventObject[]; keys: string[] } => {
    const events: EventObject[] = [];
    const visited = [k];
    let step = cameFrom.get(k);
    while (step) {
      events.unshift(step.event);
      visited.unshift(step.from);
      step = cameFrom.get(step.from);
    }
    return { events, keys: visited };
  };
  const suffix = (k: string): { events: EventObject[]; keys: string[]; last: string } => {
    const events: EventObject[] = [];
    const visited: string[] = [];
    let at = k;
    let step = goesTo.get(at);
    while (step) {
      events.push(step.event);
      visited.push(step.to);
      at = step.to;
      step = goesTo.get(at);
    }
    return { events, keys: visited, last: at };
  };

  const seen = new Set<string>();
  const paths: ModelPath[] = [];
  for (const [from, list] of edges) {
    for (const e of list) {
      const head = prefix(from);
      const tail = suffix(e.to);
      if (!isFinal(tail.last)) continue; // a dead end: reported below, not a path
      const events = [...head.events, e.event, ...tail.events];
      const id = events.map((ev) => JSON.stringify(ev)).join('\n');
      if (seen.has(id)) continue;
      seen.add(id);
      paths.push({ events, keys: [...head.keys, e.to, ...tail.keys], final: snapshotOf(tail.last) });
    }
  }

  const reachableNodes = new Set<string>();
  const finalsReached = new Set<string>();
  for (const k of keys) {
    const s = snapshotOf(k);
    for (const n of activeNodes(s)) reachableNodes.add(n.id);
    if (s.status === 'done') finalsReached.add(String(s.value));
  }
  // Transient (eventless) states are passed through within one macrostep: collect them from microsteps.
  const scope = mockActorScope();
  for (const [from, list] of edges) {
    if (!cameFrom.has(from)) continue;
    for (const e of list) {
      for (const micro of o.machine.microstep(snapshotOf(from), e.event, scope)) {
        for (const n of activeNodes(micro)) reachableNodes.add(n.id);
      }
    }
  }
  const deadEnds = keys.filter((k) => !isFinal(k) && !goesTo.has(k));
  return { adjacency, initialKey, reachableNodes, deadEnds, finalsReached, paths, edgeCount };
}

/** The same inert actor scope xstate/graph traverses with: actions are resolved, never executed. */
function mockActorScope(): AnyActorScope {
  const empty = createEmptyActor();
  return {
    self: empty,
    logger: () => {},
    id: '',
    sessionId: 'model',
    defer: () => {},
    system: empty.system,
    stopChild: () => {},
    emit: () => {},
    actionExecutor: () => {},
  } as unknown as AnyActorScope;
}

/** Every state node of a machine, by id. */
export function allNodeIds(machine: AnyStateMachine): string[] {
  const ids: string[] = [];
  const walk = (n: AnyStateNode) => {
    ids.push(n.id);
    for (const child of Object.values(n.states)) walk(child as AnyStateNode);
  };
  walk(machine.root);
  return ids;
}

/** A stable key for a declared transition: source node, event, position among that node's candidates. */
export function transitionKey(t: { source: AnyStateNode; eventType: string }, index: number): string {
  return `${t.source.id} | ${t.eventType || '(always)'} | #${index}`;
}

/** Every transition a machine declares (event, invoke done/error, eventless), by key. */
export function allTransitionKeys(machine: AnyStateMachine): string[] {
  const out: string[] = [];
  const walk = (n: AnyStateNode) => {
    for (const list of n.transitions.values()) {
      list.forEach((t, i) => {
        out.push(transitionKey(t, i));
      });
    }
    (n.always ?? []).forEach((t, i) => {
      out.push(transitionKey(t, i));
    });
    for (const child of Object.values(n.states)) walk(child as AnyStateNode);
  };
  walk(machine.root);
  return out;
}

/** The key of a transition as taken at run time (its position among its own source's candidates). */
export function takenTransitionKey(t: { source: AnyStateNode; eventType: string }): string {
  const candidates: unknown[] = t.eventType
    ? (t.source.transitions.get(t.eventType) ?? [])
    : (t.source.always ?? []);
  return transitionKey(t, candidates.indexOf(t));
}
