/** The lab in its own process (for benchmarks): it prints its inventory, answers, and cleans up. */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { describe, expect, it, onTestFinished } from 'vitest';
import { inventoryHosts } from '../../src/inventory/hosts.js';
import { spawnLab } from '../../src/lab/child.js';
import { SshPool } from '../../src/ssh/index.js';

describe('a lab in a child process', () => {
  it('spawnLab: starts with the given options, answers, stops and removes its temp dir', async () => {
    const lab = await spawnLab({ computers: { 'libvirt-linux': 2 } });
    // Also when the test fails or times out.
    onTestFinished(() => lab.stop(0));
    expect(Object.keys(lab.inventory.computers)).toEqual(['lv-linux-1', 'lv-linux-2']);
    const host = inventoryHosts(lab.inventory).get('lv-linux-2');
    if (host === undefined) throw new Error('no host lv-linux-2');
    const pool = new SshPool();
    try {
      expect((await pool.exec(host, ['hostname'])).stdout).toBe('lv-linux-2\n');
    } finally {
      await pool.close();
    }
    expect(existsSync(lab.dir)).toBe(true);
    await lab.stop();
    expect(lab.process.exitCode).toBe(0);
    expect(existsSync(lab.dir)).toBe(false);
  }, 20_000);

  it('main.ts also stops when its stdin pipe closes (the parent went away)', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', 'src/lab/main.ts', '{"computers":{}}'], {
      stdio: ['pipe', 'pipe', 'inherit'],
    });
    // A `finally` after a hung await would never run: this does, even on a timeout.
    onTestFinished(() => {
      child.kill('SIGKILL');
    });
    const line = await new Promise<string>((resolve) =>
      createInterface({ input: child.stdout }).once('line', resolve),
    );
    const { dir } = JSON.parse(line) as { dir: string };
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    child.stdin.end();
    expect(await exited).toBe(0);
    expect(existsSync(dir)).toBe(false);
  }, 20_000);
});
