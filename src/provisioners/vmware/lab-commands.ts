/**
 * The ESXi host: `vim-cmd vmsvc/...` (getallvms, power.getstate/shutdown/off/on, unregister) and
 * `vmkfstools` (-i clone, -x repair/check, -U delete), in ESXi 7/8 output formats, over VMs laid out as
 * ESXi does: `/vmfs/volumes/datastore1/<vm>/<vm>.vmx`, a `.vmdk` descriptor and its `-flat.vmdk` data.
 * A powered-on VM holds its disk's lock; a thin clone copies the data (holes kept) and writes a descriptor;
 * a `2gbsparse` clone is a real twoGbMaxExtentSparse set (descriptor + `-s001.vmdk`... extents) written by
 * this machine's own `qemu-img`, so that what the capture stores is a disk real tools open.
 */
import { randomBytes } from 'node:crypto';
import { readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { posix } from 'node:path';
import { copyWithin, statOf } from '../../lab/commands/posix.js';
import { localQemuImg } from '../../lab/commands/qemu-img.js';
import type { CommandContext, ComputerRecord, Handler, HostRuntime, LabCore } from '../../lab/core.js';
import { diskInUse, fail, NoSpaceError } from '../../lab/core.js';
import { hostMatches, pathMatches } from '../../lab/faults.js';

export const DATASTORE = '/vmfs/volumes/datastore1';

export function vmxPathOf(vm: string): string {
  return `${DATASTORE}/${vm}/${vm}.vmx`;
}

export function vmxText(rec: ComputerRecord): string {
  const vm = rec.info.name;
  const guest = rec.os === 'linux' ? 'ubuntu-64' : 'windows2019srv-64';
  return [
    '.encoding = "UTF-8"',
    'config.version = "8"',
    'virtualHW.version = "19"',
    `displayName = "${vm}"`,
    `guestOS = "${guest}"`,
    'memSize = "2048"',
    'numvcpus = "2"',
    'scsi0.present = "TRUE"',
    'scsi0.virtualDev = "pvscsi"',
    'scsi0:0.present = "TRUE"',
    'scsi0:0.deviceType = "scsi-hardDisk"',
    `scsi0:0.fileName = "${vm}.vmdk"`,
    'scsi0:0.mode = "persistent"',
    'sata0.present = "TRUE"',
    'sata0:0.present = "TRUE"',
    'sata0:0.deviceType = "cdrom-image"',
    'sata0:0.fileName = "/vmfs/volumes/datastore1/iso/tools.iso"',
    'ethernet0.present = "TRUE"',
    'ethernet0.virtualDev = "vmxnet3"',
    'ethernet0.networkName = "VM Network"',
    'ethernet0.addressType = "generated"',
    `ethernet0.generatedAddress = "${rec.mac}"`,
    `uuid.bios = "${rec.uuid.replace(/-/g, '').replace(/(..)/g, '$1 ').trim()}"`,
    '',
  ].join('\n');
}

/** A VMFS descriptor for `<name>.vmdk` whose data is `<name>-flat.vmdk`. */
export function descriptorText(name: string, sizeBytes: number, thin: boolean): string {
  const sectors = Math.ceil(sizeBytes / 512);
  return [
    '# Disk DescriptorFile',
    'version=1',
    'encoding="UTF-8"',
    `CID=${randomBytes(4).toString('hex')}`,
    'parentCID=ffffffff',
    'createType="vmfs"',
    '',
    '# Extent description',
    `RW ${sectors} VMFS "${name}-flat.vmdk"`,
    '',
    '# The Disk Data Base',
    '#DDB',
    '',
    'ddb.adapterType = "pvscsi"',
    `ddb.geometry.cylinders = "${Math.max(1, Math.ceil(sectors / (255 * 63)))}"`,
    'ddb.geometry.heads = "255"',
    'ddb.geometry.sectors = "63"',
    `ddb.longContentID = "${randomBytes(16).toString('hex')}"`,
    ...(thin ? ['ddb.thinProvisioned = "1"'] : []),
    'ddb.virtualHWVersion = "19"',
    '',
  ].join('\n');
}

function vmFault(type: string, fields: string[], msg: string): string {
  return [
    `(${type}) {`,
    '   faultCause = (vmodl.MethodFault) null, ',
    '   faultMessage = <unset>, ',
    ...fields.map((f) => `   ${f}, `),
    `   msg = "${msg}"`,
    '}',
    '',
  ].join('\n');
}

function invalidPowerState(current: 'Powered off' | 'Powered on'): string {
  return vmFault(
    'vim.fault.InvalidPowerState',
    [
      `requestedState = "${current === 'Powered off' ? 'poweredOn' : 'poweredOff'}"`,
      `existingState = "${current === 'Powered off' ? 'poweredOff' : 'poweredOn'}"`,
    ],
    `The attempted operation cannot be performed in the current state (${current}).`,
  );
}

function vmById(core: LabCore, id: string | undefined): ComputerRecord {
  for (const rec of core.computers.values())
    if (rec.provisioner === 'vmware' && rec.registered && String(rec.vmid) === id) return rec;
  fail(1, vmFault('vim.fault.NotFound', [], `Unable to find a VM corresponding to "${id ?? ''}"`));
}

const vimCmd: Handler = async (ctx) => {
  const [cmd, id] = ctx.argv.slice(1);
  const core = ctx.core;
  switch (cmd) {
    case 'vmsvc/getallvms': {
      const rows = [
        'Vmid       Name                        File                          Guest OS          Version   Annotation',
      ];
      for (const rec of core.computers.values()) {
        if (rec.provisioner !== 'vmware' || !rec.registered) continue;
        const vm = rec.info.name;
        const guest = rec.os === 'linux' ? 'ubuntu64Guest' : 'windows2019srv_64Guest';
        rows.push(
          `${String(rec.vmid).padEnd(10)} ${vm.padEnd(27)} [datastore1] ${vm}/${vm}.vmx   ${guest.padEnd(17)} vmx-19              `,
        );
      }
      await ctx.out(`${rows.join('\n')}\n`);
      return 0;
    }
    case 'vmsvc/power.getstate': {
      const rec = vmById(core, id);
      await ctx.out(
        `Retrieved runtime info\n${rec.computer.power === 'off' ? 'Powered off' : 'Powered on'}\n`,
      );
      return 0;
    }
    case 'vmsvc/power.shutdown': {
      const rec = vmById(core, id);
      const power = rec.computer.power;
      if (power === 'off') fail(1, invalidPowerState('Powered off'));
      // Guest shutdown goes through VMware Tools, which run only while the guest OS does.
      if (!rec.computer.answersSsh)
        fail(
          1,
          vmFault(
            'vim.fault.ToolsUnavailable',
            [],
            'Cannot complete operation because VMware Tools is not running in this virtual machine.',
          ),
        );
      rec.computer.shutdown();
      return 0;
    }
    case 'vmsvc/power.off': {
      const rec = vmById(core, id);
      await ctx.out('Powering off VM:\n');
      if (!rec.computer.hardOff()) fail(1, invalidPowerState('Powered off'));
      return 0;
    }
    case 'vmsvc/power.on': {
      const rec = vmById(core, id);
      await ctx.out('Powering on VM:\n');
      if (!rec.computer.powerOn()) fail(1, invalidPowerState('Powered on'));
      return 0;
    }
    case 'vmsvc/unregister': {
      const rec = vmById(core, id);
      if (rec.computer.power !== 'off') fail(1, invalidPowerState('Powered on'));
      rec.registered = false;
      return 0;
    }
    default:
      fail(1, `Unknown command: '${cmd ?? ''}'`);
  }
};

/** Disks `vmkfstools` found needing repair, per ESXi host. */
const damaged = new WeakMap<HostRuntime, Set<string>>();

function damagedOf(host: HostRuntime): Set<string> {
  let set = damaged.get(host);
  if (set === undefined) {
    set = new Set();
    damaged.set(host, set);
  }
  return set;
}

/** The data file a descriptor names (`RW <sectors> VMFS "<file>"`), beside the descriptor. */
async function extentOf(ctx: CommandContext, descriptor: string, real: string): Promise<string> {
  const text = await readFile(real, 'utf8').catch(() => '');
  const m = /^RW\s+\d+\s+\w+\s+"([^"]+)"/m.exec(text);
  if (!m) fail(1, `Failed to open '${descriptor}': The file specified is not a virtual disk (15).`);
  const file = m[1] as string;
  return file.startsWith('/') ? file : posix.join(posix.dirname(ctx.host.fs.normalize(descriptor)), file);
}

async function clone(ctx: CommandContext, src: string, dst: string, type: string): Promise<number> {
  const fs = ctx.host.fs;
  const s = await fs.prepare(src);
  if ((await statOf(s.real)) === undefined)
    fail(1, `Failed to open '${src}': The system cannot find the file specified (25).`);
  const repair = ctx.core.faults.take(
    'needsRepair',
    (f) => hostMatches(f.host, ctx.host.name) && pathMatches(f.disk, s.path),
  );
  if (repair !== undefined) damagedOf(ctx.host).add(s.path);
  if (damagedOf(ctx.host).has(s.path))
    fail(1, `Failed to open '${src}': The specified virtual disk needs repair (1835020).`);
  const extent = await extentOf(ctx, src, s.real);
  if (diskInUse(ctx.core, ctx.host.name, s.path) !== undefined)
    fail(1, `Failed to open '${src}': Failed to lock the file (16392).`);
  const e = await fs.prepare(extent);
  const est = await statOf(e.real);
  if (est === undefined) fail(1, `Failed to open '${src}': The system cannot find the file specified (25).`);
  const d = await fs.prepare(dst);
  if ((await statOf(d.real)) !== undefined) fail(1, 'Failed to clone disk: The file already exists (39).');
  if (!(await statOf(posix.dirname(d.real)))?.isDirectory())
    fail(1, 'Failed to clone disk: The system cannot find the file specified (25).');
  const name = posix.basename(d.path).replace(/\.vmdk$/, '');
  if (type === '2gbsparse') return await cloneSparse(ctx, src, e, d.real, name);
  const flat = await fs.prepare(posix.join(posix.dirname(d.path), `${name}-flat.vmdk`));
  await ctx.out(`Destination disk format: VMFS thin-provisioned\nCloning disk '${src}'...\n`);
  await ctx.core.beforeRead(ctx.host, e.path, e.real);
  try {
    await copyWithin(ctx, e.real, flat.real);
    await writeFile(d.real, descriptorText(name, est.size, true));
  } catch (err) {
    await rm(flat.real, { force: true });
    if (err instanceof NoSpaceError) fail(1, 'Failed to clone disk: No space left on device (1835017).');
    throw err;
  }
  await ctx.out('Clone: 100% done.\n');
  return 0;
}

/** The extents vmkfstools and qemu-img name for a 2gbsparse `<name>.vmdk`: `<name>-s001.vmdk`... */
function isSparseExtentOf(name: string, file: string): boolean {
  return file.startsWith(`${name}-s`) && /^-s\d{3}\.vmdk$/.test(file.slice(name.length));
}

/**
 * `vmkfstools -i <src> <dst> -d 2gbsparse`: the source's data (its flat extent, raw) converted by this
 * machine's `qemu-img` into a twoGbMaxExtentSparse set beside `dst`. The set's allocated bytes count
 * against the host's free space after the fact (a `diskFull` fault then fails it as vmkfstools does), and
 * a failed or killed clone leaves no file of the set, as vmkfstools removes its partial destination.
 */
async function cloneSparse(
  ctx: CommandContext,
  src: string,
  extent: { path: string; real: string },
  dstReal: string,
  name: string,
): Promise<number> {
  await ctx.out(`Destination disk format: sparse with 2GB maximum extent size\nCloning disk '${src}'...\n`);
  await ctx.core.beforeRead(ctx.host, extent.path, extent.real);
  const dir = posix.dirname(dstReal);
  const setFiles = async () =>
    (await readdir(dir)).filter((f) => f === `${name}.vmdk` || isSparseExtentOf(name, f));
  try {
    await localQemuImg(
      [
        'convert',
        '-q',
        '-f',
        'raw',
        '-O',
        'vmdk',
        '-o',
        'subformat=twoGbMaxExtentSparse',
        extent.real,
        dstReal,
      ],
      ctx.signal,
    );
    let allocated = 0;
    for (const f of await setFiles()) allocated += ((await statOf(posix.join(dir, f)))?.blocks ?? 0) * 512;
    ctx.core.checkWrite(ctx.host.name, allocated);
  } catch (err) {
    for (const f of await setFiles()) await rm(posix.join(dir, f), { force: true });
    if (err instanceof NoSpaceError) fail(1, 'Failed to clone disk: No space left on device (1835017).');
    if ((err as NodeJS.ErrnoException).code === 'ENOENT')
      fail(1, "Failed to clone disk: the lab needs this machine's qemu-img for 2gbsparse (qemu-utils).");
    throw err;
  }
  await ctx.out('Clone: 100% done.\n');
  return 0;
}

/** The lab's datastore as `vmkfstools -P` sees it: this large, 1 MiB file blocks. */
const VOLUME_BYTES = 2 * 1024 ** 4;
const FILE_BLOCK = 1024 * 1024;

/** `vmkfstools -P /vmfs/volumes/<datastore>` in ESXi 7/8 words; free space is the lab's `freeBytes`. */
async function volumeInfo(ctx: CommandContext, volume: string): Promise<number> {
  const v = await ctx.host.fs.prepare(volume);
  if (!v.path.startsWith('/vmfs/volumes/') || (await statOf(v.real)) === undefined)
    fail(255, `Could not retrieve attributes for ${volume}: No such file or directory`);
  const label = v.path.split('/')[3] ?? '';
  const free = Math.min(VOLUME_BYTES, ctx.core.freeBytes(ctx.host.name));
  await ctx.out(
    [
      'VMFS-6.82 (Raw Major Version: 24) file system spanning 1 partitions.',
      `File system label (if any): ${label}`,
      'Mode: public',
      `Capacity ${VOLUME_BYTES} (${VOLUME_BYTES / FILE_BLOCK} file blocks * ${FILE_BLOCK}), ${free} (${Math.floor(free / FILE_BLOCK)} blocks) avail, max supported file size 70368744177664`,
      'Volume Creation Time: Mon Nov 24 10:30:00 2025',
      'Files (max/free): 16384/16000',
      'Ptr Blocks (max/free): 0/0',
      'Sub Blocks (max/free): 16384/16000',
      'Secondary Ptr Blocks (max/free): 256/255',
      'File Blocks (overcommit/used/overcommit %): 0/0/0',
      'Ptr Blocks  (overcommit/used/overcommit %): 0/0/0',
      'Sub Blocks  (overcommit/used/overcommit %): 0/0/0',
      'Volume Metadata size: 1510998016',
      'Disk Block Size: 512/512/0',
      'UUID: 5f3a1b2c-4d5e6f70-8192-a3b4c5d6e7f8',
      'Logical device: 5f3a1b2b-00000000-0000-a3b4c5d6e7f8',
      'Partitions spanned (on "lvm"):',
      '\tmpx.vmhba0:C0:T0:L0:3',
      'Is Native Snapshot Capable: NO',
      '',
    ].join('\n'),
  );
  return 0;
}

const vmkfstools: Handler = async (ctx) => {
  const args = ctx.argv.slice(1);
  const [op, a, b] = args;
  if (op === '-i' && a !== undefined && b !== undefined) {
    const d = args.indexOf('-d');
    const type = d >= 0 ? args[d + 1] : 'zeroedthick';
    if (type === undefined || !['thin', 'zeroedthick', 'eagerzeroedthick', '2gbsparse'].includes(type))
      fail(1, `Failed to clone disk: Invalid disk type '${type ?? ''}'.`);
    return await clone(ctx, a, b, type);
  }
  if (op === '-x' && (a === 'repair' || a === 'check') && b !== undefined) {
    const s = await ctx.host.fs.prepare(b);
    if ((await statOf(s.real)) === undefined)
      fail(1, `Failed to open '${b}': The system cannot find the file specified (25).`);
    const broken = damagedOf(ctx.host).has(s.path);
    if (a === 'repair') {
      damagedOf(ctx.host).delete(s.path);
      await ctx.out(broken ? 'Disk was successfully repaired.\n' : 'Disk is error free\n');
      return 0;
    }
    await ctx.out(broken ? 'Disk needs repair.\n' : 'Disk is error free\n');
    return broken ? 1 : 0;
  }
  if (op === '-U' && a !== undefined) {
    const s = await ctx.host.fs.prepare(a);
    if ((await statOf(s.real)) === undefined)
      fail(1, `Failed to delete virtual disk: The system cannot find the file specified (25).`);
    const extent = await extentOf(ctx, a, s.real);
    const e = await ctx.host.fs.prepare(extent);
    await rm(e.real, { force: true });
    await rm(s.real, { force: true });
    return 0;
  }
  if (op === '-P' && a !== undefined && b === undefined) return await volumeInfo(ctx, a);
  fail(
    1,
    'vmkfstools: the lab supports -i <src> <dst> [-d <type>], -x repair|check <disk>, -U <disk>, -P <volume>',
  );
};

export const ESXI_COMMANDS: ReadonlyMap<string, Handler> = new Map([
  ['vim-cmd', vimCmd],
  ['vmkfstools', vmkfstools],
]);
