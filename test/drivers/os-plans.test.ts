/**
 * The exact commands each OS pre_capture step sends to the guest, its "does not apply here" probe and
 * the exit codes it accepts: what an operator reads in the step log and what a real guest runs. The lab
 * answers only the commands it plays, so these words are checked here against the tools' documented usage.
 */
import { describe, expect, it } from 'vitest';
import {
  bootIdCommand,
  endStateCommand,
  endStateFallback,
  LINUX_PLANS,
  type OsStepPlan,
  osPlans,
  parseBootId,
  WINDOWS_PLANS,
  WINDOWS_UNATTEND,
} from '../../src/drivers/os-commands.js';

const ctx = {
  computer: 'pc1',
  image: { name: 'linux-Lab1-v0', imageId: 7, revision: 2 },
  reservationUsers: ['bob', 'ann'],
};
const METADATA = 'imagename=linux-Lab1-v0\nimageid=7\nimagerevision=2\ncomputer=pc1\n';

/** A plan as plain data: the probe's `applies` is checked on its own below. */
function sent(plan: OsStepPlan): unknown {
  if (!plan.probe) return plan;
  const { applies: _applies, ...probe } = plan.probe;
  return { ...plan, probe };
}

function plansOf(plans: typeof LINUX_PLANS): Record<string, unknown> {
  return Object.fromEntries(Object.entries(plans).map(([step, plan]) => [step, sent(plan(ctx))]));
}

describe('Linux pre_capture commands', () => {
  it('sends these commands, probes and accepted exit codes per step', () => {
    expect(plansOf(LINUX_PLANS)).toEqual({
      write_metadata: { commands: [{ argv: ['tee', '/root/currentimage.txt'], stdin: METADATA }] },
      run_stage_scripts: {
        probe: {
          argv: ['test', '-d', '/etc/vcl/pre_capture'],
          notApplicable: 'no /etc/vcl/pre_capture scripts',
        },
        commands: [{ argv: ['run-parts', '--exit-on-error', '/etc/vcl/pre_capture'] }],
      },
      logoff_users: {
        commands: [
          { argv: ['pkill', '-KILL', '-u', 'bob'], okCodes: [0, 1] },
          { argv: ['pkill', '-KILL', '-u', 'ann'], okCodes: [0, 1] },
        ],
      },
      unmount_network_shares: {
        commands: [
          { argv: ['umount', '-a', '-f', '-t', 'nfs,nfs4,cifs'] },
          { argv: ['sed', '-i', '-E', '/[[:space:]](nfs|nfs4|cifs)[[:space:]]/d', '/etc/fstab'] },
        ],
      },
      delete_reservation_users: {
        probe: {
          argv: ['sh', '-c', 'command -v "$1"', 'sh', 'userdel'],
          notApplicable: 'userdel is not installed (busybox: deluser)',
        },
        commands: [
          { argv: ['userdel', '-r', '-f', 'bob'], okCodes: [0, 6] },
          { argv: ['userdel', '-r', '-f', 'ann'], okCodes: [0, 6] },
        ],
      },
      reset_root_password: { commands: [{ argv: ['passwd', '-l', 'root'] }] },
      disable_firstboot: {
        probe: {
          argv: ['test', '-e', '/etc/sysconfig/firstboot'],
          notApplicable: 'no /etc/sysconfig/firstboot',
        },
        commands: [
          { argv: ['sed', '-i', 's/^RUN_FIRSTBOOT=.*/RUN_FIRSTBOOT=NO/', '/etc/sysconfig/firstboot'] },
        ],
      },
      restore_sshd_config: {
        probe: {
          argv: ['test', '-e', '/etc/ssh/sshd_config.vcl-orig'],
          notApplicable: 'no saved default sshd config (/etc/ssh/sshd_config.vcl-orig)',
        },
        commands: [{ argv: ['cp', '/etc/ssh/sshd_config.vcl-orig', '/etc/ssh/sshd_config'] }],
      },
      reset_firewall: {
        probe: {
          argv: ['sh', '-c', 'command -v "$1"', 'sh', 'iptables'],
          notApplicable: 'iptables is not installed',
        },
        commands: [{ argv: ['iptables', '-I', 'INPUT', '-p', 'tcp', '--dport', '22', '-j', 'ACCEPT'] }],
      },
      clear_known_files: {
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
          {
            argv: ['find', '/tmp', '-mindepth', '1', '-maxdepth', '1', '-exec', 'rm', '-rf', '--', '{}', '+'],
          },
        ],
      },
      enable_dhcp: {
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
      },
    });
  });
});

describe('Windows pre_capture commands', () => {
  it('sends these commands, probes and accepted exit codes per step', () => {
    const plans = plansOf(WINDOWS_PLANS);
    expect(plans.copy_capture_config).toEqual({
      commands: [
        { argv: ['tee', WINDOWS_UNATTEND], stdin: expect.stringContaining('<SkipMachineOOBE>true') },
      ],
    });
    expect(WINDOWS_UNATTEND).toBe('/cygdrive/c/Windows/System32/sysprep/unattend.xml');
    delete plans.copy_capture_config;
    expect(plans).toEqual({
      write_metadata: { commands: [{ argv: ['tee', '/cygdrive/c/currentimage.txt'], stdin: METADATA }] },
      run_stage_scripts: {
        probe: {
          argv: ['test', '-d', '/cygdrive/c/vcl/pre_capture'],
          notApplicable: 'no C:\\vcl\\pre_capture scripts',
        },
        commands: [{ argv: ['run-parts', '--exit-on-error', '/cygdrive/c/vcl/pre_capture'] }],
      },
      disable_rdp_firewall: {
        commands: [
          {
            argv: [
              'netsh',
              'advfirewall',
              'firewall',
              'set',
              'rule',
              'group=remote desktop',
              'new',
              'enable=No',
            ],
          },
        ],
      },
      logoff_users: { commands: [{ argv: ['logoff', 'console', '/server:localhost'], okCodes: [0, 1] }] },
      apply_security_templates: {
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
      },
      leave_domain: {
        probe: {
          argv: ['wmic', 'computersystem', 'get', 'PartOfDomain', '/value'],
          notApplicable: 'the computer is not in a domain',
        },
        commands: [{ argv: ['netdom', 'remove', 'pc1', '/force', '/reboot:0'] }],
        reboots: true,
      },
      set_admin_password: {
        commands: [{ argv: ['net', 'user', 'Administrator', '/random'], secretOutput: true }],
      },
      delete_reservation_users: {
        commands: [
          { argv: ['net', 'user', 'bob', '/delete'], okCodes: [0, 2] },
          { argv: ['net', 'user', 'ann', '/delete'], okCodes: [0, 2] },
        ],
      },
      enable_dhcp: {
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
      },
      disable_autologon: {
        commands: [
          {
            argv: [
              'reg',
              'add',
              'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\\Winlogon',
              '/v',
              'AutoAdminLogon',
              '/t',
              'REG_SZ',
              '/d',
              '0',
              '/f',
            ],
          },
        ],
      },
      disable_hibernation: { commands: [{ argv: ['powercfg', '/hibernate', 'off'] }] },
      disable_sleep: { commands: [{ argv: ['powercfg', '/change', 'standby-timeout-ac', '0'] }] },
      disable_system_restore: {
        commands: [{ argv: ['powershell', '-NoProfile', '-Command', 'Disable-ComputerRestore -Drive C:\\'] }],
      },
      disable_updates: {
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
      },
      clean_disk: { commands: [{ argv: ['cleanmgr', '/sagerun:1'] }] },
      disable_pagefile: {
        commands: [
          { argv: ['wmic', 'computersystem', 'set', 'AutomaticManagedPagefile=False'] },
          { argv: ['wmic', 'pagefileset', 'delete'], okCodes: [0, 1] },
          { argv: ['shutdown.exe', '/r', '/t', '0', '/f'] },
        ],
        reboots: true,
      },
      open_firewall_ssh_ping: {
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
      },
      sshd_manual_start: { commands: [{ argv: ['sc', 'config', 'sshd', 'start=', 'demand'] }] },
    });
  });

  it('leaves the domain only when wmic says the computer is part of one', () => {
    const applies = WINDOWS_PLANS.leave_domain?.(ctx).probe?.applies;
    expect(applies?.('\r\n\r\nPartOfDomain=TRUE\r\n\r\n')).toBe(true);
    expect(applies?.('PartOfDomain=true')).toBe(true);
    expect(applies?.('\r\n\r\nPartOfDomain=FALSE\r\n\r\n')).toBe(false);
  });
});

describe('steps about reservation users, with none', () => {
  it('do not apply on either system, and say why', () => {
    const none = { ...ctx, reservationUsers: [] };
    for (const plans of [LINUX_PLANS, WINDOWS_PLANS]) {
      expect(plans.delete_reservation_users?.(none)).toEqual({
        probe: { argv: ['false'], notApplicable: 'the reservation created no user accounts' },
        commands: [],
      });
    }
    expect(LINUX_PLANS.logoff_users?.(none)?.commands).toEqual([]);
  });
});

describe('end state and boot id commands', () => {
  it('shuts down, reboots or syspreps each system with the documented switches', () => {
    expect(endStateCommand('linux', 'shutdown')).toEqual(['shutdown', '-h', 'now']);
    expect(endStateCommand('linux', 'reboot')).toEqual(['shutdown', '-r', 'now']);
    expect(endStateCommand('windows', 'shutdown')).toEqual(['shutdown.exe', '/s', '/t', '0', '/f']);
    expect(endStateCommand('windows', 'reboot')).toEqual(['shutdown.exe', '/r', '/t', '0', '/f']);
    const sysprep = (mode: string) => [
      '/cygdrive/c/Windows/System32/sysprep/sysprep.exe',
      '/generalize',
      '/oobe',
      mode,
      '/quiet',
      '/unattend:C:\\Windows\\System32\\sysprep\\unattend.xml',
    ];
    expect(endStateCommand('windows', 'sysprep', 'off')).toEqual(sysprep('/shutdown'));
    expect(endStateCommand('windows', 'sysprep')).toEqual(sysprep('/shutdown'));
    expect(endStateCommand('windows', 'sysprep', 'reboot')).toEqual(sysprep('/reboot'));
    expect(endStateCommand('windows', 'sysprep', 'on')).toEqual(sysprep('/quit'));
  });

  it('falls back to poweroff/reboot on a Linux without shutdown, never on Windows or for sysprep', () => {
    expect(endStateFallback('linux', 'shutdown')).toEqual(['poweroff']);
    expect(endStateFallback('linux', 'reboot')).toEqual(['reboot']);
    expect(endStateFallback('linux', 'sysprep')).toBeUndefined();
    expect(endStateFallback('windows', 'shutdown')).toBeUndefined();
  });

  it('reads the boot id each system prints, and nothing from other output', () => {
    expect(bootIdCommand('linux')).toEqual(['cat', '/proc/sys/kernel/random/boot_id']);
    expect(bootIdCommand('windows')).toEqual(['wmic', 'os', 'get', 'LastBootUpTime', '/value']);
    expect(parseBootId('  3C1F0E6A-8F0E-4A8C-9A4E-2B9A4C1D7E10  \n')).toBe(
      '3C1F0E6A-8F0E-4A8C-9A4E-2B9A4C1D7E10',
    );
    expect(parseBootId('cat: /proc/sys/kernel/random/boot_id: No such file')).toBeUndefined();
    expect(parseBootId('3c1f0e6a')).toBeUndefined();
    expect(parseBootId('boot 3c1f0e6a-8f0e-4a8c-9a4e-2b9a4c1d7e10')).toBeUndefined();
    expect(parseBootId('3c1f0e6a-8f0e-4a8c-9a4e-2b9a4c1d7e10 boot')).toBeUndefined();
    expect(parseBootId('')).toBeUndefined();
    expect(osPlans('linux')).toBe(LINUX_PLANS);
    expect(osPlans('windows')).toBe(WINDOWS_PLANS);
  });
});
