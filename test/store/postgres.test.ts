/**
 * What only the PostgreSQL store has: its migrations and schema checks, the URL (chosen by the factory,
 * never shown with its password), the database's clock for leases, and several connections (as several
 * runners) writing at once under SERIALIZABLE isolation. Its CaptureStore behaviour is the contract suite's
 * (store, outbox, ownership tests), run against both stores.
 */
import { spawn } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type CaptureStore,
  openPostgresStore,
  openStore,
  PostgresCaptureStore,
  redactUrl,
  SCHEMA_VERSION,
  SqliteCaptureStore,
  storeLabel,
} from '../../src/store/index.js';
import { type PostgresCluster, postgresAvailable, startPostgres } from '../helpers/postgres.js';
import { expectVclError, REPO, seed, tempFolder } from './helpers.js';

const base = { imageId: 12345, provisioner: 'vmware', os: 'windows', repository: REPO } as const;

describe('the store URL', () => {
  it('hides a password in every form it is shown', () => {
    expect(redactUrl('postgres://vcl:s3cret@db.lab:5432/captures')).toBe(
      'postgres://vcl:***@db.lab:5432/captures',
    );
    expect(redactUrl('postgresql://vcl@db/captures?password=s3cret&sslmode=require')).not.toContain('s3cret');
    expect(redactUrl('postgres://vcl:s3cret@[bad')).not.toContain('s3cret');
    expect(storeLabel('/var/lib/vcl-capture/store.sqlite')).toBe('/var/lib/vcl-capture/store.sqlite');
  });

  it('a store that cannot be reached fails with STORE_ERROR naming the URL without its password', async () => {
    const err = await expectVclError(
      openStore('postgres://vcl:s3cret@127.0.0.1:1/captures'),
      'STORE_ERROR',
      /^cannot open store postgres:\/\/vcl:\*\*\*@127\.0\.0\.1:1\/captures: /,
    );
    expect(JSON.stringify(err.details)).not.toContain('s3cret');
  });

  it('a path opens the SQLite store', async () => {
    const folder = tempFolder();
    try {
      const store = await openStore(folder.file('store.sqlite'));
      expect(store).toBeInstanceOf(SqliteCaptureStore);
      await store.close();
    } finally {
      folder.cleanup();
    }
  });
});

describe.skipIf(!postgresAvailable('PostgreSQL store tests'))('a PostgreSQL database', () => {
  let cluster: PostgresCluster;
  beforeAll(async () => {
    cluster = await startPostgres();
  }, 60_000);
  afterAll(async () => {
    await cluster?.stop();
  });

  const database = (url: string) => new URL(url).pathname.slice(1);
  const schemaRows = async (url: string) =>
    cluster.query('SELECT version, name FROM schema_migrations ORDER BY version', [], database(url));

  it('a postgres:// URL opens the PostgreSQL store, which creates its schema once', async () => {
    const url = await cluster.createDatabase();
    const store = await openStore(url);
    expect(store).toBeInstanceOf(PostgresCaptureStore);
    expect((store as PostgresCaptureStore).schemaVersion).toBe(SCHEMA_VERSION);
    await seed(store);
    await store.close();
    const history = await schemaRows(url);
    expect(history.map((r) => r.version)).toEqual(Array.from({ length: SCHEMA_VERSION }, (_, i) => i + 1));
    const again = await openStore(url);
    expect(await again.listComputers()).toHaveLength(5);
    await again.close();
    expect(await schemaRows(url)).toEqual(history);
  });

  it('processes opening a new database at once all get it migrated, once', async () => {
    const url = await cluster.createDatabase();
    const stores = await Promise.all(Array.from({ length: 4 }, () => openPostgresStore(url)));
    for (const s of stores) await s.close();
    expect((await schemaRows(url)).length).toBe(SCHEMA_VERSION);
  });

  it('refuses a database written by a newer vcl-capture, naming both versions and the fix, changing nothing', async () => {
    const url = await cluster.createDatabase();
    await (await openPostgresStore(url)).close();
    await cluster.query('UPDATE store_schema SET version = $1', [SCHEMA_VERSION + 1], database(url));
    const err = await expectVclError(
      openPostgresStore(url),
      'SCHEMA_TOO_NEW',
      new RegExp(
        `has store schema version ${SCHEMA_VERSION + 1}, but this vcl-capture only knows versions up to ${SCHEMA_VERSION}: .*Upgrade vcl-capture`,
      ),
    );
    expect(err.details).toMatchObject({ fileVersion: SCHEMA_VERSION + 1, supportedVersion: SCHEMA_VERSION });
    expect((await schemaRows(url)).length).toBe(SCHEMA_VERSION);
  });

  it("refuses another application's database without writing to it", async () => {
    const url = await cluster.createDatabase();
    await cluster.query('CREATE TABLE customers (id int)', [], database(url));
    await expectVclError(openPostgresStore(url), 'NOT_A_CAPTURE_STORE', /1 table but no vcl-capture schema/);
    const tables = await cluster.query<{ t: string }>(
      "SELECT tablename AS t FROM pg_tables WHERE schemaname = 'public'",
      [],
      database(url),
    );
    expect(tables.map((r) => r.t)).toEqual(['customers']);
  });

  it("takes times from the database's clock, so runners on several machines compare one clock", async () => {
    const url = await cluster.createDatabase();
    const store = await openPostgresStore(url);
    try {
      await seed(store);
      const [{ db }] = (await cluster.query(
        `SELECT extract(epoch FROM clock_timestamp()) * 1000 AS db`,
        [],
        database(url),
      )) as [{ db: number }];
      const capture = await store.createCapture({
        ...base,
        id: 'c',
        computer: 'pc-01',
        owner: 'r1',
        leaseMs: 60_000,
      });
      const created = Date.parse(capture.createdAt);
      expect(Math.abs(created - Number(db))).toBeLessThan(5_000);
      expect(Date.parse(capture.leaseUntil ?? '')).toBe(created + 60_000);
      // A state change reads the clock in its one statement: the capture and its event get one time.
      await store.recordTransition('c', {
        stateValue: 'booting',
        event: { type: 'state.entered' },
        fence: { owner: 'r1', generation: capture.generation },
      });
      const changed = await store.getCapture('c');
      expect(changed?.events.at(-1)).toMatchObject({ type: 'state.entered', at: changed?.updatedAt });
      expect(Math.abs(Date.parse(changed?.updatedAt ?? '') - Number(db))).toBeLessThan(5_000);
      expect(Date.parse(changed?.updatedAt ?? '')).toBeGreaterThanOrEqual(created);
    } finally {
      await store.close();
    }
  });

  it('survives the server dropping its connections: at most one call fails, with STORE_ERROR', async () => {
    const url = await cluster.createDatabase();
    const store = await openPostgresStore(url, { poolSize: 1 });
    try {
      await seed(store);
      await cluster.query(
        'SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()',
        [database(url)],
      );
      const first = await store.getComputer('pc-01').catch((err: unknown) => err);
      if (!(first && typeof first === 'object' && 'name' in first && first.name === 'pc-01'))
        expect((first as { code?: string }).code).toBe('STORE_ERROR');
      expect(await store.getComputer('pc-01')).toMatchObject({ name: 'pc-01', state: 'available' });
      expect((await store.createCapture({ ...base, id: 'after', computer: 'pc-01' })).status).toBe('running');
    } finally {
      await store.close();
    }
  });

  it('keeps the audit trail append-only for someone writing SQL by hand', async () => {
    const url = await cluster.createDatabase();
    const store = await openPostgresStore(url);
    await seed(store);
    await store.createCapture({ ...base, id: 'a', computer: 'pc-01' });
    await store.close();
    await expect(cluster.query('DELETE FROM capture_events', [], database(url))).rejects.toThrow(
      /append-only/,
    );
    await expect(cluster.query("UPDATE capture_events SET type = 'x'", [], database(url))).rejects.toThrow(
      /append-only/,
    );
  });

  it('the CLI reads and changes it through --db and VCL_CAPTURE_DB', async () => {
    const url = await cluster.createDatabase();
    const store = await openPostgresStore(url);
    await seed(store);
    await store.createCapture({ ...base, id: 'cli-1', computer: 'pc-01' });
    await store.failCapture('cli-1', { code: 'TIMEOUT', step: 'copy', message: 'slow' }, 'maintenance');
    await store.close();
    const bin = new URL('../../src/cli/bin.mjs', import.meta.url).pathname;
    const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
      new Promise<{ code: number | null; stdout: string }>((resolve) => {
        const child = spawn(process.execPath, [bin, ...args], { env: { ...process.env, ...env } });
        let stdout = '';
        child.stdout.on('data', (d: Buffer) => {
          stdout += d.toString();
        });
        child.on('close', (code) => resolve({ code, stdout }));
      });
    const listed = await cli(['captures', '--db', url, '--json']);
    expect(listed.code).toBe(0);
    expect(
      (JSON.parse(listed.stdout) as { id: string; status: string }[]).map((c) => [c.id, c.status]),
    ).toEqual([['cli-1', 'failed']]);
    const released = await cli(['release', 'pc-01', '--reason', 'looked at it', '--json'], {
      VCL_CAPTURE_DB: url,
    });
    expect(released.code).toBe(0);
    const after = await openPostgresStore(url);
    expect((await after.getComputer('pc-01'))?.state).toBe('available');
    expect((await after.getCapture('cli-1'))?.events.at(-1)?.type).toBe('computer.released');
    await after.close();
  }, 60_000);

  describe('several runners writing at once', () => {
    let url: string;
    let stores: CaptureStore[];
    beforeAll(async () => {
      url = await cluster.createDatabase();
      stores = await Promise.all(Array.from({ length: 4 }, () => openPostgresStore(url, { poolSize: 2 })));
      await seed(stores[0] as CaptureStore);
    });
    afterAll(async () => {
      for (const s of stores ?? []) await s.close();
    });

    it('a reservation race: exactly one wins each round, the others get COMPUTER_BUSY and write nothing', async () => {
      for (let round = 0; round < 5; round++) {
        const results = await Promise.allSettled(
          stores.map((s, i) => s.createCapture({ ...base, id: `r${round}-${i}`, computer: 'pc-02' })),
        );
        const won = results.filter((r) => r.status === 'fulfilled');
        expect(won).toHaveLength(1);
        for (const r of results)
          if (r.status === 'rejected') expect((r.reason as { code?: string }).code).toBe('COMPUTER_BUSY');
        const winner = (won[0] as PromiseFulfilledResult<{ id: string }>).value.id;
        await stores[0]?.failCapture(winner, { code: 'X', step: 's', message: 'm' }, 'restore');
      }
      const captures = await stores[0]?.listCaptures({ computer: 'pc-02' });
      expect(captures?.map((c) => c.status)).toEqual(Array(5).fill('failed'));
    });

    it('runners claiming queued captures at once get disjoint ones, every capture claimed once', async () => {
      const computers = Array.from({ length: 40 }, (_, i) => ({ name: `q-pc-${i}` }));
      await stores[0]?.registerComputers(computers);
      for (const { name } of computers)
        await stores[0]?.createCapture({ ...base, id: `queued-${name}`, computer: name, reserve: false });
      const claims = await Promise.all(
        stores.map(async (s, i) => {
          const mine: string[] = [];
          for (;;) {
            const got = await s.claimQueuedCaptures(`runner-${i}`, { leaseMs: 60_000, limit: 3 });
            if (got.length === 0) return mine;
            mine.push(...got.map((c) => c.id));
          }
        }),
      );
      const all = claims.flat();
      expect(all).toHaveLength(40);
      expect(new Set(all).size).toBe(40);
      const events = await cluster.query<{ n: number }>(
        "SELECT count(*)::int AS n FROM capture_events WHERE type = 'capture.claimed'",
        [],
        database(url),
      );
      expect(events[0]?.n).toBe(40);
    });

    it('concurrent transitions of one capture all land, numbered without gap or repeat', async () => {
      await stores[0]?.createCapture({ ...base, id: 'busy', computer: 'pc-03' });
      await Promise.all(
        stores.flatMap((s, i) =>
          Array.from({ length: 10 }, (_, j) =>
            s.recordTransition('busy', { stateValue: `s${i}-${j}`, event: { type: 'state.entered' } }),
          ),
        ),
      );
      const detail = await stores[1]?.getCapture('busy');
      expect(detail?.events.map((e) => e.seq)).toEqual(Array.from({ length: 42 }, (_, i) => i + 1));
      expect(detail?.eventCount).toBe(42);
    });

    // A state change runs at READ COMMITTED, as one statement (TxKind 'row'): its fence must still hold
    // against a claim that takes the capture while the state change waits for the row.
    it('a state change waiting behind a claim of its capture is fenced when the claim commits, and writes nothing', async () => {
      const store = stores[0] as CaptureStore;
      const created = await store.createCapture({
        ...base,
        id: 'held',
        computer: 'pc-01',
        owner: 'runner-a',
        leaseMs: 60_000,
      });
      const fence = { owner: 'runner-a', generation: created.generation };
      const before = await store.getCapture('held');
      const claimer = new pg.Client({ connectionString: url });
      await claimer.connect();
      try {
        // Another runner's claim, held open: its row lock is what the state change must wait for.
        await claimer.query('BEGIN');
        await claimer.query(
          "UPDATE captures SET owner = 'runner-b', generation = generation + 1 WHERE id = 'held'",
        );
        const write = store
          .recordTransition('held', { stateValue: 'late', event: { type: 'state.entered' }, fence })
          .then(
            () => undefined,
            (err: unknown) => err,
          );
        const waiting = async () =>
          (
            await cluster.query<{ n: number }>(
              "SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'",
              [database(url)],
            )
          )[0]?.n ?? 0;
        for (let tries = 0; (await waiting()) === 0; tries++) {
          expect(tries, 'the state change never waited for the claim').toBeLessThan(500);
          await sleep(10);
        }
        await claimer.query('COMMIT');
        expect(await write).toMatchObject({ code: 'FENCED' });
      } finally {
        await claimer.end();
      }
      const after = await store.getCapture('held');
      expect(after?.events).toEqual(before?.events);
      expect(after).toMatchObject({ owner: 'runner-b', generation: fence.generation + 1 });
      expect(after?.stateValue).toBe(before?.stateValue);
      // The new claim's own state changes go on, numbered after the last event.
      await store.recordTransition('held', {
        stateValue: 'next',
        event: { type: 'state.entered' },
        fence: { owner: 'runner-b', generation: fence.generation + 1 },
      });
      expect((await store.getCapture('held'))?.eventCount).toBe((before?.eventCount ?? 0) + 1);
    });
  });
});
