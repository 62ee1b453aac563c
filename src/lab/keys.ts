/**
 * Keys of the lab: one generated ed25519 host key per host (its fingerprint is pinned in the inventory, so
 * the transport's host key check runs for real) and one client key pair that every host accepts.
 */
import { timingSafeEqual } from 'node:crypto';
import ssh2 from 'ssh2';
import { fingerprintSha256 } from '../ssh/index.js';

export interface HostKey {
  /** OpenSSH private key text, for ssh2's `Server`. */
  privateKey: string;
  /** `SHA256:...` as `ssh-keygen -lf` prints it. */
  fingerprint: string;
}

/**
 * An ed25519 pair ssh2 can read back. Its `generateKeyPairSync` drops a leading zero byte of the public
 * key about once in 250 keys and then cannot parse its own private key ("Malformed OpenSSH private key");
 * a lab of hundreds of hosts would meet that, so such pairs are thrown away.
 */
function ed25519Pair(comment?: string): { private: string; public: string } {
  for (;;) {
    const pair = ssh2.utils.generateKeyPairSync('ed25519', comment === undefined ? {} : { comment });
    const parsed = ssh2.utils.parseKey(pair.private);
    if (parsed instanceof Error || Array.isArray(parsed)) continue;
    // Key type string (4 + 11 bytes) and key (4 + 32 bytes).
    if (parsed.getPublicSSH().length !== 51) continue;
    return pair;
  }
}

export function generateHostKey(): HostKey {
  const pair = ed25519Pair();
  return { privateKey: pair.private, fingerprint: fingerprintSha256(publicBlob(pair.public)) };
}

export interface ClientKey {
  privateKey: string;
  publicKey: string;
  /** The public key blob the server compares offered keys with. */
  blob: Buffer;
  /** ssh2's parsed public key, used to check signatures. */
  parsed: ssh2.ParsedKey;
}

export function generateClientKey(): ClientKey {
  const pair = ed25519Pair('vcl-lab client');
  const parsed = ssh2.utils.parseKey(pair.public);
  if (parsed instanceof Error) throw parsed;
  return { privateKey: pair.private, publicKey: pair.public, blob: parsed.getPublicSSH(), parsed };
}

function publicBlob(publicKey: string): Buffer {
  const parsed = ssh2.utils.parseKey(publicKey);
  if (parsed instanceof Error) throw parsed;
  return parsed.getPublicSSH();
}

/** The offered key is the lab's client key (and, when signed, the signature is valid). */
export function acceptsKey(
  client: ClientKey,
  offered: { algo: string; data: Buffer },
  signature?: { blob: Buffer; signature: Buffer; hashAlgo: string | undefined },
): boolean {
  if (offered.algo !== client.parsed.type) return false;
  if (offered.data.length !== client.blob.length || !timingSafeEqual(offered.data, client.blob)) return false;
  if (signature === undefined) return true;
  return client.parsed.verify(signature.blob, signature.signature, signature.hashAlgo) === true;
}
