/** Mermaid `stateDiagram-v2` text for a machine: readable in a pull request, rendered by GitHub. */
import type { Diagram, DiagramState } from './model.js';

function escapeLabel(text: string): string {
  return text.replace(/["#:;]/g, (c) => `#${c.charCodeAt(0)};`);
}

function describe(s: DiagramState): string {
  const parts = [s.key];
  const others = s.invokes.filter((i) => i !== s.key);
  if (others.length) parts.push(`invokes ${others.join(', ')}`);
  if (s.kind) parts.push(`${s.kind}, ${s.timeout ?? 'commandMs'}${s.touches ? ', touches' : ''}`);
  return parts.join(' · ');
}

export function toMermaid(d: Diagram): string {
  const lines = ['stateDiagram-v2'];
  if (d.description) lines.push(`  %% ${d.machineId}: ${d.description}`);
  const finals: string[] = [];
  const emit = (s: DiagramState, indent: string) => {
    for (const c of s.children) {
      lines.push(`${indent}state "${escapeLabel(describe(c))}" as ${c.id}`);
      if (c.children.length) {
        lines.push(`${indent}state ${c.id} {`);
        emit(c, `${indent}  `);
        lines.push(`${indent}}`);
      }
      if (c.final) finals.push(c.id);
    }
    if (s.initial) lines.push(`${indent}[*] --> ${s.initial}`);
  };
  emit(d.root, '  ');
  for (const e of d.edges) lines.push(`  ${e.from} --> ${e.to} : ${escapeLabel(e.label)}`);
  for (const f of finals) lines.push(`  ${f} --> [*]`);
  return `${lines.join('\n')}\n`;
}
