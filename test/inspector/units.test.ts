/**
 * The inspector without a browser: redaction, the sanitizing of xstate inspection events (nothing of an
 * actor, its machine config or a step's output goes out), the bounded per-page queues (a page that never
 * reads costs the runner nothing), following a store, and the server's HTTP surface.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { assign, createActor, createMachine, fromPromise, setup } from 'xstate';
import {
  ClientQueue,
  createInspector,
  InspectorHub,
  REDACTED,
  redact,
  type Sink,
  secretsOfInventory,
  transitionsOf,
} from '../../src/inspector/index.js';
import type { RunnerEvent } from '../../src/runner/runner.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';

const PEM =
  '-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ\n-----END OPENSSH PRIVATE KEY-----\n';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-inspector-units-'));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/** A socket that keeps everything it is given and acknowledges only when told to. */
class FakeSink implements Sink {
  readonly data: string[] = [];
  private readonly callbacks: ((err?: Error) => void)[] = [];
  constructor(private readonly autoAck = true) {}
  get bufferedAmount() {
    return this.callbacks.length * 100;
  }
  send(data: string, callback: (err?: Error) => void) {
    this.data.push(data);
    if (this.autoAck) callback();
    else this.callbacks.push(callback);
  }
  ackAll() {
    for (const cb of this.callbacks.splice(0)) cb();
  }
  messages(): { t: string; [k: string]: unknown }[] {
    return this.data.map((d) => JSON.parse(d));
  }
}

const tick = () => new Promise((r) => setImmediate(r));

describe('redact', () => {
  it('replaces secret-named fields, PEM blocks and known secrets, and keeps the rest', () => {
    const out = redact(
      {
        computer: 'lv-1',
        password: 'hunter2',
        nested: { passphrase: 'p', apiToken: 't', privateKey: PEM, sshKey: 'k', keep: true },
        note: `key ${PEM}`,
        message: 'failed with TOPSECRET-42 in it',
        list: [1, 'TOPSECRET-42', { secret: 's' }],
        fn: () => 1,
        when: new Date(0),
        big: 10n,
        cls: new (class Thing {})(),
        err: new Error('boom TOPSECRET-42'),
        flag: { token: false },
      },
      { secrets: ['TOPSECRET-42'] },
    );
    expect(out).toEqual({
      computer: 'lv-1',
      password: REDACTED,
      nested: {
        passphrase: REDACTED,
        apiToken: REDACTED,
        privateKey: REDACTED,
        sshKey: REDACTED,
        keep: true,
      },
      note: REDACTED,
      message: `failed with ${REDACTED} in it`,
      list: [1, REDACTED, { secret: REDACTED }],
      when: '1970-01-01T00:00:00.000Z',
      big: '10',
      cls: '[Thing]',
      err: { name: 'Error', message: `boom ${REDACTED}` },
      flag: { token: false },
    });
  });

  it('bounds depth, arrays, strings and survives cycles', () => {
    const cyclic: Record<string, unknown> = { a: 1 };
    cyclic.self = cyclic;
    expect(redact(cyclic)).toEqual({ a: 1, self: '[circular]' });
    const deep = redact({ a: { b: { c: { d: 1 } } } }, { maxDepth: 2 });
    expect(deep).toEqual({ a: { b: '[…]' } });
    expect(
      redact(
        Array.from({ length: 5 }, (_, i) => i),
        { maxArray: 2 },
      ),
    ).toEqual([0, 1, '… 3 more']);
    expect(String(redact('x'.repeat(50), { maxString: 10 }))).toMatch(/^x{10}… \(50 characters\)$/);
  });

  it('learns the secrets an inventory leads to, without keeping the inventory', () => {
    const keyPath = join(dir, 'key');
    const passFile = join(dir, 'pass');
    writeFileSync(keyPath, PEM);
    writeFileSync(passFile, 'file-passphrase\n');
    const s = secretsOfInventory(
      {
        hosts: {
          a: { privateKey: 'inline-key-material', passphraseEnv: 'MY_PASS' },
          b: { privateKeyPath: keyPath, passphraseFile: passFile },
          c: { privateKeyPath: join(dir, 'missing') },
        },
      },
      { MY_PASS: 'env-passphrase' },
    );
    expect(s).toEqual(
      expect.arrayContaining([
        'inline-key-material',
        'env-passphrase',
        'file-passphrase',
        PEM.trim(),
        'b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ',
      ]),
    );
  });

  it('learns the webhook signing keys (env or file) and the webhook URLs, which may carry a token', () => {
    const keyFile = join(dir, 'hook-key');
    writeFileSync(keyFile, 'file-signing-key-0123456789\n');
    const s = secretsOfInventory(
      {
        notifications: {
          webhooks: [
            { name: 'a', url: 'https://chat.example.org/hooks/T0K3N-abc', secret: { env: 'HOOK_KEY' } },
            { name: 'b', url: 'https://hooks.example.org/vcl', secret: { file: keyFile } },
          ],
        },
      },
      { HOOK_KEY: 'env-signing-key-0123456789' },
    );
    expect(s).toEqual(
      expect.arrayContaining([
        'env-signing-key-0123456789',
        'file-signing-key-0123456789',
        'https://chat.example.org/hooks/T0K3N-abc',
      ]),
    );
    expect(redact({ note: 'posted to https://chat.example.org/hooks/T0K3N-abc' }, { secrets: s })).toEqual({
      note: 'posted to [redacted]',
    });
  });
});

describe('inspection events', () => {
  it('relay state values, events and redacted contexts of the capture and its os child only', async () => {
    const os = createMachine({
      id: 'linux',
      description: 'CONFIG-MARKER of the os machine',
      context: { password: 'hunter22-os', step: 'ensure_responding' },
      initial: 'ensure_responding',
      states: { ensure_responding: { after: { 5: 'done' } }, done: { type: 'final' } },
    });
    const capture = setup({
      actors: {
        os,
        copy: fromPromise(async () => {
          throw Object.assign(new Error('copy failed near SECRET-PASSPHRASE'), { code: 'STEP_FAILED' });
        }),
      },
    }).createMachine({
      id: 'libvirt',
      description: 'CONFIG-MARKER of the capture machine',
      context: {
        captureId: 'cap-1',
        provisioner: 'libvirt',
        os: 'linux',
        computer: 'lv-1',
        apiToken: 'tok-SECRET',
        note: 'the passphrase is SECRET-PASSPHRASE',
        key: PEM,
      },
      initial: 'pre_capture',
      states: {
        pre_capture: { invoke: { id: 'os', src: 'os', onDone: 'copy' } },
        copy: {
          invoke: {
            id: 'copy',
            src: 'copy',
            onError: { target: 'failed', actions: assign({ note: 'after the error' }) },
          },
        },
        failed: { type: 'final' },
      },
    });
    const hub = new InspectorHub({ secrets: ['SECRET-PASSPHRASE'] });
    const sink = new FakeSink();
    hub.addClient(sink);
    let listener: ((e: RunnerEvent) => void) | undefined;
    hub.attach({
      on: (l) => {
        listener = l;
        return () => undefined;
      },
    });
    listener?.({ type: 'queued', captureId: 'cap-1', computer: 'lv-1', image: 'img-v0' });
    const actor = createActor(capture, { inspect: hub.inspect });
    actor.subscribe((s) =>
      listener?.({
        type: 'state',
        captureId: 'cap-1',
        state: s.value,
        step: String(s.value),
        atMs: Date.now(),
      }),
    );
    actor.start();
    await new Promise<void>((resolve) => actor.subscribe({ complete: resolve }));
    await tick(); // the page's queue writes after the runner's turn
    expect(hub.errors).toBe(0);

    const all = sink.data.join('\n');
    for (const secret of ['hunter22-os', 'tok-SECRET', 'SECRET-PASSPHRASE', 'BEGIN OPENSSH', 'CONFIG-MARKER'])
      expect(all).not.toContain(secret);
    const msgs = sink.messages();
    expect(msgs.filter((m) => m.t === 'state').map((m) => m.value)).toEqual([
      'pre_capture',
      'copy',
      'failed',
    ]);
    expect(msgs.filter((m) => m.t === 'os').map((m) => [m.value, m.status])).toEqual([
      ['ensure_responding', 'active'],
      ['done', 'done'],
    ]);
    const contexts = msgs.filter((m) => m.t === 'context');
    expect(contexts.find((m) => m.actor === 'os')?.context).toEqual({
      password: REDACTED,
      step: 'ensure_responding',
    });
    expect(contexts.find((m) => m.actor === 'capture')?.context).toMatchObject({
      captureId: 'cap-1',
      apiToken: REDACTED,
      note: `the passphrase is ${REDACTED}`,
      key: REDACTED,
    });
    const error = msgs.find((m) => m.t === 'event' && String(m.type).startsWith('xstate.error.actor.copy'));
    expect(error?.detail).toBe(`STEP_FAILED: copy failed near ${REDACTED}`);
    // Only whitelisted message shapes go out: never an actor, a snapshot or a machine.
    for (const m of msgs) {
      expect(['hello', 'capture', 'state', 'os', 'event', 'context', 'progress', 'finished']).toContain(m.t);
      expect(Object.keys(m)).not.toEqual(expect.arrayContaining(['actorRef']));
      expect(JSON.stringify(m)).not.toMatch(/"(actorRef|logic|config|_parent|snapshot|machine)"/);
    }
    // The summary learnt the provisioner from the context.
    expect(hub.liveSummaries()[0]).toMatchObject({ id: 'cap-1', provisioner: 'libvirt', os: 'linux' });
  });
});

describe('bounded queues', () => {
  it('a page that never reads keeps at most `limit` messages; the drops are counted and reported', async () => {
    const sink = new FakeSink(false);
    const q = new ClientQueue(sink, { limit: 100, maxInFlight: 4 });
    const started = performance.now();
    for (let i = 0; i < 50_000; i++) q.push(`{"n":${i}}`);
    // Generous on purpose (a few ms here): only a push that grew with the backlog would come near it.
    expect(performance.now() - started).toBeLessThan(5000);
    // Nothing is written in the pusher's turn; the queue holds the newest `limit`.
    expect(sink.data).toHaveLength(0);
    expect(q.length).toBe(100);
    expect(q.dropped).toBe(50_000 - 100);
    await tick();
    // Then at most `maxInFlight` go to a socket that does not acknowledge, the first one saying how
    // many were missed.
    expect(sink.data).toHaveLength(4);
    expect(JSON.parse(sink.data[0] as string)).toEqual({ t: 'dropped', seq: 0, count: 50_000 - 100 });
    await tick();
    expect(sink.data).toHaveLength(4);
    // The page catches up with the newest messages, in order.
    for (let i = 0; i < 200 && q.length > 0; i++) {
      sink.ackAll();
      await tick();
    }
    sink.ackAll();
    expect(q.length).toBe(0);
    expect(sink.data.slice(1).map((d) => JSON.parse(d).n)).toEqual(
      Array.from({ length: 100 }, (_, i) => 49_900 + i),
    );
  });

  it('the hub never waits for a page, and keeps a bounded history per capture', async () => {
    const hub = new InspectorHub({ historyLimit: 50, clientQueue: { limit: 200 } });
    const stuck = new FakeSink(false);
    const reader = new FakeSink(true);
    hub.addClient(stuck);
    hub.addClient(reader);
    let listener: ((e: RunnerEvent) => void) | undefined;
    hub.attach({
      on: (l) => {
        listener = l;
        return () => undefined;
      },
    });
    listener?.({ type: 'queued', captureId: 'c', computer: 'x', image: 'i' });
    // 20,000 state changes, 100 per turn of the event loop (a runner's burst is a few per turn).
    let inRunner = 0;
    for (let turn = 0; turn < 200; turn++) {
      const started = performance.now();
      for (let i = turn * 100; i < (turn + 1) * 100; i++)
        listener?.({ type: 'state', captureId: 'c', state: { capturing: `s${i}` }, step: `s${i}`, atMs: i });
      inRunner += performance.now() - started;
      await tick();
    }
    // Generous on purpose: a hub that waited for the stuck page would never get through.
    expect(inRunner).toBeLessThan(10_000);
    // The reading page got everything; the stuck one holds a bounded queue and counts its losses.
    const states = reader.messages().filter((m) => m.t === 'state');
    expect(states).toHaveLength(20_000);
    expect(states.at(-1)?.step).toBe('s19999');
    expect(stuck.data.length).toBeLessThanOrEqual(32);
    expect(hub.droppedCount).toBeGreaterThan(19_000);
    const d = await hub.captureDetail('c');
    expect(d?.live?.messages).toHaveLength(50);
    expect(d?.live?.truncated).toBe(20_000 - 50);
    hub.close();
  });
});

describe('following a store', () => {
  let store: SqliteCaptureStore;
  beforeAll(async () => {
    store = openSqliteStore(join(dir, 'follow.sqlite'));
    await store.registerComputers([{ name: 'lv-1' }]);
  });
  afterAll(async () => {
    await store.close();
  });

  it('shows the recorded states of a capture another process runs, then its end', async () => {
    const image = await store.registerImage({ osName: 'linux', prettyName: 'Follow', owner: 't' });
    const c = await store.createCapture({
      computer: 'lv-1',
      imageId: image.id,
      provisioner: 'libvirt',
      os: 'linux',
      endState: 'off',
    });
    await store.recordTransition(c.id, {
      stateValue: { capturing: 'reserve' },
      event: { type: 'state.entered', step: 'reserve' },
    });
    const hub = new InspectorHub({ store });
    const sink = new FakeSink();
    hub.addClient(sink);
    const stop = hub.followStore(20);
    const until = async (check: () => boolean) => {
      for (let i = 0; i < 200 && !check(); i++) await new Promise((r) => setTimeout(r, 10));
      expect(check()).toBe(true);
    };
    const states = () => sink.messages().filter((m) => m.t === 'state' && m.id === c.id);
    await until(() => states().length === 1);
    await store.recordTransition(c.id, {
      stateValue: { capturing: 'pre_capture' },
      event: { type: 'state.entered', step: 'pre_capture' },
    });
    await until(() => states().length === 2);
    await store.failCapture(
      c.id,
      { code: 'STEP_FAILED', step: 'pre_capture', message: 'nope' },
      'maintenance',
    );
    await until(() => sink.messages().some((m) => m.t === 'finished'));
    expect(states().map((m) => m.value)).toEqual([
      { capturing: 'reserve' },
      { capturing: 'pre_capture' },
      'failed',
    ]);
    expect(sink.messages().find((m) => m.t === 'finished')).toMatchObject({
      status: 'failed',
      error: { code: 'STEP_FAILED', step: 'pre_capture' },
    });
    const detail = await hub.captureDetail(c.id);
    expect(detail?.transitions.map((t) => t.value)).toEqual([
      { capturing: 'reserve' },
      { capturing: 'pre_capture' },
      'failed',
    ]);
    stop();
    hub.close();
  });
});

describe('the server', () => {
  const get = (port: number, path: string, headers: Record<string, string> = {}) =>
    new Promise<{ status: number; headers: Record<string, unknown>; body: string }>((resolve, reject) => {
      const req = request({ host: '127.0.0.1', port, path, headers }, (res) => {
        let body = '';
        res.on('data', (d) => {
          body += String(d);
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
      });
      req.on('error', reject);
      req.end();
    });

  it('serves its own files and API to loopback names only, and refuses foreign pages', async () => {
    const inspector = createInspector();
    const server = await inspector.listen({ port: 0 });
    try {
      const page = await get(server.port, '/');
      expect(page.status).toBe(200);
      expect(page.body).toContain('<script type="module" src="/app.js"></script>');
      expect(page.body).not.toMatch(/https?:\/\//);
      expect(String(page.headers['content-security-policy'])).toContain("default-src 'self'");
      for (const asset of ['/app.js', '/app.css', '/favicon.svg']) {
        const r = await get(server.port, asset);
        expect(r.status, asset).toBe(200);
        expect(r.body, asset).not.toMatch(/(src|href|url)\s*[=(]\s*["']?https?:/);
      }
      expect((await get(server.port, '/diagrams/libvirt.svg')).body).toContain(
        '<title>capturing__reserve</title>',
      );
      expect((await get(server.port, '/diagrams/nope.svg')).status).toBe(404);
      expect(JSON.parse((await get(server.port, '/api/machines')).body).machines).toEqual(
        expect.arrayContaining(['libvirt', 'vmware', 'xcat', 'linux', 'windows']),
      );
      expect(JSON.parse((await get(server.port, '/api/captures')).body)).toEqual({ captures: [] });
      expect((await get(server.port, '/api/captures/unknown')).status).toBe(404);
      expect((await get(server.port, '/../package.json')).status).toBe(404);
      expect((await get(server.port, '/public/app.js')).status).toBe(404);
      // DNS rebinding: a request naming another host is refused.
      expect((await get(server.port, '/api/captures', { host: `evil.example:${server.port}` })).status).toBe(
        421,
      );
      // A WebSocket from another origin is refused; from the page's own origin it gets the hello.
      const foreign = new WebSocket(`ws://127.0.0.1:${server.port}/ws`, { origin: 'http://evil.example' });
      await expect(
        new Promise((resolve, reject) => {
          foreign.on('open', () => reject(new Error('opened')));
          foreign.on('error', resolve);
        }),
      ).resolves.toBeDefined();
      const own = new WebSocket(`ws://127.0.0.1:${server.port}/ws`, { origin: server.url.slice(0, -1) });
      const hello = await new Promise<{ t: string }>((resolve) =>
        own.once('message', (d) => resolve(JSON.parse(String(d)))),
      );
      expect(hello.t).toBe('hello');
      own.close();
    } finally {
      await inspector.close();
    }
  });

  it('listens on loopback only', async () => {
    await expect(createInspector().listen({ host: '0.0.0.0' })).rejects.toThrow(/loopback/);
  });
});

describe('replay transitions', () => {
  it('are the capture machine states and its end, not the OS sub-machine steps recorded in between', () => {
    const event = (seq: number, type: string, stateValue: unknown, details?: Record<string, unknown>) => ({
      id: seq,
      captureId: 'c',
      seq,
      at: new Date(1000 * seq).toISOString(),
      type,
      stateValue: stateValue as never,
      step: null,
      details: details ?? null,
      durationMs: null,
    });
    const detail = {
      events: [
        event(1, 'capture.created', null),
        event(2, 'state.entered', { capturing: 'pre_capture' }),
        event(3, 'os.state.entered', { capturing: 'pre_capture' }, { os: 'clean_disk' }),
        event(4, 'capture.claimed', null, { owner: 'b', previousOwner: 'a' }),
        event(5, 'state.entered', { capturing: 'copy_image' }),
        event(6, 'capture.completed', null),
      ],
    } as unknown as Parameters<typeof transitionsOf>[0];
    expect(transitionsOf(detail).map((t) => [t.seq, t.value])).toEqual([
      [2, { capturing: 'pre_capture' }],
      [5, { capturing: 'copy_image' }],
      [6, 'completed'],
    ]);
  });
});
