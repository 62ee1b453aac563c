/**
 * ESXi shell command lines (`vim-cmd`, `vmkfstools`) and output parsers for the VMware driver. Output
 * formats follow ESXi 6.x-8.x.
 */
import { driverError } from '../../drivers/errors.js';
import type { PathTools } from '../../drivers/preflight-commands.js';

/** The programs its path runs, for the preflight (`vcl-capture preflight`, its check step). */
export const TOOLS: PathTools = { host: ['vim-cmd', 'vmkfstools', 'stat', 'cat'] };

export const vmware = {
  getallvms: () => ['vim-cmd', 'vmsvc/getallvms'],
  powerState: (vmid: number) => ['vim-cmd', 'vmsvc/power.getstate', String(vmid)],
  /** Guest shutdown through VMware Tools. */
  shutdown: (vmid: number) => ['vim-cmd', 'vmsvc/power.shutdown', String(vmid)],
  powerOff: (vmid: number) => ['vim-cmd', 'vmsvc/power.off', String(vmid)],
  powerOn: (vmid: number) => ['vim-cmd', 'vmsvc/power.on', String(vmid)],
  unregister: (vmid: number) => ['vim-cmd', 'vmsvc/unregister', String(vmid)],
  readFile: (path: string) => ['cat', path],
  exists: (path: string) => ['test', '-e', path],
  mkdir: (path: string) => ['mkdir', '-p', path],
  removeTree: (path: string) => ['rm', '-rf', path],
  cloneThin: (source: string, target: string) => ['vmkfstools', '-i', source, target, '-d', 'thin'],
  /** The repository format: a descriptor and `-s001.vmdk`... extents of at most 2 GB (docs/performance-copy.md). */
  clone2gbSparse: (source: string, target: string) => ['vmkfstools', '-i', source, target, '-d', '2gbsparse'],
  /** Writes its stdin to `path` (the manifest, the reference .vmx); busybox and coreutils alike. */
  writeFile: (path: string) => ['tee', '--', path],
  /** On the repository host, where qemu-img is installed: the stored set opens as the disk it says it is. */
  qemuCheck: (descriptor: string) => ['qemu-img', 'check', '-q', descriptor],
  qemuInfo: (descriptor: string) => ['qemu-img', 'info', '--output=json', descriptor],
  repair: (disk: string) => ['vmkfstools', '-x', 'repair', disk],
};

export interface RegisteredVm {
  vmid: number;
  name: string;
  /** `[datastore1] vm1/vm1.vmx` */
  file: string;
}

/**
 * `vim-cmd vmsvc/getallvms`:
 * ```
 * Vmid   Name          File                       Guest OS        Version   Annotation
 * 1      vm1           [datastore1] vm1/vm1.vmx   ubuntu64Guest   vmx-19
 * ```
 */
export function parseGetallvms(stdout: string): RegisteredVm[] {
  const out: RegisteredVm[] = [];
  for (const line of stdout.split('\n')) {
    const m = /^(\d+)\s+(.+?)\s+(\[[^\]]+\]\s+\S+\.vmx)\s/.exec(`${line} `);
    if (m) out.push({ vmid: Number(m[1]), name: (m[2] as string).trim(), file: m[3] as string });
  }
  if (out.length === 0 && !/^Vmid\s+Name\s+File/m.test(stdout))
    throw driverError('PARSE_FAILED', 'vim-cmd vmsvc/getallvms printed no VM table');
  return out;
}

/** `[datastore1] vm1/vm1.vmx` -> `/vmfs/volumes/datastore1/vm1/vm1.vmx` */
export function datastorePath(file: string): string {
  const m = /^\[([^\]]+)\]\s+(.+)$/.exec(file);
  if (!m) throw driverError('PARSE_FAILED', `not a datastore path: ${file}`);
  return `/vmfs/volumes/${m[1]}/${m[2]}`;
}

/** `Retrieved runtime info\nPowered on` */
export function parsePowerState(stdout: string): 'on' | 'off' | 'suspended' {
  if (/Powered on/.test(stdout)) return 'on';
  if (/Powered off/.test(stdout)) return 'off';
  if (/Suspended/.test(stdout)) return 'suspended';
  throw driverError('PARSE_FAILED', `cannot read power state: ${JSON.stringify(stdout.slice(0, 200))}`);
}

export interface VmxDisk {
  key: string;
  fileName: string;
  mode: string | undefined;
}

/** The hard disks a .vmx declares (`scsi0:0.fileName = "vm1.vmdk"`), present ones only. */
export function parseVmxDisks(vmx: string): VmxDisk[] {
  const entries = new Map<string, string>();
  for (const line of vmx.split('\n')) {
    const m = /^\s*([\w:.]+)\s*=\s*"(.*)"\s*$/.exec(line);
    if (m) entries.set((m[1] as string).toLowerCase(), m[2] as string);
  }
  const disks: VmxDisk[] = [];
  for (const [key, value] of entries) {
    const m = /^((?:scsi|sata|ide|nvme)\d+:\d+)\.filename$/.exec(key);
    if (!m || !value.toLowerCase().endsWith('.vmdk')) continue;
    const dev = m[1] as string;
    if (entries.get(`${dev}.present`)?.toLowerCase() === 'false') continue;
    if (entries.get(`${dev}.devicetype`)?.toLowerCase().includes('cdrom')) continue;
    disks.push({ key: dev, fileName: value, mode: entries.get(`${dev}.mode`) });
  }
  return disks;
}

/** vmkfstools' way of saying the source needs `-x repair` first. */
export function needsRepair(output: string): boolean {
  return /needs repair/i.test(output);
}

export function noSpace(output: string): boolean {
  return /no space left/i.test(output);
}

export interface VmdkExtent {
  access: string;
  sectors: number;
  type: string;
  /** The extent's file, relative to the descriptor's folder (absent for ZERO extents). */
  file: string | undefined;
}

/**
 * The extent lines of a .vmdk descriptor (VMware Virtual Disk Format 1.1, "Extent Descriptions"):
 * `RW 8388608 VMFS "vm1-flat.vmdk"`: access, size in 512-byte sectors, type, file.
 */
export function parseVmdkExtents(descriptor: string): VmdkExtent[] {
  const out: VmdkExtent[] = [];
  for (const line of descriptor.split('\n')) {
    const m = /^\s*(RW|RDONLY|NOACCESS)\s+(\d+)\s+(\w+)(?:\s+"([^"]*)")?/.exec(line);
    if (m)
      out.push({
        access: m[1] as string,
        sectors: Number(m[2]),
        type: m[3] as string,
        file: m[4] || undefined,
      });
  }
  if (out.length === 0)
    throw driverError('PARSE_FAILED', 'the disk descriptor lists no extent (RW <sectors> ...)');
  return out;
}

/**
 * The files of a 2gbsparse disk `<name>.vmdk` as vmkfstools (and qemu-img) name them: the descriptor, then
 * `<name>-s001.vmdk`... VMware's hosted extents hold 2047 MiB, qemu-img's 2048 MiB: the count for the
 * larger is taken, so that the list covers either tool's set (a cleanup removes what may exist).
 */
export function sparseSetFiles(name: string, virtualBytes: number): string[] {
  const count = Math.max(1, Math.ceil(virtualBytes / (2047 * 1024 ** 2)));
  const extents = Array.from({ length: count }, (_, i) => `${name}-s${String(i + 1).padStart(3, '0')}.vmdk`);
  return [`${name}.vmdk`, ...extents];
}

/**
 * The reference .vmx stored beside the image, as VCL keeps one: the VM's own, its one disk pointing at the
 * stored descriptor and named after the image, without what identifies the captured VM rather than the
 * image (its MAC addresses, UUIDs, swap file).
 */
export function referenceVmx(vmx: string, descriptor: string, image: string): string {
  const disks = parseVmxDisks(vmx);
  if (disks.length !== 1)
    throw driverError(
      'UNSUPPORTED_DISK',
      `the .vmx declares ${disks.length} disks; a capture needs exactly one`,
    );
  const diskKey = `${(disks[0] as VmxDisk).key}.filename`;
  const identity =
    /^(ethernet\d+\.(generatedaddress|addresstype|generatedaddressoffset)|uuid\.(bios|location)|vc\.uuid|sched\.swap\.derivedname)$/;
  const out: string[] = [];
  for (const line of vmx.split('\n')) {
    const key = /^\s*([\w:.]+)\s*=/.exec(line)?.[1];
    const lower = key?.toLowerCase();
    if (lower !== undefined && identity.test(lower)) continue;
    if (lower === diskKey) out.push(`${key} = "${descriptor}"`);
    else if (lower === 'displayname') out.push(`${key} = "${image}"`);
    else out.push(line);
  }
  return out.join('\n');
}
