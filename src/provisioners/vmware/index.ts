/** VMware ESXi: the VM's one disk thin-cloned with vmkfstools, then copied to the repository. */
import { z } from 'zod';
import { name } from '../../inventory/fields.js';
import type { Provisioner } from '../types.js';
import { vmwareLab } from './lab.js';
import { vmwarePreflight, vmwareSteps } from './steps.js';

export const vmwareProvisioner = {
  settings: z
    .object({
      type: z.literal('vmware'),
      host: name,
      vm: name,
      /** Datastore for the thin clone (default: the VM's own). */
      datastore: name.optional(),
    })
    .strict(),
  steps: vmwareSteps,
  preflight: vmwarePreflight,
  dryRun: {
    outputs: {
      locate_vm: { facts: { vmid: 42, vmx: '/vmfs/volumes/datastore1/vm1/vm1.vmx' } },
      clone_disk: { facts: { clone: '/vmfs/volumes/datastore1/capture/vm1.vmdk' } },
    },
    artifactStep: 'copy_to_repository',
  },
  lab: vmwareLab,
} satisfies Provisioner;
