/**
 * Linux pre_capture, in VCL's order (docs/capture-flow.md, "OS modules / Linux"). Critical steps are the ones
 * VCL aborts on; the rest record a warning and the flow goes on.
 */
import { COMMON_FIRST_STEPS, createOsMachine, type OsStepSpec } from './os-machine.js';

export const LINUX_STEPS: readonly OsStepSpec[] = [
  ...COMMON_FIRST_STEPS,
  { id: 'logoff_users', kind: 'advisory', title: 'Log off users' },
  {
    id: 'unmount_network_shares',
    kind: 'critical',
    title: 'Unmount reservation network shares, drop fstab lines',
  },
  { id: 'delete_reservation_users', kind: 'advisory', title: 'Delete reservation user accounts' },
  { id: 'reset_root_password', kind: 'advisory', title: 'Reset the root password' },
  { id: 'disable_firstboot', kind: 'advisory', title: 'Disable first-boot' },
  { id: 'restore_sshd_config', kind: 'advisory', title: 'Restore the default sshd config' },
  { id: 'reset_firewall', kind: 'advisory', title: 'Reset the firewall to allow SSH from anywhere' },
  {
    id: 'clear_known_files',
    kind: 'advisory',
    title: 'Clear hostname, logs, root ssh keys, net rules, /tmp',
  },
  { id: 'enable_dhcp', kind: 'critical', title: 'Enable DHCP on all interfaces' },
];

export const linuxMachine = createOsMachine({ id: 'linux', steps: LINUX_STEPS, supportsSysprep: false });
