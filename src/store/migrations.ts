/**
 * Versioned schema migrations of the SQLite store.
 *
 * The schema version is `PRAGMA user_version` (one integer in the file header, read and written
 * atomically with the transaction); `schema_migrations` keeps the history (which version, when).
 * Migrations run at open, in one `BEGIN IMMEDIATE` transaction, so two processes opening the same
 * new file cannot both migrate it, and a failed migration leaves the file at its previous version.
 *
 * Rules for adding a migration: append, never edit a released one; bump nothing else (the latest
 * version is the last entry's); keep it valid SQL for SQLite's `ALTER TABLE` limits (rebuild a table
 * when a column must change).
 */
import type { Database } from 'better-sqlite3';
import { STORE_ERROR_CODES, storeError } from './errors.js';

export interface Migration {
  version: number;
  name: string;
  /** SQL script, or a function for changes SQL alone cannot express. Runs inside the transaction. */
  up: string | ((db: Database) => void);
}

/** `PRAGMA application_id` of a vcl-capture store: "VCLC" in ASCII. */
export const APPLICATION_ID = 0x56434c43;

const V1_INITIAL = `
CREATE TABLE schema_migrations (
  version     INTEGER PRIMARY KEY,
  name        TEXT NOT NULL,
  applied_at  TEXT NOT NULL
);

CREATE TABLE computers (
  name             TEXT PRIMARY KEY,
  -- One of COMPUTER_STATES (src/store/types.ts); checked in code so new states need no table rebuild.
  state            TEXT NOT NULL,
  -- The capture holding the computer (state 'image'), and the state it was reserved from.
  capture_id       TEXT REFERENCES captures(id),
  held_from_state  TEXT,
  version          INTEGER NOT NULL DEFAULT 0,
  updated_at       TEXT NOT NULL,
  CHECK ((capture_id IS NULL) = (held_from_state IS NULL)),
  CHECK (capture_id IS NULL OR state = 'image')
);
CREATE UNIQUE INDEX computers_capture ON computers(capture_id) WHERE capture_id IS NOT NULL;

CREATE TABLE images (
  id           INTEGER PRIMARY KEY,
  os_name      TEXT NOT NULL,
  pretty_name  TEXT NOT NULL,
  owner        TEXT NOT NULL,
  created_at   TEXT NOT NULL
);
CREATE INDEX images_owner ON images(owner);

CREATE TABLE image_revisions (
  id           INTEGER PRIMARY KEY,
  image_id     INTEGER NOT NULL REFERENCES images(id),
  revision     INTEGER NOT NULL CHECK (revision >= 0),
  name         TEXT NOT NULL UNIQUE,
  size_bytes   INTEGER CHECK (size_bytes IS NULL OR size_bytes >= 0),
  sha256       TEXT CHECK (sha256 IS NULL OR length(sha256) = 64),
  format       TEXT,
  repository   TEXT,
  path         TEXT,
  created_at   TEXT NOT NULL,
  captured_at  TEXT,
  deleted      INTEGER NOT NULL DEFAULT 1 CHECK (deleted IN (0, 1)),
  production   INTEGER NOT NULL DEFAULT 0 CHECK (production IN (0, 1)),
  UNIQUE (image_id, revision),
  CHECK (production = 0 OR deleted = 0),
  CHECK (deleted = 1 OR (size_bytes IS NOT NULL AND sha256 IS NOT NULL AND repository IS NOT NULL
                         AND path IS NOT NULL))
);
CREATE UNIQUE INDEX image_revisions_one_production ON image_revisions(image_id) WHERE production = 1;
CREATE UNIQUE INDEX image_revisions_live_location ON image_revisions(repository, path) WHERE deleted = 0;

CREATE TABLE captures (
  id               TEXT PRIMARY KEY,
  computer         TEXT NOT NULL REFERENCES computers(name),
  image_id         INTEGER NOT NULL REFERENCES images(id),
  revision_id      INTEGER NOT NULL UNIQUE REFERENCES image_revisions(id),
  image_name       TEXT NOT NULL,
  revision         INTEGER NOT NULL,
  provisioner      TEXT NOT NULL,
  os               TEXT NOT NULL,
  end_state        TEXT,
  repository       TEXT,
  status           TEXT NOT NULL
                   CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
  state_value      TEXT,               -- JSON
  error_code       TEXT,
  error_step       TEXT,
  error_message    TEXT,
  release_outcome  TEXT CHECK (release_outcome IS NULL OR release_outcome IN ('maintenance', 'restore')),
  snapshot         TEXT,               -- JSON, the machine's persisted snapshot
  machine_version  TEXT,
  event_count      INTEGER NOT NULL DEFAULT 0,
  created_at       TEXT NOT NULL,
  updated_at       TEXT NOT NULL,
  finished_at      TEXT,
  CHECK ((finished_at IS NULL) = (status IN ('queued', 'running')))
);
CREATE INDEX captures_status ON captures(status, created_at);
CREATE INDEX captures_computer ON captures(computer, created_at);
-- At most one running capture per computer, whatever the code above does.
CREATE UNIQUE INDEX captures_one_running_per_computer ON captures(computer) WHERE status = 'running';

CREATE TABLE capture_events (
  id           INTEGER PRIMARY KEY,
  capture_id   TEXT NOT NULL REFERENCES captures(id),
  seq          INTEGER NOT NULL,
  at           TEXT NOT NULL,
  type         TEXT NOT NULL,
  state_value  TEXT,                   -- JSON
  step         TEXT,
  details      TEXT,                   -- JSON
  duration_ms  INTEGER,
  UNIQUE (capture_id, seq)
);

-- The audit trail is append-only.
CREATE TRIGGER capture_events_no_update BEFORE UPDATE ON capture_events
BEGIN SELECT RAISE(ABORT, 'capture_events is append-only'); END;
CREATE TRIGGER capture_events_no_delete BEFORE DELETE ON capture_events
BEGIN SELECT RAISE(ABORT, 'capture_events is append-only'); END;
`;

/**
 * Who runs a capture, so that a restarted daemon takes back what a dead process left and never what a
 * live one runs: the owner (a runner's id), its lease, the request a queued capture is started from, and
 * a cancellation asked by another process.
 */
const V2_OWNERSHIP = `
ALTER TABLE captures ADD COLUMN request TEXT;            -- JSON: what starting the capture later needs
ALTER TABLE captures ADD COLUMN owner TEXT;              -- the runner running it (host/pid/random)
ALTER TABLE captures ADD COLUMN lease_until TEXT;        -- the owner renews it while it lives
ALTER TABLE captures ADD COLUMN cancel_requested TEXT;   -- a reason, set by another process
`;

/**
 * The notification outbox. A row of `notifications` is written in the same transaction as the event it
 * announces (a capture finished, a computer sent to maintenance), so a crash can neither lose one nor
 * announce what did not happen. `notification_deliveries` is one row per (event, target): a delivery
 * worker creates it when it first sees the event for a target it is configured with, claims it with a
 * lease, and records each attempt, so delivery is at-least-once per target and survives restarts.
 */
const V3_NOTIFICATIONS = `
CREATE TABLE notifications (
  id          INTEGER PRIMARY KEY,
  event_id    TEXT NOT NULL UNIQUE,    -- stable id receivers de-duplicate on
  type        TEXT NOT NULL,
  capture_id  TEXT REFERENCES captures(id),
  payload     TEXT NOT NULL,           -- JSON, the body delivered as is
  created_at  TEXT NOT NULL
);
CREATE INDEX notifications_created ON notifications(created_at);

CREATE TABLE notification_deliveries (
  id               INTEGER PRIMARY KEY,
  notification_id  INTEGER NOT NULL REFERENCES notifications(id),
  target           TEXT NOT NULL,
  status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
  attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
  next_attempt_at  TEXT NOT NULL,
  claimed_by       TEXT,
  claim_until      TEXT,
  last_error       TEXT,
  created_at       TEXT NOT NULL,
  updated_at       TEXT NOT NULL,
  delivered_at     TEXT,
  UNIQUE (notification_id, target),
  CHECK ((delivered_at IS NULL) = (status != 'delivered'))
);
CREATE INDEX notification_deliveries_due ON notification_deliveries(status, next_attempt_at);
`;

/**
 * Which runner execution marked its remote commands with which tag, per capture and host: a runner that
 * resumes a capture first stops every process on that host carrying an earlier execution's tag (issue 16,
 * docs/resume.md "Leftover remote commands").
 */
const V4_REMOTE_TAGS = `
CREATE TABLE remote_tags (
  capture_id   TEXT NOT NULL REFERENCES captures(id),
  host         TEXT NOT NULL,
  tag          TEXT NOT NULL,
  recorded_at  TEXT NOT NULL,
  PRIMARY KEY (capture_id, host, tag)
);
`;

/**
 * Coordination of several runners (issue 18): `generation` counts the claims of a capture, and every write
 * a runner makes for it names the generation it claimed (a runner that lost the capture changes nothing of
 * it); `host_slots` holds the per-host capture and copy slots, so that a hypervisor's limits hold across
 * all runners. A slot counts only while its holder's claim (owner, generation, lease) holds.
 */
const V5_COORDINATION = `
ALTER TABLE captures ADD COLUMN generation INTEGER NOT NULL DEFAULT 0;
CREATE TABLE host_slots (
  host         TEXT NOT NULL,
  kind         TEXT NOT NULL CHECK (kind IN ('capture', 'copy')),
  capture_id   TEXT NOT NULL REFERENCES captures(id),
  owner        TEXT NOT NULL,
  generation   INTEGER NOT NULL,
  acquired_at  TEXT NOT NULL,
  PRIMARY KEY (host, kind, capture_id)
);
`;

/** Every migration, in order. The last one's version is the schema version this code writes. */
export const MIGRATIONS: readonly Migration[] = [
  { version: 1, name: 'initial schema', up: V1_INITIAL },
  { version: 2, name: 'capture ownership and requests', up: V2_OWNERSHIP },
  { version: 3, name: 'notification outbox', up: V3_NOTIFICATIONS },
  { version: 4, name: 'remote command tags', up: V4_REMOTE_TAGS },
  { version: 5, name: 'claim generations and host slots', up: V5_COORDINATION },
];

export const SCHEMA_VERSION = MIGRATIONS[MIGRATIONS.length - 1]?.version ?? 0;

/**
 * `SCHEMA_TOO_NEW`: the store at `where` (a file, or a database) was written by a newer vcl-capture. The
 * message names both versions and the fix.
 */
export function schemaTooNew(
  where: string,
  what: 'file' | 'database',
  current: number,
  latest: number,
  details: Record<string, unknown>,
) {
  return storeError(
    STORE_ERROR_CODES.SCHEMA_TOO_NEW,
    `${where} has store schema version ${current}, but this vcl-capture only knows versions up to ${latest}: ` +
      `it was written by a newer vcl-capture. Upgrade vcl-capture to open it; the ${what} was not changed.`,
    { ...details, fileVersion: current, supportedVersion: latest },
  );
}

/** `MIGRATION_FAILED`: `migration` failed and the store stays at version `current`. */
export function migrationFailed(
  where: string,
  what: 'file' | 'database',
  migration: { version: number; name: string },
  current: number,
  details: Record<string, unknown>,
  err: unknown,
) {
  return storeError(
    STORE_ERROR_CODES.MIGRATION_FAILED,
    `migration ${migration.version} (${migration.name}) of ${where} failed, the ${what} stays at version ${current}: ${
      err instanceof Error ? err.message : String(err)
    }`,
    { ...details, version: migration.version, fromVersion: current },
    err,
  );
}

interface FileHeader {
  version: number;
  applicationId: number;
  tables: number;
}

/**
 * The schema version, application id and number of tables, in one statement so that they come from
 * one snapshot: read one by one, a process migrating the file at the same moment could be seen half
 * (version 0 but tables present) and the file taken for someone else's.
 */
function readHeader(db: Database): FileHeader {
  const row = db
    .prepare<[], FileHeader>(
      `SELECT (SELECT user_version FROM pragma_user_version) AS version,
              (SELECT application_id FROM pragma_application_id) AS applicationId,
              (SELECT count(*) FROM sqlite_schema WHERE name NOT LIKE 'sqlite_%') AS tables`,
    )
    .get();
  if (row === undefined)
    throw storeError(STORE_ERROR_CODES.STORE_ERROR, `${db.name}: cannot read the header`);
  return row;
}

/**
 * Read-only check that `db` is a vcl-capture store (or an empty file) at a schema version this code
 * understands; returns that version. Throws `NOT_A_CAPTURE_STORE` or `SCHEMA_TOO_NEW`, changing nothing.
 */
export function checkStoreFile(db: Database, latest: number = SCHEMA_VERSION): number {
  const { version: current, applicationId: appId, tables } = readHeader(db);
  if (appId !== 0 && appId !== APPLICATION_ID) {
    throw storeError(
      STORE_ERROR_CODES.NOT_A_CAPTURE_STORE,
      `${db.name} belongs to another application (SQLite application_id 0x${appId.toString(16)}), not vcl-capture`,
      { path: db.name, applicationId: appId },
    );
  }
  if (current > latest) {
    throw schemaTooNew(db.name, 'file', current, latest, { path: db.name });
  }
  if (current === 0 && tables > 0) {
    throw storeError(
      STORE_ERROR_CODES.NOT_A_CAPTURE_STORE,
      `${db.name} is an SQLite database with ${tables} table${tables === 1 ? '' : 's'} but no vcl-capture schema version: ` +
        'not a vcl-capture store; refusing to write to it',
      { path: db.name },
    );
  }
  return current;
}

/**
 * Checks the file is a vcl-capture store at a version this code understands, then applies the
 * missing migrations. Returns the versions applied (empty if none).
 */
export function applyMigrations(
  db: Database,
  migrations: readonly Migration[] = MIGRATIONS,
  now: () => string = () => new Date().toISOString(),
): number[] {
  const latest = migrations[migrations.length - 1]?.version ?? 0;
  const applied: number[] = [];
  const migrate = db.transaction(() => {
    const current = checkStoreFile(db, latest);
    if (current === 0) db.pragma(`application_id = ${APPLICATION_ID}`);
    for (const migration of migrations) {
      if (migration.version <= current) continue;
      try {
        if (typeof migration.up === 'string') db.exec(migration.up);
        else migration.up(db);
        db.prepare('INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)').run(
          migration.version,
          migration.name,
          now(),
        );
      } catch (err) {
        throw migrationFailed(db.name, 'file', migration, current, { path: db.name }, err);
      }
      db.pragma(`user_version = ${migration.version}`);
      applied.push(migration.version);
    }
  });
  migrate.immediate();
  return applied;
}
