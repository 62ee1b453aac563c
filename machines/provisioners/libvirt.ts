/**
 * libvirt/KVM capture (docs/capture-flow.md, "libvirt / KVM"): the OS ends `off` (or stays `on` and the
 * provisioner asks libvirt for the shutdown); wait for `shut off`, escalate to `virsh destroy`; copy the
 * first disk with `qemu-img convert`; verify format and checksum; when the computer's inventory asks for it,
 * boot the image in a throwaway domain on a copy-on-write overlay and wait until it shows it booted;
 * record; release.
 */
import {
  captureResult,
  captureSetup,
  captureStates,
  initialCaptureContext,
  type ProvisionerSpec,
} from './capture-machine.js';

declare module '../types.js' {
  interface ProvisionerNames {
    libvirt: true;
  }
}

export const LIBVIRT: ProvisionerSpec = {
  name: 'libvirt',
  endStates: ['off', 'on'],
  watchesReturn: false,
  sysprepByDefault: false,
};

export const LIBVIRT_STEPS = [
  'reserve',
  'inspect_domain',
  'request_power_off',
  'wait_power_off',
  'force_power_off',
  'wait_forced_off',
  'copy_image',
  'verify_image',
  'boot_test',
  'record_revision',
  'remove_boot_test',
  'remove_copy',
  'release_computer',
] as const;

const libvirtSetup = captureSetup(LIBVIRT_STEPS);
const { forwardStep, preCapture, cleanupState, finals, reserveStep, powerOffSteps } =
  captureStates<(typeof LIBVIRT_STEPS)[number]>('libvirt');

export const libvirtMachine = libvirtSetup.createMachine({
  id: 'libvirt',
  description:
    'Capture a libvirt/KVM domain: OS pre_capture, power off, qemu-img convert, verify, boot test (optional), record',
  context: ({ input }) => initialCaptureContext(LIBVIRT, input),
  initial: 'capturing',
  states: {
    capturing: {
      initial: 'reserve',
      on: { CANCEL: { target: 'cleanup', actions: 'markCancelled' } },
      states: {
        reserve: reserveStep('inspect_domain'),
        inspect_domain: forwardStep('inspect_domain', {
          title:
            'Preflight: hosts and their tools, the domain and its first disk, the target free, room for the copy',
          effect: 'check',
          touches: false,
          next: 'pre_capture',
        }),
        pre_capture: preCapture('request_power_off'),
        ...powerOffSteps('copy_image', {
          request: 'Ask libvirt for a graceful shutdown unless the domain is already off',
          wait: 'Wait for domstate "shut off"',
          force: 'Force the power off (virsh destroy)',
          waitForced: 'Wait for domstate "shut off" after the forced power off',
        }),
        copy_image: forwardStep('copy_image', {
          title: 'Copy the disk into the repository (qemu-img convert)',
          effect: 'copy',
          touches: true,
          timeout: 'copyMs',
          next: 'verify_image',
          compensation: 'remove_copy',
        }),
        verify_image: forwardStep('verify_image', {
          title: 'Verify the copy (qemu-img check, sha256)',
          effect: 'verify',
          touches: false,
          timeout: 'verifyMs',
          next: 'record_revision',
          onDone: [
            { guard: 'bootTestEnabled', target: 'boot_test', actions: 'mergeOutput' },
            { target: 'record_revision', actions: 'mergeOutput' },
          ],
        }),
        boot_test: forwardStep('boot_test', {
          title:
            'Boot test: boot the image in a throwaway domain on a copy-on-write overlay until it shows it booted, then remove both',
          effect: 'boot-test',
          touches: false,
          timeout: 'bootTestMs',
          next: 'record_revision',
          compensation: 'remove_boot_test',
          doneActions: [{ type: 'settle', params: { compensation: 'remove_boot_test' } }],
        }),
        record_revision: forwardStep('record_revision', {
          title: 'Record the image revision and release the computer for reload (one transaction)',
          effect: 'record',
          touches: false,
          next: '#libvirt.completed',
        }),
      },
    },
    cleanup: cleanupState(['remove_boot_test', 'remove_copy', 'release_computer']),
    ...finals,
  },
  output: ({ context }) => captureResult(context),
});
