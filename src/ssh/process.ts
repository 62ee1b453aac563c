/**
 * One remote command on its own exec channel: the deadline, abort, remote kill, output draining and the
 * decision between exit, signal, disconnect and our own stop reasons. `exec` and the copies build on it.
 *
 * The command line starts with `echo VCLPID=$$; exec ...`: sshd runs each command's shell as a session
 * leader (setsid), so that PID is also the process group, and killing the group reaches whatever the
 * command started. The header line is stripped from stdout before anyone sees it.
 */
import { type Readable, Transform, type TransformCallback, type Writable } from 'node:stream';
import type ssh2 from 'ssh2';
import type { Logger } from '../log.js';
import { SshError, type SshErrorCode } from './errors.js';
import { checkRemoteTag, TAG_VARIABLE } from './leftovers.js';
import type { Conn, ExitStatus, HostLink } from './link.js';
import { toCommandLine } from './quote.js';
import type { ExecResult } from './types.js';

const PID_PREFIX = Buffer.from('VCLPID=');
/** How long a stopped command's channel may take to close before we stop waiting for it. */
const CLOSE_GRACE_MS = 2000;
const UNANSWERED_STOP = 'reset: a stop the host did not answer within the stop budget (network silent)';
const KILL_TIMEOUT_MS = 5000;

/** Strips the `VCLPID=<pid>\n` line from the start of stdout and reports the PID. */
class PidHeader extends Transform {
  private pending: Buffer | undefined = Buffer.alloc(0);

  constructor(private readonly onPid: (pid: number | undefined) => void) {
    super();
  }

  override _transform(chunk: Buffer, _enc: BufferEncoding, cb: TransformCallback): void {
    cb(null, this.readHeader(chunk));
  }

  /**
   * Reads the header from bytes that bypass the stream: once a stopped command's output is drained, the
   * header may still be on its way, and the kill needs the PID it carries.
   */
  scan(chunk: Buffer): void {
    this.readHeader(chunk);
  }

  /** Consumes header bytes; returns what follows them (or everything, when there is no header). */
  private readHeader(chunk: Buffer): Buffer | undefined {
    if (this.pending === undefined) return chunk;
    const buf = this.pending.length === 0 ? chunk : Buffer.concat([this.pending, chunk]);
    const nl = buf.indexOf(0x0a);
    const prefixOk = buf
      .subarray(0, PID_PREFIX.length)
      .equals(PID_PREFIX.subarray(0, Math.min(buf.length, PID_PREFIX.length)));
    if (!prefixOk || (nl < 0 && buf.length > 32)) {
      // Not our header (a login script printed first): pass everything through, the PID stays unknown.
      this.pending = undefined;
      this.onPid(undefined);
      return buf;
    }
    if (nl < 0) {
      this.pending = buf;
      return undefined;
    }
    const pid = Number(buf.subarray(PID_PREFIX.length, nl).toString('latin1'));
    this.pending = undefined;
    this.onPid(Number.isInteger(pid) && pid > 1 ? pid : undefined);
    return nl + 1 < buf.length ? buf.subarray(nl + 1) : undefined;
  }

  /** Whether the header is still expected. */
  get waiting(): boolean {
    return this.pending !== undefined;
  }

  override _flush(cb: TransformCallback): void {
    if (this.pending !== undefined && this.pending.length > 0) this.push(this.pending);
    if (this.pending !== undefined) this.onPid(undefined);
    this.pending = undefined;
    cb();
  }
}

export interface ProcessOptions {
  timeoutMs: number;
  signal: AbortSignal | undefined;
  expectDisconnect: boolean;
  /** stderr bytes kept; past it the rest is dropped, or with `killOnStderrLimit` the command is stopped. */
  maxStderrBytes: number;
  killOnStderrLimit: boolean;
  step: string | undefined;
  /** Exported as `VCL_CAPTURE_TAG` to the command and all it starts (leftovers.ts). */
  tag?: string | undefined;
}

/** A running remote command. */
export interface RemoteProcess {
  /** Standard output (binary). Must be consumed (or `resume()`d): ssh2 cannot finish an unread channel. */
  readonly stdout: Readable;
  /** Standard input; `end()` it to send EOF. Closed at once by `exec` when it has no stdin to give. */
  readonly stdin: Writable;
  /**
   * Settles when the command is over: resolves with its exit (any status: checking it is the caller's
   * business) or, with `expectDisconnect`, with `disconnected: true`; rejects with `SSH_TIMEOUT`,
   * `SSH_ABORTED`, `SSH_OUTPUT_LIMIT` or the code given to `stop()`, or `SSH_DISCONNECTED`.
   */
  readonly done: Promise<ExecResult>;
  /** Stops the command: kills the remote process group, closes the channel, makes `done` reject. */
  stop(code: SshErrorCode, message: string): void;
  /** Remote PID (= process group) once the header has arrived. */
  readonly pid: number | undefined;
}

export function commandName(argv: readonly string[]): string {
  return argv[0] ?? '';
}

/**
 * Opens the channel (after a slot and the connection) and starts the command. Rejects only for what happens
 * before the command runs: abort while queued, connection failure, channel refused.
 */
export async function startProcess(
  link: HostLink,
  argv: readonly string[],
  opts: ProcessOptions,
  log: Logger,
): Promise<RemoteProcess> {
  const host = link.host.name;
  const name = commandName(argv);
  const commandLine = commandLineOf(argv, opts.tag);
  const abortedError = () =>
    new SshError('SSH_ABORTED', `${name} on ${host} was aborted before it started`, {
      ...(opts.step === undefined ? {} : { step: opts.step }),
      details: { host, command: name, remoteKilled: false, started: false },
    });
  const release = await link.slots.acquire(opts.signal, abortedError);
  let conn: Conn;
  let channel: ssh2.ClientChannel;
  let exitOf: () => ExitStatus | undefined;
  const started = Date.now();
  try {
    conn = await link.conn(opts.signal, abortedError);
    conn.active++;
    // An abort while the channel is being opened cannot recall the request: if the host stays silent
    // for the stop budget, the connection is reset so that the request never arrives late.
    const opening = conn;
    let silent: NodeJS.Timeout | undefined;
    const onAbortWhileOpening = () => {
      silent = setTimeout(() => opening.reset(UNANSWERED_STOP), KILL_TIMEOUT_MS + CLOSE_GRACE_MS);
      silent.unref();
    };
    if (opts.signal?.aborted) onAbortWhileOpening();
    else opts.signal?.addEventListener('abort', onAbortWhileOpening, { once: true });
    try {
      ({ channel, exit: exitOf } = await openChannel(conn, commandLine, opts.signal, log));
    } catch (err) {
      conn.channelClosed();
      const lost = conn.lost !== undefined;
      throw new SshError(
        lost ? 'SSH_DISCONNECTED' : 'SSH_CHANNEL_FAILED',
        lost
          ? `${host}: connection lost while starting ${name}: ${conn.lost}`
          : `${host} refused a channel for ${name}: ${(err as Error).message}`,
        {
          cause: err,
          ...(opts.step === undefined ? {} : { step: opts.step }),
          details: { host, command: name },
        },
      );
    } finally {
      clearTimeout(silent);
      opts.signal?.removeEventListener('abort', onAbortWhileOpening);
    }
  } catch (err) {
    release();
    if (err instanceof SshError && opts.step !== undefined) err.step ??= opts.step;
    throw err;
  }
  return runOnChannel(link, conn, channel, exitOf, name, started, opts, log, release);
}

/**
 * `echo VCLPID=$$; [export VCL_CAPTURE_TAG=<tag>; ]exec <argv quoted>`: the PID header, the tag of the
 * runner execution when there is one, then the command in place of the shell.
 */
export function commandLineOf(argv: readonly string[], tag: string | undefined): string {
  if (tag === undefined) return `echo VCLPID=$$; exec ${toCommandLine(argv)}`;
  return `echo VCLPID=$$; export ${TAG_VARIABLE}=${checkRemoteTag(tag)}; exec ${toCommandLine(argv)}`;
}

/**
 * Sends SIGKILL to remote process group `group` over `conn`, on one of the link's reserved kill channels.
 * True when the signal reached every member of the group, or no member was left. Waiting for the group to
 * vanish would not work: a killed background child can stay a zombie (still a group member) until an init
 * that reaps lazily collects it, and SIGKILL cannot be caught anyway.
 */
async function killGroupOn(link: HostLink, conn: Conn, group: number): Promise<boolean> {
  const releaseKill = await link.killSlots.acquire(undefined, () => new Error('unreachable'));
  conn.active++;
  try {
    const script =
      `kill -KILL -- -${group} 2>/dev/null || kill -KILL ${group} 2>/dev/null || ` +
      `! kill -0 -- -${group} 2>/dev/null`;
    const { channel: ch, exit } = await conn.exec(script);
    return await new Promise<boolean>((resolve) => {
      const t = setTimeout(() => {
        ch.close();
        resolve(false);
      }, KILL_TIMEOUT_MS);
      ch.once('close', () => {
        clearTimeout(t);
        conn.channelClosed();
        resolve(exit()?.code === 0);
      });
      ch.resume();
      ch.stderr.resume();
      ch.end();
    });
  } catch {
    conn.channelClosed();
    return false;
  } finally {
    releaseKill();
  }
}

/**
 * Kills the process group a command of an earlier connection left on `link`'s host (its PID from the
 * command's header), over the live connection or a new one. For a copy that resumes after its connection
 * dropped: the old writer may still run there (the server has not noticed the drop) and must not write
 * after the resumed one starts. Connection failures reject (`SSH_UNREACHABLE`...), a kill that could not
 * be confirmed resolves false.
 */
export async function killEarlierGroup(
  link: HostLink,
  group: number,
  signal: AbortSignal | undefined,
): Promise<boolean> {
  const conn = await link.conn(
    signal,
    () => new SshError('SSH_ABORTED', `killing process group ${group} on ${link.host.name} was aborted`),
  );
  return await killGroupOn(link, conn, group);
}

/**
 * OpenSSH frees a closed session only after the read that carried its close: a channel opened in the same
 * write as other channels' closes (a busy pool reusing its slots) can find `MaxSessions` (10 by default)
 * still full, and is refused. Such a refusal is retried a few times, over about 0.6 s; one that lasts is
 * reported.
 */
const CHANNEL_RETRY_DELAYS_MS = [5, 10, 20, 40, 80, 160, 320];

async function openChannel(
  conn: Conn,
  commandLine: string,
  signal: AbortSignal | undefined,
  log: Logger,
): ReturnType<Conn['exec']> {
  for (let attempt = 0; ; attempt++) {
    try {
      return await conn.exec(commandLine);
    } catch (err) {
      const delay = CHANNEL_RETRY_DELAYS_MS[attempt];
      if (delay === undefined || conn.lost !== undefined || signal?.aborted) throw err;
      log.debug(
        { attempt: attempt + 1, delayMs: delay, reason: (err as Error).message },
        'channel refused, retrying',
      );
      await new Promise((r) => setTimeout(r, delay));
    }
  }
}

function runOnChannel(
  link: HostLink,
  conn: Conn,
  channel: ssh2.ClientChannel,
  exitOf: () => ExitStatus | undefined,
  name: string,
  started: number,
  opts: ProcessOptions,
  log: Logger,
  release: () => void,
): RemoteProcess {
  const host = link.host.name;
  let pid: number | undefined;
  let pidKnown: () => void = () => {};
  const pidArrived = new Promise<void>((r) => {
    pidKnown = r;
  });
  const stdout = new PidHeader((p) => {
    pid = p;
    pidKnown();
  });
  channel.pipe(stdout);
  (channel as unknown as { destroy: typeof destroyChannel }).destroy = destroyChannel;
  // A write after the channel closed (stdin of a command that was stopped) surfaces here; `done` says why.
  channel.on('error', () => {});
  const stderrChunks: Buffer[] = [];
  let stderrBytes = 0;
  let stderrDropped = 0;
  let stopReason: { code: SshErrorCode; message: string; remoteKilled: Promise<boolean> } | undefined;
  let finished = false;
  let resolveDone: (r: ExecResult) => void = () => {};
  let rejectDone: (e: unknown) => void = () => {};
  const done = new Promise<ExecResult>((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  // `done` is often awaited only after stdout has been consumed; a rejection before that is not "unhandled".
  done.catch(() => {});

  const stderrText = () => Buffer.concat(stderrChunks).toString('utf8');
  const stepOpt = opts.step === undefined ? {} : { step: opts.step };

  const cleanup = () => {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
    conn.off('lost', onLost);
  };

  let closedOnce = false;
  const channelGone = () => {
    if (closedOnce) return;
    closedOnce = true;
    release();
    conn.channelClosed();
  };

  const finish = (outcome: 'closed' | 'lost') => {
    if (finished) return;
    finished = true;
    cleanup();
    const durationMs = Date.now() - started;
    const base = {
      stdout: '',
      stderr: stderrText(),
      durationMs,
    };
    if (stopReason !== undefined) {
      const reason = stopReason;
      reason.remoteKilled.then((remoteKilled) => {
        log.warn({ durationMs, code: reason.code, remoteKilled, pid }, 'command stopped');
        rejectDone(
          new SshError(reason.code, reason.message, {
            ...stepOpt,
            details: { host, command: name, pid, remoteKilled, durationMs, stderr: base.stderr.slice(-8192) },
          }),
        );
      });
      return;
    }
    const exit = exitOf();
    // An exit status can come before the last output (sshd reports the exit when it reaps the process);
    // after a lost connection the output is complete only if the server's EOF had arrived.
    if (exit !== undefined && (outcome === 'closed' || eofBeforeLoss)) {
      // A reboot command may exit before the connection drops: never reuse that connection.
      if (opts.expectDisconnect) link.retire(conn);
      log.debug({ durationMs, exit: exit.code, signal: exit.signal }, 'command finished');
      resolveDone({ ...base, code: exit.code, signal: exit.signal, disconnected: false });
      return;
    }
    if (opts.expectDisconnect) {
      log.info({ durationMs }, 'command ended with the connection, as expected');
      link.retire(conn);
      resolveDone({ ...base, code: exit?.code ?? null, signal: exit?.signal ?? null, disconnected: true });
      return;
    }
    const why =
      outcome === 'lost'
        ? `${conn.lost ?? 'connection lost'}${exit === undefined ? '' : ', after the exit status but before all output'}`
        : 'the session closed';
    log.warn({ durationMs, reason: why }, 'disconnected before an exit status');
    rejectDone(
      new SshError('SSH_DISCONNECTED', `${name} on ${host}: disconnected before an exit status (${why})`, {
        ...stepOpt,
        details: { host, command: name, durationMs, reason: why, stderr: base.stderr.slice(-8192) },
      }),
    );
  };

  const killRemote = async (): Promise<boolean> => {
    sendSignal(channel, 'KILL');
    // The PID header may still be on its way on a slow host: wait for it as long as the kill budget
    // allows. Without the PID the group cannot be killed, and a shell that died of the signal above
    // may have left its children running.
    if (pid === undefined && stdout.waiting && !closedOnce) {
      let timer: NodeJS.Timeout | undefined;
      let gone: () => void = () => {};
      await Promise.race([
        pidArrived,
        new Promise<void>((r) => {
          gone = r;
          channel.once('close', gone);
          conn.once('lost', gone);
          timer = setTimeout(gone, KILL_TIMEOUT_MS);
        }),
      ]);
      clearTimeout(timer);
      channel.off('close', gone);
      conn.off('lost', gone);
    }
    if (pid === undefined || conn.lost !== undefined) return false;
    return await killGroupOn(link, conn, pid);
  };

  const drain = () => {
    channel.unpipe(stdout);
    if (stdout.waiting) channel.on('data', (chunk: Buffer) => stdout.scan(chunk));
    channel.resume();
    channel.stderr.resume();
    // A reader still waiting must see the stream cut short (premature close), never a clean end of data.
    if (!stdout.writableEnded) stdout.destroy();
  };

  const stop = (code: SshErrorCode, message: string) => {
    if (finished || stopReason !== undefined) return;
    const remoteKilled = killRemote();
    stopReason = { code, message, remoteKilled };
    // Whatever is still in flight must be read, or the channel never closes. Read it from the channel
    // itself: the stdout reader may be gone (a pipeline destroys its streams on error).
    drain();
    remoteKilled.then(() => {
      try {
        channel.close();
      } catch {
        // Already closed.
      }
    });
    // The kill may wait for the PID, then for the kill command: each has the kill budget.
    const grace = setTimeout(() => finish('closed'), 2 * KILL_TIMEOUT_MS + CLOSE_GRACE_MS);
    grace.unref();
    // A host that answered nothing within the stop budget (the network gone silent): the connection is
    // reset, so that nothing sent on it before (another command's start) can still arrive there later.
    const silent = setTimeout(() => conn.reset(UNANSWERED_STOP), KILL_TIMEOUT_MS + CLOSE_GRACE_MS);
    silent.unref();
    channel.once('close', () => {
      clearTimeout(grace);
      clearTimeout(silent);
    });
  };

  const timeoutMs = opts.timeoutMs;
  const timer =
    Number.isFinite(timeoutMs) && timeoutMs > 0
      ? setTimeout(
          () => stop('SSH_TIMEOUT', `${name} on ${host} timed out after ${timeoutMs} ms and was killed`),
          timeoutMs,
        )
      : undefined;
  const onAbort = () => stop('SSH_ABORTED', `${name} on ${host} was aborted`);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  let eofBeforeLoss = false;
  const onLost = () => {
    const state = (channel as unknown as ChannelInternals).incoming?.state;
    eofBeforeLoss = state === 'eof' || state === 'closed';
    if (eofBeforeLoss && exitOf() !== undefined) {
      // Everything arrived: let the reader take the rest, and the channel's own close end the command.
      return;
    }
    drain();
    channelGone();
    finish('lost');
  };
  conn.once('lost', onLost);

  channel.stderr.on('data', (chunk: Buffer) => {
    const room = opts.maxStderrBytes - stderrBytes;
    if (room <= 0) {
      stderrDropped += chunk.length;
    } else {
      stderrChunks.push(room >= chunk.length ? chunk : chunk.subarray(0, room));
      stderrBytes += Math.min(room, chunk.length);
      stderrDropped += Math.max(0, chunk.length - room);
    }
    if (stderrDropped > 0 && opts.killOnStderrLimit) {
      stop('SSH_OUTPUT_LIMIT', `${name} on ${host} wrote more than ${opts.maxStderrBytes} bytes to stderr`);
    }
  });
  channel.on('close', () => {
    channelGone();
    // Let stdout's last bytes reach its reader before `done` settles.
    if (stdout.readableEnded || stopReason !== undefined) finish('closed');
    else stdout.once('end', () => finish('closed'));
  });
  if (opts.signal?.aborted) onAbort();

  return {
    stdout,
    stdin: channel,
    done,
    stop,
    get pid() {
      return pid;
    },
  };
}

/**
 * ssh2's `Channel.destroy()` (called by the stream machinery once both sides are done) without its
 * `end()` on a side already ended, which only made an ERR_STREAM_ALREADY_FINISHED to discard, once per
 * command.
 */
function destroyChannel(this: ssh2.ClientChannel): ssh2.ClientChannel {
  if (!this.writableEnded) this.end();
  this.close();
  return this;
}

/** The parts of ssh2's channel that `Channel.signal()` uses; not in its typings. */
interface ChannelInternals {
  outgoing?: { id: number; state: string };
  incoming?: { state: string };
  _client?: { _protocol?: { signal(id: number, name: string): void } };
}

/**
 * Sends a signal request (OpenSSH >= 8.1 delivers it to the session's process group; other servers may
 * ignore it). ssh2's `Channel.signal()` silently sends nothing once our side has sent EOF, which `exec`
 * does at once when it has no stdin, although RFC 4254 allows requests after EOF: so the request is
 * written through the same internal call when the channel is open or half-closed.
 */
function sendSignal(channel: ssh2.ClientChannel, name: string): void {
  const internals = channel as unknown as ChannelInternals;
  const state = internals.outgoing?.state;
  const protocol = internals._client?._protocol;
  try {
    if (internals.outgoing !== undefined && protocol !== undefined && (state === 'open' || state === 'eof')) {
      protocol.signal(internals.outgoing.id, name);
    } else {
      channel.signal(name);
    }
  } catch {
    // The channel is already closing: the kill command below does the job.
  }
}

/** A byte sink that keeps at most `limit` bytes and reports when more came. */
export function collect(
  stream: Readable,
  limit: number,
  onOverflow: () => void,
): { text: () => string; bytes: () => number } {
  const chunks: Buffer[] = [];
  let kept = 0;
  let overflowed = false;
  stream.on('data', (chunk: Buffer) => {
    const room = limit - kept;
    if (room > 0) {
      chunks.push(room >= chunk.length ? chunk : chunk.subarray(0, room));
      kept += Math.min(room, chunk.length);
    }
    if (chunk.length > room && !overflowed) {
      overflowed = true;
      onOverflow();
    }
  });
  return { text: () => Buffer.concat(chunks).toString('utf8'), bytes: () => kept };
}
