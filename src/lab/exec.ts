/**
 * One command on an SSH exec channel, with the semantics a client of OpenSSH relies on: stdout and stderr
 * written with back-pressure, then the exit status, then EOF and close; a command killed by a signal
 * request or by the transport's kill script answers with exit-signal; a command whose channel or connection
 * closes stops at once and answers nothing. Faults that act on a whole command (fail, hang, drop) are
 * applied here, before the host's handler runs.
 */

import { Transform, type Writable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import type ssh2 from 'ssh2';
import { type CommandContext, CommandError, type HostRuntime, type LabCore } from './core.js';
import { commandMatches, hostMatches } from './faults.js';
import { parseCommandLine } from './words.js';

/** Why a command stopped before it finished by itself. */
class Stopped extends Error {}

export interface RunningExec {
  /** A signal request from the client (`KILL`, `TERM`...). */
  signal(name: string): void;
  /** The connection is gone: stop without an answer. */
  abandon(): void;
}

/** What the lab tells of a running command: who started it and what it runs (argv once parsed). */
export interface ExecInfo {
  readonly client: string;
  readonly argv: readonly string[] | undefined;
}

/** Largest stdin the lab buffers for a command that is not reading it yet. */
const STDIN_BUFFER = 1024 * 1024;

export function startExec(
  core: LabCore,
  host: HostRuntime,
  channel: ssh2.ServerChannel,
  line: string,
  dropConnection: () => void,
  client: string,
): RunningExec {
  const exec = new Exec(core, host, channel, dropConnection, client);
  core.track(
    exec.run(line).catch((err: unknown) => {
      core.internalErrors.push(err instanceof Error ? err : new Error(String(err)));
    }),
  );
  return exec;
}

class Exec implements RunningExec, ExecInfo {
  argv: readonly string[] | undefined;
  private readonly ac = new AbortController();
  private finished = false;
  private pid: number | undefined;
  private stdoutBytes = 0;
  private stdinBytes = 0;
  /** Drop the connection once this many data bytes moved (a `dropConnection` fault with `afterBytes`). */
  private dropAfterBytes: number | undefined;
  /** The channel's data, counted on its way (a 'data' listener here would switch it to flowing mode). */
  private readonly stdin = new Transform({
    highWaterMark: STDIN_BUFFER,
    transform: (chunk: Buffer, _enc, cb) => {
      cb(null, chunk);
      this.countStdin(chunk.length);
    },
  });

  constructor(
    private readonly core: LabCore,
    private readonly host: HostRuntime,
    private readonly channel: ssh2.ServerChannel,
    private readonly dropConnection: () => void,
    readonly client: string,
  ) {
    channel.on('error', () => {});
    channel.stderr.on('error', () => {});
    channel.on('close', () => this.stop());
    channel.pipe(this.stdin);
    host.running.add(this);
  }

  signal(name: string): void {
    this.killed(name.replace(/^SIG/, ''));
  }

  abandon(): void {
    this.stop();
  }

  async run(line: string): Promise<void> {
    const parsed = parseCommandLine(line);
    const { host, core } = this;
    if (parsed.kind === 'refused') {
      core.log({ host: host.name, line, argv: null, kind: 'refused', client: this.client });
      await this.answer(async () => {
        throw new CommandError(2, `${parsed.message}\n`);
      });
      return;
    }
    if (parsed.kind === 'kill') {
      core.log({ host: host.name, line, argv: null, kind: 'kill', client: this.client });
      // `kill -KILL -- -N || kill -KILL N || ! kill -0 -- -N` succeeds whether or not N still ran.
      host.procs.get(parsed.group)?.kill('KILL');
      await this.answer(async () => 0);
      return;
    }
    const argv = parsed.argv;
    this.argv = argv;
    core.log({ host: host.name, line, argv, kind: 'exec', client: this.client });
    if (parsed.wrapped) {
      this.pid = core.nextPid();
      host.procs.set(this.pid, { kill: (sig) => this.killed(sig), tag: parsed.tag });
      await this.write(this.channel, `VCLPID=${this.pid}\n`).catch(() => {});
    }
    await this.answer(async (ctx) => {
      if (argv.length === 0) return 0;
      const drop = core.faults.take(
        'dropConnection',
        (f) => hostMatches(f.host, host.name) && commandMatches(f.match, argv),
      );
      if (drop !== undefined) {
        if (drop.afterBytes !== undefined) this.dropAfterBytes = drop.afterBytes;
        else {
          await ctx.sleep(drop.afterMs ?? 0);
          this.dropConnection();
          await ctx.sleep(Number.POSITIVE_INFINITY);
        }
      }
      const failure = core.faults.take(
        'failCommand',
        (f) => hostMatches(f.host, host.name) && commandMatches(f.match, argv),
      );
      if (failure !== undefined) {
        if (failure.stdout) await ctx.out(failure.stdout);
        if (failure.stderr) await ctx.err(failure.stderr);
        return failure.exitCode;
      }
      const hang = core.faults.take(
        'hangCommand',
        (f) => hostMatches(f.host, host.name) && commandMatches(f.match, argv),
      );
      if (hang !== undefined) await ctx.sleep(Number.POSITIVE_INFINITY);
      if (core.options.commandLatencyMs > 0) await ctx.sleep(core.options.commandLatencyMs);
      const handler = lookup(host, argv[0] as string);
      if (handler === undefined) throw new CommandError(127, `sh: 1: ${argv[0]}: not found\n`);
      return await handler(ctx);
    }, argv);
  }

  /** Runs `body` and answers with its exit status (or its CommandError), unless stopped meanwhile. */
  private async answer(body: (ctx: CommandContext) => Promise<number>, argv: string[] = []): Promise<void> {
    const ctx = this.context(argv);
    let code: number;
    try {
      code = await body(ctx);
    } catch (err) {
      if (this.finished || err instanceof Stopped) return;
      if (err instanceof CommandError) {
        await this.write(this.channel.stderr, err.stderr).catch(() => {});
        code = err.exitCode;
      } else {
        this.core.internalErrors.push(err as Error);
        await this.write(this.channel.stderr, `lab: internal error: ${(err as Error).message}\n`).catch(
          () => {},
        );
        code = 70;
      }
    }
    if (this.finished) return;
    this.finish();
    this.channel.exit(code);
    this.channel.end();
  }

  private context(argv: string[]): CommandContext {
    const signal = this.ac.signal;
    return {
      core: this.core,
      host: this.host,
      argv,
      signal,
      stdin: this.stdin,
      out: (data) => this.writeStdout(data),
      err: (data) => this.write(this.channel.stderr, data),
      sleep: (ms) => {
        if (signal.aborted) return Promise.reject(new Stopped());
        if (!Number.isFinite(ms))
          return new Promise<void>((_, reject) =>
            signal.addEventListener('abort', () => reject(new Stopped()), { once: true }),
          );
        return sleep(ms, undefined, { signal }).then(
          () => undefined,
          () => {
            throw new Stopped();
          },
        );
      },
      dropConnection: () => this.dropConnection(),
    };
  }

  private async writeStdout(data: string | Buffer): Promise<void> {
    const buf = typeof data === 'string' ? Buffer.from(data) : data;
    const limit = this.dropAfterBytes;
    if (limit !== undefined && this.stdoutBytes + buf.length >= limit) {
      const part = buf.subarray(0, Math.max(0, limit - this.stdoutBytes));
      if (part.length > 0) await this.write(this.channel, part);
      this.stdoutBytes += part.length;
      this.dropConnection();
      throw new Stopped();
    }
    this.stdoutBytes += buf.length;
    await this.write(this.channel, buf);
  }

  private countStdin(n: number): void {
    this.stdinBytes += n;
    if (this.dropAfterBytes !== undefined && this.stdinBytes >= this.dropAfterBytes) {
      this.dropAfterBytes = undefined;
      this.dropConnection();
    }
  }

  private write(stream: Writable, data: string | Buffer): Promise<void> {
    const signal = this.ac.signal;
    return new Promise<void>((resolve, reject) => {
      if (signal.aborted || this.finished) {
        reject(new Stopped());
        return;
      }
      const onAbort = () => reject(new Stopped());
      signal.addEventListener('abort', onAbort, { once: true });
      stream.write(data, (err) => {
        signal.removeEventListener('abort', onAbort);
        if (err) reject(new Stopped());
        else resolve();
      });
    });
  }

  /** Killed by a signal: answer exit-signal, EOF, close. */
  private killed(signal: string): void {
    if (this.finished) return;
    this.finish();
    try {
      this.channel.exit(signal, false, '');
      this.channel.end();
    } catch {
      // The channel went away meanwhile.
    }
  }

  /** The channel or connection closed under the command: stop without an answer. */
  private stop(): void {
    if (this.finished) return;
    this.finish();
  }

  private finish(): void {
    this.finished = true;
    this.host.running.delete(this);
    if (this.pid !== undefined) this.host.procs.delete(this.pid);
    this.ac.abort();
    this.channel.unpipe(this.stdin);
    this.channel.resume();
    this.stdin.destroy();
  }
}

/** A program by name, or by the last part of an absolute path (`/usr/bin/virsh`, `/cygdrive/.../sysprep.exe`). */
export function lookup(host: HostRuntime, name: string) {
  const direct = host.commands.get(name);
  if (direct !== undefined) return host.missingTools.has(name) ? undefined : direct;
  if (!name.includes('/')) return undefined;
  const base = name.slice(name.lastIndexOf('/') + 1);
  return host.missingTools.has(base) ? undefined : host.commands.get(base);
}
