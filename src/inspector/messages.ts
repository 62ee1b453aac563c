/**
 * What the inspector server sends to a page, over its WebSocket and its JSON API. Every message is built
 * field by field from whitelisted values (state values, step names, timestamps, byte counts, redacted
 * context): no xstate inspection event, actor, machine config or inventory entry is ever forwarded as is.
 */
import type { CaptureRecordStatus } from '../store/index.js';

/** A capture as the list shows it. */
export interface CaptureSummary {
  id: string;
  computer: string;
  provisioner: string | null;
  os: string | null;
  image: string | null;
  status: CaptureRecordStatus;
  /** Leaf state path of the capture machine, segments joined by `.` (`capturing.reserve`). */
  state: string | null;
  step: string | null;
  /** Epoch ms. */
  createdAt: number;
  finishedAt: number | null;
  /** True while this server's runner is running it. */
  live: boolean;
}

/** JSON-serialisable state value (`'completed'`, `{ capturing: 'reserve' }`). */
export type StateValueJson = string | { [key: string]: StateValueJson };

/** Messages of one capture (each carries its `id` and a server-wide increasing `seq`). */
export type CaptureMessage =
  | { t: 'state'; seq: number; id: string; at: number; value: StateValueJson; step: string }
  | {
      t: 'os';
      seq: number;
      id: string;
      at: number;
      value: StateValueJson;
      /** `active`, `done`, `error` or `stopped`. */
      status: string;
    }
  | {
      t: 'event';
      seq: number;
      id: string;
      at: number;
      /** `capture` (the provisioner machine) or `os` (its OS sub-machine). */
      actor: 'capture' | 'os';
      type: string;
      /** A redacted one-line detail (error code and message, cancel reason). */
      detail?: string;
    }
  | {
      t: 'context';
      seq: number;
      id: string;
      at: number;
      actor: 'capture' | 'os';
      /** The machine's context after redaction. */
      context: unknown;
    }
  | {
      t: 'progress';
      seq: number;
      id: string;
      at: number;
      step: string;
      bytes: number;
      total: number | null;
      bytesPerSecond: number;
    }
  | {
      t: 'finished';
      seq: number;
      id: string;
      at: number;
      status: string;
      /** Error code and step of a failed or cancelled capture. */
      error: { code: string; step: string; message: string } | null;
    };

/** Everything the server pushes. */
export type ServerMessage =
  | CaptureMessage
  | { t: 'hello'; seq: number; captures: CaptureSummary[] }
  | { t: 'capture'; seq: number; capture: CaptureSummary }
  /** Messages this client missed because it read too slowly: it should reload what it shows. */
  | { t: 'dropped'; seq: number; count: number };

/** One recorded transition of a finished (or running) capture, from the store's audit trail. */
export interface RecordedTransition {
  seq: number;
  /** Epoch ms. */
  at: number;
  /** The audit event type (`state.entered`, `capture.completed`...). */
  type: string;
  value: StateValueJson;
  step: string | null;
}

/** `GET /api/captures/:id`. */
export interface CaptureDetailResponse {
  capture: CaptureSummary;
  /** The machine diagram to draw it on (`/diagrams/<machine>.svg`), and its OS sub-machine's. */
  machine: string | null;
  osMachine: string | null;
  /** What this server saw live (bounded), up to `seq`; null for a capture only the store knows. */
  live: { seq: number; messages: CaptureMessage[]; truncated: number } | null;
  /** Recorded transitions for replay. */
  transitions: RecordedTransition[];
}
