/** The built-in lab's ESXi host: vim-cmd and vmkfstools over one datastore, a .vmx and a thin disk per VM. */
import { writeFile } from 'node:fs/promises';
import { createSparseDisk } from '../../lab/fs.js';
import type { LabProvisioner } from '../types.js';
import { DATASTORE, descriptorText, ESXI_COMMANDS, vmxText } from './lab-commands.js';

export const vmwareLab = {
  // ESXi's busybox has no zstd: the copies from it go raw.
  host: {
    name: 'esxi-host',
    role: 'esxi',
    dirs: [DATASTORE, `${DATASTORE}/iso`, '/root'],
    commands: [ESXI_COMMANDS],
    prepare: (fs) => writeFile(fs.realOf(`${DATASTORE}/iso/tools.iso`), ''),
  },
  repositories: {},
  defaultRepository: 'images',
  prefix: 'vm',
  macVendor: '00:0c:29:00',
  numbered: true,
  disk({ name, host, sizeBytes }) {
    const folder = `${DATASTORE}/${name}`;
    const path = `${folder}/${name}.vmdk`;
    const flatPath = `${folder}/${name}-flat.vmdk`;
    host.fs.defineLazy(flatPath, (real) => createSparseDisk(real, sizeBytes));
    host.fs.defineLazy(path, (real) => writeFile(real, descriptorText(name, sizeBytes, false)));
    return {
      disk: { host: host.name, path, real: host.fs.realOf(flatPath) },
      flatPath,
      ensureDisk: async () => (await host.fs.prepare(flatPath)).real,
    };
  },
  setUp(rec, host) {
    const name = rec.info.name;
    host?.fs.defineLazy(`${DATASTORE}/${name}/${name}.vmx`, (real) => writeFile(real, vmxText(rec)));
  },
  inventory: (computer, host) => ({ type: 'vmware', host, vm: computer }),
} as const satisfies LabProvisioner;
