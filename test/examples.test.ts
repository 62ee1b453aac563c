/** The embedding example in examples/ runs as a user would run it, and does what it says. */
import { spawn, spawnSync } from 'node:child_process';
import { expect, it } from 'vitest';

it('examples/embed.ts captures one computer per provisioner through createRunner', () => {
  const r = spawnSync(
    process.execPath,
    ['--import', 'tsx', new URL('../examples/embed.ts', import.meta.url).pathname],
    {
      encoding: 'utf8',
      timeout: 60_000,
    },
  );
  expect(r.stderr).not.toMatch(/Error/);
  expect(r.status).toBe(0);
  for (const computer of ['lv-linux-1', 'vm-windows-1', 'xc-linux-1', 'px-linux-1']) {
    expect(r.stdout).toMatch(new RegExp(`${computer}: \\w+-Labbase\\d+-v0 sha256 [0-9a-f]{64}`));
  }
  expect(r.stdout.match(/finished .*: completed/g)).toHaveLength(4);
});

it('examples/daemon.ts starts a runner, queues, lists and cancels through it, and stops', async () => {
  const child = spawn(
    process.execPath,
    ['--import', 'tsx', new URL('../examples/daemon.ts', import.meta.url).pathname],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => {
    stdout += d.toString();
  });
  child.stderr.on('data', (d: Buffer) => {
    stderr += d.toString();
  });
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  expect(stderr).not.toMatch(/Error/);
  expect(code).toBe(0);
  expect(stdout).toMatch(/^started: 0 resumed, 0 queued captures taken$/m);
  expect(stdout).toMatch(/^unfinished: lv-linux-1=queued vm-windows-1=queued$/m);
  expect(stdout).toMatch(/^lv-linux-1: completed linux-Nightlybase\d+-v0$/m);
  expect(stdout).toMatch(/^vm-windows-1: completed windows-Nightlybase\d+-v0$/m);
  expect(stdout).toMatch(/^xc-linux-1: cancelled$/m);
  expect(stdout.match(/^finished .*: completed$/gm)).toHaveLength(2);
}, 60_000);
