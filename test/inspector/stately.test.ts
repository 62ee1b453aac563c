/** `--stately`: inspection events reach a real @statelyai/inspect WebSocket receiver, redacted. */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { WebSocketServer } from 'ws';
import { secretsOfInventory } from '../../src/inspector/redact.js';
import { statelyBridge } from '../../src/inspector/stately.js';
import { startLab } from '../../src/lab/index.js';
import { createRunner } from '../../src/runner/runner.js';
import { openSqliteStore } from '../../src/store/index.js';

it('sends the capture actors to a Stately receiver without secrets', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'vcl-stately-'));
  const server = new WebSocketServer({ host: '127.0.0.1', port: 0 });
  await new Promise((r) => server.once('listening', r));
  const frames: string[] = [];
  server.on('connection', (socket) => socket.on('message', (m) => frames.push(String(m))));
  const lab = await startLab({ powerDelayMs: 20 });
  const store = openSqliteStore(join(dir, 's.sqlite'));
  const { port } = server.address() as { port: number };
  const bridge = statelyBridge(`ws://127.0.0.1:${port}`, secretsOfInventory(lab.inventory));
  const runner = createRunner({ inventory: lab.inventory, store, pollMs: 20, inspect: bridge.inspect });
  try {
    const handle = await runner.capture({
      computer: 'lv-linux-1',
      image: { osName: 'linux', prettyName: 'Stately', owner: 't' },
    });
    expect((await handle.result).status).toBe('completed');
    type Frame = { type: string; snapshot?: { value?: unknown } };
    const parsed = () => frames.map((f) => JSON.parse(f) as Frame);
    const completedSeen = () =>
      parsed().some((e) => JSON.stringify(e.snapshot?.value ?? '') === '"completed"');
    // The bridge sends asynchronously: wait for the last frame rather than for a fixed time.
    for (const until = Date.now() + 15_000; !completedSeen() && Date.now() < until; )
      await new Promise((r) => setTimeout(r, 20));
    const events = parsed();
    expect(events.some((e) => e.type === '@xstate.actor')).toBe(true);
    expect(events.some((e) => JSON.stringify(e.snapshot?.value ?? '') === '"completed"')).toBe(true);
    const key = readFileSync(lab.privateKeyPath, 'utf8');
    const keyLines = key.split('\n').filter((l) => l.length > 20 && !l.startsWith('-----'));
    for (const f of frames) for (const line of keyLines) expect(f.includes(line)).toBe(false);
  } finally {
    bridge.stop();
    await runner.close();
    await store.close();
    await lab.stop();
    server.close();
    rmSync(dir, { recursive: true, force: true });
  }
});
