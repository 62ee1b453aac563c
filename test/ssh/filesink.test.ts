/**
 * The local end of a copy on its own: every length around the block and slot boundaries, with and without
 * O_DIRECT and the hash worker, compared byte for byte and against node:crypto; a destroyed sink closes its
 * descriptors and leaves the file to its owner; the region hasher alone.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, describe, expect, it } from 'vitest';
import { DIRECT_ALIGN, openFileSink, SPARSE_BLOCK } from '../../src/ssh/filesink.js';
import { createRegionHasher } from '../../src/ssh/hasher.js';

const dir = mkdtempSync(join(tmpdir(), 'vcl-filesink-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const SLOT = 16 * DIRECT_ALIGN;
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');
/** Descriptors of this process open on `path`. */
function fdsOn(path: string): number {
  let n = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`).startsWith(path)) n++;
    } catch {
      // Closed meanwhile.
    }
  }
  return n;
}

/** The file system type holding `path` (longest mount point that prefixes it). */
function fsTypeOf(path: string): string | undefined {
  let best: { at: string; type: string } | undefined;
  for (const line of readFileSync('/proc/mounts', 'utf8').split('\n')) {
    const [, at, type] = line.split(' ');
    if (at === undefined || type === undefined) continue;
    const prefix = at.endsWith('/') ? at : `${at}/`;
    if ((path === at || path.startsWith(prefix)) && at.length >= (best?.at.length ?? -1)) best = { at, type };
  }
  return best?.type;
}

/** `data` cut into chunks of varying sizes, as ssh2 would deliver it (never aligned to anything). */
function chunked(data: Buffer): Readable {
  const sizes = [1, 4095, 32_768, 17, 65_536, 3, 12_288];
  const parts: Buffer[] = [];
  for (let at = 0, i = 0; at < data.length; i++) {
    const n = Math.min(sizes[i % sizes.length] ?? 1, data.length - at);
    parts.push(data.subarray(at, at + n));
    at += n;
  }
  return Readable.from(parts);
}

describe('openFileSink', () => {
  const lengths = [
    0,
    1,
    DIRECT_ALIGN - 1,
    DIRECT_ALIGN,
    DIRECT_ALIGN + 1,
    SLOT,
    3 * SLOT + 5,
    9 * SLOT + 4097,
  ];
  const variants = [
    { direct: true, hashInWorker: true },
    { direct: true, hashInWorker: false },
    { direct: false, hashInWorker: true },
    { direct: false, hashInWorker: false },
  ];
  for (const v of variants) {
    it(`writes and hashes every length exactly (direct ${v.direct}, worker ${v.hashInWorker})`, async () => {
      for (const length of lengths) {
        const data = randomBytes(length);
        const path = join(dir, `f-${v.direct}-${v.hashInWorker}-${length}`);
        // Three slots of 64 KiB: the ring wraps many times and writers wait for free slots.
        const sink = await openFileSink(path, {
          mode: 0o600,
          slotBytes: SLOT,
          slots: 3,
          writebackBytes: 2 * SLOT,
          ...v,
        });
        if (!v.direct) expect(sink.direct).toBe(false);
        expect(sink.hashInWorker).toBe(v.hashInWorker);
        await pipeline(chunked(data), sink);
        expect(sink.sha256).toBe(sha256(data));
        expect(sink.bytesWritten).toBe(length);
        expect(statSync(path).size).toBe(length);
        expect(readFileSync(path).equals(data)).toBe(true);
        expect(statSync(path).mode & 0o777).toBe(0o600);
      }
    });
  }

  for (const direct of [true, false]) {
    it(`leaves zero blocks as holes and still hashes them (direct ${direct})`, async () => {
      // Zeros in runs of whole sparse blocks, half-block zeros (written), data, and zeros at the end.
      const data = Buffer.concat([
        randomBytes(100),
        Buffer.alloc(4 * SPARSE_BLOCK),
        randomBytes(SPARSE_BLOCK / 2),
        Buffer.alloc(SPARSE_BLOCK / 2),
        randomBytes(3 * SPARSE_BLOCK),
        Buffer.alloc(6 * SPARSE_BLOCK + 123),
      ]);
      const sparsePath = join(dir, `sparse-${direct}`);
      const sink = await openFileSink(sparsePath, { mode: 0o600, slotBytes: SLOT, slots: 3, direct });
      await pipeline(chunked(data), sink);
      expect(sink.sha256).toBe(sha256(data));
      expect(sink.bytesWritten).toBe(data.length);
      expect(statSync(sparsePath).size).toBe(data.length);
      expect(readFileSync(sparsePath).equals(data)).toBe(true);
      // Allocated: the first block (data), the block of data + written zeros, three data blocks; the
      // file system may round up a little, never to the 15 blocks a full write takes.
      const allocated = statSync(sparsePath).blocks * 512;
      expect(allocated).toBeGreaterThanOrEqual(5 * SPARSE_BLOCK);
      expect(allocated).toBeLessThanOrEqual(6 * SPARSE_BLOCK);

      const fullPath = join(dir, `full-${direct}`);
      const full = await openFileSink(fullPath, {
        mode: 0o600,
        slotBytes: SLOT,
        slots: 3,
        direct,
        sparse: false,
      });
      await pipeline(chunked(data), full);
      expect(full.sha256).toBe(sha256(data));
      expect(statSync(fullPath).blocks * 512).toBeGreaterThanOrEqual(data.length - 4096);
    });
  }

  it('writes around the page cache where the file system allows it (ext4, xfs)', async () => {
    const type = fsTypeOf(dir);
    const sink = await openFileSink(join(dir, 'direct-or-not'), { mode: 0o644 });
    await pipeline(Readable.from([randomBytes(3 * 1024 * 1024 + 1)]), sink);
    if (type === 'ext4' || type === 'xfs') expect(sink.direct).toBe(true);
    expect(sink.bytesWritten).toBe(3 * 1024 * 1024 + 1);
  });

  it('uses the page cache on other file systems (tmpfs)', async (ctx) => {
    if (fsTypeOf('/dev/shm/x') !== 'tmpfs') ctx.skip();
    const shm = mkdtempSync('/dev/shm/vcl-filesink-');
    try {
      const data = randomBytes(5 * SLOT + 3);
      const sink = await openFileSink(join(shm, 'f'), { mode: 0o644, slotBytes: SLOT, slots: 2 });
      await pipeline(chunked(data), sink);
      expect(sink.direct).toBe(false);
      expect(sink.sha256).toBe(sha256(data));
      expect(readFileSync(join(shm, 'f')).equals(data)).toBe(true);
    } finally {
      rmSync(shm, { recursive: true, force: true });
    }
  });

  it('refuses an existing file and closes what it opened', async () => {
    const path = join(dir, 'exists');
    const first = await openFileSink(path, { mode: 0o644 });
    await pipeline(Readable.from([Buffer.from('x')]), first);
    expect(fdsOn(path)).toBe(0);
    await expect(openFileSink(path, { mode: 0o644 })).rejects.toMatchObject({ code: 'EEXIST' });
    expect(fdsOn(path)).toBe(0);
    expect(readFileSync(path, 'utf8')).toBe('x');
  });

  it('a destroyed sink stops, closes its descriptors and never reports a hash', async () => {
    const path = join(dir, 'destroyed');
    const sink = await openFileSink(path, { mode: 0o644, slotBytes: SLOT, slots: 2 });
    const closed = new Promise((resolve) => sink.once('close', resolve));
    const source = new Readable({ read() {} });
    const piped = pipeline(source, sink);
    source.push(randomBytes(5 * SLOT));
    await new Promise((r) => setTimeout(r, 20));
    expect(fdsOn(path)).toBeGreaterThan(0);
    sink.destroy(new Error('stop'));
    await expect(piped).rejects.toThrow('stop');
    await closed;
    expect(sink.sha256).toBeUndefined();
    expect(fdsOn(path)).toBe(0);
  });
});

describe('createRegionHasher', () => {
  for (const worker of [true, false]) {
    it(`hashes regions of shared memory in order (worker ${worker})`, async () => {
      const memory = new SharedArrayBuffer(1 << 20);
      const view = Buffer.from(memory);
      const expected = createHash('sha256');
      const hasher = createRegionHasher(memory, worker);
      expect(hasher.inWorker).toBe(worker);
      for (let i = 0; i < 20; i++) {
        const part = randomBytes(1000 + i * 7919);
        part.copy(view, 0);
        expected.update(part);
        // Each region is read before the next one overwrites it.
        await hasher.update(0, part.length);
      }
      expect(await hasher.digest()).toBe(expected.digest('hex'));
      await expect(hasher.update(0, 1)).rejects.toThrow('closed');
    });

    it(`hashes holes as zeros between regions, of any length (worker ${worker})`, async () => {
      const memory = new SharedArrayBuffer(4096);
      const view = Buffer.from(memory);
      const expected = createHash('sha256');
      const hasher = createRegionHasher(memory, worker);
      // Around the 4 MiB zero chunk: one byte, a chunk less one, a chunk and one more.
      for (const hole of [1, 4 * 1024 * 1024 - 1, 4 * 1024 * 1024 + 1, 0, 12_345_678]) {
        const data = randomBytes(4096);
        data.copy(view);
        expected.update(data);
        await hasher.update(0, data.length);
        expected.update(Buffer.alloc(hole));
        await hasher.zeros(hole);
      }
      expect(await hasher.digest()).toBe(expected.digest('hex'));
      await expect(hasher.zeros(1)).rejects.toThrow('closed');
    });
  }
});
