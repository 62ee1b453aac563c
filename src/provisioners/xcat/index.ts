/** xCAT: the node booted into a capture image that uploads its disk to the repository (VCL-94). */
import { z } from 'zod';
import { name } from '../../inventory/fields.js';
import type { Provisioner } from '../types.js';
import { xcatLab } from './lab.js';
import { xcatPreflight, xcatSteps } from './steps.js';

export const xcatProvisioner = {
  settings: z
    .object({
      type: z.literal('xcat'),
      host: name,
      node: name,
      /** The osimage that boots the node into the capture environment. */
      captureImage: name,
    })
    .strict(),
  steps: xcatSteps,
  preflight: xcatPreflight,
  dryRun: { outputs: {}, artifactStep: 'watch_upload' },
  lab: xcatLab,
} satisfies Provisioner;
