/**
 * The OpenAPI 3.1 document of the API, generated from the route table and its zod schemas with zod's own
 * `z.toJSONSchema` (OpenAPI 3.1's schemas are JSON Schema 2020-12, zod's default target). It is served at
 * `/openapi.json` and committed as `docs/openapi.json`, which a test keeps equal to this output.
 */
import { z } from 'zod';
import { PACKAGE_VERSION } from '../package.js';
import { apiRoutes, type Route } from './routes.js';
import * as schemas from './schemas.js';

/** Schemas shown once under `components.schemas` and referred to by name. */
const NAMED: [string, z.ZodType][] = [
  ['CaptureRecord', schemas.captureRecordSchema],
  ['CaptureDetail', schemas.captureDetailSchema],
  ['CaptureList', schemas.captureListSchema],
  ['EnqueueRequest', schemas.enqueueRequestSchema],
  ['CancelRequest', schemas.cancelRequestSchema],
  ['CancelResponse', schemas.cancelResponseSchema],
  ['Image', schemas.imageSchema],
  ['ImageList', schemas.imageListSchema],
  ['Revision', schemas.revisionSchema],
  ['ProductionRequest', schemas.productionRequestSchema],
  ['ComputerStatus', schemas.computerStatusSchema],
  ['ComputerList', schemas.computerListSchema],
  ['ReleaseRequest', schemas.releaseRequestSchema],
  ['ComputerRelease', schemas.computerReleaseSchema],
  ['Error', schemas.errorSchema],
  ['Health', schemas.healthSchema],
  ['Readiness', schemas.readinessSchema],
];

type Json = Record<string, unknown>;

function jsonSchema(schema: z.ZodType, io: 'input' | 'output'): Json {
  const { $schema: _, ...rest } = z.toJSONSchema(schema, { io, unrepresentable: 'any' }) as Json;
  return rest;
}

export function openApiDocument(routes: readonly Route[]): Json {
  const components: Record<string, Json> = {};
  const ref = (schema: z.ZodType, io: 'input' | 'output'): Json => {
    const named = NAMED.find(([, s]) => s === schema);
    if (!named) return jsonSchema(schema, io);
    components[named[0]] ??= jsonSchema(schema, io);
    return { $ref: `#/components/schemas/${named[0]}` };
  };
  /** Path and query parameters, one per property of their object schema. */
  const parameters = (schema: z.ZodType | undefined, where: 'path' | 'query') => {
    if (!schema) return [];
    const s = jsonSchema(schema, 'input') as { properties?: Record<string, Json>; required?: string[] };
    return Object.entries(s.properties ?? {}).map(([name, p]) => ({
      name,
      in: where,
      required: where === 'path' || (s.required ?? []).includes(name),
      schema: p,
      ...(where === 'query' && 'anyOf' in p ? { explode: true } : {}),
    }));
  };
  const paths: Record<string, Record<string, Json>> = {};
  for (const r of routes) {
    const path = r.url.replace(/:([A-Za-z]+)/g, '{$1}');
    const responses: Record<string, Json> = {};
    const errors = { description: '', schema: schemas.errorSchema };
    const all: Route['responses'] = { ...r.responses };
    if (r.params || r.query || r.body)
      all[400] ??= { ...errors, description: 'bad input (field names it); nothing changed' };
    if (r.auth) all[401] = { ...errors, description: 'missing or wrong bearer token' };
    for (const [status, resp] of Object.entries(all)) {
      const type = resp.contentType ?? 'application/json';
      responses[status] = {
        description: resp.description,
        ...(resp.schema
          ? { content: { [type]: { schema: ref(resp.schema, 'output') } } }
          : { content: { [type]: {} } }),
      };
    }
    paths[path] ??= {};
    paths[path][r.method.toLowerCase()] = {
      summary: r.summary,
      tags: [r.tag],
      operationId: `${r.method.toLowerCase()}${path.replace(/[{}]/g, '').replace(/[/._-](\w)/g, (_, c: string) => c.toUpperCase())}`,
      ...(r.auth ? {} : { security: [] }),
      ...(r.params || r.query
        ? { parameters: [...parameters(r.params, 'path'), ...parameters(r.query, 'query')] }
        : {}),
      ...(r.body
        ? {
            requestBody: {
              // A body whose every field is optional may be left out.
              required: !r.body.safeParse({}).success,
              content: { 'application/json': { schema: ref(r.body, 'input') } },
            },
          }
        : {}),
      responses,
    };
  }
  return {
    openapi: '3.1.0',
    info: {
      title: 'vcl-capture daemon API',
      version: PACKAGE_VERSION,
      description:
        'Queue, watch and cancel disk-image captures; images and revisions; computers and their release from maintenance; health and metrics. A bearer token is required when the daemon listens beyond loopback (and whenever one is configured).',
    },
    security: [{ bearer: [] }],
    paths,
    components: {
      securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } },
      schemas: Object.fromEntries(Object.entries(components).sort(([a], [b]) => a.localeCompare(b))),
    },
  };
}

/** The document as committed in `docs/openapi.json` (2-space JSON, final newline). */
export function openApiText(): string {
  const unused = () => {
    throw new Error('documentation only');
  };
  // Only the routes' metadata is read: their handlers and dependencies are never called here.
  const routes = apiRoutes({
    runner: undefined as never,
    store: undefined as never,
    progress: undefined as never,
    metrics: unused,
    openapi: unused,
  });
  return `${JSON.stringify(openApiDocument(routes), null, 2)}\n`;
}
