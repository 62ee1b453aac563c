/**
 * The HTTP API's request and response shapes, as zod schemas: requests are parsed with them (a 400 names
 * the field), and the OpenAPI document is generated from them (`openapi.ts`). Where the runner already
 * has a zod schema (the timeouts) it is reused; the store's records are TypeScript interfaces, so their
 * schemas here are checked against those interfaces at compile time (`Same` below): a field added to or
 * changed in the store fails the typecheck until it is described here too.
 */
import type { StateValue } from 'xstate';
import { z } from 'zod';
import { PROVISIONERS } from '../../machines/index.js';
import { END_STATES, OPERATING_SYSTEMS } from '../../machines/types.js';
import { timeoutsSchema } from '../inventory/schema.js';
import type { RunnerHealth } from '../runner/runner.js';
import { SAFE_NAME_PATTERN } from '../store/naming.js';
import {
  CAPTURE_STATUSES,
  type CaptureDetail,
  type CaptureRecord,
  COMPUTER_STATES,
  type ComputerRelease,
  type ComputerStatus,
  type ImageRevisionRecord,
  type ImageWithRevisions,
  NOTIFICATION_EVENT_TYPES,
  NOTIFICATION_STATUSES,
  type NotificationDelivery,
} from '../store/types.js';

const safeName = z.string().max(100).regex(SAFE_NAME_PATTERN, 'letters, digits, ".", "_" and "-"');
const isoTime = z.string().describe('ISO-8601 time in UTC');
/** A machine state value: a state name, or nested states as an object. */
const stateValue = z
  .union([z.string(), z.record(z.string(), z.unknown())])
  .describe('XState state value') as unknown as z.ZodType<StateValue>;
const stepFailure = z.object({ code: z.string(), step: z.string(), message: z.string() });
const endState = z.enum(END_STATES);
const captureStatus = z.enum(CAPTURE_STATUSES);
const computerState = z.enum(COMPUTER_STATES);

// ---- requests ------------------------------------------------------------------------------------

export const imageRegistrationSchema = z
  .object({
    id: z.number().int().positive().optional().describe("VCL's image id; omitted: the next free id"),
    osName: z.string().min(1).max(100),
    prettyName: z.string().min(1).max(100),
    owner: z.string().min(1).max(100),
  })
  .strict();

export const enqueueRequestSchema = z
  .object({
    computer: safeName.describe('a computer of the inventory'),
    image: z
      .union([z.number().int().positive(), imageRegistrationSchema])
      .describe('a registered image id, or an image to register'),
    endState: endState.optional(),
    timeouts: timeoutsSchema.optional(),
    id: safeName.optional().describe('capture id (default: a random UUID)'),
  })
  .strict();

export const captureIdParams = z.object({ id: safeName }).strict();
export const imageIdParams = z.object({ id: z.coerce.number().int().positive() }).strict();
export const computerParams = z.object({ name: safeName }).strict();

export const listCapturesQuery = z
  .object({
    status: z
      .union([captureStatus, z.array(captureStatus)])
      .optional()
      .describe('repeat for several'),
    computer: safeName.optional(),
    limit: z.coerce.number().int().min(1).max(1000).optional(),
    offset: z.coerce.number().int().min(0).optional(),
  })
  .strict();

const notificationStatus = z.enum(NOTIFICATION_STATUSES);

export const listNotificationsQuery = z
  .object({
    status: z
      .union([notificationStatus, z.array(notificationStatus)])
      .optional()
      .describe('repeat for several'),
    limit: z.coerce.number().int().min(1).max(1000).optional(),
  })
  .strict();
export const deliveryIdParams = z.object({ id: z.coerce.number().int().positive() }).strict();

const reasonText = z
  .string()
  .trim()
  .min(1, 'must say why')
  .max(200)
  // biome-ignore lint/suspicious/noControlCharactersInRegex: refusing control characters is the point.
  .regex(/^[^\u0000-\u001f\u007f]*$/, 'one line of text, no control characters');

export const cancelRequestSchema = z.object({ reason: reasonText.optional() }).strict();
export const releaseRequestSchema = z.object({ reason: reasonText }).strict();
export const productionRequestSchema = z.object({ revision: z.number().int().min(0) }).strict();

// ---- responses -----------------------------------------------------------------------------------

const imageRef = z.object({ name: z.string(), imageId: z.number().int(), revision: z.number().int() });

export const captureRecordSchema = z.object({
  id: z.string(),
  computer: z.string(),
  image: imageRef,
  provisioner: z.enum(PROVISIONERS),
  os: z.enum(OPERATING_SYSTEMS),
  endState: endState.nullable(),
  repository: z.string().nullable(),
  status: captureStatus,
  stateValue: stateValue.nullable(),
  lastError: stepFailure.nullable(),
  releaseOutcome: z.enum(['maintenance', 'restore']).nullable(),
  machineVersion: z.string().nullable(),
  eventCount: z.number().int(),
  request: z.record(z.string(), z.unknown()).nullable(),
  owner: z.string().nullable(),
  leaseUntil: isoTime.nullable(),
  cancelRequested: z.string().nullable(),
  generation: z.number().int().nonnegative(),
  createdAt: isoTime,
  updatedAt: isoTime,
  finishedAt: isoTime.nullable(),
});

const captureEvent = z.object({
  id: z.number().int(),
  captureId: z.string(),
  seq: z.number().int(),
  at: isoTime,
  type: z.string(),
  stateValue: stateValue.nullable(),
  step: z.string().nullable(),
  details: z.record(z.string(), z.unknown()).nullable(),
  durationMs: z.number().nullable(),
});

/** The last copy progress this daemon saw of a capture it runs (null otherwise). */
export const progressSchema = z.object({
  step: z.string(),
  bytes: z.number(),
  total: z.number().optional(),
  bytesPerSecond: z.number(),
  at: isoTime,
});

export const captureDetailSchema = captureRecordSchema.extend({
  events: z.array(captureEvent).describe('the audit trail, by seq'),
  progress: progressSchema.nullable(),
});

export const captureListSchema = z.object({ captures: z.array(captureRecordSchema) });

export const cancelResponseSchema = z.object({
  captureId: z.string(),
  outcome: z
    .enum(['cancelled', 'requested'])
    .describe('cancelled: ended now; requested: the runner running it cancels it, with cleanup'),
  status: captureStatus,
});

const computerRecord = z.object({
  name: z.string(),
  state: computerState,
  heldBy: z.string().nullable(),
  heldFromState: computerState.nullable(),
  version: z.number().int(),
  updatedAt: isoTime,
});
const maintenanceCause = z.object({
  captureId: z.string(),
  image: z.string(),
  status: captureStatus,
  error: stepFailure.nullable(),
  at: isoTime.nullable(),
});
export const computerStatusSchema = computerRecord.extend({ maintenance: maintenanceCause.nullable() });
export const computerListSchema = z.object({ computers: z.array(computerStatusSchema) });
export const computerReleaseSchema = z.object({
  computer: computerRecord,
  cause: maintenanceCause.nullable(),
  reason: z.string(),
});

export const revisionSchema = z.object({
  id: z.number().int(),
  imageId: z.number().int(),
  revision: z.number().int(),
  name: z.string(),
  sizeBytes: z.number().nullable(),
  sha256: z.string().nullable(),
  format: z.string().nullable(),
  repository: z.string().nullable(),
  path: z.string().nullable(),
  createdAt: isoTime,
  capturedAt: isoTime.nullable(),
  deleted: z.boolean(),
  production: z.boolean(),
});
export const imageSchema = z.object({
  id: z.number().int(),
  osName: z.string(),
  prettyName: z.string(),
  owner: z.string(),
  createdAt: isoTime,
  revisions: z.array(revisionSchema),
});
export const imageListSchema = z.object({ images: z.array(imageSchema) });

/** The JSON body a receiver gets (a webhook's body, a command hook's stdin). */
const notificationEvent = z.object({
  version: z.literal(1),
  id: z.string().describe('stable across retries: receivers de-duplicate on it'),
  type: z.enum(NOTIFICATION_EVENT_TYPES),
  occurredAt: isoTime,
  capture: z.object({
    id: z.string(),
    status: captureStatus,
    provisioner: z.enum(PROVISIONERS),
    os: z.enum(OPERATING_SYSTEMS),
    endState: endState.nullable(),
    createdAt: isoTime,
    finishedAt: isoTime.nullable(),
    error: stepFailure.nullable(),
    releaseOutcome: z.enum(['maintenance', 'restore']).nullable(),
  }),
  computer: z.object({ name: z.string(), state: computerState.nullable() }),
  image: z.object({
    id: z.number().int(),
    name: z.string(),
    revision: z.number().int(),
    owner: z.string(),
    prettyName: z.string(),
  }),
  artifact: z
    .object({
      path: z.string(),
      location: z.string(),
      sizeBytes: z.number(),
      sha256: z.string(),
      format: z.string(),
    })
    .nullable(),
});
export const notificationDeliverySchema = z.object({
  id: z.number().int(),
  target: z.string().describe("the receiver's name in the inventory"),
  status: notificationStatus,
  attempts: z.number().int(),
  nextAttemptAt: isoTime,
  lastError: z.string().nullable(),
  createdAt: isoTime,
  updatedAt: isoTime,
  deliveredAt: isoTime.nullable(),
  event: notificationEvent,
});
export const notificationListSchema = z.object({
  deliveries: z.array(notificationDeliverySchema),
  counts: z.object({ pending: z.number().int(), delivered: z.number().int(), dead: z.number().int() }),
});

export const errorSchema = z.object({
  error: z.object({
    code: z.string().describe('VALIDATION, NOT_FOUND, UNAUTHORIZED, or the runner/store error code'),
    message: z.string(),
    field: z.string().optional().describe('the request field that is wrong (dotted path)'),
    details: z.record(z.string(), z.unknown()).optional(),
  }),
});

export const healthSchema = z.object({ status: z.literal('ok') });
export const readinessSchema = z.object({
  ready: z.boolean(),
  checks: z.object({
    store: z.object({ ok: z.boolean(), error: z.string().optional() }),
    runner: z.object({ ok: z.boolean(), stopping: z.boolean() }),
    leases: z.object({
      ok: z.boolean(),
      last: z.object({ at: isoTime, ok: z.boolean(), error: z.string().optional() }).nullable(),
    }),
  }),
});

// ---- compile-time checks against the store's and runner's types ---------------------------------------

/** True when both have the same keys and `Actual` fits the schema's type. */
type Same<Actual, Schema> = [keyof Actual] extends [keyof Schema]
  ? [keyof Schema] extends [keyof Actual]
    ? Actual extends Schema
      ? true
      : false
    : false
  : false;
const fits = <T extends true>(_: T) => undefined;
fits<Same<CaptureRecord, z.output<typeof captureRecordSchema>>>(true);
fits<Same<Omit<CaptureDetail, 'events'>, Omit<z.output<typeof captureRecordSchema>, never>>>(true);
fits<Same<CaptureDetail['events'][number], z.output<typeof captureEvent>>>(true);
fits<Same<ComputerStatus, z.output<typeof computerStatusSchema>>>(true);
fits<Same<ComputerRelease, z.output<typeof computerReleaseSchema>>>(true);
fits<Same<ImageWithRevisions, z.output<typeof imageSchema>>>(true);
fits<Same<ImageRevisionRecord, z.output<typeof revisionSchema>>>(true);
fits<Same<NotificationDelivery, z.output<typeof notificationDeliverySchema>>>(true);
fits<Same<NotificationDelivery['event'], z.output<typeof notificationEvent>>>(true);
fits<
  Same<
    NonNullable<RunnerHealth['leases']['last']>,
    z.output<typeof readinessSchema>['checks']['leases']['last'] & object
  >
>(true);
