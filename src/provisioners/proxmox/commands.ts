/**
 * qm, pvesm and qemu-img command lines and output parsers for the Proxmox VE driver. Pure: argv arrays
 * in, parsed values out; the transport quotes every word. Formats follow Proxmox VE's own manual pages:
 *
 * - qm(1), "qm config <vmid>": the configuration as `key: value` lines; disks are `ide0`-`ide3`,
 *   `sata0`-`sata5`, `scsi0`-`scsi30`, `virtio0`-`virtio15` with the value `[file=]<volume>[,option=value]*`
 *   (`media=cdrom` for a CD drive, `none` for an empty one), `boot: order=<device>[;<device>...]`.
 * - qm(1), "qm status <vmid>": `status: running` or `status: stopped`.
 * - qm(1), "qm shutdown <vmid> [--timeout <integer>]": an ACPI shutdown; waits at most `timeout` seconds
 *   and fails with `VM quit/powerdown failed - got timeout` when the VM is still running then.
 * - qm(1), "qm stop <vmid>": stops the VM at once ("akin to pulling the power plug").
 * - pvesm(1), "pvesm path <volume>": the volume's file system path (`/dev/pve/vm-100-disk-0` on LVM,
 *   `/dev/zvol/rpool/data/vm-100-disk-0` on ZFS, `/var/lib/vz/images/100/vm-100-disk-0.qcow2` on a
 *   directory storage); a network volume (RBD, iSCSI) prints a URL-like name instead.
 * - An unknown VM: `Configuration file 'nodes/<node>/qemu-server/<vmid>.conf' does not exist`.
 */
import { driverError } from '../../drivers/errors.js';
import type { PathTools } from '../../drivers/preflight-commands.js';

/** The programs its path runs, for the preflight (`vcl-capture preflight`, its check step). */
export const TOOLS: PathTools = { host: ['qm', 'pvesm', 'qemu-img', 'sha256sum', 'stat', 'sync', 'df'] };

/** A VM id as Proxmox VE takes it: 100 to 999999999. */
export const VMID_MIN = 100;
export const VMID_MAX = 999_999_999;

function vmidArg(vmid: number): string {
  if (!Number.isInteger(vmid) || vmid < VMID_MIN || vmid > VMID_MAX)
    throw driverError('COMMAND_FAILED', `not a Proxmox VM id: ${JSON.stringify(vmid)}`);
  return String(vmid);
}

/** A storage volume id (`<storage>:<volume name>`), as qm config names it; never an option or a path. */
const VOLID = /^[A-Za-z][A-Za-z0-9._-]*:[A-Za-z0-9][A-Za-z0-9._/-]*$/;

export function isVolid(volid: string): boolean {
  return VOLID.test(volid) && !volid.split(/[:/]/).includes('..');
}

export const qm = {
  config: (vmid: number) => ['qm', 'config', vmidArg(vmid)],
  status: (vmid: number) => ['qm', 'status', vmidArg(vmid)],
  shutdown: (vmid: number, seconds: number) => [
    'qm',
    'shutdown',
    vmidArg(vmid),
    '--timeout',
    String(Math.max(1, Math.floor(seconds))),
  ],
  stop: (vmid: number) => ['qm', 'stop', vmidArg(vmid)],
};

export const pvesm = {
  path: (volid: string) => {
    if (!isVolid(volid))
      throw driverError('COMMAND_FAILED', `not a storage volume: ${JSON.stringify(volid)}`);
    return ['pvesm', 'path', volid];
  },
};

/**
 * qemu-img on the node, always told the source format (Proxmox knows it: raw on block storages, the file
 * name's extension on directories), since probing a raw disk's content for a format is unsafe.
 */
export const qemuImg = {
  info: (path: string, format: string) => ['qemu-img', 'info', '-f', format, '--output=json', '-U', path],
  /** qemu-img convert leaves zero blocks unwritten (`-S 4k`, its default): a sparse copy of any source. */
  convert: (source: string, sourceFormat: string, format: string, target: string) => [
    'qemu-img',
    'convert',
    '-f',
    sourceFormat,
    '-O',
    format,
    source,
    target,
  ],
  check: (path: string) => ['qemu-img', 'check', '-q', path],
};

/** `key: value` lines of `qm config` (the current configuration; a `[snapshot]` section ends it). */
export function parseQmConfig(stdout: string): Map<string, string> {
  const config = new Map<string, string>();
  for (const line of stdout.split('\n')) {
    if (line.startsWith('[')) break;
    const m = /^([a-z][a-z0-9_-]*):\s?(.*)$/.exec(line.trimEnd());
    if (m) config.set(m[1] as string, m[2] as string);
  }
  if (config.size === 0)
    throw driverError(
      'PARSE_FAILED',
      `qm config printed no settings: ${JSON.stringify(stdout.slice(0, 200))}`,
    );
  return config;
}

/** `qm status`: `status: stopped`, `status: running`. */
export function parseQmStatus(stdout: string): string {
  const m = /^status: (\S+)\s*$/m.exec(stdout);
  if (!m)
    throw driverError(
      'PARSE_FAILED',
      `cannot read qm status output: ${JSON.stringify(stdout.slice(0, 200))}`,
    );
  return m[1] as string;
}

/** qm's words for a VM id it has no configuration for. */
export const UNKNOWN_VM = /Configuration file '[^']*' does not exist/;

/** `qm shutdown --timeout` that ran out while the VM was still running. */
export function shutdownTimedOut(stderr: string): boolean {
  return /got timeout/.test(stderr);
}

export interface VmDisk {
  /** The device key: `scsi0`, `virtio1`, ... */
  key: string;
  /** Its volume: `local-lvm:vm-100-disk-0`. */
  volid: string;
  /** The `size=` option as qm prints it (`32G`), when given. */
  size: string | undefined;
}

const DISK_KEY = /^(?:ide|sata|scsi|virtio)\d+$/;

/**
 * The VM's hard disks: disk devices whose medium is not a CD (`media=cdrom`) and not empty (`none`).
 * `efidisk0`, `tpmstate0` and `unusedN` are not hard disks of the guest and are left out.
 */
export function vmDisks(config: ReadonlyMap<string, string>): VmDisk[] {
  const disks: VmDisk[] = [];
  for (const [key, value] of config) {
    if (!DISK_KEY.test(key)) continue;
    const [first = '', ...rest] = value.split(',');
    const options = new Map(rest.map((o) => o.split('=', 2) as [string, string]));
    if (options.get('media') === 'cdrom') continue;
    const volid = first.startsWith('file=') ? first.slice('file='.length) : first;
    if (volid === '' || volid === 'none') continue;
    disks.push({ key, volid, size: options.get('size') });
  }
  return disks;
}

/** The devices of `boot: order=scsi0;ide2;net0` (older configurations: `bootdisk: scsi0`). */
export function bootOrder(config: ReadonlyMap<string, string>): string[] {
  const boot = /(?:^|,)order=([^,]*)/.exec(config.get('boot') ?? '');
  if (boot) return (boot[1] as string).split(';').filter((d) => d !== '');
  const legacy = config.get('bootdisk');
  return legacy ? [legacy] : [];
}

/**
 * The disk to capture: the one named (`provisioner.disk`), else the VM's only disk. Several disks and
 * none named is refused (AMBIGUOUS): a capture copies one disk, and which one is the operator's choice.
 */
export function chooseDisk(config: ReadonlyMap<string, string>, wanted: string | undefined): VmDisk {
  const disks = vmDisks(config);
  const names = disks.map((d) => d.key).join(', ');
  if (wanted !== undefined) {
    const disk = disks.find((d) => d.key === wanted);
    if (!disk)
      throw driverError(
        'NO_DISK',
        `the VM has no disk ${wanted}${disks.length > 0 ? ` (its disks: ${names})` : ''}`,
        { disk: wanted },
      );
    return disk;
  }
  if (disks.length === 0) throw driverError('NO_DISK', 'the VM has no disk to capture');
  if (disks.length > 1) {
    const boot = bootOrder(config).find((d) => disks.some((x) => x.key === d));
    throw driverError(
      'AMBIGUOUS',
      `the VM has ${disks.length} disks (${names}${boot ? `; it boots from ${boot}` : ''}): name the one to capture in provisioner.disk`,
      { disks: disks.map((d) => d.key), ...(boot ? { boot } : {}) },
    );
  }
  return disks[0] as VmDisk;
}

export interface SourceDisk {
  path: string;
  /** A block device (LVM, ZFS zvol): raw, and its allocation is not what `qemu-img info` reports. */
  block: boolean;
  /** The source format qemu-img is told. */
  format: string;
}

/** `pvesm path`: a block device under `/dev/`, or a disk image file named by its format. */
export function parsePvesmPath(stdout: string, volid: string): SourceDisk {
  const path = stdout.trim();
  if (!/^\/[^\n]*$/.test(path) || path.includes('/../'))
    throw driverError(
      'UNSUPPORTED_DISK',
      `volume ${volid} has no local path (pvesm path printed ${JSON.stringify(path.slice(0, 200))}): a capture copies disks on directory, LVM or ZFS storages`,
      { volid },
    );
  if (path.startsWith('/dev/')) return { path, block: true, format: 'raw' };
  const ext = /\.(qcow2|raw|vmdk)$/.exec(path);
  if (!ext)
    throw driverError('UNSUPPORTED_DISK', `volume ${volid} (${path}) is not a qcow2, raw or vmdk image`, {
      volid,
    });
  return { path, block: false, format: ext[1] as string };
}
