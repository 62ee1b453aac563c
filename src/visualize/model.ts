/**
 * A machine reduced to what a diagram shows: states (nested), what each invokes, and labelled
 * transitions. Both renderers (Mermaid, Graphviz) draw from this one walk, so they cannot disagree.
 */
import type { AnyStateMachine, AnyStateNode } from 'xstate';

export interface DiagramState {
  /** Unique within the diagram, safe as a Mermaid/DOT identifier. */
  id: string;
  key: string;
  title?: string;
  kind?: string;
  timeout?: string;
  /** The step touches the computer (a failure from here on sends it to maintenance). */
  touches?: boolean;
  invokes: string[];
  final: boolean;
  initial?: string;
  children: DiagramState[];
}

export interface DiagramEdge {
  from: string;
  to: string;
  label: string;
}

export interface Diagram {
  machineId: string;
  description?: string;
  root: DiagramState;
  edges: DiagramEdge[];
}

interface StepMetaLike {
  step?: { title?: string; kind?: string; timeout?: string; touches?: boolean };
}

function safeId(node: AnyStateNode): string {
  return node.path.length === 0 ? node.machine.id : node.path.join('__');
}

function guardLabel(guard: unknown): string {
  if (!guard) return '';
  if (typeof guard === 'string') return guard;
  if (typeof guard === 'function') return guard.name || 'guard';
  const g = guard as { type?: string; params?: unknown };
  if (!g.params || typeof g.params === 'function') return g.type ?? 'guard';
  const args = Object.values(g.params as Record<string, unknown>)
    .map(String)
    .join(', ');
  return `${g.type}(${args})`;
}

function eventLabel(eventType: string): string {
  const done = /^xstate\.done\.actor\.(.+)$/.exec(eventType);
  if (done) return 'done';
  const error = /^xstate\.error\.actor\.(.+)$/.exec(eventType);
  if (error) return 'error';
  return eventType || 'always';
}

export function diagramOf(machine: AnyStateMachine): Diagram {
  const edges: DiagramEdge[] = [];
  const walk = (node: AnyStateNode): DiagramState => {
    const meta = (node.meta as StepMetaLike | undefined)?.step;
    const children = Object.values(node.states).map((c) => walk(c as AnyStateNode));
    const initialKey = node.initial?.target[0]?.key;
    const transitions = [...node.transitions.values()].flat().concat(node.always ?? []);
    for (const t of transitions) {
      const guard = guardLabel(t.guard);
      const label = `${eventLabel(t.eventType)}${guard ? ` [${guard}]` : ''}`;
      for (const target of t.target ?? []) edges.push({ from: safeId(node), to: safeId(target), label });
    }
    return {
      id: safeId(node),
      key: node.key,
      ...(meta?.title ? { title: meta.title } : {}),
      ...(meta?.kind ? { kind: meta.kind } : {}),
      ...(meta?.timeout ? { timeout: meta.timeout } : {}),
      ...(meta?.touches ? { touches: true } : {}),
      invokes: node.invoke.map((i) => i.id),
      final: node.type === 'final',
      ...(initialKey && children.length ? { initial: children.find((c) => c.key === initialKey)?.id } : {}),
      children,
    };
  };
  const root = walk(machine.root);
  return {
    machineId: machine.id,
    ...(machine.root.description ? { description: machine.root.description } : {}),
    root,
    edges,
  };
}
