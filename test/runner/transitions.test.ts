/**
 * The audit trail of a capture against the lab when the store is slow to write transitions: the state
 * a closing step runs in (record_revision, or the cleanup's release_computer) is written before the
 * closing transaction, so no transition is refused as a write to a finished capture. Found by the
 * network-namespace suite under load (a cancel's cleanup state missing from the events).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { labComputerName, startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { createRunner, type Runner } from '../../src/runner/runner.js';
import { type CaptureStore, openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import { overriding } from '../helpers/store-override.js';

/** Each transition write waits this long first, as on a loaded database server. */
const SLOW_WRITE_MS = 150;

let lab: Lab;
let store: SqliteCaptureStore;
let runner: Runner;
let dir: string;

/** The store, with every recordTransition delayed (fault injection; the real SQLite store underneath). */
function slowTransitions(real: SqliteCaptureStore): CaptureStore {
  return overriding<CaptureStore>(real, {
    recordTransition: async (...args) => {
      await sleep(SLOW_WRITE_MS);
      return real.recordTransition(...args);
    },
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-transitions-'));
  lab = await startLab({ powerDelayMs: 20 });
  store = openSqliteStore(join(dir, 'store.sqlite'));
  runner = createRunner({ inventory: lab.inventory, store: slowTransitions(store), pollMs: 20 });
});

afterAll(async () => {
  await runner?.close();
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** The capture's events as `type state` lines, in the store's order. */
async function trail(id: string): Promise<string[]> {
  const detail = await store.getCapture(id);
  return (detail?.events ?? []).map((e) =>
    `${e.type} ${e.stateValue ? JSON.stringify(e.stateValue) : ''}`.trim(),
  );
}

describe('a slow transition write never loses the closing step’s state', () => {
  it('a completed capture records entering record_revision, then its completion', async () => {
    const computer = labComputerName('libvirt-linux', 1);
    const handle = await runner.capture({
      computer,
      image: { osName: lab.computer(computer).os, prettyName: 'Slow store', owner: 'test' },
    });
    const result = await handle.result;
    expect(result.status).toBe('completed');
    const lines = await trail(handle.id);
    expect(lines.slice(-2)).toEqual(['state.entered {"capturing":"record_revision"}', 'capture.completed']);
  });

  it('a cancelled capture records entering its cleanup, then the cancellation', async () => {
    const computer = labComputerName('proxmox-linux', 1);
    // Every command on the guest hangs until the cancel, so the capture is in pre_capture when it comes.
    const hang = lab.faults.add({
      kind: 'hangCommand',
      host: computer,
      match: /./,
      times: Number.POSITIVE_INFINITY,
    });
    try {
      const handle = await runner.capture({
        computer,
        image: { osName: lab.computer(computer).os, prettyName: 'Slow store cancel', owner: 'test' },
      });
      await expect.poll(() => hang.fired, { timeout: 10_000 }).toBeGreaterThan(0);
      await runner.cancel(handle.id, 'test');
      hang.clear();
      const result = await handle.result;
      expect(result.status).toBe('cancelled');
      const lines = await trail(handle.id);
      expect(lines.slice(-2)).toEqual(['state.entered {"cleanup":"release_computer"}', 'capture.cancelled']);
    } finally {
      lab.faults.clear();
    }
  });
});
