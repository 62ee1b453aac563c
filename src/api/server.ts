/**
 * The daemon's HTTP API (fastify) over a runner and its store: the routes of `routes.ts`, each request
 * parsed with its zod schemas (a 400 names the wrong field, and the handler, so nothing, runs), runner
 * and store errors turned into HTTP statuses, a bearer token checked when one is configured (required
 * beyond loopback), and `/metrics` from `metrics.ts`.
 */
import type { AddressInfo } from 'node:net';
import Fastify, { type FastifyReply, type FastifyRequest, LogController } from 'fastify';
import type { z } from 'zod';
import { isVclError } from '../errors.js';
import { type Logger, silentLogger } from '../log.js';
import type { Runner } from '../runner/runner.js';
import type { CaptureStore } from '../store/index.js';
import { bearerChecker, checkExposure, isLoopback, type ListenAddress } from './auth.js';
import { runnerMetrics } from './metrics.js';
import { openApiDocument } from './openapi.js';
import { trackProgress } from './progress.js';
import { apiRoutes, type Route } from './routes.js';

export interface ApiServerOptions {
  runner: Runner;
  store: CaptureStore;
  /** Default 127.0.0.1, any free port. */
  listen?: Partial<ListenAddress>;
  /** Bearer token; required when `listen.host` is not loopback. */
  token?: string;
  logger?: Logger;
}

export interface ApiServer {
  /** `http://127.0.0.1:<port>` (no trailing slash). */
  url: string;
  port: number;
  close(): Promise<void>;
}

/** HTTP status of a runner or store error code. */
const STATUS_OF: Record<string, number> = {
  INVALID_INPUT: 400,
  INVALID_IMAGE_NAME: 400,
  INVALID_END_STATE: 400,
  INVALID_PATH: 400,
  NOT_FOUND: 404,
  UNKNOWN_COMPUTER: 404,
  COMPUTER_BUSY: 409,
  COMPUTER_CHANGED: 409,
  CAPTURE_EXISTS: 409,
  CAPTURE_CLAIMED: 409,
  IMAGE_CONFLICT: 409,
  REVISION_EXISTS: 409,
  INVALID_TRANSITION: 409,
  RUNNER_STOPPED: 503,
  STORE_BUSY: 503,
  STORE_CLOSED: 503,
};

interface ApiError {
  code: string;
  message: string;
  field?: string;
  details?: Record<string, unknown>;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly body: ApiError,
  ) {
    super(body.message);
  }
}

/** Parses one part of a request; the first issue becomes a 400 naming its field. */
function parse<T>(schema: z.ZodType<T> | undefined, value: unknown, where: string): T | undefined {
  if (!schema) return undefined;
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issue = r.error.issues[0];
  const path = issue?.path.map(String).join('.') ?? '';
  // An unknown key's path is its object; the key itself is what is wrong.
  const keys = issue?.code === 'unrecognized_keys' ? issue.keys : [];
  const field = [path, keys.join(',')].filter(Boolean).join('.') || where;
  throw new HttpError(400, {
    code: 'VALIDATION',
    field,
    message: `${where} field '${field}': ${issue?.message ?? 'invalid'}`,
  });
}

/** The allowed Host header on loopback without a token: a page elsewhere cannot reach us by DNS rebinding. */
function loopbackHost(header: string | undefined): boolean {
  const m = /^(\[[^\]]+\]|[^:]+)(?::\d+)?$/.exec(header ?? '');
  return m !== null && isLoopback((m[1] as string).replace(/^\[|\]$/g, ''));
}

export async function startApiServer(o: ApiServerOptions): Promise<ApiServer> {
  const host = o.listen?.host ?? '127.0.0.1';
  const port = o.listen?.port ?? 0;
  checkExposure({ host, port }, o.token);
  const log = (o.logger ?? silentLogger()).child({ component: 'api' });
  const authorized = o.token === undefined ? undefined : bearerChecker(o.token);
  const metrics = runnerMetrics({ runner: o.runner, store: o.store, logger: log });
  const progress = trackProgress(o.runner);
  let document: unknown;
  const routes: Route[] = apiRoutes({
    runner: o.runner,
    store: o.store,
    progress,
    metrics: async () => ({ text: await metrics.scrape(), contentType: metrics.contentType }),
    openapi: () => {
      document ??= openApiDocument(routes);
      return document;
    },
  });

  // fastify logs through our pino logger; its per-request lines are replaced by one line per response
  // (method, route, status, time): never headers, so never the token.
  const app = Fastify({
    loggerInstance: log,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 64 * 1024,
  });
  app.addHook('onResponse', async (req, reply) => {
    log.info(
      {
        method: req.method,
        route: req.routeOptions.url ?? 'unknown',
        status: reply.statusCode,
        ms: Math.round(reply.elapsedTime),
      },
      'api request',
    );
  });
  const sendError = (reply: FastifyReply, status: number, body: ApiError) =>
    reply.code(status).type('application/json; charset=utf-8').send({ error: body });

  app.setErrorHandler((err, _req, reply) => {
    if (err instanceof HttpError) return sendError(reply, err.status, err.body);
    const fastifyStatus = (err as { statusCode?: number }).statusCode;
    if (fastifyStatus !== undefined && fastifyStatus >= 400 && fastifyStatus < 500)
      // fastify's own refusals: malformed JSON, a wrong content type, a body too large.
      return sendError(reply, fastifyStatus, {
        code: (err as { code?: string }).code ?? 'BAD_REQUEST',
        message: (err as Error).message,
      });
    log.error({ err }, 'api request failed');
    return sendError(reply, 500, { code: 'INTERNAL', message: 'internal error; see the daemon log' });
  });
  app.setNotFoundHandler((req, reply) =>
    sendError(reply, 404, { code: 'NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` }),
  );

  for (const r of routes) {
    app.route({
      method: r.method,
      url: r.url,
      handler: async (req: FastifyRequest, reply: FastifyReply) => {
        if (authorized && r.auth && !authorized(req.headers.authorization))
          throw new HttpError(401, {
            code: 'UNAUTHORIZED',
            message: 'missing or wrong bearer token (Authorization: Bearer <token>)',
          });
        if (!authorized && !loopbackHost(req.headers.host))
          throw new HttpError(421, {
            code: 'WRONG_HOST',
            message: 'without a token, only loopback host names',
          });
        const input = {
          params: parse(r.params, req.params, 'path'),
          query: parse(r.query, req.query, 'query'),
          // A body whose fields are all optional may be left out.
          body: parse(r.body, req.body ?? {}, 'body'),
        };
        let res: Awaited<ReturnType<Route['handler']>>;
        try {
          res = await r.handler(input);
        } catch (err) {
          if (!isVclError(err)) throw err;
          const field = r.fieldOf?.[err.code];
          const status = field ? 400 : (STATUS_OF[err.code] ?? 500);
          if (status === 500) throw err;
          throw new HttpError(status, {
            code: err.code,
            message: err.message,
            ...(field ? { field } : {}),
            ...(err.details ? { details: { ...err.details } } : {}),
          });
        }
        reply.code(res.status);
        if (res.contentType) return reply.type(res.contentType).send(res.body);
        return reply.type('application/json; charset=utf-8').send(res.body);
      },
    });
  }

  try {
    await app.listen({ host, port });
  } catch (err) {
    metrics.close();
    progress.close();
    await app.close();
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE')
      throw new RangeError(`--listen: ${host}:${port} is in use; give another port`);
    throw err;
  }
  const bound = (app.server.address() as AddressInfo).port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${bound}`;
  log.info({ url, auth: o.token === undefined ? 'none' : 'bearer' }, 'api listening');
  return {
    url,
    port: bound,
    async close() {
      metrics.close();
      progress.close();
      await app.close();
    },
  };
}
