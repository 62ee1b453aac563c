/**
 * Starts a lab in a child process (src/lab/main.ts under tsx), so that a benchmark measures the runner's
 * CPU time and memory without the lab's. The child stops when `stop()` is called, and also when this
 * process goes away (its stdin pipe closes).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { type Inventory, parseInventory } from '../inventory/schema.js';
import type { LabHostInfo, LabOptions } from './types.js';

export interface ChildLab {
  inventory: Inventory;
  /** The child's temp dir (removed when it stops). */
  dir: string;
  privateKeyPath: string;
  hosts: Record<string, LabHostInfo>;
  process: ChildProcess;
  /** SIGTERM, then SIGKILL after `graceMs` (default 5000). Resolves when the child has exited. */
  stop(graceMs?: number): Promise<void>;
}

const MAIN = fileURLToPath(new URL('./main.ts', import.meta.url));

export async function spawnLab(options: LabOptions = {}): Promise<ChildLab> {
  const child = spawn(process.execPath, ['--import', 'tsx', MAIN, JSON.stringify(options)], {
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  let line: string;
  try {
    line = await new Promise<string>((resolve, reject) => {
      createInterface({ input: child.stdout as NodeJS.ReadableStream }).once('line', resolve);
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`the lab process exited (${code}) before it was ready`)));
    });
  } catch (err) {
    child.kill('SIGKILL');
    throw err;
  }
  const printed = JSON.parse(line) as Omit<ChildLab, 'process' | 'stop' | 'inventory'> & {
    inventory: unknown;
  };
  return {
    ...printed,
    inventory: parseInventory(printed.inventory),
    process: child,
    async stop(graceMs = 5000) {
      if (child.exitCode !== null || child.signalCode !== null) return;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      await exited;
      clearTimeout(timer);
    },
  };
}
