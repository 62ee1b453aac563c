/**
 * Lab inventories whose libvirt computers boot-test their images: the switch on, their repository the
 * libvirt host's own (`kvm-local`: the test domain boots an overlay over the image where it lies).
 */
import type { Inventory } from '../../src/inventory/schema.js';

export interface BootTestSetting {
  check?: 'console' | 'ssh';
  port?: number;
  pattern?: string;
}

export function withBootTest(
  inventory: Inventory,
  computers: readonly string[],
  setting: BootTestSetting = {},
): Inventory {
  const copy = structuredClone(inventory);
  for (const name of computers) {
    const entry = copy.computers[name];
    if (entry?.provisioner.type !== 'libvirt')
      throw new Error(`${name} is not a libvirt computer of the lab`);
    entry.repository = 'kvm-local';
    entry.provisioner.bootTest = {
      enabled: true,
      check: setting.check ?? 'console',
      pattern: setting.pattern ?? 'login:',
      ...(setting.port === undefined ? {} : { port: setting.port }),
    };
  }
  return copy;
}
