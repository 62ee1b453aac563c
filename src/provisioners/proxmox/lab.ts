/**
 * The built-in lab's Proxmox VE node: qm, pvesm and qemu-img over the lab's files. A Linux VM's disk is an
 * LVM-thin volume (a block device, /dev/pve/vm-<vmid>-disk-0, played by a sparse file), a Windows VM's a qcow2 file on the `local`
 * directory storage with a second, data disk on LVM (its inventory entry names `scsi0`).
 */
import { ZSTD_COMMANDS } from '../../lab/commands/zstd.js';
import { createSparseDisk } from '../../lab/fs.js';
import type { LabProvisioner } from '../types.js';
import { DIR_IMAGES, dataDiskOf, LVM_DEVICES, PROXMOX_COMMANDS, vmidOf } from './lab-commands.js';

const windows = (computer: string) => /^px-windows-/.test(computer);

export const proxmoxLab = {
  prefix: 'px',
  // Proxmox VE's own OUI, as it generates MAC addresses.
  macVendor: 'bc:24:11:00',
  // Proxmox VE is Debian: zstd is installed.
  host: {
    name: 'pve-node',
    role: 'proxmox',
    commands: [ZSTD_COMMANDS, PROXMOX_COMMANDS],
    dirs: [LVM_DEVICES, DIR_IMAGES, '/var/lib/vz/dump', '/root'],
  },
  // A repository on the node itself: qemu-img converts straight into it.
  repositories: { 'pve-local': '/var/lib/vz/vcl-images' },
  defaultRepository: 'images',
  disk({ name, host, sizeBytes }) {
    const vmid = vmidOf(name);
    const path = windows(name)
      ? `${DIR_IMAGES}/${vmid}/vm-${vmid}-disk-0.qcow2`
      : `${LVM_DEVICES}/vm-${vmid}-disk-0`;
    host.fs.defineLazy(path, (real) => createSparseDisk(real, sizeBytes));
    if (windows(name)) {
      host.fs.formats.set(path, 'qcow2');
      host.fs.defineLazy(dataDiskOf(vmid), (real) => createSparseDisk(real, sizeBytes));
    }
    return {
      disk: { host: host.name, path, real: host.fs.realOf(path) },
      ensureDisk: async () => (await host.fs.prepare(path)).real,
    };
  },
  inventory: (computer, host) => ({
    type: 'proxmox',
    host,
    vmid: vmidOf(computer),
    ...(windows(computer) ? { disk: 'scsi0' } : {}),
    format: 'qcow2',
  }),
} as const satisfies LabProvisioner;
