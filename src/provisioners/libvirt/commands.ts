/**
 * virsh and qemu-img command lines and output parsers for the libvirt driver. Pure: argv arrays in,
 * parsed values out; the transport quotes every word. Output formats follow virsh(1) and qemu-img(1).
 */
import { driverError } from '../../drivers/errors.js';

export const libvirt = {
  domstate: (domain: string) => ['virsh', 'domstate', domain, '--reason'],
  domblklist: (domain: string) => ['virsh', 'domblklist', domain, '--details'],
  shutdown: (domain: string) => ['virsh', 'shutdown', domain],
  destroy: (domain: string) => ['virsh', 'destroy', domain],
  /** Blocks until the domain's next lifecycle event or `seconds` pass (virsh >= 1.2.3; polling is the fallback). */
  awaitLifecycle: (domain: string, seconds: number) => [
    'virsh',
    'event',
    '--domain',
    domain,
    '--event',
    'lifecycle',
    '--timeout',
    String(Math.max(1, Math.ceil(seconds))),
  ],
  imageInfo: (path: string) => ['qemu-img', 'info', '--output=json', '-U', path],
  convert: (source: string, format: string, target: string) => [
    'qemu-img',
    'convert',
    '-O',
    format,
    source,
    target,
  ],
  check: (path: string) => ['qemu-img', 'check', '-q', path],
};

/** `virsh event --timeout` that saw no event prints `event loop timed out` (and exits 1). */
export function lifecycleWaitTimedOut(stdout: string): boolean {
  return /^event loop timed out$/m.test(stdout);
}

export type DomainState =
  | 'running'
  | 'shut off'
  | 'paused'
  | 'in shutdown'
  | 'crashed'
  | 'pmsuspended'
  | 'idle'
  | 'blocked';

/** `virsh domstate --reason` prints e.g. `running (booted)` or `shut off (shutdown)`. */
export function parseDomstate(stdout: string): { state: DomainState; reason: string | undefined } {
  const m =
    /^\s*(running|shut off|paused|in shutdown|crashed|pmsuspended|idle|blocked)(?:\s+\(([^)]*)\))?\s*$/m.exec(
      stdout,
    );
  if (!m)
    throw driverError(
      'PARSE_FAILED',
      `cannot read virsh domstate output: ${JSON.stringify(stdout.slice(0, 200))}`,
    );
  return { state: m[1] as DomainState, reason: m[2] };
}

export interface BlockDevice {
  type: string;
  device: string;
  target: string;
  source: string;
}

/**
 * `virsh domblklist --details`:
 * ```
 *  Type   Device   Target   Source
 * ------------------------------------------------
 *  file   disk     vda      /var/lib/libvirt/images/vm1.qcow2
 *  file   cdrom    sda      -
 * ```
 */
export function parseDomblklist(stdout: string): BlockDevice[] {
  const lines = stdout.split('\n').map((l) => l.trim());
  const header = lines.findIndex((l) => /^Type\s+Device\s+Target\s+Source$/.test(l));
  if (header < 0)
    throw driverError('PARSE_FAILED', 'virsh domblklist printed no header (Type Device Target Source)');
  return lines
    .slice(header + 1)
    .filter((l) => l && !/^-+$/.test(l))
    .map((l) => {
      const [type = '', device = '', target = '', ...rest] = l.split(/\s+/);
      return { type, device, target, source: rest.join(' ') };
    });
}

/** The disk to capture: the first `disk` device with a file or block source. */
export function firstDisk(devices: BlockDevice[]): BlockDevice {
  const disk = devices.find((d) => d.device === 'disk' && d.source && d.source !== '-');
  if (!disk) throw driverError('NO_DISK', 'the domain has no disk with a source to capture');
  return disk;
}

/** `qemu-img info --output=json`: the fields we rely on. */
export function parseImageInfo(stdout: string): { format: string; virtualSize: number; actualSize?: number } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout);
  } catch {
    throw driverError('PARSE_FAILED', 'qemu-img info did not print JSON');
  }
  const o = parsed as { format?: unknown; 'virtual-size'?: unknown; 'actual-size'?: unknown };
  if (typeof o.format !== 'string' || typeof o['virtual-size'] !== 'number')
    throw driverError('PARSE_FAILED', 'qemu-img info JSON lacks format or virtual-size');
  return {
    format: o.format,
    virtualSize: o['virtual-size'],
    ...(typeof o['actual-size'] === 'number' ? { actualSize: o['actual-size'] } : {}),
  };
}
