/**
 * `vcl-capture daemon`, `capture --queue` and `cancel` as a user runs them (child processes) against the
 * built-in lab: queued work runs, a cancel reaches the daemon, SIGTERM stops at the next state with exit
 * 0 and the next daemon resumes, a second SIGTERM exits at once, `--inspect` serves the daemon's
 * captures, and a notification whose daemon was SIGKILLed mid-delivery is delivered by the next one.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { startLab } from '../src/lab/index.js';
import type { Lab } from '../src/lab/types.js';
import { openSqliteStore, type SqliteCaptureStore } from '../src/store/index.js';

const BIN = new URL('../src/cli/bin.mjs', import.meta.url).pathname;
let dir: string;
let lab: Lab;
let inventoryFile: string;
let db: string;
let store: SqliteCaptureStore;

interface Proc {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  exit: Promise<number | null>;
}

/** Every process this file started: a failing test must not leave a daemon polling forever. */
const started: ChildProcess[] = [];

function run(args: string[], env: NodeJS.ProcessEnv = process.env): Proc {
  const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
  started.push(child);
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => {
    out += String(d);
  });
  child.stderr?.on('data', (d) => {
    err += String(d);
  });
  const exit = new Promise<number | null>((resolve) => child.on('close', (code) => resolve(code)));
  return { child, out: () => out, err: () => err, exit };
}

const daemon = (...extra: string[]) =>
  run(['daemon', '--config', inventoryFile, '--db', db, '--poll-ms', '20', '--queue-poll', '50', ...extra]);

async function queue(computer: string, image: string): Promise<string> {
  const p = run([
    'capture',
    computer,
    '--image',
    image,
    '--config',
    inventoryFile,
    '--db',
    db,
    '--queue',
    '--json',
  ]);
  expect(await p.exit, p.err()).toBe(0);
  const parsed = JSON.parse(p.out()) as { status: string; captureId: string };
  expect(parsed.status).toBe('queued');
  return parsed.captureId;
}

async function until(check: () => Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) {
      const recent = (await store.listCaptures({ limit: 1 }))[0];
      const detail = recent ? await store.getCapture(recent.id) : undefined;
      throw new Error(
        `timed out waiting for ${what}; last capture: ${detail?.status} ${detail?.events.map((e) => `${e.type}:${JSON.stringify(e.stateValue)}`).join(' ')}`,
      );
    }
    await sleep(10);
  }
}

/** Waits until the daemon has taken the signal in (it logs 'stopping' at info level). */
async function stopping(d: Proc): Promise<void> {
  await until(async () => d.err().includes('stopping'), 30_000, 'the daemon to take SIGTERM in');
}

const status = async (id: string) => (await store.getCapture(id))?.status;

async function ready(computer: string) {
  const record = await store.getComputer(computer);
  if (record && record.state !== 'available') await store.setComputerState(computer, 'available');
  if (lab.computer(computer).power !== 'on') {
    lab.powerOn(computer);
    await lab.waitForPower(computer, 'on');
  }
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-daemon-'));
  lab = await startLab({ powerDelayMs: 150 });
  inventoryFile = join(dir, 'lab.yaml');
  writeFileSync(inventoryFile, stringify(lab.inventory));
  db = join(dir, 'captures.sqlite');
  store = openSqliteStore(db);
});

afterAll(async () => {
  for (const child of started)
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('vcl-capture daemon', () => {
  it('runs queued captures, carries out a cancel from another process, and serves the inspector', {
    timeout: 120_000,
  }, async () => {
    const first = await queue('lv-linux-1', 'Daemon one');
    // A short lease: the daemon renews it, and sees cancel requests, every 200 ms.
    const d = daemon('--inspect', '0', '--lease', '600', '--listen', '127.0.0.1:0', '--log-level', 'info');
    await until(
      async () => /Inspector: http:\/\/127\.0\.0\.1:\d+\//.test(d.err()),
      30_000,
      'the inspector URL',
    );
    const url = /Inspector: (http:\/\/127\.0\.0\.1:\d+\/)/.exec(d.err())?.[1] ?? '';
    await until(async () => /"url":"http:\/\/127\.0\.0\.1:\d+"/.test(d.err()), 30_000, 'the API URL');
    const apiUrl = /"url":"(http:\/\/127\.0\.0\.1:\d+)"/.exec(d.err())?.[1] ?? '';
    await until(async () => (await status(first)) === 'completed', 60_000, 'the queued capture');
    const listed = (await (await fetch(`${url}api/captures`)).json()) as { captures: { id: string }[] };
    expect(JSON.stringify(listed)).toContain(first);
    // The daemon's HTTP API serves the same store, and its metrics counted the capture it ran.
    const viaApi = (await (await fetch(`${apiUrl}/captures/${first}`)).json()) as { status: string };
    expect(viaApi.status).toBe('completed');
    await until(
      async () =>
        /vcl_capture_captures_total\{provisioner="libvirt",status="completed"\} 1/.test(
          await (await fetch(`${apiUrl}/metrics`)).text(),
        ),
      30_000,
      'the capture counted in /metrics',
    );

    // A cancel from another process while the daemon runs the capture: cleanup runs, nothing is kept.
    lab.faults.add({ kind: 'hangCommand', host: 'esxi-host', match: ['vmkfstools', '-i'], times: 1 });
    const second = await queue('vm-linux-1', 'Daemon two');
    await until(
      async () => JSON.stringify((await store.getCapture(second))?.stateValue).includes('clone_disk'),
      30_000,
      'the second capture to hang in its clone',
    );
    const c = run(['cancel', second, '--db', db, '--reason', 'operator']);
    expect(await c.exit, c.err()).toBe(0);
    expect(c.out()).toMatch(/cancel requested/);
    await until(async () => (await status(second)) === 'cancelled', 60_000, 'the cancellation');
    const events = (await store.getCapture(second))?.events.map((e) => e.type) ?? [];
    expect(events).toContain('capture.cancel_requested');

    d.child.kill('SIGTERM');
    expect(await d.exit).toBe(0);
  });

  it('refuses --listen beyond loopback without a token (exit 2), before running anything', async () => {
    const d = run(['daemon', '--config', inventoryFile, '--db', db, '--listen', '0.0.0.0:0']);
    expect(await d.exit).toBe(2);
    expect(d.err()).toMatch(/VCL_CAPTURE_API_TOKEN or give --api-token-file/);
  });

  it('SIGTERM stops at the next state with exit 0; the next daemon resumes the capture to the end', {
    timeout: 120_000,
  }, async () => {
    await ready('lv-linux-1');
    // The computer ignores its shutdown and keeps answering until the test switches it off: the OS's
    // wait for it to go down is a step sure to be running when SIGTERM comes, and it ends only then.
    const ignore = lab.faults.add({ kind: 'neverPowersOff', computer: 'lv-linux-1', mode: 'ignore' });
    const id = await queue('lv-linux-1', 'Daemon three');
    const d = daemon('--log-level', 'info');
    const lastEvent = async () => (await store.getCapture(id))?.events.at(-1);
    await until(
      async () => JSON.stringify((await lastEvent())?.details?.os ?? null).includes('wait_gone'),
      60_000,
      'the OS end-state wait',
    );
    const atTerm = (await store.getCapture(id))?.eventCount ?? 0;
    d.child.kill('SIGTERM');
    await stopping(d);
    expect(d.child.exitCode, d.err()).toBeNull(); // waiting for the running step
    lab.faults.clear(ignore);
    lab.powerOff('lv-linux-1');
    expect(await d.exit).toBe(0);
    const stopped = await store.getCapture(id);
    expect(stopped).toMatchObject({ status: 'running', owner: null });
    // The running step finished; exactly its transition was persisted, and nothing ran after it.
    const after = stopped?.events.slice(atTerm) ?? [];
    expect(after.map((e) => e.type)).toEqual(['state.entered']);
    expect(stopped?.stateValue).toEqual({ capturing: 'request_power_off' });

    const next = daemon();
    await until(async () => (await status(id)) === 'completed', 60_000, 'the resumed capture');
    next.child.kill('SIGTERM');
    expect(await next.exit).toBe(0);
    const trail = (await store.getCapture(id))?.events ?? [];
    expect(trail.filter((e) => e.type === 'capture.claimed')).toHaveLength(2);
  });

  it('a second SIGTERM exits at once with 143, and what it left resumes', { timeout: 120_000 }, async () => {
    await ready('lv-linux-1');
    const hang = lab.faults.add({
      kind: 'hangCommand',
      host: 'libvirt-host',
      match: ['qemu-img', 'convert'],
      times: 1,
    });
    const id = await queue('lv-linux-1', 'Daemon four');
    const d = daemon('--log-level', 'info');
    // The convert itself must hang: copy_image is persisted before its command reaches the host, and a
    // daemon stopped in between would leave the fault to hang the resumed copy instead.
    await until(async () => hang.remaining === 0, 60_000, 'the hung copy');
    expect(JSON.stringify((await store.getCapture(id))?.stateValue)).toContain('copy_image');
    d.child.kill('SIGTERM');
    await stopping(d);
    expect(d.child.exitCode, d.err()).toBeNull(); // still waiting for the hung step
    d.child.kill('SIGTERM');
    expect(await d.exit).toBe(143);
    const next = daemon();
    await until(async () => (await status(id)) === 'completed', 60_000, 'the resumed capture');
    next.child.kill('SIGTERM');
    expect(await next.exit).toBe(0);
  });

  it('a daemon SIGKILLed during a delivery loses no notification: the next daemon delivers it', {
    timeout: 120_000,
  }, async () => {
    await ready('xc-linux-1');
    const secret = 'daemon-test-signing-key-0123456789';
    // The receiver takes the first request in and never answers it (the daemon is then mid-delivery);
    // it answers every later one.
    const got: { body: string; signature: string }[] = [];
    const server = createServer((req, res) => {
      let body = '';
      req.on('data', (d) => {
        body += String(d);
      });
      req.on('end', () => {
        got.push({ body, signature: String(req.headers['x-vcl-capture-signature']) });
        if (got.length > 1) res.writeHead(200).end('ok');
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    // A database of its own: the captures of the tests above would be notified too.
    const notifyDb = join(dir, 'notify.sqlite');
    const notifyInventory = join(dir, 'notify.yaml');
    writeFileSync(
      notifyInventory,
      stringify({
        ...lab.inventory,
        notifications: {
          webhooks: [
            {
              name: 'ops',
              url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/vcl`,
              secret: { env: 'TEST_HOOK_SECRET' },
              events: ['capture.completed'],
              // The claim's lease is this plus 5 s: the next daemon takes the delivery over after it.
              timeoutMs: 5_000,
            },
          ],
        },
      }),
    );
    const env = { ...process.env, TEST_HOOK_SECRET: secret };
    const notifyStore = openSqliteStore(notifyDb);
    try {
      const q = run(
        [
          'capture',
          'xc-linux-1',
          '--image',
          'Notified',
          '--config',
          notifyInventory,
          '--db',
          notifyDb,
          '--queue',
          '--json',
        ],
        env,
      );
      expect(await q.exit, q.err()).toBe(0);
      const id = (JSON.parse(q.out()) as { captureId: string }).captureId;
      const args = [
        'daemon',
        '--config',
        notifyInventory,
        '--db',
        notifyDb,
        '--poll-ms',
        '20',
        '--queue-poll',
        '50',
      ];
      const first = run(args, env);
      await until(async () => got.length > 0, 60_000, 'the first delivery attempt to reach the receiver');
      first.child.kill('SIGKILL');
      await first.exit;
      expect((await notifyStore.getCapture(id))?.status).toBe('completed');
      // The killed attempt was not recorded: the delivery is still pending, claimed by the dead daemon.
      expect(await notifyStore.listNotifications()).toMatchObject([{ status: 'pending', attempts: 0 }]);

      const second = run(args, env);
      await until(
        async () => (await notifyStore.listNotifications())[0]?.status === 'delivered',
        60_000,
        'the next daemon to deliver it',
      );
      second.child.kill('SIGTERM');
      expect(await second.exit).toBe(0);
      expect(await notifyStore.listNotifications()).toMatchObject([{ status: 'delivered', attempts: 1 }]);
      // The same event both times (a receiver de-duplicates on its id), signed both times.
      expect(got).toHaveLength(2);
      const events = got.map(
        (g) => JSON.parse(g.body) as { id: string; type: string; capture: { id: string } },
      );
      expect(events[1]).toEqual(events[0]);
      expect(events[0]).toMatchObject({ type: 'capture.completed', capture: { id } });
      for (const g of got)
        expect(g.signature).toBe(`sha256=${createHmac('sha256', secret).update(g.body).digest('hex')}`);
    } finally {
      await notifyStore.close();
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
