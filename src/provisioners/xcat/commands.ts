/** xCAT management node command lines and output parsers (xCAT 2.16). */
import { driverError } from '../../drivers/errors.js';
import type { PathTools } from '../../drivers/preflight-commands.js';

/** The programs its path runs, for the preflight: xCAT's repository is also searched and its upload made
 * readable (`find -printf`, `chmod`). */
export const TOOLS: PathTools = {
  host: ['rpower', 'nodeset', 'nodestat', 'nodech'],
  repository: ['find', 'chmod'],
};

export const xcat = {
  powerStat: (node: string) => ['rpower', node, 'stat'],
  powerOn: (node: string) => ['rpower', node, 'on'],
  powerOff: (node: string) => ['rpower', node, 'off'],
  /** Tells the capture environment the image name it uploads as. */
  nodech: (node: string, image: string) => ['nodech', node, `nodetype.profile=${image}`],
  nodesetImage: (node: string, osimage: string) => ['nodeset', node, `osimage=${osimage}`],
  nodesetBoot: (node: string) => ['nodeset', node, 'boot'],
  nodestat: (node: string) => ['nodestat', node],
  exists: (path: string) => ['test', '-e', path],
  /**
   * Sizes in bytes of this image's files in the repository directory (`<image>.img` and its markers).
   * The dot ends the name: `img-v1*` would also count `img-v10.img`, another capture's upload.
   */
  sizes: (dir: string, image: string) => [
    'find',
    dir,
    '-maxdepth',
    '1',
    '-name',
    `${image}.*`,
    '-printf',
    '%s %f\\n',
  ],
  remove: (paths: string[]) => ['rm', '-f', '--', ...paths],
  chmod: (mode: string, path: string) => ['chmod', mode, path],
};

/** `rpower n1 stat` -> `n1: on` */
export function parseRpowerStat(stdout: string, node: string): 'on' | 'off' {
  const m = new RegExp(`^${escapeRegExp(node)}:\\s*(on|off)\\s*$`, 'm').exec(stdout);
  if (!m)
    throw driverError(
      'PARSE_FAILED',
      `cannot read rpower stat for ${node}: ${JSON.stringify(stdout.slice(0, 200))}`,
    );
  return m[1] as 'on' | 'off';
}

/** `nodestat n1` -> `n1: capturing` (sshd, boot, noping, install, ...) */
export function parseNodestat(stdout: string, node: string): string {
  const m = new RegExp(`^${escapeRegExp(node)}:\\s*(.+?)\\s*$`, 'm').exec(stdout);
  if (!m) throw driverError('PARSE_FAILED', `cannot read nodestat for ${node}`);
  return m[1] as string;
}

/** `find -printf '%s %f\n'` lines -> name -> size */
export function parseSizes(stdout: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const line of stdout.split('\n')) {
    const m = /^(\d+) (.+)$/.exec(line);
    if (m) out.set(m[2] as string, Number(m[1]));
  }
  return out;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
