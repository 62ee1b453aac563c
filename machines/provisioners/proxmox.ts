/**
 * Proxmox VE capture: find the VM and its one disk (`qm config`, `pvesm path`) and refuse an existing
 * target before touching it; the OS ends `off` (or stays `on` and the provisioner asks `qm shutdown`);
 * wait for `qm status` "stopped", escalate to `qm stop`; convert the disk with `qemu-img convert` on the
 * node (sparse: a block device source does not become a fully allocated copy); verify; record; release.
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
    proxmox: true;
  }
}

export const PROXMOX: ProvisionerSpec = {
  name: 'proxmox',
  endStates: ['off', 'on'],
  watchesReturn: false,
  sysprepByDefault: false,
};

export const PROXMOX_STEPS = [
  'reserve',
  'inspect_vm',
  'request_power_off',
  'wait_power_off',
  'force_power_off',
  'wait_forced_off',
  'copy_image',
  'verify_image',
  'record_revision',
  'remove_copy',
  'release_computer',
] as const;

const proxmoxSetup = captureSetup(PROXMOX_STEPS);
const { forwardStep, preCapture, cleanupState, finals, reserveStep, powerOffSteps } =
  captureStates<(typeof PROXMOX_STEPS)[number]>('proxmox');

export const proxmoxMachine = proxmoxSetup.createMachine({
  id: 'proxmox',
  description: 'Capture a Proxmox VE VM: OS pre_capture, qm shutdown/stop, qemu-img convert, verify, record',
  context: ({ input }) => initialCaptureContext(PROXMOX, input),
  initial: 'capturing',
  states: {
    capturing: {
      initial: 'reserve',
      on: { CANCEL: { target: 'cleanup', actions: 'markCancelled' } },
      states: {
        reserve: reserveStep('inspect_vm'),
        inspect_vm: forwardStep('inspect_vm', {
          title:
            'Preflight: hosts and their tools, the VM and its one disk (qm config, pvesm path), the target free, room for the copy',
          effect: 'check',
          touches: false,
          next: 'pre_capture',
        }),
        pre_capture: preCapture('request_power_off'),
        ...powerOffSteps('copy_image', {
          request: 'Ask for a clean shutdown (qm shutdown --timeout) unless the VM is already stopped',
          wait: 'Wait for qm status "status: stopped"',
          force: 'Stop the VM at once (qm stop)',
          waitForced: 'Wait for "status: stopped" after qm stop',
        }),
        copy_image: forwardStep('copy_image', {
          title: 'Convert the disk into the repository (qemu-img convert, sparse)',
          effect: 'copy',
          touches: true,
          timeout: 'copyMs',
          next: 'verify_image',
          compensation: 'remove_copy',
        }),
        verify_image: forwardStep('verify_image', {
          title: 'Verify the copy (re-hash, compare)',
          effect: 'verify',
          touches: false,
          timeout: 'verifyMs',
          next: 'record_revision',
        }),
        record_revision: forwardStep('record_revision', {
          title: 'Record the image revision and release the computer for reload (one transaction)',
          effect: 'record',
          touches: false,
          next: '#proxmox.completed',
        }),
      },
    },
    cleanup: cleanupState(['remove_copy', 'release_computer']),
    ...finals,
  },
  output: ({ context }) => captureResult(context),
});
