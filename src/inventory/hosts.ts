/**
 * The inventory's hosts and the secrets they lead to, resolved in one place: the runner's SSH host
 * objects (`inventoryHosts`, strict: a key or passphrase that cannot be read is an INVALID_INVENTORY
 * error naming the field) and the inspector's redaction (`hostSecretTexts`, lenient: every secret a host
 * entry names, so it can be cut out wherever it appears).
 */
import { readFileSync, statSync } from 'node:fs';
import { VclError } from '../errors.js';
import type { SshHost } from '../ssh/index.js';
import type { ComputerEntry, Inventory, RepositoryEntry } from './schema.js';

/** The secret-bearing fields of a host entry (validated or not: the redaction also reads raw ones). */
export interface HostSecretFields {
  privateKey?: unknown;
  privateKeyPath?: unknown;
  passphraseEnv?: unknown;
  passphraseFile?: unknown;
}

/** Files above this size are not read by the lenient reader (a secret file is small). */
const MAX_SECRET_FILE = 256 * 1024;

/**
 * Reads one secret a host entry names. Strict: a failure throws INVALID_INVENTORY naming
 * `hosts.<name>.<field>`. Lenient: a failure (or a file too large to be a key) gives undefined.
 */
function secretReader(name: string, strict: boolean, env: NodeJS.ProcessEnv) {
  const fail = (field: string, message: string) => {
    if (strict) throw new VclError('INVALID_INVENTORY', `hosts.${name}.${field}: ${message}`);
    return undefined;
  };
  const file = <T>(field: string, path: string, read: (path: string) => T): T | undefined => {
    try {
      if (!strict && statSync(path).size > MAX_SECRET_FILE) return undefined;
      return read(path);
    } catch (err) {
      return fail(field, `cannot read ${path}: ${(err as Error).message}`);
    }
  };
  return {
    keyFile: (path: string) => file('privateKeyPath', path, (p) => readFileSync(p)),
    passphraseFile: (path: string) =>
      file('passphraseFile', path, (p) => readFileSync(p, 'utf8').replace(/\r?\n$/, '')),
    passphraseEnv: (variable: string) =>
      env[variable] ?? fail('passphraseEnv', `the environment variable ${variable} is not set`),
  };
}

/** Builds (once per host) the transport's host objects from the inventory, reading key files eagerly. */
export function inventoryHosts(
  inventory: Inventory,
  env: NodeJS.ProcessEnv = process.env,
): Map<string, SshHost> {
  const out = new Map<string, SshHost>();
  for (const [name, h] of Object.entries(inventory.hosts)) {
    const read = secretReader(name, true, env);
    const privateKey = h.privateKey ?? (read.keyFile(h.privateKeyPath as string) as Buffer);
    const passphrase =
      h.passphraseEnv !== undefined
        ? read.passphraseEnv(h.passphraseEnv)
        : h.passphraseFile !== undefined
          ? read.passphraseFile(h.passphraseFile)
          : undefined;
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

/**
 * Every secret a host entry leads to, as text: its inline key, the contents of its key and passphrase
 * files, the value of its passphrase variable. Unreadable ones are skipped: only used to cut them out.
 */
export function hostSecretTexts(
  name: string,
  h: HostSecretFields,
  env: NodeJS.ProcessEnv = process.env,
): string[] {
  const read = secretReader(name, false, env);
  return [
    typeof h.privateKey === 'string' ? h.privateKey : undefined,
    typeof h.privateKeyPath === 'string' ? read.keyFile(h.privateKeyPath)?.toString('utf8') : undefined,
    typeof h.passphraseFile === 'string' ? read.passphraseFile(h.passphraseFile) : undefined,
    typeof h.passphraseEnv === 'string' ? read.passphraseEnv(h.passphraseEnv) : undefined,
  ].filter((s): s is string => s !== undefined);
}

/** A computer's inventory entry; UNKNOWN_COMPUTER (listing the known ones) when it has none. */
export function computerEntry(
  inventory: Inventory,
  name: string,
  options: { step?: string } = {},
): ComputerEntry {
  const computer = inventory.computers[name];
  if (!computer)
    throw new VclError(
      'UNKNOWN_COMPUTER',
      `computer '${name}' is not in the inventory; known: ${Object.keys(inventory.computers).join(', ')}`,
      options,
    );
  return computer;
}

/** The SSH hosts a capture of `computer` goes through: its provisioner's host, its own OS, its repository. */
export interface CaptureHosts {
  provisionerHost: SshHost;
  guestHost: SshHost;
  repository: { host: SshHost; path: string };
}

/** Resolves a computer's hosts from the transport's host objects (`inventoryHosts`). */
export function captureHostsOf(
  inventory: Inventory,
  hosts: ReadonlyMap<string, SshHost>,
  computer: ComputerEntry,
): CaptureHosts {
  const host = (name: string) => hosts.get(name) as SshHost;
  const repository = inventory.repositories[computer.repository] as RepositoryEntry;
  return {
    provisionerHost: host(computer.provisioner.host),
    guestHost: host(computer.host),
    repository: { host: host(repository.host), path: repository.path },
  };
}
