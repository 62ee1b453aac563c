/**
 * Embedding the runner in a daemon: run it with `npx tsx examples/embed.ts`. It imports the sources of this
 * clone; a project that installed the package imports the same names from 'vcl-capture'.
 *
 * A real daemon loads its inventory with `loadInventoryFile('inventory.yaml')`; this example starts the
 * built-in lab instead so it runs anywhere, and captures one computer of each provisioner at once.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, createRunner, openSqliteStore, startLab } from '../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'vcl-embed-'));
const lab = await startLab({ powerDelayMs: 20 });
const store = openSqliteStore(join(dir, 'captures.sqlite'));
const runner = createRunner({
  inventory: lab.inventory, // or loadInventoryFile('inventory.yaml')
  store,
  logger: createLogger({ level: 'warn' }),
  pollMs: 20, // real hosts: leave the default (2 s)
});

// Every state change, copy progress and end of every capture, for a daemon's own bookkeeping.
const off = runner.on((event) => {
  if (event.type === 'finished') console.log(`finished ${event.captureId}: ${event.result.status}`);
});

try {
  const handles = await Promise.all(
    ['lv-linux-1', 'vm-windows-1', 'xc-linux-1', 'px-linux-1'].map((computer) =>
      runner.capture({
        computer,
        image: { osName: lab.computer(computer).os, prettyName: 'Lab base', owner: 'embed-example' },
        // endState: 'off', timeouts: { copyMs: 3_600_000 }, id: 'my-own-id'
      }),
    ),
  );
  // handle.cancel() would run the capture's cleanup; handle.actor is the live XState actor.
  for (const handle of handles) {
    const result = await handle.result;
    console.log(
      result.status === 'completed'
        ? `${handle.computer}: ${result.image.name} sha256 ${result.artifact.sha256}`
        : `${handle.computer}: ${result.status} (${result.error.code} in ${result.error.step})`,
    );
  }
} finally {
  off();
  await runner.close();
  await store.close();
  await lab.stop();
  rmSync(dir, { recursive: true, force: true });
}
