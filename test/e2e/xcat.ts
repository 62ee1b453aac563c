/**
 * The xCAT flow's infrastructure (issue 20): a "management node" and a network-booted node.
 *
 * - The management node is a real OpenSSH sshd on loopback (test/helpers/sshd.ts) whose `rpower`,
 *   `nodeset`, `nodestat` and `nodech` are the small bash scripts below, on its sessions' PATH. They are
 *   **test doubles of xCAT's commands**, kept to xCAT 2.16's output formats (`node1: on`, `node1: sshd`,
 *   `Error: [mn]: Invalid nodes and/or groups in noderange: x`), acting on the real libvirtd: `rpower`
 *   is `virsh domstate`/`start`/`destroy`; `nodeset` writes the node's iPXE boot script, as xCAT writes
 *   its xNBA (iPXE) configuration: `osimage=<image>` boots the capture environment (capture-env.ts) with
 *   the osimage's kernel arguments and the profile `nodech` set, `boot` boots the node's own OS (the
 *   installed kernel and the guest's initramfs, whose init goes on from the node's disk). `nodestat` says
 *   `noping` when the domain is not running, what the capture environment reported (`updateflag`, the
 *   double of genesis reporting its status to xcatd; kept per QEMU instance by `virsh domid`), `sshd`
 *   when the node's SSH port shows a banner, else `ping`. The image repository is the management node's
 *   `install` folder, as in xCAT.
 * - The node is a libvirt domain that boots over the network: its virtio NIC's iPXE ROM (Debian's
 *   ipxe-qemu) boots first, QEMU's user network answers DHCP with `<node>.ipxe` as the boot file and serves
 *   it from the management node's tftpboot folder over TFTP; the script fetches the kernel and initramfs
 *   over HTTP from `busybox httpd` on the management node. So every boot, also a reboot from inside the
 *   guest, runs whatever `nodeset` last wrote, as a PXE-booted node does. SeaBIOS's serial console puts
 *   the firmware's and iPXE's messages into the node's console log.
 */
import { spawn } from 'node:child_process';
import { appendFileSync, chownSync, copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, type SshdServer, startSshd } from '../helpers/sshd.js';
import { buildCaptureEnv, type CaptureEnv } from './capture-env.js';
import type { Guest } from './guest.js';
import { daemonUser, domainXml, type Libvirtd, run } from './libvirt.js';
import { IPXE_ROM, which } from './requirements.js';

export const XCAT_NODE = 'node1';
export const NODE_DOMAIN = 'vcl-e2e-node1';
/** The osimages of the management node: the capture environment with its kernel arguments. */
export const OSIMAGES = {
  /** Reads the node's disk and uploads it. */
  capture: 'e2e-capture',
  /** Reads a disk the node does not have: the read fails, the environment writes `.capturefailed`. */
  badDisk: 'e2e-capture-baddisk',
  /** Sends 4 MiB, then nothing more. */
  stall: 'e2e-capture-stall',
} as const;
const OSIMAGE_ARGS: Record<string, string> = {
  [OSIMAGES.capture]: 'xcat.disk=/dev/vda',
  [OSIMAGES.badDisk]: 'xcat.disk=/dev/vdz',
  [OSIMAGES.stall]: 'xcat.disk=/dev/vda xcat.stall=4',
};
const OS_CMDLINE = 'console=ttyS0 quiet panic=-1';
/** How the guest reaches the host's loopback through QEMU's user network. */
const HOST_FROM_GUEST = '10.0.2.2';

export interface Xcat {
  /** The management node's sshd. */
  mn: SshdServer;
  dir: string;
  /** The image repository (xCAT's /install). */
  install: string;
  tftpboot: string;
  node: { name: string; domain: string; disk: string; serialLog: string; sshPort: number };
  captureEnv: CaptureEnv;
  /** Runs one of the management node's commands as the product does (through its sshd). */
  mnCommand(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }>;
  /** What the node's next boot is: `boot`, or the osimage `nodeset` chose. */
  nextBoot(): string;
  /** Stops the management node's sshd and httpd. */
  stop(): Promise<void>;
}

const COMMON = `MN=xcat-mn
XCAT_DIR=$(cd "$(dirname "$0")/.." && pwd)
# A node's domain and SSH port (nodes/<node>: "domain port"), or xCAT's error for a node it does not know.
node_entry() {
  if [ -z "$1" ] || ! read -r dom port 2>/dev/null < "$XCAT_DIR/nodes/$1"; then
    echo "Error: [$MN]: Invalid nodes and/or groups in noderange: $1" >&2
    exit 1
  fi
}
`;

const RPOWER = `#!/bin/bash
# Test double of xCAT's rpower over libvirt (xCAT 2.16 output: "node1: on").
. "$(dirname "$0")/../common.sh"
node_entry "$1"
state=$(virsh domstate "$dom") || exit 1
case "$2" in
  stat|state|status) [ "$state" = running ] && echo "$1: on" || echo "$1: off" ;;
  on) [ "$state" = running ] || virsh start "$dom" > /dev/null || exit 1; echo "$1: on" ;;
  off) [ "$state" = running ] && { virsh destroy "$dom" > /dev/null || exit 1; }; echo "$1: off" ;;
  *) echo "Error: [$MN]: Unsupported command: rpower $2" >&2; exit 1 ;;
esac
`;

const NODESET = `#!/bin/bash
# Test double of xCAT's nodeset: writes the node's iPXE boot script (xCAT's xNBA configuration).
. "$(dirname "$0")/../common.sh"
node_entry "$1"
case "$2" in
  boot)
    script="#!ipxe
kernel $(cat "$XCAT_DIR/http-base")/vmlinuz ${OS_CMDLINE}
initrd $(cat "$XCAT_DIR/http-base")/node-initramfs.gz
boot"
    said="$1: boot" ;;
  osimage=*)
    image=\${2#osimage=}
    if ! args=$(cat "$XCAT_DIR/osimage/$image" 2>/dev/null); then
      echo "Error: [$MN]: Cannot find the OS image definition for $image in the osimage table." >&2
      exit 1
    fi
    profile=$(cat "$XCAT_DIR/profile/$1" 2>/dev/null)
    script="#!ipxe
kernel $(cat "$XCAT_DIR/http-base")/vmlinuz ${OS_CMDLINE} xcat.node=$1 xcat.image=$profile xcat.repo=$XCAT_DIR/install xcat.mn=$(cat "$XCAT_DIR/mn-login") $args
initrd $(cat "$XCAT_DIR/http-base")/capture-initramfs.gz
boot"
    said="$1: netboot $image" ;;
  *) echo "Error: [$MN]: Unsupported nodeset option: $2" >&2; exit 1 ;;
esac
printf '%s\\n' "$script" > "$XCAT_DIR/tftpboot/.$1.ipxe" && mv "$XCAT_DIR/tftpboot/.$1.ipxe" "$XCAT_DIR/tftpboot/$1.ipxe" || exit 1
printf '%s\\n' "\${2}" > "$XCAT_DIR/nextboot-$1"
echo "$said"
`;

const NODESTAT = `#!/bin/bash
# Test double of xCAT's nodestat: noping / the capture environment's reported status / sshd / ping.
. "$(dirname "$0")/../common.sh"
node_entry "$1"
state=$(virsh domstate "$dom") || exit 1
if [ "$state" != running ]; then echo "$1: noping"; exit 0; fi
id=$(virsh domid "$dom")
if read -r sid status 2>/dev/null < "$XCAT_DIR/status/$1" && [ "$sid" = "$id" ]; then
  echo "$1: $status"
elif banner=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0" && IFS= read -r -t 2 l <&3 && printf %s "$l"' "$port" 2>/dev/null) && [[ $banner == SSH-* ]]; then
  echo "$1: sshd"
else
  echo "$1: ping"
fi
`;

const NODECH = `#!/bin/bash
# Test double of xCAT's nodech: keeps nodetype.profile (the image name the capture environment uploads as).
. "$(dirname "$0")/../common.sh"
node=$1
node_entry "$node"
shift
[ $# -gt 0 ] || { echo "Error: [$MN]: No attribute to change" >&2; exit 1; }
for a in "$@"; do
  case "$a" in
    nodetype.profile=*) printf '%s\\n' "\${a#nodetype.profile=}" > "$XCAT_DIR/profile/$node" ;;
    *.*=*) ;;
    *) echo "Error: [$MN]: Invalid argument: $a" >&2; exit 1 ;;
  esac
done
`;

const UPDATEFLAG = `#!/bin/bash
# What the capture environment reports (as genesis reports its status to xcatd): kept for this QEMU run.
. "$(dirname "$0")/../common.sh"
node_entry "$1"
echo "$(virsh domid "$dom") $2" > "$XCAT_DIR/status/$1"
`;

/**
 * Starts the management node (its sshd, scripts, tftpboot folder, osimages) for `guest`'s kernel and
 * initramfs, and defines the node's domain in `libvirt`. Its disk is a fresh qcow2 of `diskSize`.
 */
export async function startXcat(o: {
  dir: string;
  guest: Guest;
  libvirt: Libvirtd;
  diskSize: string;
  lifetimeMs: number;
}): Promise<Xcat> {
  const { dir } = o;
  for (const d of ['bin', 'tftpboot', 'osimage', 'status', 'profile', 'nodes', 'install', 'node'])
    mkdirSync(join(dir, d), { recursive: true, mode: 0o755 });
  // The session sshd has the scripts first on its PATH and reaches the same libvirtd.
  const mn = await startSshd({
    env: {
      LIBVIRT_DEFAULT_URI: o.libvirt.uri,
      PATH: `${join(dir, 'bin')}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin`,
    },
    lifetimeMs: o.lifetimeMs,
  });
  const captureEnv = buildCaptureEnv(join(dir, 'capture-env'), {
    address: HOST_FROM_GUEST,
    port: mn.port,
    hostKey: mn.hostPublicKey,
  });
  appendFileSync(join(mn.dir, 'authorized_keys'), `${captureEnv.publicKey}\n`);
  writeFileSync(join(dir, 'mn-login'), `${mn.username}@${HOST_FROM_GUEST}\n`);
  // dbclient takes the port with -p; the capture environment reads it from the command line.
  for (const [name, args] of Object.entries(OSIMAGE_ARGS))
    writeFileSync(join(dir, 'osimage', name), `${args} xcat.port=${mn.port}\n`);
  writeFileSync(join(dir, 'common.sh'), COMMON);
  for (const [name, text] of Object.entries({
    rpower: RPOWER,
    nodeset: NODESET,
    nodestat: NODESTAT,
    nodech: NODECH,
    updateflag: UPDATEFLAG,
  }))
    writeFileSync(join(dir, 'bin', name), text, { mode: 0o755 });
  const tftpboot = join(dir, 'tftpboot');
  // The kernel and initramfs go over HTTP, as xCAT's management node serves them from its httpd; TFTP
  // carries only the boot script.
  const httpPort = await freePort();
  const httpd = spawn(
    'setpriv',
    [
      '--pdeathsig',
      'KILL',
      which('busybox') as string,
      'httpd',
      '-f',
      '-p',
      `127.0.0.1:${httpPort}`,
      '-h',
      tftpboot,
    ],
    { stdio: 'ignore' },
  );
  writeFileSync(join(dir, 'http-base'), `http://${HOST_FROM_GUEST}:${httpPort}\n`);
  copyFileSync(o.guest.kernel, join(tftpboot, 'vmlinuz'));
  copyFileSync(o.guest.initramfs, join(tftpboot, 'node-initramfs.gz'));
  copyFileSync(captureEnv.initramfs, join(tftpboot, 'capture-initramfs.gz'));

  const disk = join(dir, 'node', 'disk.qcow2');
  const created = await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, o.diskSize]);
  if (created.code !== 0) throw new Error(`qemu-img create: ${created.stderr}`);
  const sshPort = await freePort();
  writeFileSync(join(dir, 'nodes', XCAT_NODE), `${NODE_DOMAIN} ${sshPort}\n`);
  // QEMU (the daemon's user) writes the disk and the console log.
  const user = daemonUser();
  if (user) {
    chownSync(join(dir, 'node'), user.uid, user.gid);
    chownSync(disk, user.uid, user.gid);
  }
  const serialLog = join(dir, 'node', 'serial.log');
  // SeaBIOS's serial console (its fw_cfg file etc/sercon-port: the port, 0x3f8, as a little-endian
  // number): the firmware's and iPXE's messages land in the console log too.
  const sercon = join(dir, 'node', 'sercon-port');
  writeFileSync(sercon, Buffer.from([0xf8, 0x03]));
  const xml = join(dir, 'node', 'domain.xml');
  writeFileSync(
    xml,
    domainXml({
      name: NODE_DOMAIN,
      disk,
      serialLog,
      sshPort,
      netboot: { tftpboot, bootfile: `${XCAT_NODE}.ipxe`, rom: IPXE_ROM, sercon },
    }),
  );
  const defined = await o.libvirt.virsh(['define', xml]);
  if (defined.code !== 0) throw new Error(`virsh define ${NODE_DOMAIN}: ${defined.stderr}`);
  const install = join(dir, 'install');
  // The suite's own arguments (node and image names): nothing that needs quoting.
  const mnCommand = (args: string[]) =>
    run('ssh', [...mn.clientOptions(), '-p', String(mn.port), `${mn.username}@127.0.0.1`, args.join(' ')]);
  return {
    mn,
    dir,
    install,
    tftpboot,
    node: { name: XCAT_NODE, domain: NODE_DOMAIN, disk, serialLog, sshPort },
    captureEnv,
    mnCommand,
    async stop() {
      httpd.kill('SIGKILL');
      await mn.stop();
    },
    nextBoot: () => {
      try {
        return readFileSync(join(dir, `nextboot-${XCAT_NODE}`), 'utf8').trim();
      } catch {
        return 'boot';
      }
    },
  };
}
