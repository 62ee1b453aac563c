/**
 * The daemon's HTTP API over real HTTP on 127.0.0.1, in front of a started runner on a real SQLite file,
 * capturing computers of the built-in lab: every endpoint, refused input (400 naming the field, nothing
 * recorded), 404s, the bearer token, the OpenAPI document, and metrics that move as a capture does.
 */
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type ApiServer, startApiServer } from '../../src/api/server.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { createRunner, type Runner } from '../../src/runner/runner.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import { overriding } from '../helpers/store-override.js';

let lab: Lab;
let store: SqliteCaptureStore;
let runner: Runner;
let api: ApiServer;
let dir: string;

const TOKEN = 'a-test-token-that-is-long-enough-0123456789';

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-api-'));
  // The xCAT upload lasts 16 chunks of 150 ms: long enough to be seen in progress by a scrape.
  lab = await startLab({
    powerDelayMs: 20,
    diskBytes: 16 * 1024 * 1024,
    captureChunkBytes: 1024 * 1024,
    captureChunkMs: 150,
  });
  store = openSqliteStore(join(dir, 'store.sqlite'));
  // One capture at a time: a second one waits, queued, for the slot.
  const inventory = { ...lab.inventory, defaults: { ...lab.inventory.defaults, maxConcurrentCaptures: 1 } };
  runner = createRunner({ inventory, store, pollMs: 20, queuePollMs: 50 });
  await runner.start();
  api = await startApiServer({ runner, store });
});

afterAll(async () => {
  await api?.close();
  await runner?.close();
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

interface Reply {
  status: number;
  // Parsed JSON of any shape: each test reads the fields it checks.
  // biome-ignore lint/suspicious/noExplicitAny: a response body is whatever the endpoint returns.
  body: any;
  text: string;
  type: string;
}

async function call(
  method: string,
  path: string,
  o: { body?: unknown; token?: string; base?: string } = {},
): Promise<Reply> {
  const res = await fetch(`${o.base ?? api.url}${path}`, {
    method,
    headers: {
      ...(o.body === undefined ? {} : { 'content-type': 'application/json' }),
      ...(o.token === undefined ? {} : { authorization: `Bearer ${o.token}` }),
    },
    ...(o.body === undefined ? {} : { body: JSON.stringify(o.body) }),
  });
  const text = await res.text();
  const type = res.headers.get('content-type') ?? '';
  return { status: res.status, text, type, body: type.includes('json') ? JSON.parse(text) : undefined };
}

/** Polls `probe` until it returns a value, failing after `ms`. */
async function until<T>(what: string, probe: () => Promise<T | undefined>, ms = 20_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** The value of one sample of the exposition text (0 when absent). */
function sample(text: string, name: string, labels: Record<string, string> = {}): number {
  const want = Object.entries(labels).map(([k, v]) => `${k}="${v}"`);
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = (m[2] ?? '').split(',').filter(Boolean);
    if (want.every((w) => have.includes(w))) return Number(m[3]);
  }
  return 0;
}

const registration = (prettyName: string) => ({ osName: 'linux', prettyName, owner: 'api-test' });

describe('health and the document', () => {
  it('/healthz and /readyz answer', async () => {
    expect(await call('GET', '/healthz')).toMatchObject({ status: 200, body: { status: 'ok' } });
    const ready = await call('GET', '/readyz');
    expect(ready.status).toBe(200);
    expect(ready.body).toMatchObject({ ready: true, checks: { store: { ok: true }, leases: { ok: true } } });
  });

  it('/openapi.json is an OpenAPI 3.1 document equal to docs/openapi.json (npm run openapi)', async () => {
    const served = await call('GET', '/openapi.json');
    expect(served.status).toBe(200);
    expect(served.body.openapi).toBe('3.1.0');
    const committed = JSON.parse(readFileSync(new URL('../../docs/openapi.json', import.meta.url), 'utf8'));
    expect(served.body, 'docs/openapi.json is stale: run `npm run openapi`').toEqual(committed);
    // Every route the server answers is documented, with its method.
    expect(Object.keys(served.body.paths)).toEqual(
      expect.arrayContaining(['/captures', '/captures/{id}', '/captures/{id}/cancel', '/metrics']),
    );
    expect(served.body.paths['/captures/{id}/cancel'].post.requestBody.required).toBe(false);
  });
});

describe('bad input is a 400 naming the field, and changes nothing', () => {
  it.each([
    [
      'an unknown end state',
      { computer: 'lv-linux-1', image: registration('X'), endState: 'sideways' },
      'endState',
    ],
    ['a computer not in the inventory', { computer: 'nope-1', image: registration('X') }, 'computer'],
    ['a computer name with a slash', { computer: '../etc', image: registration('X') }, 'computer'],
    ['an unregistered image id', { computer: 'lv-linux-1', image: 999 }, 'image'],
    [
      'an image without an owner',
      { computer: 'lv-linux-1', image: { osName: 'linux', prettyName: 'X' } },
      'image',
    ],
    ['an unknown field', { computer: 'lv-linux-1', image: registration('X'), colour: 'red' }, 'colour'],
    [
      'a negative timeout',
      { computer: 'lv-linux-1', image: registration('X'), timeouts: { copyMs: -1 } },
      'timeouts.copyMs',
    ],
    ['a capture id with a space', { computer: 'lv-linux-1', image: registration('X'), id: 'a b' }, 'id'],
  ])('POST /captures with %s', async (_, body, field) => {
    const r = await call('POST', '/captures', { body });
    expect(r.status, r.text).toBe(400);
    expect(r.body.error.field).toBe(field);
    expect(r.body.error.message).toContain(field.split('.')[0]);
    expect(await store.listCaptures()).toEqual([]);
    expect(await store.listImages()).toEqual([]);
  });

  it('malformed JSON, a bad query, a bad path parameter, an empty reason', async () => {
    const raw = await fetch(`${api.url}/captures`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{"computer":',
    });
    expect(raw.status).toBe(400);
    const limit = await call('GET', '/captures?limit=0');
    expect([limit.status, limit.body.error.field]).toEqual([400, 'limit']);
    const status = await call('GET', '/captures?status=sleeping');
    expect([status.status, status.body.error.field]).toEqual([400, 'status']);
    const image = await call('GET', '/images/abc');
    expect([image.status, image.body.error.field]).toEqual([400, 'id']);
    const release = await call('POST', '/computers/lv-linux-1/release', { body: { reason: '  ' } });
    expect([release.status, release.body.error.field]).toEqual([400, 'reason']);
    const production = await call('PUT', '/images/1/production', { body: { revision: -1 } });
    expect([production.status, production.body.error.field]).toEqual([400, 'revision']);
    expect(await store.listCaptures()).toEqual([]);
    expect((await store.getComputer('lv-linux-1'))?.state).toBe('available');
  });
});

describe('404', () => {
  it.each([
    ['GET', '/captures/no-such-capture'],
    ['POST', '/captures/no-such-capture/cancel'],
    ['GET', '/images/4242'],
    ['PUT', '/images/4242/production'],
    ['GET', '/computers/no-such-computer'],
    ['POST', '/computers/no-such-computer/release'],
    ['GET', '/no/such/route'],
  ])('%s %s', async (method, path) => {
    const body = path.endsWith('/production')
      ? { revision: 0 }
      : path.endsWith('/release')
        ? { reason: 'x' }
        : undefined;
    const r = await call(method, path, body === undefined ? {} : { body });
    expect(r.status, r.text).toBe(404);
    expect(r.body.error.code).toMatch(/NOT_FOUND|UNKNOWN_COMPUTER/);
  });
});

describe('a capture through the API', () => {
  let captureId = '';

  it('is queued, runs (with progress and metrics moving), completes with its audit trail', async () => {
    const before = (await call('GET', '/metrics')).text;
    expect(sample(before, 'vcl_capture_captures_total', { provisioner: 'xcat', status: 'completed' })).toBe(
      0,
    );

    const queued = await call('POST', '/captures', {
      body: { computer: 'xc-linux-1', image: registration('Api base'), endState: 'off' },
    });
    expect(queued.status, queued.text).toBe(202);
    expect(queued.body).toMatchObject({ computer: 'xc-linux-1', status: 'queued', provisioner: 'xcat' });
    captureId = queued.body.id;

    // While the upload runs: the capture reports its progress, and the scrape shows bytes copied.
    const during = await until('a scrape during the upload', async () => {
      const detail = await call('GET', `/captures/${captureId}`);
      const m = await call('GET', '/metrics');
      const bytes = sample(m.text, 'vcl_capture_copied_bytes_total', { step: 'watch_upload' });
      return detail.body.status === 'running' && detail.body.progress && bytes > 0
        ? { detail: detail.body, metrics: m }
        : undefined;
    });
    expect(during.detail.progress).toMatchObject({ step: 'watch_upload' });
    expect(during.detail.progress.bytes).toBeGreaterThan(0);
    expect(during.metrics.type).toContain('text/plain');
    expect(
      sample(during.metrics.text, 'vcl_capture_slots_in_use', { host: 'xcat-mn', kind: 'capture' }),
    ).toBe(1);
    expect(sample(during.metrics.text, 'vcl_capture_unfinished_captures', { status: 'running' })).toBe(1);

    const done = await until('the capture to complete', async () => {
      const r = await call('GET', `/captures/${captureId}`);
      return ['completed', 'failed', 'cancelled'].includes(r.body.status) ? r.body : undefined;
    });
    expect(done.status, JSON.stringify(done.lastError)).toBe('completed');
    const types = done.events.map((e: { type: string }) => e.type);
    expect(types).toEqual(expect.arrayContaining(['capture.created', 'computer.reserved', 'state.entered']));
    expect(types.at(-1)).toBe('capture.completed');
    expect(done.progress).toBeNull();

    const listed = await call('GET', '/captures?status=completed');
    expect(listed.body.captures.map((c: { id: string }) => c.id)).toEqual([captureId]);
    const several = await call('GET', '/captures?status=failed&status=completed&computer=xc-linux-1');
    expect(several.body.captures.map((c: { id: string }) => c.id)).toEqual([captureId]);
    const none = await call('GET', '/captures?status=failed&status=cancelled');
    expect(none.body.captures).toEqual([]);

    const after = await until('the counters of the finished capture', async () => {
      const t = (await call('GET', '/metrics')).text;
      return sample(t, 'vcl_capture_captures_total', { provisioner: 'xcat', status: 'completed' }) === 1
        ? t
        : undefined;
    });
    const copied = sample(after, 'vcl_capture_copied_bytes_total', { step: 'watch_upload' });
    expect(copied).toBeGreaterThanOrEqual(sample(during.metrics.text, 'vcl_capture_copied_bytes_total'));
    expect(copied).toBeLessThanOrEqual(16 * 1024 * 1024);
    expect(sample(after, 'vcl_capture_image_bytes_total', { provisioner: 'xcat' })).toBe(16 * 1024 * 1024);
    expect(sample(after, 'vcl_capture_step_duration_seconds_count', { step: 'watch_upload' })).toBe(1);
    expect(sample(after, 'vcl_capture_step_duration_seconds_sum', { step: 'watch_upload' })).toBeGreaterThan(
      1,
    );
    expect(sample(after, 'vcl_capture_step_duration_seconds_count', { step: 'reserve' })).toBe(1);
    expect(sample(after, 'vcl_capture_slots_in_use', { host: 'xcat-mn', kind: 'capture' })).toBe(0);
    expect(sample(after, 'vcl_capture_unfinished_captures', { status: 'running' })).toBe(0);
    expect(after).toContain('vcl_capture_lease_renewals_total');
    // No secret of the inventory reaches the metrics: no key material, no addresses.
    expect(after).not.toMatch(/PRIVATE KEY|127\.0\.0\.1/);
  });

  it('lists the image with its revision and makes it production', async () => {
    const images = await call('GET', '/images');
    const image = images.body.images.find((i: { prettyName: string }) => i.prettyName === 'Api base');
    expect(image.revisions).toHaveLength(1);
    expect(image.revisions[0]).toMatchObject({ deleted: false, production: false });
    expect(image.revisions[0].sha256).toBe(await lab.diskSha256('xc-linux-1'));
    const one = await call('GET', `/images/${image.id}`);
    expect(one.body.id).toBe(image.id);
    const prod = await call('PUT', `/images/${image.id}/production`, { body: { revision: 0 } });
    expect(prod.status, prod.text).toBe(200);
    expect(prod.body).toMatchObject({ revision: 0, production: true });
    expect((await store.getImage(image.id))?.revisions[0]?.production).toBe(true);
    const missing = await call('PUT', `/images/${image.id}/production`, { body: { revision: 7 } });
    expect(missing.status).toBe(404);
  });

  it('cancels a capture queued behind a running one; its computer is untouched', async () => {
    const first = await call('POST', '/captures', {
      body: { computer: 'xc-windows-1', image: { ...registration('Api second'), osName: 'win10' } },
    });
    expect(first.status, first.text).toBe(202);
    await until('the first capture to run', async () =>
      (await call('GET', `/captures/${first.body.id}`)).body.status === 'running' ? true : undefined,
    );
    const second = await call('POST', '/captures', {
      body: { computer: 'lv-linux-1', image: registration('Api cancelled') },
    });
    expect(second.status, second.text).toBe(202);
    const cancel = await call('POST', `/captures/${second.body.id}/cancel`, {
      body: { reason: 'not today' },
    });
    expect(cancel.status, cancel.text).toBe(202);
    expect(cancel.body.captureId).toBe(second.body.id);
    const ended = await until('the cancelled capture to end', async () => {
      const r = await call('GET', `/captures/${second.body.id}`);
      return r.body.status === 'queued' ? undefined : r.body;
    });
    expect(ended.status).toBe('cancelled');
    expect(ended.lastError.message).toContain('not today');
    expect((await call('GET', '/computers/lv-linux-1')).body.state).toBe('available');
    // Cancelling what already ended is refused.
    const again = await call('POST', `/captures/${second.body.id}/cancel`);
    expect(again.status).toBe(409);
    const m = await until('the cancellation counted', async () => {
      const t = (await call('GET', '/metrics')).text;
      return sample(t, 'vcl_capture_captures_total', { provisioner: 'libvirt', status: 'cancelled' }) === 1
        ? t
        : undefined;
    });
    expect(m).toBeTruthy();
    await until('the first capture to end', async () =>
      ['completed', 'failed'].includes((await call('GET', `/captures/${first.body.id}`)).body.status)
        ? true
        : undefined,
    );
  });

  it('a capture that fails after touching its computer: counted, the computer refused (409, nothing recorded), then released with a reason', async () => {
    lab.faults.add({
      kind: 'failCommand',
      host: 'esxi-host',
      // The clone, after the power off (the preflight's `vmkfstools -P` comes before the computer is touched).
      match: ['vmkfstools', '-i'],
      exitCode: 1,
      stderr: 'Failed to clone disk: No space left on device',
    });
    const queued = await call('POST', '/captures', {
      body: { computer: 'vm-linux-1', image: registration('Api failing') },
    });
    expect(queued.status, queued.text).toBe(202);
    const failed = await until('the capture to fail', async () => {
      const r = await call('GET', `/captures/${queued.body.id}`);
      return ['completed', 'failed', 'cancelled'].includes(r.body.status) ? r.body : undefined;
    });
    lab.faults.clear();
    expect(failed).toMatchObject({ status: 'failed', releaseOutcome: 'maintenance' });
    const m = await until('the failure counted', async () => {
      const t = (await call('GET', '/metrics')).text;
      return sample(t, 'vcl_capture_captures_total', { provisioner: 'vmware', status: 'failed' }) === 1
        ? t
        : undefined;
    });
    expect(
      sample(m, 'vcl_capture_remote_failures_total', { code: 'SSH_EXIT_NONZERO' }),
    ).toBeGreaterThanOrEqual(1);

    const count = (await store.listCaptures()).length;
    const refused = await call('POST', '/captures', {
      body: { computer: 'vm-linux-1', image: registration('Api refused') },
    });
    expect(refused.status).toBe(409);
    expect(refused.body.error).toMatchObject({ code: 'COMPUTER_BUSY', details: { reason: 'maintenance' } });
    expect((await store.listCaptures()).length).toBe(count);

    const computers = await call('GET', '/computers');
    const vm = computers.body.computers.find((c: { name: string }) => c.name === 'vm-linux-1');
    expect(vm).toMatchObject({ state: 'maintenance', maintenance: { captureId: queued.body.id } });
    const released = await call('POST', '/computers/vm-linux-1/release', {
      body: { reason: 'disk space freed' },
    });
    expect(released.status, released.text).toBe(200);
    expect(released.body).toMatchObject({
      computer: { state: 'available' },
      cause: { captureId: queued.body.id },
      reason: 'disk space freed',
    });
    const trail = (await call('GET', `/captures/${queued.body.id}`)).body.events;
    expect(trail.at(-1)).toMatchObject({ type: 'computer.released' });
    const twice = await call('POST', '/computers/vm-linux-1/release', { body: { reason: 'again' } });
    expect(twice.status).toBe(409);
    expect(twice.body.error.code).toBe('INVALID_TRANSITION');
  });
});

describe('bearer token', () => {
  let guarded: ApiServer;
  beforeAll(async () => {
    guarded = await startApiServer({ runner, store, token: TOKEN });
  });
  afterAll(async () => {
    await guarded?.close();
  });

  it('refuses requests without it or with a wrong one (401), serves them with it', async () => {
    const base = guarded.url;
    for (const token of [undefined, 'wrong', `${TOKEN.slice(0, -1)}x`, `${TOKEN}x`]) {
      const r = await call('GET', '/captures', { base, ...(token === undefined ? {} : { token }) });
      expect(r.status, `token ${token}`).toBe(401);
      expect(r.body.error.code).toBe('UNAUTHORIZED');
    }
    const refused = await call('POST', '/captures', {
      base,
      token: 'wrong',
      body: { computer: 'lv-linux-2', image: registration('Never') },
    });
    expect(refused.status).toBe(401);
    expect((await store.listCaptures({ computer: 'lv-linux-2' })).length).toBe(0);
    expect((await call('GET', '/captures', { base, token: TOKEN })).status).toBe(200);
    expect((await call('GET', '/metrics', { base, token: TOKEN })).status).toBe(200);
    expect((await call('GET', '/metrics', { base })).status).toBe(401);
    // The liveness probe needs nothing.
    expect((await call('GET', '/healthz', { base })).status).toBe(200);
  });

  it('is required to listen beyond loopback', async () => {
    await expect(startApiServer({ runner, store, listen: { host: '0.0.0.0', port: 0 } })).rejects.toThrow(
      /VCL_CAPTURE_API_TOKEN/,
    );
  });
});

describe('readiness', () => {
  it('is 503 naming the store when the store does not answer', async () => {
    const other = openSqliteStore(join(dir, 'other.sqlite'));
    const r2 = createRunner({ inventory: lab.inventory, store: other, pollMs: 20 });
    const s2 = await startApiServer({ runner: r2, store: other });
    try {
      expect((await call('GET', '/readyz', { base: s2.url })).status).toBe(200);
      await other.close();
      const r = await call('GET', '/readyz', { base: s2.url });
      expect(r.status).toBe(503);
      expect(r.body).toMatchObject({ ready: false, checks: { store: { ok: false, error: 'STORE_CLOSED' } } });
    } finally {
      await s2.close();
      await r2.close();
    }
  });

  it('is 503 naming the leases when their renewal fails while a capture runs, and counts it', async () => {
    const other = openSqliteStore(join(dir, 'leases.sqlite'));
    // Once `locked`, the store answers everything but the renewal of leases, as a database locked by
    // another writer would.
    let locked = false;
    const failing = overriding(other, {
      renewLeases: async (...args) =>
        locked ? Promise.reject(new Error('database is locked')) : other.renewLeases(...args),
    });
    const r3 = createRunner({ inventory: lab.inventory, store: failing, pollMs: 20, leaseMs: 3000 });
    const s3 = await startApiServer({ runner: r3, store: failing });
    try {
      // The computer ignores its shutdown until the test switches it off: the capture is sure to run
      // through several renewal rounds, however fast or slow the machine.
      const ignore = lab.faults.add({ kind: 'neverPowersOff', computer: 'lv-linux-1', mode: 'ignore' });
      const handle = await r3.capture({
        computer: 'lv-linux-1',
        image: registration('Leases'),
      });
      await until('the OS end-state wait', async () => {
        const last = (await other.getCapture(handle.id))?.events.at(-1);
        return JSON.stringify(last?.details?.os ?? null).includes('wait_gone') ? true : undefined;
      });
      locked = true;
      const notReady = await until('readiness to fail on the leases', async () => {
        const r = await call('GET', '/readyz', { base: s3.url });
        return r.status === 503 ? r.body : undefined;
      });
      expect(notReady.checks).toMatchObject({
        store: { ok: true },
        leases: { ok: false, last: { ok: false, error: 'database is locked' } },
      });
      const m = (await call('GET', '/metrics', { base: s3.url })).text;
      expect(sample(m, 'vcl_capture_lease_renewals_total', { result: 'failed' })).toBeGreaterThanOrEqual(1);
      // A runner that cannot renew stops the capture before its lease could run out (docs/resume.md,
      // "Fencing"); it stays in the store for whoever claims it next.
      const result = await handle.result;
      expect(result.status).toBe('suspended');
      expect(result.status === 'suspended' && result.error.code).toBe('LEASE_LOST');
      lab.faults.clear(ignore);
      lab.powerOff('lv-linux-1');
    } finally {
      await s3.close();
      await r3.close();
      await other.close();
    }
  });

  it('counts a capture taken over from a runner whose lease ran out', async () => {
    const other = openSqliteStore(join(dir, 'takeover.sqlite'));
    await other.registerComputers([{ name: 'vm-windows-1' }]);
    const image = await other.registerImage({ osName: 'win10', prettyName: 'Takeover', owner: 'api-test' });
    // Queued and claimed by a runner that then went silent: its 1 ms lease has run out.
    const left = await other.createCapture({
      computer: 'vm-windows-1',
      imageId: image.id,
      provisioner: 'vmware',
      os: 'windows',
      repository:
        lab.inventory.repositories[lab.inventory.computers['vm-windows-1']?.repository ?? '']?.path ?? '',
      reserve: false,
      owner: 'elsewhere/1/gone',
      leaseMs: 1,
    });
    const r4 = createRunner({ inventory: lab.inventory, store: other, pollMs: 20 });
    const s4 = await startApiServer({ runner: r4, store: other });
    try {
      const before = (await call('GET', '/metrics', { base: s4.url })).text;
      expect(sample(before, 'vcl_capture_takeovers_total')).toBe(0);
      await new Promise((r) => setTimeout(r, 5));
      const report = await r4.start();
      expect(report.started).toEqual([left.id]);
      const after = (await call('GET', '/metrics', { base: s4.url })).text;
      expect(sample(after, 'vcl_capture_takeovers_total')).toBe(1);
      const ended = await until('the capture taken over to end', async () => {
        const r = await call('GET', `/captures/${left.id}`, { base: s4.url });
        return ['completed', 'failed', 'cancelled'].includes(r.body.status) ? r.body : undefined;
      });
      expect(ended.status, JSON.stringify(ended.lastError)).toBe('completed');
    } finally {
      await s4.close();
      await r4.close();
      await other.close();
    }
  });
});

describe('notifications', () => {
  it('lists deliveries with their counts, retries a dead one, and refuses what cannot be retried', async () => {
    const other = openSqliteStore(join(dir, 'notifications.sqlite'));
    const r = createRunner({ inventory: lab.inventory, store: other, pollMs: 20 });
    const s = await startApiServer({ runner: r, store: other });
    try {
      await other.registerComputers([{ name: 'pc-1' }]);
      const image = await other.registerImage(registration('Notified'));
      await other.createCapture({
        id: 'cap-n',
        computer: 'pc-1',
        imageId: image.id,
        provisioner: 'libvirt',
        os: 'linux',
        repository: '/srv/images',
      });
      await other.failCapture(
        'cap-n',
        { code: 'TIMEOUT', step: 'copy_image', message: 'slow' },
        'maintenance',
      );
      const [d] = await other.claimNotifications('worker', {
        targets: [{ name: 'ops', events: ['computer.maintenance'] }],
        leaseMs: 60_000,
      });
      if (!d) throw new Error('a delivery expected');
      await other.finishDelivery(d.id, { result: 'failed', error: 'HTTP 502', retryAt: null });

      const dead = await call('GET', '/notifications?status=dead', { base: s.url });
      expect(dead.status).toBe(200);
      expect(dead.body.counts).toEqual({ pending: 0, delivered: 0, dead: 1 });
      expect(dead.body.deliveries).toMatchObject([
        {
          id: d.id,
          target: 'ops',
          status: 'dead',
          attempts: 1,
          lastError: 'HTTP 502',
          event: { type: 'computer.maintenance', capture: { id: 'cap-n' }, computer: { name: 'pc-1' } },
        },
      ]);
      expect((await call('GET', '/notifications?status=pending', { base: s.url })).body.deliveries).toEqual(
        [],
      );
      const retried = await call('POST', `/notifications/${d.id}/retry`, { base: s.url });
      expect(retried).toMatchObject({ status: 200, body: { id: d.id, status: 'pending' } });
      expect(await call('POST', `/notifications/${d.id}/retry`, { base: s.url })).toMatchObject({
        status: 409,
        body: { error: { code: 'INVALID_TRANSITION' } },
      });
      expect((await call('POST', '/notifications/999/retry', { base: s.url })).status).toBe(404);
      expect(await call('GET', '/notifications?status=lost', { base: s.url })).toMatchObject({
        status: 400,
        body: { error: { code: 'VALIDATION', field: 'status' } },
      });
    } finally {
      await s.close();
      await r.close();
      await other.close();
    }
  });
});
