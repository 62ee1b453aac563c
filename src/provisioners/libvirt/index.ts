/** libvirt/KVM: a domain's first disk converted with qemu-img on the libvirt host. */
import { z } from 'zod';
import { name } from '../../inventory/fields.js';
import type { Provisioner } from '../types.js';
import { libvirtLab } from './lab.js';
import { libvirtPreflight, libvirtSteps } from './steps.js';

export const libvirtProvisioner = {
  settings: z
    .object({
      type: z.literal('libvirt'),
      host: name,
      domain: name,
      /** Target disk format. */
      format: z.enum(['qcow2', 'raw']).default('qcow2'),
    })
    .strict(),
  steps: libvirtSteps,
  preflight: libvirtPreflight,
  dryRun: {
    outputs: {
      inspect_domain: {
        facts: { domain: 'vm1', disk: '/var/lib/libvirt/images/vm1.qcow2', format: 'qcow2' },
      },
    },
    artifactStep: 'copy_image',
  },
  lab: libvirtLab,
} satisfies Provisioner;
