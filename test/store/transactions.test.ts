/**
 * Every store operation that writes more than one row is one transaction: a failure injected between
 * its writes must leave no trace in any table.
 *
 * Failures are injected with real triggers (SQLite's `RAISE(ABORT)`, a PL/pgSQL `RAISE EXCEPTION` on
 * PostgreSQL) created through a second connection, so the store runs its unmodified code. Each trigger's `WHEN` also requires the operation's earlier
 * writes to be visible, which proves the failure struck in the middle of the transaction, after them: if
 * they were not there the trigger would not fire and the operation would succeed, failing the test.
 */
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CaptureStore } from '../../src/store/index.js';
import { type OpenedStore, openEach, type StoreBackend, storeBackends } from './backends.js';
import { dump, expectVclError, openStore, REPO, SHA, seed, tempFolder } from './helpers.js';

const base = { imageId: 12345, provisioner: 'libvirt', os: 'linux', repository: REPO } as const;
const failure = { code: 'STEP_FAILED', step: 'copy_image', message: 'qemu-img convert exited 1' };
const artifact = { path: 'vmwarewin7-Base12345-v0.qcow2', sizeBytes: 1024, sha256: SHA, format: 'qcow2' };

/**
 * The failing trigger, in the backend's SQL: `timing` is `BEFORE INSERT ON t` / `BEFORE UPDATE ON t`,
 * `when` a condition both databases read alike.
 */
function failingTrigger(backend: StoreBackend['name'], timing: string, when: string): string {
  if (backend === 'sqlite')
    return `CREATE TRIGGER inject_failure ${timing} WHEN ${when}
       BEGIN SELECT RAISE(ABORT, 'injected failure'); END`;
  return `CREATE FUNCTION inject_failure() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN IF ${when} THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$;
     CREATE TRIGGER inject_failure ${timing} FOR EACH ROW EXECUTE FUNCTION inject_failure()`;
}

function dropTrigger(backend: StoreBackend['name'], timing: string): string {
  if (backend === 'sqlite') return 'DROP TRIGGER inject_failure';
  return `DROP TRIGGER inject_failure ON ${timing.split(' ').pop()}; DROP FUNCTION inject_failure()`;
}

interface Case {
  name: string;
  /** Brings the store to where the operation can run. */
  setup?: (s: CaptureStore) => Promise<unknown>;
  /** `BEFORE INSERT ON t` / `BEFORE UPDATE ON t`: the write that fails. */
  timing: string;
  /** Which row fails, and the earlier writes of the same operation that must be visible by then. */
  when: string;
  act: (s: CaptureStore) => Promise<unknown>;
}

const running = (s: CaptureStore) => s.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' });

const CASES: Case[] = [
  {
    name: 'createCapture, failing at the capture insert after the revision insert',
    timing: 'BEFORE INSERT ON captures',
    when: "EXISTS (SELECT 1 FROM image_revisions WHERE name = 'vmwarewin7-Base12345-v0')",
    act: running,
  },
  {
    name: 'createCapture, failing at the reservation (revision, capture and first event written)',
    timing: 'BEFORE UPDATE ON computers',
    when: `NEW.capture_id = 'cap-1'
      AND EXISTS (SELECT 1 FROM image_revisions WHERE name = 'vmwarewin7-Base12345-v0')
      AND EXISTS (SELECT 1 FROM capture_events WHERE capture_id = 'cap-1' AND type = 'capture.created')`,
    act: running,
  },
  {
    name: 'createCapture, failing at its last write (the reservation event)',
    timing: 'BEFORE INSERT ON capture_events',
    when: `NEW.type = 'computer.reserved'
      AND EXISTS (SELECT 1 FROM computers WHERE name = 'pc-01' AND capture_id = 'cap-1' AND state = 'image')`,
    act: running,
  },
  {
    name: 'reserveComputer, failing at the capture becoming running (computer taken, event written)',
    setup: (s) => s.createCapture({ ...base, id: 'cap-1', computer: 'pc-01', reserve: false }),
    timing: 'BEFORE UPDATE ON captures',
    when: `NEW.status = 'running'
      AND EXISTS (SELECT 1 FROM computers WHERE name = 'pc-01' AND capture_id = 'cap-1')
      AND EXISTS (SELECT 1 FROM capture_events WHERE capture_id = 'cap-1' AND type = 'computer.reserved')`,
    act: (s) => s.reserveComputer('cap-1'),
  },
  {
    name: 'recordTransition, failing at the audit event after the state change',
    setup: running,
    timing: 'BEFORE INSERT ON capture_events',
    when: `NEW.type = 'state.entered'
      AND EXISTS (SELECT 1 FROM captures WHERE id = 'cap-1' AND state_value = '"copy_image"')`,
    act: (s) =>
      s.recordTransition('cap-1', {
        stateValue: 'copy_image',
        snapshot: { value: 'copy_image' },
        machineVersion: 'libvirt@1',
        error: failure,
        event: { type: 'state.entered', step: 'copy_image' },
      }),
  },
  {
    name: 'completeCapture, failing at the computer release (revision un-deleted, capture completed)',
    setup: running,
    timing: 'BEFORE UPDATE ON computers',
    when: `NEW.state = 'reload'
      AND EXISTS (SELECT 1 FROM image_revisions WHERE name = 'vmwarewin7-Base12345-v0' AND deleted = 0)
      AND EXISTS (SELECT 1 FROM captures WHERE id = 'cap-1' AND status = 'completed')`,
    act: (s) => s.completeCapture('cap-1', artifact),
  },
  {
    name: 'completeCapture, failing at its last write (the audit event)',
    setup: running,
    timing: 'BEFORE INSERT ON capture_events',
    when: `NEW.type = 'capture.completed'
      AND EXISTS (SELECT 1 FROM computers WHERE name = 'pc-01' AND state = 'reload' AND capture_id IS NULL)`,
    act: (s) => s.completeCapture('cap-1', artifact),
  },
  {
    name: 'failCapture, failing at the capture update after the computer went to maintenance',
    setup: running,
    timing: 'BEFORE UPDATE ON captures',
    when: `NEW.status = 'failed'
      AND EXISTS (SELECT 1 FROM computers WHERE name = 'pc-01' AND state = 'maintenance' AND capture_id IS NULL)`,
    act: (s) => s.failCapture('cap-1', failure, 'maintenance'),
  },
  {
    name: 'failCapture, failing at its last write (the audit event)',
    setup: running,
    timing: 'BEFORE INSERT ON capture_events',
    when: `NEW.type = 'capture.failed' AND EXISTS (SELECT 1 FROM captures WHERE id = 'cap-1' AND status = 'failed')`,
    act: (s) => s.failCapture('cap-1', failure, 'maintenance'),
  },
  {
    name: 'cancelCapture with restore, failing at its last write (the audit event)',
    setup: running,
    timing: 'BEFORE INSERT ON capture_events',
    when: `NEW.type = 'capture.cancelled'
      AND EXISTS (SELECT 1 FROM computers WHERE name = 'pc-01' AND state = 'available' AND capture_id IS NULL)`,
    act: (s) => s.cancelCapture('cap-1', { ...failure, code: 'CANCELLED' }, 'restore'),
  },
  {
    name: 'registerComputers, failing at the third computer',
    timing: 'BEFORE INSERT ON computers',
    when: `NEW.name = 'pc-12' AND EXISTS (SELECT 1 FROM computers WHERE name = 'pc-11')`,
    act: (s) => s.registerComputers([{ name: 'pc-10' }, { name: 'pc-11' }, { name: 'pc-12' }]),
  },
  {
    name: 'setProductionRevision, failing after the previous production revision was cleared',
    setup: async (s) => {
      for (const [i, pc] of ['pc-01', 'pc-02'].entries()) {
        await s.createCapture({ ...base, id: `cap-${i}`, computer: pc });
        await s.completeCapture(`cap-${i}`, { ...artifact, path: `v${i}.qcow2` });
      }
      await s.setProductionRevision(12345, 0);
    },
    timing: 'BEFORE UPDATE ON image_revisions',
    when: 'NEW.production = 1 AND NOT EXISTS (SELECT 1 FROM image_revisions WHERE production = 1)',
    act: (s) => s.setProductionRevision(12345, 1),
  },
];

describe.each(storeBackends())('$name store', (backend) => {
  let db: OpenedStore;
  let store: CaptureStore;
  openEach(backend, (opened) => {
    [db, store] = [opened, opened.store];
  });

  describe('a failure between the writes of one operation leaves no partial rows', () => {
    it.each(CASES)('$name', async ({ setup, timing, when, act }) => {
      await setup?.(store);
      await db.exec(failingTrigger(backend.name, timing, when));
      const before = await db.dump();
      const counts = await db.tableCounts();

      const err = await expectVclError(act(store), 'STORE_ERROR', /injected failure/);
      expect(err.cause).toBeInstanceOf(Error);
      // Every row of every table, as another process sees the file: exactly as before.
      expect(await db.tableCounts()).toEqual(counts);
      expect(await db.dump()).toBe(before);

      // The failure was the only obstacle: without it the same call goes through and changes the file.
      await db.exec(dropTrigger(backend.name, timing));
      await act(store);
      expect(await db.dump()).not.toBe(before);
    });
  });

  describe('the state change and its audit event are one', () => {
    it('a transition without its event is never visible, nor an event without its transition', async () => {
      await running(store);
      await db.exec(
        failingTrigger(
          backend.name,
          'BEFORE INSERT ON capture_events',
          "NEW.type = 'state.entered' AND NEW.step = 'fails'",
        ),
      );
      await store.recordTransition('cap-1', {
        stateValue: 'a',
        event: { type: 'state.entered', step: 'ok' },
      });
      await expectVclError(
        store.recordTransition('cap-1', { stateValue: 'b', event: { type: 'state.entered', step: 'fails' } }),
        'STORE_ERROR',
      );
      await store.recordTransition('cap-1', {
        stateValue: 'c',
        event: { type: 'state.entered', step: 'ok' },
      });
      const detail = await store.getCapture('cap-1');
      expect(detail?.stateValue).toBe('c');
      expect(detail?.eventCount).toBe(detail?.events.length);
      // No gap in the numbering: the failed transition did not even consume a sequence number.
      expect(detail?.events.map((e) => [e.seq, e.stateValue])).toEqual([
        [1, null],
        [2, null],
        [3, 'a'],
        [4, 'c'],
      ]);
    });
  });
});

describe('another process holding the write lock (SQLite)', () => {
  let folder: ReturnType<typeof tempFolder>;
  let path: string;
  beforeEach(async () => {
    folder = tempFolder();
    path = folder.file('store.sqlite');
    const seeded = openStore(path);
    await seed(seeded);
    await seeded.close();
  });
  afterEach(() => folder.cleanup());

  it('makes a write wait up to the busy timeout, then fail with STORE_BUSY having written nothing', async () => {
    const impatient = openStore(path, { busyTimeoutMs: 100 });
    const other = new Database(path);
    try {
      other.exec('BEGIN IMMEDIATE');
      const before = dump(path);
      const started = Date.now();
      await expectVclError(
        impatient.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' }),
        'STORE_BUSY',
        /^createCapture: the database stayed locked by another process past the busy timeout/,
      );
      expect(Date.now() - started).toBeGreaterThanOrEqual(90);
      // Readers are not blocked by the writer (WAL).
      expect(await impatient.getComputer('pc-01')).toMatchObject({ state: 'available' });
      other.exec('COMMIT');
      expect(dump(path)).toBe(before);
      expect((await impatient.createCapture({ ...base, id: 'cap-1', computer: 'pc-01' })).status).toBe(
        'running',
      );
    } finally {
      if (other.inTransaction) other.exec('ROLLBACK');
      other.close();
      await impatient.close();
    }
  });
});
