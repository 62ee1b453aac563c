/**
 * Copies of sparse disk images against a real OpenSSH sshd on loopback (issue 16): zstd on the wire when
 * both ends have it, a sparse destination, and a recorded sha256 equal to `sha256sum` of the stored file;
 * the raw fallback when a host has no zstd (a second sshd whose PATH lacks it, as ESXi's busybox does).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, statSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CopyProgress, isSshError, type SshError, SshPool } from '../../src/ssh/index.js';
import { type SshdServer, sshdAvailable, startSshd } from '../helpers/sshd.js';

const available = sshdAvailable('test/ssh/disk-copy.test.ts');
const hasZstd = spawnSync('zstd', ['--version']).status === 0;
const MiB = 1024 * 1024;
/** The disk: 64 MiB virtual, 6 MiB random, 4 MiB written zeros, holes elsewhere. */
const VIRTUAL = 64 * MiB;
const DATA = 6 * MiB;

function sha256sum(path: string): string {
  return execFileSync('sha256sum', [path], { encoding: 'utf8' }).split(' ')[0] ?? '';
}

/** Allocated bytes, as `stat -c %b*%B` prints them. */
function allocated(path: string): number {
  const [b, B] = execFileSync('stat', ['-c', '%b %B', path], { encoding: 'utf8' }).trim().split(' ');
  return Number(b) * Number(B);
}

async function failure(p: Promise<unknown>): Promise<SshError> {
  try {
    await p;
  } catch (err) {
    if (isSshError(err)) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
}

describe.skipIf(!available || !hasZstd)('disk copies with zstd and sparse files (OpenSSH sshd)', () => {
  let server: SshdServer;
  /** The same machine, but its commands see a PATH without zstd. */
  let bare: SshdServer;
  let pool: SshPool;
  let disk: string;
  let out: string;

  beforeAll(async () => {
    server = await startSshd();
    const bin = join(server.dir, 'bin-without-zstd');
    mkdirSync(bin);
    for (const tool of ['sh', 'stat', 'cat', 'chmod', 'sync', 'mv', 'dirname', 'rm', 'find', 'head'])
      symlinkSync(
        execFileSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' }).trim(),
        join(bin, tool),
      );
    bare = await startSshd({ env: { PATH: bin } });
    pool = new SshPool();
    disk = join(server.dir, 'disk.raw');
    // A raw disk as a VM leaves it: data at two places, a run of written zeros, holes elsewhere.
    execFileSync('sh', [
      '-c',
      'truncate -s "$2" "$1" && head -c 4194304 /dev/urandom | dd of="$1" bs=1M seek=1 conv=notrunc status=none && ' +
        'head -c 2097152 /dev/urandom | dd of="$1" bs=1M seek=40 conv=notrunc status=none && ' +
        'dd if=/dev/zero of="$1" bs=1M seek=20 count=4 conv=notrunc status=none',
      'sh',
      disk,
      String(VIRTUAL),
    ]);
    out = join(server.dir, 'out');
    mkdirSync(out);
  });
  afterAll(async () => {
    await pool?.close();
    await bare?.stop();
    await server?.stop();
  });

  it('host -> local: zstd on the wire, a sparse file, the sha256 sha256sum prints', async () => {
    const dest = join(out, 'local.raw');
    const progress: CopyProgress[] = [];
    const r = await pool.copy(
      { host: server.sshHost(), path: disk },
      { path: dest },
      { onProgress: (p) => progress.push(p), progressIntervalMs: 0 },
    );
    expect(r).toMatchObject({ bytes: VIRTUAL, compressed: true });
    expect(r.sha256).toBe(sha256sum(dest));
    expect(r.sha256).toBe(sha256sum(disk));
    expect(statSync(dest).size).toBe(VIRTUAL);
    // Only the data crossed the network and takes space (zero runs are holes).
    expect(r.wireBytes).toBeLessThan(DATA + MiB);
    expect(allocated(dest)).toBeLessThanOrEqual(DATA * 1.1);
    expect(progress.at(-1)).toMatchObject({ done: true, bytes: VIRTUAL, wireBytes: r.wireBytes });
    expect(readdirSync(out)).toEqual(['local.raw']);
  });

  it('host -> host: the destination decompresses and writes sparse, the sha256 is of the stored file', async () => {
    const dest = join(out, 'remote.raw');
    const r = await pool.copy(
      { host: server.sshHost(), path: disk },
      { host: server.sshHost({ name: 'second' }), path: dest },
    );
    expect(r).toMatchObject({ bytes: VIRTUAL, compressed: true });
    expect(r.wireBytes).toBeLessThan(DATA + MiB);
    expect(r.sha256).toBe(sha256sum(dest));
    expect(allocated(dest)).toBeLessThanOrEqual(DATA * 1.1);
  });

  it('falls back to the raw stream from a host without zstd; a local destination stays sparse', async () => {
    const dest = join(out, 'raw.raw');
    const r = await pool.copy({ host: bare.sshHost(), path: disk }, { path: dest });
    expect(r).toMatchObject({ bytes: VIRTUAL, wireBytes: VIRTUAL, compressed: false });
    expect(r.sha256).toBe(sha256sum(dest));
    expect(allocated(dest)).toBeLessThanOrEqual(DATA * 1.1);
  });

  it('compresses from a zstd host to one without, which gets the data decompressed here', async () => {
    const dest = join(out, 'to-bare.raw');
    const r = await pool.copy({ host: server.sshHost(), path: disk }, { host: bare.sshHost(), path: dest });
    expect(r).toMatchObject({ bytes: VIRTUAL, compressed: true });
    expect(r.wireBytes).toBeLessThan(DATA + MiB);
    expect(r.sha256).toBe(sha256sum(dest));
  });

  it('compress: false takes the raw stream even when both ends have zstd', async () => {
    const dest = join(out, 'uncompressed.raw');
    const r = await pool.copy({ host: server.sshHost(), path: disk }, { path: dest }, { compress: false });
    expect(r).toMatchObject({ bytes: VIRTUAL, wireBytes: VIRTUAL, compressed: false });
    expect(r.sha256).toBe(sha256sum(dest));
  });

  it('an aborted compressed copy to a host leaves nothing behind there', async () => {
    const dir = join(out, 'abort-remote');
    mkdirSync(dir);
    const ac = new AbortController();
    const err = await failure(
      pool.copy(
        { host: server.sshHost(), path: disk },
        { host: server.sshHost({ name: 'second' }), path: join(dir, 'img') },
        {
          signal: ac.signal,
          progressIntervalMs: 0,
          onProgress: (p) => {
            if (p.bytes > 0) ac.abort();
          },
        },
      ),
    );
    expect(err.code).toBe('SSH_ABORTED');
    expect(readdirSync(dir)).toEqual([]);
  });
});
