/**
 * The API's endpoints as data: each says its method, path, schemas and handler. The server
 * (`server.ts`) registers them with fastify and parses every request with their zod schemas; the
 * OpenAPI document (`openapi.ts`) is generated from the same table, so the two cannot disagree.
 */
import type { z } from 'zod';
import { isVclError, VclError } from '../errors.js';
import type { Runner } from '../runner/runner.js';
import type { CaptureRecordStatus, CaptureStore } from '../store/index.js';
import type { ProgressTracker } from './progress.js';
import {
  cancelRequestSchema,
  cancelResponseSchema,
  captureDetailSchema,
  captureIdParams,
  captureListSchema,
  captureRecordSchema,
  computerListSchema,
  computerParams,
  computerReleaseSchema,
  computerStatusSchema,
  deliveryIdParams,
  enqueueRequestSchema,
  errorSchema,
  healthSchema,
  imageIdParams,
  imageListSchema,
  imageSchema,
  listCapturesQuery,
  listNotificationsQuery,
  notificationDeliverySchema,
  notificationListSchema,
  productionRequestSchema,
  readinessSchema,
  releaseRequestSchema,
  revisionSchema,
} from './schemas.js';

/** What a handler gets: the parsed request. */
export interface RouteInput<P, Q, B> {
  params: P;
  query: Q;
  body: B;
}

export interface RouteResponse {
  status: number;
  /** JSON, or text when `contentType` is given. */
  body: unknown;
  contentType?: string;
}

export interface Route {
  method: 'GET' | 'POST' | 'PUT';
  /** fastify's syntax: `/captures/:id`. */
  url: string;
  summary: string;
  tag: string;
  params?: z.ZodType;
  query?: z.ZodType;
  body?: z.ZodType;
  /** Documented responses (the errors every route may give are added by the document). */
  responses: Record<number, { description: string; schema?: z.ZodType; contentType?: string }>;
  /** False only for `/healthz`: a liveness probe needs nothing and says nothing. */
  auth: boolean;
  /** Error codes of the runner or store that mean a wrong request field, for this route. */
  fieldOf?: Record<string, string>;
  handler(input: RouteInput<unknown, unknown, unknown>): Promise<RouteResponse>;
}

/** Builds a route whose handler sees the parsed types of its schemas. */
function route<
  P extends z.ZodType = z.ZodNever,
  Q extends z.ZodType = z.ZodNever,
  B extends z.ZodType = z.ZodNever,
>(
  def: Omit<Route, 'handler' | 'params' | 'query' | 'body'> & {
    params?: P;
    query?: Q;
    body?: B;
    handler(input: RouteInput<z.output<P>, z.output<Q>, z.output<B>>): Promise<RouteResponse>;
  },
): Route {
  // The server parses with these very schemas before calling the handler, so the inputs have their types.
  return def as Route;
}

const error = (description: string) => ({ description, schema: errorSchema });
const ok = (status: number, body: unknown): RouteResponse => ({ status, body });
const notFound = (message: string) => new VclError('NOT_FOUND', message);

export interface RouteDeps {
  runner: Runner;
  store: CaptureStore;
  progress: ProgressTracker;
  /** `/metrics`' text and content type. */
  metrics(): Promise<{ text: string; contentType: string }>;
  /** The OpenAPI document (built lazily from this table). */
  openapi(): unknown;
}

/** Readiness: the store answers, the runner takes work, and its last lease renewal (if any) succeeded. */
async function readiness(d: RouteDeps) {
  let store: { ok: boolean; error?: string };
  try {
    // The cheapest indexed read: it fails when the database is closed, locked past its timeout or broken.
    await d.store.getCaptureRecord('readyz-probe');
    store = { ok: true };
  } catch (err) {
    store = { ok: false, error: isVclError(err) ? err.code : 'STORE_ERROR' };
  }
  const h = d.runner.health();
  const runner = { ok: !h.stopping, stopping: h.stopping };
  const leases = { ok: h.leases.last === null || h.leases.last.ok, last: h.leases.last };
  const ready = store.ok && runner.ok && leases.ok;
  return ok(ready ? 200 : 503, { ready, checks: { store, runner, leases } });
}

export function apiRoutes(d: RouteDeps): Route[] {
  const { runner, store } = d;
  return [
    route({
      method: 'POST',
      url: '/captures',
      tag: 'captures',
      summary:
        'Queue a capture: the daemon runs it when a slot is free (refused at once when the computer is busy)',
      body: enqueueRequestSchema,
      responses: {
        202: { description: 'queued', schema: captureRecordSchema },
        400: error('bad input (field names it); nothing recorded'),
        409: error(
          'COMPUTER_BUSY (held, or in maintenance), CAPTURE_EXISTS, IMAGE_CONFLICT; nothing recorded',
        ),
      },
      auth: true,
      fieldOf: {
        UNKNOWN_COMPUTER: 'computer',
        INVALID_END_STATE: 'endState',
        INVALID_IMAGE_NAME: 'image',
        NOT_FOUND: 'image',
        CAPTURE_EXISTS: 'id',
      },
      async handler({ body }) {
        // Checked first, so that a taken id does not register the request's image before failing.
        if (body.id !== undefined && (await store.getCaptureRecord(body.id)))
          throw new VclError('CAPTURE_EXISTS', `a capture with id ${body.id} already exists`);
        const { endState, timeouts, id, ...rest } = body;
        const record = await runner.enqueue({
          ...rest,
          ...(endState === undefined ? {} : { endState }),
          ...(timeouts === undefined ? {} : { timeouts }),
          ...(id === undefined ? {} : { id }),
          image:
            typeof body.image === 'number'
              ? body.image
              : {
                  osName: body.image.osName,
                  prettyName: body.image.prettyName,
                  owner: body.image.owner,
                  ...(body.image.id === undefined ? {} : { id: body.image.id }),
                },
        });
        return ok(202, record);
      },
    }),
    route({
      method: 'GET',
      url: '/captures',
      tag: 'captures',
      summary: 'Captures, newest first, by status and/or computer',
      query: listCapturesQuery,
      responses: { 200: { description: 'the captures', schema: captureListSchema } },
      auth: true,
      async handler({ query }) {
        const captures = await store.listCaptures({
          ...(query.status === undefined ? {} : { status: query.status as CaptureRecordStatus[] }),
          ...(query.computer === undefined ? {} : { computer: query.computer }),
          ...(query.limit === undefined ? {} : { limit: query.limit }),
          ...(query.offset === undefined ? {} : { offset: query.offset }),
        });
        return ok(200, { captures });
      },
    }),
    route({
      method: 'GET',
      url: '/captures/:id',
      tag: 'captures',
      summary: "A capture with its audit trail and, while this daemon copies for it, the copy's progress",
      params: captureIdParams,
      responses: {
        200: { description: 'the capture', schema: captureDetailSchema },
        404: error('no such capture'),
      },
      auth: true,
      async handler({ params }) {
        const capture = await store.getCapture(params.id);
        if (!capture) throw notFound(`capture ${params.id} does not exist`);
        return ok(200, { ...capture, progress: d.progress.of(params.id) });
      },
    }),
    route({
      method: 'POST',
      url: '/captures/:id/cancel',
      tag: 'captures',
      summary:
        'Cancel a capture: a queued one ends at once; a running one runs its cleanup (here, or by the runner that runs it)',
      params: captureIdParams,
      body: cancelRequestSchema,
      responses: {
        202: { description: 'cancelled or asked', schema: cancelResponseSchema },
        404: error('no such capture'),
        409: error('INVALID_TRANSITION: the capture already ended'),
      },
      auth: true,
      async handler({ params, body }) {
        await runner.cancel(params.id, body.reason ?? 'cancelled through the API');
        const r = await store.getCaptureRecord(params.id);
        if (!r) throw notFound(`capture ${params.id} does not exist`);
        const outcome = r.status === 'cancelled' ? 'cancelled' : 'requested';
        return ok(202, { captureId: r.id, outcome, status: r.status });
      },
    }),
    route({
      method: 'GET',
      url: '/images',
      tag: 'images',
      summary: 'Images with their revisions (deleted ones are revisions whose capture did not complete)',
      responses: { 200: { description: 'the images', schema: imageListSchema } },
      auth: true,
      handler: async () => ok(200, { images: await store.listImages() }),
    }),
    route({
      method: 'GET',
      url: '/images/:id',
      tag: 'images',
      summary: 'One image with its revisions',
      params: imageIdParams,
      responses: { 200: { description: 'the image', schema: imageSchema }, 404: error('no such image') },
      auth: true,
      async handler({ params }) {
        const image = await store.getImage(params.id);
        if (!image) throw notFound(`image ${params.id} does not exist`);
        return ok(200, image);
      },
    }),
    route({
      method: 'PUT',
      url: '/images/:id/production',
      tag: 'images',
      summary: "Make a completed revision the image's production one (and no other)",
      params: imageIdParams,
      body: productionRequestSchema,
      responses: {
        200: { description: 'the production revision', schema: revisionSchema },
        404: error('no such image or revision'),
        409: error('INVALID_TRANSITION: the revision is deleted (its capture did not complete)'),
      },
      auth: true,
      async handler({ params, body }) {
        return ok(200, await store.setProductionRevision(params.id, body.revision));
      },
    }),
    route({
      method: 'GET',
      url: '/computers',
      tag: 'computers',
      summary:
        'Every computer with its state; one in maintenance with the capture and error that put it there',
      responses: { 200: { description: 'the computers', schema: computerListSchema } },
      auth: true,
      handler: async () => ok(200, { computers: await store.describeComputers() }),
    }),
    route({
      method: 'GET',
      url: '/computers/:name',
      tag: 'computers',
      summary: 'One computer',
      params: computerParams,
      responses: {
        200: { description: 'the computer', schema: computerStatusSchema },
        404: error('no such computer'),
      },
      auth: true,
      async handler({ params }) {
        const c = await store.describeComputer(params.name);
        if (!c) throw notFound(`computer ${params.name} does not exist`);
        return ok(200, c);
      },
    }),
    route({
      method: 'POST',
      url: '/computers/:name/release',
      tag: 'computers',
      summary:
        'Put a computer back from maintenance after a look, with the reason in the audit trail of the capture that put it there',
      params: computerParams,
      body: releaseRequestSchema,
      responses: {
        200: { description: 'released', schema: computerReleaseSchema },
        404: error('no such computer'),
        409: error('COMPUTER_BUSY (a capture holds it) or INVALID_TRANSITION (not in maintenance)'),
      },
      auth: true,
      async handler({ params, body }) {
        return ok(200, await store.releaseComputer(params.name, body.reason));
      },
    }),
    route({
      method: 'GET',
      url: '/notifications',
      tag: 'notifications',
      summary:
        'Notification deliveries (webhooks, command hooks), newest first, with attempts and last error; counts per status',
      query: listNotificationsQuery,
      responses: { 200: { description: 'the deliveries', schema: notificationListSchema } },
      auth: true,
      async handler({ query }) {
        const deliveries = await store.listNotifications({
          ...(query.status === undefined ? {} : { status: query.status }),
          ...(query.limit === undefined ? {} : { limit: query.limit }),
        });
        return ok(200, { deliveries, counts: await store.countNotifications() });
      },
    }),
    route({
      method: 'POST',
      url: '/notifications/:id/retry',
      tag: 'notifications',
      summary: 'Make a dead delivery pending again, due now (the daemon attempts it at its next poll)',
      params: deliveryIdParams,
      responses: {
        200: { description: 'pending again', schema: notificationDeliverySchema },
        404: error('no such delivery'),
        409: error('INVALID_TRANSITION: the delivery is not dead'),
      },
      auth: true,
      async handler({ params }) {
        return ok(200, await store.retryNotification(params.id));
      },
    }),
    route({
      method: 'GET',
      url: '/healthz',
      tag: 'operations',
      summary: 'Liveness: the process answers (no token needed, says nothing else)',
      responses: { 200: { description: 'alive', schema: healthSchema } },
      auth: false,
      handler: async () => ok(200, { status: 'ok' }),
    }),
    route({
      method: 'GET',
      url: '/readyz',
      tag: 'operations',
      summary:
        "Readiness: the store answers, the runner takes work, and the last renewal of its captures' leases succeeded",
      responses: {
        200: { description: 'ready', schema: readinessSchema },
        503: { description: 'not ready: the failing check says why', schema: readinessSchema },
      },
      auth: true,
      handler: () => readiness(d),
    }),
    route({
      method: 'GET',
      url: '/metrics',
      tag: 'operations',
      summary: 'Prometheus metrics (text exposition format)',
      responses: { 200: { description: 'the metrics', contentType: 'text/plain; version=0.0.4' } },
      auth: true,
      async handler() {
        const m = await d.metrics();
        return { status: 200, body: m.text, contentType: m.contentType };
      },
    }),
    route({
      method: 'GET',
      url: '/openapi.json',
      tag: 'operations',
      summary: 'This OpenAPI 3.1 document',
      responses: { 200: { description: 'the document', contentType: 'application/json' } },
      auth: true,
      handler: async () => ok(200, d.openapi()),
    }),
  ];
}
