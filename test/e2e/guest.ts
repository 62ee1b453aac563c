/**
 * The guest computer of the end-to-end suite (recipe: shared/docs/real-vm-lab.md, "The guest"): the
 * installed kernel plus an initramfs built here from busybox and dropbear, booting in about 10 s under
 * TCG. Its root file system is the initramfs itself (tmpfs); its one disk, `/dev/vda`, is mounted on
 * `/mnt` (formatted ext2 by busybox on first boot): that disk is what a capture copies.
 *
 * - SSH: dropbear on port 22 with a host key made here (pinned in the inventory by fingerprint), root
 *   logs in with a key made here.
 * - ACPI: busybox acpid runs `poweroff` on the power button (so `virsh shutdown` works), unless
 *   `/etc/acpi/disabled` exists: then the guest ignores graceful shutdown requests, as a hung OS does.
 * - No `shutdown` command (busybox has `poweroff` and `reboot`), an `/etc/fstab` with an NFS line that
 *   the Linux pre_capture must remove.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { ed25519KeyPair } from '../helpers/keys.js';
import { fingerprintOfPublicKey } from '../helpers/sshd.js';
import { newestKernel, which } from './requirements.js';

/** Kernel modules the guest loads, in dependency order (virtio disk and net, ACPI button, ext4). */
export const GUEST_MODULES = [
  'virtio_ring',
  'virtio',
  'virtio_pci_modern_dev',
  'virtio_pci_legacy_dev',
  'virtio_pci',
  'failover',
  'net_failover',
  'virtio_net',
  'virtio_blk',
  'virtio-rng',
  'button',
  'evdev',
  'crc16',
  'mbcache',
  'crc32c_generic',
  'jbd2',
  'ext4',
] as const;

/** Where a guest's marker file lives inside the guest, and inside the captured disk. */
export const MARKER_IN_GUEST = '/mnt/marker';
export const MARKER_ON_DISK = '/marker';
export const ACPI_DISABLED_FLAG = '/etc/acpi/disabled';

export interface Guest {
  kernel: string;
  kernelVersion: string;
  initramfs: string;
  /** dropbear's host key as `ssh-ed25519 AAAA…` and its `SHA256:` fingerprint. */
  hostPublicKey: string;
  hostKeyFingerprint: string;
  /** root's private key (OpenSSH format) file. */
  userKeyPath: string;
  /** Size of the initramfs in bytes, and how long building it took. */
  bytes: number;
  buildMs: number;
}

/** The guest's init on its disk (the disk is mounted on /mnt): removed, the guest no longer boots. */
export const DISK_INIT = '/mnt/init';

/**
 * The part of an init that loads the modules, sets up QEMU's user network (10.0.2.15, gateway 10.0.2.2) and
 * waits for the disk: the guest's and the capture environment's.
 */
export const MODULES_NETWORK_DISK = `for m in $(cat /etc/modules.order); do insmod "/lib/modules/$m" 2>/dev/null; done
ip link set lo up
ip addr add 10.0.2.15/24 dev eth0
ip link set eth0 up
ip route add default via 10.0.2.2
for i in 1 2 3 4 5; do [ -b /dev/vda ] && break; sleep 1; done
`;

const INIT = `#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
${MODULES_NETWORK_DISK}# busybox mke2fs takes the size in KiB: the file system is the first 64 MiB whatever the disk's size
# (the suite writes data past it).
# The first boot also puts the guest's init on it: the boot goes on from the disk.
mount -t ext2 /dev/vda /mnt 2>/dev/null || { mke2fs -F -q /dev/vda 65536 && mount -t ext2 /dev/vda /mnt &&
  printf '#!/bin/sh\\nexec /sbin/init\\n' > ${DISK_INIT} && chmod 755 ${DISK_INIT}; }
# A disk without its init does not boot (the boot test's unbootable image): as a kernel without init.
[ -x ${DISK_INIT} ] || { echo 'Kernel panic - not syncing: No working init found on /dev/vda' > /dev/console; poweroff -f; }
exec ${DISK_INIT}
`;

const INITTAB = `::sysinit:/bin/hostname vcl-e2e-guest
::respawn:/usr/sbin/dropbear -F -E -s -p 22 -r /etc/dropbear/host_key
::respawn:/sbin/acpid -f -c /etc/acpi
::shutdown:/bin/sync
::shutdown:/bin/umount -a -r
`;

/** busybox acpid runs /etc/acpi/<event>/<code> for the power button (PWRF 00000080). */
const POWER_BUTTON = `#!/bin/sh
[ -e ${ACPI_DISABLED_FLAG} ] || exec /sbin/poweroff
`;

const FSTAB = `/dev/vda /mnt ext2 defaults 0 0
filer:/export/home /home nfs defaults 0 0
`;

/** Shared libraries `ldd` lists for a binary (none for a static one). */
function sharedLibraries(binary: string): string[] {
  let out: string;
  try {
    out = execFileSync('ldd', [binary], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] });
  } catch {
    return []; // "not a dynamic executable"
  }
  return [...out.matchAll(/(\/\S+)\s+\(0x/g)].map((m) => m[1] as string);
}

export function copyInto(root: string, from: string, to = from, mode?: number): void {
  const dest = join(root, to);
  mkdirSync(dirname(dest), { recursive: true });
  copyFileSync(from, dest);
  if (mode !== undefined) chmodSync(dest, mode);
}

export function copyWithLibraries(root: string, binary: string, to: string): void {
  copyInto(root, binary, to, 0o755);
  for (const lib of sharedLibraries(binary)) copyInto(root, lib);
}

/** module name (dashes as underscores) -> path under /lib/modules/<version>, from modules.dep. */
function modulePaths(version: string): Map<string, string> {
  const dep = readFileSync(`/lib/modules/${version}/modules.dep`, 'utf8');
  const out = new Map<string, string>();
  for (const line of dep.split('\n')) {
    const file = line.slice(0, line.indexOf(':'));
    if (!file) continue;
    const name = basename(file).replace(/\.ko(\.\w+)?$/, '');
    out.set(name.replaceAll('-', '_'), join(`/lib/modules/${version}`, file));
  }
  return out;
}

/** busybox-static and its applets where busybox says they belong (bin/sh, sbin/init, sbin/poweroff...). */
export function installBusybox(root: string): void {
  const busybox = which('busybox') as string;
  copyWithLibraries(root, busybox, '/bin/busybox');
  const applets = execFileSync(busybox, ['--list-full'], { encoding: 'utf8' }).split('\n').filter(Boolean);
  for (const applet of applets) {
    if (applet === 'bin/busybox') continue;
    mkdirSync(join(root, dirname(applet)), { recursive: true });
    symlinkSync('/bin/busybox', join(root, applet));
  }
}

/** The guest's kernel modules under /lib/modules; returns their file names in load order. */
export function installModules(root: string, version: string): string[] {
  const paths = modulePaths(version);
  const order: string[] = [];
  for (const m of GUEST_MODULES) {
    const path = paths.get(m.replaceAll('-', '_'));
    if (path === undefined) continue; // built into this kernel
    if (!path.endsWith('.ko'))
      throw new Error(`module ${m} is compressed (${path}); the guest's busybox insmod needs plain .ko`);
    copyInto(root, path, `/lib/modules/${basename(path)}`);
    order.push(basename(path));
  }
  return order;
}

/** cpio newc, gzip: every file owned by root whoever builds it. */
export function packInitramfs(root: string, initramfs: string): void {
  execFileSync(
    'sh',
    ['-c', 'cd "$1" && find . | cpio -o -H newc -R 0:0 --quiet | gzip -1 > "$2"', 'sh', root, initramfs],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  chmodSync(initramfs, 0o644);
}

/** Builds the guest under `dir` (kernel from /boot, initramfs, keys). Takes about a second. */
export function buildGuest(dir: string): Guest {
  const started = Date.now();
  const kernel = newestKernel();
  if (kernel === undefined) throw new Error('no kernel with modules (install linux-image-amd64)');
  const root = join(dir, 'root');
  for (const d of ['proc', 'sys', 'dev', 'run', 'tmp', 'mnt', 'root/.ssh', 'etc/acpi/PWRF', 'var/log'])
    mkdirSync(join(root, d), { recursive: true });
  chmodSync(join(root, 'root'), 0o700);
  chmodSync(join(root, 'root/.ssh'), 0o700);
  chmodSync(join(root, 'tmp'), 0o1777);

  installBusybox(root);
  copyWithLibraries(root, which('dropbear') as string, '/usr/sbin/dropbear');

  const order = installModules(root, kernel.version);

  const etc = (name: string, text: string, mode = 0o644) => {
    writeFileSync(join(root, 'etc', name), text);
    chmodSync(join(root, 'etc', name), mode);
  };
  etc('modules.order', `${order.join('\n')}\n`);
  etc('inittab', INITTAB);
  etc('passwd', 'root:x:0:0:root:/root:/bin/sh\n');
  etc('shadow', 'root:*:19000:0:99999:7:::\n', 0o600);
  etc('group', 'root:x:0:\n');
  etc('shells', '/bin/sh\n');
  etc('fstab', FSTAB);
  etc('acpi/PWRF/00000080', POWER_BUTTON, 0o755);
  writeFileSync(join(root, 'init'), INIT, { mode: 0o755 });

  // Keys: dropbear's host key is made here (generating it under TCG at first boot is slow).
  mkdirSync(join(root, 'etc/dropbear'), { recursive: true });
  const hostKeyFile = join(root, 'etc/dropbear/host_key');
  execFileSync('dropbearkey', ['-t', 'ed25519', '-f', hostKeyFile], { stdio: 'ignore' });
  const hostPublicKey = (
    execFileSync('dropbearkey', ['-y', '-f', hostKeyFile], { encoding: 'utf8' })
      .split('\n')
      .find((l) => l.startsWith('ssh-ed25519 ')) ?? ''
  )
    .split(/\s+/)
    .slice(0, 2)
    .join(' ');
  if (!hostPublicKey) throw new Error('dropbearkey -y printed no ssh-ed25519 public key');
  const user = ed25519KeyPair();
  const userKeyPath = join(dir, 'id_ed25519');
  writeFileSync(userKeyPath, user.private, { mode: 0o600 });
  writeFileSync(join(root, 'root/.ssh/authorized_keys'), `${user.public}\n`, { mode: 0o600 });

  const initramfs = join(dir, 'initramfs.gz');
  packInitramfs(root, initramfs);
  return {
    kernel: kernel.vmlinuz,
    kernelVersion: kernel.version,
    initramfs,
    hostPublicKey,
    hostKeyFingerprint: fingerprintOfPublicKey(hostPublicKey),
    userKeyPath,
    bytes: readFileSync(initramfs).length,
    buildMs: Date.now() - started,
  };
}
