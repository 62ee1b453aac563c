/**
 * VMware ESXi capture (docs/capture-flow.md, "VMware"): locate the VM and refuse anything ambiguous before
 * touching it; OS ends `off`; wait for `Powered off`, escalate to a hard power off; clone the disk thin
 * with one repair-and-retry; copy the clone to the repository as a 2gbsparse vmdk set; verify; record; release.
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
    vmware: true;
  }
}

export const VMWARE: ProvisionerSpec = {
  name: 'vmware',
  endStates: ['off', 'on'],
  watchesReturn: false,
  // VCL never uses sysprep for Windows on VMware.
  sysprepByDefault: false,
};

export const VMWARE_STEPS = [
  'reserve',
  'locate_vm',
  'check_target',
  'request_power_off',
  'wait_power_off',
  'force_power_off',
  'wait_forced_off',
  'clone_disk',
  'repair_disk',
  'copy_to_repository',
  'verify_image',
  'record_revision',
  'remove_repository_copy',
  'remove_clone',
  'release_computer',
] as const;

const vmwareSetup = captureSetup(VMWARE_STEPS);
const { forwardStep, preCapture, cleanupState, finals, reserveStep, powerOffSteps } =
  captureStates<(typeof VMWARE_STEPS)[number]>('vmware');

export const vmwareMachine = vmwareSetup.createMachine({
  id: 'vmware',
  description:
    'Capture a VMware ESXi VM: OS pre_capture, power off, vmkfstools clone, copy to repository as 2gbsparse, verify',
  context: ({ input }) => initialCaptureContext(VMWARE, input),
  initial: 'capturing',
  states: {
    capturing: {
      initial: 'reserve',
      on: { CANCEL: { target: 'cleanup', actions: 'markCancelled' } },
      states: {
        reserve: reserveStep('locate_vm'),
        locate_vm: forwardStep('locate_vm', {
          title: 'Preflight: hosts and their tools; the VM registered once, with exactly one persistent disk',
          effect: 'check',
          touches: false,
          next: 'check_target',
        }),
        check_target: forwardStep('check_target', {
          title:
            'Preflight: the target free on the datastore and in the repository, room for the clone and the copy',
          effect: 'check',
          touches: false,
          next: 'pre_capture',
        }),
        pre_capture: preCapture('request_power_off'),
        ...powerOffSteps('clone_disk', {
          request: 'Ask for a guest shutdown unless the VM is already powered off',
          wait: 'Wait for power.getstate "Powered off"',
          force: 'Hard power off (vim-cmd vmsvc/power.off)',
          waitForced: 'Wait for "Powered off" after the hard power off',
        }),
        clone_disk: forwardStep('clone_disk', {
          title: 'Clone the disk thin (vmkfstools -i -d thin)',
          effect: 'copy',
          touches: true,
          timeout: 'copyMs',
          next: 'copy_to_repository',
          compensation: 'remove_clone',
          onError: [
            { guard: 'mayRepairOnce', target: 'repair_disk', actions: 'recordWarning' },
            { target: '#vmware.cleanup', actions: 'recordFailure' },
          ],
        }),
        repair_disk: forwardStep('repair_disk', {
          title: 'Repair the source disk (vmkfstools -x repair), then clone again once',
          effect: 'copy',
          touches: true,
          timeout: 'copyMs',
          next: 'clone_disk',
          onDone: { target: 'clone_disk', actions: ['mergeOutput', 'markRepairAttempted'] },
        }),
        copy_to_repository: forwardStep('copy_to_repository', {
          title:
            'Copy the clone as 2gbsparse (vmkfstools -d 2gbsparse), then its files, a reference .vmx and their sha256 manifest into the repository',
          effect: 'copy',
          touches: true,
          timeout: 'copyMs',
          next: 'verify_image',
          compensation: 'remove_repository_copy',
        }),
        verify_image: forwardStep('verify_image', {
          title:
            'Verify the repository copy (the manifest, every file re-hashed; qemu-img check where installed)',
          effect: 'verify',
          touches: false,
          timeout: 'verifyMs',
          next: 'record_revision',
        }),
        record_revision: forwardStep('record_revision', {
          title: 'Record the image revision and release the computer for reload (one transaction)',
          effect: 'record',
          touches: false,
          next: '#vmware.completed',
        }),
      },
    },
    cleanup: cleanupState(['remove_repository_copy', 'remove_clone', 'release_computer']),
    ...finals,
  },
  output: ({ context }) => captureResult(context),
});
