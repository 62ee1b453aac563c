/**
 * What resuming a capture from its stored snapshot needs: the version of the machine that wrote it, the
 * check that a snapshot still fits the machine this code runs, and the steps that were in flight (xstate
 * starts an invoked promise again from the beginning when it restores one).
 */
import { createHash } from 'node:crypto';
import type { AnyStateMachine, StateValue } from 'xstate';

const versions = new WeakMap<AnyStateMachine, string>();

/**
 * Content hash of a machine's definition, its invoked machines' included (the OS sub-machine). Computed
 * once per machine object (the runner shares one per provisioner and OS): a machine does not change.
 */
export function machineVersion(machine: AnyStateMachine): string {
  let version = versions.get(machine);
  if (version === undefined) {
    version = computeVersion(machine);
    versions.set(machine, version);
  }
  return version;
}

function computeVersion(machine: AnyStateMachine): string {
  const hash = createHash('sha256');
  hash.update(JSON.stringify(machine.root.definition));
  const actors = machine.implementations.actors as Record<string, unknown>;
  for (const name of Object.keys(actors).sort()) {
    const child = actors[name];
    if (isMachine(child)) hash.update(`\n${name}\n${JSON.stringify(child.root.definition)}`);
  }
  return `${machine.id}@${hash.digest('hex').slice(0, 16)}`;
}

function isMachine(logic: unknown): logic is AnyStateMachine {
  return typeof logic === 'object' && logic !== null && 'root' in logic && 'resolveState' in logic;
}

interface PersistedChild {
  snapshot?: { status?: unknown; value?: unknown; context?: unknown; children?: unknown };
  src?: unknown;
}

interface PersistedMachine {
  status?: unknown;
  value?: unknown;
  context?: unknown;
  children?: Record<string, PersistedChild>;
}

type StateNodeLike = AnyStateMachine['root'];

/** Every state node active in `value`, parents included. */
function activeNodes(node: StateNodeLike, value: StateValue): StateNodeLike[] {
  const out: StateNodeLike[] = [node];
  const entries: [string, StateValue | undefined][] =
    typeof value === 'string' ? [[value, undefined]] : Object.entries(value);
  for (const [key, sub] of entries) {
    const child = node.states[key];
    if (!child) throw new Error(`state '${key}' does not exist in '${node.id}'`);
    out.push(...(sub === undefined ? [child] : activeNodes(child, sub)));
  }
  return out;
}

/**
 * Why `snapshot` cannot be restored into `machine`, or undefined when it can: its states must exist, its
 * context must have the fields a fresh context has, and its children must be exactly the actors its
 * active states invoke (a restored state whose invoked step is missing would wait forever).
 */
export function snapshotProblem(
  machine: AnyStateMachine,
  snapshot: unknown,
  freshContextKeys: readonly string[],
  path = machine.id,
): string | undefined {
  if (typeof snapshot !== 'object' || snapshot === null) return `${path}: no snapshot`;
  const s = snapshot as PersistedMachine;
  if (s.status !== 'active') return `${path}: snapshot status is ${String(s.status)}, not active`;
  if (s.value === undefined || s.value === null) return `${path}: snapshot has no state value`;
  if (typeof s.context !== 'object' || s.context === null) return `${path}: snapshot has no context`;
  const missing = freshContextKeys.filter((k) => !(k in (s.context as object)));
  if (missing.length) return `${path}: context lacks ${missing.join(', ')}`;
  let nodes: StateNodeLike[];
  try {
    // The states xstate will restore: it completes a partial value (a parallel state's missing region, an
    // empty value) with initial states, whose invoked steps must be in the snapshot too.
    const resolved = machine.resolveState({ value: s.value as StateValue, context: s.context });
    nodes = activeNodes(machine.root, resolved.value);
  } catch (err) {
    return `${path}: ${(err as Error).message}`;
  }
  const expected = new Map<string, unknown>();
  for (const node of nodes) for (const inv of node.invoke) expected.set(inv.id, inv.src);
  const children = s.children ?? {};
  for (const [id, src] of expected) {
    const child = children[id];
    if (!child) return `${path}: state invokes '${id}' but the snapshot has no such child`;
    if (typeof src === 'string' && child.src !== src)
      return `${path}: child '${id}' runs '${String(child.src)}', the machine invokes '${src}'`;
  }
  for (const id of Object.keys(children)) {
    if (!expected.has(id)) return `${path}: the snapshot has a child '${id}' no active state invokes`;
  }
  const actors = machine.implementations.actors as Record<string, unknown>;
  for (const [id, child] of Object.entries(children)) {
    const logic = typeof child.src === 'string' ? actors[child.src] : undefined;
    if (!logic)
      return `${path}: child '${id}' runs '${String(child.src)}', which the machine does not provide`;
    if (isMachine(logic) && child.snapshot?.status === 'active') {
      const problem = snapshotProblem(logic, child.snapshot, [], `${path}.${id}`);
      if (problem) return problem;
    }
  }
  return undefined;
}

/** Names of the step actors (not sub-machines) that were running when `snapshot` was taken. */
export function inFlightSteps(snapshot: unknown): Set<string> {
  const out = new Set<string>();
  const walk = (s: PersistedMachine | undefined) => {
    for (const child of Object.values(s?.children ?? {})) {
      if (child.snapshot?.status !== 'active') continue;
      if ('value' in child.snapshot) walk(child.snapshot as PersistedMachine);
      else if (typeof child.src === 'string') out.add(child.src);
    }
  };
  walk(snapshot as PersistedMachine);
  return out;
}
