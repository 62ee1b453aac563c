/** What a daemon embeds: the runner, the store, the inventory loader, and the built-in lab for trials. */
export type {
  CaptureInput,
  CaptureResult,
  EndState,
  ImageArtifact,
  ImageRef,
  OsName,
  ProvisionerName,
  StepFailure,
  StepWarning,
  Timeouts,
} from '../machines/index.js';
export { type RunnerMetrics, runnerMetrics } from './api/metrics.js';
export { type ApiServer, type ApiServerOptions, startApiServer } from './api/server.js';
export { isVclError, VclError } from './errors.js';
export { createInspector, type Inspector } from './inspector/index.js';
export { statelyBridge } from './inspector/stately.js';
export { loadInventoryFile } from './inventory/load.js';
export { type Inventory, type InventoryInput, parseInventory } from './inventory/schema.js';
export { startLab } from './lab/index.js';
export type { Lab, LabOptions } from './lab/types.js';
export { createLogger } from './log.js';
export {
  backoffMs,
  createNotifier,
  type Notifier,
  type NotifierOptions,
  SIGNATURE_HEADER,
  signBody,
} from './notify/index.js';
export {
  type PreflightCheck,
  type PreflightReport,
  type PreflightRequest,
  preflight,
} from './runner/preflight.js';
export {
  type CaptureHandle,
  type CaptureRequest,
  type CaptureRunResult,
  createRunner,
  type ListedCapture,
  type Runner,
  type RunnerEvent,
  type RunnerHealth,
  type RunnerOptions,
  type StartReport,
  type SuspendedResult,
} from './runner/runner.js';
export {
  type CaptureStore,
  type NotificationDelivery,
  type NotificationEvent,
  type NotificationEventType,
  type NotificationOutbox,
  openPostgresStore,
  openSqliteStore,
  openStore,
} from './store/index.js';
