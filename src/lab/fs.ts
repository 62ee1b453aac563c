/**
 * Each lab host's file system: absolute paths (`/vmfs/volumes/datastore1/...`, `/install/...`) mapped into
 * that host's own directory under the lab's temp dir, so commands move real bytes in real (sparse) files
 * while no path can reach outside the lab. Files a host starts with can be declared lazily: they are
 * created the first time a command touches them or a folder above them, which keeps a lab of hundreds
 * of computers cheap to start.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open } from 'node:fs/promises';
import { dirname, join, posix } from 'node:path';

type Creator = (real: string) => Promise<void>;

export class HostFs {
  private seeded: Promise<void> | undefined;
  private closed = false;
  private readonly lazy = new Map<string, Creator>();
  private readonly creating = new Map<string, Promise<void>>();
  /** Disk image formats recorded by the tools that wrote them (qemu-img convert), by virtual path. */
  readonly formats = new Map<string, string>();

  constructor(
    /** Real directory holding this host's files. */
    readonly root: string,
    /** Where relative paths start (the login user's home). */
    readonly home = '/root',
    private readonly seed?: () => Promise<void>,
  ) {}

  /** The absolute virtual path of `path` (relative paths start at home; `..` cannot climb above `/`). */
  normalize(path: string): string {
    return posix.resolve(this.home, path);
  }

  /** The real path behind a virtual path, without creating lazy files (see `prepare`). */
  realOf(path: string): string {
    return join(this.root, this.normalize(path));
  }

  /** Declares a file that exists from the start but is created only when first needed. */
  defineLazy(path: string, create: Creator): void {
    this.lazy.set(this.normalize(path), create);
  }

  /**
   * Makes `path` ready for a command: the host's seed files exist, and so does every lazy file at or
   * below `path` (a folder listing must see them). Returns the normalized virtual path and its real path.
   */
  async prepare(path: string): Promise<{ path: string; real: string }> {
    // After the lab stopped, nothing may create folders again under a temp dir being removed.
    if (this.closed) throw new Error('the lab has stopped');
    const v = this.normalize(path);
    if (this.seed !== undefined) {
      this.seeded ??= this.seed();
      await this.seeded;
    }
    if (this.lazy.size > 0) {
      const prefix = v === '/' ? '/' : `${v}/`;
      const due: Promise<void>[] = [];
      for (const [p, create] of this.lazy) {
        if (p !== v && !p.startsWith(prefix)) continue;
        this.lazy.delete(p);
        const real = join(this.root, p);
        const job = (async () => {
          await mkdir(dirname(real), { recursive: true });
          await create(real);
        })();
        this.creating.set(p, job);
        job.finally(() => this.creating.delete(p)).catch(() => {});
        due.push(job);
      }
      for (const [p, job] of this.creating) if (p === v || p.startsWith(prefix)) due.push(job);
      await Promise.all(due);
    } else if (this.creating.size > 0) {
      await Promise.all(this.creating.values());
    }
    return { path: v, real: join(this.root, v) };
  }

  close(): void {
    this.closed = true;
  }

  /** Lazy files at or below `path` not created yet (their folders count as existing). */
  hasLazyUnder(path: string): boolean {
    const v = this.normalize(path);
    const prefix = v === '/' ? '/' : `${v}/`;
    for (const p of this.lazy.keys()) if (p === v || p.startsWith(prefix)) return true;
    return false;
  }

  /** The format a tool recorded for `path`, else the one its name suggests. */
  formatOf(path: string): string {
    const v = this.normalize(path);
    const recorded = this.formats.get(v);
    if (recorded !== undefined) return recorded;
    if (/\.qcow2$/i.test(v)) return 'qcow2';
    if (/\.vmdk$/i.test(v)) return 'vmdk';
    return 'raw';
  }

  /** Keeps the recorded format with a file that moves. */
  moved(from: string, to: string): void {
    const f = this.normalize(from);
    const t = this.normalize(to);
    const fmt = this.formats.get(f);
    this.formats.delete(t);
    if (fmt !== undefined) {
      this.formats.delete(f);
      this.formats.set(t, fmt);
    }
  }

  removed(path: string, recursive = false): void {
    const v = this.normalize(path);
    this.formats.delete(v);
    this.lazy.delete(v);
    if (recursive) {
      for (const p of [...this.formats.keys()]) if (p.startsWith(`${v}/`)) this.formats.delete(p);
      for (const p of [...this.lazy.keys()]) if (p.startsWith(`${v}/`)) this.lazy.delete(p);
    }
  }
}

const BLOCK = 64 * 1024;
const ZERO = Buffer.alloc(1024 * 1024);

/**
 * A sparse disk of `size` bytes whose content is random where it is written: a 64 KiB header and one
 * 4 KiB block every 256 KiB, holes in between. Hashes of such a disk are unique, and copying it moves
 * every byte (holes read as zeros) while the file itself costs a few dozen KiB.
 */
export async function createSparseDisk(real: string, size: number): Promise<void> {
  await mkdir(dirname(real), { recursive: true });
  const fh = await open(real, 'w', 0o600);
  try {
    await fh.write(randomBytes(Math.min(BLOCK, size)), 0, Math.min(BLOCK, size), 0);
    for (let at = 256 * 1024; at + 4096 <= size; at += 256 * 1024)
      await fh.write(randomBytes(4096), 0, 4096, at);
    await fh.truncate(size);
  } finally {
    await fh.close();
  }
}

export interface SparseCopyOptions {
  signal?: AbortSignal;
  /** Called before each block is written with its size; throwing stops the copy (a full disk). */
  beforeWrite?: (bytes: number) => void;
  /** Called after each block (written or skipped as a hole) with the bytes done so far. */
  progress?: (done: number) => Promise<void> | void;
  /** Size of the blocks read and written. Default 1 MiB. */
  blockSize?: number;
  /**
   * Granularity of the zero check inside a block: runs of zeros this long are left as holes and the data
   * between them written (qemu-img convert's `-S 4k`). Default: the whole block.
   */
  zeroBlock?: number;
}

/** Copies a file keeping its holes: blocks of zeros are skipped and the size set at the end. */
export async function copySparse(src: string, dst: string, options: SparseCopyOptions = {}): Promise<number> {
  const blockSize = options.blockSize ?? ZERO.length;
  const input = await open(src, 'r');
  try {
    const output = await open(dst, 'w', 0o644);
    try {
      const { size } = await input.stat();
      const buf = Buffer.alloc(Math.min(blockSize, Math.max(size, 1)));
      let at = 0;
      while (at < size) {
        options.signal?.throwIfAborted();
        const { bytesRead } = await input.read(buf, 0, Math.min(buf.length, size - at), at);
        if (bytesRead === 0) break;
        const chunk = buf.subarray(0, bytesRead);
        const zeroBlock = Math.max(1, options.zeroBlock ?? bytesRead);
        let data = -1;
        for (let off = 0; off <= bytesRead; off += zeroBlock) {
          const end = Math.min(bytesRead, off + zeroBlock);
          const zero = off >= bytesRead || isZero(chunk.subarray(off, end));
          if (!zero && data < 0) data = off;
          if ((zero || end === bytesRead) && data >= 0) {
            const upTo = zero ? off : end;
            options.beforeWrite?.(upTo - data);
            await output.write(chunk, data, upTo - data, at + data);
            data = -1;
          }
        }
        at += bytesRead;
        await options.progress?.(at);
      }
      await output.truncate(at);
      return at;
    } finally {
      await output.close();
    }
  } finally {
    await input.close();
  }
}

export function isZero(chunk: Buffer): boolean {
  for (let at = 0; at < chunk.length; at += ZERO.length) {
    const part = chunk.subarray(at, Math.min(chunk.length, at + ZERO.length));
    if (!part.equals(ZERO.subarray(0, part.length))) return false;
  }
  return true;
}

/** Inverts one byte of a file in place (a copy "corrupted at rest"); `at` defaults to the middle. */
export async function flipByteInFile(real: string, at?: number): Promise<void> {
  const fh = await open(real, 'r+');
  try {
    const { size } = await fh.stat();
    if (size === 0) return;
    const pos = Math.min(size - 1, at ?? Math.floor(size / 2));
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, pos);
    b[0] = (b[0] as number) ^ 0xff;
    await fh.write(b, 0, 1, pos);
  } finally {
    await fh.close();
  }
}
