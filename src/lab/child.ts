/**
 * Starts a lab in a child process (main.ts under tsx in a clone, the compiled main.js in the package), so
 * that a benchmark measures the runner's CPU time and memory without the lab's. The child stops when `stop()` is called, and also when this
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

// This module runs as TypeScript under tsx (a clone, the tests, the benchmarks) or compiled (the installed
// package, where tsx is not a dependency): the child runs the same form.
const FROM_SOURCE = import.meta.url.endsWith('.ts');
const MAIN = fileURLToPath(new URL(FROM_SOURCE ? './main.ts' : './main.js', import.meta.url));

export async function spawnLab(options: LabOptions = {}): Promise<ChildLab> {
  const loader = FROM_SOURCE ? ['--import', 'tsx'] : [];
  const child = spawn(process.execPath, [...loader, MAIN, JSON.stringify(options)], {
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
