/** Turns inventory host entries into the transport's host objects. */
import { readFileSync } from 'node:fs';
import { VclError } from '../errors.js';
import type { Inventory } from '../inventory/schema.js';
import type { SshHost } from '../ssh/index.js';

/** Builds (once per host) the transport's host objects from the inventory, reading key files eagerly. */
export function inventoryHosts(inventory: Inventory): Map<string, SshHost> {
  const out = new Map<string, SshHost>();
  for (const [name, h] of Object.entries(inventory.hosts)) {
    let privateKey: string | Buffer;
    if (h.privateKey !== undefined) privateKey = h.privateKey;
    else {
      try {
        privateKey = readFileSync(h.privateKeyPath as string);
      } catch (err) {
        throw new VclError(
          'INVALID_INVENTORY',
          `hosts.${name}.privateKeyPath: cannot read ${h.privateKeyPath}: ${(err as Error).message}`,
        );
      }
    }
    let passphrase: string | undefined;
    if (h.passphraseEnv !== undefined) {
      passphrase = process.env[h.passphraseEnv];
      if (passphrase === undefined)
        throw new VclError(
          'INVALID_INVENTORY',
          `hosts.${name}.passphraseEnv: the environment variable ${h.passphraseEnv} is not set`,
        );
    } else if (h.passphraseFile !== undefined) {
      try {
        passphrase = readFileSync(h.passphraseFile, 'utf8').replace(/\r?\n$/, '');
      } catch (err) {
        throw new VclError(
          'INVALID_INVENTORY',
          `hosts.${name}.passphraseFile: cannot read ${h.passphraseFile}: ${(err as Error).message}`,
        );
      }
    }
    out.set(name, {
      ...(passphrase === undefined ? {} : { passphrase }),
      name,
      host: h.address,
      port: h.port,
      username: h.user,
      privateKey,
      hostKey: h.hostKey,
      ...(h.maxChannels === undefined ? {} : { maxChannels: h.maxChannels }),
    });
  }
  return out;
}
