/**
 * The xCAT management node: `rpower`, `nodeset`, `nodestat`, `nodech` (xCAT 2.16 formats) over the lab's
 * xCAT nodes. `nodeset <node> osimage=<capture image>` makes the node's next boot start the capture
 * environment (see capture-env.ts) instead of its OS; `nodeset <node> boot` restores booting from disk.
 */
import type { ComputerRecord, Handler, LabCore } from '../../lab/core.js';
import { fail } from '../../lab/core.js';

const MN = 'xcat-mn';

function nodesOf(core: LabCore, range: string | undefined): ComputerRecord[] {
  const names = (range ?? '').split(',').filter(Boolean);
  const bad = names.filter((n) => core.computers.get(n)?.provisioner !== 'xcat');
  if (names.length === 0 || bad.length > 0)
    fail(1, `Error: [${MN}]: Invalid nodes and/or groups in noderange: ${bad.join(',') || range || ''}`);
  return names.map((n) => core.computers.get(n) as ComputerRecord);
}

/** What `nodestat` reports: from the power state and what runs. */
export function nodestatOf(rec: ComputerRecord): string {
  const c = rec.computer;
  if (c.power === 'off') return 'noping';
  if (c.power === 'booting') return rec.nodeset.kind === 'osimage' ? 'netbooting' : 'booting';
  if (c.power === 'goingDown') return 'ping';
  return c.running === 'captureEnv' ? 'capturing' : 'sshd';
}

const rpower: Handler = async (ctx) => {
  const [range, action] = ctx.argv.slice(1);
  const nodes = nodesOf(ctx.core, range);
  const lines: string[] = [];
  for (const rec of nodes) {
    const node = rec.info.name;
    const c = rec.computer;
    switch (action) {
      case 'stat':
      case 'state':
      case 'status':
        lines.push(`${node}: ${c.power === 'off' ? 'off' : 'on'}`);
        break;
      case 'on':
        c.powerOn();
        lines.push(`${node}: on`);
        break;
      case 'off':
        c.hardOff();
        lines.push(`${node}: off`);
        break;
      case 'reset':
      case 'boot':
        c.hardOff();
        c.powerOn();
        lines.push(`${node}: ${action === 'reset' ? 'reset' : 'on reset'}`);
        break;
      default:
        fail(1, `Error: [${MN}]: Unsupported command: rpower ${action ?? ''}`);
    }
  }
  await ctx.out(`${lines.join('\n')}\n`);
  return 0;
};

const nodeset: Handler = async (ctx) => {
  const [range, what] = ctx.argv.slice(1);
  const nodes = nodesOf(ctx.core, range);
  let image: string | undefined;
  if (what === 'boot') image = undefined;
  else if (what === 'image') image = ctx.core.captureImage;
  else if (what?.startsWith('osimage=')) {
    image = what.slice('osimage='.length);
    if (image !== ctx.core.captureImage)
      fail(1, `Error: [${MN}]: Cannot find the OS image definition for ${image} in the osimage table.`);
  } else fail(1, `Error: [${MN}]: Unsupported nodeset option: ${what ?? ''}`);
  const lines: string[] = [];
  for (const rec of nodes) {
    rec.nodeset = image === undefined ? { kind: 'boot' } : { kind: 'osimage', image };
    lines.push(image === undefined ? `${rec.info.name}: boot` : `${rec.info.name}: netboot ${image}`);
  }
  await ctx.out(`${lines.join('\n')}\n`);
  return 0;
};

const nodestat: Handler = async (ctx) => {
  const nodes = nodesOf(ctx.core, ctx.argv[1]);
  await ctx.out(`${nodes.map((rec) => `${rec.info.name}: ${nodestatOf(rec)}`).join('\n')}\n`);
  return 0;
};

const nodech: Handler = async (ctx) => {
  const [range, ...assignments] = ctx.argv.slice(1);
  const nodes = nodesOf(ctx.core, range);
  if (assignments.length === 0) fail(1, `Error: [${MN}]: No attribute to change`);
  for (const a of assignments) {
    const m = /^(\w+)\.(\w+)=(.*)$/.exec(a);
    if (!m) fail(1, `Error: [${MN}]: Invalid argument: ${a}`);
    if (m[1] === 'nodetype' && m[2] === 'profile') for (const rec of nodes) rec.profile = m[3] as string;
  }
  return 0;
};

export const XCAT_COMMANDS: ReadonlyMap<string, Handler> = new Map([
  ['rpower', rpower],
  ['nodeset', nodeset],
  ['nodestat', nodestat],
  ['nodech', nodech],
]);
