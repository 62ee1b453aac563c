/**
 * `zstd` as the transport's compressed copies run it (src/ssh/zstd.ts), and only those forms:
 * `zstd -q -c -1 -T0 -- <file>` (the file as one frame on stdout) and, for the transport's writer scripts
 * (commands/transport.ts), `zstd -q -d -c --sparse` into a file (stdin's frame, written sparse). The frames are real: the lab runs this machine's own `zstd` binary for the
 * format and does the file I/O itself, so its faults (a corrupt read or write, a full disk, a kill) apply
 * to the data as they do for `cat`. Hosts without `zstd` (ESXi's busybox) have no handler.
 */
import { spawn } from 'node:child_process';
import { open } from 'node:fs/promises';
import type { Readable, Writable } from 'node:stream';
import { findLocalZstd } from '../../ssh/zstd.js';
import { type CommandContext, fail, type Handler, NoSpaceError } from '../core.js';
import { hostMatches, pathMatches } from '../faults.js';
import { statOf, streamFile } from './posix.js';

/** Zero blocks of this size are left as holes, as zstd's own sparse output does (32 KiB segments). */
const SPARSE_BLOCK = 32 * 1024;
const ZERO = Buffer.alloc(SPARSE_BLOCK);

async function runZstd(args: string[], ctx: CommandContext) {
  const zstd = await findLocalZstd();
  if (zstd === undefined) fail(127, 'sh: 1: zstd: not found');
  const child = spawn(zstd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
  const kill = () => child.kill('SIGKILL');
  ctx.signal.addEventListener('abort', kill, { once: true });
  child.stdin.on('error', () => {});
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s: string) => {
    stderr += s;
  });
  const exited = new Promise<number>((resolve) => {
    child.once('error', () => resolve(127));
    child.once('close', (code) => resolve(code ?? 137));
  });
  return {
    stdin: child.stdin as Writable,
    stdout: child.stdout as Readable,
    async done(): Promise<{ code: number; stderr: string }> {
      const code = await exited;
      ctx.signal.removeEventListener('abort', kill);
      return { code, stderr };
    },
  };
}

async function writeTo(w: Writable, chunk: Buffer): Promise<void> {
  if (w.write(chunk)) return;
  // Both listeners go once either fires: a long copy waits here thousands of times.
  await new Promise<void>((resolve) => {
    const done = () => {
      w.off('drain', done);
      w.off('close', done);
      resolve();
    };
    w.on('drain', done);
    w.on('close', done);
  });
}

/**
 * `zstd -q -c -1 -T0 -- <path>`: the bytes `cat` would send (faults included), compressed. From `start`:
 * the resumed reader's `tail -c +<start + 1> <path> | zstd ...`.
 */
export async function compressFile(ctx: CommandContext, p: string, start = 0): Promise<number> {
  const { path, real } = await ctx.host.fs.prepare(p);
  const st = await statOf(real);
  if (st === undefined || st.isDirectory())
    fail(1, `zstd: ${p}: ${st === undefined ? 'No such file or directory' : 'Is a directory'}`);
  const z = await runZstd(['-q', '-c', '-1', '-T0'], ctx);
  const pumped = (async () => {
    for await (const chunk of z.stdout as AsyncIterable<Buffer>) await ctx.out(chunk);
  })();
  // Awaited below; a reader stopped first (the command killed) fails both sides, reported once.
  pumped.catch(() => {});
  try {
    await streamFile(
      { ...ctx, out: (data) => writeTo(z.stdin, Buffer.from(data)) },
      path,
      real,
      st.size,
      start,
    );
  } finally {
    z.stdin.end();
  }
  await pumped;
  const r = await z.done();
  if (r.code !== 0) fail(1, r.stderr.trim() || `zstd: exit ${r.code}`);
  return 0;
}

/**
 * `zstd -q -d -c --sparse` with its stdout on `target` (the transport's `> tmp`, or the resumed writer's
 * descriptor at `start`): stdin's frame decompressed into the file, zero blocks left as holes. The
 * `corrupt at: 'write'` fault flips a byte of the data written (past the checksum, as a bad disk would). A
 * broken frame fails as zstd does; what was written stays, as with any stdout.
 */
export async function decompressInto(ctx: CommandContext, target: string, start?: number): Promise<number> {
  const { path, real } = await ctx.host.fs.prepare(target);
  const corrupt = ctx.core.faults.take(
    'corrupt',
    (f) => f.at === 'write' && hostMatches(f.host, ctx.host.name) && pathMatches(f.path, path),
  );
  const z = await runZstd(['-q', '-d', '-c'], ctx);
  const fed = (async () => {
    try {
      for await (const chunk of ctx.stdin as AsyncIterable<Buffer>) await writeTo(z.stdin, chunk);
    } finally {
      z.stdin.end();
    }
  })();
  fed.catch(() => {});
  const fh = await open(real, start === undefined ? 'w' : 'r+', 0o600);
  let at = start ?? 0;
  try {
    let flipAt = corrupt?.offset;
    for await (const data of z.stdout as AsyncIterable<Buffer>) {
      const chunk = Buffer.from(data);
      if (corrupt !== undefined) {
        flipAt ??= Math.floor(chunk.length / 2);
        if (flipAt >= at && flipAt < at + chunk.length)
          chunk[flipAt - at] = (chunk[flipAt - at] as number) ^ 0xff;
      }
      for (let off = 0; off < chunk.length; ) {
        const end = Math.min(chunk.length, off + SPARSE_BLOCK - ((at + off) % SPARSE_BLOCK));
        if (ZERO.compare(chunk, off, end, 0, end - off) !== 0) {
          ctx.core.checkWrite(ctx.host.name, end - off);
          await fh.write(chunk, off, end - off, at + off);
        }
        off = end;
      }
      at += chunk.length;
    }
    await fed;
    const r = await z.done();
    if (r.code !== 0 || ctx.signal.aborted) fail(1, r.stderr.trim() || `zstd: exit ${r.code}`);
    // Trailing zero blocks: zstd's last write makes them part of the file.
    await fh.truncate(at);
  } catch (err) {
    if (err instanceof NoSpaceError)
      fail(1, 'zstd: error 70 : Write error : cannot write block : No space left on device');
    throw err;
  } finally {
    await fh.close();
  }
  ctx.host.fs.formats.delete(path);
  return 0;
}

export const zstd: Handler = async (ctx) => {
  const args = ctx.argv.slice(1);
  const is = (...want: string[]) => args.length === want.length + 1 && want.every((w, i) => args[i] === w);
  if (is('-q', '-c', '-1', '-T0', '--')) return await compressFile(ctx, args[5] as string);
  fail(1, `zstd: the lab emulates only the transport's forms, not ${JSON.stringify(args.join(' '))}`);
};

export const ZSTD_COMMANDS: ReadonlyMap<string, Handler> = new Map([['zstd', zstd]]);
