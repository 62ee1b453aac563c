/**
 * Every statement of the store, written once for both databases: named parameters (`@name`, which
 * better-sqlite3 binds as they are and the PostgreSQL store numbers `$1, $2...`), SQL both accept, and a
 * {@link Dialect} for the two places the databases differ (a JSON array used as a list, the next image id).
 * A parameter that could be NULL is `CAST` where PostgreSQL could not otherwise infer its type.
 */

import { CAPTURE_COLUMNS, DELIVERY_COLUMNS } from './rows.js';
import { CAPTURABLE_COMPUTER_STATES, type StoreWake } from './types.js';

/** What differs between the databases' SQL. */
export interface Dialect {
  /** A subquery listing the text values of a JSON array parameter, e.g. `json_each(@p)`. */
  jsonList: (param: string) => string;
  /** The id given to an image registered without one: SQLite's rowid, or max + 1. */
  newImageId: string;
  /** Row locks a claim takes on its candidates (PostgreSQL: `FOR UPDATE SKIP LOCKED`; SQLite has one writer). */
  skipLocked: string;
  /**
   * Whether a statement may write to a second table in a `WITH` (PostgreSQL may, SQLite may not): then a
   * state change and its audit event are one statement, one round trip instead of two.
   */
  writesInWith: boolean;
}

/** `('available', 'reserved')`: built from constants, never from input. */
const CAPTURABLE_SQL = `(${CAPTURABLE_COMPUTER_STATES.map((s) => `'${s}'`).join(', ')})`;

/** Matches the capture's claim `@fenceOwner`/`@fenceGeneration` when given (NULL: an unfenced write). */
const FENCE_MATCHES =
  '(CAST(@fenceOwner AS TEXT) IS NULL OR (owner = @fenceOwner AND generation = @fenceGeneration))';

/** A slot whose holder's claim still holds (`host_slots s`, at `@now`). */
const LIVE_SLOT = `EXISTS (SELECT 1 FROM captures c WHERE c.id = s.capture_id AND c.owner = s.owner
  AND c.generation = s.generation AND c.status IN ('queued', 'running') AND c.lease_until >= @now)`;

/** A capture's state change, fenced: matches nothing once the capture is finished or claimed again. */
const TRANSITION = `UPDATE captures
       SET state_value = @stateValue,
           snapshot = coalesce(@snapshot, snapshot),
           machine_version = coalesce(@machineVersion, machine_version),
           error_code = CASE WHEN @hasError = 1 THEN @errorCode ELSE error_code END,
           error_step = CASE WHEN @hasError = 1 THEN @errorStep ELSE error_step END,
           error_message = CASE WHEN @hasError = 1 THEN @errorMessage ELSE error_message END,
           event_count = event_count + 1,
           updated_at = @now
       WHERE id = @id AND status IN ('queued', 'running') AND ${FENCE_MATCHES}`;

/** Matches `@expectedVersion` when given (NULL: any version). */
const VERSION_MATCHES = '(CAST(@expectedVersion AS INTEGER) IS NULL OR version = @expectedVersion)';

export function statements(d: Dialect) {
  return {
    computer: 'SELECT * FROM computers WHERE name = @name',
    computers: 'SELECT * FROM computers ORDER BY name',
    insertComputer: `INSERT INTO computers (name, state, version, updated_at) VALUES (@name, @state, 0, @now)
       ON CONFLICT (name) DO NOTHING`,
    setComputerState: `UPDATE computers SET state = @state, version = version + 1, updated_at = @now
       WHERE name = @name AND capture_id IS NULL AND ${VERSION_MATCHES}
       RETURNING *`,
    releaseFromMaintenance: `UPDATE computers SET state = @state, version = version + 1, updated_at = @now
       WHERE name = @name AND capture_id IS NULL AND state = 'maintenance' AND ${VERSION_MATCHES}
       RETURNING *`,
    // The newest capture that sent the computer to maintenance (see maintenanceCause).
    lastToMaintenance: `SELECT ${CAPTURE_COLUMNS} FROM captures WHERE computer = @name AND release_outcome = 'maintenance'
       ORDER BY finished_at DESC, rowid DESC LIMIT 1`,
    eventOfType:
      'SELECT * FROM capture_events WHERE capture_id = @captureId AND type = @type ORDER BY seq LIMIT 1',
    // The compare-and-swap: only from a capturable state, only if nobody holds it.
    reserve: `UPDATE computers
       SET state = 'image', capture_id = @captureId, held_from_state = state, version = version + 1, updated_at = @now
       WHERE name = @name AND capture_id IS NULL AND state IN ${CAPTURABLE_SQL} AND ${VERSION_MATCHES}
       RETURNING *`,
    release: `UPDATE computers
       SET state = coalesce(@state, held_from_state), capture_id = NULL, held_from_state = NULL,
           version = version + 1, updated_at = @now
       WHERE name = @name AND capture_id = @captureId
       RETURNING *`,
    image: 'SELECT * FROM images WHERE id = @id',
    images: 'SELECT * FROM images WHERE (CAST(@owner AS TEXT) IS NULL OR owner = @owner) ORDER BY id',
    insertImage: `INSERT INTO images (id, os_name, pretty_name, owner, created_at)
       VALUES (${d.newImageId}, @osName, @prettyName, @owner, @now) RETURNING *`,
    revisionsOf: 'SELECT * FROM image_revisions WHERE image_id = @imageId ORDER BY revision',
    latestRevision: 'SELECT * FROM image_revisions WHERE image_id = @imageId ORDER BY revision DESC LIMIT 1',
    revision: 'SELECT * FROM image_revisions WHERE image_id = @imageId AND revision = @revision',
    revisionByName: 'SELECT * FROM image_revisions WHERE name = @name',
    liveAtLocation:
      'SELECT * FROM image_revisions WHERE repository = @repository AND path = @path AND deleted = 0',
    insertRevision: `INSERT INTO image_revisions (image_id, revision, name, created_at, deleted, production)
       VALUES (@imageId, @revision, @name, @now, 1, 0) RETURNING *`,
    undeleteRevision: `UPDATE image_revisions
       SET deleted = 0, size_bytes = @sizeBytes, sha256 = @sha256, format = @format, repository = @repository,
           path = @path, captured_at = @now
       WHERE id = @id AND deleted = 1`,
    clearProduction:
      'UPDATE image_revisions SET production = 0 WHERE image_id = @imageId AND production = 1 AND id != @id',
    setProduction: 'UPDATE image_revisions SET production = 1 WHERE id = @id',
    revisionById: 'SELECT * FROM image_revisions WHERE id = @id',
    capture: `SELECT ${CAPTURE_COLUMNS} FROM captures WHERE id = @id`,
    captureExists: 'SELECT 1 AS found FROM captures WHERE id = @id',
    insertCapture: `INSERT INTO captures (id, computer, image_id, revision_id, image_name, revision, provisioner, os, end_state,
         repository, status, request, owner, lease_until, generation, event_count, created_at, updated_at)
       VALUES (@id, @computer, @imageId, @revisionId, @imageName, @revision, @provisioner, @os, @endState,
         @repository, @status, @request, @owner, @leaseUntil, @generation, 0, @now, @now)`,
    // Queued captures nobody runs, oldest first; on PostgreSQL locked, skipping those another claim holds.
    claimableQueued: `SELECT id, owner FROM captures
       WHERE status = 'queued' AND (owner IS NULL OR lease_until IS NULL OR lease_until < @now)
       ORDER BY created_at, rowid LIMIT @limit ${d.skipLocked}`,
    // Every claim is a new generation: the writes of whoever held the capture before now fail (FENCED).
    claim: `UPDATE captures SET owner = @owner, lease_until = @leaseUntil, generation = generation + 1, updated_at = @now
       WHERE id = @id AND status IN ('queued', 'running')`,
    // The fence of a runner's write, its first statement: on PostgreSQL the row lock (and SERIALIZABLE)
    // orders it against a concurrent claim; a claim that committed first makes it match nothing.
    fence: `UPDATE captures SET generation = generation
       WHERE id = @id AND owner = @fenceOwner AND generation = @fenceGeneration RETURNING id`,
    renew: `UPDATE captures SET lease_until = @leaseUntil
       WHERE owner = @owner AND status IN ('queued', 'running')
       RETURNING id, cancel_requested`,
    releaseOwned: `UPDATE captures SET owner = NULL, lease_until = NULL
       WHERE owner = @owner AND status IN ('queued', 'running')`,
    requestCancel: `UPDATE captures SET cancel_requested = @reason, updated_at = @now
       WHERE id = @id AND status IN ('queued', 'running')`,
    setRunning: `UPDATE captures SET status = 'running', updated_at = @now WHERE id = @id AND status = 'queued'`,
    // One statement updates the capture and reserves the next event number; on PostgreSQL it inserts the
    // audit event too (event_written 1), on SQLite the caller does (event_written 0).
    transition: d.writesInWith
      ? `WITH changed AS (${TRANSITION} RETURNING event_count),
           event AS (INSERT INTO capture_events (capture_id, seq, at, type, state_value, step, details, duration_ms)
             SELECT @id, event_count, @now, @type, @stateValue, @step, CAST(@details AS TEXT),
               CAST(@durationMs AS BIGINT) FROM changed)
         SELECT event_count, 1 AS event_written FROM changed`
      : `${TRANSITION} RETURNING event_count, 0 AS event_written`,
    finish: `UPDATE captures
       SET status = @status, repository = coalesce(@repository, repository),
           error_code = coalesce(@errorCode, error_code), error_step = coalesce(@errorStep, error_step),
           error_message = coalesce(@errorMessage, error_message), release_outcome = @outcome,
           finished_at = @now, updated_at = @now
       WHERE id = @id AND status = @fromStatus`,
    nextEvent: `UPDATE captures SET event_count = event_count + 1, updated_at = @now WHERE id = @id RETURNING event_count`,
    insertEvent: `INSERT INTO capture_events (capture_id, seq, at, type, state_value, step, details, duration_ms)
       VALUES (@captureId, @seq, @at, @type, @stateValue, @step, @details, @durationMs)`,
    events: 'SELECT * FROM capture_events WHERE capture_id = @captureId ORDER BY seq',
    unfinished: `SELECT ${CAPTURE_COLUMNS} FROM captures WHERE status IN ('queued', 'running') ORDER BY created_at, rowid`,
    snapshot:
      'SELECT id, status, state_value, snapshot, machine_version, updated_at FROM captures WHERE id = @id',
    listCaptures: `SELECT ${CAPTURE_COLUMNS} FROM captures
       WHERE (CAST(@statuses AS TEXT) IS NULL OR status IN (${d.jsonList('@statuses')}))
         AND (CAST(@computer AS TEXT) IS NULL OR computer = @computer)
       ORDER BY created_at DESC, rowid DESC LIMIT @limit OFFSET @offset`,
    // ---- the tags of a capture's remote commands (migration 4) ----
    recordRemoteTag: `INSERT INTO remote_tags (capture_id, host, tag, recorded_at) VALUES (@captureId, @host, @tag, @now)
       ON CONFLICT (capture_id, host, tag) DO NOTHING`,
    remoteTags:
      'SELECT host, tag, recorded_at FROM remote_tags WHERE capture_id = @captureId ORDER BY recorded_at, rowid',
    forgetRemoteTag: 'DELETE FROM remote_tags WHERE capture_id = @captureId AND host = @host AND tag = @tag',
    forgetRemoteTags: 'DELETE FROM remote_tags WHERE capture_id = @captureId',

    // ---- per-host slots (migration 5) ----
    dropDeadSlots: `DELETE FROM host_slots WHERE host = @host AND kind = @kind AND capture_id IN (
         SELECT s.capture_id FROM host_slots s WHERE s.host = @host AND s.kind = @kind AND NOT ${LIVE_SLOT})`,
    liveSlots: `SELECT s.capture_id FROM host_slots s WHERE s.host = @host AND s.kind = @kind AND ${LIVE_SLOT}`,
    takeSlot: `INSERT INTO host_slots (host, kind, capture_id, owner, generation, acquired_at)
       VALUES (@host, @kind, @captureId, @fenceOwner, @fenceGeneration, @now)
       ON CONFLICT (host, kind, capture_id) DO UPDATE
         SET owner = excluded.owner, generation = excluded.generation, acquired_at = excluded.acquired_at`,
    releaseSlot: 'DELETE FROM host_slots WHERE host = @host AND kind = @kind AND capture_id = @captureId',
    slotUsage: `SELECT s.host, s.kind, count(*) AS held FROM host_slots s WHERE ${LIVE_SLOT}
       GROUP BY s.host, s.kind ORDER BY s.host, s.kind`,

    // ---- the notification outbox (src/store/outbox.ts) ----
    insertNotification: `INSERT INTO notifications (event_id, type, capture_id, payload, created_at)
       VALUES (@eventId, @type, @captureId, @payload, @now)`,
    // One target's deliveries of the events it wants and has not got yet, within the age limit.
    fanOut: `INSERT INTO notification_deliveries (notification_id, target, status, attempts, next_attempt_at, created_at, updated_at)
       SELECT n.id, @target, 'pending', 0, @now, @now, @now FROM notifications n
       WHERE n.created_at >= @since AND n.type IN (${d.jsonList('@types')})
         AND NOT EXISTS (SELECT 1 FROM notification_deliveries d WHERE d.notification_id = n.id AND d.target = @target)`,
    claimDeliveries: `UPDATE notification_deliveries SET claimed_by = @owner, claim_until = @until, updated_at = @now
       WHERE id IN (
         SELECT id FROM notification_deliveries
         WHERE status = 'pending' AND next_attempt_at <= @now AND (claim_until IS NULL OR claim_until < @now)
           AND target IN (${d.jsonList('@targets')})
         ORDER BY next_attempt_at, id LIMIT @limit)
       RETURNING id`,
    delivery: `SELECT ${DELIVERY_COLUMNS} FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
       WHERE d.id = @id`,
    delivered: `UPDATE notification_deliveries
       SET status = 'delivered', attempts = attempts + 1, delivered_at = @now, last_error = NULL,
           claimed_by = NULL, claim_until = NULL, updated_at = @now
       WHERE id = @id AND status = 'pending'`,
    failed: `UPDATE notification_deliveries
       SET status = CASE WHEN CAST(@retryAt AS TEXT) IS NULL THEN 'dead' ELSE 'pending' END,
           next_attempt_at = coalesce(@retryAt, next_attempt_at), attempts = attempts + 1, last_error = @error,
           claimed_by = NULL, claim_until = NULL, updated_at = @now
       WHERE id = @id AND status = 'pending'`,
    released: `UPDATE notification_deliveries SET claimed_by = NULL, claim_until = NULL, updated_at = @now
       WHERE id = @id AND status = 'pending'`,
    retryDelivery: `UPDATE notification_deliveries
       SET status = 'pending', next_attempt_at = @now, claimed_by = NULL, claim_until = NULL, updated_at = @now
       WHERE id = @id AND status = 'dead'`,
    deliveryCounts: 'SELECT status, count(*) AS n FROM notification_deliveries GROUP BY status',
    listDeliveries: `SELECT ${DELIVERY_COLUMNS} FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
       WHERE (CAST(@statuses AS TEXT) IS NULL OR d.status IN (${d.jsonList('@statuses')}))
       ORDER BY d.id DESC LIMIT @limit`,
  } as const;
}

export type Statements = ReturnType<typeof statements>;
export type StatementName = keyof Statements;

/** Named parameters of one statement. */
export type Params = Readonly<Record<string, string | number | null>>;

/**
 * A generator of database work: it yields what must be awaited (a PostgreSQL query) and is resumed with
 * its result; SQLite's statements never yield, so the same code runs synchronously inside one SQLite
 * transaction and asynchronously inside one PostgreSQL transaction.
 */
export type Gen<T> = Generator<Promise<unknown>, T, unknown>;

/** One transaction as the shared store logic sees it. */
export interface Tx {
  get<R>(name: StatementName, params?: Params): Gen<R | undefined>;
  all<R>(name: StatementName, params?: Params): Gen<R[]>;
  /** Runs a statement; returns the number of rows it changed. */
  run(name: StatementName, params?: Params): Gen<number>;
  /** The transaction's time (ISO-8601, UTC, milliseconds). */
  now(): string;
  /** The time `ms` after {@link now}'s clock reading, as stored. */
  later(ms: number): string;
  /**
   * Tells listening runners (`subscribe`), when the transaction commits: PostgreSQL's NOTIFY; nothing on
   * SQLite, whose runners poll.
   */
  notify(wake: StoreWake): Gen<void>;
}
