/** The built-in lab's libvirt host: virsh and qemu-img over the lab's files, one qcow2 disk per domain. */

import { ZSTD_COMMANDS } from '../../lab/commands/zstd.js';
import { createSparseDisk } from '../../lab/fs.js';
import type { LabProvisioner } from '../types.js';
import { LIBVIRT_COMMANDS } from './lab-commands.js';

const IMAGES = '/var/lib/libvirt/images';

export const libvirtLab = {
  host: {
    name: 'libvirt-host',
    role: 'libvirt',
    dirs: [IMAGES, '/root'],
    commands: [ZSTD_COMMANDS, LIBVIRT_COMMANDS],
  },
  repositories: { 'kvm-local': '/var/lib/vcl/images' },
  defaultRepository: 'images',
  prefix: 'lv',
  macVendor: '52:54:00:00',
  disk({ name, host, sizeBytes }) {
    const path = `${IMAGES}/${name}.qcow2`;
    host.fs.defineLazy(path, (real) => createSparseDisk(real, sizeBytes));
    host.fs.formats.set(path, 'qcow2');
    return {
      disk: { host: host.name, path, real: host.fs.realOf(path) },
      ensureDisk: async () => (await host.fs.prepare(path)).real,
    };
  },
  inventory: (computer, host) => ({ type: 'libvirt', host, domain: computer, format: 'qcow2' }),
} as const satisfies LabProvisioner;
