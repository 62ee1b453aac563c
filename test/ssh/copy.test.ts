/**
 * Copies against a real OpenSSH sshd on loopback: the inline sha256 against `sha256sum`, every direction,
 * and that a copy that fails leaves nothing under the destination name (nor a temporary file).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CopyProgress, isSshError, type SshError, SshPool } from '../../src/ssh/index.js';
import { type SshdServer, sshdAvailable, startSshd } from '../helpers/sshd.js';

const available = sshdAvailable('test/ssh/copy.test.ts');
const MiB = 1024 * 1024;

async function failure(p: Promise<unknown>): Promise<SshError> {
  try {
    await p;
  } catch (err) {
    if (isSshError(err)) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
}

function sha256sum(path: string): string {
  return execFileSync('sha256sum', [path], { encoding: 'utf8' }).split(' ')[0] ?? '';
}

/** What a folder holds: a failed copy must leave neither the destination nor a temporary file in it. */
function listing(dir: string): string[] {
  return readdirSync(dir).sort();
}

describe.skipIf(!available)('copy against OpenSSH sshd', () => {
  let server: SshdServer;
  let pool: SshPool;
  let big: string;
  let small: string;
  let out: string;

  beforeAll(async () => {
    server = await startSshd();
    pool = new SshPool();
    // The "remote" files live on this machine too: sshd runs here, so both sides can be checked directly.
    big = join(server.dir, 'big.bin');
    spawnSync('sh', ['-c', `head -c ${256 * MiB} /dev/urandom > "$1"`, 'sh', big]);
    small = join(server.dir, 'small.bin');
    spawnSync('sh', ['-c', `head -c ${3 * MiB + 17} /dev/urandom > "$1"`, 'sh', small]);
    out = join(server.dir, 'out');
    mkdirSync(out);
  });
  afterAll(async () => {
    await pool?.close();
    await server?.stop();
  });

  it('copies 256 MiB host -> local with an inline sha256 equal to sha256sum of the source', async () => {
    const dest = join(out, 'big.copy');
    const progress: CopyProgress[] = [];
    const r = await pool.copy(
      { host: server.sshHost(), path: big },
      { path: dest },
      {
        onProgress: (p) => progress.push(p),
        progressIntervalMs: 100,
      },
    );
    expect(r.bytes).toBe(256 * MiB);
    expect(r.sha256).toBe(sha256sum(big));
    expect(sha256sum(dest)).toBe(r.sha256);
    expect(statSync(dest).mode & 0o777).toBe(0o644);
    expect(listing(out)).toEqual(['big.copy']);
    expect(progress.at(-1)).toMatchObject({ done: true, bytes: 256 * MiB, total: 256 * MiB });
    expect(progress.length).toBeGreaterThan(1);
    expect(progress.slice(0, -1).every((p) => !p.done && p.bytes <= 256 * MiB)).toBe(true);
    expect(pool.cipherOf(server.sshHost())).toBe('aes128-gcm@openssh.com');
  });

  it('copies empty and tiny files host -> local (sizes below one disk block)', async () => {
    for (const size of [0, 1, 4095, 4097]) {
      const src = join(server.dir, `tiny-${size}.bin`);
      writeFileSync(src, Buffer.alloc(size, 0x5a));
      const dest = join(out, `tiny-${size}.copy`);
      const progress: CopyProgress[] = [];
      const r = await pool.copy(
        { host: server.sshHost(), path: src },
        { path: dest },
        { onProgress: (p) => progress.push(p) },
      );
      expect(r).toMatchObject({ bytes: size, sha256: sha256sum(src) });
      expect(statSync(dest).size).toBe(size);
      expect(readFileSync(dest).equals(readFileSync(src))).toBe(true);
      expect(progress.at(-1)).toMatchObject({ done: true, bytes: size, total: size });
    }
    expect(listing(out).filter((f) => f.includes('vcl-tmp'))).toEqual([]);
  });

  it('copies local -> host and host -> host, with the mode asked for', async () => {
    const host = server.sshHost();
    const up = join(out, 'up.bin');
    const r1 = await pool.copy({ path: small }, { host, path: up }, { mode: 0o600 });
    expect(r1.sha256).toBe(sha256sum(small));
    expect(readFileSync(up).equals(readFileSync(small))).toBe(true);
    expect(statSync(up).mode & 0o777).toBe(0o600);
    const across = join(out, 'across.bin');
    const r2 = await pool.copy(
      { host, path: up },
      { host: server.sshHost({ name: 'second' }), path: across },
    );
    expect(r2).toMatchObject({ bytes: 3 * MiB + 17, sha256: r1.sha256 });
    expect(sha256sum(across)).toBe(r1.sha256);
    expect(listing(out).filter((f) => f.includes('vcl-tmp'))).toEqual([]);
  });

  it('replaces an existing destination only when the copy succeeded', async () => {
    const dest = join(out, 'replace.bin');
    writeFileSync(dest, 'old');
    await failure(
      pool.copy({ host: server.sshHost(), path: small }, { path: dest }, { expectedSha256: '0'.repeat(64) }),
    );
    expect(readFileSync(dest, 'utf8')).toBe('old');
    await pool.copy(
      { host: server.sshHost(), path: small },
      { path: dest },
      { expectedSha256: sha256sum(small) },
    );
    expect(sha256sum(dest)).toBe(sha256sum(small));
  });

  it('an aborted copy leaves nothing under the final name (local destination)', async () => {
    const dir = join(out, 'abort-local');
    mkdirSync(dir);
    const ac = new AbortController();
    const err = await failure(
      pool.copy(
        { host: server.sshHost(), path: big },
        { path: join(dir, 'img') },
        {
          signal: ac.signal,
          progressIntervalMs: 0,
          onProgress: (p) => {
            if (p.bytes > 16 * MiB) ac.abort();
          },
        },
      ),
    );
    expect(err.code).toBe('SSH_ABORTED');
    expect((err.details?.bytes as number) < 256 * MiB).toBe(true);
    expect(listing(dir)).toEqual([]);
  });

  it('an interrupted copy that may not resume leaves nothing under the final name (remote destination, connection killed)', async () => {
    const dir = join(out, 'abort-remote');
    mkdirSync(dir);
    const dest = join(dir, 'img');
    let killed = false;
    const err = await failure(
      pool.copy(
        { path: big },
        { host: server.sshHost({ name: 'victim' }), path: dest },
        {
          resume: false,
          progressIntervalMs: 0,
          onProgress: (p) => {
            if (p.bytes > 16 * MiB && !killed) {
              killed = true;
              server.signalSessions('SIGKILL');
            }
          },
        },
      ),
    );
    expect(killed).toBe(true);
    expect(err.code).toBe('SSH_DISCONNECTED');
    expect(existsSync(dest)).toBe(false);
    // The cleanup reconnected and removed the partial temporary file too.
    expect(listing(dir)).toEqual([]);
  });

  it('fails COPY_FAILED for a missing source, and COPY_HASH_MISMATCH for a wrong expected hash', async () => {
    const dir = join(out, 'fail');
    mkdirSync(dir);
    const missing = await failure(
      pool.copy({ host: server.sshHost(), path: join(server.dir, 'nope') }, { path: join(dir, 'x') }),
    );
    expect(missing.code).toBe('COPY_FAILED');
    expect(missing.message).toContain('nope');
    const mismatch = await failure(
      pool.copy(
        { host: server.sshHost(), path: small },
        { host: server.sshHost(), path: join(dir, 'y') },
        {
          expectedSha256: 'f'.repeat(64),
        },
      ),
    );
    expect(mismatch.code).toBe('COPY_HASH_MISMATCH');
    expect(mismatch.details?.sha256).toBe(sha256sum(small));
    expect(listing(dir)).toEqual([]);
  });
});
