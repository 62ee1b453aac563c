/**
 * Finding what an earlier, dead runner left running on a host. Every command of one runner execution of a
 * capture carries the same tag in its environment (`VCL_CAPTURE_TAG`, exported by the transport's command
 * prefix in process.ts, inherited by everything the command starts, also by children that left its
 * process group); the tag is recorded in the store before the first command on a host starts. A runner
 * that takes the capture over sends {@link LEFTOVER_SWEEP_SCRIPT} with the earlier tags: it kills every
 * process whose environment carries one of them, and succeeds once none is left.
 */
import { randomBytes } from 'node:crypto';

/** The environment variable that carries the tag. */
export const TAG_VARIABLE = 'VCL_CAPTURE_TAG';

/** 16 lower-case hex digits: safe in a shell word and in a `case` pattern without quoting. */
const TAG_PATTERN = /^[0-9a-f]{16}$/;

/** A fresh tag for one runner execution of one capture. */
export function newRemoteTag(): string {
  return randomBytes(8).toString('hex');
}

export function isRemoteTag(value: string): boolean {
  return TAG_PATTERN.test(value);
}

/** `tag`, or a thrown error: a tag reaches a remote shell unquoted. */
export function checkRemoteTag(tag: string): string {
  if (!isRemoteTag(tag)) throw new Error(`not a remote command tag: ${JSON.stringify(tag)}`);
  return tag;
}

/**
 * `sh -c <this> sh <tag>...`: kills (SIGKILL) every process whose environment holds one of the tags, then
 * looks again, up to 50 times 0.1 s, until none is left. Prints `killed <n>`; exit 0 when none is left, 1
 * (`left <n>` on stderr) when some survived (a process in uninterruptible sleep), 3 when this host has no
 * readable `/proc/<pid>/environ` (not Linux: nothing can be found, so nothing was done). Processes of
 * other users are not readable and are not ours anyway; a zombie has an empty environment and counts as
 * gone. The script itself and its `tr` children do not carry the tags.
 */
export const LEFTOVER_SWEEP_SCRIPT =
  '[ -r /proc/self/environ ] && cd /proc || exit 3; killed=0; round=0; ' +
  'while :; do found=0; ' +
  'for p in [0-9]*; do ' +
  'e=" $(tr "\\000" " " 2>/dev/null < "$p/environ") "; ' +
  'for t in "$@"; do case "$e" in *" VCL_CAPTURE_TAG=$t "*) ' +
  'kill -KILL "$p" 2>/dev/null && found=$((found + 1)); break;; esac; done; ' +
  'done; ' +
  '[ "$round" = 0 ] && killed=$found; ' +
  '[ "$found" = 0 ] && { echo "killed $killed"; exit 0; }; ' +
  'round=$((round + 1)); ' +
  '[ "$round" -ge 50 ] && { echo "killed $killed"; echo "left $found" >&2; exit 1; }; ' +
  'sleep 0.1 2>/dev/null || sleep 1; ' +
  'done';

/** The sweep as an argv for `exec` (the tags must satisfy {@link isRemoteTag}). */
export function leftoverSweep(tags: readonly string[]): string[] {
  return ['sh', '-c', LEFTOVER_SWEEP_SCRIPT, 'sh', ...tags.map(checkRemoteTag)];
}

/** What a sweep's exit says. */
export type SweepOutcome =
  | { kind: 'clean'; killed: number }
  | { kind: 'survivors'; killed: number; left: number }
  | { kind: 'unsupported' }
  /** The script itself did not run through (no `sh`, killed...). */
  | { kind: 'failed' };

export function sweepOutcome(r: { code: number | null; stdout: string; stderr: string }): SweepOutcome {
  const killed = Number(/^killed (\d+)$/m.exec(r.stdout)?.[1] ?? 0);
  if (r.code === 0) return { kind: 'clean', killed };
  if (r.code === 3) return { kind: 'unsupported' };
  const left = /^left (\d+)$/m.exec(r.stderr)?.[1];
  return r.code === 1 && left !== undefined
    ? { kind: 'survivors', killed, left: Number(left) }
    : { kind: 'failed' };
}
