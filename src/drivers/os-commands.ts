/**
 * What each OS `pre_capture` step runs on the guest (docs/capture-flow.md, "OS modules"), as data: argv
 * arrays the transport quotes, an optional probe that tells a step which does not apply on this computer
 * (busybox has no `userdel`: the step reports "not applicable" instead of failing), and whether the
 * step reboots the guest. Windows guests are reached the way VCL reaches them: an SSH server with a
 * POSIX shell (Cygwin/OpenSSH), so Windows tools run as plain commands.
 */
import type { ImageRef, OsName } from '../../machines/types.js';
import { hasToolCommand } from './preflight-commands.js';

export interface OsCommand {
  argv: string[];
  stdin?: string;
  /** Exit codes that count as success (default: 0). */
  okCodes?: number[];
  /** The output carries a secret (a generated password): never log or keep it. */
  secretOutput?: boolean;
}

export interface OsStepPlan {
  /**
   * Runs first; the step does not apply here (for the reason given) when the probe exits non-zero, or
   * when `applies` says so of its output.
   */
  probe?: { argv: string[]; notApplicable: string; applies?: (stdout: string) => boolean };
  commands: OsCommand[];
  /** The last command reboots the guest; the step ends when it answers again with a new boot id. */
  reboots?: boolean;
}

export interface OsStepContext {
  computer: string;
  image: ImageRef;
  /** Accounts the reservation created, removed before capture. */
  reservationUsers: readonly string[];
}

export function metadataFile(ctx: OsStepContext): string {
  return [
    `imagename=${ctx.image.name}`,
    `imageid=${ctx.image.imageId}`,
    `imagerevision=${ctx.image.revision}`,
    `computer=${ctx.computer}`,
    '',
  ].join('\n');
}

const noUsers = (ctx: OsStepContext): OsStepPlan | undefined =>
  ctx.reservationUsers.length === 0
    ? { probe: { argv: ['false'], notApplicable: 'the reservation created no user accounts' }, commands: [] }
    : undefined;

export const LINUX_BOOT_ID = ['cat', '/proc/sys/kernel/random/boot_id'];
export const WINDOWS_BOOT_ID = ['wmic', 'os', 'get', 'LastBootUpTime', '/value'];

export function bootIdCommand(os: OsName): string[] {
  return os === 'linux' ? LINUX_BOOT_ID : WINDOWS_BOOT_ID;
}

/** `LastBootUpTime=20261124103000.500000+000` or a Linux boot_id UUID. */
export function parseBootId(stdout: string): string | undefined {
  const win = /LastBootUpTime=(\S+)/.exec(stdout);
  if (win) return win[1];
  const id = stdout.trim();
  return /^[0-9a-f-]{16,}$/i.test(id) ? id : undefined;
}

export const LINUX_PLANS: Record<string, (ctx: OsStepContext) => OsStepPlan> = {
  write_metadata: (ctx) => ({
    commands: [{ argv: ['tee', '/root/currentimage.txt'], stdin: metadataFile(ctx) }],
  }),
  run_stage_scripts: () => ({
    probe: { argv: ['test', '-d', '/etc/vcl/pre_capture'], notApplicable: 'no /etc/vcl/pre_capture scripts' },
    commands: [{ argv: ['run-parts', '--exit-on-error', '/etc/vcl/pre_capture'] }],
  }),
  logoff_users: (ctx) =>
    noUsers(ctx) ?? {
      // pkill exits 1 when the user has no processes left: nothing to log off is success.
      commands: ctx.reservationUsers.map((u) => ({ argv: ['pkill', '-KILL', '-u', u], okCodes: [0, 1] })),
    },
  unmount_network_shares: () => ({
    commands: [
      { argv: ['umount', '-a', '-f', '-t', 'nfs,nfs4,cifs'] },
      { argv: ['sed', '-i', '-E', '/[[:space:]](nfs|nfs4|cifs)[[:space:]]/d', '/etc/fstab'] },
    ],
  }),
  delete_reservation_users: (ctx) =>
    noUsers(ctx) ?? {
      probe: {
        argv: hasToolCommand('userdel'),
        notApplicable: 'userdel is not installed (busybox: deluser)',
      },
      commands: ctx.reservationUsers.map((u) => ({ argv: ['userdel', '-r', '-f', u], okCodes: [0, 6] })),
    },
  // Locked rather than set: a generated password would be a secret to keep out of every log.
  reset_root_password: () => ({ commands: [{ argv: ['passwd', '-l', 'root'] }] }),
  disable_firstboot: () => ({
    probe: { argv: ['test', '-e', '/etc/sysconfig/firstboot'], notApplicable: 'no /etc/sysconfig/firstboot' },
    commands: [{ argv: ['sed', '-i', 's/^RUN_FIRSTBOOT=.*/RUN_FIRSTBOOT=NO/', '/etc/sysconfig/firstboot'] }],
  }),
  restore_sshd_config: () => ({
    probe: {
      argv: ['test', '-e', '/etc/ssh/sshd_config.vcl-orig'],
      notApplicable: 'no saved default sshd config (/etc/ssh/sshd_config.vcl-orig)',
    },
    commands: [{ argv: ['cp', '/etc/ssh/sshd_config.vcl-orig', '/etc/ssh/sshd_config'] }],
  }),
  reset_firewall: () => ({
    probe: { argv: hasToolCommand('iptables'), notApplicable: 'iptables is not installed' },
    commands: [{ argv: ['iptables', '-I', 'INPUT', '-p', 'tcp', '--dport', '22', '-j', 'ACCEPT'] }],
  }),
  clear_known_files: () => ({
    commands: [
      {
        argv: [
          'rm',
          '-f',
          '--',
          '/etc/hostname',
          '/var/log/auth.log',
          '/var/log/boot.log',
          '/var/log/kern.log',
          '/var/log/syslog',
          '/var/log/wtmp',
          '/var/log/lastlog',
          '/root/.ssh/known_hosts',
          '/root/.ssh/authorized_keys2',
          '/etc/udev/rules.d/70-persistent-net.rules',
        ],
      },
      // Not `-delete`: busybox find lacks it. `-exec rm -rf {} +` on the top level works with every find.
      { argv: ['find', '/tmp', '-mindepth', '1', '-maxdepth', '1', '-exec', 'rm', '-rf', '--', '{}', '+'] },
    ],
  }),
  enable_dhcp: () => ({
    probe: {
      argv: ['test', '-d', '/etc/sysconfig/network-scripts'],
      notApplicable: 'no /etc/sysconfig/network-scripts (interfaces configured elsewhere)',
    },
    commands: [
      {
        argv: [
          'find',
          '/etc/sysconfig/network-scripts',
          '-name',
          'ifcfg-*',
          '-exec',
          'sed',
          '-i',
          's/^BOOTPROTO=.*/BOOTPROTO=dhcp/',
          '{}',
          '+',
        ],
      },
    ],
  }),
};

const WINLOGON = 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon';
export const WINDOWS_UNATTEND = '/cygdrive/c/Windows/System32/sysprep/unattend.xml';
const UNATTEND_XML = `<?xml version="1.0" encoding="utf-8"?>
<unattend xmlns="urn:schemas-microsoft-com:unattend">
  <settings pass="oobeSystem">
    <component name="Microsoft-Windows-Shell-Setup" processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" versionScope="nonSxS">
      <OOBE><HideEULAPage>true</HideEULAPage><SkipMachineOOBE>true</SkipMachineOOBE><SkipUserOOBE>true</SkipUserOOBE></OOBE>
    </component>
  </settings>
</unattend>
`;

export const WINDOWS_PLANS: Record<string, (ctx: OsStepContext) => OsStepPlan> = {
  write_metadata: (ctx) => ({
    commands: [{ argv: ['tee', '/cygdrive/c/currentimage.txt'], stdin: metadataFile(ctx) }],
  }),
  run_stage_scripts: () => ({
    probe: {
      argv: ['test', '-d', '/cygdrive/c/vcl/pre_capture'],
      notApplicable: 'no C:\\vcl\\pre_capture scripts',
    },
    commands: [{ argv: ['run-parts', '--exit-on-error', '/cygdrive/c/vcl/pre_capture'] }],
  }),
  disable_rdp_firewall: () => ({
    commands: [
      {
        argv: ['netsh', 'advfirewall', 'firewall', 'set', 'rule', 'group=remote desktop', 'new', 'enable=No'],
      },
    ],
  }),
  // Ends every interactive session; exit 1 means there was none.
  logoff_users: () => ({ commands: [{ argv: ['logoff', 'console', '/server:localhost'], okCodes: [0, 1] }] }),
  apply_security_templates: () => ({
    commands: [
      {
        argv: [
          'secedit',
          '/configure',
          '/cfg',
          'C:\\Windows\\inf\\defltbase.inf',
          '/db',
          'defltbase.sdb',
          '/quiet',
        ],
      },
    ],
  }),
  leave_domain: (ctx) => ({
    probe: {
      argv: ['wmic', 'computersystem', 'get', 'PartOfDomain', '/value'],
      notApplicable: 'the computer is not in a domain',
      applies: (stdout) => /PartOfDomain=TRUE/i.test(stdout),
    },
    commands: [{ argv: ['netdom', 'remove', ctx.computer, '/force', '/reboot:0'] }],
    reboots: true,
  }),
  // `/random` has Windows generate the password and print it: the output is a secret, dropped.
  set_admin_password: () => ({
    commands: [{ argv: ['net', 'user', 'Administrator', '/random'], secretOutput: true }],
  }),
  delete_reservation_users: (ctx) =>
    noUsers(ctx) ?? {
      commands: ctx.reservationUsers.map((u) => ({ argv: ['net', 'user', u, '/delete'], okCodes: [0, 2] })),
    },
  enable_dhcp: () => ({
    commands: [
      {
        argv: [
          'powershell',
          '-NoProfile',
          '-Command',
          'Get-NetIPInterface -AddressFamily IPv4 | Set-NetIPInterface -Dhcp Enabled',
        ],
      },
    ],
  }),
  copy_capture_config: () => ({ commands: [{ argv: ['tee', WINDOWS_UNATTEND], stdin: UNATTEND_XML }] }),
  disable_autologon: () => ({
    commands: [{ argv: ['reg', 'add', WINLOGON, '/v', 'AutoAdminLogon', '/t', 'REG_SZ', '/d', '0', '/f'] }],
  }),
  disable_hibernation: () => ({ commands: [{ argv: ['powercfg', '/hibernate', 'off'] }] }),
  disable_sleep: () => ({ commands: [{ argv: ['powercfg', '/change', 'standby-timeout-ac', '0'] }] }),
  disable_system_restore: () => ({
    commands: [{ argv: ['powershell', '-NoProfile', '-Command', 'Disable-ComputerRestore -Drive C:\\'] }],
  }),
  disable_updates: () => ({
    commands: [
      {
        argv: [
          'reg',
          'add',
          'HKLM\\SOFTWARE\\Policies\\Microsoft\\Windows\\WindowsUpdate\\AU',
          '/v',
          'NoAutoUpdate',
          '/t',
          'REG_DWORD',
          '/d',
          '1',
          '/f',
        ],
      },
    ],
  }),
  clean_disk: () => ({ commands: [{ argv: ['cleanmgr', '/sagerun:1'] }] }),
  disable_pagefile: () => ({
    commands: [
      { argv: ['wmic', 'computersystem', 'set', 'AutomaticManagedPagefile=False'] },
      { argv: ['wmic', 'pagefileset', 'delete'], okCodes: [0, 1] },
      { argv: ['shutdown.exe', '/r', '/t', '0', '/f'] },
    ],
    reboots: true,
  }),
  open_firewall_ssh_ping: () => ({
    commands: [
      {
        argv: [
          'netsh',
          'advfirewall',
          'firewall',
          'add',
          'rule',
          'name=VCL SSH',
          'dir=in',
          'action=allow',
          'protocol=TCP',
          'localport=22',
        ],
      },
      {
        argv: [
          'netsh',
          'advfirewall',
          'firewall',
          'add',
          'rule',
          'name=VCL ping',
          'dir=in',
          'action=allow',
          'protocol=icmpv4:8,any',
        ],
      },
    ],
  }),
  sshd_manual_start: () => ({ commands: [{ argv: ['sc', 'config', 'sshd', 'start=', 'demand'] }] }),
};

/** The end-state commands. Each drops the SSH session as the guest goes down. */
export function endStateCommand(
  os: OsName,
  action: 'shutdown' | 'reboot' | 'sysprep',
  sysprepEnd?: 'off' | 'reboot' | 'on',
): string[] {
  if (os === 'linux') return ['shutdown', action === 'reboot' ? '-r' : '-h', 'now'];
  if (action === 'sysprep') {
    const mode = sysprepEnd === 'reboot' ? '/reboot' : sysprepEnd === 'on' ? '/quit' : '/shutdown';
    return [
      '/cygdrive/c/Windows/System32/sysprep/sysprep.exe',
      '/generalize',
      '/oobe',
      mode,
      '/quiet',
      '/unattend:C:\\Windows\\System32\\sysprep\\unattend.xml',
    ];
  }
  return ['shutdown.exe', action === 'reboot' ? '/r' : '/s', '/t', '0', '/f'];
}

/** The shell's status for a command it cannot find. */
export const COMMAND_NOT_FOUND = 127;

/**
 * What a Linux end-state command falls back to when the guest has no `shutdown` (status 127): minimal
 * systems (busybox, many appliances and initramfs environments) have only `poweroff` and `reboot`.
 */
export function endStateFallback(
  os: OsName,
  action: 'shutdown' | 'reboot' | 'sysprep',
): string[] | undefined {
  if (os !== 'linux' || action === 'sysprep') return undefined;
  return [action === 'reboot' ? 'reboot' : 'poweroff'];
}

export function osPlans(os: OsName): Record<string, (ctx: OsStepContext) => OsStepPlan> {
  return os === 'linux' ? LINUX_PLANS : WINDOWS_PLANS;
}
