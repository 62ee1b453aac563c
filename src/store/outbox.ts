/**
 * The notification outbox (tables of migration 3), for either database. Everything here runs inside a
 * transaction the store opened: {@link announce} inside the capture's own terminal transaction (so the
 * event exists exactly when the change it announces does), the rest inside the outbox methods'.
 *
 * Deliveries are created lazily, per target, by the worker that claims them: the store does not know the
 * configuration, and a process configured with other targets (or none) never consumes an event another
 * process's target still has to receive.
 */
import { randomUUID } from 'node:crypto';
import { STORE_ERROR_CODES, storeError } from './errors.js';
import { type DeliveryRow, toDelivery } from './rows.js';
import type { Gen, Tx } from './sql.js';
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

/** Longest error text kept per delivery: the receiver's answer may be a whole HTML page. */
const MAX_DELIVERY_ERROR = 1000;

/** What the terminal transaction knows when it announces. */
export interface Announcement {
  type: NotificationEventType;
  capture: CaptureRecord;
  image: { owner: string; prettyName: string };
  computerState: ComputerState | null;
  artifact: NotificationEvent['artifact'];
  now: string;
}

function* requireDelivery(tx: Tx, id: number): Gen<DeliveryRow> {
  const row = yield* tx.get<DeliveryRow>('delivery', { id });
  if (row === undefined)
    throw storeError(STORE_ERROR_CODES.NOT_FOUND, `notification delivery ${id} does not exist`, { id });
  return row;
}

/** Writes the event into the outbox; returns its id. Call inside the change's own transaction. */
export function* announce(tx: Tx, a: Announcement): Gen<string> {
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
  yield* tx.run('insertNotification', {
    eventId: id,
    type: a.type,
    captureId: c.id,
    payload: JSON.stringify(event),
    now: a.now,
  });
  return id;
}

export function* claimDeliveries(
  tx: Tx,
  owner: string,
  targets: readonly NotificationTarget[],
  o: { now: string; since: string; until: string; limit: number },
): Gen<NotificationDelivery[]> {
  for (const t of targets)
    yield* tx.run('fanOut', { target: t.name, types: JSON.stringify(t.events), since: o.since, now: o.now });
  const claimed = yield* tx.all<{ id: number }>('claimDeliveries', {
    owner,
    targets: JSON.stringify(targets.map((t) => t.name)),
    now: o.now,
    until: o.until,
    limit: o.limit,
  });
  const out: NotificationDelivery[] = [];
  for (const id of claimed.map((r) => r.id).sort((a, b) => a - b))
    out.push(toDelivery(yield* requireDelivery(tx, id)));
  return out;
}

export function* finishDelivery(
  tx: Tx,
  id: number,
  outcome: DeliveryOutcome,
  now: string,
): Gen<NotificationDelivery> {
  const row = yield* requireDelivery(tx, id);
  if (row.status !== 'pending') {
    throw storeError(
      STORE_ERROR_CODES.INVALID_TRANSITION,
      `notification delivery ${id} is ${row.status}, not pending: its outcome was recorded already`,
      { id, status: row.status },
    );
  }
  if (outcome.result === 'delivered') yield* tx.run('delivered', { id, now });
  else if (outcome.result === 'released') yield* tx.run('released', { id, now });
  else
    yield* tx.run('failed', {
      id,
      now,
      error: outcome.error.slice(0, MAX_DELIVERY_ERROR),
      retryAt: outcome.retryAt,
    });
  return toDelivery(yield* requireDelivery(tx, id));
}

export function* listDeliveries(
  tx: Tx,
  statuses: readonly NotificationStatus[],
  limit: number,
): Gen<NotificationDelivery[]> {
  const rows = yield* tx.all<DeliveryRow>('listDeliveries', {
    statuses: statuses.length > 0 ? JSON.stringify(statuses) : null,
    limit,
  });
  return rows.map(toDelivery);
}

export function* countDeliveries(tx: Tx): Gen<Record<NotificationStatus, number>> {
  const out: Record<NotificationStatus, number> = { pending: 0, delivered: 0, dead: 0 };
  for (const r of yield* tx.all<{ status: string; n: number }>('deliveryCounts'))
    out[r.status as NotificationStatus] = Number(r.n);
  return out;
}

export function* retryDelivery(tx: Tx, id: number, now: string): Gen<NotificationDelivery> {
  const row = yield* requireDelivery(tx, id);
  if (row.status !== 'dead') {
    throw storeError(
      STORE_ERROR_CODES.INVALID_TRANSITION,
      `notification delivery ${id} is ${row.status}; only a dead one can be retried`,
      { id, status: row.status },
    );
  }
  yield* tx.run('retryDelivery', { id, now });
  return toDelivery(yield* requireDelivery(tx, id));
}
