/**
 * The runner against the built-in lab over real SSH: a capture of every provisioner x OS completes, the
 * image in the repository is the source disk byte for byte, and the store says so.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { createRunner, type Runner } from '../../src/runner/runner.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';

let lab: Lab;
let store: SqliteCaptureStore;
let runner: Runner;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-runner-'));
  lab = await startLab({ powerDelayMs: 20 });
  store = openSqliteStore(join(dir, 'store.sqlite'));
  runner = createRunner({ inventory: lab.inventory, store, pollMs: 20 });
});

afterAll(async () => {
  await runner?.close();
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('captures against the lab', () => {
  it.each(['lv-linux-1', 'lv-windows-1', 'vm-linux-1', 'vm-windows-1', 'xc-linux-1', 'xc-windows-1'])(
    '%s completes with the source disk in the repository',
    async (computer) => {
      const source = await lab.diskSha256(computer);
      const handle = await runner.capture({
        computer,
        image: { osName: lab.computer(computer).os, prettyName: `Base ${computer}`, owner: 'test' },
      });
      const result = await handle.result;
      if (result.status !== 'completed') throw new Error(`${result.status}: ${JSON.stringify(result.error)}`);
      const repo = lab.inventory.repositories[lab.inventory.computers[computer]?.repository ?? ''];
      expect(repo).toBeDefined();
      expect(await lab.sha256(repo?.host ?? '', result.artifact.path)).toBe(result.artifact.sha256);
      expect(result.artifact.sha256).toBe(source);
      const record = await store.getCapture(handle.id);
      expect(record?.status).toBe('completed');
      expect((await store.getComputer(computer))?.state).toBe('reload');
      // The source is never modified.
      expect(await lab.diskSha256(computer)).toBe(source);
      expect(lab.internalErrors).toEqual([]);
    },
  );
});
