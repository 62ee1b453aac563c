/**
 * Copies with verification in the same pass. Design from measurements on this project's machines (1 GiB
 * over loopback): streaming `cat` over an exec channel with AES-GCM runs at scp's speed (4.0 s vs 3.9-5.0 s)
 * while SFTP reads were 2-10x slower; hashing with Node's OpenSSL sha256 (~1.7 GB/s) on the bytes as they
 * pass costs far less than a second read with `sha256sum` (~0.3 GB/s). So: `cat` on the source, the hash
 * and byte count taken from the stream, the destination written under a temporary name, synced, checked,
 * and only then renamed into place. A local destination is written by `filesink.ts` (aligned slots,
 * `O_DIRECT`, the hash in a worker thread over the same slots, zero blocks left as holes); see
 * docs/performance-copy.md.
 *
 * Disk images (issue 16): when the source host and this machine have zstd (`zstd-plan.ts`), the source
 * sends one zstd frame (`zstd.ts`), so holes and zero runs cost nearly nothing on the wire; a local or zstd
 * destination writes the file sparse with `zstd -d -c --sparse > tmp` (locally hashed behind it,
 * `zstd-file.ts`), any other gets the data decompressed here. The recorded sha256 is always of every byte,
 * as `sha256sum` reads them.
 *
 * A copy to a host whose connection (to either host) drops goes on after reconnecting from the last
 * checkpoint the destination verifiably holds, instead of from zero (`copy-resume.ts`).
 */
import { randomBytes } from 'node:crypto';
import { chmod, open, realpath, rename, rm } from 'node:fs/promises';
import {
  dirname,
  basename as localBasename,
  join as localJoin,
  posix,
  resolve as resolvePath,
} from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pipeline, finished as streamFinished } from 'node:stream/promises';
import type { Logger } from '../log.js';
import {
  CheckpointHash,
  DEFAULT_CHECKPOINT_BYTES,
  digestOfLine,
  RESUME_READ_SCRIPT,
  RESUME_WRITE_SCRIPT,
  type ResumePoint,
  ZSTD_RESUME_READ_SCRIPT,
  ZSTD_RESUME_WRITE_SCRIPT,
} from './copy-resume.js';
import { isSshError, SshError, type SshErrorCode } from './errors.js';
import { openFileSink } from './filesink.js';
import type { RemoteProcess } from './process.js';
import type {
  CopyEndpoint,
  CopyOptions,
  CopyProgress,
  CopyResult,
  ExecOptions,
  ExecResult,
  SpawnOptions,
  SshHost,
} from './types.js';
import { type LocalDecompressor, startDecompressor, ZSTD_READ_SCRIPT, ZSTD_WRITE_SCRIPT } from './zstd.js';
import { discardZstdFile, startZstdFile } from './zstd-file.js';
import { type CompressionPlan, chooseCompression } from './zstd-plan.js';

/** What a copy needs from the pool. */
export interface CopyRunner {
  exec(host: SshHost, argv: readonly string[], options?: ExecOptions): Promise<ExecResult>;
  spawn(host: SshHost, argv: readonly string[], options?: SpawnOptions): Promise<RemoteProcess>;
  /**
   * Whether `host` has `zstd` (probed once per host and cached by the pool). Without it the copy never
   * compresses.
   */
  hasZstd?(host: SshHost, signal: AbortSignal): Promise<boolean>;
  /** How many connections to `host` dropped so far. Without it (and `killGroup`) a copy never resumes. */
  connectionLosses?(host: SshHost): number;
  /** Kills a process group an earlier connection left on `host`; true when confirmed. */
  killGroup?(host: SshHost, pid: number, signal?: AbortSignal): Promise<boolean>;
}

/** Every command of a copy carries the copy's tag (see `CopyOptions.tag`). */
function tagging(runner: CopyRunner, tag: string | undefined): CopyRunner {
  if (tag === undefined) return runner;
  return {
    exec: (host, argv, options) => runner.exec(host, argv, { ...options, tag }),
    spawn: (host, argv, options) => runner.spawn(host, argv, { ...options, tag }),
    ...(runner.hasZstd === undefined ? {} : { hasZstd: runner.hasZstd.bind(runner) }),
    ...(runner.connectionLosses === undefined
      ? {}
      : { connectionLosses: runner.connectionLosses.bind(runner) }),
    ...(runner.killGroup === undefined ? {} : { killGroup: runner.killGroup.bind(runner) }),
  };
}

const DEFAULT_IDLE_TIMEOUT_MS = 120_000;
const DEFAULT_PROGRESS_INTERVAL_MS = 500;
const LOCAL_READ_CHUNK = 1024 * 1024;
/** Cleanup after a failure gets its own short budget: a dead host must not hold up the error. */
const CLEANUP_TIMEOUT_MS = 5000;

interface Source {
  /** The bytes as they come off the wire: the file, or one zstd frame of it when `compressed`. */
  stream: Readable;
  compressed: boolean;
  /** Size when the source is a regular file. */
  total: number | undefined;
  /** Settles when the source side is over; rejects when it failed. */
  finished: Promise<void>;
  stop(): void;
  /** The remote reader's process group, once known. */
  pid?: () => number | undefined;
}

interface Destination {
  stream: Writable;
  finished: Promise<void>;
  stop(): void;
  /** Makes the data durable and moves it under the final name. */
  commit(): Promise<void>;
  /** Removes the temporary file (best effort). */
  discard(): Promise<void>;
  /**
   * Set when the destination hashes what it writes itself (a local file: the hash is taken from the very
   * memory the file is written from, in a worker thread): its digest once `stream` finished.
   */
  sha256?: () => string | undefined;
  /** With `sha256`: bytes the destination wrote, checked against the bytes read. */
  bytesWritten?: () => number;
  /** A host destination's temporary file and its writer's process group: what a resumed copy goes on with. */
  remote?: { tmp: string; pid: () => number | undefined };
}

/** What marks a copy's temporary file: `.<base>.vcl-tmp-<random>` beside the destination. */
const TEMP_INFIX = '.vcl-tmp-';

/**
 * A hidden name beside the destination (same file system, so the final rename is atomic). Random, so
 * that no two attempts at a copy ever write the same file: a writer left running by an earlier attempt
 * (its client killed) writes only into its own file, which `copyLeftoversCommand` removes by name.
 */
function tempName(join: (...p: string[]) => string, dir: string, base: string): string {
  return join(dir, `.${base}${TEMP_INFIX}${randomBytes(6).toString('hex')}`);
}

/**
 * The command (argv, for any host with a POSIX `find`) that removes the temporary files copies to `path`
 * left behind. A failed copy removes its own; only a copy whose process died (a kill, a crash) leaves one,
 * and a re-run of that copy, or its cleanup, sends this first. Matches this destination's temporary
 * files only: a base name with glob characters is refused rather than matched loosely. `-exec rm` rather
 * than `-delete`, which busybox's find may lack.
 */
export function copyLeftoversCommand(path: string): string[] {
  const dir = posix.dirname(path);
  const base = posix.basename(path);
  if (dir.startsWith('-') || base === '' || base === '.' || base === '..' || /[*?[\]\\]/.test(base))
    throw new SshError('SSH_CONFIG_INVALID', `cannot match the temporary files of ${path} safely`, {
      details: { path },
    });
  return [
    'find',
    dir,
    '-mindepth',
    '1',
    '-maxdepth',
    '1',
    '-type',
    'f',
    '-name',
    `.${base}${TEMP_INFIX}*`,
    '-exec',
    'rm',
    '-f',
    '--',
    '{}',
    '+',
  ];
}

function copyError(code: SshErrorCode, message: string, details: Record<string, unknown>, cause?: unknown) {
  return new SshError(code, message, { details, ...(cause === undefined ? {} : { cause }) });
}

/**
 * Reads the first line of `stream` (at most `limit` bytes) and puts back what follows it, so that the
 * stream then flows on from the first data byte. Undefined when the stream ended (or broke) before a line.
 */
function readFirstLine(stream: Readable, limit: number): Promise<string | undefined> {
  return new Promise((resolve) => {
    let head: Buffer = Buffer.alloc(0);
    const done = (line: string | undefined) => {
      stream.off('readable', onReadable);
      stream.off('end', onEnd);
      stream.off('close', onEnd);
      stream.off('error', onEnd);
      resolve(line);
    };
    const onEnd = () => done(undefined);
    const onReadable = () => {
      for (let chunk: Buffer | null = stream.read(); chunk !== null; chunk = stream.read()) {
        head = head.length === 0 ? chunk : Buffer.concat([head, chunk]);
        const nl = head.indexOf(0x0a);
        if (nl >= 0) {
          if (nl + 1 < head.length) stream.unshift(head.subarray(nl + 1));
          done(head.subarray(0, nl).toString('utf8'));
          return;
        }
        if (head.length > limit) {
          done(undefined);
          return;
        }
      }
    };
    stream.on('readable', onReadable);
    stream.once('end', onEnd);
    stream.once('close', onEnd);
    stream.once('error', onEnd);
  });
}

/**
 * The remote reader: `stat` prints size and kind on the first line of stdout, then `cat` streams the data,
 * in one command. A separate `stat` command beside the transfer cost a second session start on the host
 * (~0.1 s of sshd CPU each time), and the data waited for it.
 */
const DURABLE_MOVE =
  'chmod "$3" "$1" && { sync -- "$1" 2>/dev/null || sync; } && mv -f -- "$1" "$2" && ' +
  '{ sync -- "$(dirname -- "$2")" 2>/dev/null || true; }';

/**
 * Makes a finished file at `tmp` the durable `path` on its host: sets its mode, syncs its data (a `sync`
 * without file arguments where coreutils' is missing), renames it over `path`, then syncs the folder so the
 * new name survives a crash. The copies commit through it, and so does any step that makes an image on a
 * host by other means (qemu-img convert) before it is recorded.
 */
export function durableMoveCommand(tmp: string, path: string, mode = 0o644): string[] {
  return ['sh', '-c', DURABLE_MOVE, 'sh', tmp, path, mode.toString(8)];
}

const REMOTE_READER = 'stat -L -c %s:%F -- "$1" && exec cat -- "$1"';

/**
 * Opens the source for reading from byte `offset` (a resumed copy's; 0 otherwise). The size it reports is
 * the whole file's.
 */
async function openSource(
  runner: CopyRunner,
  from: CopyEndpoint,
  signal: AbortSignal,
  step: string | undefined,
  compressed: boolean,
  offset: number,
): Promise<Source> {
  if (from.host === undefined) {
    const fh = await open(from.path, 'r').catch((err: unknown) => {
      throw copyError(
        'COPY_FAILED',
        `cannot open ${from.path}: ${(err as Error).message}`,
        { path: from.path },
        err,
      );
    });
    const st = await fh.stat();
    const stream = fh.createReadStream({ highWaterMark: LOCAL_READ_CHUNK, start: offset });
    const finished = new Promise<void>((resolve, reject) => {
      stream.once('end', resolve);
      stream.once('error', (err) =>
        reject(
          copyError('COPY_FAILED', `reading ${from.path} failed: ${err.message}`, { path: from.path }, err),
        ),
      );
      stream.once('close', resolve);
    });
    return {
      stream,
      compressed: false,
      total: st.isFile() ? st.size : undefined,
      finished,
      stop: () => stream.destroy(),
    };
  }
  const host = from.host;
  const script =
    offset === 0
      ? compressed
        ? ZSTD_READ_SCRIPT
        : REMOTE_READER
      : compressed
        ? ZSTD_RESUME_READ_SCRIPT
        : RESUME_READ_SCRIPT;
  const args = offset === 0 ? [from.path] : [from.path, String(offset + 1)];
  const proc = await runner.spawn(host, ['sh', '-c', script, 'sh', ...args], {
    signal,
    maxStderrBytes: 64 * 1024,
    ...(step === undefined ? {} : { step }),
  });
  const failed = (r: { code: number | null; signal: string | null; stderr: string }) =>
    copyError(
      'COPY_FAILED',
      `reading ${host.name}:${from.path} failed (exit ${r.code ?? r.signal}): ${r.stderr.trim()}`,
      { host: host.name, path: from.path, stderr: r.stderr },
    );
  const finished = proc.done.then((r) => {
    if (r.code !== 0) throw failed(r);
  });
  finished.catch(() => {});
  const header = await readFirstLine(proc.stdout, 4096);
  const match = header === undefined ? null : /^(\d+):(.*)$/.exec(header);
  if (match === null) {
    // No size line: `stat` failed (no such file, no permission) and said why on stderr, or we were stopped.
    proc.stdout.resume();
    const r = await proc.done;
    throw copyError(
      'COPY_FAILED',
      `cannot read ${host.name}:${from.path}: ${r.code === 0 ? `unexpected first line ${JSON.stringify(header)}` : r.stderr.trim()}`,
      { host: host.name, path: from.path, stderr: r.stderr },
    );
  }
  const kind = match[2];
  return {
    stream: proc.stdout,
    compressed,
    total: kind === 'regular file' || kind === 'regular empty file' ? Number(match[1]) : undefined,
    finished,
    stop: () => proc.stop('SSH_ABORTED', `copy from ${host.name}:${from.path} stopped`),
    pid: () => proc.pid,
  };
}

async function fsyncDir(dir: string): Promise<void> {
  const dh = await open(dir, 'r');
  try {
    await dh.sync();
  } finally {
    await dh.close();
  }
}

async function openLocalDestination(path: string, mode: number): Promise<Destination> {
  const tmp = tempName(localJoin, dirname(path), localBasename(path));
  const writeFailed = (err: unknown) =>
    copyError('COPY_FAILED', `writing ${tmp} failed: ${(err as Error).message}`, { path, tmp }, err);
  // Fails before anything is read when the destination cannot be created at all.
  const sink = await openFileSink(tmp, { mode }).catch((err: unknown) => {
    throw writeFailed(err);
  });
  // 'close' comes after the file was written, fsynced and closed (or, after a failure, closed).
  const finished = new Promise<void>((resolve, reject) => {
    sink.once('close', resolve);
    sink.once('error', (err) => reject(writeFailed(err)));
  });
  finished.catch(() => {});
  return {
    stream: sink,
    finished,
    sha256: () => sink.sha256,
    bytesWritten: () => sink.bytesWritten,
    stop: () => sink.destroy(),
    async commit() {
      await chmod(tmp, mode);
      await rename(tmp, path);
      await fsyncDir(dirname(path));
    },
    async discard() {
      if (!sink.closed) {
        const closed = new Promise<void>((resolve) => sink.once('close', resolve));
        sink.destroy();
        await closed;
      }
      await rm(tmp, { force: true });
    },
  };
}

/** A local destination for a zstd frame: zstd writes it sparse, the file is hashed behind it. */
async function openZstdLocalDestination(path: string, mode: number, where: string): Promise<Destination> {
  // The absolute, real folder: the writer's descriptor is found by this name under /proc.
  const dir = await realpath(dirname(resolvePath(path))).catch((err: unknown) => {
    throw copyError('COPY_FAILED', `cannot write ${path}: ${(err as Error).message}`, { path }, err);
  });
  const tmp = tempName(localJoin, dir, localBasename(path));
  const z = startZstdFile(tmp, where);
  const finished = z.finished.catch((err: unknown) => {
    throw err instanceof SshError
      ? err
      : copyError('COPY_FAILED', `writing ${tmp} failed: ${(err as Error).message}`, { path, tmp }, err);
  });
  finished.catch(() => {});
  return {
    stream: z.stream,
    finished,
    sha256: z.sha256,
    bytesWritten: z.logicalBytes,
    stop: z.stop,
    async commit() {
      await chmod(tmp, mode);
      await rename(tmp, path);
      await fsyncDir(dirname(path));
    },
    discard: () => discardZstdFile(z, tmp),
  };
}

/**
 * A host destination: a writer into a temporary file beside `path`. With `resume`, the writer goes on with
 * that attempt's temporary file from its offset, once the destination proved it holds the same prefix.
 */
async function openRemoteDestination(
  runner: CopyRunner,
  host: SshHost,
  path: string,
  mode: number,
  signal: AbortSignal,
  step: string | undefined,
  log: Logger,
  compressed: boolean,
  resume: (ResumePoint & { tmp: string }) | undefined,
): Promise<Destination> {
  const tmp = resume?.tmp ?? tempName(posix.join, posix.dirname(path), posix.basename(path));
  const script =
    resume === undefined
      ? compressed
        ? ZSTD_WRITE_SCRIPT
        : 'umask 077 && exec cat > "$1"'
      : compressed
        ? ZSTD_RESUME_WRITE_SCRIPT
        : RESUME_WRITE_SCRIPT;
  const args = resume === undefined ? [tmp] : [tmp, String(resume.offset)];
  const stepOpt = step === undefined ? {} : { step };
  // The writer never renames by itself: a dropped connection also ends its stdin, and a partial file must
  // not look complete. The rename is a separate command, sent only after the checks passed.
  const proc = await runner.spawn(host, ['sh', '-c', script, 'sh', ...args], {
    signal,
    maxStderrBytes: 64 * 1024,
    ...stepOpt,
  });
  proc.stdin.on('error', () => {});
  if (resume !== undefined) {
    const held = digestOfLine(await readFirstLine(proc.stdout, 4096));
    if (held !== resume.prefixSha256) {
      proc.stdout.resume();
      proc.stop('SSH_ABORTED', `resuming the copy to ${host.name}:${path} stopped`);
      const r = await proc.done.catch((err: unknown) => err as SshError);
      throw copyError(
        'COPY_FAILED',
        held === undefined
          ? `cannot resume the copy to ${host.name}:${path}: ${'stderr' in r ? r.stderr.trim() : r.message}`
          : `cannot resume the copy to ${host.name}:${path}: its first ${resume.offset} bytes are not what was sent`,
        { host: host.name, path, tmp, offset: resume.offset, resumeMismatch: held !== undefined },
      );
    }
  }
  proc.stdout.resume();
  const finished = proc.done.then((r) => {
    if (r.code !== 0) {
      throw copyError(
        'COPY_FAILED',
        `writing ${host.name}:${tmp} failed (exit ${r.code ?? r.signal}): ${r.stderr.trim()}`,
        { host: host.name, path, tmp, stderr: r.stderr },
      );
    }
  });
  return {
    stream: proc.stdin,
    finished,
    remote: { tmp, pid: () => proc.pid },
    stop: () => proc.stop('SSH_ABORTED', `copy to ${host.name}:${path} stopped`),
    async commit() {
      const r = await runner.exec(host, durableMoveCommand(tmp, path, mode), {
        timeoutMs: 300_000,
        check: false,
        ...stepOpt,
      });
      if (r.code !== 0) {
        throw copyError(
          'COPY_FAILED',
          `cannot move the copy into place as ${host.name}:${path}: ${r.stderr.trim()}`,
          { host: host.name, path, tmp, stderr: r.stderr },
        );
      }
    },
    async discard() {
      // The writer must be gone first: a `cat > tmp` still running could create or extend the file after
      // the rm, leaving a temporary file behind.
      await Promise.race([
        proc.done.then(
          () => undefined,
          () => undefined,
        ),
        new Promise((resolve) => setTimeout(resolve, CLEANUP_TIMEOUT_MS).unref()),
      ]);
      try {
        await runner.exec(host, ['rm', '-f', '--', tmp], {
          timeoutMs: CLEANUP_TIMEOUT_MS,
          signal: AbortSignal.timeout(CLEANUP_TIMEOUT_MS),
          check: false,
        });
      } catch (err) {
        log.warn(
          { tmp, code: (err as SshError).code },
          'could not remove the temporary file of a failed copy',
        );
      }
    },
  };
}

/** Codes that say a connection (not a side) failed: a copy that saw one may resume. */
const CONNECTION_CODES: readonly SshErrorCode[] = [
  'SSH_DISCONNECTED',
  'SSH_UNREACHABLE',
  'SSH_CHANNEL_FAILED',
];
/** A copy whose connections keep dropping gives up after this many resumes. */
const MAX_RESUMES = 100;
const RECONNECT_BACKOFF_MS = [500, 1000, 2000, 5000];

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(t);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const t = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

export async function copyFile(
  untagged: CopyRunner,
  from: CopyEndpoint,
  to: CopyEndpoint,
  options: CopyOptions,
  log: Logger,
): Promise<CopyResult> {
  const runner = tagging(untagged, options.tag);
  const started = Date.now();
  const where = `${from.host ? `${from.host.name}:` : ''}${from.path} -> ${to.host ? `${to.host.name}:` : ''}${to.path}`;
  const details = (extra: Record<string, unknown> = {}) => ({
    from: { host: from.host?.name, path: from.path },
    to: { host: to.host?.name, path: to.path },
    ...extra,
  });
  const mode = options.mode ?? 0o644;
  const stepOpt = options.step === undefined ? {} : { step: options.step };
  // What ends the whole copy, resumed or not: the caller, the deadline, no data moving for too long.
  const whole = new AbortController();
  let fatal: unknown;
  // One attempt's sides. A dropped connection ends an attempt; the next goes on from the last checkpoint
  // the destination holds.
  let attempt = new AbortController();
  let failure: unknown;
  let attemptErrors: unknown[] = [];
  let source: Source | undefined;
  let dest: Destination | undefined;
  let decompressor: LocalDecompressor | undefined;
  const stopSides = () => {
    source?.stop();
    decompressor?.stop();
    dest?.stop();
  };
  const fail = (err: unknown) => {
    attemptErrors.push(err);
    if (failure !== undefined) return;
    failure = err;
    stopSides();
    attempt.abort();
  };
  const end = (err: unknown) => {
    fatal ??= err;
    whole.abort();
    fail(err);
  };
  const onAbort = () => end(copyError('SSH_ABORTED', `copy ${where} was aborted`, details({ bytes })));
  options.signal?.addEventListener('abort', onAbort, { once: true });
  const deadline =
    options.timeoutMs !== undefined && Number.isFinite(options.timeoutMs)
      ? setTimeout(
          () =>
            end(
              copyError(
                'SSH_TIMEOUT',
                `copy ${where} timed out after ${options.timeoutMs} ms`,
                details({ bytes }),
              ),
            ),
          options.timeoutMs,
        )
      : undefined;
  const idleLimit = options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_MS;
  let lastData = Date.now();
  const idle = setInterval(
    () => {
      if (Date.now() - lastData > idleLimit) {
        end(
          copyError(
            'SSH_TIMEOUT',
            `copy ${where}: no data moved for ${idleLimit} ms`,
            details({ bytes, idle: true, resumes }),
          ),
        );
      }
    },
    Math.min(1000, idleLimit),
  );
  const hash = new CheckpointHash(options.checkpointBytes ?? DEFAULT_CHECKPOINT_BYTES);
  /** Bytes of the file (logical: holes and zero runs count), and bytes that came over the wire. */
  let bytes = 0;
  let wireBytes = 0;
  let resumes = 0;
  let resentBytes = 0;
  const interval = options.progressIntervalMs ?? DEFAULT_PROGRESS_INTERVAL_MS;
  let lastProgress = 0;
  const progress = (done: boolean): CopyProgress => {
    const elapsedMs = Date.now() - started;
    return {
      bytes,
      wireBytes,
      compressed: source?.compressed ?? false,
      total: source?.total,
      bytesPerSecond: elapsedMs > 0 ? (bytes * 1000) / elapsedMs : 0,
      elapsedMs,
      done,
      resumes,
    };
  };
  const destHost = to.host;
  const canResume =
    options.resume !== false &&
    destHost !== undefined &&
    runner.killGroup !== undefined &&
    runner.connectionLosses !== undefined;
  const losses = () =>
    (from.host === undefined ? 0 : (runner.connectionLosses?.(from.host) ?? 0)) +
    (destHost === undefined ? 0 : (runner.connectionLosses?.(destHost) ?? 0));

  /**
   * Once the hosts answer again: stops what the failed attempt may have left running (a writer the
   * destination has not seen disconnect would write on), asks how much of the temporary file exists, and
   * rewinds to the last checkpoint at or below it. Waits as long as the idle limit allows.
   */
  const prepareResume = async (tmp: string, earlier: [SshHost | undefined, number | undefined][]) => {
    if (destHost === undefined || runner.killGroup === undefined) throw new Error('not resumable');
    for (let wait = 0; ; wait++) {
      if (fatal !== undefined) throw fatal;
      try {
        for (const [host, pid] of earlier) {
          if (host === undefined || pid === undefined) continue;
          if (!(await runner.killGroup(host, pid, whole.signal)))
            throw copyError(
              'SSH_DISCONNECTED',
              `could not confirm that ${host.name} stopped process ${pid}`,
              {
                host: host.name,
                pid,
              },
            );
        }
        const r = await runner.exec(destHost, ['stat', '-c', '%s', '--', tmp], {
          timeoutMs: 30_000,
          signal: whole.signal,
          check: false,
          ...stepOpt,
        });
        // No file (the writer never created it): start again from zero.
        const held = r.code === 0 ? Number(r.stdout.trim()) : 0;
        return { tmp, ...hash.rewind(Number.isSafeInteger(held) ? held : 0) };
      } catch (err) {
        if (fatal !== undefined) throw fatal;
        if (!isSshError(err, ...CONNECTION_CODES)) throw err;
        const delay = RECONNECT_BACKOFF_MS[Math.min(wait, RECONNECT_BACKOFF_MS.length - 1)] as number;
        log.info({ code: err.code, delayMs: delay }, 'copy waits for the hosts to answer again');
        await sleep(delay, whole.signal);
      }
    }
  };

  /** One pass from `resume` (or from the start) to a committed file. */
  const runAttempt = async (
    plan: CompressionPlan | undefined,
    resume: (ResumePoint & { tmp: string }) | undefined,
  ): Promise<CopyResult> => {
    const signal = AbortSignal.any([whole.signal, attempt.signal]);
    // Data a stopped attempt's streams still deliver must not reach the rewound hash.
    const current = attempt;
    const live = () => current === attempt;
    // The destination first: a folder we cannot write to fails the copy before the source is read.
    // A local destination of a zstd frame is this machine's own zstd (see zstd-file.ts).
    const localZstd = plan !== undefined && to.host === undefined;
    dest =
      to.host === undefined
        ? localZstd
          ? await openZstdLocalDestination(to.path, mode, where)
          : await openLocalDestination(to.path, mode)
        : await openRemoteDestination(
            runner,
            to.host,
            to.path,
            mode,
            signal,
            options.step,
            log,
            plan?.destDecompresses === true,
            resume,
          );
    // Awaited below; until then (or if the source cannot be opened) its failure is not "unhandled".
    dest.finished.catch(() => {});
    if (failure !== undefined) throw failure;
    source = await openSource(runner, from, signal, options.step, plan !== undefined, resume?.offset ?? 0);
    source.finished.catch(() => {});
    if (failure !== undefined) throw failure;
    const onProgress = options.onProgress;
    const destHashes = dest.sha256 !== undefined;
    const wire = source.stream;
    const flows: Promise<unknown>[] = [source.finished.catch(fail), dest.finished.catch(fail)];
    const tick = () => {
      const now = Date.now();
      lastData = now;
      if (onProgress !== undefined && now - lastProgress >= interval) {
        lastProgress = now;
        onProgress(progress(false));
      }
    };
    const logicalOf = dest.bytesWritten;
    if (localZstd && logicalOf !== undefined) {
      // The frame goes to the local zstd as it came; the file's bytes are counted as it writes them.
      wire.on('data', (chunk: Buffer) => {
        if (!live()) return;
        wireBytes += chunk.length;
        bytes = logicalOf();
        tick();
      });
      flows.push(pipeline(wire, dest.stream).catch(fail));
    } else {
      // The file's bytes: the wire itself, or what this machine's zstd makes of the frame.
      let logical: Readable = wire;
      if (plan !== undefined) {
        decompressor = startDecompressor(plan.zstd, where);
        logical = decompressor.output;
        flows.push(pipeline(wire, decompressor.input).catch(fail), decompressor.finished.catch(fail));
      }
      wire.on('data', (chunk: Buffer) => {
        if (!live()) return;
        wireBytes += chunk.length;
        lastData = Date.now();
      });
      logical.on('data', (chunk: Buffer) => {
        if (!live()) return;
        if (!destHashes) hash.update(chunk);
        bytes += chunk.length;
        tick();
      });
      if (plan?.destDecompresses === true) {
        // The frame goes on as it came (the destination's zstd checks its checksum and writes it sparse);
        // the data decompressed here is only counted and hashed.
        flows.push(pipeline(wire, dest.stream).catch(fail), streamFinished(logical).catch(fail));
      } else {
        flows.push(pipeline(logical, dest.stream).catch(fail));
      }
    }
    await Promise.all(flows);
    if (failure !== undefined) throw failure;
    if (localZstd && logicalOf !== undefined) bytes = logicalOf();
    const sha256 = destHashes ? dest.sha256?.() : hash.digest();
    const written = dest.bytesWritten?.() ?? bytes;
    if (sha256 === undefined || written !== bytes) {
      throw copyError(
        'COPY_FAILED',
        `copy ${where}: the destination wrote ${written} of ${bytes} bytes`,
        details({ bytes, written }),
      );
    }
    if (source.total !== undefined && bytes !== source.total) {
      throw copyError(
        'COPY_SIZE_MISMATCH',
        `copy ${where}: read ${bytes} bytes but the source is ${source.total} bytes (did it change?)`,
        details({ bytes, expectedBytes: source.total }),
      );
    }
    if (options.expectedSha256 !== undefined && sha256 !== options.expectedSha256.toLowerCase()) {
      throw copyError(
        'COPY_HASH_MISMATCH',
        `copy ${where}: sha256 ${sha256} differs from the expected ${options.expectedSha256}`,
        details({ bytes, sha256, expectedSha256: options.expectedSha256 }),
      );
    }
    await dest.commit();
    const durationMs = Date.now() - started;
    return {
      bytes,
      wireBytes,
      compressed: source.compressed,
      sha256,
      durationMs,
      bytesPerSecond: durationMs > 0 ? (bytes * 1000) / durationMs : 0,
      resumes,
      resentBytes,
    };
  };

  try {
    if (options.signal?.aborted) onAbort();
    if (fatal !== undefined) throw fatal;
    const plan: CompressionPlan | undefined = await chooseCompression(
      runner,
      from,
      to,
      options.compress !== false,
      whole.signal,
    );
    if (fatal !== undefined) throw fatal;
    let resume: (ResumePoint & { tmp: string }) | undefined;
    for (;;) {
      const lossesBefore = losses();
      try {
        const result = await runAttempt(plan, resume);
        options.onProgress?.(progress(true));
        log.info(
          {
            bytes,
            wireBytes,
            compressed: result.compressed,
            sha256: result.sha256,
            durationMs: result.durationMs,
            resumes,
            resentBytes,
          },
          'copy done',
        );
        return result;
      } catch (thrown) {
        const err = failure ?? thrown;
        stopSides();
        const tmp = dest?.remote?.tmp;
        const mismatch =
          isSshError(err, 'COPY_FAILED') &&
          (err.details as { resumeMismatch?: boolean }).resumeMismatch === true;
        const dropped =
          losses() > lossesBefore || [err, ...attemptErrors].some((e) => isSshError(e, ...CONNECTION_CODES));
        if (
          !canResume ||
          fatal !== undefined ||
          tmp === undefined ||
          resumes >= MAX_RESUMES ||
          !(dropped || mismatch)
        )
          throw err;
        const reached = bytes;
        const earlier: [SshHost | undefined, number | undefined][] = [
          [from.host, source?.pid?.()],
          [destHost, dest?.remote?.pid()],
        ];
        // Give the failed attempt's local pieces a moment to settle before their state is reused.
        await Promise.all(
          [source?.finished, decompressor?.finished, dest?.finished].map((p) => p?.catch(() => {})),
        );
        source = undefined;
        decompressor = undefined;
        failure = undefined;
        attemptErrors = [];
        attempt = new AbortController();
        if (mismatch) {
          // The destination's prefix is not what was sent: send everything again, into the same file.
          log.warn(
            { offset: resume?.offset },
            'the destination does not hold what was sent: copying from the start',
          );
          resume = { tmp, ...hash.rewind(0) };
        } else {
          log.warn({ code: (err as SshError).code, bytes: reached }, 'copy lost its connection: resuming');
          resume = await prepareResume(tmp, earlier);
        }
        resumes++;
        resentBytes += reached - resume.offset;
        bytes = resume.offset;
        log.info({ offset: resume.offset, resumes }, 'copy resumes');
      }
    }
  } catch (thrown) {
    // What stopped the copy (deadline, idle, caller) is the error, not the abort it caused in a side
    // still opening.
    const err = fatal ?? failure ?? thrown;
    stopSides();
    await dest?.discard().catch(() => {});
    const e =
      err instanceof SshError
        ? err
        : copyError(
            'COPY_FAILED',
            `copy ${where} failed: ${(err as Error).message}`,
            details({ bytes }),
            err,
          );
    if (options.step !== undefined) e.step ??= options.step;
    log.warn({ code: e.code, bytes, resumes, durationMs: Date.now() - started }, 'copy failed');
    throw e;
  } finally {
    clearTimeout(deadline);
    clearInterval(idle);
    options.signal?.removeEventListener('abort', onAbort);
  }
}
