/**
 * The built-in lab's xCAT management node: rpower, nodeset, nodestat, nodech; its nodes are bare metal
 * whose disks lie outside every host, and boot into the capture environment when nodeset says so.
 */
import { join } from 'node:path';
import { ZSTD_COMMANDS } from '../../lab/commands/zstd.js';
import { createSparseDisk } from '../../lab/fs.js';
import type { LabProvisioner } from '../types.js';
import { XCAT_COMMANDS } from './lab-commands.js';

/** The xCAT osimage whose boot runs the capture environment. */
export const LAB_CAPTURE_IMAGE = 'vcl-capture-x86_64';

const XCAT_IMAGES = '/install/image/x86';

export const xcatLab = {
  host: {
    name: 'xcat-mn',
    role: 'xcat',
    dirs: [XCAT_IMAGES, '/root'],
    commands: [ZSTD_COMMANDS, XCAT_COMMANDS],
  },
  repositories: { 'xcat-images': XCAT_IMAGES },
  defaultRepository: 'xcat-images',
  prefix: 'xc',
  macVendor: '52:54:00:00',
  disk({ name, dir, sizeBytes, stopping }) {
    const real = join(dir, 'baremetal', `${name}.img`);
    let created: Promise<void> | undefined;
    return {
      disk: { host: undefined, path: real, real },
      ensureDisk: async () => {
        if (stopping.aborted) throw new Error('the lab has stopped');
        created ??= createSparseDisk(real, sizeBytes);
        await created;
        return real;
      },
    };
  },
  setUp(rec) {
    rec.computer.nextBoot = () => (rec.nodeset.kind === 'osimage' ? 'captureEnv' : 'os');
  },
  inventory: (computer, host) => ({ type: 'xcat', host, node: computer, captureImage: LAB_CAPTURE_IMAGE }),
} as const satisfies LabProvisioner;
