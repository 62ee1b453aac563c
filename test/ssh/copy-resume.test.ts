/**
 * A copy to a host that loses its connection goes on from where the destination verifiably is, against a
 * real OpenSSH sshd on loopback: connections killed, the server stopped for two seconds, and a server
 * that never saw the client go (its sessions frozen), whose old writer must be stopped before the resumed
 * one writes. The stored file is checked with `sha256sum`, and the bytes sent again are counted.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CopyProgress, SshPool } from '../../src/ssh/index.js';
import { pidsWithTag, waitFor } from '../helpers/procs.js';
import { type SshdServer, sshdAvailable, startSshd } from '../helpers/sshd.js';

const available = sshdAvailable('test/ssh/copy-resume.test.ts');
const MiB = 1024 * 1024;
/** 48 MiB of random data, a 16 MiB hole, 16 MiB of random data. */
const SOURCE_BYTES = 80 * MiB;
const CHECKPOINT = 8 * MiB;

function sha256sum(path: string): string {
  return execFileSync('sha256sum', [path], { encoding: 'utf8' }).split(' ')[0] ?? '';
}

describe.skipIf(!available)('a copy that loses its connection resumes (OpenSSH sshd)', () => {
  let server: SshdServer;
  let pool: SshPool;
  let source: string;
  let sourceSha: string;
  let out: string;

  beforeAll(async () => {
    server = await startSshd();
    pool = new SshPool();
    source = join(server.dir, 'disk.img');
    spawnSync('sh', [
      '-c',
      'head -c $((48 * 1048576)) /dev/urandom > "$1" && truncate -s $((64 * 1048576)) "$1" && ' +
        'head -c $((16 * 1048576)) /dev/urandom >> "$1"',
      'sh',
      source,
    ]);
    expect(statSync(source).size).toBe(SOURCE_BYTES);
    sourceSha = sha256sum(source);
    out = join(server.dir, 'out');
    mkdirSync(out);
  });
  afterAll(async () => {
    await pool?.close();
    await server?.stop();
  });

  /** Runs `action` once, the first time the copy is past `at` bytes. */
  const onceAt = (at: number, action: () => void) => {
    let done = false;
    return (p: CopyProgress) => {
      if (!done && p.bytes > at) {
        done = true;
        action();
      }
    };
  };

  it('this machine -> host: the sessions killed mid-copy, it goes on from a checkpoint the file holds', async () => {
    const dir = join(out, 'killed');
    mkdirSync(dir);
    const dest = join(dir, 'disk.img');
    const r = await pool.copy(
      { path: source },
      { host: server.sshHost({ name: 'repo' }), path: dest },
      {
        checkpointBytes: CHECKPOINT,
        progressIntervalMs: 0,
        onProgress: onceAt(40 * MiB, () => server.signalSessions('SIGKILL')),
      },
    );
    expect(r.resumes).toBe(1);
    expect(r.bytes).toBe(SOURCE_BYTES);
    expect(r.sha256).toBe(sourceSha);
    expect(sha256sum(dest)).toBe(sourceSha);
    // What reached the file before the drop (less the last checkpoint's remainder) was not sent again.
    expect(r.resentBytes).toBeGreaterThan(0);
    expect(r.resentBytes).toBeLessThan(40 * MiB);
    expect(readdirSync(dir)).toEqual(['disk.img']);
  });

  it('host -> host with zstd: the server stopped for two seconds, the copy waits, resumes and stays sparse', async () => {
    const dir = join(out, 'halted');
    mkdirSync(dir);
    const dest = join(dir, 'disk.img');
    let restarted: Promise<void> | undefined;
    const r = await pool.copy(
      { host: server.sshHost({ name: 'hypervisor' }), path: source },
      { host: server.sshHost({ name: 'repository' }), path: dest },
      {
        checkpointBytes: CHECKPOINT,
        progressIntervalMs: 0,
        onProgress: onceAt(40 * MiB, () => {
          restarted = server
            .halt()
            .then(() => new Promise((res) => setTimeout(res, 2000)).then(() => server.start()));
        }),
      },
    );
    await restarted;
    expect(r.compressed).toBe(true);
    expect(r.resumes).toBeGreaterThanOrEqual(1);
    expect(r.sha256).toBe(sourceSha);
    expect(sha256sum(dest)).toBe(sourceSha);
    // zstd went on writing the file sparse: the 16 MiB hole takes no space.
    expect(statSync(dest).blocks * 512).toBeLessThan(SOURCE_BYTES - 12 * MiB);
    expect(r.resentBytes).toBeLessThan(r.bytes);
    expect(readdirSync(dir)).toEqual(['disk.img']);
  });

  it('a server that never saw the client go: its old writer is stopped before the resumed one writes', async () => {
    const dir = join(out, 'frozen');
    mkdirSync(dir);
    const dest = join(dir, 'disk.img');
    const tag = randomBytes(8).toString('hex');
    // Keep-alives find the frozen connection dead within about a second and a half.
    const host = server.sshHost({ name: 'frozen', keepaliveIntervalMs: 500, keepaliveCountMax: 2 });
    let frozen: number[] = [];
    let writers: number[] = [];
    try {
      const r = await pool.copy(
        { path: source },
        { host, path: dest },
        {
          tag,
          checkpointBytes: CHECKPOINT,
          progressIntervalMs: 0,
          onProgress: onceAt(40 * MiB, () => {
            writers = pidsWithTag(tag);
            frozen = server.signalSessions('SIGSTOP');
          }),
        },
      );
      expect(frozen.length).toBeGreaterThan(0);
      expect(writers.length).toBeGreaterThan(0);
      expect(r.resumes).toBe(1);
      expect(r.sha256).toBe(sourceSha);
      expect(sha256sum(dest)).toBe(sourceSha);
      // The first writer (blocked on a pipe from a frozen sshd, which would never end it) was killed: at
      // most a zombie is left, which its frozen parent cannot reap yet.
      await waitFor(
        () => !pidsWithTag(tag).some((pid) => writers.includes(pid)),
        10_000,
        'the first writer to be gone',
      );
    } finally {
      for (const pid of frozen) {
        try {
          process.kill(pid, 'SIGCONT');
        } catch {
          // Gone.
        }
      }
    }
    expect(readdirSync(dir)).toEqual(['disk.img']);
  });
});
