/** The embedding example in examples/ runs as a user would run it, and does what it says. */
import { spawnSync } from 'node:child_process';
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
  for (const computer of ['lv-linux-1', 'vm-windows-1', 'xc-linux-1']) {
    expect(r.stdout).toMatch(new RegExp(`${computer}: \\w+-Labbase\\d+-v0 sha256 [0-9a-f]{64}`));
  }
  expect(r.stdout.match(/finished .*: completed/g)).toHaveLength(3);
});
