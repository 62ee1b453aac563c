/**
 * The reservation race across OS processes: several runners on one SQLite file try to capture the same
 * computer in the same instant. Exactly one may win; every other one must get COMPUTER_BUSY naming the
 * winner, and must leave nothing behind (no capture, no revision, no audit event). Runners starting
 * together on a new file must each get a migrated store, too.
 */
import Database from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { SqliteCaptureStore } from '../../src/store/index.js';
import { MIGRATIONS, SCHEMA_VERSION } from '../../src/store/index.js';
import { openStore, tempFolder } from './helpers.js';
import { FixtureProcess } from './processes.js';

const WORKERS = 3;
const ROUNDS = 16;
const IMAGE_ID = 501;

interface Result {
  worker: string;
  round: number;
  ok: boolean;
  captureId?: string;
  image?: string;
  code?: string;
  message?: string;
  details?: Record<string, unknown>;
  /** When the attempt started (epoch ms, sub-millisecond) and how long it took. */
  startedAt: number;
  ms: number;
}

describe('reservation race between processes', () => {
  const folder = tempFolder('vcl-store-race-');
  const path = folder.file('shared.sqlite');
  let workers: FixtureProcess[] = [];
  let store: SqliteCaptureStore;
  let overlappingRounds = 0;

  beforeAll(async () => {
    // The workers start on a file that does not exist yet: they create and migrate it concurrently.
    workers = Array.from(
      { length: WORKERS },
      (_, i) => new FixtureProcess('race-worker.ts', [path, `w${i}`]),
    );
    const ready = await Promise.all(workers.map((w) => w.next(30_000)));
    for (const message of ready)
      expect(message).toMatchObject({ type: 'ready', schemaVersion: SCHEMA_VERSION });
    store = openStore(path);
    await store.registerComputers(Array.from({ length: ROUNDS }, (_, r) => ({ name: `pc-${r}` })));
    await store.registerImage({ id: IMAGE_ID, osName: 'centos7', prettyName: 'Lab', owner: 'admin' });
  }, 60_000);

  afterAll(async () => {
    const codes = await Promise.all(workers.map((w) => w.stop()));
    await store?.close();
    folder.cleanup();
    expect(codes, workers.map((w) => w.output).join('\n')).toEqual(workers.map(() => 0));
  });

  /** Sends one attempt to every worker (`attempt(i)` for worker i), all starting at the same instant. */
  async function together(round: number, attempt: (i: number) => Record<string, unknown>): Promise<Result[]> {
    const startAt = Date.now() + 30;
    workers.forEach((w, i) => {
      w.send({ round, startAt, ...attempt(i) });
    });
    const results = (await Promise.all(workers.map((w) => w.next()))) as unknown as Result[];
    for (const r of results) expect(r.round).toBe(round);
    return results;
  }

  const race = (round: number, mode: 'create' | 'reserve') =>
    together(round, (i) => ({
      mode,
      computer: `pc-${round}`,
      captureId: `r${round}-w${i}`,
      imageId: IMAGE_ID,
    }));

  function oneWinner(results: Result[], round: number): { winner: Result; losers: Result[] } {
    const winners = results.filter((r) => r.ok);
    expect(winners, JSON.stringify(results)).toHaveLength(1);
    const winner = winners[0] as Result;
    const losers = results.filter((r) => !r.ok);
    expect(losers).toHaveLength(WORKERS - 1);
    for (const loser of losers) {
      expect(loser.code, loser.message).toBe('COMPUTER_BUSY');
      expect(loser.message).toContain(`computer pc-${round} is held by capture ${winner.captureId}`);
      expect(loser.details).toMatchObject({ computer: `pc-${round}`, heldBy: winner.captureId });
    }
    // Did a loser start before the winner had committed? Then the two really raced for the lock.
    if (losers.some((l) => l.startedAt < winner.startedAt + winner.ms)) overlappingRounds++;
    return { winner, losers };
  }

  it('createCapture: exactly one process wins each round, the others get COMPUTER_BUSY and write nothing', async () => {
    const winnerImages: string[] = [];
    for (let round = 0; round < ROUNDS / 2; round++) {
      const { winner, losers } = oneWinner(await race(round, 'create'), round);
      winnerImages.push(winner.image ?? '');
      expect(await store.getComputer(`pc-${round}`)).toMatchObject({
        state: 'image',
        heldBy: winner.captureId,
      });
      for (const loser of losers) {
        expect(await store.getCapture(`r${round}-${loser.worker}`)).toBeUndefined();
      }
    }
    // All rounds capture the same image: the losers did not consume a revision number either.
    expect(winnerImages).toEqual(
      Array.from({ length: ROUNDS / 2 }, (_, r) => `centos7-Lab${IMAGE_ID}-v${r}`),
    );
    const revisions = (await store.getImage(IMAGE_ID))?.revisions ?? [];
    expect(revisions.map((r) => r.revision)).toEqual(winnerImages.map((_, r) => r));
    expect(await store.listCaptures({ status: 'queued' })).toEqual([]);
  }, 30_000);

  it('reserveComputer of queued captures: exactly one process wins each round, the others stay queued', async () => {
    for (let round = ROUNDS / 2; round < ROUNDS; round++) {
      for (let i = 0; i < WORKERS; i++) {
        await store.createCapture({
          id: `r${round}-w${i}`,
          computer: `pc-${round}`,
          imageId: IMAGE_ID,
          provisioner: 'libvirt',
          os: 'linux',
          reserve: false,
        });
      }
      const { winner, losers } = oneWinner(await race(round, 'reserve'), round);
      expect(await store.getComputer(`pc-${round}`)).toMatchObject({
        state: 'image',
        heldBy: winner.captureId,
        heldFromState: 'available',
        version: 1,
      });
      expect((await store.getCapture(winner.captureId ?? ''))?.status).toBe('running');
      for (const loser of losers) {
        const capture = await store.getCapture(`r${round}-${loser.worker}`);
        expect(capture?.status).toBe('queued');
        expect(capture?.events.map((e) => e.type)).toEqual(['capture.created']);
      }
    }
    // One running capture per computer, each holding its computer: nothing in between.
    const running = await store.listCaptures({ status: 'running' });
    expect(running).toHaveLength(ROUNDS);
    for (const capture of running) {
      expect((await store.getComputer(capture.computer))?.heldBy).toBe(capture.id);
    }
  }, 30_000);

  it('every process opening the same new file at once gets a migrated store (migrated once)', async () => {
    for (let round = 0; round < 10; round++) {
      const fresh = folder.file(`fresh-${round}.sqlite`);
      const results = await together(100 + round, () => ({ mode: 'open', path: fresh }));
      for (const r of results)
        expect(r, r.message).toMatchObject({ ok: true, schemaVersion: SCHEMA_VERSION });
      const db = new Database(fresh, { readonly: true });
      expect(db.prepare('SELECT version FROM schema_migrations').pluck().all()).toEqual(
        MIGRATIONS.map((m) => m.version),
      );
      expect(db.pragma('journal_mode', { simple: true })).toBe('wal');
      db.close();
    }
  }, 30_000);

  it('raced for real: in some rounds a loser started before the winner committed', () => {
    // Without this the test could pass with attempts that merely took turns. Attempts start together
    // (spinning to the same instant), so nearly every round overlaps; one of sixteen is plenty.
    expect(overlappingRounds).toBeGreaterThan(0);
  });
});
