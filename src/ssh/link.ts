/**
 * The one connection a pool keeps to a host: opened on first use, shared by every command, replaced after
 * it drops. Channels are counted here against the host's limit.
 */
import { EventEmitter } from 'node:events';
import type { Socket } from 'node:net';
import type ssh2 from 'ssh2';
import type { Logger } from '../log.js';
import { connect, DEFAULTS, endpointOf } from './connect.js';
import { SshError } from './errors.js';
import { Slots } from './slots.js';
import type { SshHost } from './types.js';

/**
 * Channels reserved beyond `maxChannels` for the short commands that kill a timed-out remote process, so a
 * host whose every channel hangs can still be cleaned up. 8 + 2 fits OpenSSH's default `MaxSessions` 10.
 */
export const KILL_CHANNELS = 2;

/** How a command ended: an exit status, or the signal that killed it. */
export interface ExitStatus {
  code: number | null;
  signal: string | null;
}

/** One live SSH connection. Emits `lost` (with the reason) once, when it drops for any cause. */
export class Conn extends EventEmitter {
  /** Channels open on this connection (commands, copies and kill commands). */
  active = 0;
  /** Why the connection is gone, once it is. */
  lost: string | undefined;
  /** No new channels: the next command opens a new connection, and this one ends when its channels do. */
  retired = false;

  constructor(
    readonly client: ssh2.Client,
    readonly cipher: string | undefined,
  ) {
    super();
    const onLost = (reason: string) => this.markLost(reason);
    client.on('error', (err: Error & { level?: string }) =>
      onLost(
        err.message === 'Keepalive timeout'
          ? 'no answer to keep-alives (host frozen or network down)'
          : `connection error: ${err.message}`,
      ),
    );
    client.on('close', () => onLost('connection closed'));
    coalesceWrites(client);
  }

  /**
   * Opens an exec channel. The caller counts it in `active` and calls `channelClosed()` after its close.
   * The exit status is recorded from the start: ssh2 parses a whole network read at once, so a fast
   * command's exit request can be emitted before an awaiting caller has had a chance to listen.
   */
  async exec(command: string): Promise<{ channel: ssh2.ClientChannel; exit: () => ExitStatus | undefined }> {
    if (this.lost !== undefined) throw new Error(this.lost);
    return await new Promise((resolve, reject) => {
      this.client.exec(command, (err, channel) => {
        if (err) return reject(err);
        let exit: ExitStatus | undefined;
        channel.once('exit', (code: number | null, signal?: string) => {
          exit = {
            code: code ?? null,
            signal: code === null || code === undefined ? (signal ?? null) : null,
          };
        });
        resolve({ channel, exit: () => exit });
      });
    });
  }

  channelClosed(): void {
    this.active--;
    if (this.retired && this.active <= 0) this.end();
  }

  end(): void {
    this.retired = true;
    this.client.end();
  }

  /**
   * Drops the connection with a TCP reset: the kernel discards what it has not delivered, so a request
   * sent into a silent network (a partition) cannot reach the host later, once the network is back, and
   * start a command there after another runner took the capture over. For a stop the host never confirmed.
   */
  reset(reason: string): void {
    if (this.lost !== undefined) return;
    this.retired = true;
    this.markLost(reason);
    const sock = (this.client as unknown as { _sock?: Socket })._sock;
    if (sock !== undefined && typeof sock.resetAndDestroy === 'function') sock.resetAndDestroy();
    else this.client.destroy();
  }

  private markLost(reason: string): void {
    if (this.lost !== undefined) return;
    this.lost = reason;
    this.emit('lost', reason);
  }
}

/**
 * ssh2 writes each packet to the socket on its own: one system call per packet, several per command
 * (channel open, exec request, EOF, close). Writes of one event loop turn are gathered instead (the socket
 * corked at the first, uncorked in the check phase) and leave in one `writev`.
 */
function coalesceWrites(client: ssh2.Client): void {
  const sock = (client as unknown as { _sock?: Socket })._sock;
  if (sock === undefined || typeof sock.cork !== 'function') return;
  let corked = false;
  const uncork = () => {
    corked = false;
    sock.uncork();
  };
  const write = sock.write;
  sock.write = function (this: Socket, ...args: Parameters<Socket['write']>): boolean {
    if (!corked && !this.writableEnded && !this.destroyed) {
      corked = true;
      this.cork();
      setImmediate(uncork);
    }
    return write.apply(this, args);
  } as Socket['write'];
}

export class HostLink {
  readonly slots: Slots;
  readonly killSlots = new Slots(KILL_CHANNELS);
  private current: Conn | undefined;
  private connecting: Promise<Conn> | undefined;
  private readonly closing = new AbortController();
  /** Connections of this link that dropped so far (a copy compares it to tell a drop from a failure). */
  losses = 0;

  constructor(
    readonly host: SshHost,
    readonly log: Logger,
  ) {
    const limit = host.maxChannels ?? DEFAULTS.maxChannels;
    if (!Number.isInteger(limit) || limit < 1) {
      throw new SshError('SSH_CONFIG_INVALID', `${host.name}: maxChannels must be a positive integer`, {
        details: { host: host.name, maxChannels: limit },
      });
    }
    this.slots = new Slots(limit);
  }

  get closed(): boolean {
    return this.closing.signal.aborted;
  }

  /**
   * The live connection, opening one if there is none (one attempt at a time however many commands wait).
   * `signal` only stops this caller from waiting; the shared attempt goes on for the others.
   */
  async conn(signal: AbortSignal | undefined, onAbort: () => Error): Promise<Conn> {
    if (this.closed) throw this.closedError();
    const cur = this.current;
    if (cur !== undefined && cur.lost === undefined && !cur.retired) return cur;
    if (this.connecting === undefined) {
      const attempt = connect(this.host, this.log, this.closing.signal).then((c) => {
        const conn = new Conn(c.client, c.cipher);
        conn.once('lost', (reason: string) => {
          this.losses++;
          this.log.info({ reason }, 'connection lost');
          if (this.current === conn) this.current = undefined;
        });
        if (this.closed) {
          conn.end();
          throw this.closedError();
        }
        this.current = conn;
        return conn;
      });
      this.connecting = attempt;
      const clear = () => {
        if (this.connecting === attempt) this.connecting = undefined;
      };
      attempt.then(clear, clear);
    }
    const pending = this.connecting;
    if (signal === undefined) return await pending;
    if (signal.aborted) throw onAbort();
    return await new Promise<Conn>((resolve, reject) => {
      const abort = () => reject(onAbort());
      signal.addEventListener('abort', abort, { once: true });
      pending.then(
        (c) => {
          signal.removeEventListener('abort', abort);
          resolve(c);
        },
        (err: unknown) => {
          signal.removeEventListener('abort', abort);
          reject(err);
        },
      );
    });
  }

  /** A connection is open and takes new channels. */
  get hasLiveConnection(): boolean {
    const cur = this.current;
    return cur !== undefined && cur.lost === undefined && !cur.retired;
  }

  /** New commands get a new connection; this one ends once its channels have (after a reboot command). */
  retire(conn: Conn): void {
    if (this.current === conn) this.current = undefined;
    conn.retired = true;
    if (conn.active <= 0) conn.end();
  }

  /** The negotiated cipher of the live connection, if any. */
  get cipher(): string | undefined {
    return this.current?.cipher;
  }

  close(): void {
    this.closing.abort();
    this.current?.end();
    this.current = undefined;
  }

  closedError(): SshError {
    return new SshError('SSH_POOL_CLOSED', `the SSH pool was closed (host ${this.host.name})`, {
      details: { host: this.host.name, endpoint: endpointOf(this.host) },
    });
  }
}
