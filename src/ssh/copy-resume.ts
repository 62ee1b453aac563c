/**
 * Resuming a copy whose connection dropped (issue 16): a multi-hour copy between hosts must not start
 * again from zero because one connection broke. The runner hashes the data as it passes and keeps the
 * hash's state at every checkpoint (`CheckpointHash`); after reconnecting it asks the destination how much
 * of the temporary file exists, picks the last checkpoint at or below that, and starts a writer that cuts
 * the file there, hashes what remains (`sha256sum` on the destination, no byte re-sent), prints that
 * digest, and only then appends. The runner compares the digest with its checkpoint's before it sends
 * anything; the source reads on from the same offset. The stored file's sha256 is still of every byte:
 * the prefix's hash state carries on into the rest.
 *
 * The scripts are fixed strings (the lab recognises them by their text, test/lab/words.test.ts); paths and
 * offsets are arguments. `tail -c +N` seeks on a regular file (coreutils and busybox), `truncate` creates a
 * missing file, and `exec 3<>` opens the file without truncating it: the prefix's `head -c` reads through
 * that same descriptor, so the writer appends exactly at the offset. zstd writes through it sparse
 * (`--sparse`: seeks over zero runs, as with a named output file).
 */
import { createHash, type Hash } from 'node:crypto';

/** The reader from an offset: the size line as the plain reader prints it, then the bytes from `$2` (1-based). */
export const RESUME_READ_SCRIPT = 'stat -L -c %s:%F -- "$1" && exec tail -c +"$2" -- "$1"';
/** The compressing reader from an offset: the size line, then the rest of the file as one zstd frame. */
export const ZSTD_RESUME_READ_SCRIPT =
  'stat -L -c %s:%F -- "$1" && tail -c +"$2" -- "$1" | zstd -q -c -1 -T0';

const CUT_AND_HASH_PREFIX =
  'umask 077 && truncate -s "$2" -- "$1" && exec 3<>"$1" && head -c "$2" <&3 | sha256sum';
/** The writer from offset `$2`: the file cut there, its prefix's `sha256sum` line, then stdin appended. */
export const RESUME_WRITE_SCRIPT = `${CUT_AND_HASH_PREFIX} && exec cat >&3`;
/** The same for a zstd frame, written sparse. */
export const ZSTD_RESUME_WRITE_SCRIPT = `${CUT_AND_HASH_PREFIX} && exec zstd -q -d -c --sparse >&3`;

/** Checkpoints every 64 MiB: a drop re-sends at most that much, and 1 TiB keeps 16,384 small hash states. */
export const DEFAULT_CHECKPOINT_BYTES = 64 * 1024 * 1024;

/** Where a resumed attempt starts, and the sha256 of the bytes before it. */
export interface ResumePoint {
  offset: number;
  prefixSha256: string;
}

/** The sha256 of a stream that can be rewound to any checkpoint it passed. */
export class CheckpointHash {
  private hash: Hash = createHash('sha256');
  private at = 0;
  private readonly points: { offset: number; state: Hash }[] = [{ offset: 0, state: createHash('sha256') }];

  constructor(private readonly every: number) {
    if (!Number.isSafeInteger(every) || every < 1)
      throw new RangeError(`checkpoint interval must be a positive integer, not ${every}`);
  }

  /** Bytes hashed so far. */
  get offset(): number {
    return this.at;
  }

  update(chunk: Buffer): void {
    for (let off = 0; off < chunk.length; ) {
      const next = (Math.floor(this.at / this.every) + 1) * this.every;
      const take = Math.min(chunk.length - off, next - this.at);
      this.hash.update(take === chunk.length ? chunk : chunk.subarray(off, off + take));
      this.at += take;
      off += take;
      if (this.at === next) this.points.push({ offset: next, state: this.hash.copy() });
    }
  }

  /** Goes back to the last checkpoint at or below `limit` and returns it. */
  rewind(limit: number): ResumePoint {
    let i = this.points.length - 1;
    while (i > 0 && (this.points[i] as { offset: number }).offset > Math.min(limit, this.at)) i--;
    const point = this.points[i] as { offset: number; state: Hash };
    this.points.length = i + 1;
    this.hash = point.state.copy();
    this.at = point.offset;
    return { offset: point.offset, prefixSha256: point.state.copy().digest('hex') };
  }

  digest(): string {
    return this.hash.digest('hex');
  }
}

/** The digest in a `sha256sum` line (`<hex>  -`), or undefined. */
export function digestOfLine(line: string | undefined): string | undefined {
  return line === undefined ? undefined : /^([0-9a-f]{64}) /.exec(line)?.[1];
}
