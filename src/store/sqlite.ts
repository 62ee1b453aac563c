/**
 * The embedded store: one SQLite file through better-sqlite3.
 *
 * Connection settings (applied at open):
 * - `journal_mode = WAL`: readers (the CLI, the inspector) never block the runner's writes, and a
 *   commit is one append to the WAL instead of a rewrite of the pages plus a rollback journal.
 * - `synchronous = NORMAL`: in WAL mode this is still safe against corruption and against a crash of
 *   the process (a committed transaction is in the WAL); only a power loss or OS crash can lose the last
 *   few commits, which come back as an older (consistent) state: at worst a capture resumes from an
 *   earlier snapshot and repeats a step, which the machines must tolerate anyway. It saves one fsync per
 *   transaction, which is what makes thousands of state changes per second possible. `FULL` is an option.
 * - `busy_timeout`: a writer waits (default 5 s) for another process's transaction instead of failing.
 * - `foreign_keys = ON`: SQLite does not enforce foreign keys unless told, per connection.
 *
 * Every write is a `BEGIN IMMEDIATE` transaction: it takes the write lock at its start, so a
 * read-then-write inside it cannot be overtaken by another process (no `SQLITE_BUSY_SNAPSHOT` when a
 * read transaction is upgraded), and waiting for the lock goes through `busy_timeout`. The reservation
 * is nevertheless written as a conditional `UPDATE` (compare-and-swap), the form that stays correct on
 * PostgreSQL under READ COMMITTED.
 */
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import type { StateValue } from 'xstate';
import type {
  EndState,
  ImageArtifact,
  ImageRef,
  OsName,
  ProvisionerName,
  ReleaseOutcome,
  StepFailure,
} from '../../machines/types.js';
import { type Logger, silentLogger } from '../log.js';
import { asStoreError, STORE_ERROR_CODES, storeError } from './errors.js';
import { applyMigrations, checkStoreFile, MIGRATIONS, SCHEMA_VERSION } from './migrations.js';
import {
  nextRevisionName,
  validateImageId,
  validateImageName,
  validateOsName,
  validatePrettyName,
  validateRevisionNumber,
  validateSafeName,
} from './naming.js';
import { type Announcement, type Outbox, prepareOutbox } from './outbox.js';
import { normalizeRepository, resolveLocation } from './paths.js';
import {
  CAPTURABLE_COMPUTER_STATES,
  type CaptureDetail,
  type CaptureEvent,
  type CaptureFilter,
  type CaptureRecord,
  type CaptureRecordStatus,
  type CaptureStore,
  type CasOptions,
  type ClaimNotificationsOptions,
  type ClaimOptions,
  type CompleteOptions,
  type ComputerRecord,
  type ComputerRegistration,
  type ComputerRelease,
  type ComputerState,
  type ComputerStatus,
  type DeliveryOutcome,
  type FinishOptions,
  type ImageFilter,
  type ImageRecord,
  type ImageRegistration,
  type ImageRevisionRecord,
  type ImageWithRevisions,
  type MaintenanceCause,
  type NewCapture,
  NOTIFICATION_EVENT_TYPES,
  NOTIFICATION_STATUSES,
  type NotificationDelivery,
  type NotificationEventType,
  type NotificationFilter,
  type NotificationStatus,
  type OwnedCapture,
  type RemoteTagRecord,
  STORE_EVENT_TYPES,
  type StoredSnapshot,
  type TransitionInput,
} from './types.js';
import {
  checkArtifact,
  checkCaptureStatus,
  checkCasOptions,
  checkComputerState,
  checkDetails,
  checkEndState,
  checkEvent,
  checkInteger,
  checkOs,
  checkOutcome,
  checkProvisioner,
  checkShortText,
  checkStateValue,
  checkStepFailure,
  invalid,
  toJson,
} from './validate.js';

export interface SqliteStoreOptions {
  /** How long a write waits for another process's transaction, in ms (default 5000). */
  busyTimeoutMs?: number;
  /** `NORMAL` (default, see the module comment) or `FULL` (fsync at every commit). */
  synchronous?: 'NORMAL' | 'FULL';
  /** Clock, for tests. */
  now?: () => Date;
  /** Capture id generator when `NewCapture.id` is omitted (default `crypto.randomUUID`). */
  newCaptureId?: () => string;
  logger?: Logger;
}

interface ComputerRow {
  name: string;
  state: string;
  capture_id: string | null;
  held_from_state: string | null;
  version: number;
  updated_at: string;
}

interface ImageRow {
  id: number;
  os_name: string;
  pretty_name: string;
  owner: string;
  created_at: string;
}

interface RevisionRow {
  id: number;
  image_id: number;
  revision: number;
  name: string;
  size_bytes: number | null;
  sha256: string | null;
  format: string | null;
  repository: string | null;
  path: string | null;
  created_at: string;
  captured_at: string | null;
  deleted: number;
  production: number;
}

interface CaptureRow {
  id: string;
  computer: string;
  image_id: number;
  revision_id: number;
  image_name: string;
  revision: number;
  provisioner: string;
  os: string;
  end_state: string | null;
  repository: string | null;
  status: string;
  state_value: string | null;
  error_code: string | null;
  error_step: string | null;
  error_message: string | null;
  release_outcome: string | null;
  machine_version: string | null;
  event_count: number;
  request: string | null;
  owner: string | null;
  lease_until: string | null;
  cancel_requested: string | null;
  created_at: string;
  updated_at: string;
  finished_at: string | null;
}

interface EventRow {
  id: number;
  capture_id: string;
  seq: number;
  at: string;
  type: string;
  state_value: string | null;
  step: string | null;
  details: string | null;
  duration_ms: number | null;
}

/** Capture columns without the snapshot (which can be large and is only read by resume). */
const CAPTURE_COLUMNS = `id, computer, image_id, revision_id, image_name, revision, provisioner, os, end_state,
  repository, status, state_value, error_code, error_step, error_message, release_outcome, machine_version,
  event_count, request, owner, lease_until, cancel_requested, created_at, updated_at, finished_at`;

/** `('available', 'reserved')`: built from constants, never from input. */
const CAPTURABLE_SQL = `(${CAPTURABLE_COMPUTER_STATES.map((s) => `'${s}'`).join(', ')})`;

const DEFAULT_LIST_LIMIT = 100;
const MAX_LIST_LIMIT = 1000;

function toComputer(row: ComputerRow): ComputerRecord {
  return {
    name: row.name,
    state: row.state as ComputerState,
    heldBy: row.capture_id,
    heldFromState: row.held_from_state as ComputerState | null,
    version: row.version,
    updatedAt: row.updated_at,
  };
}

function toImage(row: ImageRow): ImageRecord {
  return {
    id: row.id,
    osName: row.os_name,
    prettyName: row.pretty_name,
    owner: row.owner,
    createdAt: row.created_at,
  };
}

function toRevision(row: RevisionRow): ImageRevisionRecord {
  return {
    id: row.id,
    imageId: row.image_id,
    revision: row.revision,
    name: row.name,
    sizeBytes: row.size_bytes,
    sha256: row.sha256,
    format: row.format,
    repository: row.repository,
    path: row.path,
    createdAt: row.created_at,
    capturedAt: row.captured_at,
    deleted: row.deleted === 1,
    production: row.production === 1,
  };
}

function parseJson<T>(text: string | null): T | null {
  return text === null ? null : (JSON.parse(text) as T);
}

function toCapture(row: CaptureRow): CaptureRecord {
  const image: ImageRef = { name: row.image_name, imageId: row.image_id, revision: row.revision };
  return {
    id: row.id,
    computer: row.computer,
    image,
    provisioner: row.provisioner as ProvisionerName,
    os: row.os as OsName,
    endState: row.end_state as EndState | null,
    repository: row.repository,
    status: row.status as CaptureRecordStatus,
    stateValue: parseJson<StateValue>(row.state_value),
    lastError:
      row.error_code === null
        ? null
        : { code: row.error_code, step: row.error_step ?? '', message: row.error_message ?? '' },
    releaseOutcome: row.release_outcome as ReleaseOutcome | null,
    machineVersion: row.machine_version,
    eventCount: row.event_count,
    request: parseJson<Record<string, unknown>>(row.request),
    owner: row.owner,
    leaseUntil: row.lease_until,
    cancelRequested: row.cancel_requested,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
  };
}

function toEvent(row: EventRow): CaptureEvent {
  return {
    id: row.id,
    captureId: row.capture_id,
    seq: row.seq,
    at: row.at,
    type: row.type,
    stateValue: parseJson<StateValue>(row.state_value),
    step: row.step,
    details: parseJson<Record<string, unknown>>(row.details),
    durationMs: row.duration_ms,
  };
}

function prepareStatements(db: Database.Database) {
  return {
    computer: db.prepare<[string], ComputerRow>('SELECT * FROM computers WHERE name = ?'),
    computers: db.prepare<[], ComputerRow>('SELECT * FROM computers ORDER BY name'),
    insertComputer: db.prepare<[{ name: string; state: string; now: string }]>(
      `INSERT INTO computers (name, state, version, updated_at) VALUES (@name, @state, 0, @now)
       ON CONFLICT (name) DO NOTHING`,
    ),
    setComputerState: db.prepare<
      [{ name: string; state: string; expectedVersion: number | null; now: string }],
      ComputerRow
    >(
      `UPDATE computers SET state = @state, version = version + 1, updated_at = @now
       WHERE name = @name AND capture_id IS NULL AND (@expectedVersion IS NULL OR version = @expectedVersion)
       RETURNING *`,
    ),
    releaseFromMaintenance: db.prepare<
      [{ name: string; state: string; expectedVersion: number | null; now: string }],
      ComputerRow
    >(
      `UPDATE computers SET state = @state, version = version + 1, updated_at = @now
       WHERE name = @name AND capture_id IS NULL AND state = 'maintenance'
         AND (@expectedVersion IS NULL OR version = @expectedVersion)
       RETURNING *`,
    ),
    // The newest capture that sent the computer to maintenance (see maintenanceCause).
    lastToMaintenance: db.prepare<[string], CaptureRow>(
      `SELECT ${CAPTURE_COLUMNS} FROM captures WHERE computer = ? AND release_outcome = 'maintenance'
       ORDER BY finished_at DESC, rowid DESC LIMIT 1`,
    ),
    eventOfType: db.prepare<[string, string], EventRow>(
      'SELECT * FROM capture_events WHERE capture_id = ? AND type = ? ORDER BY seq LIMIT 1',
    ),
    // The compare-and-swap: only from a capturable state, only if nobody holds it.
    reserve: db.prepare<
      [{ name: string; captureId: string; expectedVersion: number | null; now: string }],
      ComputerRow
    >(
      `UPDATE computers
       SET state = 'image', capture_id = @captureId, held_from_state = state, version = version + 1, updated_at = @now
       WHERE name = @name AND capture_id IS NULL AND state IN ${CAPTURABLE_SQL}
         AND (@expectedVersion IS NULL OR version = @expectedVersion)
       RETURNING *`,
    ),
    release: db.prepare<
      [{ name: string; captureId: string; state: string | null; now: string }],
      ComputerRow
    >(
      `UPDATE computers
       SET state = coalesce(@state, held_from_state), capture_id = NULL, held_from_state = NULL,
           version = version + 1, updated_at = @now
       WHERE name = @name AND capture_id = @captureId
       RETURNING *`,
    ),
    image: db.prepare<[number], ImageRow>('SELECT * FROM images WHERE id = ?'),
    images: db.prepare<[{ owner: string | null }], ImageRow>(
      'SELECT * FROM images WHERE (@owner IS NULL OR owner = @owner) ORDER BY id',
    ),
    insertImage: db.prepare<
      [{ id: number | null; osName: string; prettyName: string; owner: string; now: string }],
      ImageRow
    >(
      `INSERT INTO images (id, os_name, pretty_name, owner, created_at)
       VALUES (@id, @osName, @prettyName, @owner, @now) RETURNING *`,
    ),
    revisionsOf: db.prepare<[number], RevisionRow>(
      'SELECT * FROM image_revisions WHERE image_id = ? ORDER BY revision',
    ),
    latestRevision: db.prepare<[number], RevisionRow>(
      'SELECT * FROM image_revisions WHERE image_id = ? ORDER BY revision DESC LIMIT 1',
    ),
    revision: db.prepare<[number, number], RevisionRow>(
      'SELECT * FROM image_revisions WHERE image_id = ? AND revision = ?',
    ),
    revisionByName: db.prepare<[string], RevisionRow>('SELECT * FROM image_revisions WHERE name = ?'),
    liveAtLocation: db.prepare<[string, string], RevisionRow>(
      'SELECT * FROM image_revisions WHERE repository = ? AND path = ? AND deleted = 0',
    ),
    insertRevision: db.prepare<
      [{ imageId: number; revision: number; name: string; now: string }],
      RevisionRow
    >(
      `INSERT INTO image_revisions (image_id, revision, name, created_at, deleted, production)
       VALUES (@imageId, @revision, @name, @now, 1, 0) RETURNING *`,
    ),
    undeleteRevision: db.prepare<
      [
        {
          id: number;
          sizeBytes: number;
          sha256: string;
          format: string;
          repository: string;
          path: string;
          now: string;
        },
      ]
    >(
      `UPDATE image_revisions
       SET deleted = 0, size_bytes = @sizeBytes, sha256 = @sha256, format = @format, repository = @repository,
           path = @path, captured_at = @now
       WHERE id = @id AND deleted = 1`,
    ),
    clearProduction: db.prepare<[number, number]>(
      'UPDATE image_revisions SET production = 0 WHERE image_id = ? AND production = 1 AND id != ?',
    ),
    setProduction: db.prepare<[number]>('UPDATE image_revisions SET production = 1 WHERE id = ?'),
    revisionById: db.prepare<[number], RevisionRow>('SELECT * FROM image_revisions WHERE id = ?'),
    capture: db.prepare<[string], CaptureRow>(`SELECT ${CAPTURE_COLUMNS} FROM captures WHERE id = ?`),
    captureExists: db.prepare<[string], number>('SELECT 1 FROM captures WHERE id = ?').pluck(),
    insertCapture: db.prepare<
      [
        {
          id: string;
          computer: string;
          imageId: number;
          revisionId: number;
          imageName: string;
          revision: number;
          provisioner: string;
          os: string;
          endState: string | null;
          repository: string | null;
          status: string;
          request: string | null;
          owner: string | null;
          leaseUntil: string | null;
          now: string;
        },
      ]
    >(
      `INSERT INTO captures (id, computer, image_id, revision_id, image_name, revision, provisioner, os, end_state,
         repository, status, request, owner, lease_until, event_count, created_at, updated_at)
       VALUES (@id, @computer, @imageId, @revisionId, @imageName, @revision, @provisioner, @os, @endState,
         @repository, @status, @request, @owner, @leaseUntil, 0, @now, @now)`,
    ),
    claim: db.prepare<[{ id: string; owner: string; leaseUntil: string; now: string }]>(
      `UPDATE captures SET owner = @owner, lease_until = @leaseUntil, updated_at = @now
       WHERE id = @id AND status IN ('queued', 'running')`,
    ),
    renew: db.prepare<
      [{ owner: string; leaseUntil: string }],
      { id: string; cancel_requested: string | null }
    >(
      `UPDATE captures SET lease_until = @leaseUntil
       WHERE owner = @owner AND status IN ('queued', 'running')
       RETURNING id, cancel_requested`,
    ),
    releaseOwned: db.prepare<[string]>(
      `UPDATE captures SET owner = NULL, lease_until = NULL
       WHERE owner = ? AND status IN ('queued', 'running')`,
    ),
    requestCancel: db.prepare<[{ id: string; reason: string; now: string }]>(
      `UPDATE captures SET cancel_requested = @reason, updated_at = @now
       WHERE id = @id AND status IN ('queued', 'running')`,
    ),
    setRunning: db.prepare<[{ id: string; now: string }]>(
      `UPDATE captures SET status = 'running', updated_at = @now WHERE id = @id AND status = 'queued'`,
    ),
    // One statement updates the capture and reserves the next event number; the event insert follows.
    transition: db.prepare<
      [
        {
          id: string;
          stateValue: string;
          snapshot: string | null;
          machineVersion: string | null;
          hasError: number;
          errorCode: string | null;
          errorStep: string | null;
          errorMessage: string | null;
          now: string;
        },
      ],
      { event_count: number }
    >(
      `UPDATE captures
       SET state_value = @stateValue,
           snapshot = coalesce(@snapshot, snapshot),
           machine_version = coalesce(@machineVersion, machine_version),
           error_code = CASE WHEN @hasError THEN @errorCode ELSE error_code END,
           error_step = CASE WHEN @hasError THEN @errorStep ELSE error_step END,
           error_message = CASE WHEN @hasError THEN @errorMessage ELSE error_message END,
           event_count = event_count + 1,
           updated_at = @now
       WHERE id = @id AND status IN ('queued', 'running')
       RETURNING event_count`,
    ),
    finish: db.prepare<
      [
        {
          id: string;
          status: string;
          fromStatus: string;
          repository: string | null;
          errorCode: string | null;
          errorStep: string | null;
          errorMessage: string | null;
          outcome: string | null;
          now: string;
        },
      ]
    >(
      `UPDATE captures
       SET status = @status, repository = coalesce(@repository, repository),
           error_code = coalesce(@errorCode, error_code), error_step = coalesce(@errorStep, error_step),
           error_message = coalesce(@errorMessage, error_message), release_outcome = @outcome,
           finished_at = @now, updated_at = @now
       WHERE id = @id AND status = @fromStatus`,
    ),
    nextEvent: db.prepare<[{ id: string; now: string }], { event_count: number }>(
      `UPDATE captures SET event_count = event_count + 1, updated_at = @now WHERE id = @id RETURNING event_count`,
    ),
    insertEvent: db.prepare<
      [
        {
          captureId: string;
          seq: number;
          at: string;
          type: string;
          stateValue: string | null;
          step: string | null;
          details: string | null;
          durationMs: number | null;
        },
      ]
    >(
      `INSERT INTO capture_events (capture_id, seq, at, type, state_value, step, details, duration_ms)
       VALUES (@captureId, @seq, @at, @type, @stateValue, @step, @details, @durationMs)`,
    ),
    events: db.prepare<[string], EventRow>('SELECT * FROM capture_events WHERE capture_id = ? ORDER BY seq'),
    unfinished: db.prepare<[], CaptureRow>(
      `SELECT ${CAPTURE_COLUMNS} FROM captures WHERE status IN ('queued', 'running') ORDER BY created_at, rowid`,
    ),
    snapshot: db.prepare<
      [string],
      {
        id: string;
        status: string;
        state_value: string | null;
        snapshot: string | null;
        machine_version: string | null;
        updated_at: string;
      }
    >('SELECT id, status, state_value, snapshot, machine_version, updated_at FROM captures WHERE id = ?'),
    recordRemoteTag: db.prepare<[{ captureId: string; host: string; tag: string; now: string }]>(
      `INSERT OR IGNORE INTO remote_tags (capture_id, host, tag, recorded_at)
       VALUES (@captureId, @host, @tag, @now)`,
    ),
    remoteTags: db.prepare<[string], { host: string; tag: string; recorded_at: string }>(
      'SELECT host, tag, recorded_at FROM remote_tags WHERE capture_id = ? ORDER BY recorded_at, rowid',
    ),
    forgetRemoteTag: db.prepare<[{ captureId: string; host: string; tag: string }]>(
      'DELETE FROM remote_tags WHERE capture_id = @captureId AND host = @host AND tag = @tag',
    ),
    forgetRemoteTags: db.prepare<[string]>('DELETE FROM remote_tags WHERE capture_id = ?'),
  };
}

type Statements = ReturnType<typeof prepareStatements>;

function isBusy(err: unknown): boolean {
  return (
    typeof err === 'object' &&
    err !== null &&
    'code' in err &&
    typeof err.code === 'string' &&
    err.code.startsWith('SQLITE_BUSY')
  );
}

/**
 * Switches the file to WAL mode and returns the journal mode SQLite reports. Leaving rollback mode needs
 * an exclusive lock, and SQLite answers `SQLITE_BUSY` at once instead of calling the busy handler when
 * another connection holds the file (two runners opening a new file together), so the wait is done here,
 * up to the busy timeout. A file already in WAL mode returns at once.
 */
function enableWal(db: Database.Database, busyTimeoutMs: number): unknown {
  const deadline = Date.now() + busyTimeoutMs;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let delayMs = 1; ; delayMs = Math.min(delayMs * 2, 50)) {
    try {
      return db.pragma('journal_mode = WAL', { simple: true });
    } catch (err) {
      if (!isBusy(err) || Date.now() >= deadline) throw err;
      // Opening is synchronous (and rare): block the thread briefly rather than spin.
      Atomics.wait(pause, 0, 0, delayMs);
    }
  }
}

/** Opens (creating and migrating if needed) the store at `path`. Throws a `VclError` on any problem. */
export function openSqliteStore(path: string, options: SqliteStoreOptions = {}): SqliteCaptureStore {
  return new SqliteCaptureStore(path, options);
}

export class SqliteCaptureStore implements CaptureStore {
  readonly path: string;
  /** Schema version of the file after open (always {@link SCHEMA_VERSION}). */
  readonly schemaVersion: number;
  private readonly db: Database.Database;
  private readonly s: Statements;
  private readonly outbox: Outbox;
  private readonly tx: Database.Transaction<(fn: () => unknown) => unknown>;
  private readonly clock: () => Date;
  private readonly newCaptureId: () => string;

  constructor(path: string, options: SqliteStoreOptions = {}) {
    this.path = path;
    this.clock = options.now ?? (() => new Date());
    this.newCaptureId = options.newCaptureId ?? randomUUID;
    const logger = options.logger ?? silentLogger();
    const busyTimeoutMs = checkInteger(options.busyTimeoutMs ?? 5000, 'busyTimeoutMs');
    const synchronous = options.synchronous ?? 'NORMAL';
    if (synchronous !== 'NORMAL' && synchronous !== 'FULL')
      throw invalid('synchronous must be NORMAL or FULL');

    let db: Database.Database;
    try {
      db = new Database(path, { timeout: busyTimeoutMs });
    } catch (err) {
      throw storeError(
        STORE_ERROR_CODES.STORE_ERROR,
        `cannot open store ${path}: ${err instanceof Error ? err.message : String(err)}`,
        { path },
        err,
      );
    }
    try {
      db.pragma(`busy_timeout = ${busyTimeoutMs}`);
      // Refuse foreign or newer files before anything (even the journal mode) is written to them.
      checkStoreFile(db, SCHEMA_VERSION);
      const mode = enableWal(db, busyTimeoutMs);
      if (mode !== 'wal') {
        throw storeError(
          STORE_ERROR_CODES.STORE_ERROR,
          `${path}: SQLite refused WAL mode (journal_mode is ${String(mode)})`,
          {
            path,
          },
        );
      }
      db.pragma(`synchronous = ${synchronous}`);
      db.pragma('foreign_keys = ON');
      const applied = applyMigrations(db, MIGRATIONS, () => this.now());
      if (applied.length > 0) logger.info({ path, applied }, 'store schema migrated');
      this.schemaVersion = db.pragma('user_version', { simple: true }) as number;
      this.s = prepareStatements(db);
      this.outbox = prepareOutbox(db);
    } catch (err) {
      db.close();
      const sqliteCode =
        typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
          ? err.code
          : '';
      if (sqliteCode === 'SQLITE_NOTADB') {
        throw storeError(
          STORE_ERROR_CODES.NOT_A_CAPTURE_STORE,
          `${path} is not an SQLite database, so not a vcl-capture store`,
          { path },
          err,
        );
      }
      throw asStoreError(err, `opening store ${path}`);
    }
    this.db = db;
    this.tx = db.transaction((fn: () => unknown) => fn());
  }

  private now(): string {
    return this.clock().toISOString();
  }

  /** The time `ms` from now, as stored. */
  private later(ms: number): string {
    return new Date(this.clock().getTime() + ms).toISOString();
  }

  private ensureOpen(operation: string): void {
    if (!this.db.open)
      throw storeError(STORE_ERROR_CODES.STORE_CLOSED, `${operation}: the store ${this.path} is closed`);
  }

  /** Runs `fn` in a `BEGIN IMMEDIATE` transaction; any throw rolls everything back. */
  private write<T>(operation: string, fn: () => T): T {
    this.ensureOpen(operation);
    try {
      return this.tx.immediate(fn) as T;
    } catch (err) {
      throw asStoreError(err, operation);
    }
  }

  /** Runs `fn` in a read transaction (one consistent snapshot of the WAL for multi-query reads). */
  private read<T>(operation: string, fn: () => T): T {
    this.ensureOpen(operation);
    try {
      return this.tx.deferred(fn) as T;
    } catch (err) {
      throw asStoreError(err, operation);
    }
  }

  private appendEvent(
    captureId: string,
    now: string,
    event: {
      type: string;
      stateValue?: string | null;
      step?: string | null;
      details?: string | null;
      durationMs?: number | null;
    },
    seq?: number,
  ): number {
    const n = seq ?? this.s.nextEvent.get({ id: captureId, now })?.event_count;
    if (n === undefined) throw storeError(STORE_ERROR_CODES.NOT_FOUND, `capture ${captureId} does not exist`);
    this.s.insertEvent.run({
      captureId,
      seq: n,
      at: now,
      type: event.type,
      stateValue: event.stateValue ?? null,
      step: event.step ?? null,
      details: event.details ?? null,
      durationMs: event.durationMs ?? null,
    });
    return n;
  }

  private requireCapture(captureId: string): CaptureRow {
    const row = this.s.capture.get(captureId);
    if (row === undefined) {
      throw storeError(STORE_ERROR_CODES.NOT_FOUND, `capture ${JSON.stringify(captureId)} does not exist`, {
        captureId,
      });
    }
    return row;
  }

  private wrongStatus(row: CaptureRow, operation: string, allowed: string): never {
    throw storeError(
      STORE_ERROR_CODES.INVALID_TRANSITION,
      `cannot ${operation} capture ${row.id}: it is ${row.status}, and only a ${allowed} capture can be`,
      { captureId: row.id, status: row.status },
    );
  }

  /** Why a compare-and-swap on `name` failed: always throws. */
  private explainComputer(name: string, captureId: string | null, expectedVersion: number | null): never {
    const row = this.s.computer.get(name);
    if (row === undefined) {
      throw storeError(
        STORE_ERROR_CODES.UNKNOWN_COMPUTER,
        `computer ${name} is not registered (register it from the inventory first)`,
        { computer: name },
      );
    }
    if (row.capture_id !== null) {
      const holder = this.s.capture.get(row.capture_id);
      const what =
        holder === undefined
          ? ''
          : ` (image ${holder.image_name}, ${holder.status} since ${holder.created_at})`;
      throw storeError(
        STORE_ERROR_CODES.COMPUTER_BUSY,
        `computer ${name} is held by capture ${row.capture_id}${what}`,
        { computer: name, heldBy: row.capture_id, state: row.state, ...(captureId ? { captureId } : {}) },
      );
    }
    if (expectedVersion !== null && row.version !== expectedVersion) {
      throw storeError(
        STORE_ERROR_CODES.COMPUTER_CHANGED,
        `computer ${name} changed: expected version ${expectedVersion}, it is at version ${row.version} (state ${row.state})`,
        { computer: name, expectedVersion, version: row.version, state: row.state },
      );
    }
    throw storeError(
      STORE_ERROR_CODES.COMPUTER_BUSY,
      `computer ${name} is in state ${row.state}; a capture may only take it from ${CAPTURABLE_COMPUTER_STATES.join(' or ')}`,
      { computer: name, state: row.state, ...(captureId ? { captureId } : {}) },
    );
  }

  private reserveInTx(
    computer: string,
    captureId: string,
    expectedVersion: number | null,
    now: string,
  ): void {
    const row = this.s.reserve.get({ name: computer, captureId, expectedVersion, now });
    if (row === undefined) this.explainComputer(computer, captureId, expectedVersion);
    this.appendEvent(captureId, now, {
      type: STORE_EVENT_TYPES.RESERVED,
      details: toJson({ computer, from: row.held_from_state, version: row.version }, 'details'),
    });
  }

  // ---- computers ------------------------------------------------------------------------------------

  async registerComputers(computers: readonly ComputerRegistration[]): Promise<ComputerRecord[]> {
    if (!Array.isArray(computers)) throw invalid('registerComputers expects an array of computers');
    const seen = new Set<string>();
    const checked = computers.map((c) => {
      const name = validateSafeName(c?.name, 'computer name');
      if (seen.has(name)) throw invalid(`computer ${name} is listed twice`, { computer: name });
      seen.add(name);
      const state = checkComputerState(c.state ?? 'available');
      if (state === 'image') {
        throw storeError(
          STORE_ERROR_CODES.INVALID_TRANSITION,
          `computer ${name} cannot be registered in state image: only a reservation puts a computer there`,
          { computer: name },
        );
      }
      return { name, state };
    });
    return this.write('registerComputers', () => {
      const now = this.now();
      return checked.map(({ name, state }) => {
        this.s.insertComputer.run({ name, state, now });
        const row = this.s.computer.get(name);
        if (row === undefined) throw storeError(STORE_ERROR_CODES.STORE_ERROR, `computer ${name} vanished`);
        return toComputer(row);
      });
    });
  }

  async getComputer(name: string): Promise<ComputerRecord | undefined> {
    return this.read('getComputer', () => {
      const row = this.s.computer.get(name);
      return row === undefined ? undefined : toComputer(row);
    });
  }

  async listComputers(): Promise<ComputerRecord[]> {
    return this.read('listComputers', () => this.s.computers.all().map(toComputer));
  }

  async setComputerState(name: string, state: ComputerState, options?: CasOptions): Promise<ComputerRecord> {
    validateSafeName(name, 'computer name');
    checkComputerState(state);
    const expectedVersion = checkCasOptions(options);
    if (state === 'image') {
      throw storeError(
        STORE_ERROR_CODES.INVALID_TRANSITION,
        `computer ${name} cannot be set to image by hand: only a capture's reservation puts it there`,
        { computer: name },
      );
    }
    return this.write('setComputerState', () => {
      const row = this.s.setComputerState.get({ name, state, expectedVersion, now: this.now() });
      if (row === undefined) this.explainComputer(name, null, expectedVersion);
      return toComputer(row);
    });
  }

  /**
   * The capture that put a computer in maintenance: the newest one that released it there, unless an
   * operator released the computer from that one since (it went back to maintenance another way).
   */
  private maintenanceCause(row: ComputerRow): MaintenanceCause | null {
    if (row.state !== 'maintenance' || row.capture_id !== null) return null;
    const capture = this.s.lastToMaintenance.get(row.name);
    if (capture === undefined) return null;
    if (this.s.eventOfType.get(capture.id, STORE_EVENT_TYPES.RELEASED) !== undefined) return null;
    const record = toCapture(capture);
    return {
      captureId: record.id,
      image: record.image.name,
      status: record.status,
      error: record.lastError,
      at: record.finishedAt,
    };
  }

  async describeComputers(): Promise<ComputerStatus[]> {
    return this.read('describeComputers', () =>
      this.s.computers.all().map((row) => ({ ...toComputer(row), maintenance: this.maintenanceCause(row) })),
    );
  }

  async describeComputer(name: string): Promise<ComputerStatus | undefined> {
    return this.read('describeComputer', () => {
      const row = this.s.computer.get(name);
      return row === undefined ? undefined : { ...toComputer(row), maintenance: this.maintenanceCause(row) };
    });
  }

  async releaseComputer(name: string, reason: string, options?: CasOptions): Promise<ComputerRelease> {
    validateSafeName(name, 'computer name');
    const why = checkShortText(reason, 'reason');
    const expectedVersion = checkCasOptions(options);
    return this.write('releaseComputer', () => {
      const row = this.s.computer.get(name);
      if (row === undefined || row.capture_id !== null) this.explainComputer(name, null, expectedVersion);
      if (row.state !== 'maintenance') {
        throw storeError(
          STORE_ERROR_CODES.INVALID_TRANSITION,
          `computer ${name} is in state ${row.state}, not maintenance: there is nothing to release`,
          { computer: name, state: row.state },
        );
      }
      const cause = this.maintenanceCause(row);
      // Back to the state the capture that sent it to maintenance had reserved it from.
      const reserved =
        cause === null ? undefined : this.s.eventOfType.get(cause.captureId, STORE_EVENT_TYPES.RESERVED);
      const from = parseJson<{ from?: unknown }>(reserved?.details ?? null)?.from;
      const state: ComputerState = CAPTURABLE_COMPUTER_STATES.find((s) => s === from) ?? 'available';
      const now = this.now();
      const released = this.s.releaseFromMaintenance.get({ name, state, expectedVersion, now });
      if (released === undefined) this.explainComputer(name, null, expectedVersion);
      if (cause !== null) {
        this.appendEvent(cause.captureId, now, {
          type: STORE_EVENT_TYPES.RELEASED,
          details: toJson(
            {
              computer: name,
              from: 'maintenance',
              to: released.state,
              reason: why,
              version: released.version,
            },
            'details',
          ),
        });
      }
      return { computer: toComputer(released), cause, reason: why };
    });
  }

  // ---- images ---------------------------------------------------------------------------------------

  async registerImage(image: ImageRegistration): Promise<ImageRecord> {
    if (typeof image !== 'object' || image === null) throw invalid('registerImage expects an image');
    const osName = validateOsName(image.osName);
    const prettyName = validatePrettyName(image.prettyName);
    const owner = checkShortText(image.owner, 'owner');
    const id = image.id === undefined ? null : validateImageId(image.id);
    return this.write('registerImage', () => {
      if (id !== null) {
        const existing = this.s.image.get(id);
        if (existing !== undefined) {
          if (
            existing.os_name === osName &&
            existing.pretty_name === prettyName &&
            existing.owner === owner
          ) {
            return toImage(existing);
          }
          throw storeError(
            STORE_ERROR_CODES.IMAGE_CONFLICT,
            `image ${id} is already registered as ${existing.os_name} "${existing.pretty_name}" owned by ${existing.owner}`,
            { imageId: id },
          );
        }
      }
      const row = this.s.insertImage.get({ id, osName, prettyName, owner, now: this.now() });
      if (row === undefined) throw storeError(STORE_ERROR_CODES.STORE_ERROR, 'image insert returned nothing');
      // Proves the first revision's name will be valid (e.g. not too long) before the image is kept.
      nextRevisionName({ osName, prettyName, imageId: row.id }, undefined, 0);
      return toImage(row);
    });
  }

  private imagesWithRevisions(rows: ImageRow[], includeDeleted: boolean): ImageWithRevisions[] {
    return rows.map((row) => ({
      ...toImage(row),
      revisions: this.s.revisionsOf
        .all(row.id)
        .filter((r) => includeDeleted || r.deleted === 0)
        .map(toRevision),
    }));
  }

  async getImage(id: number): Promise<ImageWithRevisions | undefined> {
    return this.read('getImage', () => {
      const row = this.s.image.get(id);
      return row === undefined ? undefined : this.imagesWithRevisions([row], true)[0];
    });
  }

  async listImages(filter: ImageFilter = {}): Promise<ImageWithRevisions[]> {
    const owner = filter.owner === undefined ? null : checkShortText(filter.owner, 'owner');
    const includeDeleted = filter.includeDeleted ?? true;
    return this.read('listImages', () => {
      const rows = this.s.images.all({ owner });
      return this.imagesWithRevisions(rows, includeDeleted);
    });
  }

  async setProductionRevision(imageId: number, revision: number): Promise<ImageRevisionRecord> {
    validateImageId(imageId);
    validateRevisionNumber(revision);
    return this.write('setProductionRevision', () => {
      const row = this.s.revision.get(imageId, revision);
      if (row === undefined) {
        throw storeError(STORE_ERROR_CODES.NOT_FOUND, `image ${imageId} has no revision ${revision}`, {
          imageId,
          revision,
        });
      }
      if (row.deleted === 1) {
        throw storeError(
          STORE_ERROR_CODES.INVALID_TRANSITION,
          `revision ${row.name} is deleted (its capture has not completed), so it cannot be production`,
          { imageId, revision },
        );
      }
      this.s.clearProduction.run(imageId, row.id);
      this.s.setProduction.run(row.id);
      const updated = this.s.revisionById.get(row.id);
      if (updated === undefined)
        throw storeError(STORE_ERROR_CODES.STORE_ERROR, `revision ${row.name} vanished`);
      return toRevision(updated);
    });
  }

  // ---- captures -------------------------------------------------------------------------------------

  async createCapture(capture: NewCapture): Promise<CaptureRecord> {
    if (typeof capture !== 'object' || capture === null) throw invalid('createCapture expects a capture');
    const id = validateSafeName(capture.id ?? this.newCaptureId(), 'capture id');
    const computer = validateSafeName(capture.computer, 'computer name');
    const imageId = validateImageId(capture.imageId);
    const provisioner = checkProvisioner(capture.provisioner);
    const os = checkOs(capture.os);
    const endState = capture.endState === undefined ? null : checkEndState(capture.endState);
    const repository = capture.repository === undefined ? null : normalizeRepository(capture.repository);
    const explicitRevision =
      capture.revision === undefined ? undefined : validateRevisionNumber(capture.revision);
    const reserve = capture.reserve ?? true;
    if (typeof reserve !== 'boolean') throw invalid('reserve must be a boolean');
    const request = capture.request === undefined ? null : toJson(capture.request, 'request');
    const owner = capture.owner === undefined ? null : checkShortText(capture.owner, 'owner');
    const leaseMs = owner === null ? 0 : checkInteger(capture.leaseMs ?? 60_000, 'leaseMs', 1);

    return this.write('createCapture', () => {
      const now = this.now();
      if (this.s.computer.get(computer) === undefined) this.explainComputer(computer, id, null);
      if (this.s.captureExists.get(id) !== undefined) {
        throw storeError(STORE_ERROR_CODES.CAPTURE_EXISTS, `capture ${id} already exists`, { captureId: id });
      }
      const image = this.s.image.get(imageId);
      if (image === undefined) {
        throw storeError(STORE_ERROR_CODES.NOT_FOUND, `image ${imageId} is not registered`, { imageId });
      }
      const latest = this.s.latestRevision.get(imageId);
      const revision = explicitRevision ?? (latest === undefined ? 0 : latest.revision + 1);
      if (explicitRevision !== undefined) {
        const existing = this.s.revision.get(imageId, explicitRevision);
        if (existing !== undefined) {
          throw storeError(
            STORE_ERROR_CODES.REVISION_EXISTS,
            `revision ${explicitRevision} of image ${imageId} already exists (${existing.name}${
              existing.deleted ? ', deleted' : ''
            }); nothing is overwritten`,
            { imageId, revision: explicitRevision, name: existing.name },
          );
        }
      }
      const name = validateImageName(
        nextRevisionName({ osName: image.os_name, prettyName: image.pretty_name, imageId }, latest, revision),
      );
      const taken = this.s.revisionByName.get(name);
      if (taken !== undefined) {
        throw storeError(
          STORE_ERROR_CODES.REVISION_EXISTS,
          `revision name ${name} is already taken by revision ${taken.revision} of image ${taken.image_id}; nothing is overwritten`,
          { imageId, revision, name, takenBy: { imageId: taken.image_id, revision: taken.revision } },
        );
      }
      const revisionRow = this.s.insertRevision.get({ imageId, revision, name, now });
      if (revisionRow === undefined)
        throw storeError(STORE_ERROR_CODES.STORE_ERROR, 'revision insert returned nothing');
      this.s.insertCapture.run({
        id,
        computer,
        imageId,
        revisionId: revisionRow.id,
        imageName: name,
        revision,
        provisioner,
        os,
        endState,
        repository,
        status: 'queued',
        request,
        owner,
        leaseUntil: owner === null ? null : this.later(leaseMs),
        now,
      });
      this.appendEvent(id, now, {
        type: STORE_EVENT_TYPES.CREATED,
        details: toJson({ image: name, imageId, revision, provisioner, os, endState, repository }, 'details'),
      });
      if (reserve) {
        this.reserveInTx(computer, id, null, now);
        this.s.setRunning.run({ id, now });
      }
      return toCapture(this.requireCapture(id));
    });
  }

  async reserveComputer(captureId: string, options?: CasOptions): Promise<CaptureRecord> {
    const expectedVersion = checkCasOptions(options);
    return this.write('reserveComputer', () => {
      const row = this.requireCapture(captureId);
      if (row.status !== 'queued') this.wrongStatus(row, 'reserve the computer of', 'queued');
      const now = this.now();
      this.reserveInTx(row.computer, captureId, expectedVersion, now);
      this.s.setRunning.run({ id: captureId, now });
      return toCapture(this.requireCapture(captureId));
    });
  }

  async recordTransition(captureId: string, transition: TransitionInput): Promise<number> {
    if (typeof transition !== 'object' || transition === null)
      throw invalid('recordTransition expects a transition');
    const stateValue = checkStateValue(transition.stateValue);
    const snapshot = transition.snapshot === undefined ? null : toJson(transition.snapshot, 'snapshot');
    const machineVersion =
      transition.machineVersion === undefined
        ? null
        : checkShortText(transition.machineVersion, 'machineVersion');
    const error = transition.error === undefined ? undefined : checkStepFailure(transition.error, 'error');
    const event = checkEvent(transition.event);
    return this.write('recordTransition', () => {
      const now = this.now();
      const updated = this.s.transition.get({
        id: captureId,
        stateValue,
        snapshot,
        machineVersion,
        hasError: error === undefined ? 0 : 1,
        errorCode: error?.code ?? null,
        errorStep: error?.step ?? null,
        errorMessage: error?.message ?? null,
        now,
      });
      if (updated === undefined)
        this.wrongStatus(this.requireCapture(captureId), 'record a transition of', 'queued or running');
      return this.appendEvent(captureId, now, { ...event, stateValue }, updated.event_count);
    });
  }

  async completeCapture(
    captureId: string,
    artifact: ImageArtifact,
    options: CompleteOptions = {},
  ): Promise<CaptureRecord> {
    const checked = checkArtifact(artifact);
    const repositoryOption =
      options.repository === undefined ? null : normalizeRepository(options.repository);
    const extra = checkDetails(options.details, 'details');
    return this.write('completeCapture', () => {
      const row = this.requireCapture(captureId);
      if (row.status !== 'running') this.wrongStatus(row, 'complete', 'running');
      const repository = repositoryOption ?? row.repository;
      if (repository === null) {
        throw invalid(`capture ${captureId} has no repository: give one to completeCapture`, { captureId });
      }
      const location = resolveLocation(repository, checked.path);
      const occupant = this.s.liveAtLocation.get(location.repository, location.path);
      if (occupant !== undefined) {
        throw storeError(
          STORE_ERROR_CODES.LOCATION_IN_USE,
          `${location.absolutePath} already holds revision ${occupant.name}; nothing is overwritten`,
          { captureId, absolutePath: location.absolutePath, occupant: occupant.name },
        );
      }
      const now = this.now();
      const undeleted = this.s.undeleteRevision.run({
        id: row.revision_id,
        sizeBytes: checked.sizeBytes,
        sha256: checked.sha256,
        format: checked.format,
        repository: location.repository,
        path: location.path,
        now,
      });
      if (undeleted.changes !== 1) {
        throw storeError(
          STORE_ERROR_CODES.INVALID_TRANSITION,
          `revision ${row.image_name} of capture ${captureId} is not deleted any more: it was completed already`,
          { captureId },
        );
      }
      this.s.finish.run({
        id: captureId,
        status: 'completed',
        fromStatus: 'running',
        repository: location.repository,
        errorCode: null,
        errorStep: null,
        errorMessage: null,
        outcome: null,
        now,
      });
      const computer = this.releaseInTx(row, 'reload', now);
      this.appendEvent(captureId, now, {
        type: STORE_EVENT_TYPES.COMPLETED,
        details: toJson(
          {
            ...(extra === null ? {} : (JSON.parse(extra) as Record<string, unknown>)),
            artifact: { ...checked, path: location.path },
            location: location.absolutePath,
            computer: { name: computer.name, state: computer.state },
          },
          'details',
        ),
        durationMs: Date.parse(now) - Date.parse(row.created_at),
      });
      const record = toCapture(this.requireCapture(captureId));
      this.announce({
        type: 'capture.completed',
        capture: record,
        computerState: computer.state as ComputerState,
        artifact: {
          path: location.path,
          location: location.absolutePath,
          sizeBytes: checked.sizeBytes,
          sha256: checked.sha256,
          format: checked.format,
        },
        now,
      });
      return record;
    });
  }

  /** Hands the computer held by `row` back: to `state`, or to the state it was reserved from (null). */
  private releaseInTx(row: CaptureRow, state: ComputerState | null, now: string): ComputerRow {
    const released = this.s.release.get({ name: row.computer, captureId: row.id, state, now });
    if (released === undefined) {
      const holder = this.s.computer.get(row.computer)?.capture_id ?? null;
      throw storeError(
        STORE_ERROR_CODES.INVALID_TRANSITION,
        `computer ${row.computer} is not held by capture ${row.id} (held by ${holder ?? 'nobody'}): the store is inconsistent, nothing was changed`,
        { captureId: row.id, computer: row.computer, heldBy: holder },
      );
    }
    return released;
  }

  private finishUnsuccessfully(
    status: 'failed' | 'cancelled',
    captureId: string,
    error: StepFailure,
    outcome: ReleaseOutcome,
    options: FinishOptions,
  ): CaptureRecord {
    const failure = checkStepFailure(error, status === 'failed' ? 'error' : 'reason');
    checkOutcome(outcome);
    const extra = checkDetails(options.details, 'details');
    const operation = status === 'failed' ? 'fail' : 'cancel';
    return this.write(`${operation}Capture`, () => {
      const row = this.requireCapture(captureId);
      if (row.status !== 'running' && row.status !== 'queued')
        this.wrongStatus(row, operation, 'queued or running');
      const now = this.now();
      const held = row.status === 'running';
      const computer = held
        ? this.releaseInTx(row, outcome === 'maintenance' ? 'maintenance' : null, now)
        : undefined;
      this.s.finish.run({
        id: captureId,
        status,
        fromStatus: row.status,
        repository: null,
        errorCode: failure.code,
        errorStep: failure.step,
        errorMessage: failure.message,
        outcome: held ? outcome : null,
        now,
      });
      this.appendEvent(captureId, now, {
        type: status === 'failed' ? STORE_EVENT_TYPES.FAILED : STORE_EVENT_TYPES.CANCELLED,
        step: failure.step,
        details: toJson(
          {
            ...(extra === null ? {} : (JSON.parse(extra) as Record<string, unknown>)),
            error: failure,
            outcome: held ? outcome : null,
            computer: computer === undefined ? null : { name: computer.name, state: computer.state },
          },
          'details',
        ),
        durationMs: Date.parse(now) - Date.parse(row.created_at),
      });
      const record = toCapture(this.requireCapture(captureId));
      const announced = {
        capture: record,
        computerState: (computer?.state ??
          this.s.computer.get(row.computer)?.state ??
          null) as ComputerState | null,
        artifact: null,
        now,
      };
      this.announce({ ...announced, type: status === 'failed' ? 'capture.failed' : 'capture.cancelled' });
      if (held && outcome === 'maintenance') this.announce({ ...announced, type: 'computer.maintenance' });
      return record;
    });
  }

  async failCapture(
    captureId: string,
    error: StepFailure,
    outcome: ReleaseOutcome,
    options: FinishOptions = {},
  ): Promise<CaptureRecord> {
    return this.finishUnsuccessfully('failed', captureId, error, outcome, options);
  }

  async cancelCapture(
    captureId: string,
    reason: StepFailure,
    outcome: ReleaseOutcome,
    options: FinishOptions = {},
  ): Promise<CaptureRecord> {
    return this.finishUnsuccessfully('cancelled', captureId, reason, outcome, options);
  }

  /** Writes a notification into the outbox, inside the caller's transaction (see src/store/outbox.ts). */
  private announce(a: Omit<Announcement, 'image'>): void {
    const image = this.s.image.get(a.capture.image.imageId);
    this.outbox.announce({
      ...a,
      image: { owner: image?.owner ?? '', prettyName: image?.pretty_name ?? '' },
    });
  }

  // ---- notification outbox --------------------------------------------------------------------------

  async claimNotifications(
    owner: string,
    options: ClaimNotificationsOptions,
  ): Promise<NotificationDelivery[]> {
    const me = checkShortText(owner, 'owner');
    if (typeof options !== 'object' || options === null || !Array.isArray(options.targets))
      throw invalid('claimNotifications expects { targets, leaseMs }');
    const targets = options.targets.map((t, i) => ({
      name: checkShortText(t?.name, `targets[${i}].name`),
      events: (Array.isArray(t.events) ? (t.events as readonly unknown[]) : []).map((e) => {
        if (!(NOTIFICATION_EVENT_TYPES as readonly unknown[]).includes(e))
          throw invalid(
            `targets[${i}].events: ${JSON.stringify(e)} is not one of ${NOTIFICATION_EVENT_TYPES.join(', ')}`,
          );
        return e as NotificationEventType;
      }),
    }));
    const leaseMs = checkInteger(options.leaseMs, 'leaseMs', 1);
    const limit = checkInteger(options.limit ?? 20, 'limit', 1);
    if (limit > MAX_LIST_LIMIT) throw invalid(`limit must be at most ${MAX_LIST_LIMIT}`, { limit });
    const maxAgeMs = checkInteger(options.maxAgeMs ?? 24 * 3600_000, 'maxAgeMs', 1);
    return this.write('claimNotifications', () =>
      this.outbox.claim(me, targets, {
        now: this.now(),
        since: this.later(-maxAgeMs),
        until: this.later(leaseMs),
        limit,
      }),
    );
  }

  async finishDelivery(id: number, outcome: DeliveryOutcome): Promise<NotificationDelivery> {
    checkInteger(id, 'id', 1);
    const result = (outcome as { result?: unknown } | null)?.result;
    if (result !== 'delivered' && result !== 'failed' && result !== 'released')
      throw invalid('outcome.result must be delivered, failed or released');
    if (outcome.result === 'failed') {
      if (typeof outcome.error !== 'string') throw invalid('outcome.error must be a string');
      if (outcome.retryAt !== null && Number.isNaN(Date.parse(outcome.retryAt)))
        throw invalid('outcome.retryAt must be an ISO time or null');
    }
    return this.write('finishDelivery', () => this.outbox.finish(id, outcome, this.now()));
  }

  async listNotifications(filter: NotificationFilter = {}): Promise<NotificationDelivery[]> {
    const statuses: NotificationStatus[] =
      filter.status === undefined
        ? []
        : (Array.isArray(filter.status) ? filter.status : [filter.status]).map((v: unknown) => {
            if (!(NOTIFICATION_STATUSES as readonly unknown[]).includes(v))
              throw invalid(
                `notification status ${JSON.stringify(v)} is not one of ${NOTIFICATION_STATUSES.join(', ')}`,
              );
            return v as NotificationStatus;
          });
    const limit = checkInteger(filter.limit ?? DEFAULT_LIST_LIMIT, 'limit', 1);
    if (limit > MAX_LIST_LIMIT) throw invalid(`limit must be at most ${MAX_LIST_LIMIT}`, { limit });
    return this.read('listNotifications', () => this.outbox.list(statuses, limit));
  }

  async countNotifications(): Promise<Record<NotificationStatus, number>> {
    return this.read('countNotifications', () => this.outbox.counts());
  }

  async retryNotification(id: number): Promise<NotificationDelivery> {
    checkInteger(id, 'id', 1);
    return this.write('retryNotification', () => this.outbox.retry(id, this.now()));
  }

  // ---- reads ----------------------------------------------------------------------------------------

  async listCaptures(filter: CaptureFilter = {}): Promise<CaptureRecord[]> {
    const statuses =
      filter.status === undefined
        ? []
        : (Array.isArray(filter.status) ? filter.status : [filter.status]).map(checkCaptureStatus);
    const computer =
      filter.computer === undefined ? null : validateSafeName(filter.computer, 'computer name');
    const limit = checkInteger(filter.limit ?? DEFAULT_LIST_LIMIT, 'limit', 1);
    if (limit > MAX_LIST_LIMIT) throw invalid(`limit must be at most ${MAX_LIST_LIMIT}`, { limit });
    const offset = checkInteger(filter.offset ?? 0, 'offset');
    const where: string[] = [];
    const params: (string | number)[] = [];
    if (statuses.length > 0) {
      where.push(`status IN (${statuses.map(() => '?').join(', ')})`);
      params.push(...statuses);
    }
    if (computer !== null) {
      where.push('computer = ?');
      params.push(computer);
    }
    const sql = `SELECT ${CAPTURE_COLUMNS} FROM captures ${
      where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''
    } ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?`;
    return this.read('listCaptures', () =>
      this.db
        .prepare<(string | number)[], CaptureRow>(sql)
        .all(...params, limit, offset)
        .map(toCapture),
    );
  }

  async getCaptureRecord(id: string): Promise<CaptureRecord | undefined> {
    return this.read('getCaptureRecord', () => {
      const row = this.s.capture.get(id);
      return row === undefined ? undefined : toCapture(row);
    });
  }

  async getCapture(id: string): Promise<CaptureDetail | undefined> {
    return this.read('getCapture', () => {
      const row = this.s.capture.get(id);
      if (row === undefined) return undefined;
      return { ...toCapture(row), events: this.s.events.all(id).map(toEvent) };
    });
  }

  async claimCapture(captureId: string, owner: string, options: ClaimOptions): Promise<CaptureRecord> {
    const me = checkShortText(owner, 'owner');
    const leaseMs = checkInteger(options?.leaseMs, 'leaseMs', 1);
    const replacing =
      options.replacing === undefined ? undefined : checkShortText(options.replacing, 'replacing');
    return this.write('claimCapture', () => {
      const row = this.requireCapture(captureId);
      if (row.status !== 'queued' && row.status !== 'running')
        this.wrongStatus(row, 'claim', 'queued or running');
      const now = this.now();
      const free =
        row.owner === null ||
        row.owner === me ||
        row.owner === replacing ||
        row.lease_until === null ||
        row.lease_until < now;
      if (!free) {
        throw storeError(
          STORE_ERROR_CODES.CAPTURE_CLAIMED,
          `capture ${captureId} is run by ${row.owner} (lease until ${row.lease_until}); it is not taken over`,
          { captureId, owner: row.owner, leaseUntil: row.lease_until },
        );
      }
      this.s.claim.run({ id: captureId, owner: me, leaseUntil: this.later(leaseMs), now });
      if (row.owner !== me) {
        this.appendEvent(captureId, now, {
          type: 'capture.claimed',
          details: toJson({ owner: me, previousOwner: row.owner, status: row.status }, 'details'),
        });
      }
      return toCapture(this.requireCapture(captureId));
    });
  }

  async renewLeases(owner: string, leaseMs: number): Promise<OwnedCapture[]> {
    const me = checkShortText(owner, 'owner');
    const ms = checkInteger(leaseMs, 'leaseMs', 1);
    return this.write('renewLeases', () =>
      this.s.renew
        .all({ owner: me, leaseUntil: this.later(ms) })
        .map((r) => ({ captureId: r.id, cancelRequested: r.cancel_requested })),
    );
  }

  async releaseCaptures(owner: string): Promise<number> {
    const me = checkShortText(owner, 'owner');
    return this.write('releaseCaptures', () => this.s.releaseOwned.run(me).changes);
  }

  async requestCancel(captureId: string, reason: string): Promise<CaptureRecord> {
    const why = checkShortText(reason, 'reason');
    return this.write('requestCancel', () => {
      const row = this.requireCapture(captureId);
      if (row.status !== 'queued' && row.status !== 'running')
        this.wrongStatus(row, 'cancel', 'queued or running');
      const now = this.now();
      this.s.requestCancel.run({ id: captureId, reason: why, now });
      this.appendEvent(captureId, now, {
        type: 'capture.cancel_requested',
        details: toJson({ reason: why }, 'details'),
      });
      return toCapture(this.requireCapture(captureId));
    });
  }

  async listResumableCaptures(): Promise<CaptureRecord[]> {
    return this.read('listResumableCaptures', () => this.s.unfinished.all().map(toCapture));
  }

  async loadSnapshot(captureId: string): Promise<StoredSnapshot | undefined> {
    return this.read('loadSnapshot', () => {
      const row = this.s.snapshot.get(captureId);
      if (row === undefined) return undefined;
      return {
        captureId: row.id,
        status: row.status as CaptureRecordStatus,
        stateValue: parseJson<StateValue>(row.state_value),
        snapshot: parseJson<unknown>(row.snapshot),
        machineVersion: row.machine_version,
        updatedAt: row.updated_at,
      };
    });
  }

  async recordRemoteTag(captureId: string, host: string, tag: string): Promise<void> {
    const h = checkShortText(host, 'host');
    const t = checkShortText(tag, 'tag');
    this.write('recordRemoteTag', () => {
      this.requireCapture(captureId);
      this.s.recordRemoteTag.run({ captureId, host: h, tag: t, now: this.now() });
    });
  }

  async remoteTags(captureId: string): Promise<RemoteTagRecord[]> {
    return this.read('remoteTags', () =>
      this.s.remoteTags.all(captureId).map((r) => ({ host: r.host, tag: r.tag, recordedAt: r.recorded_at })),
    );
  }

  async forgetRemoteTags(captureId: string, only?: { host: string; tag: string }): Promise<number> {
    return this.write('forgetRemoteTags', () =>
      only === undefined
        ? this.s.forgetRemoteTags.run(captureId).changes
        : this.s.forgetRemoteTag.run({ captureId, host: only.host, tag: only.tag }).changes,
    );
  }

  /**
   * SQLite only: folds the WAL back into the database file and truncates it (the runner may call it when
   * idle; SQLite also checkpoints on its own every 1000 pages).
   */
  checkpoint(): void {
    this.ensureOpen('checkpoint');
    this.db.pragma('wal_checkpoint(TRUNCATE)');
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
