import type { Readable } from 'node:stream';

/**
 * How a host's identity is checked during the SSH handshake. Verification is always on: a key is accepted
 * only when it matches a pinned fingerprint or a known_hosts entry, or (only with `acceptNew`) when the host
 * is not known at all.
 */
export interface SshHostKeyPolicy {
  /**
   * Pinned host key fingerprints, `SHA256:<base64 without padding>` exactly as `ssh-keygen -lf <key>.pub` or
   * `ssh-keyscan <host> | ssh-keygen -lf -` print them. When pins are given and none matches (and no
   * known_hosts entry does), the key is refused as a mismatch.
   */
  fingerprints?: readonly string[];
  /**
   * An OpenSSH known_hosts file (plain or hashed `|1|salt|hash` host names, `[host]:port` for ports other
   * than 22, `*`/`?` patterns, `!` negation, `@revoked` markers; `@cert-authority` lines are ignored).
   * Default: `~/.ssh/known_hosts` when no `fingerprints` are pinned, none otherwise.
   */
  knownHostsFile?: string;
  /**
   * Trust on first use, like OpenSSH's `StrictHostKeyChecking accept-new`: a host with no entry at all is
   * accepted and its key appended to `knownHostsFile`. A changed key is still refused. Default false.
   */
  acceptNew?: boolean;
}

/**
 * One SSH host as the transport sees it: plain data, so that an inventory (validated elsewhere) maps onto
 * it directly. Only `name`, `host`, `username` and `privateKey` are required.
 */
export interface SshHost {
  /** The host's name in the inventory: the pool's key for its connection, and the `host` field in logs. */
  name: string;
  /** DNS name or address to connect to. */
  host: string;
  /** TCP port. Default 22. */
  port?: number;
  username: string;
  /**
   * The private key for public key authentication: key material as a Buffer (or as a string holding a
   * `-----BEGIN ...` block), or else a string naming the key file, read at each connection attempt.
   * Never logged.
   */
  privateKey: Buffer | string;
  /** Passphrase of an encrypted private key. Never logged. */
  passphrase?: string;
  /** Host key verification. Default: `~/.ssh/known_hosts`, no pins, no accept-new. */
  hostKey?: SshHostKeyPolicy;
  /**
   * Channels (commands, copies) open at once on this host's one connection; more wait in a FIFO queue.
   * Default 8, two below OpenSSH's default `MaxSessions` 10: the transport keeps those two for the extra
   * short command that kills a remote process after a timeout.
   */
  maxChannels?: number;
  /** SSH keep-alive interval. Default 5000 ms. */
  keepaliveIntervalMs?: number;
  /**
   * Unanswered keep-alives after which the connection counts as dead and is dropped (its commands fail
   * with `SSH_DISCONNECTED`). Default 3: a frozen host is noticed within about
   * `keepaliveIntervalMs * (keepaliveCountMax + 1)`, 20 s by default.
   */
  keepaliveCountMax?: number;
  /** Budget of one connection attempt: TCP connect, SSH handshake and authentication. Default 20000 ms. */
  readyTimeoutMs?: number;
  /**
   * How long to keep retrying a host that refuses connections or does not complete the handshake (a
   * machine still booting), with exponential back-off between attempts. Authentication failures and host
   * key problems are never retried. Default 60000 ms.
   */
  connectDeadlineMs?: number;
}

/** Options of one remote command. */
export interface ExecOptions {
  /**
   * Limit on the command's run time, from the moment its channel is open until its exit status. When
   * it passes, the remote process group is killed and the call fails with `SSH_TIMEOUT`. Waiting for a
   * connection (bounded by the host's `connectDeadlineMs`) or for a free channel does not count. Default
   * 60000 ms; `Infinity` for none.
   */
  timeoutMs?: number;
  /** Aborts the command at any stage (queued, connecting, running): fails with `SSH_ABORTED`. */
  signal?: AbortSignal;
  /** Data for the command's standard input, which is then closed. Without it stdin is closed at once. */
  stdin?: string | Buffer | Readable;
  /**
   * Most bytes kept of each of stdout and stderr. Past it the remote process is killed and the call fails
   * with `SSH_OUTPUT_LIMIT`. Default 16 MiB.
   */
  maxOutputBytes?: number;
  /**
   * The command is expected to take the connection down (shutdown, reboot): the session closing before an
   * exit status is then a success (`disconnected: true`) instead of `SSH_DISCONNECTED`, and the connection
   * is dropped afterwards so the next command reconnects.
   */
  expectDisconnect?: boolean;
  /**
   * When true (default), a non-zero exit or a death by signal fails with `SshExitError`
   * (`SSH_EXIT_NONZERO` / `SSH_EXIT_SIGNAL`). When false, such results are returned.
   */
  check?: boolean;
  /** The capture step to name in errors and logs. */
  step?: string;
  /**
   * The runner execution's tag (`leftovers.ts`), exported as `VCL_CAPTURE_TAG` to the command and
   * everything it starts, so that a later runner can find and stop them.
   */
  tag?: string;
}

/** What a finished remote command produced. */
export interface ExecResult {
  /** Exit status, or null when the process died by a signal or the session closed first. */
  code: number | null;
  /** Signal that killed the process (`SIGKILL`...), or null. */
  signal: string | null;
  stdout: string;
  stderr: string;
  durationMs: number;
  /** True only with `expectDisconnect`, when the session closed before an exit status came. */
  disconnected: boolean;
}

/** Options of a streaming remote command (see `SshPool.spawn`). */
export interface SpawnOptions {
  /** Limit on the whole run, as in `ExecOptions.timeoutMs`. Default: none. */
  timeoutMs?: number;
  signal?: AbortSignal;
  /** Most stderr bytes kept (the rest is drained and dropped). Default 1 MiB. */
  maxStderrBytes?: number;
  step?: string;
  /**
   * The runner execution's tag (`leftovers.ts`), exported as `VCL_CAPTURE_TAG` to the command and
   * everything it starts, so that a later runner can find and stop them.
   */
  tag?: string;
}

/** Progress of a copy, reported at most every `progressIntervalMs` and once at the end. */
export interface CopyProgress {
  /** Bytes of the file copied so far (logical: holes and zero runs count as the zeros they read as). */
  bytes: number;
  /** Bytes that crossed the network from the source (the zstd frame when `compressed`). */
  wireBytes: number;
  /** Whether the source sends a zstd frame (both ends have zstd). */
  compressed: boolean;
  /** Size of the source when known. */
  total: number | undefined;
  /** Average rate since the copy started. */
  bytesPerSecond: number;
  elapsedMs: number;
  done: boolean;
  /** Times the copy resumed after a dropped connection (`bytes` then went back to the resume point). */
  resumes: number;
}

/** A file on a host, or on this machine when `host` is absent. */
export type CopyEndpoint = { host: SshHost; path: string } | { host?: undefined; path: string };

export interface CopyOptions {
  signal?: AbortSignal;
  /** Limit on the whole copy. Default: none. */
  timeoutMs?: number;
  /** Fails the copy when no byte moved for this long. Default 120000 ms. */
  idleTimeoutMs?: number;
  onProgress?: (progress: CopyProgress) => void;
  /** Default 500 ms. */
  progressIntervalMs?: number;
  /** When given, the copy fails (and leaves nothing) unless the data's sha256 (hex) equals it. */
  expectedSha256?: string;
  /**
   * Compress on the wire with zstd when the source host and this machine have it (and let a remote
   * destination with zstd write the file sparse). Default true; without zstd anywhere the copy is raw.
   */
  compress?: boolean;
  /**
   * Resume after a dropped connection, from the last checkpoint the destination holds (verified there by
   * its sha256), when the destination is a host. The hosts must answer again within `idleTimeoutMs`.
   * Default true.
   */
  resume?: boolean;
  /** Bytes between resume checkpoints. Default 64 MiB. */
  checkpointBytes?: number;
  /** File mode of the destination. Default 0o644 (0o600 would be usual for disk images with secrets). */
  mode?: number;
  step?: string;
  /**
   * The runner execution's tag (`leftovers.ts`), exported as `VCL_CAPTURE_TAG` to the command and
   * everything it starts, so that a later runner can find and stop them.
   */
  tag?: string;
}

export interface CopyResult {
  /** Bytes of the file (its size, holes included). */
  bytes: number;
  /** Bytes that crossed the network from the source. */
  wireBytes: number;
  /** Whether the copy went compressed (zstd) on the wire. */
  compressed: boolean;
  /** sha256 of the bytes copied (hex), computed while copying. */
  sha256: string;
  durationMs: number;
  bytesPerSecond: number;
  /** Times the copy resumed after a dropped connection. */
  resumes: number;
  /** Bytes of the file sent more than once (those after each resume point that had been sent before). */
  resentBytes: number;
}
