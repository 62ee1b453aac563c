/**
 * Graphviz DOT for a machine (rendered to SVG with @viz-js/viz, Graphviz compiled to WebAssembly, so no
 * system package is needed). Compound states are clusters; their own transitions (CANCEL) leave from a
 * small anchor node inside the cluster.
 */
import type { Diagram, DiagramState } from './model.js';

function q(text: string): string {
  return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

function anchor(id: string): string {
  return `${id}__anchor`;
}

export function toDot(d: Diagram): string {
  const compound = new Set<string>();
  const lines = [
    `digraph ${q(d.machineId)} {`,
    '  rankdir=TB; compound=true; fontname="Helvetica";',
    '  node [fontname="Helvetica" fontsize=10 shape=box style="rounded,filled" fillcolor="#f5f7fa"];',
    '  edge [fontname="Helvetica" fontsize=9];',
    `  label=${q(`${d.machineId}${d.description ? `: ${d.description}` : ''}`)}; labelloc=t;`,
  ];
  const emit = (s: DiagramState, indent: string) => {
    for (const c of s.children) {
      if (c.children.length) {
        compound.add(c.id);
        lines.push(
          `${indent}subgraph ${q(`cluster_${c.id}`)} {`,
          `${indent}  label=${q(c.key)}; style=rounded;`,
        );
        lines.push(`${indent}  ${q(anchor(c.id))} [label=${q(c.key)} shape=plaintext style=""];`);
        emit(c, `${indent}  `);
        lines.push(`${indent}}`);
        continue;
      }
      const sub = [
        c.invokes.some((i) => i !== c.key) ? `invokes ${c.invokes.join(', ')}` : '',
        c.kind ? `${c.kind}, ${c.timeout}${c.touches ? ', touches' : ''}` : '',
      ]
        .filter(Boolean)
        .join('\n');
      const label = sub ? `${c.key}\n${sub}` : c.key;
      const style = c.final
        ? 'shape=doublecircle fillcolor="#e8f5e9"'
        : c.kind === 'advisory'
          ? 'fillcolor="#fff8e1"'
          : '';
      lines.push(`${indent}${q(c.id)} [label=${q(label)} ${style}];`);
    }
  };
  emit(d.root, '  ');
  const endpoint = (id: string) => (compound.has(id) ? anchor(id) : id);
  for (const e of d.edges)
    lines.push(`  ${q(endpoint(e.from))} -> ${q(endpoint(e.to))} [label=${q(e.label)}];`);
  lines.push('}');
  return `${lines.join('\n')}\n`;
}
