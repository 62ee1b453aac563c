/**
 * The POSIX tools every lab host has (coreutils/busybox subset): enough of `test`, `mkdir`, `rm`, `mv`, `cp`,
 * `cat`, `tee`, `stat`, `sha256sum`, `chmod`, `find`, `sed -i`, `df` for what the drivers, the
 * transport and the OS plans send, with GNU's messages and exit statuses. Everything acts on the host's
 * virtual file system (real files under the lab's temp dir).
 */
import { createHash } from 'node:crypto';
import { createReadStream, type Stats } from 'node:fs';
import { chmod, mkdir, open, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { posix } from 'node:path';
import { type CommandContext, CommandError, fail, type Handler, NoSpaceError } from '../core.js';
import { lookup } from '../exec.js';
import { hostMatches, pathMatches } from '../faults.js';
import { copySparse } from '../fs.js';

export async function statOf(real: string): Promise<Stats | undefined> {
  try {
    return await stat(real);
  } catch {
    return undefined;
  }
}

function code(err: unknown): string | undefined {
  return (err as NodeJS.ErrnoException | undefined)?.code;
}

export function errnoText(err: unknown): string {
  switch (code(err)) {
    case 'ENOENT':
      return 'No such file or directory';
    case 'EISDIR':
      return 'Is a directory';
    case 'ENOTDIR':
      return 'Not a directory';
    case 'EEXIST':
      return 'File exists';
    case 'ENOTEMPTY':
      return 'Directory not empty';
    case 'ENOSPC':
      return 'No space left on device';
    case 'EACCES':
    case 'EPERM':
      return 'Permission denied';
    default:
      return (err as Error).message;
  }
}

/** Splits `-rf --` style options from operands; `--` ends options. */
export function options(args: readonly string[], withValue: readonly string[] = []) {
  const flags = new Set<string>();
  const values = new Map<string, string>();
  const operands: string[] = [];
  let i = 0;
  for (; i < args.length; i++) {
    const a = args[i] as string;
    if (a === '--') {
      i++;
      break;
    }
    if (!a.startsWith('-') || a === '-') break;
    if (withValue.includes(a)) {
      values.set(a, args[i + 1] ?? '');
      i++;
      continue;
    }
    for (const f of a.slice(1)) flags.add(f);
  }
  operands.push(...args.slice(i));
  return { flags, values, operands };
}

const prog = (ctx: CommandContext) => ctx.argv[0] as string;

/** `true`, `false` */
const trueCmd: Handler = async () => 0;
const falseCmd: Handler = async () => 1;

const echo: Handler = async (ctx) => {
  const args = ctx.argv.slice(1);
  const noNewline = args[0] === '-n';
  await ctx.out(`${(noNewline ? args.slice(1) : args).join(' ')}${noNewline ? '' : '\n'}`);
  return 0;
};

/** `test` with the unary file tests, string tests and `!`. */
const test: Handler = async (ctx) => {
  let args = ctx.argv.slice(1);
  if (ctx.argv[0] === '[') {
    if (args[args.length - 1] !== ']') fail(2, "[: missing ']'");
    args = args.slice(0, -1);
  }
  let negate = false;
  if (args[0] === '!') {
    negate = true;
    args = args.slice(1);
  }
  let result: boolean;
  if (args.length === 0) result = false;
  else if (args.length === 1) result = (args[0] as string) !== '';
  else if (args.length === 2) {
    const [op, operand] = args as [string, string];
    if (op === '-n') result = operand !== '';
    else if (op === '-z') result = operand === '';
    else if (/^-[edfsrwxL]$/.test(op)) {
      const { real } = await ctx.host.fs.prepare(operand);
      const st = await statOf(real);
      if (op === '-d') result = st?.isDirectory() === true;
      else if (op === '-f') result = st?.isFile() === true;
      else if (op === '-s') result = st !== undefined && st.size > 0;
      else result = st !== undefined;
    } else fail(2, `${prog(ctx)}: ${op}: unexpected operator`);
  } else if (args.length === 3 && (args[1] === '=' || args[1] === '!=')) {
    result = (args[0] === args[2]) === (args[1] === '=');
  } else fail(2, `${prog(ctx)}: too many arguments`);
  return result !== negate ? 0 : 1;
};

const mkdirCmd: Handler = async (ctx) => {
  const { flags, operands } = options(ctx.argv.slice(1), ['-m']);
  if (operands.length === 0) fail(1, 'mkdir: missing operand');
  let status = 0;
  for (const p of operands) {
    const { real } = await ctx.host.fs.prepare(p);
    try {
      await mkdir(real, { recursive: flags.has('p') });
      if (flags.has('p') && !(await statOf(real))?.isDirectory())
        throw Object.assign(new Error(), { code: 'EEXIST' });
    } catch (err) {
      await ctx.err(`mkdir: cannot create directory '${p}': ${errnoText(err)}\n`);
      status = 1;
    }
  }
  return status;
};

const rmCmd: Handler = async (ctx) => {
  const { flags, operands } = options(ctx.argv.slice(1));
  const force = flags.has('f');
  const recursive = flags.has('r') || flags.has('R');
  if (operands.length === 0 && !force) fail(1, 'rm: missing operand');
  let status = 0;
  for (const p of operands) {
    const { path, real } = await ctx.host.fs.prepare(p);
    if (path === '/' && recursive) {
      await ctx.err("rm: it is dangerous to operate recursively on '/'\n");
      await ctx.err('rm: use --no-preserve-root to override this failsafe\n');
      status = 1;
      continue;
    }
    const st = await statOf(real);
    if (st === undefined) {
      if (!force) {
        await ctx.err(`rm: cannot remove '${p}': No such file or directory\n`);
        status = 1;
      }
      continue;
    }
    if (st.isDirectory() && !recursive) {
      await ctx.err(`rm: cannot remove '${p}': Is a directory\n`);
      status = 1;
      continue;
    }
    await rm(real, { recursive, force: true });
    ctx.host.fs.removed(path, recursive);
  }
  return status;
};

/** Where `mv`/`cp` put `src` given `dst`: into `dst` when it is a folder. */
async function targetOf(ctx: CommandContext, src: string, dst: string) {
  const d = await ctx.host.fs.prepare(dst);
  const st = await statOf(d.real);
  if (st?.isDirectory()) return ctx.host.fs.prepare(posix.join(d.path, posix.basename(src)));
  return d;
}

export async function move(ctx: CommandContext, src: string, dst: string): Promise<void> {
  const s = await ctx.host.fs.prepare(src);
  if ((await statOf(s.real)) === undefined) fail(1, `mv: cannot stat '${src}': No such file or directory`);
  const d = await targetOf(ctx, s.path, dst);
  try {
    await rename(s.real, d.real);
  } catch (err) {
    fail(1, `mv: cannot move '${src}' to '${dst}': ${errnoText(err)}`);
  }
  ctx.host.fs.moved(s.path, d.path);
}

const mvCmd: Handler = async (ctx) => {
  const { operands } = options(ctx.argv.slice(1));
  if (operands.length !== 2) fail(1, operands.length < 2 ? 'mv: missing file operand' : 'mv: extra operand');
  await move(ctx, operands[0] as string, operands[1] as string);
  return 0;
};

/** A byte-for-byte copy on the same host, keeping holes, subject to the `diskFull` fault. */
export async function copyWithin(ctx: CommandContext, srcReal: string, dstReal: string): Promise<number> {
  return await copySparse(srcReal, dstReal, {
    signal: ctx.signal,
    beforeWrite: (n) => ctx.core.checkWrite(ctx.host.name, n),
  });
}

const cpCmd: Handler = async (ctx) => {
  const { operands } = options(ctx.argv.slice(1));
  if (operands.length !== 2) fail(1, operands.length < 2 ? 'cp: missing file operand' : 'cp: extra operand');
  const [src, dst] = operands as [string, string];
  const s = await ctx.host.fs.prepare(src);
  const st = await statOf(s.real);
  if (st === undefined) fail(1, `cp: cannot stat '${src}': No such file or directory`);
  if (st.isDirectory()) fail(1, `cp: -r not specified; omitting directory '${src}'`);
  const d = await targetOf(ctx, s.path, dst);
  await ctx.core.beforeRead(ctx.host, s.path, s.real);
  try {
    await copyWithin(ctx, s.real, d.real);
  } catch (err) {
    if (err instanceof NoSpaceError) fail(1, `cp: error writing '${dst}': No space left on device`);
    fail(1, `cp: cannot create regular file '${dst}': ${errnoText(err)}`);
  }
  ctx.host.fs.formats.delete(d.path);
  return 0;
};

/** Streams a file to stdout, applying the `corrupt at: 'read'` fault. */
export async function streamFile(
  ctx: CommandContext,
  path: string,
  real: string,
  size: number,
  start = 0,
): Promise<void> {
  const corrupt = ctx.core.faults.take(
    'corrupt',
    (f) => f.at === 'read' && hostMatches(f.host, ctx.host.name) && pathMatches(f.path, path),
  );
  const flipAt = corrupt === undefined ? undefined : (corrupt.offset ?? Math.floor(size / 2));
  await ctx.core.beforeRead(ctx.host, path, real);
  const stream = createReadStream(real, { highWaterMark: 256 * 1024, start });
  let at = start;
  try {
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (flipAt !== undefined && flipAt >= at && flipAt < at + chunk.length) {
        chunk[flipAt - at] = (chunk[flipAt - at] as number) ^ 0xff;
      }
      at += chunk.length;
      await ctx.out(chunk);
    }
  } finally {
    stream.destroy();
  }
}

const cat: Handler = async (ctx) => {
  const { operands } = options(ctx.argv.slice(1));
  if (operands.length === 0) {
    for await (const chunk of ctx.stdin as AsyncIterable<Buffer>) await ctx.out(chunk);
    return 0;
  }
  let status = 0;
  for (const p of operands) {
    const { path, real } = await ctx.host.fs.prepare(p);
    const st = await statOf(real);
    if (st === undefined || st.isDirectory()) {
      await ctx.err(`cat: ${p}: ${st === undefined ? 'No such file or directory' : 'Is a directory'}\n`);
      status = 1;
      continue;
    }
    await streamFile(ctx, path, real, st.size);
  }
  return status;
};

/**
 * Writes stdin into `real` (created with `mode`), with the `diskFull` and `corrupt at: 'write'` faults.
 * `tee` also copies it to stdout. From `start`, the file is written on from there, not truncated (it must
 * exist). Returns the bytes written.
 */
export async function writeStdinTo(
  ctx: CommandContext,
  path: string,
  real: string,
  mode: number,
  alsoStdout: boolean,
  start?: number,
): Promise<number> {
  const corrupt = ctx.core.faults.take(
    'corrupt',
    (f) => f.at === 'write' && hostMatches(f.host, ctx.host.name) && pathMatches(f.path, path),
  );
  let flipAt = corrupt?.offset;
  const fh = await open(real, start === undefined ? 'w' : 'r+', mode);
  let written = 0;
  const base = start ?? 0;
  try {
    for await (const data of ctx.stdin as AsyncIterable<Buffer>) {
      const chunk = Buffer.from(data);
      if (corrupt !== undefined) {
        flipAt ??= Math.floor(chunk.length / 2);
        if (flipAt >= written && flipAt < written + chunk.length)
          chunk[flipAt - written] = (chunk[flipAt - written] as number) ^ 0xff;
      }
      ctx.core.checkWrite(ctx.host.name, chunk.length);
      await fh.write(chunk, 0, chunk.length, base + written);
      written += chunk.length;
      if (alsoStdout) await ctx.out(data);
    }
  } finally {
    await fh.close();
  }
  return written;
}

const tee: Handler = async (ctx) => {
  const { flags, operands } = options(ctx.argv.slice(1));
  if (flags.has('a')) fail(1, 'tee: -a is not supported by the lab');
  const targets = await Promise.all(operands.map((p) => ctx.host.fs.prepare(p)));
  const first = targets[0];
  if (first === undefined) {
    for await (const chunk of ctx.stdin as AsyncIterable<Buffer>) await ctx.out(chunk);
    return 0;
  }
  try {
    await writeStdinTo(ctx, first.path, first.real, 0o644, true);
    for (const t of targets.slice(1)) await writeFile(t.real, await readFile(first.real));
  } catch (err) {
    if (err instanceof CommandError) throw err;
    if (err instanceof NoSpaceError) fail(1, `tee: ${operands[0]}: No space left on device`);
    if (code(err) === undefined) throw err;
    fail(1, `tee: ${operands[0]}: ${errnoText(err)}`);
  }
  for (const t of targets) ctx.host.fs.formats.delete(t.path);
  return 0;
};

function fileType(st: Stats): string {
  if (st.isDirectory()) return 'directory';
  if (st.isFile()) return st.size === 0 ? 'regular empty file' : 'regular file';
  return 'weird file';
}

const statCmd: Handler = async (ctx) => {
  const { values, operands } = options(ctx.argv.slice(1), ['-c']);
  const format = values.get('-c');
  if (operands.length === 0) fail(1, 'stat: missing operand');
  let status = 0;
  for (const p of operands) {
    const { real } = await ctx.host.fs.prepare(p);
    const st = await statOf(real);
    if (st === undefined) {
      await ctx.err(`stat: cannot statx '${p}': No such file or directory\n`);
      status = 1;
      continue;
    }
    if (format === undefined) {
      await ctx.out(`  File: ${p}\n  Size: ${st.size}\t${fileType(st)}\n`);
      continue;
    }
    const text = format.replace(/%([sbBFnaU%])/g, (_, c: string) => {
      if (c === 's') return String(st.size);
      // Node reports allocated blocks in 512-byte units, as stat's %b does with %B = 512.
      if (c === 'b') return String(st.blocks);
      if (c === 'B') return '512';
      if (c === 'F') return fileType(st);
      if (c === 'n') return p;
      if (c === 'a') return (st.mode & 0o7777).toString(8);
      if (c === 'U') return 'root';
      return '%';
    });
    await ctx.out(`${text}\n`);
  }
  return status;
};

export async function sha256File(real: string, signal?: AbortSignal): Promise<string> {
  const hash = createHash('sha256');
  const stream = createReadStream(real, { highWaterMark: 1024 * 1024, ...(signal ? { signal } : {}) });
  for await (const chunk of stream as AsyncIterable<Buffer>) hash.update(chunk);
  return hash.digest('hex');
}

const sha256sum: Handler = async (ctx) => {
  const { operands } = options(ctx.argv.slice(1));
  let status = 0;
  for (const p of operands) {
    const { path, real } = await ctx.host.fs.prepare(p);
    const st = await statOf(real);
    if (st === undefined || st.isDirectory()) {
      await ctx.err(
        `sha256sum: ${p}: ${st === undefined ? 'No such file or directory' : 'Is a directory'}\n`,
      );
      status = 1;
      continue;
    }
    await ctx.core.beforeRead(ctx.host, path, real);
    await ctx.out(`${await sha256File(real, ctx.signal)}  ${p}\n`);
  }
  return status;
};

const chmodCmd: Handler = async (ctx) => {
  const { operands } = options(ctx.argv.slice(1));
  const [mode, ...paths] = operands;
  if (mode === undefined || paths.length === 0) fail(1, 'chmod: missing operand');
  let status = 0;
  for (const p of paths) {
    const { real } = await ctx.host.fs.prepare(p);
    const st = await statOf(real);
    if (st === undefined) {
      await ctx.err(`chmod: cannot access '${p}': No such file or directory\n`);
      status = 1;
      continue;
    }
    if (!/^[0-7]{3,4}$/.test(mode)) {
      if (!/^[ugoa]*[-+=][rwxXst]*$/.test(mode)) fail(1, `chmod: invalid mode: '${mode}'`);
      continue;
    }
    // Folders keep their modes: the lab must always be able to clean them up.
    if (st.isFile()) await chmod(real, Number.parseInt(mode, 8) | 0o600);
  }
  return status;
};

/** `find`'s `-name` patterns: `*`, `?`, `[...]`; a leading dot needs no explicit match. */
export function globToRegExp(glob: string): RegExp {
  let re = '';
  for (let i = 0; i < glob.length; i++) {
    const c = glob[i] as string;
    if (c === '*') re += '.*';
    else if (c === '?') re += '.';
    else if (c === '[') {
      const end = glob.indexOf(']', i + 2);
      if (end < 0) re += '\\[';
      else {
        const body = glob
          .slice(i + 1, end)
          .replace(/^!/, '^')
          .replace(/\\/g, '\\\\');
        re += `[${body}]`;
        i = end;
      }
    } else re += c.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  }
  return new RegExp(`^${re}$`, 's');
}

function printfText(format: string, path: string, st: Stats): string {
  return format
    .replace(/\\([ntr\\])/g, (_, c: string) => ({ n: '\n', t: '\t', r: '\r', '\\': '\\' })[c] as string)
    .replace(/%([sfpd%])/g, (_, c: string) => {
      if (c === 's') return String(st.size);
      if (c === 'f') return posix.basename(path);
      if (c === 'p') return path;
      return '%';
    });
}

interface FindEntry {
  path: string;
  real: string;
  depth: number;
  st: Stats;
}

async function walk(real: string, path: string, depth: number, maxDepth: number, out: FindEntry[]) {
  const st = await statOf(real);
  if (st === undefined) return;
  out.push({ path, real, depth, st });
  if (!st.isDirectory() || depth >= maxDepth) return;
  const names = (await readdir(real).catch(() => [] as string[])).sort();
  for (const n of names) await walk(posix.join(real, n), posix.join(path, n), depth + 1, maxDepth, out);
}

type Predicate =
  | { test: (e: FindEntry) => boolean }
  | { action: 'print' }
  | { action: 'delete' }
  | { action: 'printf'; format: string }
  | { action: 'exec'; argv: string[]; batch: boolean };

const find: Handler = async (ctx) => {
  const args = ctx.argv.slice(1);
  const starts: string[] = [];
  let i = 0;
  while (i < args.length && !(args[i] as string).startsWith('-') && args[i] !== '!')
    starts.push(args[i++] as string);
  if (starts.length === 0) starts.push('.');
  let maxDepth = Number.POSITIVE_INFINITY;
  let minDepth = 0;
  const preds: Predicate[] = [];
  while (i < args.length) {
    const a = args[i++] as string;
    const arg = () => {
      const v = args[i++];
      if (v === undefined) fail(1, `find: missing argument to '${a}'`);
      return v;
    };
    if (a === '-maxdepth') maxDepth = Number(arg());
    else if (a === '-mindepth') minDepth = Number(arg());
    else if (a === '-name' || a === '-iname') {
      const re = globToRegExp(arg());
      const ci = a === '-iname' ? new RegExp(re.source, 'is') : re;
      preds.push({ test: (e) => ci.test(posix.basename(e.path)) });
    } else if (a === '-type') {
      const t = arg();
      preds.push({ test: (e) => (t === 'd' ? e.st.isDirectory() : t === 'f' ? e.st.isFile() : false) });
    } else if (a === '-print') preds.push({ action: 'print' });
    else if (a === '-delete') preds.push({ action: 'delete' });
    else if (a === '-printf') preds.push({ action: 'printf', format: arg() });
    else if (a === '-exec') {
      const argv: string[] = [];
      let end: string | undefined;
      while (i < args.length) {
        const w = args[i++] as string;
        if (w === ';' || (w === '+' && argv[argv.length - 1] === '{}')) {
          end = w;
          break;
        }
        argv.push(w);
      }
      if (end === undefined || argv.length === 0) fail(1, "find: missing argument to '-exec'");
      preds.push({ action: 'exec', argv, batch: end === '+' });
    } else fail(1, `find: unknown predicate '${a}'`);
  }
  if (!preds.some((p) => 'action' in p)) preds.push({ action: 'print' });
  const deleting = preds.some((p) => 'action' in p && p.action === 'delete');
  let status = 0;
  const batches = new Map<Predicate, string[]>();
  for (const start of starts) {
    const { real } = await ctx.host.fs.prepare(start);
    const entries: FindEntry[] = [];
    if ((await statOf(real)) === undefined) {
      await ctx.err(`find: '${start}': No such file or directory\n`);
      status = 1;
      continue;
    }
    await walk(real, start, 0, maxDepth, entries);
    // -delete works depth first: a folder's contents go before the folder.
    const ordered = deleting ? entries.reverse() : entries;
    for (const e of ordered) {
      if (e.depth < minDepth) continue;
      let pass = true;
      for (const p of preds) {
        if ('test' in p) {
          pass = p.test(e);
          if (!pass) break;
          continue;
        }
        if (p.action === 'print') await ctx.out(`${e.path}\n`);
        else if (p.action === 'printf') await ctx.out(printfText(p.format, e.path, e.st));
        else if (p.action === 'delete') {
          await rm(e.real, { recursive: false, force: true }).catch(async () => {
            await rm(e.real, { recursive: true, force: true });
          });
          ctx.host.fs.removed(ctx.host.fs.normalize(e.path), true);
        } else if (p.batch) batches.set(p, [...(batches.get(p) ?? []), e.path]);
        else status = Math.max(status, await execFor(ctx, p.argv, [e.path]));
      }
    }
  }
  for (const [p, paths] of batches) {
    if ('action' in p && p.action === 'exec') status = Math.max(status, await execFor(ctx, p.argv, paths));
  }
  return status;
};

/** `-exec`: runs another of this host's programs with `{}` replaced by the found paths. */
async function execFor(ctx: CommandContext, template: string[], paths: string[]): Promise<number> {
  const argv = template.flatMap((w) => (w === '{}' ? paths : [w]));
  const handler = lookup(ctx.host, argv[0] as string);
  if (handler === undefined) {
    await ctx.err(`find: '${argv[0]}': No such file or directory\n`);
    return 1;
  }
  try {
    return await handler({ ...ctx, argv });
  } catch (err) {
    if (!(err instanceof CommandError)) throw err;
    await ctx.err(err.stderr);
    return 1;
  }
}

/** Where `command -v` says a program lives. */
const SBIN = new Set([
  'userdel',
  'useradd',
  'iptables',
  'shutdown',
  'reboot',
  'poweroff',
  'halt',
  'run-parts',
]);

/**
 * `command -v NAME` as a shell runs it (inside `sh -c`: `command` is a builtin, which the transport's
 * `exec` cannot run, so it is no program here): prints where NAME is and exits 0, or exits 1.
 */
export async function commandV(ctx: CommandContext, name: string): Promise<number> {
  if (BUILTINS.has(name)) {
    await ctx.out(`${name}\n`);
    return 0;
  }
  if (lookup(ctx.host, name) === undefined) return 1;
  await ctx.out(name.includes('/') ? `${name}\n` : `/usr/${SBIN.has(name) ? 'sbin' : 'bin'}/${name}\n`);
  return 0;
}

const BUILTINS = new Set(['true', 'false', 'echo', 'test', '[', 'command']);

/** The lab's file systems as df sees them: one per host, this large. */
const LAB_FS_BYTES = 2 * 1024 ** 4;

/**
 * `df -P -B1 DIR`: GNU coreutils' POSIX format in bytes, one file system per host whose free space is the
 * lab's `freeBytes` for the host (a `diskFull` fault: what it still lets through).
 */
const df: Handler = async (ctx) => {
  const args = ctx.argv.slice(1);
  const operands = args.filter((a) => !a.startsWith('-'));
  if (!args.includes('-P') || !args.includes('-B1') || operands.length !== 1)
    fail(1, 'df: the lab supports only `df -P -B1 DIR`');
  const dir = operands[0] as string;
  const { real } = await ctx.host.fs.prepare(dir);
  if ((await statOf(real)) === undefined) fail(1, `df: ${dir}: No such file or directory`);
  const available = Math.min(LAB_FS_BYTES, ctx.core.freeBytes(ctx.host.name));
  const used = LAB_FS_BYTES - available;
  const capacity = Math.ceil((used * 100) / LAB_FS_BYTES);
  await ctx.out(
    'Filesystem         1-blocks          Used     Available Capacity Mounted on\n' +
      `/dev/vda1 ${String(LAB_FS_BYTES).padStart(17)} ${String(used).padStart(13)} ${String(available).padStart(13)} ${String(capacity).padStart(7)}% /\n`,
  );
  return 0;
};

/** `sleep SECONDS`: waits, and stops when the command is killed or its channel closes. */
const sleepCmd: Handler = async (ctx) => {
  const seconds = Number(ctx.argv[1]);
  if (ctx.argv.length !== 2 || !(seconds >= 0))
    fail(1, `sleep: invalid time interval '${ctx.argv[1] ?? ''}'`);
  await ctx.sleep(seconds * 1000);
  return 0;
};

/** `sync` has nothing to flush in the lab (files are written synchronously before a command answers). */
/** coreutils `sync [FILE]...`: with operands, fsyncs each file or folder (a missing one is an error). */
const sync: Handler = async (ctx) => {
  const { operands } = options(ctx.argv.slice(1));
  let status = 0;
  for (const p of operands) {
    const { real } = await ctx.host.fs.prepare(p);
    if ((await statOf(real)) === undefined) {
      await ctx.err(`sync: error opening '${p}': No such file or directory\n`);
      status = 1;
      continue;
    }
    const fh = await open(real, 'r');
    try {
      await fh.sync();
    } finally {
      await fh.close();
    }
  }
  return status;
};

/** POSIX character classes inside brackets, for the JS RegExp a sed script becomes. */
const CLASSES: Record<string, string> = {
  space: '\\s',
  digit: '0-9',
  alpha: 'A-Za-z',
  alnum: 'A-Za-z0-9',
  upper: 'A-Z',
  lower: 'a-z',
  blank: ' \\t',
};

export function posixRegExp(re: string, extended: boolean, flags = ''): RegExp {
  let js = re.replace(/\[:(\w+):\]/g, (m, name: string) => CLASSES[name] ?? m);
  if (!extended) {
    // BRE: ( ) { } | + ? are literal unless escaped.
    js = js.replace(/\\([(){}|+?])|([(){}|+?])/g, (_, esc: string | undefined, lit: string | undefined) =>
      esc !== undefined ? esc : `\\${lit}`,
    );
  }
  return new RegExp(js, flags);
}

/** `sed -i [-E] SCRIPT FILE...` with `s/re/repl/[g]` and `/re/d` scripts. */
const sed: Handler = async (ctx) => {
  const { flags, operands } = options(ctx.argv.slice(1));
  if (!flags.has('i')) fail(1, 'sed: the lab supports only in-place editing (-i)');
  const extended = flags.has('E') || flags.has('r');
  const [script, ...files] = operands;
  if (script === undefined || files.length === 0) fail(1, 'sed: no input files');
  let edit: (line: string) => string | undefined;
  const del = /^\/(.*)\/d$/.exec(script);
  const sub = /^s(.)(.*?)\1(.*?)\1(g?)$/.exec(script);
  if (del) {
    const re = posixRegExp(del[1] as string, extended);
    edit = (line) => (re.test(line) ? undefined : line);
  } else if (sub) {
    const re = posixRegExp(sub[2] as string, extended, sub[4] === 'g' ? 'g' : '');
    const repl = (sub[3] as string)
      .replace(/\$/g, '$$$$')
      .replace(/\\(\d)/g, '$$$1')
      .replace(/&/g, '$$&');
    edit = (line) => line.replace(re, repl);
  } else fail(1, `sed: -e expression #1, char 1: unknown command: \`${script[0]}'`);
  let status = 0;
  for (const f of files) {
    const { real } = await ctx.host.fs.prepare(f);
    let text: string;
    try {
      text = await readFile(real, 'utf8');
    } catch {
      await ctx.err(`sed: can't read ${f}: No such file or directory\n`);
      status = 2;
      continue;
    }
    const lines = text.split('\n');
    const trailing = lines[lines.length - 1] === '' ? lines.pop() : undefined;
    const kept = lines.map(edit).filter((l): l is string => l !== undefined);
    await writeFile(real, kept.join('\n') + (trailing !== undefined && kept.length > 0 ? '\n' : ''));
  }
  return status;
};

export const POSIX_COMMANDS: ReadonlyMap<string, Handler> = new Map<string, Handler>([
  ['true', trueCmd],
  ['false', falseCmd],
  ['echo', echo],
  ['test', test],
  ['[', test],
  ['mkdir', mkdirCmd],
  ['rm', rmCmd],
  ['mv', mvCmd],
  ['cp', cpCmd],
  ['cat', cat],
  ['tee', tee],
  ['stat', statCmd],
  ['sha256sum', sha256sum],
  ['chmod', chmodCmd],
  ['find', find],
  ['sync', sync],
  ['sleep', sleepCmd],
  ['sed', sed],
  ['df', df],
]);
