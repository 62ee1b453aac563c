/**
 * Resume in one process, against the lab over real SSH: a stopped runner leaves its captures in the
 * store at a persisted transition, and the next runner resumes them from their snapshots; a snapshot
 * that no longer fits the machine fails clearly; queued captures and cancellations cross runners
 * through the store. (Kills of real daemon processes are in test/crash.)
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { parseCommandLine } from '../../src/lab/words.js';
import { createRunner, type Runner, type RunnerEvent } from '../../src/runner/runner.js';
import { LEFTOVER_SWEEP_SCRIPT } from '../../src/ssh/index.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import { eventOf, finished, inState } from '../helpers/runner-events.js';

let lab: Lab;
let store: SqliteCaptureStore;
let dir: string;
let dbPath: string;
const runners: Runner[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-resume-'));
  lab = await startLab({ powerDelayMs: 300, computers: { 'libvirt-linux': 12 } });
  dbPath = join(dir, 'store.sqlite');
  store = openSqliteStore(dbPath);
});

// A hang whose capture stopped before its command (a cancel, a stop) must not hang a later test's copy.
afterEach(() => {
  lab.faults.clear();
});

afterAll(async () => {
  for (const r of runners) await r.close().catch(() => undefined);
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function runner(id: string, leaseMs = 60_000): Runner {
  const r = createRunner({ inventory: lab.inventory, store, pollMs: 20, id, leaseMs, queuePollMs: 50 });
  runners.push(r);
  return r;
}

const image = (name: string) => ({ osName: 'linux', prettyName: name, owner: 'test' });

async function repositoryFiles(): Promise<string[]> {
  return readdirSync(await lab.realPath('repo-host', '/srv/vcl/images'));
}

/** Edits the stored row of a capture behind the store's back (what an older version would have left). */
function tamper(captureId: string, sql: string): void {
  const db = new Database(dbPath);
  try {
    db.prepare(`UPDATE captures SET ${sql} WHERE id = ?`).run(captureId);
  } finally {
    db.close();
  }
}

describe('stop and resume', () => {
  it('stop() lets the running step reach its next transition; the next runner resumes from there', async () => {
    const a = runner('runner-a');
    const source = await lab.diskSha256('lv-linux-1');
    const handle = await a.capture({ computer: 'lv-linux-1', image: image('Stop') });
    await eventOf(a, handle.id, inState('wait_power_off'));
    await a.stop();
    const suspended = await handle.result;
    expect(suspended.status).toBe('suspended');
    const stored = await store.getCapture(handle.id);
    // The power-off wait finished, its successor was persisted, and nothing else ran.
    expect(stored).toMatchObject({ status: 'running', owner: null, stateValue: { capturing: 'copy_image' } });
    expect(stored?.machineVersion).toMatch(/^libvirt@[0-9a-f]{16}$/);
    expect((await store.getComputer('lv-linux-1'))?.heldBy).toBe(handle.id);

    lab.clearLog();
    const b = runner('runner-b');
    const done = eventOf(b, handle.id, finished);
    const report = await b.start();
    expect(report).toEqual({ resumed: [handle.id], started: [], failed: [] });
    const result = ((await done) as Extract<RunnerEvent, { type: 'finished' }>).result;
    if (result.status !== 'completed') throw new Error(JSON.stringify(result.error));
    expect(result.artifact.sha256).toBe(source);
    expect(await lab.sha256('repo-host', result.artifact.path)).toBe(source);
    // Resumed at copy_image: the OS and the power were not touched again.
    expect(lab.commandLog.some((e) => /shutdown|domstate/.test(e.line))).toBe(false);
    const trail = (await store.getCapture(handle.id))?.events ?? [];
    expect(trail.find((e) => e.type === 'capture.claimed')?.details).toMatchObject({ owner: 'runner-b' });
    expect(trail.at(-1)?.type).toBe('capture.completed');
    await b.stop();
  });

  it('a step still in flight at the stop timeout is stopped, and re-runs from its start on resume', async () => {
    const a = runner('runner-c');
    const logFrom = lab.commandLog.length;
    const source = await lab.diskSha256('lv-linux-2');
    const hang = lab.faults.add({
      kind: 'hangCommand',
      host: 'libvirt-host',
      match: ['qemu-img', 'convert'],
      times: 1,
    });
    const handle = await a.capture({ computer: 'lv-linux-2', image: image('Hung') });
    await eventOf(a, handle.id, inState('copy_image'));
    // In flight once its convert runs (and hangs): a stop before that, under load, would leave the hang
    // for the resumed convert.
    await expect.poll(() => hang.fired, { timeout: 10_000 }).toBe(1);
    await a.stop({ timeoutMs: 100 });
    expect((await handle.result).status).toBe('suspended');
    expect((await store.getCapture(handle.id))?.stateValue).toEqual({ capturing: 'copy_image' });

    const b = runner('runner-d');
    const done = eventOf(b, handle.id, finished);
    await b.start();
    const result = ((await done) as Extract<RunnerEvent, { type: 'finished' }>).result;
    if (result.status !== 'completed') throw new Error(JSON.stringify(result.error));
    expect(await lab.sha256('repo-host', result.artifact.path)).toBe(source);
    // One image of this capture, no temporary file beside it.
    expect((await repositoryFiles()).filter((f) => f.includes(handle.image.name))).toEqual([
      result.artifact.path.split('/').at(-1),
    ]);
    expect((await repositoryFiles()).filter((f) => /vcl-tmp|partial/.test(f))).toEqual([]);
    // Each execution tagged its commands; the second one swept the first one's tag on the libvirt host
    // before any command of its own there, and the finished capture keeps no tag.
    const onLibvirt = lab.commandLog
      .slice(logFrom)
      .filter((e) => e.host === 'libvirt-host')
      .map((e) => ({ ...e, parsed: parseCommandLine(e.line) }));
    const tagOf = (e: (typeof onLibvirt)[number]) => (e.parsed.kind === 'argv' ? e.parsed.tag : undefined);
    const converts = onLibvirt.filter((e) => e.argv?.[0] === 'qemu-img' && e.argv[1] === 'convert');
    const [first, second] = converts.map(tagOf);
    expect(first).toMatch(/^[0-9a-f]{16}$/);
    expect(second).toMatch(/^[0-9a-f]{16}$/);
    expect(second).not.toBe(first);
    const sweep = onLibvirt.findIndex((e) => e.argv?.[2] === LEFTOVER_SWEEP_SCRIPT);
    expect(onLibvirt[sweep]?.argv?.slice(4)).toEqual([first]);
    expect(onLibvirt.findIndex((e) => tagOf(e) === second)).toBeGreaterThan(sweep);
    expect(await store.remoteTags(handle.id)).toEqual([]);
    await b.stop();
  });
});

describe('deadlines across a restart', () => {
  it('a step re-run after a restart keeps the deadline it started with', async () => {
    const a = runner('runner-deadline');
    lab.faults.add({ kind: 'hangCommand', host: 'libvirt-host', match: ['qemu-img', 'convert'], times: 1 });
    const handle = await a.capture({
      computer: 'lv-linux-7',
      image: image('Deadline'),
      timeouts: { copyMs: 1500 },
    });
    const logFrom = lab.commandLog.length;
    await eventOf(a, handle.id, inState('copy_image'));
    // The step is in flight once its convert runs (the hang fault is then used up, not left for the next
    // test's convert): the copy first takes its host slot in the store, which can take a while under load.
    await expect
      .poll(
        () =>
          lab.commandLog.slice(logFrom).some((e) => e.argv?.[0] === 'qemu-img' && e.argv[1] === 'convert'),
        { timeout: 10_000 },
      )
      .toBe(true);
    await a.stop({ timeoutMs: 50 });
    expect((await handle.result).status).toBe('suspended');
    // Down for longer than the copy's whole budget: a fresh deadline would let the copy run again.
    await new Promise((r) => setTimeout(r, 1600));
    const b = runner('runner-deadline-2');
    const done = eventOf(b, handle.id, finished);
    await b.start();
    const result = ((await done) as Extract<RunnerEvent, { type: 'finished' }>).result;
    if (result.status !== 'failed') throw new Error(`expected a failure, got ${result.status}`);
    expect(result.error).toMatchObject({ code: 'TIMEOUT', step: 'copy_image' });
    expect((await store.getComputer('lv-linux-7'))?.state).toBe('maintenance');
    expect((await repositoryFiles()).filter((f) => f.includes(handle.image.name))).toEqual([]);
    await b.stop();
  });
});

describe('snapshots of another machine version', () => {
  async function suspendedAtCopy(computer: string, owner: string) {
    const a = runner(owner);
    const handle = await a.capture({ computer, image: image(`V ${computer}`) });
    await eventOf(a, handle.id, inState('wait_power_off'));
    await a.stop();
    expect((await handle.result).status).toBe('suspended');
    return handle;
  }

  it('one that no longer fits fails with SNAPSHOT_INCOMPATIBLE and sends the computer to maintenance', async () => {
    const handle = await suspendedAtCopy('lv-linux-3', 'runner-e');
    tamper(
      handle.id,
      `snapshot = json_set(snapshot, '$.value.capturing', 'copy_everything'), machine_version = 'libvirt@0000000000000000'`,
    );
    const b = runner('runner-f');
    const report = await b.start();
    expect(report.failed).toEqual([
      expect.objectContaining({ captureId: handle.id, code: 'SNAPSHOT_INCOMPATIBLE' }),
    ]);
    await expect
      .poll(async () => (await store.getCapture(handle.id))?.status, { timeout: 10_000 })
      .toBe('failed');
    const stored = await store.getCapture(handle.id);
    expect(stored?.lastError).toMatchObject({ code: 'SNAPSHOT_INCOMPATIBLE', step: 'resume' });
    expect(stored?.lastError?.message).toMatch(/copy_everything/);
    expect((await store.getComputer('lv-linux-3'))?.state).toBe('maintenance');
    await b.stop();
  });

  it('one written before `touched` replaced `osTouched` resumes with the flag it had', async () => {
    const handle = await suspendedAtCopy('lv-linux-8', 'runner-old-1');
    tamper(
      handle.id,
      `snapshot = json_remove(json_set(snapshot, '$.context.osTouched', json('true')), '$.context.touched')`,
    );
    const b = runner('runner-old-2');
    const done = eventOf(b, handle.id, finished);
    expect((await b.start()).resumed).toEqual([handle.id]);
    const result = ((await done) as Extract<RunnerEvent, { type: 'finished' }>).result;
    expect(result.status).toBe('completed');
    await b.stop();
  });

  it('one that still fits resumes (the version alone does not refuse it)', async () => {
    const handle = await suspendedAtCopy('lv-linux-4', 'runner-g');
    tamper(handle.id, `machine_version = 'libvirt@1111111111111111'`);
    const b = runner('runner-h');
    const done = eventOf(b, handle.id, finished);
    expect((await b.start()).resumed).toEqual([handle.id]);
    const result = ((await done) as Extract<RunnerEvent, { type: 'finished' }>).result;
    expect(result.status).toBe('completed');
    await b.stop();
  });
});

describe('work across runners through the store', () => {
  it('two started runners share a backlog: each claims at most its free capture slots', async () => {
    const inventory = { ...lab.inventory, defaults: { ...lab.inventory.defaults, maxConcurrentCaptures: 2 } };
    const limited = (id: string) => {
      const r = createRunner({ inventory, store, pollMs: 20, id, leaseMs: 60_000, queuePollMs: 50 });
      runners.push(r);
      return r;
    };
    const producer = runner('backlog-producer');
    const ids: string[] = [];
    for (const c of ['lv-linux-9', 'lv-linux-10', 'lv-linux-11', 'lv-linux-12'])
      ids.push((await producer.enqueue({ computer: c, image: image(`Backlog ${c}`) })).id);
    const a = limited('share-a');
    const b = limited('share-b');
    // The first runner takes two (its slots), and leaves the other two to the second.
    expect((await a.start()).started).toEqual(ids.slice(0, 2));
    expect((await b.start()).started).toEqual(ids.slice(2));
    await expect
      .poll(async () => (await Promise.all(ids.map((id) => store.getCapture(id)))).map((c) => c?.status), {
        timeout: 60_000,
      })
      .toEqual(['completed', 'completed', 'completed', 'completed']);
    const claimedBy = await Promise.all(
      ids.map(
        async (id) =>
          (await store.getCapture(id))?.events.find((e) => e.type === 'capture.claimed')?.details?.owner,
      ),
    );
    expect(claimedBy).toEqual(['share-a', 'share-a', 'share-b', 'share-b']);
    await a.stop();
    await b.stop();
  });

  it('a started runner runs what another enqueued; a queued capture nobody runs is cancelled in the store', async () => {
    const producer = runner('producer');
    const queued = await producer.enqueue({ computer: 'lv-linux-5', image: image('Queued') });
    expect(queued).toMatchObject({ status: 'queued', owner: null });
    expect((await producer.list()).map((c) => [c.id, c.local])).toContainEqual([queued.id, false]);

    const other = await producer.enqueue({ computer: 'lv-linux-6', image: image('Dropped') });
    await producer.cancel(other.id, 'not wanted');
    expect(await store.getCapture(other.id)).toMatchObject({ status: 'cancelled' });

    const worker = runner('worker');
    const done = eventOf(worker, queued.id, finished);
    expect((await worker.start()).started).toEqual([queued.id]);
    const result = ((await done) as Extract<RunnerEvent, { type: 'finished' }>).result;
    expect(result.status).toBe('completed');
    await worker.stop();
  });

  it('a cancellation asked by another process reaches the runner that owns the capture', async () => {
    await store.setComputerState('lv-linux-6', 'available');
    const owner = runner('owner', 300);
    lab.faults.add({ kind: 'hangCommand', host: 'libvirt-host', match: ['qemu-img', 'convert'], times: 1 });
    const handle = await owner.capture({ computer: 'lv-linux-6', image: image('Cancel') });
    await eventOf(owner, handle.id, inState('copy_image'));
    const elsewhere = runner('elsewhere');
    await elsewhere.cancel(handle.id, 'operator changed their mind');
    const result = await handle.result;
    expect(result.status).toBe('cancelled');
    expect((await repositoryFiles()).filter((f) => f.includes(handle.image.name))).toEqual([]);
    expect((await store.getCapture(handle.id))?.events.map((e) => e.type)).toContain(
      'capture.cancel_requested',
    );
  });
});
