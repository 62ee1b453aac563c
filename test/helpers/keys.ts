import ssh2 from 'ssh2';

/**
 * An ed25519 key pair in OpenSSH format. ssh2's `generateKeyPairSync` drops a leading zero byte of the
 * public key about once in 250 keys and then cannot parse its own private key ("Malformed OpenSSH private
 * key"): such pairs are thrown away, so that tests do not fail at random.
 */
export function ed25519KeyPair(): { private: string; public: string } {
  for (;;) {
    const pair = ssh2.utils.generateKeyPairSync('ed25519');
    const parsed = ssh2.utils.parseKey(pair.private);
    if (parsed instanceof Error || Array.isArray(parsed)) continue;
    // type string (4 + 11) + key (4 + 32).
    if (parsed.getPublicSSH().length !== 51) continue;
    return pair;
  }
}
