/**
 * A host daemon embedding the runner with crash resume: run it with `npx tsx examples/daemon.ts`. It
 * imports the sources of this clone; a project that installed the package imports from 'vcl-capture'.
 *
 * `runner.start()` first resumes what a previous process left unfinished in the store (from the
 * persisted snapshots), then keeps taking captures queued in the store, by this process
 * (`runner.enqueue`) or by others (`vcl-capture capture --queue`). SIGTERM stops gracefully: each
 * running capture reaches its next state, which is persisted, and the next start resumes it.
 *
 * A real daemon keeps its store file and inventory across restarts; this example starts the built-in
 * lab so it runs anywhere, queues three captures, cancels one, and stops when the other two are done.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, createRunner, openSqliteStore, startLab } from '../src/index.js';

const dir = mkdtempSync(join(tmpdir(), 'vcl-daemon-example-'));
const lab = await startLab({ powerDelayMs: 20 });
const store = openSqliteStore(join(dir, 'captures.sqlite')); // a real daemon: a fixed path
const runner = createRunner({
  inventory: lab.inventory, // or loadInventoryFile('/etc/vcl-capture/inventory.yaml')
  store,
  logger: createLogger({ level: 'warn' }),
  pollMs: 20, // real hosts: leave the default (2 s)
  // leaseMs: 60_000 (how long another process waits before taking over a capture of a silent runner)
});

const finished = new Map<string, string>();
runner.on((event) => {
  if (event.type === 'resumed') console.log(`resumed ${event.captureId} at ${JSON.stringify(event.state)}`);
  if (event.type === 'finished') {
    finished.set(event.captureId, event.result.status);
    console.log(`finished ${event.captureId}: ${event.result.status}`);
  }
});

let stopping = false;
const stop = async () => {
  if (stopping) process.exit(143); // a second signal: leave at once, the store stays consistent
  stopping = true;
  await runner.stop(); // running captures stop at their next state, persisted for the next start
  await store.close();
  await lab.stop();
  rmSync(dir, { recursive: true, force: true });
};
process.once('SIGTERM', () => void stop().then(() => process.exit(0)));

const report = await runner.start();
console.log(`started: ${report.resumed.length} resumed, ${report.started.length} queued captures taken`);

// What an API handler of the host daemon would do: queue work, list it, cancel some of it.
const queued = await Promise.all(
  ['lv-linux-1', 'vm-windows-1', 'xc-linux-1'].map((computer) =>
    runner.enqueue({
      computer,
      image: { osName: lab.computer(computer).os, prettyName: 'Nightly base', owner: 'daemon-example' },
    }),
  ),
);
const unwanted = queued[2];
if (unwanted) await runner.cancel(unwanted.id, 'not needed tonight');
console.log(`unfinished: ${(await runner.list()).map((c) => `${c.computer}=${c.status}`).join(' ')}`);

while (finished.size < queued.length && !stopping) await new Promise((r) => setTimeout(r, 50));
for (const q of queued) {
  const c = await store.getCapture(q.id);
  console.log(`${q.computer}: ${c?.status}${c?.status === 'completed' ? ` ${c.image.name}` : ''}`);
}
if (!stopping) await stop();
