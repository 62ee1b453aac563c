/**
 * xCAT bare-metal capture (docs/capture-flow.md, "xCAT"), as VCL-94 intended: point the node at the capture
 * image first, then the OS reboots (end state `reboot`) straight into the capture environment; the
 * provisioner watches the upload itself (done/failed markers, no-progress and overall deadlines),
 * verifies it with a checksum, and always sets the node back to boot from disk.
 *
 * With end state `off` (VCL's shipped flow, and what Windows needs: its pre_capture reboots itself to
 * leave a domain or drop the pagefile, and such a reboot must not land in the capture image) the OS
 * prepares and powers off first, then the node is pointed at the capture image and powered on.
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
    xcat: true;
  }
}

export const XCAT: ProvisionerSpec = {
  name: 'xcat',
  // `off` is what VCL's shipped code asked for: the provisioner then powers the node on itself.
  endStates: ['reboot', 'off'],
  watchesReturn: true,
  sysprepByDefault: true,
  endStateFor: { windows: 'off' },
};

export const XCAT_STEPS = [
  'reserve',
  'check_target',
  'set_capture_boot',
  'ensure_node_on',
  'wait_capture_env',
  'watch_upload',
  'verify_image',
  'reset_boot',
  'record_revision',
  'remove_upload',
  'release_computer',
] as const;

const xcatSetup = captureSetup(XCAT_STEPS);
const { forwardStep, preCapture, cleanupState, finals, reserveStep } =
  captureStates<(typeof XCAT_STEPS)[number]>('xcat');

export const xcatMachine = xcatSetup.createMachine({
  id: 'xcat',
  description:
    'Capture a bare-metal node with xCAT: nodeset capture image, OS reboots into it, watch the upload',
  context: ({ input }) => initialCaptureContext(XCAT, input),
  initial: 'capturing',
  states: {
    capturing: {
      initial: 'reserve',
      on: { CANCEL: { target: 'cleanup', actions: 'markCancelled' } },
      states: {
        reserve: reserveStep('check_target'),
        check_target: forwardStep('check_target', {
          title:
            'Preflight: hosts and their tools, xCAT knows the node, no image files yet, the repository has the margin free',
          effect: 'check',
          touches: false,
          next: 'set_capture_boot',
          onDone: [
            {
              guard: { type: 'endStateIs', params: { endState: 'off' } },
              target: 'pre_capture',
              actions: 'mergeOutput',
            },
            { target: 'set_capture_boot', actions: 'mergeOutput' },
          ],
        }),
        set_capture_boot: forwardStep('set_capture_boot', {
          title: 'Point the node at the capture image (nodeset osimage=...)',
          effect: 'boot-config',
          // The node's boot setting in xCAT, which reset_boot undoes; the node itself is not touched.
          touches: false,
          next: 'pre_capture',
          compensation: 'reset_boot',
          onDone: [
            {
              guard: { type: 'endStateIs', params: { endState: 'off' } },
              target: 'ensure_node_on',
              actions: 'mergeOutput',
            },
            { target: 'pre_capture', actions: 'mergeOutput' },
          ],
        }),
        // The reboot lands in the capture environment, which starts uploading: from here a partial
        // upload may exist.
        pre_capture: preCapture(
          'ensure_node_on',
          { endState: 'off', target: 'set_capture_boot' },
          'remove_upload',
        ),
        ensure_node_on: forwardStep('ensure_node_on', {
          title: 'Power the node on unless it is on (rpower stat / on)',
          effect: 'power',
          touches: true,
          next: 'wait_capture_env',
        }),
        wait_capture_env: forwardStep('wait_capture_env', {
          title: 'Wait until the node runs the capture environment (nodestat)',
          effect: 'power',
          touches: true,
          timeout: 'captureEnvMs',
          next: 'watch_upload',
        }),
        watch_upload: forwardStep('watch_upload', {
          title: 'Watch the upload: done/failed markers, growth, no-progress and overall deadlines',
          effect: 'copy',
          touches: true,
          timeout: 'uploadOverallMs',
          next: 'verify_image',
        }),
        verify_image: forwardStep('verify_image', {
          title: 'Verify the uploaded image (size, format, sha256)',
          effect: 'verify',
          touches: false,
          timeout: 'verifyMs',
          next: 'reset_boot',
        }),
        reset_boot: forwardStep('reset_boot', {
          title: 'Set the node back to boot from disk (nodeset boot)',
          effect: 'boot-config',
          touches: false,
          next: 'record_revision',
          doneActions: [{ type: 'settle', params: { compensation: 'reset_boot' } }],
        }),
        record_revision: forwardStep('record_revision', {
          title: 'Record the image revision and release the computer for reload (one transaction)',
          effect: 'record',
          touches: false,
          next: '#xcat.completed',
        }),
      },
    },
    cleanup: cleanupState(['remove_upload', 'reset_boot', 'release_computer']),
    ...finals,
  },
  output: ({ context }) => captureResult(context),
});
