/**
 * Runs a lab in its own process, for benchmarks that must not count the lab's CPU and memory as the
 * runner's: `node --import tsx src/lab/main.ts '<LabOptions as JSON>'` (or the options in the
 * `VCL_LAB_OPTIONS` environment variable). Prints one line of JSON on stdout once the lab listens:
 * `{ "inventory": ..., "dir": ..., "privateKeyPath": ..., "hosts": ... }`. Stops (and removes its temp dir)
 * on SIGTERM or SIGINT, and when its stdin is a pipe that closes (the parent went away).
 */
import { fstatSync } from 'node:fs';
import { startLab } from './lab.js';
import type { LabOptions } from './types.js';

function optionsFrom(text: string | undefined): LabOptions {
  if (text === undefined || text.trim() === '') return {};
  const parsed: unknown = JSON.parse(text);
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed))
    throw new Error('the lab options must be a JSON object');
  return parsed as LabOptions;
}

async function main(): Promise<void> {
  const options = optionsFrom(process.argv[2] ?? process.env.VCL_LAB_OPTIONS);
  const lab = await startLab(options);
  let stopping = false;
  const stop = () => {
    if (stopping) return;
    stopping = true;
    lab.stop().then(
      () => process.exit(0),
      (err: unknown) => {
        process.stderr.write(`lab: stop failed: ${(err as Error).message}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  // Only a pipe (Node's spawn makes it a socket pair) says "the parent is gone" by closing; a terminal or
  // /dev/null stdin says nothing.
  const stdin = fstatSync(0);
  if (stdin.isFIFO() || stdin.isSocket()) {
    process.stdin.on('end', stop);
    process.stdin.on('close', stop);
    process.stdin.resume();
  }
  process.stdout.write(
    `${JSON.stringify({ inventory: lab.inventory, dir: lab.dir, privateKeyPath: lab.privateKeyPath, hosts: lab.hosts })}\n`,
  );
}

main().catch((err: unknown) => {
  process.stderr.write(`lab: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
