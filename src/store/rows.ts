/**
 * Rows as both databases return them (the same column names and types: times and JSON as text, flags as
 * 0/1) and their mapping to the records of `types.ts`. SQL-independent: shared by every backend.
 */
import type { StateValue } from 'xstate';
import type { EndState, ImageRef, OsName, ProvisionerName, ReleaseOutcome } from '../../machines/types.js';
import type {
  CaptureEvent,
  CaptureRecord,
  CaptureRecordStatus,
  ComputerRecord,
  ComputerState,
  ImageRecord,
  ImageRevisionRecord,
  NotificationDelivery,
  NotificationEvent,
  NotificationStatus,
} from './types.js';

export interface ComputerRow {
  name: string;
  state: string;
  capture_id: string | null;
  held_from_state: string | null;
  version: number;
  updated_at: string;
}

export interface ImageRow {
  id: number;
  os_name: string;
  pretty_name: string;
  owner: string;
  created_at: string;
}

export interface RevisionRow {
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

export interface CaptureRow {
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
  generation: number;
  created_at: string;
  updated_at: string;
  finished_at: string | null;
}

export interface EventRow {
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

export interface SnapshotRow {
  id: string;
  status: string;
  state_value: string | null;
  snapshot: string | null;
  machine_version: string | null;
  updated_at: string;
}

export interface DeliveryRow {
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

/** Capture columns without the snapshot (which can be large and is only read by resume). */
export const CAPTURE_COLUMNS = `id, computer, image_id, revision_id, image_name, revision, provisioner, os, end_state,
  repository, status, state_value, error_code, error_step, error_message, release_outcome, machine_version,
  event_count, request, owner, lease_until, cancel_requested, generation, created_at, updated_at, finished_at`;

export const DELIVERY_COLUMNS = `d.id, d.target, d.status, d.attempts, d.next_attempt_at, d.last_error, d.created_at,
  d.updated_at, d.delivered_at, n.payload`;

export function parseJson<T>(text: string | null): T | null {
  return text === null ? null : (JSON.parse(text) as T);
}

export function toComputer(row: ComputerRow): ComputerRecord {
  return {
    name: row.name,
    state: row.state as ComputerState,
    heldBy: row.capture_id,
    heldFromState: row.held_from_state as ComputerState | null,
    version: row.version,
    updatedAt: row.updated_at,
  };
}

export function toImage(row: ImageRow): ImageRecord {
  return {
    id: row.id,
    osName: row.os_name,
    prettyName: row.pretty_name,
    owner: row.owner,
    createdAt: row.created_at,
  };
}

export function toRevision(row: RevisionRow): ImageRevisionRecord {
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

export function toCapture(row: CaptureRow): CaptureRecord {
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
    generation: row.generation,
    cancelRequested: row.cancel_requested,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
    finishedAt: row.finished_at,
  };
}

export function toEvent(row: EventRow): CaptureEvent {
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

export function toDelivery(row: DeliveryRow): NotificationDelivery {
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
