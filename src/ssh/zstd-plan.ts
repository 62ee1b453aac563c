/**
 * Which ends of a copy speak zstd. The source compresses only when it is a host with `zstd` and this
 * machine has one to decompress with (the runner always sees the data: it hashes it); a remote destination
 * with `zstd` then receives the frame as it came and writes it sparse itself, one without gets the data
 * decompressed here and written by `cat`. Anything missing falls back to today's raw stream, never fails.
 */
import type { SshHost } from './types.js';
import { findLocalZstd } from './zstd.js';

export interface CompressionPlan {
  /** This machine's zstd, to decompress the source's frame. */
  zstd: string;
  /** The remote destination decompresses the frame itself (it is forwarded as it came). */
  destDecompresses: boolean;
}

export interface CompressionProbe {
  hasZstd?(host: SshHost, signal: AbortSignal): Promise<boolean>;
}

export async function chooseCompression(
  runner: CompressionProbe,
  from: { host?: SshHost | undefined },
  to: { host?: SshHost | undefined },
  wanted: boolean,
  signal: AbortSignal,
): Promise<CompressionPlan | undefined> {
  const probe = runner.hasZstd?.bind(runner);
  if (!wanted || from.host === undefined || probe === undefined) return undefined;
  const zstd = await findLocalZstd();
  if (zstd === undefined) return undefined;
  const [sourceHas, destHas] = await Promise.all([
    probe(from.host, signal),
    to.host === undefined ? Promise.resolve(false) : probe(to.host, signal),
  ]);
  if (!sourceHas) return undefined;
  return { zstd, destDecompresses: destHas };
}

/** The probe the pool sends: POSIX `command -v` (a shell builtin, hence `sh -c`), exit 0 when found. */
export const HAS_TOOL_SCRIPT = 'command -v "$1"';
export const ZSTD_PROBE: readonly string[] = ['sh', '-c', HAS_TOOL_SCRIPT, 'sh', 'zstd'];
