/**
 * Windows pre_capture, in VCL's order (docs/capture-flow.md, "OS modules / Windows"). Windows is reached the way
 * VCL reaches it: an SSH server with a POSIX shell. Sysprep, when used, carries out every end state
 * (`/shutdown`, `/reboot`, `/quit`).
 */
import { COMMON_FIRST_STEPS, createOsMachine, type OsStepSpec } from './os-machine.js';

export const WINDOWS_STEPS: readonly OsStepSpec[] = [
  ...COMMON_FIRST_STEPS,
  { id: 'disable_rdp_firewall', kind: 'critical', title: 'Disable RDP in the firewall' },
  { id: 'logoff_users', kind: 'critical', title: 'Log off users' },
  { id: 'apply_security_templates', kind: 'critical', title: 'Apply security templates' },
  { id: 'leave_domain', kind: 'critical', title: 'Leave the AD domain (reboots)', timeout: 'rebootUpMs' },
  { id: 'set_admin_password', kind: 'critical', title: "Set Administrator's password" },
  { id: 'delete_reservation_users', kind: 'critical', title: 'Delete reservation user accounts' },
  { id: 'enable_dhcp', kind: 'critical', title: 'Enable DHCP' },
  { id: 'copy_capture_config', kind: 'critical', title: 'Copy the capture config (sysprep answer file)' },
  { id: 'disable_autologon', kind: 'critical', title: 'Disable autologon' },
  { id: 'disable_hibernation', kind: 'advisory', title: 'Disable hibernation' },
  { id: 'disable_sleep', kind: 'advisory', title: 'Disable sleep' },
  { id: 'disable_system_restore', kind: 'advisory', title: 'Disable system restore' },
  { id: 'disable_updates', kind: 'advisory', title: 'Disable automatic updates' },
  { id: 'clean_disk', kind: 'advisory', title: 'Clean the disk', timeout: 'cleanDiskMs' },
  {
    id: 'disable_pagefile',
    kind: 'critical',
    title: 'Turn the pagefile off (reboots)',
    timeout: 'rebootUpMs',
  },
  { id: 'open_firewall_ssh_ping', kind: 'critical', title: 'Open the firewall for SSH and ping' },
  { id: 'sshd_manual_start', kind: 'critical', title: 'Set sshd to start manually' },
];

export const windowsMachine = createOsMachine({ id: 'windows', steps: WINDOWS_STEPS, supportsSysprep: true });
