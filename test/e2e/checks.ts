/**
 * What the end-to-end suite reads back after a capture: the step timings from the CLI's JSON log, the
 * audit trail and image revisions from the store (through the CLI, as a user reads them), files' hashes,
 * and files out of a captured ext2 disk with debugfs.
 */
import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { type CommandResult, run } from './libvirt.js';

export interface StepTiming {
  step: string;
  durationMs: number;
  ok: boolean;
}

/** Every step a capture ran, in order, from the runner's debug log (`step done` / `step failed`). */
export function stepTimings(logFile: string): StepTiming[] {
  const out: StepTiming[] = [];
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    const o = JSON.parse(line) as { msg?: string; step?: string; durationMs?: number };
    if ((o.msg === 'step done' || o.msg === 'step failed') && o.step && typeof o.durationMs === 'number')
      out.push({ step: o.step, durationMs: o.durationMs, ok: o.msg === 'step done' });
  }
  return out;
}

/** What the transport logged when the capture's copy completed (the last `copy done` of the log). */
export function copyDone(logFile: string): {
  bytes: number;
  wireBytes: number;
  resumes: number;
  resentBytes: number;
} {
  let last: { bytes: number; wireBytes: number; resumes: number; resentBytes: number } | undefined;
  for (const line of readFileSync(logFile, 'utf8').split('\n')) {
    if (!line.startsWith('{')) continue;
    const o = JSON.parse(line) as { msg?: string };
    if (o.msg === 'copy done') last = o as typeof last;
  }
  if (last === undefined) throw new Error(`no "copy done" in ${logFile}`);
  return last;
}

/** The log file of the rig's n-th CLI call. */
export function cliLog(dir: string, n: number): string {
  return join(dir, 'logs', `cli-${n}.jsonl`);
}

export function printTimings(title: string, timings: StepTiming[], totalMs: number): void {
  const lines = timings.map(
    (t) => `  ${t.step.padEnd(26)} ${String(t.durationMs).padStart(6)} ms${t.ok ? '' : ' (failed)'}`,
  );
  console.log(`${title} (${totalMs} ms in all):\n${lines.join('\n')}`);
}

export async function sha256File(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/** `debugfs -R '<request>' <image>` on an ext2/3/4 image (read-only). */
export function debugfs(image: string, request: string): Promise<CommandResult> {
  return run('debugfs', ['-R', request, image]);
}

export function qemuImg(args: string[]): Promise<CommandResult> {
  return run('qemu-img', args, undefined, 120_000);
}

export interface AuditEvent {
  seq: number;
  at: string;
  type: string;
  step: string | null;
  stateValue: unknown;
}

export interface CaptureRecord {
  id: string;
  status: string;
  endState: string;
  events: AuditEvent[];
  lastError: { code: string; step: string; message: string } | null;
}

/** The steps the audit trail shows, in order (consecutive repeats folded). */
export function auditSteps(record: CaptureRecord): string[] {
  const steps: string[] = [];
  for (const e of record.events) {
    if (e.step && steps.at(-1) !== e.step) steps.push(e.step);
  }
  return steps;
}
