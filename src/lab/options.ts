/** The lab's options with their defaults filled in, and the guest profiles. */
import type { Timeouts } from '../../machines/types.js';
import { PROVISIONER_ENTRIES } from '../provisioners/index.js';
import {
  COMPUTER_KINDS,
  type ComputerKind,
  type GuestProfile,
  type LabOptions,
  type LabRepositoryName,
  type Os,
  type Provisioner,
} from './types.js';

export interface ResolvedOptions {
  computers: Record<ComputerKind, number>;
  powerDelayMs: number;
  sysprepMs: number;
  diskBytes: number;
  captureChunkBytes: number;
  captureChunkMs: number;
  commandLatencyMs: number;
  reservationUsers: string[];
  guestProfiles: Record<string, Partial<GuestProfile>>;
  repositories: Record<Provisioner, LabRepositoryName>;
  timeouts: Partial<Timeouts> | undefined;
  tmpDir: string | undefined;
  freeBytes: Record<string, number>;
  defaultFreeBytes: number;
  missingTools: Record<string, string[]>;
  listenAddress: string;
}

/** What `df` reports free on a host the `freeBytes` option does not name: 512 GiB. */
export const DEFAULT_FREE_BYTES = 512 * 1024 ** 3;

const LINUX_FILES: Record<string, string> = {
  '/etc/hostname': 'lab-guest\n',
  '/etc/fstab': [
    'UUID=3e6be9de-8139-11d1-9106-a43f08d823a6 / ext4 defaults 0 1',
    'files.example.edu:/home/vclres /mnt/share nfs defaults 0 0',
    '',
  ].join('\n'),
  '/etc/ssh/sshd_config': 'PermitRootLogin prohibit-password\nPasswordAuthentication no\n',
  '/etc/ssh/sshd_config.vcl-orig': 'PermitRootLogin prohibit-password\n',
  '/etc/sysconfig/firstboot': 'RUN_FIRSTBOOT=YES\n',
  '/etc/sysconfig/network-scripts/ifcfg-eth0': 'DEVICE=eth0\nBOOTPROTO=static\nONBOOT=yes\n',
  '/var/log/syslog': 'Nov 24 10:30:00 lab-guest kernel: booted\n',
  '/var/log/wtmp': '',
  '/root/.ssh/known_hosts': '',
  '/tmp/reservation-notes.txt': 'left behind by the reservation\n',
};

const WINDOWS_FILES: Record<string, string> = {
  '/cygdrive/c/Windows/System32/sysprep/sysprep.exe': 'MZ',
  '/cygdrive/c/Windows/System32/shutdown.exe': 'MZ',
  '/cygdrive/c/Windows/inf/defltbase.inf': '[Unicode]\r\nUnicode=yes\r\n',
};

/** Defaults per OS; a computer's entry in `guestProfiles` is merged over these. */
export const GUEST_PROFILES: Readonly<Record<Os | 'busybox', GuestProfile>> = {
  linux: {
    missingTools: [],
    files: LINUX_FILES,
    dirs: ['/etc/vcl/pre_capture', '/root', '/tmp'],
    users: ['vcluser'],
    inDomain: false,
  },
  /** A minimal Linux: busybox has `deluser` (no `userdel`), no iptables, no network-scripts. */
  busybox: {
    missingTools: ['userdel', 'iptables', 'run-parts'],
    files: {
      '/etc/hostname': 'lab-guest\n',
      '/etc/fstab': '/dev/vda1 / ext4 defaults 0 1\n',
    },
    dirs: ['/root', '/tmp'],
    users: ['vcluser'],
    inDomain: false,
  },
  windows: {
    missingTools: [],
    files: WINDOWS_FILES,
    dirs: ['/cygdrive/c/vcl/pre_capture', '/home/Administrator'],
    users: ['Administrator', 'vcluser'],
    inDomain: true,
  },
};

export function guestProfileOf(options: ResolvedOptions, computer: string, os: Os): GuestProfile {
  return { ...GUEST_PROFILES[os], ...options.guestProfiles[computer] };
}

export function resolveOptions(options: LabOptions = {}): ResolvedOptions {
  const computers = Object.fromEntries(
    COMPUTER_KINDS.map((k) => [k, options.computers === undefined ? 1 : (options.computers[k] ?? 0)]),
  ) as Record<ComputerKind, number>;
  for (const [k, n] of Object.entries(computers)) {
    if (!Number.isInteger(n) || n < 0)
      throw new RangeError(`computers.${k} must be a whole number (got ${n})`);
  }
  const powerDelayMs = options.powerDelayMs ?? 50;
  const diskBytes = options.diskBytes ?? 4 * 1024 * 1024;
  if (!(diskBytes > 0)) throw new RangeError('diskBytes must be positive');
  return {
    computers,
    powerDelayMs,
    sysprepMs: options.sysprepMs ?? powerDelayMs,
    diskBytes,
    captureChunkBytes: Math.max(1, options.captureChunkBytes ?? 1024 * 1024),
    captureChunkMs: options.captureChunkMs ?? 20,
    commandLatencyMs: options.commandLatencyMs ?? 0,
    reservationUsers: options.reservationUsers ?? ['vcluser'],
    guestProfiles: options.guestProfiles ?? {},
    repositories: Object.fromEntries(
      PROVISIONER_ENTRIES.map(([p, entry]) => [p, options.repositories?.[p] ?? entry.lab.defaultRepository]),
    ) as Record<Provisioner, LabRepositoryName>,
    timeouts: options.timeouts,
    tmpDir: options.tmpDir,
    freeBytes: options.freeBytes ?? {},
    defaultFreeBytes: DEFAULT_FREE_BYTES,
    missingTools: options.missingTools ?? {},
    listenAddress: options.listenAddress ?? '127.0.0.1',
  };
}
