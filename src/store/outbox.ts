/**
 * The notification outbox of the SQLite store (tables of migration 3). Everything here runs inside a
 * transaction the store opened: {@link Outbox.announce} inside the capture's own terminal transaction (so
 * the event exists exactly when the change it announces does), the rest inside the outbox methods'.
 *
 * Deliveries are created lazily, per target, by the worker that claims them: the store does not know the
 * configuration, and a process configured with other targets (or none) never consumes an event another
 * process's target still has to receive.
 */
import { randomUUID } from 'node:crypto';
import type Database from 'better-sqlite3';
import { STORE_ERROR_CODES, storeError } from './errors.js';
import type {
  CaptureRecord,
  ComputerState,
  DeliveryOutcome,
  NotificationDelivery,
  NotificationEvent,
  NotificationEventType,
  NotificationStatus,
  NotificationTarget,
} from './types.js';

interface DeliveryRow {
  id: number;
  target: string;
  status: string;
  attempts: number;
  next_attempt_at: string;
  last_error: string | null;
  created_at: string;
  updated_at: string;
  delivered_at: string | null;
  payload: string;
}

const DELIVERY_COLUMNS = `d.id, d.target, d.status, d.attempts, d.next_attempt_at, d.last_error, d.created_at,
  d.updated_at, d.delivered_at, n.payload`;

/** Longest error text kept per delivery: the receiver's answer may be a whole HTML page. */
const MAX_DELIVERY_ERROR = 1000;

function toDelivery(row: DeliveryRow): NotificationDelivery {
  return {
    id: row.id,
    target: row.target,
    status: row.status as NotificationStatus,
    attempts: row.attempts,
    nextAttemptAt: row.next_attempt_at,
    lastError: row.last_error,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    deliveredAt: row.delivered_at,
    event: JSON.parse(row.payload) as NotificationEvent,
  };
}

/** What the terminal transaction knows when it announces. */
export interface Announcement {
  type: NotificationEventType;
  capture: CaptureRecord;
  image: { owner: string; prettyName: string };
  computerState: ComputerState | null;
  artifact: NotificationEvent['artifact'];
  now: string;
}

export function prepareOutbox(db: Database.Database) {
  const s = {
    insert: db.prepare<[{ eventId: string; type: string; captureId: string; payload: string; now: string }]>(
      `INSERT INTO notifications (event_id, type, capture_id, payload, created_at)
       VALUES (@eventId, @type, @captureId, @payload, @now)`,
    ),
    // One target's deliveries of the events it wants and has not got yet, within the age limit.
    fanOut: db.prepare<[{ target: string; types: string; since: string; now: string }]>(
      `INSERT INTO notification_deliveries (notification_id, target, status, attempts, next_attempt_at, created_at, updated_at)
       SELECT n.id, @target, 'pending', 0, @now, @now, @now FROM notifications n
       WHERE n.created_at >= @since AND n.type IN (SELECT value FROM json_each(@types))
         AND NOT EXISTS (SELECT 1 FROM notification_deliveries d WHERE d.notification_id = n.id AND d.target = @target)`,
    ),
    claim: db.prepare<
      [{ owner: string; targets: string; now: string; until: string; limit: number }],
      { id: number }
    >(
      `UPDATE notification_deliveries SET claimed_by = @owner, claim_until = @until, updated_at = @now
       WHERE id IN (
         SELECT id FROM notification_deliveries
         WHERE status = 'pending' AND next_attempt_at <= @now AND (claim_until IS NULL OR claim_until < @now)
           AND target IN (SELECT value FROM json_each(@targets))
         ORDER BY next_attempt_at, id LIMIT @limit)
       RETURNING id`,
    ),
    get: db.prepare<[number], DeliveryRow>(
      `SELECT ${DELIVERY_COLUMNS} FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
       WHERE d.id = ?`,
    ),
    delivered: db.prepare<[{ id: number; now: string }]>(
      `UPDATE notification_deliveries
       SET status = 'delivered', attempts = attempts + 1, delivered_at = @now, last_error = NULL,
           claimed_by = NULL, claim_until = NULL, updated_at = @now
       WHERE id = @id AND status = 'pending'`,
    ),
    failed: db.prepare<[{ id: number; now: string; error: string; retryAt: string | null }]>(
      `UPDATE notification_deliveries
       SET status = CASE WHEN @retryAt IS NULL THEN 'dead' ELSE 'pending' END,
           next_attempt_at = coalesce(@retryAt, next_attempt_at), attempts = attempts + 1, last_error = @error,
           claimed_by = NULL, claim_until = NULL, updated_at = @now
       WHERE id = @id AND status = 'pending'`,
    ),
    released: db.prepare<[{ id: number; now: string }]>(
      `UPDATE notification_deliveries SET claimed_by = NULL, claim_until = NULL, updated_at = @now
       WHERE id = @id AND status = 'pending'`,
    ),
    retry: db.prepare<[{ id: number; now: string }]>(
      `UPDATE notification_deliveries
       SET status = 'pending', next_attempt_at = @now, claimed_by = NULL, claim_until = NULL, updated_at = @now
       WHERE id = @id AND status = 'dead'`,
    ),
    counts: db.prepare<[], { status: string; n: number }>(
      'SELECT status, count(*) AS n FROM notification_deliveries GROUP BY status',
    ),
  };

  const require = (id: number): DeliveryRow => {
    const row = s.get.get(id);
    if (row === undefined)
      throw storeError(STORE_ERROR_CODES.NOT_FOUND, `notification delivery ${id} does not exist`, { id });
    return row;
  };

  return {
    /** Writes the event into the outbox; returns its id. Call inside the change's own transaction. */
    announce(a: Announcement): string {
      const id = randomUUID();
      const c = a.capture;
      const event: NotificationEvent = {
        version: 1,
        id,
        type: a.type,
        occurredAt: a.now,
        capture: {
          id: c.id,
          status: c.status,
          provisioner: c.provisioner,
          os: c.os,
          endState: c.endState,
          createdAt: c.createdAt,
          finishedAt: c.finishedAt,
          error: c.status === 'completed' ? null : c.lastError,
          releaseOutcome: c.releaseOutcome,
        },
        computer: { name: c.computer, state: a.computerState },
        image: {
          id: c.image.imageId,
          name: c.image.name,
          revision: c.image.revision,
          owner: a.image.owner,
          prettyName: a.image.prettyName,
        },
        artifact: a.artifact,
      };
      s.insert.run({
        eventId: id,
        type: a.type,
        captureId: c.id,
        payload: JSON.stringify(event),
        now: a.now,
      });
      return id;
    },

    claim(
      owner: string,
      targets: readonly NotificationTarget[],
      o: { now: string; since: string; until: string; limit: number },
    ): NotificationDelivery[] {
      for (const t of targets)
        s.fanOut.run({ target: t.name, types: JSON.stringify(t.events), since: o.since, now: o.now });
      const claimed = s.claim.all({
        owner,
        targets: JSON.stringify(targets.map((t) => t.name)),
        now: o.now,
        until: o.until,
        limit: o.limit,
      });
      return claimed
        .map((r) => r.id)
        .sort((a, b) => a - b)
        .map((id) => toDelivery(require(id)));
    },

    finish(id: number, outcome: DeliveryOutcome, now: string): NotificationDelivery {
      const row = require(id);
      if (row.status !== 'pending') {
        throw storeError(
          STORE_ERROR_CODES.INVALID_TRANSITION,
          `notification delivery ${id} is ${row.status}, not pending: its outcome was recorded already`,
          { id, status: row.status },
        );
      }
      if (outcome.result === 'delivered') s.delivered.run({ id, now });
      else if (outcome.result === 'released') s.released.run({ id, now });
      else
        s.failed.run({
          id,
          now,
          error: outcome.error.slice(0, MAX_DELIVERY_ERROR),
          retryAt: outcome.retryAt,
        });
      return toDelivery(require(id));
    },

    list(statuses: readonly NotificationStatus[], limit: number): NotificationDelivery[] {
      const where = statuses.length > 0 ? `WHERE d.status IN (${statuses.map(() => '?').join(', ')})` : '';
      return db
        .prepare<(string | number)[], DeliveryRow>(
          `SELECT ${DELIVERY_COLUMNS} FROM notification_deliveries d JOIN notifications n ON n.id = d.notification_id
           ${where} ORDER BY d.id DESC LIMIT ?`,
        )
        .all(...statuses, limit)
        .map(toDelivery);
    },

    counts(): Record<NotificationStatus, number> {
      const out: Record<NotificationStatus, number> = { pending: 0, delivered: 0, dead: 0 };
      for (const r of s.counts.all()) out[r.status as NotificationStatus] = r.n;
      return out;
    },

    retry(id: number, now: string): NotificationDelivery {
      const row = require(id);
      if (row.status !== 'dead') {
        throw storeError(
          STORE_ERROR_CODES.INVALID_TRANSITION,
          `notification delivery ${id} is ${row.status}; only a dead one can be retried`,
          { id, status: row.status },
        );
      }
      s.retry.run({ id, now });
      return toDelivery(require(id));
    },
  };
}

export type Outbox = ReturnType<typeof prepareOutbox>;
