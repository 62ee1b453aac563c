/**
 * The Proxmox VE node: `qm` (config, status, shutdown, stop, start) and `pvesm path`, in Proxmox VE 8's
 * output formats (qm(1), pvesm(1); see commands.ts), and `qemu-img` as on the libvirt host (a running
 * VM holds its disk's write lock). Storages: `local` (a directory, /var/lib/vz) and `local-lvm` (LVM-thin
 * in volume group `pve`: block devices /dev/pve/<volume>, played by sparse files).
 */
import type { CommandContext, ComputerRecord, Handler, LabCore } from '../../lab/core.js';
import { fail } from '../../lab/core.js';
import { LIBVIRT_COMMANDS } from '../libvirt/lab-commands.js';

/** The node's name in its configuration paths (`nodes/<node>/qemu-server/<vmid>.conf`). */
export const NODE = 'pve-node';
/** The `local` directory storage's images and the `local-lvm` volume group's devices. */
export const DIR_IMAGES = '/var/lib/vz/images';
export const LVM_DEVICES = '/dev/pve';

/**
 * A lab VM's id, from its name alone (the inventory entry is written from the name): `px-linux-<n>` is
 * 10000 + n, `px-windows-<n>` 20000 + n.
 */
export function vmidOf(computer: string): number {
  const m = /^px-(linux|windows)-(\d+)$/.exec(computer);
  if (!m) throw new Error(`lab: ${computer} is not a Proxmox computer's name`);
  return (m[1] === 'windows' ? 20000 : 10000) + Number(m[2]);
}

/** A size as qm prints it in a disk's `size=` option: whole K, M, G or T. */
export function qmSize(bytes: number): string {
  for (const [unit, scale] of [
    ['T', 1024 ** 4],
    ['G', 1024 ** 3],
    ['M', 1024 ** 2],
    ['K', 1024],
  ] as const)
    if (bytes >= scale && bytes % scale === 0) return `${bytes / scale}${unit}`;
  return `${Math.ceil(bytes / 1024)}K`;
}

/** The VM `qm <sub> <vmid>` names, or qm's own error for an id it has no configuration for. */
function vmOf(core: LabCore, arg: string | undefined): ComputerRecord {
  const vmid = Number(arg);
  if (!/^\d+$/.test(arg ?? ''))
    fail(
      255,
      `400 Parameter verification failed.\nvmid: invalid format - value does not look like a valid VM ID\n`,
    );
  for (const rec of core.computers.values())
    if (rec.provisioner === 'proxmox' && vmidOf(rec.info.name) === vmid) return rec;
  fail(2, `Configuration file 'nodes/${NODE}/qemu-server/${vmid}.conf' does not exist`);
}

/** The volume of a disk path the lab laid out (see lab.ts): `local-lvm:<name>` or `local:<vmid>/<file>`. */
export function volidOf(path: string): string {
  if (path.startsWith(`${LVM_DEVICES}/`)) return `local-lvm:${path.slice(LVM_DEVICES.length + 1)}`;
  if (path.startsWith(`${DIR_IMAGES}/`)) return `local:${path.slice(DIR_IMAGES.length + 1)}`;
  throw new Error(`the lab laid out no Proxmox volume at ${path}`);
}

/** A Windows VM's second (data) disk, on LVM. */
export function dataDiskOf(vmid: number): string {
  return `${LVM_DEVICES}/vm-${vmid}-disk-1`;
}

/** `qm config`: the current configuration, keys sorted as qm prints them. */
export function configText(rec: ComputerRecord, sizeBytes: number): string {
  const vmid = vmidOf(rec.info.name);
  const windows = rec.os === 'windows';
  const size = qmSize(sizeBytes);
  const lines: Record<string, string> = {
    boot: 'order=scsi0;ide2;net0',
    cores: '2',
    ide2: 'none,media=cdrom',
    memory: windows ? '4096' : '2048',
    meta: 'creation-qemu=8.1.5,ctime=1733270400',
    name: rec.info.name,
    net0: `virtio=${rec.mac.toUpperCase()},bridge=vmbr0,firewall=1`,
    numa: '0',
    ostype: windows ? 'win11' : 'l26',
    scsi0: `${volidOf(rec.info.disk.path)},iothread=1,size=${size}`,
    scsihw: 'virtio-scsi-single',
    smbios1: `uuid=${rec.uuid}`,
    sockets: '1',
    vmgenid: rec.uuid,
  };
  if (windows) {
    // UEFI and TPM state volumes are not the guest's disks; a second, data disk makes the choice explicit.
    lines.scsi1 = `${volidOf(dataDiskOf(vmid))},iothread=1,size=${size}`;
    lines.bios = 'ovmf';
    lines.efidisk0 = `local-lvm:vm-${vmid}-disk-2,efitype=4m,pre-enrolled-keys=1,size=4M`;
    lines.tpmstate0 = `local-lvm:vm-${vmid}-disk-3,size=4M,version=v2.0`;
    lines.machine = 'pc-q35-8.1';
  }
  return `${Object.keys(lines)
    .sort()
    .map((k) => `${k}: ${lines[k]}`)
    .join('\n')}\n`;
}

/** Waits up to `seconds` for the VM to stop; false when it still runs then. */
async function stopsWithin(ctx: CommandContext, rec: ComputerRecord, seconds: number): Promise<boolean> {
  const until = Date.now() + seconds * 1000;
  while (rec.computer.power !== 'off') {
    if (Date.now() >= until) return false;
    await ctx.sleep(Math.min(20, until - Date.now()));
  }
  return true;
}

const qmCmd: Handler = async (ctx) => {
  const [sub, vmidArg, ...args] = ctx.argv.slice(1);
  const option = (name: string) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? args[i + 1] : undefined;
  };
  switch (sub) {
    case 'config': {
      const rec = vmOf(ctx.core, vmidArg);
      await ctx.out(configText(rec, ctx.core.options.diskBytes));
      return 0;
    }
    case 'status': {
      const rec = vmOf(ctx.core, vmidArg);
      await ctx.out(`status: ${rec.computer.power === 'off' ? 'stopped' : 'running'}\n`);
      return 0;
    }
    case 'shutdown': {
      const rec = vmOf(ctx.core, vmidArg);
      const timeout = option('timeout');
      const seconds = timeout === undefined ? 600 : Number(timeout);
      if (!Number.isInteger(seconds) || seconds < 0)
        fail(
          255,
          `400 Parameter verification failed.\ntimeout: type check ('integer') failed - got '${timeout}'\n`,
        );
      // vm_stop returns at once for a VM that is not running.
      if (rec.computer.power === 'off') return 0;
      // ACPI power button: a guest that ignores it still got the request.
      rec.computer.shutdown();
      if (!(await stopsWithin(ctx, rec, seconds))) fail(255, 'VM quit/powerdown failed - got timeout');
      return 0;
    }
    case 'stop':
      // Immediate, and a no-op for a VM that is not running (vm_stop returns at once).
      vmOf(ctx.core, vmidArg).computer.hardOff();
      return 0;
    case 'start': {
      const rec = vmOf(ctx.core, vmidArg);
      if (!rec.computer.powerOn()) fail(255, `VM ${vmidArg} already running`);
      return 0;
    }
    case undefined:
      fail(255, 'ERROR: no command specified');
      break;
    default:
      fail(255, `ERROR: unknown command 'qm ${sub}'`);
  }
  return 255;
};

const pvesmCmd: Handler = async (ctx) => {
  const [sub, volid] = ctx.argv.slice(1);
  if (sub !== 'path') fail(255, `ERROR: unknown command 'pvesm ${sub ?? ''}'`);
  const m = /^([^:]+):(.+)$/.exec(volid ?? '');
  if (!m) fail(255, `unable to parse volume ID '${volid ?? ''}'`);
  const [, storage, name] = m as unknown as [string, string, string];
  if (storage === 'local-lvm') {
    if (!/^(?:vm|base)-\d+-disk-\d+$/.test(name)) fail(255, `unable to parse lvm volume name '${name}'`);
    await ctx.out(`${LVM_DEVICES}/${name}\n`);
    return 0;
  }
  if (storage === 'local') {
    if (!/^\d+\/[\w.-]+\.(?:raw|qcow2|vmdk)$/.test(name))
      fail(255, `unable to parse directory volume name '${name}'`);
    await ctx.out(`${DIR_IMAGES}/${name}\n`);
    return 0;
  }
  fail(255, `storage '${storage}' does not exist`);
};

export const PROXMOX_COMMANDS: ReadonlyMap<string, Handler> = new Map([
  ['qm', qmCmd],
  ['pvesm', pvesmCmd],
  ['qemu-img', LIBVIRT_COMMANDS.get('qemu-img') as Handler],
]);
