/**
 * Host key trust and connection failures against a real OpenSSH sshd: pinned fingerprints, known_hosts
 * (plain and hashed), unknown and changed keys, accept-new, wrong user key, a host that is not (yet) up.
 */
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isSshError, type SshError, SshPool } from '../../src/ssh/index.js';
import { ed25519KeyPair } from '../helpers/keys.js';
import { freePort, type SshdServer, sshdAvailable, startSshd } from '../helpers/sshd.js';

const available = sshdAvailable('test/ssh/hostkeys.test.ts');

async function failure(p: Promise<unknown>): Promise<SshError> {
  try {
    await p;
  } catch (err) {
    if (isSshError(err)) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
}

describe.skipIf(!available)('host keys and connection errors against OpenSSH sshd', () => {
  let server: SshdServer;
  let pool: SshPool;
  let n = 0;
  /** A fresh host name per test, so every test opens its own connection (and its own handshake). */
  const name = () => `hk-${++n}`;

  beforeAll(async () => {
    server = await startSshd();
    pool = new SshPool();
  });
  afterAll(async () => {
    await pool?.close();
    await server?.stop();
  });

  it('accepts the pinned fingerprint', async () => {
    const r = await pool.exec(server.sshHost({ name: name() }), ['echo', 'ok']);
    expect(r.stdout).toBe('ok\n');
  });

  it('refuses a pinned wrong fingerprint as SSH_HOSTKEY_MISMATCH', async () => {
    const wrong = `SHA256:${Buffer.alloc(32, 7).toString('base64').replace(/=+$/, '')}`;
    const err = await failure(
      pool.exec(server.sshHost({ name: name(), hostKey: { fingerprints: [wrong] } }), ['true']),
    );
    expect(err.code).toBe('SSH_HOSTKEY_MISMATCH');
    expect(err.message).toContain(server.hostKeyFingerprint);
    expect(err.message).toContain(wrong);
  });

  it('refuses an unknown host, printing its fingerprint and how to trust it', async () => {
    const knownHostsFile = join(server.dir, `empty-${n}`);
    writeFileSync(knownHostsFile, '');
    const started = Date.now();
    const err = await failure(
      pool.exec(server.sshHost({ name: name(), hostKey: { knownHostsFile } }), ['true']),
    );
    // Retrying would last the default 60 s connect deadline.
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(err.code).toBe('SSH_HOSTKEY_UNKNOWN');
    expect(err.details?.fingerprint).toBe(server.hostKeyFingerprint);
    expect(err.message).toContain(server.hostKeyFingerprint);
    expect(err.message).toContain('ssh-keyscan');
    expect(err.message).toContain('acceptNew');
    expect(readFileSync(knownHostsFile, 'utf8')).toBe('');
  });

  it('accepts a host listed in known_hosts, plain and hashed (ssh-keygen -H)', async () => {
    const knownHostsFile = join(server.dir, `known-${n}`);
    writeFileSync(
      knownHostsFile,
      `# comment\notherhost ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK\n${server.knownHostsLine()}\n`,
    );
    expect(
      (await pool.exec(server.sshHost({ name: name(), hostKey: { knownHostsFile } }), ['true'])).code,
    ).toBe(0);
    const hashed = spawnSync('ssh-keygen', ['-H', '-f', knownHostsFile], { encoding: 'utf8' });
    expect(hashed.status).toBe(0);
    expect(readFileSync(knownHostsFile, 'utf8')).toMatch(/^\|1\|/m);
    expect(readFileSync(knownHostsFile, 'utf8')).not.toContain('127.0.0.1');
    expect(
      (await pool.exec(server.sshHost({ name: name(), hostKey: { knownHostsFile } }), ['true'])).code,
    ).toBe(0);
  });

  it('refuses a changed key (known_hosts holds another key of the same type), even with acceptNew', async () => {
    const knownHostsFile = join(server.dir, `changed-${n}`);
    const other = ed25519KeyPair().public.trim().split(/\s+/).slice(0, 2).join(' ');
    writeFileSync(knownHostsFile, `[127.0.0.1]:${server.port} ${other}\n`);
    const err = await failure(
      pool.exec(server.sshHost({ name: name(), hostKey: { knownHostsFile, acceptNew: true } }), ['true']),
    );
    expect(err.code).toBe('SSH_HOSTKEY_MISMATCH');
    expect(err.message).toContain('CHANGED');
    expect(err.details?.reason).toBe('changed');
    expect(readFileSync(knownHostsFile, 'utf8')).toBe(`[127.0.0.1]:${server.port} ${other}\n`);
  });

  it('with acceptNew, trusts an unknown host once and writes it to known_hosts', async () => {
    const knownHostsFile = join(server.dir, 'sub', `acceptnew-${n}`);
    const r = await pool.exec(
      server.sshHost({ name: name(), hostKey: { knownHostsFile, acceptNew: true } }),
      ['true'],
    );
    expect(r.code).toBe(0);
    expect(readFileSync(knownHostsFile, 'utf8').trim()).toBe(server.knownHostsLine());
    // From now on the file alone is enough, and OpenSSH's own client agrees with what we wrote.
    expect(
      (await pool.exec(server.sshHost({ name: name(), hostKey: { knownHostsFile } }), ['true'])).code,
    ).toBe(0);
    const found = spawnSync('ssh-keygen', ['-F', `[127.0.0.1]:${server.port}`, '-f', knownHostsFile]);
    expect(found.status).toBe(0);
  });

  it('fails a wrong user key at once with SSH_AUTH_FAILED, although the deadline allows retries', async () => {
    const wrongKey = ed25519KeyPair().private;
    const started = Date.now();
    const err = await failure(
      pool.exec(server.sshHost({ name: name(), privateKey: wrongKey, connectDeadlineMs: 30_000 }), ['true']),
    );
    expect(err.code).toBe('SSH_AUTH_FAILED');
    // Retrying would last the whole 30 s deadline.
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(err.message).not.toContain('PRIVATE KEY');
  });

  it('reads the private key from a file path', async () => {
    const r = await pool.exec(server.sshHost({ name: name(), privateKey: server.userKeyPath }), [
      'echo',
      'file',
    ]);
    expect(r.stdout).toBe('file\n');
  });

  it('retries a host that refuses connections until its deadline, then fails SSH_UNREACHABLE', async () => {
    const port = await freePort();
    const started = Date.now();
    const err = await failure(
      // 127.0.0.253: no suite listens there, so the port stays refused for the whole deadline even if
      // another suite's server takes it on 127.0.0.1 meanwhile.
      pool.exec({ ...server.sshHost({ name: name(), port, connectDeadlineMs: 1500 }), host: '127.0.0.253' }, [
        'true',
      ]),
    );
    const elapsed = Date.now() - started;
    expect(err.code).toBe('SSH_UNREACHABLE');
    expect(err.details?.attempts).toBeGreaterThan(2);
    // Retries go on until the deadline itself, however slow each attempt was.
    expect(elapsed).toBeGreaterThanOrEqual(1500);
    // Bounded by the 1.5 s deadline plus the last attempt, with room for a loaded machine.
    expect(elapsed).toBeLessThan(10_000);
  });
});
