/**
 * This machine's own `qemu-img`, for what the lab must answer with real disk formats: ESXi's `vmkfstools
 * -d 2gbsparse` writes its set with it, and the repository host's `qemu-img info --output=json` and
 * `qemu-img check` read the sets stored there. (The libvirt host's `qemu-img` is the lab's own model of it:
 * src/provisioners/libvirt/lab-commands.ts.) Without a local qemu-img the repository host has none, as a
 * repository without qemu-utils.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { type CommandContext, fail, type Handler } from '../core.js';
import { statOf } from './posix.js';

const run = promisify(execFile);

let local: Promise<boolean> | undefined;

/** Whether this machine has a `qemu-img` on PATH (asked once per process). */
export function hasLocalQemuImg(): Promise<boolean> {
  local ??= run('qemu-img', ['--version']).then(
    () => true,
    () => false,
  );
  return local;
}

/** Runs the local qemu-img; killed when the command is. Rejects with its exit code and stderr. */
export async function localQemuImg(
  args: readonly string[],
  signal: AbortSignal,
): Promise<{ stdout: string; stderr: string }> {
  return await run('qemu-img', [...args], { signal, encoding: 'utf8', maxBuffer: 16 * 1024 ** 2 });
}

/**
 * The repository host's `qemu-img info --output=json FILE` and `qemu-img check [-q] FILE`, read-only (`-U`:
 * nothing else holds the lab's files) on the host's real files, the real paths in what it prints replaced
 * by the host's own.
 */
const qemuImg: Handler = async (ctx: CommandContext) => {
  const args = ctx.argv.slice(1);
  const [sub] = args;
  const file = args.at(-1);
  const known =
    (sub === 'info' && args.length === 3 && args[1] === '--output=json') ||
    (sub === 'check' && (args.length === 2 || (args.length === 3 && args[1] === '-q')));
  if (!known || file === undefined || file.startsWith('-'))
    fail(1, `qemu-img: the lab's repository host runs only info --output=json FILE and check [-q] FILE`);
  const { real } = await ctx.host.fs.prepare(file);
  if ((await statOf(real)) === undefined)
    fail(1, `qemu-img: Could not open '${file}': Could not open '${file}': No such file or directory`);
  const root = ctx.host.fs.realOf('/').replace(/\/$/, '');
  const own = (s: string) => s.replaceAll(root, '');
  try {
    const r = await localQemuImg([sub as string, '-U', ...args.slice(1, -1), real], ctx.signal);
    await ctx.out(own(r.stdout));
    if (r.stderr !== '') await ctx.err(own(r.stderr));
    return 0;
  } catch (err) {
    const e = err as { code?: unknown; stdout?: string; stderr?: string };
    if (typeof e.code !== 'number') throw err;
    if (e.stdout) await ctx.out(own(e.stdout));
    if (e.stderr) await ctx.err(own(e.stderr));
    return e.code;
  }
};

export const REPOSITORY_QEMU_IMG: ReadonlyMap<string, Handler> = new Map([['qemu-img', qemuImg]]);
