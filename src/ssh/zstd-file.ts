/**
 * A local destination for a zstd frame: this machine's zstd writes the file sparse itself, through the
 * same script as a remote destination (`zstd -d -c --sparse > <tmp>`), and the file is hashed by reading
 * it back, behind zstd as it writes: the sha256 is then of the stored file, exactly what `sha256sum` of it prints.
 *
 * Why not decompress into the copy's own sink (filesink.ts): measured on this project's 2-core VM, reading
 * `zstd -d -c`'s output through a pipe into Node costs ~0.9 s per 512 MiB on the main thread (64 KiB per
 * read, a context switch each), while zstd writing the file itself does it in 0.2-0.4 s and reading it back
 * (holes come as zeros from the kernel, data from the page cache) costs little beyond the hash itself.
 *
 * Holes are not read back: their extents come from `SEEK_DATA`/`SEEK_HOLE` (extents.ts) and are hashed as
 * zeros, which they read as.
 *
 * How far zstd got: the position of its output descriptor (`/proc/<pid>/fdinfo`), which zstd only moves
 * forward (writes, or seeks over zero runs it leaves as holes), so everything below it is final. Where
 * `/proc` cannot tell (not Linux), the whole file is hashed once zstd exited.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { type FileHandle, open, readdir, readFile, readlink, rm } from 'node:fs/promises';
import type { Writable } from 'node:stream';
import { SshError } from './errors.js';
import { type ExtentReader, startExtentReader } from './extents.js';
import { createRegionHasher } from './hasher.js';
import { ZSTD_WRITE_SCRIPT, zstdOutcome } from './zstd.js';

const READ_BYTES = 4 * 1024 * 1024;
/** Unallocated bytes below which a file counts as having no holes worth skipping. */
const HOLE_SLACK = 1024 * 1024;
/** A hole's bytes per message to the hasher (hashed there from a zero buffer, never read). */
const ZERO_MESSAGE_BYTES = 64 * 1024 * 1024;
const POLL_MS = 20;

export interface ZstdFileDestination {
  /** The zstd frame goes in here. */
  stream: Writable;
  /** Settles once zstd exited and the file was hashed and fsynced; rejects with `COPY_FAILED`. */
  finished: Promise<void>;
  /** Bytes of the file known to be final so far (for progress), then its size. */
  logicalBytes(): number;
  sha256(): string | undefined;
  stop(): void;
}

async function outputFd(pid: number, tmp: string): Promise<string | undefined> {
  try {
    for (const fd of await readdir(`/proc/${pid}/fd`)) {
      if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')) === tmp) return fd;
    }
  } catch {
    // No /proc, or the process is gone.
  }
  return undefined;
}

async function positionOf(pid: number, fd: string): Promise<number | undefined> {
  const info = await readFile(`/proc/${pid}/fdinfo/${fd}`, 'utf8').catch(() => undefined);
  const m = info === undefined ? null : /^pos:\s+(\d+)$/m.exec(info);
  return m === null ? undefined : Number(m[1]);
}

/** Starts `zstd -d -c --sparse > tmp` (the same `sh -c` script a remote destination runs). Absolute `tmp`. */
export function startZstdFile(tmp: string, where: string): ZstdFileDestination {
  const child: ChildProcessWithoutNullStreams = spawn('sh', ['-c', ZSTD_WRITE_SCRIPT, 'sh', tmp], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  child.stdout.resume();
  child.stdin.on('error', () => {});
  const exited = zstdOutcome(child, {
    cannotRun: `cannot run zstd for ${where}`,
    failed: `writing ${tmp} failed`,
    details: { tmp },
  });
  let stopped = false;
  let running = true;
  exited.then(
    () => {
      running = false;
    },
    () => {
      running = false;
    },
  );
  // The hash runs in a worker thread (hasher.ts): 4 GiB of holes is ~2.4 s of sha256, which on the main
  // thread competes with the SSH decryption feeding zstd. Two read slots: one is read into while the
  // worker hashes the other.
  const memory = new SharedArrayBuffer(2 * READ_BYTES);
  const hasher = createRegionHasher(memory, true);
  const slots: [Promise<void>, Promise<void>] = [Promise.resolve(), Promise.resolve()];
  let slot = 0;
  /** The last hole handed to the hasher: at most one more is sent before it settled. */
  let zerosSent: Promise<void> = Promise.resolve();
  /** Bytes handed to the hasher, in file order. */
  let hashed = 0;
  let digest: string | undefined;
  let extents: ExtentReader | undefined;
  const settled = (p: Promise<void>) => {
    p.catch(() => {});
    return p;
  };

  /** Reads the file up to `end` into the hasher; bytes past its current end are holes zstd will leave. */
  const readUpTo = async (fh: FileHandle, end: number) => {
    while (hashed < end && !stopped) {
      const want = Math.min(READ_BYTES, end - hashed);
      await slots[slot];
      const view = Buffer.from(memory, slot * READ_BYTES, want);
      const { bytesRead } = await fh.read(view, 0, want, hashed);
      if (bytesRead < want) view.fill(0, bytesRead, want);
      slots[slot] = settled(hasher.update(slot * READ_BYTES, want));
      slot ^= 1;
      hashed += want;
    }
  };

  /** Hands a hole up to `end` to the hasher as the zeros it reads as, without reading it. */
  const zerosUpTo = async (end: number) => {
    while (hashed < end && !stopped) {
      const n = Math.min(ZERO_MESSAGE_BYTES, end - hashed);
      const previous = zerosSent;
      zerosSent = settled(hasher.zeros(n));
      hashed += n;
      await previous;
    }
  };

  /**
   * Hashes the file from `hashed` up to `end`: its data extents read, its holes as zeros. A file without
   * holes so far is read as it is: asking for its extents costs more than it saves (SEEK_HOLE walks the
   * pages zstd has not written back yet: +0.3 s per 512 MiB of random data, bench:disk profile 3).
   */
  const hashUpTo = async (fh: FileHandle, end: number) => {
    if (end <= hashed) return;
    const { size, blocks } = await fh.stat();
    if (blocks * 512 + HOLE_SLACK >= size) return await readUpTo(fh, end);
    extents ??= startExtentReader(tmp);
    const data = await extents.data(hashed, end).catch(() => undefined);
    if (data === undefined) return await readUpTo(fh, end);
    for (const [start, stop] of data) {
      await zerosUpTo(start);
      await readUpTo(fh, stop);
    }
    await zerosUpTo(end);
  };

  const follow = async () => {
    let fd: string | undefined;
    let fh: FileHandle | undefined;
    try {
      const pid = child.pid;
      while (running && !stopped && pid !== undefined) {
        fd ??= await outputFd(pid, tmp);
        const pos = fd === undefined ? undefined : await positionOf(pid, fd);
        if (pos !== undefined && pos > hashed) {
          fh ??= await open(tmp, 'r');
          await hashUpTo(fh, pos);
        } else {
          await new Promise((resolve) => setTimeout(resolve, POLL_MS));
        }
      }
      await exited;
      if (stopped) throw new SshError('COPY_FAILED', `copy to ${tmp} stopped`);
      fh ??= await open(tmp, 'r');
      const size = (await fh.stat()).size;
      if (size < hashed)
        throw new SshError('COPY_FAILED', `${tmp} shrank to ${size} bytes while it was hashed`);
      await hashUpTo(fh, size);
      if (stopped) throw new SshError('COPY_FAILED', `copy to ${tmp} stopped`);
      // zstd does not sync: the copy is durable before it takes its name (the commit syncs the folder).
      await fh.sync();
      await Promise.all([...slots, zerosSent]);
      digest = await hasher.digest();
    } finally {
      hasher.close();
      extents?.close();
      await fh?.close();
    }
  };
  const finished = Promise.all([exited, follow()]).then(() => undefined);
  finished.catch(() => {});
  return {
    stream: child.stdin,
    finished,
    logicalBytes: () => hashed,
    sha256: () => digest,
    stop: () => {
      stopped = true;
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/** Waits for the writer to be gone, then removes its file (a killed zstd may leave a partial one). */
export async function discardZstdFile(dest: ZstdFileDestination, tmp: string): Promise<void> {
  dest.stop();
  await dest.finished.catch(() => {});
  await rm(tmp, { force: true });
}
