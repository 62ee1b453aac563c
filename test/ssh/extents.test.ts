/**
 * The data extents of a sparse file, as `SEEK_DATA`/`SEEK_HOLE` report them through perl: the copy hashes
 * holes as zeros instead of reading them back. Checked against a file laid out here, on this machine's
 * file system, and without perl (every range counts as data then).
 */
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { startExtentReader } from '../../src/ssh/extents.js';

const MiB = 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'vcl-extents-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** 64 MiB: data at [1, 2) MiB and [40, 41) MiB, holes elsewhere, and zeros written at [10, 11) MiB. */
function layout(): string {
  const path = join(dir, `sparse-${Math.random().toString(16).slice(2)}.img`);
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, Buffer.alloc(MiB, 0xab), 0, MiB, 1 * MiB);
    writeSync(fd, Buffer.alloc(MiB, 0), 0, MiB, 10 * MiB);
    writeSync(fd, Buffer.alloc(MiB, 0xcd), 0, MiB, 40 * MiB);
    writeSync(fd, Buffer.alloc(1, 0), 0, 1, 64 * MiB - 1);
  } finally {
    closeSync(fd);
  }
  return path;
}

describe('startExtentReader', () => {
  it('reports the data extents inside each asked range, in order, one query after another', async () => {
    const reader = startExtentReader(layout());
    try {
      const all = await reader.data(0, 64 * MiB);
      // Written zeros are data to the file system: only holes are skipped. The last block holds one byte.
      const covered = (at: number) => all.some(([s, e]) => s <= at && at < e);
      for (const at of [1 * MiB, 2 * MiB - 1, 10 * MiB, 40 * MiB, 64 * MiB - 1])
        expect(covered(at)).toBe(true);
      for (const at of [0, 5 * MiB, 20 * MiB, 50 * MiB]) expect(covered(at)).toBe(false);
      expect(all).toEqual([...all].sort((a, b) => a[0] - b[0]));
      // A range inside a hole has no data; one across a boundary is clipped to it.
      expect(await reader.data(20 * MiB, 30 * MiB)).toEqual([]);
      const clipped = await reader.data(40 * MiB + 100, 40 * MiB + 200);
      expect(clipped).toEqual([[40 * MiB + 100, 40 * MiB + 200]]);
    } finally {
      reader.close();
    }
  });

  it('without perl every query fails, and the caller reads the range instead', async () => {
    const path = process.env.PATH;
    process.env.PATH = dir;
    try {
      const reader = startExtentReader(layout());
      await expect(reader.data(0, MiB)).rejects.toThrow();
      reader.close();
    } finally {
      process.env.PATH = path;
    }
  });
});
