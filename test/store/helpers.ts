import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { expect } from 'vitest';
import { isVclError, type VclError } from '../../src/errors.js';
import {
  type CaptureStore,
  openSqliteStore,
  type SqliteCaptureStore,
  type SqliteStoreOptions,
} from '../../src/store/index.js';

/** A fresh temporary folder; `cleanup()` removes it. */
export function tempFolder(prefix = 'vcl-store-'): {
  dir: string;
  file: (name: string) => string;
  cleanup: () => void;
} {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return {
    dir,
    file: (name) => join(dir, name),
    cleanup: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** A deterministic clock: each call is one millisecond after the previous one. */
export function steppingClock(start = Date.parse('2025-03-01T08:00:00.000Z')): () => Date {
  let t = start;
  return () => new Date(t++);
}

export function openStore(path: string, options: SqliteStoreOptions = {}): SqliteCaptureStore {
  return openSqliteStore(path, { now: steppingClock(), ...options });
}

export const REPO = '/vmfs/volumes/datastore 1/images';
export const SHA = 'a'.repeat(64);

/** Computers pc-01..pc-03 available, pc-04 reserved, pc-05 in maintenance; image 12345 `vmwarewin7` "Base". */
export async function seed(store: CaptureStore): Promise<void> {
  await store.registerComputers([
    { name: 'pc-01' },
    { name: 'pc-02' },
    { name: 'pc-03' },
    { name: 'pc-04', state: 'reserved' },
    { name: 'pc-05', state: 'maintenance' },
  ]);
  await store.registerImage({ id: 12345, osName: 'vmwarewin7', prettyName: 'Base', owner: 'admin' });
}

/** Awaits `promise`, asserts it rejects with a VclError of `code` (and message matching `message`). */
export async function expectVclError(
  promise: Promise<unknown> | (() => unknown),
  code: string,
  message?: RegExp,
): Promise<VclError> {
  let caught: unknown;
  try {
    await (typeof promise === 'function' ? promise() : promise);
  } catch (err) {
    caught = err;
  }
  expect(caught, `expected a VclError ${code}`).toBeDefined();
  if (!isVclError(caught)) throw caught;
  expect(caught.code, caught.message).toBe(code);
  if (message) expect(caught.message).toMatch(message);
  return caught;
}

/** Row counts of every table, read through a separate connection (what another process would see). */
export function tableCounts(path: string): Record<string, number> {
  const db = new Database(path, { readonly: true });
  try {
    const out: Record<string, number> = {};
    for (const t of ['computers', 'captures', 'capture_events', 'images', 'image_revisions']) {
      out[t] = db.prepare(`SELECT count(*) FROM ${t}`).pluck().get() as number;
    }
    return out;
  } finally {
    db.close();
  }
}

/** A whole-database fingerprint (every row of every table) through a separate connection. */
export function dump(path: string): string {
  const db = new Database(path, { readonly: true });
  try {
    const tables = db
      .prepare(
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name",
      )
      .pluck()
      .all() as string[];
    return JSON.stringify(tables.map((t) => [t, db.prepare(`SELECT * FROM ${t} ORDER BY rowid`).all()]));
  } finally {
    db.close();
  }
}
