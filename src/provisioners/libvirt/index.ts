/** libvirt/KVM: a domain's first disk converted with qemu-img on the libvirt host. */
import { z } from 'zod';
import { name } from '../../inventory/fields.js';
import type { Provisioner } from '../types.js';
import { DEFAULT_BOOT_PATTERN } from './commands.js';
import { libvirtLab } from './lab.js';
import { libvirtPreflight, libvirtSteps } from './steps.js';

/**
 * The boot test of a captured image (`boot_test`): how the guest shows it booted. `console`: a line of
 * its serial console matching `pattern` (a JavaScript regular expression; the test domain's serial port
 * is written to a file); `ssh`: an SSH identification line on 127.0.0.1:`port` of the libvirt host, which
 * the test domain forwards to the guest's port 22. Its timeout is `timeouts.bootTestMs`.
 */
export const bootTestSettings = z
  .object({
    enabled: z.boolean().default(false),
    check: z.enum(['console', 'ssh']).default('console'),
    port: z.number().int().min(1024, 'use an unprivileged port (1024-65535)').max(65535).optional(),
    pattern: z
      .string()
      .min(1)
      .max(200)
      .refine((p) => {
        try {
          new RegExp(p);
          return true;
        } catch {
          return false;
        }
      }, 'must be a valid regular expression (JavaScript syntax)')
      .default(DEFAULT_BOOT_PATTERN),
  })
  .strict()
  .refine((b) => b.check !== 'ssh' || b.port !== undefined, {
    message:
      "check 'ssh' needs port: the libvirt host's loopback port the test domain forwards to the guest's SSH",
    path: ['port'],
  })
  .default({ enabled: false, check: 'console', pattern: DEFAULT_BOOT_PATTERN });

export const libvirtProvisioner = {
  settings: z
    .object({
      type: z.literal('libvirt'),
      host: name,
      domain: name,
      /** Target disk format. */
      format: z.enum(['qcow2', 'raw']).default('qcow2'),
      /** Boot every captured image in a throwaway domain before it is recorded (off by default). */
      bootTest: bootTestSettings,
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
