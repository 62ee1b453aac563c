/**
 * Every diagram the project keeps in `visualizations/`, generated from the machines. `npm run visualize`
 * writes them; a test regenerates them in memory and fails when the committed files are stale.
 */
import { instance } from '@viz-js/viz';
import type { AnyStateMachine } from 'xstate';
import { operatingSystems, provisioners } from '../../machines/index.js';
import { toDot } from './dot.js';
import { toMermaid } from './mermaid.js';
import { diagramOf } from './model.js';

export function diagramMachines(): AnyStateMachine[] {
  return [
    ...Object.values(provisioners).map((p) => p.machine as AnyStateMachine),
    ...Object.values(operatingSystems).map((o) => o.machine as AnyStateMachine),
  ];
}

function readme(machines: AnyStateMachine[], mermaid: Map<string, string>): string {
  const rows = machines.map((m) => {
    const role = m.id in provisioners ? 'provisioner (capture machine)' : 'OS sub-machine (invoked as `os`)';
    return `| [\`${m.id}\`](#${m.id}) | ${role} | [${m.id}.mmd](${m.id}.mmd) | [${m.id}.svg](${m.id}.svg) |`;
  });
  const sections = machines.flatMap((m) => [
    `## ${m.id}`,
    '',
    m.root.description ?? '',
    '',
    `![${m.id} state machine](${m.id}.svg)`,
    '',
    '<details><summary>Mermaid source</summary>',
    '',
    '```mermaid',
    (mermaid.get(m.id) ?? '').trimEnd(),
    '```',
    '',
    '</details>',
    '',
  ]);
  return [
    '# Diagrams of the capture machines',
    '',
    'Generated from `machines/` by `npm run visualize`; do not edit by hand. `test/visualize.test.ts` fails',
    'when these files no longer match the machines.',
    '',
    '| Machine | Role | Mermaid | SVG (Graphviz) |',
    '| --- | --- | --- | --- |',
    ...rows,
    '',
    'Reading them: a state that invokes an effect shows whether the step is `critical` (a failure ends the',
    'capture) or `advisory` (a failure becomes a warning), the timeout that bounds it, and `touches` when',
    'starting it touches the computer; `pre_capture` invokes the OS sub-machine (`os`), whose own steps say',
    'whether they touch it. Edges are labelled `done` / `error` (the invoked effect settled), `CANCEL`, or',
    '`always` (an eventless route), with the guard in brackets. The `cleanup` state pops owed compensations',
    'newest first (`nextCompensationIs`); the last, the release, goes to `restore_computer` (back to the',
    'state it was reserved from) when nothing touched the computer (`computerUntouched`), else to',
    '`release_computer` (maintenance); then the capture ends `cancelled` or `failed`.',
    '',
    ...sections,
  ].join('\n');
}

/** File name -> content. */
export async function generateVisualizations(): Promise<Map<string, string>> {
  const viz = await instance();
  const files = new Map<string, string>();
  const machines = diagramMachines();
  const mermaid = new Map<string, string>();
  for (const machine of machines) {
    const diagram = diagramOf(machine);
    const dot = toDot(diagram);
    mermaid.set(machine.id, toMermaid(diagram));
    files.set(`${machine.id}.mmd`, toMermaid(diagram));
    files.set(`${machine.id}.svg`, viz.renderString(dot, { format: 'svg', engine: 'dot' }));
  }
  files.set('README.md', readme(machines, mermaid));
  return files;
}
