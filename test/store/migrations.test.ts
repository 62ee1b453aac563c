/**
 * Versioned migrations at open: an empty file is migrated to the latest version (recorded in the file),
 * a newer file is refused with a clear message and left exactly as it was, a foreign file is refused,
 * and a failing migration leaves the file at its previous version.
 */
import { createHash } from 'node:crypto';
import { readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  APPLICATION_ID,
  applyMigrations,
  MIGRATIONS,
  type Migration,
  SCHEMA_VERSION,
} from '../../src/store/index.js';
import { dump, expectVclError, openStore, seed, tempFolder } from './helpers.js';

let folder: ReturnType<typeof tempFolder>;
let path: string;

beforeEach(() => {
  folder = tempFolder('vcl-store-migrations-');
  path = folder.file('store.sqlite');
});

afterEach(() => folder.cleanup());

/** Content hash, modification time and the folder's listing (so a left-over -wal or -shm shows). */
function fingerprint(): { sha256: string; mtimeMs: number; files: string[] } {
  return {
    sha256: createHash('sha256').update(readFileSync(path)).digest('hex'),
    mtimeMs: statSync(path).mtimeMs,
    files: readdirSync(folder.dir).sort(),
  };
}

function header(file = path): { version: number; applicationId: number; journal: string } {
  const db = new Database(file, { readonly: true });
  try {
    return {
      version: db.pragma('user_version', { simple: true }) as number,
      applicationId: db.pragma('application_id', { simple: true }) as number,
      journal: db.pragma('journal_mode', { simple: true }) as string,
    };
  } finally {
    db.close();
  }
}

function history(file = path): { version: number; name: string; applied_at: string }[] {
  const db = new Database(file, { readonly: true });
  try {
    return db.prepare('SELECT version, name, applied_at FROM schema_migrations ORDER BY version').all() as {
      version: number;
      name: string;
      applied_at: string;
    }[];
  } finally {
    db.close();
  }
}

describe('from an empty file', () => {
  it.each([
    ['a path that does not exist yet', () => undefined],
    ['an existing zero-byte file', () => writeFileSync(path, '')],
  ])('migrates %s to the latest version and records it', async (_, prepare) => {
    prepare();
    const store = openStore(path);
    expect(store.schemaVersion).toBe(SCHEMA_VERSION);
    await seed(store); // the schema works
    await store.close();

    expect(SCHEMA_VERSION).toBe(MIGRATIONS.at(-1)?.version);
    expect(header()).toEqual({ version: SCHEMA_VERSION, applicationId: APPLICATION_ID, journal: 'wal' });
    const applied = history();
    expect(applied.map(({ version, name }) => ({ version, name }))).toEqual(
      MIGRATIONS.map(({ version, name }) => ({ version, name })),
    );
    for (const row of applied) expect(row.applied_at).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  });

  it('applies nothing again when reopened', async () => {
    const first = openStore(path);
    await seed(first);
    await first.close();
    const before = dump(path);
    const again = openStore(path);
    await again.close();
    expect(dump(path)).toBe(before);
  });
});

describe('a database written by a newer version', () => {
  it.each(['wal', 'delete'])(
    'is refused with a clear message, and the file (journal mode %s) is left untouched',
    async (journal) => {
      const store = openStore(path);
      await seed(store);
      await store.close();
      // What a newer vcl-capture would leave: a higher version and its history row.
      const db = new Database(path);
      db.pragma(`journal_mode = ${journal}`);
      db.exec(`CREATE TABLE future_things (id INTEGER PRIMARY KEY);
        INSERT INTO schema_migrations (version, name, applied_at)
        VALUES (${SCHEMA_VERSION + 1}, 'future', '2030-01-01T00:00:00.000Z')`);
      db.pragma(`user_version = ${SCHEMA_VERSION + 1}`);
      db.close();
      const before = fingerprint();
      const contents = dump(path);

      const err = await expectVclError(() => openStore(path), 'SCHEMA_TOO_NEW');
      expect(err.message).toBe(
        `${path} has store schema version ${SCHEMA_VERSION + 1}, but this vcl-capture only knows versions up to ${SCHEMA_VERSION}: ` +
          'it was written by a newer vcl-capture. Upgrade vcl-capture to open it; the file was not changed.',
      );
      expect(err.details).toEqual({
        path,
        fileVersion: SCHEMA_VERSION + 1,
        supportedVersion: SCHEMA_VERSION,
      });

      // Byte for byte, same time stamp, no journal files left behind, and still in its journal mode.
      expect(fingerprint()).toEqual(before);
      expect(header().journal).toBe(journal);
      expect(dump(path)).toBe(contents);
    },
  );
});

describe('a file that is not a vcl-capture store', () => {
  it('refuses another application SQLite database without writing to it', async () => {
    const db = new Database(path);
    db.exec("CREATE TABLE notes (body TEXT); INSERT INTO notes VALUES ('mine')");
    db.close();
    const before = fingerprint();
    await expectVclError(
      () => openStore(path),
      'NOT_A_CAPTURE_STORE',
      /is an SQLite database with 1 table but no vcl-capture schema version/,
    );
    expect(fingerprint()).toEqual(before);
  });

  it('refuses a database stamped with another application id', async () => {
    const db = new Database(path);
    db.pragma('application_id = 42');
    db.close();
    await expectVclError(
      () => openStore(path),
      'NOT_A_CAPTURE_STORE',
      /belongs to another application \(SQLite application_id 0x2a\)/,
    );
  });

  it('refuses a file that is not SQLite at all, leaving it as it was', async () => {
    writeFileSync(path, 'computers:\n  pc-01: {}\n'.repeat(100));
    const before = fingerprint();
    await expectVclError(() => openStore(path), 'NOT_A_CAPTURE_STORE', /is not an SQLite database/);
    expect(fingerprint()).toEqual(before);
  });
});

describe('later migrations', () => {
  const v2: Migration = {
    version: SCHEMA_VERSION + 1,
    name: 'computer location',
    up: 'ALTER TABLE computers ADD COLUMN location TEXT',
  };
  const broken: Migration = {
    version: SCHEMA_VERSION + 2,
    name: 'broken',
    up: (db) => {
      db.exec('CREATE TABLE half_done (id INTEGER)');
      throw new Error('disk quota exceeded');
    },
  };

  it('upgrade a file in place, keeping its data; a failing one leaves the previous version', async () => {
    const store = openStore(path);
    await seed(store);
    await store.close();
    const db = new Database(path);
    try {
      expect(applyMigrations(db, [...MIGRATIONS, v2])).toEqual([v2.version]);
      expect(db.pragma('user_version', { simple: true })).toBe(v2.version);
      expect(db.prepare('SELECT name, location FROM computers ORDER BY name LIMIT 1').get()).toEqual({
        name: 'pc-01',
        location: null,
      });
      expect(applyMigrations(db, [...MIGRATIONS, v2])).toEqual([]);

      await expectVclError(
        () => applyMigrations(db, [...MIGRATIONS, v2, broken]),
        'MIGRATION_FAILED',
        new RegExp(
          `migration ${broken.version} \\(broken\\) of .* failed, the file stays at version ${v2.version}: disk quota exceeded`,
        ),
      );
      expect(db.pragma('user_version', { simple: true })).toBe(v2.version);
      expect(db.prepare("SELECT count(*) FROM sqlite_schema WHERE name = 'half_done'").pluck().get()).toBe(0);
      expect(db.prepare('SELECT max(version) FROM schema_migrations').pluck().get()).toBe(v2.version);
    } finally {
      db.close();
    }
    // And this code, which only knows SCHEMA_VERSION, now refuses the upgraded file.
    await expectVclError(() => openStore(path), 'SCHEMA_TOO_NEW');
  });
});

describe('a version 1 file with captures in flight', () => {
  it('gains ownership columns and keeps every row: its running capture is resumable, owned by nobody', async () => {
    const db = new Database(path);
    applyMigrations(db, MIGRATIONS.slice(0, 1));
    const now = '2025-03-01T08:00:00.000Z';
    db.exec(`
      INSERT INTO computers (name, state, capture_id, held_from_state, version, updated_at)
        VALUES ('pc-01', 'available', NULL, NULL, 0, '${now}');
      INSERT INTO images (id, os_name, pretty_name, owner, created_at) VALUES (7, 'rhel', 'Base', 'me', '${now}');
      INSERT INTO image_revisions (id, image_id, revision, name, created_at) VALUES (1, 7, 0, 'rhel-Base7-v0', '${now}');
      INSERT INTO captures (id, computer, image_id, revision_id, image_name, revision, provisioner, os, status,
        state_value, snapshot, machine_version, event_count, created_at, updated_at)
        VALUES ('old-1', 'pc-01', 7, 1, 'rhel-Base7-v0', 0, 'libvirt', 'linux', 'running',
        '{"capturing":"copy_image"}', '{"status":"active"}', 'libvirt@old', 0, '${now}', '${now}');
      UPDATE computers SET state = 'image', capture_id = 'old-1', held_from_state = 'available' WHERE name = 'pc-01';
    `);
    expect(db.pragma('user_version', { simple: true })).toBe(1);
    db.close();

    const store = openStore(path);
    try {
      expect(store.schemaVersion).toBe(SCHEMA_VERSION);
      const [resumable] = await store.listResumableCaptures();
      expect(resumable).toMatchObject({
        id: 'old-1',
        status: 'running',
        owner: null,
        leaseUntil: null,
        request: null,
        cancelRequested: null,
        machineVersion: 'libvirt@old',
        stateValue: { capturing: 'copy_image' },
      });
      expect((await store.loadSnapshot('old-1'))?.snapshot).toEqual({ status: 'active' });
      expect((await store.claimCapture('old-1', 'new-runner', { leaseMs: 1000 })).owner).toBe('new-runner');
    } finally {
      await store.close();
    }
  });
});
