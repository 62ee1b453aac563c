/**
 * zstd on the wire (issue 16). Disk images are mostly holes and zero runs: `zstd -1` on the source turns
 * them into a few bytes per 128 KiB block (RLE blocks) and sends the data at close to its own size, so the
 * copy moves what the disk holds instead of its virtual size. Node 20 has no zstd of its own and the
 * native bindings on npm fetch prebuilt binaries at install time (not possible everywhere this runs), so the
 * runner uses Debian's `zstd` binary as a child process, like the hosts do. The remote scripts here are
 * fixed strings (the lab recognises them by their text, test/lab/words.test.ts guards that); every path is
 * an argument.
 */
import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { SshError } from './errors.js';

/**
 * The compressing reader: the size line as `REMOTE_READER` prints it, then the file as one zstd frame
 * (level 1: the fastest, still RLE for zero runs; `-T0`: one worker per core of the host; the frame
 * carries zstd's default XXH64 content checksum, which the decompressor checks).
 */
export const ZSTD_READ_SCRIPT = 'stat -L -c %s:%F -- "$1" && exec zstd -q -c -1 -T0 -- "$1"';

/**
 * The decompressing writer: zstd writes the file sparse (`--sparse`: it seeks over zero runs instead of
 * writing them) and checks the frame's checksum. Through the shell's redirection rather than `-o`: with
 * `-o` zstd removes the file when the stream breaks, and a copy that resumes after a dropped connection
 * (copy-resume.ts) goes on from what arrived. Like `cat > tmp`, it never renames: the commit does.
 */
export const ZSTD_WRITE_SCRIPT = 'umask 077 && exec zstd -q -d -c --sparse > "$1"';

let localZstd: Promise<string | undefined> | undefined;

/**
 * Where this machine's `zstd` is (looked up once per process on PATH), or undefined. `VCL_CAPTURE_ZSTD=0`
 * turns compression off for every copy (to compare, or to rule it out when something goes wrong).
 */
export function findLocalZstd(): Promise<string | undefined> {
  localZstd ??= (async () => {
    if (process.env.VCL_CAPTURE_ZSTD === '0') return undefined;
    for (const dir of (process.env.PATH ?? '').split(delimiter)) {
      if (dir === '') continue;
      const candidate = join(dir, 'zstd');
      try {
        await access(candidate, constants.X_OK);
        return candidate;
      } catch {
        // Not in this folder.
      }
    }
    return undefined;
  })();
  return localZstd;
}

/** Forgets the cached lookup (tests that change PATH or VCL_CAPTURE_ZSTD). */
export function resetLocalZstd(): void {
  localZstd = undefined;
}

/** A local `zstd -d -c`: write the frame to `input`, read the data from `output`. */
export interface LocalDecompressor {
  input: Writable;
  output: Readable;
  /** Settles when the process exited: rejects with `COPY_FAILED` (and zstd's message) unless it exited 0. */
  finished: Promise<void>;
  stop(): void;
}

export function startDecompressor(zstd: string, what: string): LocalDecompressor {
  const child: ChildProcessWithoutNullStreams = spawn(zstd, ['-q', '-d', '-c'], {
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  const finished = zstdOutcome(child, {
    cannotRun: `cannot run ${zstd} to decompress ${what}`,
    failed: `decompressing ${what} failed`,
    details: { zstd },
  });
  return {
    input: child.stdin,
    output: child.stdout,
    finished,
    stop: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    },
  };
}

/**
 * How a zstd child ends: resolves on exit 0; rejects with `COPY_FAILED` saying what it was doing and the
 * start of its stderr otherwise, or when it cannot start. Never an unhandled rejection: callers await it.
 */
export function zstdOutcome(
  child: ChildProcessWithoutNullStreams,
  what: { cannotRun: string; failed: string; details: Record<string, unknown> },
): Promise<void> {
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (s: string) => {
    if (stderr.length < 16 * 1024) stderr += s;
  });
  const outcome = new Promise<void>((resolve, reject) => {
    child.once('error', (err) =>
      reject(
        new SshError('COPY_FAILED', `${what.cannotRun}: ${err.message}`, {
          details: what.details,
          cause: err,
        }),
      ),
    );
    child.once('close', (code, signal) => {
      if (code === 0) resolve();
      else
        reject(
          new SshError('COPY_FAILED', `${what.failed} (zstd exit ${code ?? signal}): ${stderr.trim()}`, {
            details: { ...what.details, stderr },
          }),
        );
    });
  });
  outcome.catch(() => {});
  return outcome;
}
