/**
 * Host key verification: OpenSSH-compatible fingerprints, known_hosts parsing and matching (plain and
 * hashed names, `[host]:port`, wildcard and negated patterns, `@revoked`), and the decision the transport
 * takes during each handshake.
 */
import { createHash, createHmac, timingSafeEqual } from 'node:crypto';
import { appendFile, mkdir, readFile, stat } from 'node:fs/promises';
import { dirname } from 'node:path';

/** `SHA256:<base64, no padding>` of a raw public key blob, exactly as `ssh-keygen -l` prints it. */
export function fingerprintSha256(keyBlob: Buffer): string {
  return `SHA256:${createHash('sha256').update(keyBlob).digest('base64').replace(/=+$/, '')}`;
}

/** Normalizes a user-written fingerprint for comparison (prefix and padding optional, base64 case kept). */
export function normalizeFingerprint(fp: string): string {
  const trimmed = fp.trim().replace(/=+$/, '');
  return trimmed.startsWith('SHA256:') ? trimmed : `SHA256:${trimmed}`;
}

/** The key type named inside an SSH public key blob (`ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`...). */
export function keyTypeOfBlob(blob: Buffer): string {
  if (blob.length < 4) return 'unknown';
  const len = blob.readUInt32BE(0);
  if (len > 64 || 4 + len > blob.length) return 'unknown';
  return blob.subarray(4, 4 + len).toString('latin1');
}

/** The name under which known_hosts stores a host: `host` on port 22, `[host]:port` otherwise. */
export function knownHostName(host: string, port: number): string {
  const h = host.toLowerCase();
  return port === 22 ? h : `[${h}]:${port}`;
}

export interface KnownHostEntry {
  /** 1-based line number in the file, for messages. */
  line: number;
  marker: 'revoked' | 'cert-authority' | undefined;
  /** The host field as written (a comma-separated pattern list, or `|1|salt|hash`). */
  hosts: string;
  keyType: string;
  key: Buffer;
}

/** Parses known_hosts text. Malformed lines are skipped, as OpenSSH does. */
export function parseKnownHosts(text: string): KnownHostEntry[] {
  const entries: KnownHostEntry[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const raw = (lines[i] ?? '').trim();
    if (raw === '' || raw.startsWith('#')) continue;
    const fields = raw.split(/[ \t]+/);
    let marker: KnownHostEntry['marker'];
    if (fields[0]?.startsWith('@')) {
      const m = fields.shift();
      if (m === '@revoked') marker = 'revoked';
      else if (m === '@cert-authority') marker = 'cert-authority';
      else continue;
    }
    const [hosts, keyType, keyB64] = fields;
    if (hosts === undefined || keyType === undefined || keyB64 === undefined) continue;
    if (!/^[A-Za-z0-9+/]+=*$/.test(keyB64)) continue;
    const key = Buffer.from(keyB64, 'base64');
    if (key.length === 0 || keyTypeOfBlob(key) !== keyType) continue;
    entries.push({ line: i + 1, marker, hosts, keyType, key });
  }
  return entries;
}

/** OpenSSH's `*`/`?` wildcard match, case-insensitive (host names are compared in lower case). */
function wildcardMatch(pattern: string, name: string): boolean {
  const p = pattern.toLowerCase();
  // Iterative glob with backtracking on the last `*`.
  let pi = 0;
  let ni = 0;
  let star = -1;
  let mark = 0;
  while (ni < name.length) {
    const pc = p[pi];
    if (pc === '?' || (pc !== undefined && pc !== '*' && pc === name[ni])) {
      pi++;
      ni++;
    } else if (pc === '*') {
      star = pi++;
      mark = ni;
    } else if (star >= 0) {
      pi = star + 1;
      ni = ++mark;
    } else {
      return false;
    }
  }
  while (p[pi] === '*') pi++;
  return pi === p.length;
}

/** Whether a known_hosts host field names `hostName` (as made by `knownHostName`). */
export function knownHostsFieldMatches(hosts: string, hostName: string): boolean {
  const name = hostName.toLowerCase();
  if (hosts.startsWith('|1|')) {
    const [, , saltB64, hashB64] = hosts.split('|');
    if (saltB64 === undefined || hashB64 === undefined) return false;
    const expected = Buffer.from(hashB64, 'base64');
    const actual = createHmac('sha1', Buffer.from(saltB64, 'base64')).update(name).digest();
    return expected.length === actual.length && timingSafeEqual(expected, actual);
  }
  let matched = false;
  for (const pattern of hosts.split(',')) {
    if (pattern === '') continue;
    if (pattern.startsWith('!')) {
      if (wildcardMatch(pattern.slice(1), name)) return false;
    } else if (wildcardMatch(pattern, name)) {
      matched = true;
    }
  }
  return matched;
}

/** A known_hosts host field in OpenSSH's hashed form (`ssh-keygen -H`), for writing hashed entries. */
export function hashKnownHostName(hostName: string, salt: Buffer): string {
  const hash = createHmac('sha1', salt).update(hostName.toLowerCase()).digest();
  return `|1|${salt.toString('base64')}|${hash.toString('base64')}`;
}

export type HostKeyDecision =
  | { kind: 'trusted'; via: 'fingerprint' | 'known_hosts'; line?: number }
  | { kind: 'unknown'; otherTypesKnown: string[] }
  | { kind: 'mismatch'; reason: 'pinned' | 'changed' | 'revoked'; line?: number; expected?: string[] };

/**
 * Decides about a presented host key. Order: a revoked key is refused; a pinned fingerprint or a known_hosts
 * entry with the same key trusts it; otherwise pins, or a known_hosts entry with a different key of the same
 * type, make it a mismatch; otherwise the host is unknown.
 */
export function decideHostKey(
  keyBlob: Buffer,
  hostName: string,
  pins: readonly string[],
  knownHosts: readonly KnownHostEntry[],
): HostKeyDecision {
  const type = keyTypeOfBlob(keyBlob);
  const forHost = knownHosts.filter(
    (e) => e.marker !== 'cert-authority' && knownHostsFieldMatches(e.hosts, hostName),
  );
  // @revoked lines apply whatever host they name in OpenSSH; we honour them for any host too.
  const revoked = knownHosts.find((e) => e.marker === 'revoked' && e.key.equals(keyBlob));
  if (revoked !== undefined) return { kind: 'mismatch', reason: 'revoked', line: revoked.line };
  const fp = fingerprintSha256(keyBlob);
  const normalizedPins = pins.map(normalizeFingerprint);
  if (normalizedPins.includes(fp)) return { kind: 'trusted', via: 'fingerprint' };
  const plain = forHost.filter((e) => e.marker === undefined);
  const same = plain.find((e) => e.key.equals(keyBlob));
  if (same !== undefined) return { kind: 'trusted', via: 'known_hosts', line: same.line };
  if (normalizedPins.length > 0) return { kind: 'mismatch', reason: 'pinned', expected: normalizedPins };
  const changed = plain.find((e) => e.keyType === type);
  if (changed !== undefined) {
    return {
      kind: 'mismatch',
      reason: 'changed',
      line: changed.line,
      expected: [fingerprintSha256(changed.key)],
    };
  }
  return { kind: 'unknown', otherTypesKnown: [...new Set(plain.map((e) => e.keyType))] };
}

/** Reads and parses a known_hosts file; a missing file is an empty list. */
export async function readKnownHosts(file: string): Promise<KnownHostEntry[]> {
  try {
    return parseKnownHosts(await readFile(file, 'utf8'));
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw err;
  }
}

/** Appends `hostName type key` to a known_hosts file, creating it (0600) and its folder (0700) if needed. */
export async function appendKnownHost(file: string, hostName: string, keyBlob: Buffer): Promise<void> {
  await mkdir(dirname(file), { recursive: true, mode: 0o700 });
  let prefix = '';
  try {
    const st = await stat(file);
    if (st.size > 0) {
      const text = await readFile(file);
      if (text[text.length - 1] !== 0x0a) prefix = '\n';
    }
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  const line = `${prefix}${hostName} ${keyTypeOfBlob(keyBlob)} ${keyBlob.toString('base64')}\n`;
  await appendFile(file, line, { mode: 0o600 });
}

/** ssh2 host key algorithm names for a known_hosts key type (RSA keys sign with SHA-2 first). */
export function hostKeyAlgorithmsFor(keyType: string): string[] {
  switch (keyType) {
    case 'ssh-rsa':
      return ['rsa-sha2-512', 'rsa-sha2-256', 'ssh-rsa'];
    case 'ssh-ed25519':
    case 'ecdsa-sha2-nistp256':
    case 'ecdsa-sha2-nistp384':
    case 'ecdsa-sha2-nistp521':
      return [keyType];
    default:
      return [];
  }
}
