/**
 * `sh -c` exactly as the SSH transport's copies send it (src/ssh/copy.ts), and nothing else: the reader
 * that prints the source's size and type then streams it, the writer that streams stdin into a temporary
 * file, and the finalizer that sets its mode, syncs and renames it; and the tool checks
 * (src/drivers/preflight-commands.ts), which need a shell for its `command -v`.
 * The compressed copy's reader and writer (src/ssh/zstd.ts) run `zstd` (commands/zstd.ts) instead of `cat`.
 * The lab recognises the scripts by their exact text and emulates them; any other script is answered
 * as unknown (exit 127), because the lab never interprets shell code.
 */
import { createHash } from 'node:crypto';
import { open } from 'node:fs/promises';
import { posix } from 'node:path';
import { HAS_TOOL_SCRIPT, TOOLS_SCRIPT } from '../../drivers/preflight-commands.js';
import {
  RESUME_READ_SCRIPT,
  RESUME_WRITE_SCRIPT,
  ZSTD_RESUME_READ_SCRIPT,
  ZSTD_RESUME_WRITE_SCRIPT,
} from '../../ssh/copy-resume.js';
import { LEFTOVER_SWEEP_SCRIPT } from '../../ssh/leftovers.js';
import { type CommandContext, CommandError, fail, type Handler, NoSpaceError } from '../core.js';
import { lookup } from '../exec.js';
import { commandV, errnoText, move, statOf, streamFile, writeStdinTo } from './posix.js';
import { compressFile, decompressInto } from './zstd.js';

/** The copy's reader: `sh -c <this> sh <path>` (size line, then the bytes). */
export const COPY_READ_SCRIPT = 'stat -L -c %s:%F -- "$1" && exec cat -- "$1"';
/** The copy's writer: `sh -c <this> sh <tmp>`. */
export const COPY_WRITE_SCRIPT = 'umask 077 && exec cat > "$1"';
/** The compressed copy's reader (src/ssh/zstd.ts): the size line, then the file as one zstd frame. */
export const ZSTD_READ_SCRIPT = 'stat -L -c %s:%F -- "$1" && exec zstd -q -c -1 -T0 -- "$1"';
/** The compressed copy's writer: the frame from stdin into a sparse temporary file. */
export const ZSTD_WRITE_SCRIPT = 'umask 077 && exec zstd -q -d -c --sparse > "$1"';
/** The copy's commit: `sh -c <this> sh <tmp> <path> <octal mode>`. */
export const COPY_FINALIZE_SCRIPT =
  'chmod "$3" "$1" && { sync -- "$1" 2>/dev/null || sync; } && mv -f -- "$1" "$2" && ' +
  '{ sync -- "$(dirname -- "$2")" 2>/dev/null || true; }';

async function writeTemp(ctx: CommandContext, target: string): Promise<number> {
  const { path, real } = await ctx.host.fs.prepare(target);
  const dir = await statOf(posix.dirname(real));
  if (dir === undefined || !dir.isDirectory())
    fail(2, `sh: 1: cannot create ${target}: Directory nonexistent`);
  if ((await statOf(real))?.isDirectory()) fail(2, `sh: 1: cannot create ${target}: Is a directory`);
  // A real `cat > tmp` killed before its shell opened the file creates nothing; the lab's handler may get
  // here after the kill (and after the client's cleanup), so it must not create the file then. Once open,
  // what was written stays, as with the real `cat`: a resumed copy goes on from it.
  if (ctx.signal.aborted) return 137;
  try {
    await writeStdinTo(ctx, path, real, 0o600, false);
  } catch (err) {
    if (err instanceof CommandError) throw err;
    if (err instanceof NoSpaceError) fail(1, 'cat: write error: No space left on device');
    if ((err as NodeJS.ErrnoException).code === undefined) throw err;
    fail(2, `sh: 1: cannot create ${target}: ${errnoText(err)}`);
  }
  ctx.host.fs.formats.delete(path);
  return 0;
}

async function finalize(ctx: CommandContext, tmp: string, target: string, mode: string): Promise<number> {
  const { real } = await ctx.host.fs.prepare(tmp);
  if ((await statOf(real)) === undefined) fail(1, `chmod: cannot access '${tmp}': No such file or directory`);
  if (!/^[0-7]{3,4}$/.test(mode)) fail(1, `chmod: invalid mode: '${mode}'`);
  const chmod = ctx.host.commands.get('chmod');
  if (chmod !== undefined) await chmod({ ...ctx, argv: ['chmod', mode, tmp] });
  await move(ctx, tmp, target);
  return 0;
}

/**
 * `stat ... && exec cat ...` (or `exec zstd ...`): the same two commands the lab answers on their own, in
 * one session. From `start` (the resumed reader's `tail -c +<start + 1>`), the bytes from there.
 */
async function readWithSize(
  ctx: CommandContext,
  path: string,
  compressed: boolean,
  start = 0,
): Promise<number> {
  const stat = ctx.host.commands.get('stat');
  if (stat === undefined) fail(127, 'sh: 1: stat: not found');
  const code = await stat({ ...ctx, argv: ['stat', '-L', '-c', '%s:%F', '--', path] });
  if (code !== 0) return code;
  if (compressed) {
    if (lookup(ctx.host, 'zstd') === undefined) fail(127, 'sh: 1: exec: zstd: not found');
    return await compressFile(ctx, path, start);
  }
  if (start === 0) {
    const cat = ctx.host.commands.get('cat');
    if (cat === undefined) fail(127, 'sh: 1: cat: not found');
    return await cat({ ...ctx, argv: ['cat', '--', path] });
  }
  const { path: p, real } = await ctx.host.fs.prepare(path);
  const st = await statOf(real);
  await streamFile(ctx, p, real, st?.size ?? 0, Math.min(start, st?.size ?? 0));
  return 0;
}

/** `umask 077 && exec zstd -q -d -c --sparse > tmp`, with the same checks as the shell's redirection. */
async function writeTempZstd(ctx: CommandContext, target: string): Promise<number> {
  if (lookup(ctx.host, 'zstd') === undefined) fail(127, 'sh: 1: exec: zstd: not found');
  const { real } = await ctx.host.fs.prepare(target);
  const dir = await statOf(posix.dirname(real));
  if (dir === undefined || !dir.isDirectory())
    fail(2, `sh: 1: cannot create ${target}: Directory nonexistent`);
  if ((await statOf(real))?.isDirectory()) fail(2, `sh: 1: cannot create ${target}: Is a directory`);
  if (ctx.signal.aborted) return 137;
  return await decompressInto(ctx, target);
}

/**
 * The resumed writer (src/ssh/copy-resume.ts): `truncate -s <start>` (creating the file), the prefix's
 * `sha256sum` line (`<hex>  -`), then stdin written on at `start`, as `cat` or as zstd's sparse output.
 */
async function resumeWrite(ctx: CommandContext, target: string, at: string, compressed: boolean) {
  if (!/^\d+$/.test(at)) fail(1, `truncate: invalid number: '${at}'`);
  const start = Number(at);
  if (compressed && lookup(ctx.host, 'zstd') === undefined) fail(127, 'sh: 1: exec: zstd: not found');
  const { path, real } = await ctx.host.fs.prepare(target);
  const dir = await statOf(posix.dirname(real));
  if (dir === undefined || !dir.isDirectory())
    fail(1, `truncate: cannot open '${target}' for writing: No such file or directory`);
  const fh = await open(real, 'a+', 0o600);
  const hash = createHash('sha256');
  try {
    await fh.truncate(start);
    const buf = Buffer.alloc(1024 * 1024);
    for (let off = 0; off < start; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, start - off), off);
      if (bytesRead === 0) break;
      hash.update(buf.subarray(0, bytesRead));
      off += bytesRead;
    }
  } finally {
    await fh.close();
  }
  await ctx.out(`${hash.digest('hex')}  -\n`);
  if (compressed) return await decompressInto(ctx, target, start);
  try {
    await writeStdinTo(ctx, path, real, 0o600, false, start);
  } catch (err) {
    if (err instanceof NoSpaceError) fail(1, 'cat: write error: No space left on device');
    throw err;
  }
  ctx.host.fs.formats.delete(path);
  return 0;
}

/** The preflight's tool check (src/drivers/preflight-commands.ts): `present <tool>` or `missing <tool>` each. */
async function reportTools(ctx: CommandContext, tools: readonly string[]): Promise<number> {
  for (const t of tools) await ctx.out(`${lookup(ctx.host, t) === undefined ? 'missing' : 'present'} ${t}\n`);
  return 0;
}

/**
 * The runner's sweep (src/ssh/leftovers.ts): kills the lab's running commands that carry one of the tags,
 * and prints `killed <n>` as the script does. Unlike sshd, the lab ends a command when its channel closes,
 * so after a runner's death the sweep usually finds nothing; it is still sent, logged and answered.
 */
async function sweepLeftovers(ctx: CommandContext, tags: readonly string[]): Promise<number> {
  let killed = 0;
  for (const p of [...ctx.host.procs.values()]) {
    if (p.tag === undefined || !tags.includes(p.tag)) continue;
    p.kill('KILL');
    killed++;
  }
  await ctx.out(`killed ${killed}\n`);
  return 0;
}

export const sh: Handler = async (ctx) => {
  const [, flag, script, , ...args] = ctx.argv;
  if (flag === '-c' && ctx.argv[3] === 'sh') {
    if (script === COPY_READ_SCRIPT && args.length === 1)
      return await readWithSize(ctx, args[0] as string, false);
    if (script === ZSTD_READ_SCRIPT && args.length === 1)
      return await readWithSize(ctx, args[0] as string, true);
    if (script === ZSTD_WRITE_SCRIPT && args.length === 1) return await writeTempZstd(ctx, args[0] as string);
    if ((script === RESUME_READ_SCRIPT || script === ZSTD_RESUME_READ_SCRIPT) && args.length === 2) {
      const [path, from] = args as [string, string];
      if (!/^\+?\d+$/.test(from) || Number(from) < 1) fail(1, `tail: invalid number of bytes: '${from}'`);
      return await readWithSize(ctx, path, script === ZSTD_RESUME_READ_SCRIPT, Number(from) - 1);
    }
    if ((script === RESUME_WRITE_SCRIPT || script === ZSTD_RESUME_WRITE_SCRIPT) && args.length === 2) {
      const [tmp, at] = args as [string, string];
      return await resumeWrite(ctx, tmp, at, script === ZSTD_RESUME_WRITE_SCRIPT);
    }
    if (script === COPY_WRITE_SCRIPT && args.length === 1) return await writeTemp(ctx, args[0] as string);
    if (script === TOOLS_SCRIPT) return await reportTools(ctx, args);
    if (script === HAS_TOOL_SCRIPT && args.length === 1) return await commandV(ctx, args[0] as string);
    if (script === LEFTOVER_SWEEP_SCRIPT) return await sweepLeftovers(ctx, args);
    if (script === COPY_FINALIZE_SCRIPT && args.length === 3) {
      const [tmp, target, mode] = args as [string, string, string];
      return await finalize(ctx, tmp, target, mode);
    }
  }
  const what = flag === '-c' && script !== undefined ? `sh -c ${JSON.stringify(script.slice(0, 80))}` : 'sh';
  fail(127, `sh: 1: ${what}: not found (the lab emulates only the transport's own copy scripts)`);
};

export const TRANSPORT_COMMANDS: ReadonlyMap<string, Handler> = new Map([['sh', sh]]);
