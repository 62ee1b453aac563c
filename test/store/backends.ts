/**
 * The contract suite's backends: every CaptureStore test that is not about the SQLite file itself runs
 * against both stores, through `describe.each(storeBackends())`. Call `storeBackends()` at the top level
 * of a test file: it starts one private PostgreSQL cluster for the file (`test/helpers/postgres.ts`) in
 * `beforeAll`, stops it in `afterAll`, and gives each opened store a database of its own.
 */
import Database from 'better-sqlite3';
import pg from 'pg';
import { afterEach, beforeEach } from 'vitest';
import {
  type CaptureStore,
  openPostgresStore,
  type PostgresStoreOptions,
  type SqliteStoreOptions,
} from '../../src/store/index.js';
import { clusterForSuite, type PostgresCluster, postgresAvailable } from '../helpers/postgres.js';
import { dump, openStore, seed, steppingClock, tableCounts, tempFolder } from './helpers.js';

export type BackendOptions = Pick<SqliteStoreOptions & PostgresStoreOptions, 'now' | 'newCaptureId'>;

/** One opened store with what the tests read of its database, through a connection of their own. */
export interface OpenedStore {
  store: CaptureStore;
  /** Every row of every table: what another process sees. */
  dump(): Promise<string>;
  /** Row counts of the main tables. */
  tableCounts(): Promise<Record<string, number>>;
  /** Runs SQL (several statements) through a connection of its own, as another program could. */
  exec(sql: string): Promise<void>;
  /** A second store on the same database (another process's view). */
  openAgain(options?: BackendOptions): Promise<CaptureStore>;
  /** Closes the store and every one `openAgain` opened, and removes what the database left behind. */
  cleanup(): Promise<void>;
}

export interface StoreBackend {
  name: 'sqlite' | 'postgres';
  open(options?: BackendOptions): Promise<OpenedStore>;
}

const sqlite: StoreBackend = {
  name: 'sqlite',
  async open(options = {}) {
    const folder = tempFolder();
    const path = folder.file('store.sqlite');
    const stores: CaptureStore[] = [openStore(path, options)];
    return {
      store: stores[0] as CaptureStore,
      dump: async () => dump(path),
      tableCounts: async () => tableCounts(path),
      exec: async (sql) => {
        const db = new Database(path);
        try {
          db.exec(sql);
        } finally {
          db.close();
        }
      },
      openAgain: async (again = {}) => stores[stores.push(openStore(path, again)) - 1] as CaptureStore,
      cleanup: async () => {
        for (const s of stores) await s.close();
        folder.cleanup();
      },
    };
  },
};

const MAIN_TABLES = ['computers', 'captures', 'capture_events', 'images', 'image_revisions'];

function postgres(cluster: () => PostgresCluster): StoreBackend {
  return {
    name: 'postgres',
    async open(options = {}) {
      const url = await cluster().createDatabase();
      const stores: CaptureStore[] = [await openPostgresStore(url, { now: steppingClock(), ...options })];
      const read = async <T>(fn: (client: pg.Client) => Promise<T>): Promise<T> => {
        const client = new pg.Client({ connectionString: url });
        await client.connect();
        try {
          return await fn(client);
        } finally {
          await client.end();
        }
      };
      return {
        store: stores[0] as CaptureStore,
        dump: () =>
          read(async (client) => {
            const tables = (
              await client.query<{ t: string }>(
                'SELECT tablename AS t FROM pg_tables WHERE schemaname = current_schema() ORDER BY tablename',
              )
            ).rows.map((r) => r.t);
            const out: [string, unknown[]][] = [];
            // The first column of every table is unique (its key): a stable order.
            for (const t of tables) out.push([t, (await client.query(`SELECT * FROM ${t} ORDER BY 1`)).rows]);
            return JSON.stringify(out);
          }),
        tableCounts: () =>
          read(async (client) => {
            const out: Record<string, number> = {};
            for (const t of MAIN_TABLES)
              out[t] = Number((await client.query(`SELECT count(*) AS n FROM ${t}`)).rows[0].n);
            return out;
          }),
        exec: (sql) =>
          read(async (client) => {
            await client.query(sql);
          }),
        openAgain: async (again = {}) => {
          stores.push(await openPostgresStore(url, { now: steppingClock(), ...again }));
          return stores[stores.length - 1] as CaptureStore;
        },
        cleanup: async () => {
          for (const s of stores) await s.close();
          await cluster().query(`DROP DATABASE ${new URL(url).pathname.slice(1)}`);
        },
      };
    },
  };
}

/** SQLite, and PostgreSQL when installed (see `postgresAvailable`: in CI a missing one fails). */
export function storeBackends(): StoreBackend[] {
  const backends: StoreBackend[] = [sqlite];
  if (!postgresAvailable('PostgreSQL contract suite')) return backends;
  backends.push(postgres(clusterForSuite()));
  return backends;
}

/**
 * Before each test: a fresh store of `backend` (with `options()`), seeded (see `seed`), handed to `use`;
 * after each: closed and removed.
 */
export function openEach(
  backend: StoreBackend,
  use: (opened: OpenedStore) => void,
  options: () => BackendOptions = () => ({}),
): void {
  let opened: OpenedStore | undefined;
  beforeEach(async () => {
    opened = await backend.open(options());
    use(opened);
    await seed(opened.store);
  });
  afterEach(async () => {
    await opened?.cleanup();
    opened = undefined;
  });
}
