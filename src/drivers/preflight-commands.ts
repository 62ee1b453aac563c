/**
 * What a preflight knows, shared by the capture's check steps and `vcl-capture preflight`: the tools each
 * host on a capture's path needs, the free-space margin, and the command lines and parsers that read free
 * and allocated space. Pure: argv arrays in, parsed values out; the transport quotes every word.
 *
 * Output formats: `df -P -B1` is GNU coreutils' POSIX format with 1-byte blocks (header `Filesystem
 * 1-blocks Used Available Capacity Mounted on`, one line per file system); `vmkfstools -P` prints
 * `Capacity <bytes> (<n> file blocks * <size>), <bytes> (<n> blocks) avail[, max supported file size <n>]`
 * on ESXi 5-8; `stat -c '%s %b %B'` is apparent size, allocated blocks and their size (coreutils and
 * busybox, ESXi's included).
 */
import type { ProvisionerName } from '../../machines/types.js';
import { HAS_TOOL_SCRIPT } from '../ssh/zstd-plan.js';
import { driverError } from './errors.js';

/** What a host does on a capture's path: the tools it needs follow from that. */
export type HostRole = ProvisionerName | 'repository';

/**
 * Programs a provisioner's path runs (its drivers' commands, the transport's copy scripts, this preflight's
 * own `df`/`stat`): each provisioner declares its own next to its commands (`src/provisioners/<name>/
 * commands.ts`). Coreutils every POSIX host has (`rm`, `test`, `mkdir`) are left out: the check is for
 * what an operator may really have to install.
 */
export interface PathTools {
  /** What the provisioner's own host runs. */
  host: readonly string[];
  /** What a repository host runs for this provisioner besides REPOSITORY_TOOLS (xCAT: `find`, `chmod`). */
  repository?: readonly string[];
}

/** What every repository host runs: the copy's writer, the durable move, the checks. */
export const REPOSITORY_TOOLS: readonly string[] = ['cat', 'mv', 'sync', 'stat', 'sha256sum', 'df'];

/** The tools a host needs, for every role it has on one capture's path, without repeats. */
export function toolsFor(roles: readonly HostRole[], tools: PathTools): string[] {
  const all = roles.flatMap((r) =>
    r === 'repository' ? [...REPOSITORY_TOOLS, ...(tools.repository ?? [])] : tools.host,
  );
  return [...new Set(all)];
}

/**
 * Reports each tool named after it as `present <tool>` or `missing <tool>`. `command -v` is a shell
 * builtin: sent as a command it would be exec'd (the transport's `exec` prefix) and fail with 127 on
 * every host, so it runs inside `sh -c` with the names as positional parameters, never in the script.
 */
export const TOOLS_SCRIPT =
  'for t in "$@"; do if command -v "$t" >/dev/null 2>&1; then echo "present $t"; else echo "missing $t"; fi; done';

/** A tool name safe as a positional parameter and in a message: letters, digits, `.`, `_`, `-`. */
const TOOL_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*$/;

export function toolsCommand(tools: readonly string[]): string[] {
  for (const t of tools)
    if (!TOOL_NAME.test(t)) throw driverError('COMMAND_FAILED', `not a tool name: ${JSON.stringify(t)}`);
  return ['sh', '-c', TOOLS_SCRIPT, 'sh', ...tools];
}

/**
 * Prints where the shell finds `$1` and exits 0, or exits non-zero (bash 1, dash 127): one tool, for a
 * probe (see TOOLS_SCRIPT). The transport's zstd probe is the same script, kept with the transport.
 */
export { HAS_TOOL_SCRIPT };

export function hasToolCommand(tool: string): string[] {
  if (!TOOL_NAME.test(tool)) throw driverError('COMMAND_FAILED', `not a tool name: ${JSON.stringify(tool)}`);
  return ['sh', '-c', HAS_TOOL_SCRIPT, 'sh', tool];
}

/** The tools the script reported missing; every tool asked for must be accounted for. */
export function parseTools(stdout: string, tools: readonly string[]): { missing: string[] } {
  const seen = new Map<string, boolean>();
  for (const line of stdout.split('\n')) {
    const m = /^(present|missing) (\S+)$/.exec(line.trim());
    if (m) seen.set(m[2] as string, m[1] === 'present');
  }
  const unreported = tools.filter((t) => !seen.has(t));
  if (unreported.length > 0)
    throw driverError('PARSE_FAILED', `the tool check did not report ${unreported.join(', ')}`);
  return { missing: tools.filter((t) => seen.get(t) === false) };
}

/** Free space of the file system holding `dir` (an absolute path: never read as an option). */
export function dfCommand(dir: string): string[] {
  return ['df', '-P', '-B1', absolute(dir)];
}

/**
 * `df -P -B1 <dir>`:
 * ```
 * Filesystem         1-blocks        Used   Available Capacity Mounted on
 * /dev/vda       270553174016 27615629312 81328664576      26% /
 * ```
 * The file system name and mount point may hold spaces; the four numbers and the percentage do not.
 */
export function parseDf(stdout: string): { totalBytes: number; availableBytes: number; mountedOn: string } {
  const lines = stdout.split('\n').filter((l) => l.trim() !== '');
  if (!/^Filesystem\s+1-blocks\s+Used\s+Available\s+Capacity\s+Mounted on\s*$/.test(lines[0] ?? ''))
    throw driverError('PARSE_FAILED', `df -P -B1 printed no header: ${JSON.stringify(stdout.slice(0, 200))}`);
  const m = /^.*?\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+|-)%?\s+(\/.*)$/.exec(lines[1] ?? '');
  if (!m)
    throw driverError('PARSE_FAILED', `cannot read df -P -B1 output: ${JSON.stringify(lines[1] ?? '')}`);
  return { totalBytes: Number(m[1]), availableBytes: Number(m[3]), mountedOn: m[5] as string };
}

/** Free space of an ESXi datastore (`/vmfs/volumes/<datastore>`). */
export function vmfsCommand(datastoreDir: string): string[] {
  return ['vmkfstools', '-P', absolute(datastoreDir)];
}

/** `vmkfstools -P <volume>`: `Capacity 8001326940160 (1953448960 file blocks * 4096), 3420039405568 (834970558 blocks) avail` */
export function parseVmfs(stdout: string): { totalBytes: number; availableBytes: number } {
  const m = /^\s*Capacity\s+(\d+)\s+\([^)]*\),\s*(\d+)\s+\([^)]*\)\s+avail/m.exec(stdout);
  if (!m)
    throw driverError(
      'PARSE_FAILED',
      `cannot read vmkfstools -P output: ${JSON.stringify(stdout.slice(0, 200))}`,
    );
  return { totalBytes: Number(m[1]), availableBytes: Number(m[2]) };
}

/** Apparent size, allocated blocks and their size of one file. */
export function allocationCommand(path: string): string[] {
  return ['stat', '-c', '%s %b %B', absolute(path)];
}

export function parseAllocation(stdout: string): { sizeBytes: number; allocatedBytes: number } {
  const m = /^(\d+) (\d+) (\d+)\s*$/.exec(stdout.trim());
  if (!m) throw driverError('PARSE_FAILED', `cannot read stat -c '%s %b %B': ${JSON.stringify(stdout)}`);
  return { sizeBytes: Number(m[1]), allocatedBytes: Number(m[2]) * Number(m[3]) };
}

/**
 * Room kept free beyond what a copy needs: whichever is larger of 1 GiB and 5 % of it. A file system
 * filled to the last byte fails the copy's own rename, sync and the other writers on it; 5 % covers the
 * growth of a qcow2's metadata and a guest writing on while its disk is read.
 */
export const MARGIN = { minBytes: 1024 ** 3, fraction: 0.05 } as const;

export function requiredBytes(copyBytes: number): number {
  return copyBytes + Math.max(MARGIN.minBytes, Math.ceil(copyBytes * MARGIN.fraction));
}

/** Bytes as an operator reads them: `12.3 GiB (13207024435 bytes)`. */
export function formatBytes(n: number): string {
  const units = ['bytes', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let v = n;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return u === 0 ? `${n} bytes` : `${v.toFixed(1)} ${units[u]} (${n} bytes)`;
}

function absolute(path: string): string {
  if (!path.startsWith('/') || path.includes('\0'))
    throw driverError('COMMAND_FAILED', `not an absolute path: ${JSON.stringify(path)}`);
  return path;
}
