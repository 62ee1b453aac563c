/**
 * The built-in lab: SSH hosts for the demo, the tests and benchmarks, started in-process on loopback.
 *
 * ```ts
 * const lab = await startLab({ powerDelayMs: 20 });
 * try {
 *   const runner = createRunner({ inventory: lab.inventory, ... });
 *   lab.faults.add({ kind: 'failCommand', host: 'libvirt-host', match: ['qemu-img', 'convert'], exitCode: 1 });
 *   ...
 * } finally {
 *   await lab.stop();
 * }
 * ```
 *
 * Hosts (inventory names): `libvirt-host`, `esxi-host`, `xcat-mn`, `pve-node`, `repo-host`, and one guest
 * host per computer named like the computer (`lv-linux-1`, `vm-windows-1`, `xc-linux-1`, `px-linux-1`...). Each host is its own
 * ssh2 `Server` on 127.0.0.1 with its own ed25519 host key (pinned in the inventory) and file system.
 * Repositories: `images` (repo-host:/srv/vcl/images), `kvm-local` (libvirt-host:/var/lib/vcl/images),
 * `xcat-images` (xcat-mn:/install/image/x86), `pve-local` (pve-node:/var/lib/vz/vcl-images). The lab never
 * runs a shell: see words.ts.
 */

export { type ChildLab, spawnLab } from './child.js';
export {
  COPY_FINALIZE_SCRIPT,
  COPY_READ_SCRIPT,
  COPY_WRITE_SCRIPT,
  ZSTD_READ_SCRIPT,
  ZSTD_WRITE_SCRIPT,
} from './commands/transport.js';
export { LAB_CAPTURE_IMAGE, LAB_HOSTS, LAB_REPOSITORIES, labComputerName, startLab } from './lab.js';
export { GUEST_PROFILES } from './options.js';
export * from './types.js';
export { TRANSPORT_PREFIX } from './words.js';
