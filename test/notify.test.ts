/**
 * Notifications as a receiver sees them: a real HTTP server on loopback checks the HMAC of each body,
 * a receiver that fails its first attempts gets the event once it answers (after growing back-off), a
 * command hook reads the event on stdin, and a bad configuration is refused naming the field and the fix.
 */
import { spawnSync } from 'node:child_process';
import { createHmac, timingSafeEqual } from 'node:crypto';
import { chmodSync, existsSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { pino } from 'pino';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { runnerMetrics } from '../src/api/metrics.js';
import { parseInventory } from '../src/inventory/schema.js';
import { backoffMs, createNotifier, type Notifier } from '../src/notify/index.js';
import type { Runner } from '../src/runner/runner.js';
import type { SqliteCaptureStore } from '../src/store/index.js';
import type { NotificationEvent } from '../src/store/types.js';
import { expectVclError, openStore, REPO, SHA, seed, tempFolder } from './store/helpers.js';

const SECRET = 'test-signing-key-0123456789abcdef';
const BIN = new URL('../src/cli/bin.mjs', import.meta.url).pathname;

/** The runner side of the metrics is not under test here: a runner with nothing running. */
const idleRunner = {
  on: () => () => undefined,
  health: () => ({ slots: {}, leases: { renewals: 0, failures: 0 }, takeovers: 0, remoteFailures: {} }),
} as unknown as Runner; // only the two members runnerMetrics reads
const base = { imageId: 12345, provisioner: 'vmware', os: 'windows', repository: REPO } as const;

interface Received {
  at: number;
  headers: IncomingMessage['headers'];
  body: string;
  answered: number;
}

/** A webhook receiver on 127.0.0.1: `answer(n)` gives the HTTP status of the n-th request (0-based). */
async function receiver(answer: (n: number) => number = () => 204) {
  const got: Received[] = [];
  const server: Server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const status = answer(got.length);
      got.push({
        at: Date.now(),
        headers: req.headers,
        body: Buffer.concat(chunks).toString('utf8'),
        answered: status,
      });
      res
        .writeHead(status, { 'content-type': 'text/plain' })
        .end(status >= 300 ? 'receiver is down for maintenance' : '');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return { url: `http://127.0.0.1:${port}/hook`, got, close: () => new Promise((r) => server.close(r)) };
}

/** What a receiver does with a request: check the signature against the raw body, constant-time. */
function signatureValid(r: Received, secret = SECRET): boolean {
  const expected = Buffer.from(`sha256=${createHmac('sha256', secret).update(r.body).digest('hex')}`);
  const given = Buffer.from(String(r.headers['x-vcl-capture-signature'] ?? ''));
  return given.length === expected.length && timingSafeEqual(given, expected);
}

async function until<T>(
  check: () => Promise<T | undefined> | T | undefined,
  timeoutMs: number,
  what: string,
): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** The store's deliveries in `status`, once there is one (within 20 s). */
function deliveriesIn(status: 'delivered' | 'dead', what: string) {
  return until(
    async () => {
      const list = await store.listNotifications({ status });
      return list.length > 0 ? list : undefined;
    },
    20_000,
    what,
  );
}

let folder: ReturnType<typeof tempFolder>;
let store: SqliteCaptureStore;
let notifier: Notifier | undefined;
const closers: (() => Promise<unknown>)[] = [];

beforeEach(async () => {
  folder = tempFolder('vcl-notify-');
  store = openStore(folder.file('store.sqlite'), { now: () => new Date() });
  await seed(store);
});

afterEach(async () => {
  await notifier?.stop();
  notifier = undefined;
  for (const close of closers.splice(0)) await close();
  await store.close();
  folder.cleanup();
});

/** The inventory's `notifications` section, validated as the daemon reads it. */
function config(notifications: Record<string, unknown>) {
  return parseInventory({ hosts: {}, computers: {}, repositories: {}, notifications }).notifications;
}

async function failToMaintenance(id: string, computer: string) {
  await store.createCapture({ ...base, id, computer });
  await store.failCapture(
    id,
    { code: 'TIMEOUT', step: 'wait_for_power_off', message: 'still on' },
    'maintenance',
  );
}

describe('webhooks', () => {
  it('POSTs each event once, signed with HMAC-SHA256 of the raw body, with its id and type in headers', async () => {
    const hook = await receiver();
    closers.push(hook.close);
    notifier = createNotifier({
      store,
      config: config({ webhooks: [{ name: 'ops', url: hook.url, secret: { env: 'HOOK_SECRET' } }] }),
      env: { HOOK_SECRET: SECRET },
      pollMs: 50,
    });
    notifier?.start();
    await store.createCapture({ ...base, id: 'cap-ok', computer: 'pc-01' });
    await store.completeCapture('cap-ok', { path: 'a.vmdk', sizeBytes: 7, sha256: SHA, format: 'vmdk' });
    await failToMaintenance('cap-bad', 'pc-02');
    await until(() => hook.got.length >= 3 || undefined, 10_000, 'three deliveries');
    await until(
      async () => (await store.countNotifications()).delivered === 3 || undefined,
      10_000,
      'recorded',
    );
    const events = hook.got.map((r) => JSON.parse(r.body) as NotificationEvent);
    expect(events.map((e) => [e.type, e.capture.id]).sort()).toEqual([
      ['capture.completed', 'cap-ok'],
      ['capture.failed', 'cap-bad'],
      ['computer.maintenance', 'cap-bad'],
    ]);
    for (const r of hook.got) {
      expect(signatureValid(r)).toBe(true);
      expect(signatureValid(r, 'another-key-0123456789abcdef')).toBe(false);
      const e = JSON.parse(r.body) as NotificationEvent;
      expect(r.headers['x-vcl-capture-delivery']).toBe(e.id);
      expect(r.headers['x-vcl-capture-event']).toBe(e.type);
      expect(r.headers['content-type']).toBe('application/json');
      expect(Number(r.headers['x-vcl-capture-timestamp'])).toBeGreaterThan(Date.now() / 1000 - 60);
    }
    const failed = events.find((e) => e.type === 'capture.failed');
    expect(failed).toMatchObject({
      computer: { name: 'pc-02', state: 'maintenance' },
      capture: { error: { code: 'TIMEOUT' } },
    });
    await sleep(200); // several polls: nothing is sent twice
    expect(hook.got).toHaveLength(3);
  });

  it('a receiver failing its first attempts gets the event after growing back-off, exactly once', async () => {
    const hook = await receiver((n) => (n < 3 ? 503 : 200));
    closers.push(hook.close);
    notifier = createNotifier({
      store,
      config: config({
        webhooks: [{ name: 'ops', url: hook.url, secret: { env: 'S' }, events: ['computer.maintenance'] }],
        retry: { initialDelayMs: 100, maxDelayMs: 10_000, maxAttempts: 6 },
      }),
      env: { S: SECRET },
      pollMs: 20,
      random: () => 1, // no jitter: the delays are 100, 200, 400 ms
    });
    notifier?.start();
    await failToMaintenance('cap-1', 'pc-01');
    const [d] = await deliveriesIn('delivered', 'the delivery after three failures');
    expect(d).toMatchObject({ attempts: 4, lastError: null, target: 'ops' });
    expect(hook.got.map((r) => r.answered)).toEqual([503, 503, 503, 200]);
    const ids = new Set(hook.got.map((r) => (JSON.parse(r.body) as NotificationEvent).id));
    expect(ids.size).toBe(1); // the same event, the same id, every attempt
    const gaps = hook.got.slice(1).map((r, i) => r.at - (hook.got[i]?.at ?? 0));
    expect(gaps[0]).toBeGreaterThanOrEqual(100);
    expect(gaps[1]).toBeGreaterThanOrEqual(200);
    expect(gaps[2]).toBeGreaterThanOrEqual(400);
    await sleep(200);
    expect(hook.got).toHaveLength(4);
  });

  it('gives up after maxAttempts: dead, with the last answer, and no more attempts', async () => {
    const hook = await receiver(() => 500);
    closers.push(hook.close);
    notifier = createNotifier({
      store,
      config: config({
        webhooks: [{ name: 'ops', url: hook.url, secret: { env: 'S' }, events: ['capture.failed'] }],
        retry: { initialDelayMs: 20, maxDelayMs: 50, maxAttempts: 3 },
      }),
      env: { S: SECRET },
      pollMs: 20,
    });
    notifier?.start();
    await failToMaintenance('cap-1', 'pc-01');
    const [dead] = await deliveriesIn('dead', 'the delivery given up');
    expect(dead).toMatchObject({ attempts: 3, lastError: 'HTTP 500: receiver is down for maintenance' });
    await sleep(200);
    expect(hook.got).toHaveLength(3);
    // The operator sees it in /metrics (read from the store at each scrape).
    const metrics = runnerMetrics({ runner: idleRunner, store });
    expect(await metrics.scrape()).toMatch(/^vcl_capture_notifications\{status="dead"\} 1$/m);
    metrics.close();
  });

  it('a receiver that does not answer in time is a failed attempt (timeout), retried', async () => {
    const server = createServer(() => undefined); // takes the request and never answers
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    closers.push(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    notifier = createNotifier({
      store,
      config: config({
        webhooks: [{ name: 'slow', url, secret: { env: 'S' }, events: ['capture.failed'], timeoutMs: 200 }],
        retry: { initialDelayMs: 60_000 },
      }),
      env: { S: SECRET },
      pollMs: 20,
    });
    notifier?.start();
    await failToMaintenance('cap-1', 'pc-01');
    const [d] = await until(
      async () => {
        const list = await store.listNotifications();
        return list[0]?.attempts === 1 ? list : undefined;
      },
      10_000,
      'the timed-out attempt recorded',
    );
    expect(d).toMatchObject({ status: 'pending', lastError: 'no answer within 200 ms' });
    expect(Date.parse(d?.nextAttemptAt ?? '')).toBeGreaterThan(Date.now() + 20_000);
  });
});

describe('secrets', () => {
  it('neither the signing key nor the URL (chat webhooks carry a token in it) reaches the logs', async () => {
    const hook = await receiver((n) => (n === 0 ? 500 : 200));
    closers.push(hook.close);
    const lines: string[] = [];
    const logger = pino({ level: 'debug' }, { write: (line: string) => lines.push(line) });
    notifier = createNotifier({
      store,
      config: config({
        webhooks: [{ name: 'chat', url: `${hook.url}/T0K3N-in-the-path`, secret: { env: 'S' } }],
        retry: { initialDelayMs: 20 },
      }),
      env: { S: SECRET },
      logger,
      pollMs: 20,
    });
    notifier?.start();
    await failToMaintenance('cap-1', 'pc-01');
    await until(
      async () => (await store.countNotifications()).delivered === 2 || undefined,
      10_000,
      'delivered',
    );
    const log = lines.join('');
    expect(log).toContain('notification attempt failed; retrying later');
    expect(log).toContain('notification delivered');
    expect(log).toContain('"receiver":"chat"');
    expect(log).not.toContain(SECRET);
    expect(log).not.toContain('T0K3N');
  });
});

describe('a foreground command draining before it exits', () => {
  it('stops at its deadline, handing an unanswered attempt back uncounted for the daemon', async () => {
    const server = createServer(() => undefined); // takes the request and never answers
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    closers.push(async () => {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
    notifier = createNotifier({
      store,
      config: config({ webhooks: [{ name: 'slow', url, secret: { env: 'S' }, timeoutMs: 120_000 }] }),
      env: { S: SECRET },
    });
    await failToMaintenance('cap-1', 'pc-01');
    const started = Date.now();
    expect(await notifier?.drain(300)).toBe(2);
    // Far below the receiver's 120 s deadline: the drain's own deadline ended the attempts.
    expect(Date.now() - started).toBeLessThan(20_000);
    expect((await store.listNotifications()).map((d) => [d.status, d.attempts, d.lastError])).toEqual([
      ['pending', 0, null],
      ['pending', 0, null],
    ]);
  });
});

describe('command hooks', () => {
  it('runs the command with the event as JSON on stdin; a non-zero exit is retried', async () => {
    const out = join(folder.dir, 'events.jsonl');
    const script = join(folder.dir, 'hook.sh');
    // Fails on its first run (no marker yet), succeeds after: appends stdin and its env to a file.
    writeFileSync(
      script,
      `#!/bin/sh\nset -e\nbody=$(cat)\nif [ ! -e "$1.tried" ]; then touch "$1.tried"; echo "mail server down" >&2; exit 3; fi\n` +
        `printf '%s\\t%s\\t%s\\n' "$VCL_CAPTURE_EVENT_TYPE" "$VCL_CAPTURE_EVENT_ID" "$body" >> "$1"\n`,
    );
    chmodSync(script, 0o755);
    notifier = createNotifier({
      store,
      config: config({
        commands: [{ name: 'mail', argv: [script, out], events: ['computer.maintenance'] }],
        retry: { initialDelayMs: 50, maxDelayMs: 100 },
      }),
      pollMs: 20,
    });
    notifier?.start();
    await failToMaintenance('cap-1', 'pc-01');
    const [d] = await deliveriesIn('delivered', 'the command hook delivered');
    expect(d).toMatchObject({ attempts: 2, target: 'mail' });
    const { readFileSync } = await import('node:fs');
    const lines = readFileSync(out, 'utf8').trim().split('\n');
    expect(lines).toHaveLength(1);
    const [type, id, body] = (lines[0] ?? '').split('\t');
    const event = JSON.parse(body ?? '') as NotificationEvent;
    expect([type, id]).toEqual(['computer.maintenance', event.id]);
    expect(event).toMatchObject({
      type: 'computer.maintenance',
      computer: { name: 'pc-01', state: 'maintenance' },
    });
  });

  it('records why a failed run failed (exit code and stderr), and a command that cannot start', async () => {
    notifier = createNotifier({
      store,
      config: config({
        commands: [
          {
            name: 'broken',
            argv: ['/bin/sh', '-c', 'echo "no route to smtp" >&2; exit 7'],
            events: ['capture.failed'],
          },
          { name: 'missing', argv: [join(folder.dir, 'no-such-program')], events: ['capture.failed'] },
        ],
        retry: { initialDelayMs: 60_000 },
      }),
    });
    await failToMaintenance('cap-1', 'pc-01');
    expect(await notifier?.drain(10_000)).toBe(2);
    const errors = Object.fromEntries((await store.listNotifications()).map((d) => [d.target, d.lastError]));
    expect(errors).toEqual({
      broken: '/bin/sh: exit code 7: no route to smtp',
      missing: `cannot run ${join(folder.dir, 'no-such-program')}: ENOENT`,
    });
  });
});

describe('configuration', () => {
  const hook = { name: 'ops', url: 'https://hooks.example.org/vcl', secret: { env: 'VCL_HOOK_SECRET' } };

  it('a missing secret names the field and how to fix it, and is never echoed', async () => {
    const e = await expectVclError(
      () => createNotifier({ store, config: config({ webhooks: [hook] }), env: {} }),
      'INVALID_INVENTORY',
    );
    expect(e.message).toMatch(
      /notifications\.webhooks\.0\.secret\.env: the environment variable VCL_HOOK_SECRET is not set .*export it/,
    );
    const file = join(folder.dir, 'secret');
    writeFileSync(file, 'short\n');
    const short = await expectVclError(
      () => createNotifier({ store, config: config({ webhooks: [{ ...hook, secret: { file } }] }) }),
      'INVALID_INVENTORY',
    );
    expect(short.message).toMatch(
      /notifications\.webhooks\.0\.secret: the signing key is 5 characters long; use at least 16/,
    );
    expect(short.message).not.toContain('short');
    await expectVclError(
      () =>
        createNotifier({
          store,
          config: config({ webhooks: [{ ...hook, secret: { file: `${file}.nope` } }] }),
        }),
      'INVALID_INVENTORY',
      /notifications\.webhooks\.0\.secret\.file: cannot read .*secret\.nope: ENOENT: create it/,
    );
  });

  it('refuses a bad URL, a secret written inline, an unknown event and a name used twice', () => {
    const problem = (notifications: Record<string, unknown>) => {
      try {
        config(notifications);
      } catch (err) {
        return (err as Error).message;
      }
      return 'accepted';
    };
    expect(problem({ webhooks: [{ ...hook, url: 'hooks.example.org/vcl' }] })).toMatch(
      /notifications\.webhooks\.0\.url: must be an absolute http:\/\/ or https:\/\/ URL/,
    );
    expect(problem({ webhooks: [{ ...hook, url: 'ftp://hooks.example.org/' }] })).toMatch(
      /notifications\.webhooks\.0\.url: must be an http:\/\/ or https:\/\/ URL/,
    );
    expect(problem({ webhooks: [{ ...hook, secret: 'inline-secret-value' }] })).toMatch(
      /notifications\.webhooks\.0\.secret/,
    );
    expect(problem({ webhooks: [{ ...hook, events: ['capture.started'] }] })).toMatch(
      /notifications\.webhooks\.0\.events\.0/,
    );
    expect(problem({ webhooks: [hook], commands: [{ name: 'ops', argv: ['/bin/true'] }] })).toMatch(
      /notifications\.commands\.0\.name: the receiver name 'ops' is used twice/,
    );
    expect(problem({ webhooks: [hook] })).toBe('accepted');
  });

  it('the daemon refuses to start without the secret: exit 2, the field and the fix, nothing opened', () => {
    const inventory = folder.file('inventory.yaml');
    writeFileSync(
      inventory,
      stringify({ hosts: {}, computers: {}, repositories: {}, notifications: { webhooks: [hook] } }),
    );
    const db = folder.file('daemon.sqlite');
    const env = { ...process.env };
    delete env.VCL_HOOK_SECRET;
    const r = spawnSync(process.execPath, [BIN, 'daemon', '--config', inventory, '--db', db], {
      encoding: 'utf8',
      timeout: 60_000,
      env,
    });
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toMatch(
      /notifications\.webhooks\.0\.secret\.env: the environment variable VCL_HOOK_SECRET is not set/,
    );
    expect(existsSync(db)).toBe(false);
  });

  it('no receiver configured: no notifier (the events stay in the outbox)', () => {
    expect(createNotifier({ store, config: undefined })).toBeUndefined();
    expect(createNotifier({ store, config: config({}) })).toBeUndefined();
  });

  it('back-off doubles from the initial delay up to the cap, with half of it random', () => {
    const r = { initialDelayMs: 1000, maxDelayMs: 5000 };
    expect([1, 2, 3, 4, 5].map((n) => backoffMs(n, r, () => 1))).toEqual([1000, 2000, 4000, 5000, 5000]);
    expect([1, 2, 3].map((n) => backoffMs(n, r, () => 0))).toEqual([500, 1000, 2000]);
  });
});

describe('the operator', () => {
  it('`vcl-capture notifications` shows a dead delivery with its error and how to retry; --retry makes it pending', async () => {
    await failToMaintenance('cap-1', 'pc-01');
    const [d] = await store.claimNotifications('w', {
      targets: [{ name: 'ops', events: ['computer.maintenance'] }],
      leaseMs: 60_000,
    });
    if (!d) throw new Error('a delivery expected');
    await store.finishDelivery(d.id, { result: 'failed', error: 'HTTP 410: gone', retryAt: null });
    const db = folder.file('store.sqlite');
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, [BIN, 'notifications', ...args, '--db', db], {
        encoding: 'utf8',
        timeout: 60_000,
      });
    const listed = cli('--status', 'dead');
    expect(listed.status, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(
      new RegExp(`${d.id}\\s+ops\\s+computer\\.maintenance\\s+cap-1\\s+pc-01\\s+dead\\s+1\\s+HTTP 410: gone`),
    );
    expect(listed.stdout).toContain('1 notification was given up (dead)');
    expect(listed.stdout).toContain(`vcl-capture notifications --retry <id> --db ${db}`);
    const retried = cli('--retry', String(d.id));
    expect(retried.status, retried.stderr).toBe(0);
    expect(retried.stdout).toMatch(/pending again: delivery \d+ of computer\.maintenance/);
    expect((await store.listNotifications())[0]).toMatchObject({ id: d.id, status: 'pending' });
    const again = cli('--retry', String(d.id));
    expect(again.status).toBe(2);
    expect(again.stderr).toMatch(/is pending; only a dead one can be retried/);
  });
});
