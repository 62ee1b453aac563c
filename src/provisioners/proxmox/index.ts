/** Proxmox VE: a VM's one disk (`qm config`, `pvesm path`) converted with qemu-img on its node. */
import { z } from 'zod';
import { absolutePath, name } from '../../inventory/fields.js';
import type { Provisioner } from '../types.js';
import { VMID_MAX, VMID_MIN } from './commands.js';
import { proxmoxLab } from './lab.js';
import { proxmoxPreflight, proxmoxSteps } from './steps.js';

export const proxmoxProvisioner = {
  settings: z
    .object({
      type: z.literal('proxmox'),
      /** The node that runs the VM (its SSH host). */
      host: name,
      vmid: z
        .number()
        .int('a VM id is a whole number')
        .min(VMID_MIN, `Proxmox VM ids start at ${VMID_MIN}`)
        .max(VMID_MAX, `Proxmox VM ids end at ${VMID_MAX}`),
      /** The disk to capture when the VM has several (`scsi0`, `virtio1`, ...). */
      disk: z
        .string()
        .regex(/^(?:ide|sata|scsi|virtio)\d{1,2}$/, 'a disk device as qm config names it, e.g. scsi0')
        .optional(),
      /** Target disk format. */
      format: z.enum(['qcow2', 'raw']).default('qcow2'),
      /** Where the copy is staged on the node when the repository is another host (default /var/lib/vz/dump). */
      stagingDir: absolutePath.optional(),
    })
    .strict(),
  steps: proxmoxSteps,
  preflight: proxmoxPreflight,
  dryRun: {
    outputs: {
      inspect_vm: {
        facts: { vmid: 100, diskKey: 'scsi0', disk: '/dev/pve/vm-100-disk-0', sourceFormat: 'raw' },
      },
    },
    artifactStep: 'copy_image',
  },
  lab: proxmoxLab,
} satisfies Provisioner;
