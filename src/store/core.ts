/**
 * The store's logic, once for both databases: the checks each operation makes before it writes, the
 * order of its statements, the rules it enforces (compare-and-swap reservation, names fixed at creation,
 * revisions born deleted, every change with its audit event, leases) and the errors it throws.
 *
 * A backend (`sqlite.ts`, `postgres.ts`) supplies {@link CaptureStoreCore.transact}: one transaction in
 * which the operation's generator runs against the statements of `sql.ts`.
 */
import type { StateValue } from 'xstate';
import type { ImageArtifact, ReleaseOutcome, StepFailure } from '../../machines/types.js';
import { STORE_ERROR_CODES, storeError } from './errors.js';
import {
  nextRevisionName,
  validateImageId,
  validateImageName,
  validateOsName,
  validatePrettyName,
  validateRevisionNumber,
  validateSafeName,
} from './naming.js';
import {
  type Announcement,
  announce,
  claimDeliveries,
  countDeliveries,
  finishDelivery,
  listDeliveries,
  retryDelivery,
} from './outbox.js';
import { normalizeRepository, resolveLocation } from './paths.js';
import {
  type CaptureRow,
  type ComputerRow,
  type EventRow,
  type ImageRow,
  parseJson,
  type RevisionRow,
  type SnapshotRow,
  toCapture,
  toComputer,
  toEvent,
  toImage,
  toRevision,
} from './rows.js';
import type { Gen, Tx } from './sql.js';
import {
  CAPTURABLE_COMPUTER_STATES,
  type CaptureDetail,
  type CaptureFence,
  type CaptureFilter,
  type CaptureRecord,
  type CaptureRecordStatus,
  type CaptureStore,
  type CasOptions,
  type ClaimNotificationsOptions,
  type ClaimOptions,
  type ClaimQueuedOptions,
  type CompleteOptions,
  type ComputerRecord,
  type ComputerRegistration,
  type ComputerRelease,
  type ComputerState,
  type ComputerStatus,
  type DeliveryOutcome,
  type Fenced,
  type FinishOptions,
  type HostSlotKind,
  type HostSlotRequest,
  type HostSlotUsage,
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
  type StoreSubscription,
  type StoreWake,
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

const DEFAULT_LIST_LIMIT = 100;
const MAX_LIST_LIMIT = 1000;

/**
 * A write (the database's write lock, or serializable isolation), a claim (a write whose candidates are
 * taken with row locks, `FOR UPDATE SKIP LOCKED`: on SQLite a write like any other), a one-row write, or
 * a consistent read.
 *
 * A one-row write (`row`) is one conditional statement on one row whose `WHERE` holds every check the
 * write depends on (a fenced state change: capture id, status, claim owner and generation), and whose
 * other statements only read, to explain why it matched nothing. Its correctness rests on that row's lock
 * alone, so PostgreSQL runs it at `READ COMMITTED` as a statement of its own (no `BEGIN`/`COMMIT` round
 * trips): see `PostgresCaptureStore.transact`. On SQLite it is a write like any other.
 */
export type TxKind = 'write' | 'claim' | 'row' | 'read';

interface EventInput {
  type: string;
  stateValue?: string | null;
  step?: string | null;
  details?: string | null;
  durationMs?: number | null;
}

function checkSlotKind(kind: unknown): HostSlotKind {
  if (kind !== 'capture' && kind !== 'copy') throw invalid('slot kind must be capture or copy', { kind });
  return kind;
}

function checkLimit(value: number | undefined): number {
  const limit = checkInteger(value ?? DEFAULT_LIST_LIMIT, 'limit', 1);
  if (limit > MAX_LIST_LIMIT) throw invalid(`limit must be at most ${MAX_LIST_LIMIT}`, { limit });
  return limit;
}

function* requireCapture(tx: Tx, captureId: string): Gen<CaptureRow> {
  const row = yield* tx.get<CaptureRow>('capture', { id: captureId });
  if (row === undefined) {
    throw storeError(STORE_ERROR_CODES.NOT_FOUND, `capture ${JSON.stringify(captureId)} does not exist`, {
      captureId,
    });
  }
  return row;
}

/** The fence of a runner's write, checked before anything is written; null for an unfenced write. */
function checkFence(options: Fenced | undefined): CaptureFence | null {
  const fence = options?.fence;
  if (fence === undefined) return null;
  if (typeof fence !== 'object' || fence === null) throw invalid('fence must be { owner, generation }');
  return {
    owner: checkShortText(fence.owner, 'fence.owner'),
    generation: checkInteger(fence.generation, 'fence.generation'),
  };
}

/** The fence as statement parameters (both NULL: unfenced). */
function fenceParams(fence: CaptureFence | null) {
  return { fenceOwner: fence?.owner ?? null, fenceGeneration: fence?.generation ?? null };
}

function fenced(row: CaptureRow, fence: CaptureFence): never {
  throw storeError(
    STORE_ERROR_CODES.FENCED,
    `capture ${row.id} is no longer run by ${fence.owner} under claim ${fence.generation}: it is ${
      row.owner === null ? 'run by nobody' : `run by ${row.owner}`
    } under claim ${row.generation}; nothing was changed`,
    { captureId: row.id, owner: row.owner, generation: row.generation, fence: { ...fence } },
  );
}

/**
 * A fenced write's first statement: holds the capture's row (so that a concurrent claim is ordered
 * before or after this whole transaction) and throws `FENCED` when `fence` is not its claim any more.
 */
function* holdFence(tx: Tx, captureId: string, fence: CaptureFence | null): Gen<void> {
  if (fence === null) return;
  const held = yield* tx.get<{ id: string }>('fence', { id: captureId, ...fenceParams(fence) });
  if (held === undefined) fenced(yield* requireCapture(tx, captureId), fence);
}

function wrongStatus(row: CaptureRow, operation: string, allowed: string): never {
  throw storeError(
    STORE_ERROR_CODES.INVALID_TRANSITION,
    `cannot ${operation} capture ${row.id}: it is ${row.status}, and only a ${allowed} capture can be`,
    { captureId: row.id, status: row.status },
  );
}

function* appendEvent(tx: Tx, captureId: string, now: string, event: EventInput, seq?: number): Gen<number> {
  const n = seq ?? (yield* tx.get<{ event_count: number }>('nextEvent', { id: captureId, now }))?.event_count;
  if (n === undefined) throw storeError(STORE_ERROR_CODES.NOT_FOUND, `capture ${captureId} does not exist`);
  yield* tx.run('insertEvent', {
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

/** Why a compare-and-swap on `name` failed: always throws. */
function* explainComputer(
  tx: Tx,
  name: string,
  captureId: string | null,
  expectedVersion: number | null,
): Gen<never> {
  const row = yield* tx.get<ComputerRow>('computer', { name });
  if (row === undefined) {
    throw storeError(
      STORE_ERROR_CODES.UNKNOWN_COMPUTER,
      `computer ${name} is not registered (register it from the inventory first)`,
      { computer: name },
    );
  }
  if (row.capture_id !== null) {
    const holder = yield* tx.get<CaptureRow>('capture', { id: row.capture_id });
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

function* reserveInTx(
  tx: Tx,
  computer: string,
  captureId: string,
  expectedVersion: number | null,
  now: string,
): Gen<void> {
  const row = yield* tx.get<ComputerRow>('reserve', { name: computer, captureId, expectedVersion, now });
  if (row === undefined) return yield* explainComputer(tx, computer, captureId, expectedVersion);
  yield* appendEvent(tx, captureId, now, {
    type: STORE_EVENT_TYPES.RESERVED,
    details: toJson({ computer, from: row.held_from_state, version: row.version }, 'details'),
  });
}

/** Hands the computer held by `row` back: to `state`, or to the state it was reserved from (null). */
function* releaseInTx(tx: Tx, row: CaptureRow, state: ComputerState | null, now: string): Gen<ComputerRow> {
  const released = yield* tx.get<ComputerRow>('release', {
    name: row.computer,
    captureId: row.id,
    state,
    now,
  });
  if (released === undefined) {
    const holder = (yield* tx.get<ComputerRow>('computer', { name: row.computer }))?.capture_id ?? null;
    throw storeError(
      STORE_ERROR_CODES.INVALID_TRANSITION,
      `computer ${row.computer} is not held by capture ${row.id} (held by ${holder ?? 'nobody'}): the store is inconsistent, nothing was changed`,
      { captureId: row.id, computer: row.computer, heldBy: holder },
    );
  }
  return released;
}

/**
 * The capture that put a computer in maintenance: the newest one that released it there, unless an
 * operator released the computer from that one since (it went back to maintenance another way).
 */
function* maintenanceCause(tx: Tx, row: ComputerRow): Gen<MaintenanceCause | null> {
  if (row.state !== 'maintenance' || row.capture_id !== null) return null;
  const capture = yield* tx.get<CaptureRow>('lastToMaintenance', { name: row.name });
  if (capture === undefined) return null;
  const released = yield* tx.get<EventRow>('eventOfType', {
    captureId: capture.id,
    type: STORE_EVENT_TYPES.RELEASED,
  });
  if (released !== undefined) return null;
  const record = toCapture(capture);
  return {
    captureId: record.id,
    image: record.image.name,
    status: record.status,
    error: record.lastError,
    at: record.finishedAt,
  };
}

function* describe(tx: Tx, row: ComputerRow): Gen<ComputerStatus> {
  return { ...toComputer(row), maintenance: yield* maintenanceCause(tx, row) };
}

/** Writes a notification into the outbox, inside the caller's transaction (see src/store/outbox.ts). */
function* announceChange(tx: Tx, a: Omit<Announcement, 'image'>): Gen<void> {
  const image = yield* tx.get<ImageRow>('image', { id: a.capture.image.imageId });
  yield* announce(tx, {
    ...a,
    image: { owner: image?.owner ?? '', prettyName: image?.pretty_name ?? '' },
  });
}

function* imagesWithRevisions(tx: Tx, rows: ImageRow[], includeDeleted: boolean): Gen<ImageWithRevisions[]> {
  const out: ImageWithRevisions[] = [];
  for (const row of rows) {
    const revisions = yield* tx.all<RevisionRow>('revisionsOf', { imageId: row.id });
    out.push({
      ...toImage(row),
      revisions: revisions.filter((r) => includeDeleted || r.deleted === 0).map(toRevision),
    });
  }
  return out;
}

/**
 * Every {@link CaptureStore} operation, for any backend: the backend gives {@link transact} (and
 * `close`).
 */
export abstract class CaptureStoreCore implements CaptureStore {
  /** Capture id generator when `NewCapture.id` is omitted. */
  protected abstract readonly newCaptureId: () => string;

  /**
   * Runs `body` in one transaction (`write`: all or nothing, isolated from every other writer; `read`:
   * one consistent snapshot) and turns whatever the database throws into a store error.
   */
  protected abstract transact<T>(kind: TxKind, operation: string, body: (tx: Tx) => Gen<T>): Promise<T>;

  abstract close(): Promise<void>;

  /** No wakes (the embedded store): a backend that has them overrides this. */
  async subscribe(_onWake: (wake: StoreWake) => void): Promise<StoreSubscription> {
    return { live: false, close: async () => undefined };
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
    return this.transact('write', 'registerComputers', function* (tx) {
      const now = tx.now();
      const out: ComputerRecord[] = [];
      for (const { name, state } of checked) {
        yield* tx.run('insertComputer', { name, state, now });
        const row = yield* tx.get<ComputerRow>('computer', { name });
        if (row === undefined) throw storeError(STORE_ERROR_CODES.STORE_ERROR, `computer ${name} vanished`);
        out.push(toComputer(row));
      }
      return out;
    });
  }

  async getComputer(name: string): Promise<ComputerRecord | undefined> {
    return this.transact('read', 'getComputer', function* (tx) {
      const row = yield* tx.get<ComputerRow>('computer', { name });
      return row === undefined ? undefined : toComputer(row);
    });
  }

  async listComputers(): Promise<ComputerRecord[]> {
    return this.transact('read', 'listComputers', function* (tx) {
      return (yield* tx.all<ComputerRow>('computers')).map(toComputer);
    });
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
    return this.transact('write', 'setComputerState', function* (tx) {
      const params = { name, state, expectedVersion, now: tx.now() };
      const row = yield* tx.get<ComputerRow>('setComputerState', params);
      if (row === undefined) return yield* explainComputer(tx, name, null, expectedVersion);
      return toComputer(row);
    });
  }

  async describeComputers(): Promise<ComputerStatus[]> {
    return this.transact('read', 'describeComputers', function* (tx) {
      const out: ComputerStatus[] = [];
      for (const row of yield* tx.all<ComputerRow>('computers')) out.push(yield* describe(tx, row));
      return out;
    });
  }

  async describeComputer(name: string): Promise<ComputerStatus | undefined> {
    return this.transact('read', 'describeComputer', function* (tx) {
      const row = yield* tx.get<ComputerRow>('computer', { name });
      return row === undefined ? undefined : yield* describe(tx, row);
    });
  }

  async releaseComputer(name: string, reason: string, options?: CasOptions): Promise<ComputerRelease> {
    validateSafeName(name, 'computer name');
    const why = checkShortText(reason, 'reason');
    const expectedVersion = checkCasOptions(options);
    return this.transact('write', 'releaseComputer', function* (tx) {
      const row = yield* tx.get<ComputerRow>('computer', { name });
      if (row === undefined || row.capture_id !== null)
        return yield* explainComputer(tx, name, null, expectedVersion);
      if (row.state !== 'maintenance') {
        throw storeError(
          STORE_ERROR_CODES.INVALID_TRANSITION,
          `computer ${name} is in state ${row.state}, not maintenance: there is nothing to release`,
          { computer: name, state: row.state },
        );
      }
      const cause = yield* maintenanceCause(tx, row);
      // Back to the state the capture that sent it to maintenance had reserved it from.
      const reserved =
        cause === null
          ? undefined
          : yield* tx.get<EventRow>('eventOfType', {
              captureId: cause.captureId,
              type: STORE_EVENT_TYPES.RESERVED,
            });
      const from = parseJson<{ from?: unknown }>(reserved?.details ?? null)?.from;
      const state: ComputerState = CAPTURABLE_COMPUTER_STATES.find((s) => s === from) ?? 'available';
      const now = tx.now();
      const released = yield* tx.get<ComputerRow>('releaseFromMaintenance', {
        name,
        state,
        expectedVersion,
        now,
      });
      if (released === undefined) return yield* explainComputer(tx, name, null, expectedVersion);
      if (cause !== null) {
        yield* appendEvent(tx, cause.captureId, now, {
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
    return this.transact('write', 'registerImage', function* (tx) {
      if (id !== null) {
        const existing = yield* tx.get<ImageRow>('image', { id });
        if (existing !== undefined) {
          if (existing.os_name === osName && existing.pretty_name === prettyName && existing.owner === owner)
            return toImage(existing);
          throw storeError(
            STORE_ERROR_CODES.IMAGE_CONFLICT,
            `image ${id} is already registered as ${existing.os_name} "${existing.pretty_name}" owned by ${existing.owner}`,
            { imageId: id },
          );
        }
      }
      const row = yield* tx.get<ImageRow>('insertImage', { id, osName, prettyName, owner, now: tx.now() });
      if (row === undefined) throw storeError(STORE_ERROR_CODES.STORE_ERROR, 'image insert returned nothing');
      // Proves the first revision's name will be valid (e.g. not too long) before the image is kept.
      nextRevisionName({ osName, prettyName, imageId: row.id }, undefined, 0);
      return toImage(row);
    });
  }

  async getImage(id: number): Promise<ImageWithRevisions | undefined> {
    return this.transact('read', 'getImage', function* (tx) {
      const row = yield* tx.get<ImageRow>('image', { id });
      return row === undefined ? undefined : (yield* imagesWithRevisions(tx, [row], true))[0];
    });
  }

  async listImages(filter: ImageFilter = {}): Promise<ImageWithRevisions[]> {
    const owner = filter.owner === undefined ? null : checkShortText(filter.owner, 'owner');
    const includeDeleted = filter.includeDeleted ?? true;
    return this.transact('read', 'listImages', function* (tx) {
      const rows = yield* tx.all<ImageRow>('images', { owner });
      return yield* imagesWithRevisions(tx, rows, includeDeleted);
    });
  }

  async setProductionRevision(imageId: number, revision: number): Promise<ImageRevisionRecord> {
    validateImageId(imageId);
    validateRevisionNumber(revision);
    return this.transact('write', 'setProductionRevision', function* (tx) {
      const row = yield* tx.get<RevisionRow>('revision', { imageId, revision });
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
      yield* tx.run('clearProduction', { imageId, id: row.id });
      yield* tx.run('setProduction', { id: row.id });
      const updated = yield* tx.get<RevisionRow>('revisionById', { id: row.id });
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

    return this.transact('write', 'createCapture', function* (tx) {
      const now = tx.now();
      if ((yield* tx.get('computer', { name: computer })) === undefined)
        yield* explainComputer(tx, computer, id, null);
      if ((yield* tx.get('captureExists', { id })) !== undefined) {
        throw storeError(STORE_ERROR_CODES.CAPTURE_EXISTS, `capture ${id} already exists`, { captureId: id });
      }
      const image = yield* tx.get<ImageRow>('image', { id: imageId });
      if (image === undefined) {
        throw storeError(STORE_ERROR_CODES.NOT_FOUND, `image ${imageId} is not registered`, { imageId });
      }
      const latest = yield* tx.get<RevisionRow>('latestRevision', { imageId });
      const revision = explicitRevision ?? (latest === undefined ? 0 : latest.revision + 1);
      if (explicitRevision !== undefined) {
        const existing = yield* tx.get<RevisionRow>('revision', { imageId, revision: explicitRevision });
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
      const taken = yield* tx.get<RevisionRow>('revisionByName', { name });
      if (taken !== undefined) {
        throw storeError(
          STORE_ERROR_CODES.REVISION_EXISTS,
          `revision name ${name} is already taken by revision ${taken.revision} of image ${taken.image_id}; nothing is overwritten`,
          { imageId, revision, name, takenBy: { imageId: taken.image_id, revision: taken.revision } },
        );
      }
      const revisionRow = yield* tx.get<RevisionRow>('insertRevision', { imageId, revision, name, now });
      if (revisionRow === undefined)
        throw storeError(STORE_ERROR_CODES.STORE_ERROR, 'revision insert returned nothing');
      yield* tx.run('insertCapture', {
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
        leaseUntil: owner === null ? null : tx.later(leaseMs),
        // Created claimed: that is its first claim.
        generation: owner === null ? 0 : 1,
        now,
      });
      yield* appendEvent(tx, id, now, {
        type: STORE_EVENT_TYPES.CREATED,
        details: toJson({ image: name, imageId, revision, provisioner, os, endState, repository }, 'details'),
      });
      if (reserve) {
        yield* reserveInTx(tx, computer, id, null, now);
        yield* tx.run('setRunning', { id, now });
      } else if (owner === null) yield* tx.notify({ kind: 'queued' });
      return toCapture(yield* requireCapture(tx, id));
    });
  }

  async reserveComputer(captureId: string, options?: CasOptions): Promise<CaptureRecord> {
    const expectedVersion = checkCasOptions(options);
    const fence = checkFence(options);
    return this.transact('write', 'reserveComputer', function* (tx) {
      yield* holdFence(tx, captureId, fence);
      const row = yield* requireCapture(tx, captureId);
      if (row.status !== 'queued') wrongStatus(row, 'reserve the computer of', 'queued');
      const now = tx.now();
      yield* reserveInTx(tx, row.computer, captureId, expectedVersion, now);
      yield* tx.run('setRunning', { id: captureId, now });
      return toCapture(yield* requireCapture(tx, captureId));
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
    const fence = checkFence(transition);
    // One statement (see TxKind 'row'): the fence and the status are in its WHERE, and the event number
    // it takes (event_count + 1) is taken under the capture's row lock, so no other write can take it.
    return this.transact('row', 'recordTransition', function* (tx) {
      const now = tx.now();
      const updated = yield* tx.get<{ event_count: number; event_written: number }>('transition', {
        id: captureId,
        stateValue,
        snapshot,
        machineVersion,
        hasError: error === undefined ? 0 : 1,
        errorCode: error?.code ?? null,
        errorStep: error?.step ?? null,
        errorMessage: error?.message ?? null,
        ...fenceParams(fence),
        now,
        type: event.type,
        step: event.step,
        details: event.details,
        durationMs: event.durationMs,
      });
      if (updated === undefined) {
        // Matched nothing: read why. Claims only raise the generation and finished captures stay
        // finished, so what this later read finds is still the reason.
        const row = yield* requireCapture(tx, captureId);
        if (fence !== null && (row.owner !== fence.owner || row.generation !== fence.generation))
          fenced(row, fence);
        wrongStatus(row, 'record a transition of', 'queued or running');
      }
      if (updated.event_written === 1) return updated.event_count;
      return yield* appendEvent(tx, captureId, now, { ...event, stateValue }, updated.event_count);
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
    const fence = checkFence(options);
    return this.transact('write', 'completeCapture', function* (tx) {
      yield* holdFence(tx, captureId, fence);
      const row = yield* requireCapture(tx, captureId);
      if (row.status !== 'running') wrongStatus(row, 'complete', 'running');
      const repository = repositoryOption ?? row.repository;
      if (repository === null) {
        throw invalid(`capture ${captureId} has no repository: give one to completeCapture`, { captureId });
      }
      const location = resolveLocation(repository, checked.path);
      const occupant = yield* tx.get<RevisionRow>('liveAtLocation', {
        repository: location.repository,
        path: location.path,
      });
      if (occupant !== undefined) {
        throw storeError(
          STORE_ERROR_CODES.LOCATION_IN_USE,
          `${location.absolutePath} already holds revision ${occupant.name}; nothing is overwritten`,
          { captureId, absolutePath: location.absolutePath, occupant: occupant.name },
        );
      }
      const now = tx.now();
      const undeleted = yield* tx.run('undeleteRevision', {
        id: row.revision_id,
        sizeBytes: checked.sizeBytes,
        sha256: checked.sha256,
        format: checked.format,
        repository: location.repository,
        path: location.path,
        now,
      });
      if (undeleted !== 1) {
        throw storeError(
          STORE_ERROR_CODES.INVALID_TRANSITION,
          `revision ${row.image_name} of capture ${captureId} is not deleted any more: it was completed already`,
          { captureId },
        );
      }
      yield* tx.run('finish', {
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
      const computer = yield* releaseInTx(tx, row, 'reload', now);
      yield* appendEvent(tx, captureId, now, {
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
      const record = toCapture(yield* requireCapture(tx, captureId));
      yield* announceChange(tx, {
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

  private async finishUnsuccessfully(
    status: 'failed' | 'cancelled',
    captureId: string,
    error: StepFailure,
    outcome: ReleaseOutcome,
    options: FinishOptions,
  ): Promise<CaptureRecord> {
    const failure = checkStepFailure(error, status === 'failed' ? 'error' : 'reason');
    checkOutcome(outcome);
    const extra = checkDetails(options.details, 'details');
    const operation = status === 'failed' ? 'fail' : 'cancel';
    const fence = checkFence(options);
    return this.transact('write', `${operation}Capture`, function* (tx) {
      yield* holdFence(tx, captureId, fence);
      const row = yield* requireCapture(tx, captureId);
      if (row.status !== 'running' && row.status !== 'queued')
        wrongStatus(row, operation, 'queued or running');
      const now = tx.now();
      const held = row.status === 'running';
      const computer = held
        ? yield* releaseInTx(tx, row, outcome === 'maintenance' ? 'maintenance' : null, now)
        : undefined;
      yield* tx.run('finish', {
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
      yield* appendEvent(tx, captureId, now, {
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
      const record = toCapture(yield* requireCapture(tx, captureId));
      const computerState = (computer?.state ??
        (yield* tx.get<ComputerRow>('computer', { name: row.computer }))?.state ??
        null) as ComputerState | null;
      const announced = { capture: record, computerState, artifact: null, now };
      yield* announceChange(tx, {
        ...announced,
        type: status === 'failed' ? 'capture.failed' : 'capture.cancelled',
      });
      if (held && outcome === 'maintenance')
        yield* announceChange(tx, { ...announced, type: 'computer.maintenance' });
      return record;
    });
  }

  /** See {@link CaptureStore.failCapture}. */
  readonly failCapture: CaptureStore['failCapture'] = (captureId, error, outcome, options = {}) =>
    this.finishUnsuccessfully('failed', captureId, error, outcome, options);

  /** See {@link CaptureStore.cancelCapture}. */
  readonly cancelCapture: CaptureStore['cancelCapture'] = (captureId, reason, outcome, options = {}) =>
    this.finishUnsuccessfully('cancelled', captureId, reason, outcome, options);

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
    return this.transact('write', 'claimNotifications', (tx) =>
      claimDeliveries(tx, me, targets, {
        now: tx.now(),
        since: tx.later(-maxAgeMs),
        until: tx.later(leaseMs),
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
    return this.transact('write', 'finishDelivery', (tx) => finishDelivery(tx, id, outcome, tx.now()));
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
    const limit = checkLimit(filter.limit);
    return this.transact('read', 'listNotifications', (tx) => listDeliveries(tx, statuses, limit));
  }

  async countNotifications(): Promise<Record<NotificationStatus, number>> {
    return this.transact('read', 'countNotifications', (tx) => countDeliveries(tx));
  }

  async retryNotification(id: number): Promise<NotificationDelivery> {
    checkInteger(id, 'id', 1);
    return this.transact('write', 'retryNotification', (tx) => retryDelivery(tx, id, tx.now()));
  }

  // ---- reads and ownership --------------------------------------------------------------------------

  async listCaptures(filter: CaptureFilter = {}): Promise<CaptureRecord[]> {
    const statuses =
      filter.status === undefined
        ? []
        : (Array.isArray(filter.status) ? filter.status : [filter.status]).map(checkCaptureStatus);
    const computer =
      filter.computer === undefined ? null : validateSafeName(filter.computer, 'computer name');
    const limit = checkLimit(filter.limit);
    const offset = checkInteger(filter.offset ?? 0, 'offset');
    return this.transact('read', 'listCaptures', function* (tx) {
      const rows = yield* tx.all<CaptureRow>('listCaptures', {
        statuses: statuses.length > 0 ? JSON.stringify(statuses) : null,
        computer,
        limit,
        offset,
      });
      return rows.map(toCapture);
    });
  }

  async getCaptureRecord(id: string): Promise<CaptureRecord | undefined> {
    return this.transact('read', 'getCaptureRecord', function* (tx) {
      const row = yield* tx.get<CaptureRow>('capture', { id });
      return row === undefined ? undefined : toCapture(row);
    });
  }

  async getCapture(id: string): Promise<CaptureDetail | undefined> {
    return this.transact('read', 'getCapture', function* (tx) {
      const row = yield* tx.get<CaptureRow>('capture', { id });
      if (row === undefined) return undefined;
      const events = yield* tx.all<EventRow>('events', { captureId: id });
      return { ...toCapture(row), events: events.map(toEvent) };
    });
  }

  async claimCapture(captureId: string, owner: string, options: ClaimOptions): Promise<CaptureRecord> {
    const me = checkShortText(owner, 'owner');
    const leaseMs = checkInteger(options?.leaseMs, 'leaseMs', 1);
    const replacing =
      options.replacing === undefined ? undefined : checkShortText(options.replacing, 'replacing');
    return this.transact('write', 'claimCapture', function* (tx) {
      const row = yield* requireCapture(tx, captureId);
      if (row.status !== 'queued' && row.status !== 'running') wrongStatus(row, 'claim', 'queued or running');
      const now = tx.now();
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
      yield* tx.run('claim', { id: captureId, owner: me, leaseUntil: tx.later(leaseMs), now });
      if (row.owner !== me) {
        yield* appendEvent(tx, captureId, now, {
          type: 'capture.claimed',
          details: toJson({ owner: me, previousOwner: row.owner, status: row.status }, 'details'),
        });
      }
      return toCapture(yield* requireCapture(tx, captureId));
    });
  }

  async claimQueuedCaptures(owner: string, options: ClaimQueuedOptions): Promise<CaptureRecord[]> {
    const me = checkShortText(owner, 'owner');
    const leaseMs = checkInteger(options?.leaseMs, 'leaseMs', 1);
    const limit = checkLimit(options.limit);
    return this.transact('claim', 'claimQueuedCaptures', function* (tx) {
      const now = tx.now();
      const leaseUntil = tx.later(leaseMs);
      const out: CaptureRecord[] = [];
      for (const row of yield* tx.all<{ id: string; owner: string | null }>('claimableQueued', {
        now,
        limit,
      })) {
        yield* tx.run('claim', { id: row.id, owner: me, leaseUntil, now });
        if (row.owner !== me) {
          yield* appendEvent(tx, row.id, now, {
            type: 'capture.claimed',
            details: toJson({ owner: me, previousOwner: row.owner, status: 'queued' }, 'details'),
          });
        }
        out.push(toCapture(yield* requireCapture(tx, row.id)));
      }
      return out;
    });
  }

  async renewLeases(owner: string, leaseMs: number): Promise<OwnedCapture[]> {
    const me = checkShortText(owner, 'owner');
    const ms = checkInteger(leaseMs, 'leaseMs', 1);
    return this.transact('write', 'renewLeases', function* (tx) {
      const rows = yield* tx.all<{ id: string; cancel_requested: string | null }>('renew', {
        owner: me,
        leaseUntil: tx.later(ms),
      });
      return rows.map((r) => ({ captureId: r.id, cancelRequested: r.cancel_requested }));
    });
  }

  async releaseCaptures(owner: string): Promise<number> {
    const me = checkShortText(owner, 'owner');
    return this.transact('write', 'releaseCaptures', function* (tx) {
      const released = yield* tx.run('releaseOwned', { owner: me });
      if (released > 0) yield* tx.notify({ kind: 'queued' });
      return released;
    });
  }

  async requestCancel(captureId: string, reason: string): Promise<CaptureRecord> {
    const why = checkShortText(reason, 'reason');
    return this.transact('write', 'requestCancel', function* (tx) {
      const row = yield* requireCapture(tx, captureId);
      if (row.status !== 'queued' && row.status !== 'running')
        wrongStatus(row, 'cancel', 'queued or running');
      const now = tx.now();
      yield* tx.run('requestCancel', { id: captureId, reason: why, now });
      yield* tx.notify({ kind: 'cancel', captureId });
      yield* appendEvent(tx, captureId, now, {
        type: 'capture.cancel_requested',
        details: toJson({ reason: why }, 'details'),
      });
      return toCapture(yield* requireCapture(tx, captureId));
    });
  }

  async listResumableCaptures(): Promise<CaptureRecord[]> {
    return this.transact('read', 'listResumableCaptures', function* (tx) {
      return (yield* tx.all<CaptureRow>('unfinished')).map(toCapture);
    });
  }

  // ---- the tags of a capture's remote commands ------------------------------------------------------

  async recordRemoteTag(captureId: string, host: string, tag: string, options?: Fenced): Promise<void> {
    const h = checkShortText(host, 'host');
    const t = checkShortText(tag, 'tag');
    const fence = checkFence(options);
    await this.transact('write', 'recordRemoteTag', function* (tx) {
      yield* holdFence(tx, captureId, fence);
      yield* requireCapture(tx, captureId);
      yield* tx.run('recordRemoteTag', { captureId, host: h, tag: t, now: tx.now() });
    });
  }

  async remoteTags(captureId: string): Promise<RemoteTagRecord[]> {
    return this.transact('read', 'remoteTags', function* (tx) {
      const rows = yield* tx.all<{ host: string; tag: string; recorded_at: string }>('remoteTags', {
        captureId,
      });
      return rows.map((r) => ({ host: r.host, tag: r.tag, recordedAt: r.recorded_at }));
    });
  }

  async forgetRemoteTags(
    captureId: string,
    only?: { host: string; tag: string },
    options?: Fenced,
  ): Promise<number> {
    const fence = checkFence(options);
    return this.transact('write', 'forgetRemoteTags', function* (tx) {
      yield* holdFence(tx, captureId, fence);
      return only === undefined
        ? yield* tx.run('forgetRemoteTags', { captureId })
        : yield* tx.run('forgetRemoteTag', { captureId, host: only.host, tag: only.tag });
    });
  }

  // ---- per-host slots -------------------------------------------------------------------------------

  async acquireHostSlot(captureId: string, slot: HostSlotRequest, fence: CaptureFence): Promise<boolean> {
    const host = checkShortText(slot?.host, 'host');
    const kind = checkSlotKind(slot.kind);
    const limit = checkInteger(slot.limit, 'limit', 1);
    const claim = checkFence({ fence }) as CaptureFence;
    return this.transact('write', 'acquireHostSlot', function* (tx) {
      yield* holdFence(tx, captureId, claim);
      const now = tx.now();
      const key = { host, kind, now };
      // Slots of claims that ended (a dead runner's lease ran out, a capture taken over) are free.
      yield* tx.run('dropDeadSlots', key);
      const live = yield* tx.all<{ capture_id: string }>('liveSlots', key);
      if (!live.some((r) => r.capture_id === captureId) && live.length >= limit) return false;
      yield* tx.run('takeSlot', { ...key, captureId, ...fenceParams(claim) });
      return true;
    });
  }

  async releaseHostSlot(captureId: string, host: string, kind: HostSlotKind): Promise<boolean> {
    const h = checkShortText(host, 'host');
    const k = checkSlotKind(kind);
    return this.transact('write', 'releaseHostSlot', function* (tx) {
      const released = (yield* tx.run('releaseSlot', { host: h, kind: k, captureId })) > 0;
      if (released) yield* tx.notify({ kind: 'slot', host: h });
      return released;
    });
  }

  async hostSlotUsage(): Promise<HostSlotUsage[]> {
    return this.transact('read', 'hostSlotUsage', function* (tx) {
      const rows = yield* tx.all<{ host: string; kind: HostSlotKind; held: number }>('slotUsage', {
        now: tx.now(),
      });
      return rows.map((r) => ({ host: r.host, kind: r.kind, held: Number(r.held) }));
    });
  }

  async loadSnapshot(captureId: string): Promise<StoredSnapshot | undefined> {
    return this.transact('read', 'loadSnapshot', function* (tx) {
      const row = yield* tx.get<SnapshotRow>('snapshot', { id: captureId });
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
}
