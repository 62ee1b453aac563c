/**
 * Nothing half-written, even when the writing process dies: a runner-like process writing captures as
 * fast as it can is killed with SIGKILL at an arbitrary moment (four times, on the same file), and the
 * file must then hold only whole operations: every capture with exactly its events, every held computer
 * held by a running capture, every revision with its capture, completed revisions with their checksum.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import Database from 'better-sqlite3';
import { afterAll, describe, expect, it } from 'vitest';
import { openStore, tempFolder } from './helpers.js';
import { FixtureProcess } from './processes.js';

const folder = tempFolder('vcl-store-crash-');
const path = folder.file('crash.sqlite');

afterAll(() => folder.cleanup());

/** Rows of `sql` (each a violation of an invariant): expected to be none. */
function violations(db: Database.Database, sql: string): unknown[] {
  return db.prepare(sql).all();
}

function checkWholeOperations(): { captures: number; events: number } {
  const db = new Database(path);
  try {
    expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    expect(db.pragma('foreign_key_check')).toEqual([]);
    // Each capture has exactly the events its counter says, numbered 1..n, the first one its creation.
    expect(
      violations(
        db,
        `SELECT c.id, c.event_count, count(e.id) AS n, max(e.seq) AS last, min(e.seq) AS first
         FROM captures c LEFT JOIN capture_events e ON e.capture_id = c.id
         GROUP BY c.id HAVING n != c.event_count OR last != c.event_count OR first != 1`,
      ),
    ).toEqual([]);
    expect(
      violations(
        db,
        `SELECT c.id FROM captures c JOIN capture_events e ON e.capture_id = c.id AND e.seq = 1
         WHERE e.type != 'capture.created'`,
      ),
    ).toEqual([]);
    // A revision exists only with the capture that made it.
    expect(
      violations(
        db,
        'SELECT r.name FROM image_revisions r WHERE NOT EXISTS (SELECT 1 FROM captures c WHERE c.revision_id = r.id)',
      ),
    ).toEqual([]);
    // Holding: a computer is held by a running capture, and a running capture holds its computer.
    expect(
      violations(
        db,
        `SELECT p.name FROM computers p LEFT JOIN captures c ON c.id = p.capture_id
         WHERE p.capture_id IS NOT NULL AND (c.status IS NOT 'running' OR p.state != 'image' OR c.computer != p.name)`,
      ),
    ).toEqual([]);
    expect(
      violations(
        db,
        `SELECT c.id FROM captures c LEFT JOIN computers p ON p.capture_id = c.id
         WHERE c.status = 'running' AND p.name IS NULL`,
      ),
    ).toEqual([]);
    // The recorded state of a running capture is the one its last event entered.
    expect(
      violations(
        db,
        `SELECT c.id FROM captures c JOIN capture_events e ON e.capture_id = c.id AND e.seq = c.event_count
         WHERE c.status = 'running' AND c.state_value IS NOT NULL AND e.state_value IS NOT c.state_value`,
      ),
    ).toEqual([]);
    // Finished captures: their revision, their closing event, their finish time, together.
    expect(
      violations(
        db,
        `SELECT c.id, c.status, r.deleted, e.type FROM captures c
         JOIN image_revisions r ON r.id = c.revision_id
         JOIN capture_events e ON e.capture_id = c.id AND e.seq = c.event_count
         WHERE NOT CASE c.status
           WHEN 'completed' THEN r.deleted = 0 AND r.sha256 IS NOT NULL AND r.captured_at IS NOT NULL
                                 AND e.type = 'capture.completed' AND c.finished_at IS NOT NULL
           WHEN 'failed' THEN r.deleted = 1 AND e.type = 'capture.failed' AND c.finished_at IS NOT NULL
           WHEN 'cancelled' THEN r.deleted = 1 AND e.type = 'capture.cancelled' AND c.finished_at IS NOT NULL
           ELSE r.deleted = 1 AND c.finished_at IS NULL
             AND e.type IN ('capture.created', 'computer.reserved', 'state.entered')
         END`,
      ),
    ).toEqual([]);
    return {
      captures: db.prepare('SELECT count(*) FROM captures').pluck().get() as number,
      events: db.prepare('SELECT count(*) FROM capture_events').pluck().get() as number,
    };
  } finally {
    db.close();
  }
}

describe('a writer killed at an arbitrary moment', () => {
  it('leaves only whole operations, and the next writer carries on', async () => {
    let previous = 0;
    for (let life = 0; life < 4; life++) {
      const writer = new FixtureProcess('crash-writer.ts', [path, `life${life}`]);
      expect(await writer.next(30_000)).toMatchObject({ type: 'ready' });
      expect(await writer.next()).toMatchObject({ type: 'progress' });
      // The kill lands somewhere within the next capture or so: inside a transaction more often than not.
      await sleep(Math.floor(Math.random() * 15));
      await writer.kill('SIGKILL');

      // What a restarted runner does first: open the store (recovering the WAL of the dead process).
      const store = openStore(path);
      await store.close();
      const { captures } = checkWholeOperations();
      expect(captures).toBeGreaterThanOrEqual(previous + 20);
      previous = captures;
    }
  }, 60_000);
});
