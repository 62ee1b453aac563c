/**
 * Looking at processes on this machine: the loopback sshd runs its commands here, so "the remote process
 * is gone" can be checked directly in /proc.
 */
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { setTimeout as sleep } from 'node:timers/promises';

/** Live (not zombie) PIDs whose `/proc/<pid>/<file>`, split at NUL bytes, has the entry `entry`. */
function livePidsWith(file: 'cmdline' | 'environ', entry: string): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      if (!readFileSync(`/proc/${pid}/${file}`, 'latin1').split('\0').includes(entry)) continue;
      const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
      // A zombie has exited already; only its parent has not collected it yet.
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state !== 'Z') out.push(Number(pid));
    } catch {
      // Ended while we looked.
    }
  }
  return out;
}

/** PIDs whose command line contains `needle` (a unique argument the test gave its command). */
export function pidsWithArg(needle: string): number[] {
  return livePidsWith('cmdline', needle);
}

/** PIDs whose environment holds `VCL_CAPTURE_TAG=<tag>` (a runner execution's commands). */
export function pidsWithTag(tag: string): number[] {
  return livePidsWith('environ', `VCL_CAPTURE_TAG=${tag}`);
}

/** PIDs with a file open whose path starts with `prefix` (a copy's writer, by its temporary file). */
export function pidsWithOpenFile(prefix: string): number[] {
  const out: number[] = [];
  for (const pid of readdirSync('/proc')) {
    if (!/^\d+$/.test(pid)) continue;
    try {
      for (const fd of readdirSync(`/proc/${pid}/fd`)) {
        if (readlinkSync(`/proc/${pid}/fd/${fd}`).startsWith(prefix)) {
          out.push(Number(pid));
          break;
        }
      }
    } catch {
      // Ended while we looked, or not ours to read.
    }
  }
  return out;
}

/** Waits until `check()` is true, polling, or fails after `timeoutMs`. */
export async function waitFor(check: () => boolean, timeoutMs: number, what: string): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(20);
  }
}
