import { type Logger, silentLogger } from '../log.js';
import { DEFAULTS } from './connect.js';
import { copyFile } from './copy.js';
import { SshError, SshExitError } from './errors.js';
import { HostLink } from './link.js';
import { probeSshBanner } from './probe.js';
import { collect, commandName, killEarlierGroup, type RemoteProcess, startProcess } from './process.js';
import type {
  CopyEndpoint,
  CopyOptions,
  CopyResult,
  ExecOptions,
  ExecResult,
  SpawnOptions,
  SshHost,
} from './types.js';
import { ZSTD_PROBE } from './zstd-plan.js';

export const EXEC_DEFAULTS = {
  timeoutMs: 60_000,
  maxOutputBytes: 16 * 1024 * 1024,
  maxStderrBytes: 1024 * 1024,
} as const;

export interface SshPoolOptions {
  /** Parent logger; the pool logs through `child({ component: 'ssh', host })`. Default: silent. */
  logger?: Logger;
}

/**
 * Every SSH connection of one run: one connection per host, opened on first use and shared by every
 * command and copy on that host, at most `maxChannels` channels at once (more wait in FIFO order), reopened
 * after it drops. Close it when the run ends.
 */
export class SshPool {
  private readonly links = new Map<string, HostLink>();
  /** Per host (link key): whether it has zstd, once a probe answered. */
  private readonly zstdOn = new Map<string, boolean>();
  private readonly log: Logger;
  private closed = false;

  constructor(options: SshPoolOptions = {}) {
    this.log = (options.logger ?? silentLogger()).child({ component: 'ssh' });
  }

  /**
   * Runs `argv` on `host` (each word quoted for a POSIX shell; no shell syntax is interpreted) and collects
   * its output as UTF-8 text. Fails with `SshExitError` (`SSH_EXIT_NONZERO`/`SSH_EXIT_SIGNAL`) unless
   * `check: false`, or with an `SshError`: `SSH_TIMEOUT`, `SSH_ABORTED`, `SSH_OUTPUT_LIMIT` (the remote
   * process group was killed), `SSH_DISCONNECTED` (unless `expectDisconnect`), or a connection error.
   */
  async exec(host: SshHost, argv: readonly string[], options: ExecOptions = {}): Promise<ExecResult> {
    const link = this.link(host);
    const name = commandName(argv);
    const log = childLog(link.log, { command: name, ...(options.step ? { step: options.step } : {}) });
    const maxOutput = options.maxOutputBytes ?? EXEC_DEFAULTS.maxOutputBytes;
    const proc = await startProcess(
      link,
      argv,
      {
        timeoutMs: options.timeoutMs ?? EXEC_DEFAULTS.timeoutMs,
        signal: options.signal,
        expectDisconnect: options.expectDisconnect === true,
        maxStderrBytes: maxOutput,
        killOnStderrLimit: true,
        step: options.step,
        tag: options.tag,
      },
      log,
    );
    const stdout = collect(proc.stdout, maxOutput, () =>
      proc.stop('SSH_OUTPUT_LIMIT', `${name} on ${host.name} wrote more than ${maxOutput} bytes to stdout`),
    );
    feedStdin(proc, options.stdin);
    const result = { ...(await proc.done), stdout: stdout.text() };
    log.info(
      {
        durationMs: result.durationMs,
        exit: result.code,
        signal: result.signal,
        disconnected: result.disconnected,
      },
      'command done',
    );
    if (options.check !== false && !result.disconnected && (result.code !== 0 || result.signal !== null)) {
      throw new SshExitError(host.name, name, result, options.step);
    }
    return result;
  }

  /**
   * Starts `argv` on `host` and hands over its streams, for output too large to hold in memory. Resolves
   * once the command runs; `done` settles when it is over (any exit status resolves; stopping,
   * disconnection and timeouts reject). The caller must consume `stdout`.
   */
  async spawn(host: SshHost, argv: readonly string[], options: SpawnOptions = {}): Promise<RemoteProcess> {
    const link = this.link(host);
    const log = childLog(link.log, {
      command: commandName(argv),
      ...(options.step ? { step: options.step } : {}),
    });
    return await startProcess(
      link,
      argv,
      {
        timeoutMs: options.timeoutMs ?? Number.POSITIVE_INFINITY,
        signal: options.signal,
        expectDisconnect: false,
        maxStderrBytes: options.maxStderrBytes ?? EXEC_DEFAULTS.maxStderrBytes,
        killOnStderrLimit: false,
        step: options.step,
        tag: options.tag,
      },
      log,
    );
  }

  /**
   * Copies a file between two endpoints (host to local, local to host, host to host) in one pass that also
   * computes the data's sha256 and size. The data lands under a temporary name next to the destination,
   * is synced, and is renamed over `to.path` only once everything checked out: a failed copy leaves nothing
   * under the final name. Errors: `COPY_FAILED` (a side failed: missing file, full disk...),
   * `COPY_SIZE_MISMATCH`, `COPY_HASH_MISMATCH`, or the transport's `SSH_*` codes (`SSH_TIMEOUT` also for
   * `idleTimeoutMs`).
   */
  async copy(from: CopyEndpoint, to: CopyEndpoint, options: CopyOptions = {}): Promise<CopyResult> {
    const label = (e: CopyEndpoint) => (e.host === undefined ? e.path : `${e.host.name}:${e.path}`);
    const log = childLog(this.log, {
      copy: `${label(from)} -> ${label(to)}`,
      ...(options.step ? { step: options.step } : {}),
    });
    return await copyFile(this, from, to, options, log);
  }

  /**
   * Whether `host` has `zstd` on its PATH: `command -v zstd` in `sh -c`, once per host (the answer is
   * kept for the pool's life; a probe that could not run is not kept, and counts as "no").
   */
  async hasZstd(host: SshHost, signal: AbortSignal): Promise<boolean> {
    const key = linkKey(host);
    const known = this.zstdOn.get(key);
    if (known !== undefined) return known;
    try {
      const r = await this.exec(host, ZSTD_PROBE, { check: false, timeoutMs: 30_000, signal });
      const has = r.code === 0 && r.stdout.trim() !== '';
      this.zstdOn.set(key, has);
      this.log.debug({ host: host.name, zstd: has }, 'zstd probe');
      return has;
    } catch (err) {
      // The copy that asked opens its own commands next and reports the host's real problem.
      if (signal.aborted) throw err;
      return false;
    }
  }

  /** How many of the pool's connections to `host` dropped so far. */
  connectionLosses(host: SshHost): number {
    return this.links.get(linkKey(host))?.losses ?? 0;
  }

  /**
   * Kills remote process group `pid` on `host` (a command started over an earlier connection), connecting
   * again if needed. True when confirmed; connection failures reject.
   */
  async killGroup(host: SshHost, pid: number, signal?: AbortSignal): Promise<boolean> {
    return await killEarlierGroup(this.link(host), pid, signal);
  }

  /**
   * Whether `host`'s sshd answers now, without an SSH handshake: true at once while the pool holds a live
   * connection to it; else a TCP connection that waits for the server's SSH identification line within
   * `timeoutMs` (refused, reset, closed or silent: false). For waits on a computer going down or coming
   * up, where most full connection attempts would be refused; it never starts the pool's connection.
   */
  async answers(host: SshHost, options: { timeoutMs: number; signal?: AbortSignal }): Promise<boolean> {
    if (this.closed) return false;
    if (this.links.get(linkKey(host))?.hasLiveConnection === true) return true;
    return await probeSshBanner(host, options);
  }

  /** The cipher negotiated with `host`'s live connection, if there is one (for logs and benchmarks). */
  cipherOf(host: SshHost): string | undefined {
    return this.links.get(linkKey(host))?.cipher;
  }

  /** Channels in use and commands waiting for one, on `host`. */
  channelsOf(host: SshHost): { inUse: number; queued: number } {
    const link = this.links.get(linkKey(host));
    return { inUse: link?.slots.inUse ?? 0, queued: link?.slots.queued ?? 0 };
  }

  /**
   * Ends every connection. Running commands fail with `SSH_DISCONNECTED`, waiting ones with
   * `SSH_POOL_CLOSED`; later calls fail with `SSH_POOL_CLOSED`.
   */
  async close(): Promise<void> {
    this.closed = true;
    for (const link of this.links.values()) link.close();
    this.links.clear();
  }

  private link(host: SshHost): HostLink {
    if (this.closed) {
      throw new SshError('SSH_POOL_CLOSED', `the SSH pool was closed (host ${host.name})`, {
        details: { host: host.name },
      });
    }
    const key = linkKey(host);
    let link = this.links.get(key);
    if (link === undefined) {
      link = new HostLink(host, this.log.child({ host: host.name }));
      this.links.set(key, link);
    }
    return link;
  }
}

/** A child logger, or the logger itself when it is silent (a child per command costs, and logs nothing). */
function childLog(log: Logger, bindings: Record<string, unknown>): Logger {
  return log.level === 'silent' ? log : log.child(bindings);
}

/** Two inventory entries with the same name but another address or user get their own connections. */
function linkKey(host: SshHost): string {
  return JSON.stringify([host.name, host.host, host.port ?? DEFAULTS.port, host.username]);
}

function feedStdin(proc: RemoteProcess, stdin: ExecOptions['stdin']): void {
  // A channel closed under us (timeout, disconnect) errors its writable side; `done` reports why.
  proc.stdin.on('error', () => {});
  // Ending it again (a fast command's channel may be closed by now) would only make an Error to ignore.
  const ended = proc.stdin.writableEnded || proc.stdin.destroyed;
  if (stdin === undefined) {
    if (!ended) proc.stdin.end();
  } else if (typeof stdin === 'string' || Buffer.isBuffer(stdin)) {
    if (!ended) proc.stdin.end(stdin);
  } else {
    stdin.pipe(proc.stdin);
    stdin.on('error', () => proc.stop('SSH_ABORTED', 'the stdin stream of the command failed'));
  }
}
