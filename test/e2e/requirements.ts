/**
 * What the end-to-end suite needs on this machine, and which Debian package brings each piece (the list
 * `.ci/run` installs). `e2eAvailable()` throws in CI (`CI=true`) when something is missing, naming the
 * packages, and otherwise warns loudly and returns false so that the suite is skipped.
 */
import { accessSync, constants, existsSync, readdirSync } from 'node:fs';
import { delimiter, join } from 'node:path';

/** Every package the suite needs (the same list as APT_PACKAGES in .ci/run). */
export const E2E_PACKAGES = [
  'qemu-system-x86',
  'qemu-utils',
  'linux-image-amd64',
  'busybox-static',
  'dropbear-bin',
  'openssh-client',
  'openssh-server',
  'libvirt-daemon',
  'libvirt-daemon-driver-qemu',
  'libvirt-clients',
  'iproute2',
  'cpio',
  'gzip',
  'e2fsprogs',
  'ipxe-qemu',
] as const;

interface Requirement {
  what: string;
  package: string;
  /** Undefined when present, else what is missing. */
  check(): string | undefined;
}

const SEARCH_PATH = [
  ...(process.env.PATH ?? '').split(delimiter),
  '/usr/local/sbin',
  '/usr/sbin',
  '/sbin',
  '/usr/bin',
  '/bin',
];

/** Absolute path of an executable on PATH (or in the sbin folders, which a user's PATH may lack). */
export function which(cmd: string): string | undefined {
  for (const dir of SEARCH_PATH) {
    if (!dir) continue;
    const p = join(dir, cmd);
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      // Not here.
    }
  }
  return undefined;
}

function binary(cmd: string, pkg: string): Requirement {
  return {
    what: cmd,
    package: pkg,
    check: () => (which(cmd) === undefined ? `${cmd} not found` : undefined),
  };
}

/** The newest installed kernel with its modules, as `{ version, vmlinuz }`. */
export function newestKernel(): { version: string; vmlinuz: string } | undefined {
  let names: string[];
  try {
    names = readdirSync('/boot').filter((n) => n.startsWith('vmlinuz-'));
  } catch {
    return undefined;
  }
  const versions = names
    .map((n) => n.slice('vmlinuz-'.length))
    .filter((v) => existsSync(`/lib/modules/${v}/modules.dep`))
    .sort((a, b) => a.localeCompare(b, 'en', { numeric: true }));
  const version = versions.at(-1);
  return version === undefined ? undefined : { version, vmlinuz: `/boot/vmlinuz-${version}` };
}

/** The virtio NIC's iPXE ROM, with which the xCAT case's node boots over the network (ipxe-qemu). */
export const IPXE_ROM = '/usr/lib/ipxe/qemu/pxe-virtio.rom';

const QEMU_DRIVER_DIRS = [
  '/usr/lib/x86_64-linux-gnu/libvirt/connection-driver',
  '/usr/lib64/libvirt/connection-driver',
  '/usr/lib/libvirt/connection-driver',
];

const REQUIREMENTS: Requirement[] = [
  binary('qemu-system-x86_64', 'qemu-system-x86'),
  binary('qemu-img', 'qemu-utils'),
  binary('qemu-io', 'qemu-utils'),
  {
    what: 'a kernel',
    package: 'linux-image-amd64',
    check: () =>
      newestKernel() === undefined ? 'no /boot/vmlinuz-* with modules in /lib/modules' : undefined,
  },
  binary('busybox', 'busybox-static'),
  binary('dropbear', 'dropbear-bin'),
  binary('dropbearkey', 'dropbear-bin'),
  binary('dbclient', 'dropbear-bin'),
  {
    what: "the virtio NIC's iPXE ROM",
    package: 'ipxe-qemu',
    check: () => (existsSync(IPXE_ROM) ? undefined : `${IPXE_ROM} not found`),
  },
  binary('ssh', 'openssh-client'),
  binary('ssh-keygen', 'openssh-client'),
  binary('sshd', 'openssh-server'),
  binary('libvirtd', 'libvirt-daemon'),
  {
    what: 'the libvirt QEMU driver',
    package: 'libvirt-daemon-driver-qemu',
    check: () =>
      QEMU_DRIVER_DIRS.some((d) => existsSync(join(d, 'libvirt_driver_qemu.so')))
        ? undefined
        : 'libvirt_driver_qemu.so not found',
  },
  binary('virsh', 'libvirt-clients'),
  binary('cpio', 'cpio'),
  binary('gzip', 'gzip'),
  binary('debugfs', 'e2fsprogs'),
  binary('setpriv', 'util-linux'),
  binary('ldd', 'libc-bin'),
];

/** What is missing, with the packages that bring it; empty when everything is there. */
export function e2eProblems(): { missing: string[]; packages: string[] } {
  const missing: string[] = [];
  const packages = new Set<string>();
  for (const r of REQUIREMENTS) {
    const problem = r.check();
    if (problem === undefined) continue;
    missing.push(problem);
    packages.add(r.package);
  }
  return { missing, packages: [...packages] };
}

/**
 * Whether this machine can run the end-to-end suite. When something is missing: throws with `CI=true`
 * (the suite must not skip silently in CI), otherwise warns naming the packages and returns false.
 */
export function e2eAvailable(suite = 'end-to-end suite (test/e2e)'): boolean {
  const { missing, packages } = e2eProblems();
  if (missing.length === 0) return true;
  const message =
    `${suite}: ${missing.join(', ')}. Install the Debian packages: apt-get install ${packages.join(' ')} ` +
    `(the whole list: ${E2E_PACKAGES.join(' ')})`;
  if (process.env.CI === 'true') throw new Error(`${message} (CI=true: failing instead of skipping)`);
  console.warn(`SKIPPING ${message}`);
  return false;
}
