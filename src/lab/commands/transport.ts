/**
 * `sh -c` exactly as the SSH transport's copies send it (src/ssh/copy.ts), and nothing else: the reader
 * that prints the source's size and type then streams it, the writer that streams stdin into a temporary
 * file, and the finalizer that sets its mode, syncs and renames it; and the tool checks
 * (src/drivers/preflight-commands.ts), which need a shell for its `command -v`.
 * The compressed copy's reader and writer (src/ssh/zstd.ts) run `zstd` (commands/zstd.ts) instead of `cat`.
 * The lab recognises the scripts by their exact text and emulates them; any other script is answered
 * as unknown (exit 127), because the lab never interprets shell code.
 */
import { rm } from 'node:fs/promises';
import { posix } from 'node:path';
import { HAS_TOOL_SCRIPT, TOOLS_SCRIPT } from '../../drivers/preflight-commands.js';
import { LEFTOVER_SWEEP_SCRIPT } from '../../ssh/leftovers.js';
import { type CommandContext, CommandError, fail, type Handler, NoSpaceError } from '../core.js';
import { lookup } from '../exec.js';
import { commandV, errnoText, move, statOf, writeStdinTo } from './posix.js';

/** The copy's reader: `sh -c <this> sh <path>` (size line, then the bytes). */
export const COPY_READ_SCRIPT = 'stat -L -c %s:%F -- "$1" && exec cat -- "$1"';
/** The copy's writer: `sh -c <this> sh <tmp>`. */
export const COPY_WRITE_SCRIPT = 'umask 077 && exec cat > "$1"';
/** The compressed copy's reader (src/ssh/zstd.ts): the size line, then the file as one zstd frame. */
export const ZSTD_READ_SCRIPT = 'stat -L -c %s:%F -- "$1" && exec zstd -q -c -1 -T0 -- "$1"';
/** The compressed copy's writer: the frame from stdin into a sparse temporary file. */
export const ZSTD_WRITE_SCRIPT = 'umask 077 && exec zstd -q -d -o "$1"';
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
  try {
    await writeStdinTo(ctx, path, real, 0o600, false);
    // A real `cat > tmp` killed before it ran leaves, at most, a file created before the kill; the lab's
    // handler may get to its open after the kill (and after the client's cleanup): undo that.
    if (ctx.signal.aborted) await rm(real, { force: true });
  } catch (err) {
    if (ctx.signal.aborted) await rm(real, { force: true });
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
 * one session.
 */
async function readWithSize(ctx: CommandContext, path: string, compressed: boolean): Promise<number> {
  const stat = ctx.host.commands.get('stat');
  if (stat === undefined) fail(127, 'sh: 1: stat: not found');
  const code = await stat({ ...ctx, argv: ['stat', '-L', '-c', '%s:%F', '--', path] });
  if (code !== 0) return code;
  if (compressed) {
    const zstd = lookup(ctx.host, 'zstd');
    if (zstd === undefined) fail(127, 'sh: 1: exec: zstd: not found');
    return await zstd({ ...ctx, argv: ['zstd', '-q', '-c', '-1', '-T0', '--', path] });
  }
  const cat = ctx.host.commands.get('cat');
  if (cat === undefined) fail(127, 'sh: 1: cat: not found');
  return await cat({ ...ctx, argv: ['cat', '--', path] });
}

/** `umask 077 && exec zstd -q -d -o tmp`, with the same checks as the shell's redirection in `writeTemp`. */
async function writeTempZstd(ctx: CommandContext, target: string): Promise<number> {
  const zstd = lookup(ctx.host, 'zstd');
  if (zstd === undefined) fail(127, 'sh: 1: exec: zstd: not found');
  const { real } = await ctx.host.fs.prepare(target);
  if ((await statOf(real))?.isDirectory()) fail(1, `zstd: ${target}: Is a directory`);
  return await zstd({ ...ctx, argv: ['zstd', '-q', '-d', '-o', target] });
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
