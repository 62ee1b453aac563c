/** The lab in its own process (for benchmarks): it prints its inventory, answers, and cleans up on SIGTERM. */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { describe, expect, it } from 'vitest';
import { type Inventory, parseInventory } from '../../src/inventory/schema.js';
import { inventoryHosts } from '../../src/runner/remote.js';
import { SshPool } from '../../src/ssh/index.js';

describe('src/lab/main.ts', () => {
  it('starts a lab with the given options, prints the inventory, stops on SIGTERM', async () => {
    const child = spawn(
      process.execPath,
      ['--import', 'tsx', 'src/lab/main.ts', JSON.stringify({ computers: { 'libvirt-linux': 2 } })],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    try {
      const line = await new Promise<string>((resolve, reject) => {
        createInterface({ input: child.stdout }).once('line', resolve);
        child.once('exit', () => reject(new Error('the lab exited before printing its inventory')));
      });
      const printed = JSON.parse(line) as { inventory: Inventory; dir: string };
      const inventory = parseInventory(printed.inventory);
      expect(Object.keys(inventory.computers)).toEqual(['lv-linux-1', 'lv-linux-2']);
      const pool = new SshPool();
      try {
        const host = inventoryHosts(inventory).get('lv-linux-2');
        if (host === undefined) throw new Error('no host lv-linux-2');
        const r = await pool.exec(host, ['hostname']);
        expect(r.stdout).toBe('lv-linux-2\n');
      } finally {
        await pool.close();
      }
      expect(existsSync(printed.dir)).toBe(true);
      child.kill('SIGTERM');
      expect(await exited).toBe(0);
      expect(existsSync(printed.dir)).toBe(false);
    } finally {
      child.kill('SIGKILL');
    }
  }, 20_000);
});
