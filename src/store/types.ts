/**
 * The runner-facing store: computers, captures (with their audit trail and persisted machine snapshot),
 * images and image revisions.
 *
 * The interface is asynchronous and every method is one transaction, so that a PostgreSQL implementation
 * shared by several runners can follow the SQLite one ({@link ./sqlite.ts}) without changing callers.
 * Implementations must keep these rules:
 * - **Reservation is a compare-and-swap**: a computer goes to `image` only from a state listed in
 *   {@link CAPTURABLE_COMPUTER_STATES} and only while no capture holds it (a conditional `UPDATE ... WHERE
 *   state IN (...) AND capture_id IS NULL`, the same statement on either database). A losing attempt fails
 *   with `COMPUTER_BUSY` naming the holder, or the state that forbids capture, and writes nothing.
 * - **Names are fixed at creation**: {@link CaptureStore.createCapture} computes the revision (highest + 1)
 *   and its VCL name once; nothing changes them afterwards.
 * - **A revision is born deleted** (`deleted = true`, `production = false`) when its capture is created,
 *   and only {@link CaptureStore.completeCapture} un-deletes it, in the transaction that records size and
 *   sha256, completes the capture, releases the computer (to `reload`) and writes the audit event.
 * - **Every state change of a capture is written with its audit event**, in one transaction.
 * - **Bad input is refused before anything is written**, with a typed `VclError` (`src/errors.ts`, codes
 *   in `STORE_ERROR_CODES`); a failure in the middle of a transaction rolls all of it back.
 *
 * Times are ISO-8601 strings in UTC with milliseconds (`2025-01-31T12:00:00.000Z`).
 */
import type { StateValue } from 'xstate';
import type {
  CaptureStatus,
  EndState,
  ImageArtifact,
  ImageRef,
  OsName,
  ProvisionerName,
  ReleaseOutcome,
  StepFailure,
} from '../../machines/types.js';

/**
 * States of a computer (a subset of VCL's `state` table that capture cares about):
 * - `available`: free, may be captured;
 * - `reserved`: reserved for a user (who customises it before capture), may be captured;
 * - `inuse`: a user is logged in and working on it: no capture;
 * - `image`: a capture holds it (set only by reservation);
 * - `reload`: a capture finished: it must be reloaded before it is handed out again;
 * - `maintenance`: something failed: an operator must look at it;
 * - `failed`: hardware or hypervisor failure reported by the inventory;
 * - `deleted`: retired from the inventory.
 */
export const COMPUTER_STATES = [
  'available',
  'reserved',
  'inuse',
  'image',
  'reload',
  'maintenance',
  'failed',
  'deleted',
] as const;
export type ComputerState = (typeof COMPUTER_STATES)[number];

/** The states a reservation may take a computer from (the compare-and-swap's expected states). */
export const CAPTURABLE_COMPUTER_STATES = [
  'available',
  'reserved',
] as const satisfies readonly ComputerState[];

/** Lifecycle of a capture row: `queued` -> `running` -> one of the terminal {@link CaptureStatus}es. */
export const CAPTURE_STATUSES = ['queued', 'running', 'completed', 'failed', 'cancelled'] as const;
/** Status of a capture row: `queued`, `running`, or one of the machines' terminal {@link CaptureStatus}es. */
export type CaptureRecordStatus = 'queued' | 'running' | CaptureStatus;

/** A computer as the store knows it: its runtime state and who holds it. */
export interface ComputerRecord {
  name: string;
  state: ComputerState;
  /** The capture that holds the computer (its state is then `image`), or null. */
  heldBy: string | null;
  /** The state the holding capture reserved it from (where `restore` puts it back), or null. */
  heldFromState: ComputerState | null;
  /** Incremented by every change: the token of a compare-and-swap (`expectedVersion`). */
  version: number;
  updatedAt: string;
}

/** What sent a computer to maintenance: the capture that ended there, and its error. */
export interface MaintenanceCause {
  captureId: string;
  image: string;
  status: CaptureRecordStatus;
  error: StepFailure | null;
  /** When that capture ended. */
  at: string | null;
}

/** `capture <id> (<image>) <status>[: <code> in <step>: <message>]`, as the CLI and the runner tell it. */
export function maintenanceCauseText(cause: MaintenanceCause): string {
  const error = cause.error ? `: ${cause.error.code} in ${cause.error.step}: ${cause.error.message}` : '';
  return `capture ${cause.captureId} (${cause.image}) ${cause.status}${error}`;
}

/** A computer with, when it is in maintenance, the capture that put it there (null if none did). */
export interface ComputerStatus extends ComputerRecord {
  maintenance: MaintenanceCause | null;
}

/** What {@link CaptureStore.releaseComputer} did. */
export interface ComputerRelease {
  computer: ComputerRecord;
  /** The capture that had put the computer in maintenance, whose audit trail records the release; or null. */
  cause: MaintenanceCause | null;
  reason: string;
}

/** A computer from the inventory. */
export interface ComputerRegistration {
  name: string;
  /** State of a computer seen for the first time (default `available`; never `image`). */
  state?: ComputerState;
}

/** One revision of an image: born deleted with its capture, un-deleted when that capture completes. */
export interface ImageRevisionRecord {
  /** Row id of the revision (stable, unique across images). */
  id: number;
  imageId: number;
  revision: number;
  /** VCL name, e.g. `vmwarewin7-Base12345-v0`; unique across all images. */
  name: string;
  /** Set when the capture completed; null while the revision is still deleted. */
  sizeBytes: number | null;
  sha256: string | null;
  format: string | null;
  repository: string | null;
  /** Path relative to `repository`. */
  path: string | null;
  createdAt: string;
  /** When the capture that made it completed (VCL's "date created"), or null. */
  capturedAt: string | null;
  /** True until the capture completed and was verified. */
  deleted: boolean;
  /** At most one revision per image is the production one (a separate act, {@link CaptureStore.setProductionRevision}). */
  production: boolean;
}

/** An image (VCL's `image` row): what every revision's name is built from. */
export interface ImageRecord {
  id: number;
  /** VCL's OS name of the image (`vmwarewin7`, `centos7`): the first part of revision names. */
  osName: string;
  prettyName: string;
  owner: string;
  createdAt: string;
}

/** An image with its revisions, as `getImage` and `listImages` return it. */
export interface ImageWithRevisions extends ImageRecord {
  /** Ordered by revision number. */
  revisions: ImageRevisionRecord[];
}

/** An image to register (from VCL, or new). */
export interface ImageRegistration {
  /** VCL's image id when the image comes from VCL; omitted: the store assigns the next id. */
  id?: number;
  osName: string;
  prettyName: string;
  owner: string;
}

/**
 * A capture as stored, without its audit events ({@link CaptureDetail}) and its snapshot
 * ({@link StoredSnapshot}).
 */
export interface CaptureRecord {
  id: string;
  computer: string;
  /** Name, image id and revision: fixed at creation, what the machines get as `CaptureInput.image`. */
  image: ImageRef;
  provisioner: ProvisionerName;
  os: OsName;
  endState: EndState | null;
  /** The repository root the artifact must land in, when known at creation. */
  repository: string | null;
  status: CaptureRecordStatus;
  /** The machine's current state value (as last recorded), or null before the first transition. */
  stateValue: StateValue | null;
  /** The last error recorded (by a transition, a failure or a cancellation), or null. */
  lastError: StepFailure | null;
  /** How the computer was handed back, for failed and cancelled captures that held it. */
  releaseOutcome: ReleaseOutcome | null;
  /** Version of the machine definition that wrote the snapshot, or null. */
  machineVersion: string | null;
  /** Number of audit events written for this capture. */
  eventCount: number;
  /** What starting the capture later needs (e.g. the request's timeouts), as given at creation. */
  request: Record<string, unknown> | null;
  /** The runner that runs the capture now ({@link CaptureStore.claimCapture}), or null. */
  owner: string | null;
  /** Until when the owner's claim holds unless renewed (ISO time), or null. */
  leaseUntil: string | null;
  /** A cancellation asked by another process, for the owner to carry out, or null. */
  cancelRequested: string | null;
  /**
   * Counts the claims of this capture (0: never claimed): the owner's writes name it in their
   * {@link CaptureFence}, so a runner that lost the capture to a later claim changes nothing of it.
   */
  generation: number;
  createdAt: string;
  updatedAt: string;
  finishedAt: string | null;
}

/** A capture with its audit trail. */
export interface CaptureDetail extends CaptureRecord {
  /** Ordered by `seq`. */
  events: CaptureEvent[];
}

/**
 * Types of audit events the store writes itself. Runners add their own through
 * {@link TransitionInput.event}, conventionally `state.entered`, `step.finished` and `step.warning`.
 */
export const STORE_EVENT_TYPES = {
  CREATED: 'capture.created',
  RESERVED: 'computer.reserved',
  COMPLETED: 'capture.completed',
  FAILED: 'capture.failed',
  CANCELLED: 'capture.cancelled',
  /** An operator put the computer back from maintenance ({@link CaptureStore.releaseComputer}). */
  RELEASED: 'computer.released',
} as const;

/** One entry of a capture's append-only audit trail. */
export interface CaptureEvent {
  /** Global, increasing: `after` cursor for tailing. */
  id: number;
  captureId: string;
  /** 1, 2, 3... within the capture. */
  seq: number;
  at: string;
  type: string;
  /** State value entered with this event, when it came with a transition. */
  stateValue: StateValue | null;
  step: string | null;
  details: Record<string, unknown> | null;
  durationMs: number | null;
}

/** An audit event as the runner describes it. */
export interface AuditEventInput {
  /** e.g. `state.entered`, `step.finished`, `step.warning`: lower-case letters, digits, `.`, `_`, `-`. */
  type: string;
  /** The step (machine state or command) the event is about. */
  step?: string;
  /** JSON-serialisable details (command, exit code, bytes copied...). Never secrets. */
  details?: Record<string, unknown>;
  /** How long the step took, for `step.finished`. */
  durationMs?: number;
}

/** A state change of a capture's machine. */
export interface TransitionInput extends Fenced {
  /** The state value the machine is in now. */
  stateValue: StateValue;
  /** The machine's persisted snapshot (`actor.getPersistedSnapshot()`), JSON-serialisable; omitted: kept. */
  snapshot?: unknown;
  /** Version of the machine definition that produced `snapshot`; omitted: kept. */
  machineVersion?: string;
  /** A step failure to record as the capture's last error (the machine goes on to its cleanup). */
  error?: StepFailure;
  event: AuditEventInput;
}

/** A capture to create ({@link CaptureStore.createCapture}). */
export interface NewCapture {
  /** Omitted: a random UUID. Otherwise 1-100 ASCII letters, digits, `_`, `.`, `-`. */
  id?: string;
  computer: string;
  imageId: number;
  provisioner: ProvisionerName;
  os: OsName;
  endState?: EndState;
  /** Repository root the artifact must land in; can also be given at completion. */
  repository?: string;
  /**
   * Explicit revision number (e.g. re-capturing a revision VCL announced); must not exist yet.
   * Omitted: the highest existing revision + 1 (0 for a new image).
   */
  revision?: number;
  /**
   * Reserve the computer in the same transaction (default true): the capture starts `running`, or
   * nothing is written and `COMPUTER_BUSY` is thrown. False: the capture is `queued` and
   * {@link CaptureStore.reserveComputer} takes the computer later.
   */
  reserve?: boolean;
  /** JSON details that starting the capture later needs (the request's timeouts...). */
  request?: Record<string, unknown>;
  /** Created already claimed by this runner, for `leaseMs` (see {@link CaptureStore.claimCapture}). */
  owner?: string;
  leaseMs?: number;
}

/** Options of {@link CaptureStore.claimCapture}. */
export interface ClaimOptions {
  /** How long the claim holds without renewal. */
  leaseMs: number;
  /**
   * Take the capture from this owner even though its lease still runs: the caller knows that owner is
   * gone (a process on this host that no longer exists).
   */
  replacing?: string;
}

/** Options of {@link CaptureStore.claimQueuedCaptures}. */
export interface ClaimQueuedOptions {
  /** How long each claim holds without renewal. */
  leaseMs: number;
  /** Most captures claimed: the runner's free slots. */
  limit: number;
}

/** An owned capture as {@link CaptureStore.renewLeases} reports it. */
export interface OwnedCapture {
  captureId: string;
  cancelRequested: string | null;
}

/** What resume needs of a capture to restart its machine. */
export interface StoredSnapshot {
  captureId: string;
  status: CaptureRecordStatus;
  stateValue: StateValue | null;
  /** The persisted snapshot as recorded (parsed JSON), or null if none was recorded. */
  snapshot: unknown;
  machineVersion: string | null;
  updatedAt: string;
}

/** Filter of {@link CaptureStore.listCaptures}; criteria combine with AND. */
export interface CaptureFilter {
  status?: CaptureRecordStatus | readonly CaptureRecordStatus[];
  computer?: string;
  /** Default 100, at most 1000. Newest first. */
  limit?: number;
  offset?: number;
}

/** Filter of {@link CaptureStore.listImages}. */
export interface ImageFilter {
  owner?: string;
  /** Include revisions that are still deleted (in progress, failed, cancelled). Default true. */
  includeDeleted?: boolean;
}

/**
 * A runner's claim on a capture, as its writes name it: the write is made only while `owner` still runs
 * the capture under this `generation` (no later claim took it), else it fails with `FENCED` and changes
 * nothing. A write without a fence (an operator's, a test's) is not checked.
 */
export interface CaptureFence {
  owner: string;
  generation: number;
}

/** Options of a write a runner makes for a capture it runs. */
export interface Fenced {
  fence?: CaptureFence;
}

/** Options of a compare-and-swap on a computer. */
export interface CasOptions extends Fenced {
  /** Succeed only if the computer is still at this version (`COMPUTER_CHANGED` otherwise). */
  expectedVersion?: number;
}

/** Options of the terminal operations. */
export interface FinishOptions extends Fenced {
  /** Extra JSON details for the audit event (warnings, cleanup failures...). */
  details?: Record<string, unknown>;
}

/** Options of {@link CaptureStore.completeCapture}. */
export interface CompleteOptions extends FinishOptions {
  /** Repository root of the artifact, if the capture was created without one (or it moved). */
  repository?: string;
}

/**
 * Events announced to operators (webhooks, a local command): what VCL mails the image owner and the
 * admins about. The store writes one into its outbox in the transaction of the change it announces:
 * `completeCapture`, `failCapture`, `cancelCapture` (`capture.*`), and, when one of the last two sends the
 * computer to maintenance, also `computer.maintenance`.
 */
export const NOTIFICATION_EVENT_TYPES = [
  'capture.completed',
  'capture.failed',
  'capture.cancelled',
  'computer.maintenance',
] as const;
export type NotificationEventType = (typeof NOTIFICATION_EVENT_TYPES)[number];

/**
 * The JSON body of a notification, as delivered (a webhook's body, a command's stdin). `version` is the
 * payload's format: fields are only ever added within a version.
 */
export interface NotificationEvent {
  version: 1;
  /** Stable across retries and restarts: receivers de-duplicate on it (delivery is at-least-once). */
  id: string;
  type: NotificationEventType;
  /** When the change happened (the store's transaction time). */
  occurredAt: string;
  capture: {
    id: string;
    status: CaptureRecordStatus;
    provisioner: ProvisionerName;
    os: OsName;
    endState: EndState | null;
    createdAt: string;
    finishedAt: string | null;
    /** The error (failed) or reason (cancelled), null when completed. */
    error: StepFailure | null;
    /** How the computer was handed back: `maintenance` or `restore`; null when completed or queued. */
    releaseOutcome: ReleaseOutcome | null;
  };
  computer: { name: string; state: ComputerState | null };
  image: { id: number; name: string; revision: number; owner: string; prettyName: string };
  /** The recorded image of a completed capture, else null. */
  artifact: { path: string; location: string; sizeBytes: number; sha256: string; format: string } | null;
}

/** Where a delivery stands: `pending` (due now or later), `delivered`, or `dead` (gave up: see `lastError`). */
export const NOTIFICATION_STATUSES = ['pending', 'delivered', 'dead'] as const;
export type NotificationStatus = (typeof NOTIFICATION_STATUSES)[number];

/** A configured receiver as the outbox knows it: a stable name, and the event types it wants. */
export interface NotificationTarget {
  /** Deliveries are tracked per name: renaming a target makes it a new one. */
  name: string;
  events: readonly NotificationEventType[];
}

/** One event for one target. */
export interface NotificationDelivery {
  /** Row id of the delivery. */
  id: number;
  target: string;
  status: NotificationStatus;
  /** Attempts made and recorded (an attempt cut short by a crash is not counted: it is made again). */
  attempts: number;
  nextAttemptAt: string;
  lastError: string | null;
  createdAt: string;
  updatedAt: string;
  deliveredAt: string | null;
  event: NotificationEvent;
}

/** Options of {@link NotificationOutbox.claimNotifications}. */
export interface ClaimNotificationsOptions {
  /** The targets this worker delivers to: a delivery is created for each new event a target wants. */
  targets: readonly NotificationTarget[];
  /** How long the claim holds: longer than one attempt can last (a crashed claimer's rows come back then). */
  leaseMs: number;
  /** Most deliveries returned (default 20). */
  limit?: number;
  /**
   * Events older than this when a target first sees them get no delivery (a target added later is not
   * sent the whole history). Default 24 h.
   */
  maxAgeMs?: number;
}

/** The outcome of one attempt ({@link NotificationOutbox.finishDelivery}). */
export type DeliveryOutcome =
  | { result: 'delivered' }
  /** Failed: try again at `retryAt`, or give up (`dead`) when `retryAt` is null. */
  | { result: 'failed'; error: string; retryAt: string | null }
  /** Not attempted to the end (the worker stopped): back to pending at once, not counted. */
  | { result: 'released' };

/** Filter of {@link NotificationOutbox.listNotifications}. */
export interface NotificationFilter {
  status?: NotificationStatus | readonly NotificationStatus[];
  /** Default 100, at most 1000. Newest first. */
  limit?: number;
}

/**
 * The notification outbox (part of {@link CaptureStore}). Events are written by the capture store's own
 * terminal transactions; a delivery worker (src/notify) claims due deliveries, attempts them and records
 * the outcome. Every method is one transaction.
 */
export interface NotificationOutbox {
  /**
   * Creates the deliveries of new events for `targets`, then claims up to `limit` due pending deliveries
   * of those targets (not claimed by another worker whose lease still runs), oldest due first.
   */
  claimNotifications(owner: string, options: ClaimNotificationsOptions): Promise<NotificationDelivery[]>;
  /**
   * Records the outcome of an attempt on a pending delivery: `delivered`, `failed` (counted; pending
   * again at `retryAt`, or `dead`), or `released` (not counted). `INVALID_TRANSITION` when the delivery is
   * no longer pending (another worker finished it), `NOT_FOUND` when unknown.
   */
  finishDelivery(id: number, outcome: DeliveryOutcome): Promise<NotificationDelivery>;
  /** Deliveries, newest first. */
  listNotifications(filter?: NotificationFilter): Promise<NotificationDelivery[]>;
  /** Number of deliveries per status (every status present, 0 when none). */
  countNotifications(): Promise<Record<NotificationStatus, number>>;
  /** An operator makes a dead delivery pending again, due now (`INVALID_TRANSITION` unless dead). */
  retryNotification(id: number): Promise<NotificationDelivery>;
}

/**
 * The store a runner drives captures with. Every method is one transaction; errors are
 * `VclError`s with a code from `STORE_ERROR_CODES`.
 */
/** Per-host slots held in the store: a capture running on the host, a copy from it. */
export type HostSlotKind = 'capture' | 'copy';

/** What {@link CaptureStore.acquireHostSlot} asks for. */
export interface HostSlotRequest {
  host: string;
  kind: HostSlotKind;
  /** The host's limit for this kind (`maxCaptures`, `maxCopies` of the inventory). */
  limit: number;
}

/** Live holders of one host's slots of one kind. */
export interface HostSlotUsage {
  host: string;
  kind: HostSlotKind;
  held: number;
}

/** A tag one runner execution put on every command it ran on one host for a capture. */
export interface RemoteTagRecord {
  host: string;
  tag: string;
  recordedAt: string;
}

/**
 * What wakes a runner before its next poll ({@link CaptureStore.subscribe}): a capture was queued or
 * released (work to claim), a cancellation was asked, a host slot came free; `resync` after the listener
 * (re)connected, when wakes may have been missed.
 */
export type StoreWake =
  | { kind: 'queued' }
  | { kind: 'cancel'; captureId: string }
  | { kind: 'slot'; host: string }
  | { kind: 'resync' };

/** A listener of {@link CaptureStore.subscribe}. */
export interface StoreSubscription {
  /** True when wakes come from the database (PostgreSQL's LISTEN); false: polling only (SQLite). */
  readonly live: boolean;
  close(): Promise<void>;
}

export interface CaptureStore extends NotificationOutbox {
  /**
   * Registers computers from the inventory: new ones are inserted in `state` (default `available`),
   * existing ones are left as they are (their runtime state wins). All or nothing.
   */
  registerComputers(computers: readonly ComputerRegistration[]): Promise<ComputerRecord[]>;
  /** The computer, or undefined. */
  getComputer(name: string): Promise<ComputerRecord | undefined>;
  /** All computers by name. */
  listComputers(): Promise<ComputerRecord[]>;
  /**
   * Operator change of a computer's state (e.g. `maintenance` -> `available` after a look).
   * Refused with `COMPUTER_BUSY` while a capture holds it, and for the target `image` (only a reservation
   * puts a computer there).
   */
  setComputerState(name: string, state: ComputerState, options?: CasOptions): Promise<ComputerRecord>;
  /** Every computer by name; one in maintenance with the capture (and its error) that put it there. */
  describeComputers(): Promise<ComputerStatus[]>;
  /** One computer as {@link describeComputers} shows it, or undefined. */
  describeComputer(name: string): Promise<ComputerStatus | undefined>;
  /**
   * An operator puts a computer back from maintenance, after a look: to the state the capture that sent
   * it there had reserved it from (`available` or `reserved`; `available` when no capture did), with
   * `reason` in that capture's audit trail (`computer.released`). Refused with `COMPUTER_BUSY` while a
   * capture holds it, and `INVALID_TRANSITION` when it is not in maintenance.
   */
  releaseComputer(name: string, reason: string, options?: CasOptions): Promise<ComputerRelease>;

  /**
   * Registers an image (validating its OS and pretty names). Idempotent for an `id` registered with the
   * same attributes; `IMAGE_CONFLICT` if registered with others.
   */
  registerImage(image: ImageRegistration): Promise<ImageRecord>;
  /** The image with its revisions, or undefined. */
  getImage(id: number): Promise<ImageWithRevisions | undefined>;
  /** Images (by id) with their revisions. */
  listImages(filter?: ImageFilter): Promise<ImageWithRevisions[]>;
  /** Makes a completed revision the image's production one (and no other). */
  setProductionRevision(imageId: number, revision: number): Promise<ImageRevisionRecord>;

  /**
   * Creates a capture: checks names, computes the next revision and its VCL name (fixed from now on),
   * inserts the revision (deleted) and the capture, and by default reserves the computer: all in one
   * transaction, so a refused capture leaves nothing behind.
   */
  createCapture(capture: NewCapture): Promise<CaptureRecord>;
  /** Compare-and-swap of a queued capture's computer to `image`; the capture becomes `running`. */
  reserveComputer(captureId: string, options?: CasOptions): Promise<CaptureRecord>;
  /**
   * Records a state change of a queued or running capture (state value, snapshot, last error) and appends its audit
   * event, in one transaction. Returns the event's `seq`.
   */
  recordTransition(captureId: string, transition: TransitionInput): Promise<number>;
  /**
   * Success: un-deletes the revision with size, sha256, format and location (which must be inside the
   * repository), completes the capture, puts the computer in `reload` and releases it, and appends the
   * audit event, in one transaction.
   */
  completeCapture(
    captureId: string,
    artifact: ImageArtifact,
    options?: CompleteOptions,
  ): Promise<CaptureRecord>;
  /**
   * Failure: the revision stays deleted; the capture is `failed` with `error` as its last error; a held
   * computer goes to `maintenance`, or back to the state it was reserved from for `restore`.
   */
  failCapture(
    captureId: string,
    error: StepFailure,
    outcome: ReleaseOutcome,
    options?: FinishOptions,
  ): Promise<CaptureRecord>;
  /** Cancellation: as {@link failCapture}, with status `cancelled`. Also allowed for a queued capture. */
  cancelCapture(
    captureId: string,
    reason: StepFailure,
    outcome: ReleaseOutcome,
    options?: FinishOptions,
  ): Promise<CaptureRecord>;

  /** Captures, newest first, filtered by status and/or computer. */
  listCaptures(filter?: CaptureFilter): Promise<CaptureRecord[]>;
  /** One capture with its audit events, or undefined. */
  getCapture(id: string): Promise<CaptureDetail | undefined>;
  /** One capture without its audit events (its status, owner...), or undefined. */
  getCaptureRecord(id: string): Promise<CaptureRecord | undefined>;
  /** Every unfinished (queued or running) capture, oldest first: what a starting runner may claim. */
  listResumableCaptures(): Promise<CaptureRecord[]>;
  /**
   * Makes `owner` the runner of a queued or running capture. Allowed when nobody owns it, `owner`
   * already does, the owner's lease ran out, or the owner is `options.replacing`; otherwise
   * `CAPTURE_CLAIMED`. A change of owner is written to the audit trail (`capture.claimed`).
   */
  claimCapture(captureId: string, owner: string, options: ClaimOptions): Promise<CaptureRecord>;
  /**
   * Claims for `owner` up to `limit` queued captures nobody runs (no owner, or a lease that ran out),
   * oldest first, each as {@link claimCapture} would (with its `capture.claimed` event). Runners claiming
   * at once get disjoint captures: on PostgreSQL the candidates are locked with `FOR UPDATE SKIP LOCKED`,
   * so a runner passes over what another is claiming instead of waiting for it.
   */
  claimQueuedCaptures(owner: string, options: ClaimQueuedOptions): Promise<CaptureRecord[]>;
  /** Extends the lease of every unfinished capture `owner` runs; reports them with any cancellation asked. */
  renewLeases(owner: string, leaseMs: number): Promise<OwnedCapture[]>;
  /** Gives up `owner`'s unfinished captures (a graceful stop): another runner may claim them at once. */
  releaseCaptures(owner: string): Promise<number>;
  /** Asks the runner that owns an unfinished capture to cancel it (`INVALID_TRANSITION` when finished). */
  requestCancel(captureId: string, reason: string): Promise<CaptureRecord>;
  /** The persisted snapshot of a capture, or undefined if the capture does not exist. */
  loadSnapshot(captureId: string): Promise<StoredSnapshot | undefined>;

  /**
   * Records that this execution of the capture marks its commands on `host` with `tag` (idempotent),
   * before the first of them starts. `NOT_FOUND` for an unknown capture.
   */
  recordRemoteTag(captureId: string, host: string, tag: string, options?: Fenced): Promise<void>;
  /** The tags recorded for a capture, oldest first. */
  remoteTags(captureId: string): Promise<RemoteTagRecord[]>;
  /** Forgets one recorded tag (`only`), or all of a capture's; returns how many were forgotten. */
  forgetRemoteTags(
    captureId: string,
    only?: { host: string; tag: string },
    options?: Fenced,
  ): Promise<number>;

  /**
   * Takes one of `host`'s `kind` slots for the capture, if fewer than `limit` are held: counted over every
   * runner, and a slot counts only while its holder's claim holds (same owner and generation, lease not
   * run out), so a dead runner's slots come free with its leases. True when taken (or already held by
   * this claim), false when the host is full. Fenced like every write of a runner: `FENCED` when
   * `fence` is no longer the capture's claim.
   */
  acquireHostSlot(captureId: string, slot: HostSlotRequest, fence: CaptureFence): Promise<boolean>;
  /** Gives a slot back (nothing when it is not held); returns whether it was. */
  releaseHostSlot(captureId: string, host: string, kind: HostSlotKind): Promise<boolean>;
  /** Slots that count now (live holders), per host and kind. */
  hostSlotUsage(): Promise<HostSlotUsage[]>;

  /**
   * Calls `onWake` for the changes other processes commit that a runner would otherwise find only at its
   * next poll. PostgreSQL: LISTEN on a connection of its own, reconnected after a loss (then `resync`);
   * SQLite: nothing (its runners keep polling). Polling stays the fallback either way: a wake only
   * makes it sooner.
   */
  subscribe(onWake: (wake: StoreWake) => void): Promise<StoreSubscription>;

  /** Closes the store; later calls fail with `STORE_CLOSED`. */
  close(): Promise<void>;
}
