/**
 * The capture environment of the xCAT flow (issue 20): what a node boots over the network after
 * `nodeset <node> osimage=<capture image>`, in the role of xCAT's genesis/capture image. The installed
 * kernel and an initramfs built here: busybox-static, dropbear's client `dbclient` (with its libraries),
 * the virtio modules, and a key the management node accepts.
 *
 * Its /init reads its orders from the kernel command line that the management node's boot script
 * passes (`xcat.*=` words), reports `capturing` to the management node (`updateflag`, as genesis
 * reports its status to xcatd), streams the disk (`dd` of `xcat.disk`) over SSH into
 * `<xcat.repo>/<xcat.image>.img` on the management node, writes `<image>.img.capturedone` (or
 * `.capturefailed` when the read or the stream failed), and powers the node off. With `xcat.stall=<MiB>`
 * it sends that much and then stops sending, as a hung upload does.
 */
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  copyWithLibraries,
  installBusybox,
  installModules,
  MODULES_NETWORK_DISK,
  packInitramfs,
} from './guest.js';
import { newestKernel, which } from './requirements.js';

export interface CaptureEnv {
  kernel: string;
  initramfs: string;
  /** The public key (OpenSSH format) the management node must accept for the environment's uploads. */
  publicKey: string;
  buildMs: number;
}

const INIT = `#!/bin/sh
export PATH=/sbin:/usr/sbin:/bin:/usr/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
${MODULES_NETWORK_DISK}arg() { tr ' ' '\\n' < /proc/cmdline | sed -n "s/^xcat\\.$1=//p"; }
node=$(arg node); image=$(arg image); repo=$(arg repo); mn=$(arg mn); port=$(arg port); disk=$(arg disk)
stall=$(arg stall)
say() { echo "capture-env: $*" > /dev/console; }
mn() { dbclient -q -T -i /etc/capture_key -p "$port" "$mn" "$@"; }
set -o pipefail
say "node $node: capturing $disk as $image into $repo"
mn updateflag "$node" capturing
target="$repo/$image.img"
if [ -n "$stall" ]; then
  # A hung upload: the first MiB arrive, then nothing more (the stream stays open).
  { dd if="$disk" bs=1M count="$stall" 2>/dev/null; sleep 100000; } | mn "cat > '$target'"
elif dd if="$disk" bs=1M 2>/dev/null | mn "cat > '$target'"; then
  mn "touch '$target.capturedone'" && say "upload done"
else
  mn "touch '$target.capturefailed'"; say "upload failed"
fi
sync
poweroff -f
`;

/** Builds the capture environment under `dir`; `mnHostKey` (`type base64`) is pinned for the uploads. */
export function buildCaptureEnv(dir: string, mn: { address: string; port: number; hostKey: string }) {
  const started = Date.now();
  const kernel = newestKernel();
  if (kernel === undefined) throw new Error('no kernel with modules (install linux-image-amd64)');
  const root = join(dir, 'root');
  for (const d of ['proc', 'sys', 'dev', 'tmp', 'root/.ssh', 'etc'])
    mkdirSync(join(root, d), { recursive: true });
  installBusybox(root);
  copyWithLibraries(root, which('dbclient') as string, '/usr/bin/dbclient');
  writeFileSync(join(root, 'etc/modules.order'), `${installModules(root, kernel.version).join('\n')}\n`);
  writeFileSync(join(root, 'etc/passwd'), 'root:x:0:0:root:/root:/bin/sh\n');
  // dbclient looks the host up by its address alone, whatever the port.
  writeFileSync(join(root, 'root/.ssh/known_hosts'), `${mn.address} ${mn.hostKey}\n`);
  const key = join(root, 'etc/capture_key');
  execFileSync('dropbearkey', ['-t', 'ed25519', '-f', key], { stdio: 'ignore' });
  const publicKey =
    execFileSync('dropbearkey', ['-y', '-f', key], { encoding: 'utf8' })
      .split('\n')
      .find((l) => l.startsWith('ssh-ed25519 ')) ?? '';
  if (!publicKey) throw new Error('dropbearkey -y printed no ssh-ed25519 public key');
  writeFileSync(join(root, 'init'), INIT, { mode: 0o755 });
  chmodSync(join(root, 'tmp'), 0o1777);
  const initramfs = join(dir, 'capture-initramfs.gz');
  packInitramfs(root, initramfs);
  return {
    kernel: kernel.vmlinuz,
    initramfs,
    publicKey: publicKey.trim(),
    buildMs: Date.now() - started,
  } satisfies CaptureEnv;
}
