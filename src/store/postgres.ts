/**
 * The shared store: one PostgreSQL database through node-postgres (`pg`), for runners on several machines.
 *
 * - **Transactions**: every write runs at `SERIALIZABLE` isolation and is retried from the start (a fresh
 *   transaction, the operation's checks made again) when PostgreSQL reports a serialization failure or a
 *   deadlock (SQLSTATE 40001, 40P01), up to {@link PostgresStoreOptions.retries} times, then
 *   `STORE_BUSY`. So every operation behaves as if it were alone, as on SQLite, where one writer at a time
 *   holds the file; the reservation is still the same conditional `UPDATE` (compare-and-swap). Reads run
 *   at `REPEATABLE READ READ ONLY`: one consistent snapshot, never blocking writers. Two exceptions run
 *   at `READ COMMITTED`: claiming queued captures, with `SELECT ... FOR UPDATE SKIP LOCKED`, so that
 *   runners claiming at once take disjoint captures without waiting for or conflicting with each other;
 *   and a one-row write (a fenced state change with its audit event, `TxKind` `row`), one statement with
 *   no `BEGIN`/`COMMIT` around it, whose row lock orders it against every other write of that capture.
 * - **Clock**: the time of a write (`updated_at`, events, lease ends) is the database's
 *   `clock_timestamp()` read at the start of its transaction (a one-row write's statement reads
 *   `statement_timestamp()` itself), not the process's clock, so that the leases
 *   runners on different machines compare come from one clock. (A `now` option replaces it, for tests.)
 *   Times are stored as ISO-8601 text as in SQLite.
 * - **Statements** are those of `sql.ts` (`@name` numbered `$1, $2...`), prepared once per connection.
 *
 * The URL is `postgres://user[:password]@host[:port]/database` (or `postgresql://`, libpq's parameters
 * such as `?host=/run/postgresql` for a socket and `sslmode=`); a password in it never appears in a
 * message or a log line ({@link redactUrl}).
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { type Logger, silentLogger } from '../log.js';
import { CaptureStoreCore, type TxKind } from './core.js';
import { asStoreError, STORE_ERROR_CODES, storeError } from './errors.js';
import { applyPostgresMigrations, POSTGRES_SCHEMA_VERSION } from './postgres-migrations.js';
import { type Gen, type Params, type StatementName, statements, type Tx } from './sql.js';
import type { StoreSubscription, StoreWake } from './types.js';
import { checkInteger } from './validate.js';

export interface PostgresStoreOptions {
  /** Connections kept open (default 4). */
  poolSize?: number;
  /** How long a connection attempt may take, in ms (default 10000). */
  connectTimeoutMs?: number;
  /** How many times a write is retried after a serialization failure (default 20). */
  retries?: number;
  /** Clock, for tests (default: the database's clock). */
  now?: () => Date;
  /** Capture id generator when `NewCapture.id` is omitted (default `crypto.randomUUID`). */
  newCaptureId?: () => string;
  logger?: Logger;
}

/** True for a `postgres://` or `postgresql://` URL. */
export function isPostgresUrl(location: string): boolean {
  return /^postgres(ql)?:\/\//i.test(location);
}

/** The URL with its password replaced by `***`, fit for messages and logs. */
export function redactUrl(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') parsed.password = '***';
    for (const key of [...parsed.searchParams.keys()])
      if (/pass/i.test(key)) parsed.searchParams.set(key, '***');
    return parsed.toString();
  } catch {
    // Not parseable: keep the scheme, hide the rest rather than risk showing a secret.
    return `${url.split(':')[0] ?? 'postgres'}://(unparseable URL)`;
  }
}

/** The NOTIFY channel of wakes (`StoreWake` as JSON). */
const WAKE_CHANNEL = 'vcl_capture_wake';

/** How long a lost listener waits before it connects again (polling covers the gap). */
const LISTEN_RETRY_MS = 1000;

function parseWake(payload: string | undefined): StoreWake | undefined {
  try {
    const wake = JSON.parse(payload ?? '') as Partial<StoreWake> | null;
    if (wake?.kind === 'queued' || wake?.kind === 'resync') return { kind: wake.kind };
    if (wake?.kind === 'cancel' && typeof wake.captureId === 'string')
      return { kind: 'cancel', captureId: wake.captureId };
    if (wake?.kind === 'slot' && typeof wake.host === 'string') return { kind: 'slot', host: wake.host };
  } catch {
    // Someone else's payload on our channel: not a wake.
  }
  return undefined;
}

/** SQLSTATEs after which a write is tried again: serialization failure, deadlock. */
const RETRYABLE = new Set(['40001', '40P01']);

function sqlState(err: unknown): string {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
    ? err.code
    : '';
}

/** bigint (int8) columns and counts come back as numbers, as from SQLite (ids and sizes stay < 2^53). */
const TYPES = {
  getTypeParser: ((oid: number, format?: 'text' | 'binary') =>
    oid === pg.types.builtins.INT8
      ? (value: string) => Number(value)
      : pg.types.getTypeParser(oid, format ?? 'text')) as typeof pg.types.getTypeParser,
};

interface Compiled {
  /** Prepared-statement name, one per statement. */
  name: string;
  text: string;
  params: string[];
}

/** `@name` -> `$n`, in order of first appearance. */
function compile(name: string, sql: string): Compiled {
  const params: string[] = [];
  const text = sql.replace(/@([A-Za-z_]\w*)/g, (_, p: string) => {
    let i = params.indexOf(p);
    if (i < 0) i = params.push(p) - 1;
    return `$${i + 1}`;
  });
  return { name: `vcl_${name}`, text, params };
}

/** A timestamp as the store keeps times: ISO-8601 text, UTC, milliseconds (as JavaScript writes them). */
const iso = (timestamp: string) =>
  `to_char(${timestamp} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')`;

const ISO_NOW = iso('clock_timestamp()');

/**
 * The database's clock as a one-row write's statement reads it: the time the server received the
 * statement, the same at every mention of it in the statement (so the capture's `updated_at` and its
 * event's `at` are one time).
 */
const ISO_STATEMENT_TIME = iso('statement_timestamp()');

const { COMPILED, COMPILED_ROW } = (() => {
  const sql = statements({
    jsonList: (param) => `SELECT jsonb_array_elements_text(CAST(${param} AS jsonb))`,
    newImageId: 'coalesce(CAST(@id AS bigint), (SELECT coalesce(max(id), 0) + 1 FROM images))',
    skipLocked: 'FOR UPDATE SKIP LOCKED',
    writesInWith: true,
  });
  const out = {} as Record<StatementName, Compiled>;
  // The same statements for a one-row write: `@now` is the statement's own reading of the clock, one
  // round trip fewer than reading it first.
  const row = {} as Record<StatementName, Compiled>;
  for (const name of Object.keys(sql) as StatementName[]) {
    out[name] = compile(name, sql[name]);
    row[name] = compile(`row_${name}`, sql[name].replaceAll('@now', `(${ISO_STATEMENT_TIME})`));
  }
  return { COMPILED: out, COMPILED_ROW: row };
})();

/** Opens (creating the schema or migrating it if needed) the store at `url`. */
export async function openPostgresStore(
  url: string,
  options: PostgresStoreOptions = {},
): Promise<PostgresCaptureStore> {
  const where = redactUrl(url);
  const logger = options.logger ?? silentLogger();
  const pool = new pg.Pool({
    connectionString: url,
    max: checkInteger(options.poolSize ?? 4, 'poolSize', 1),
    connectionTimeoutMillis: checkInteger(options.connectTimeoutMs ?? 10_000, 'connectTimeoutMs', 1),
    types: TYPES,
  });
  // An idle connection the server drops (restart, network) must not crash the process: the next
  // operation gets a new one, or a STORE_ERROR.
  pool.on('error', (err) => logger.warn({ database: where, err: err.message }, 'store connection lost'));
  let client: pg.PoolClient;
  try {
    client = await pool.connect();
  } catch (err) {
    await pool.end().catch(() => undefined);
    throw storeError(
      STORE_ERROR_CODES.STORE_ERROR,
      `cannot open store ${where}: ${err instanceof Error ? err.message : String(err)}`,
      { database: where },
      err,
    );
  }
  const clock = options.now;
  try {
    const now = async () =>
      clock
        ? clock().toISOString()
        : ((await client.query<{ now: string }>(`select ${ISO_NOW} as now`)).rows[0]?.now ?? '');
    const stamp = await now();
    const applied = await applyPostgresMigrations(client, where, () => stamp);
    if (applied.length > 0) logger.info({ database: where, applied }, 'store schema migrated');
  } catch (err) {
    client.release();
    await pool.end().catch(() => undefined);
    throw asStoreError(err, `opening store ${where}`);
  }
  client.release();
  return new PostgresCaptureStore(pool, where, options, {
    connectionString: url,
    connectionTimeoutMillis: checkInteger(options.connectTimeoutMs ?? 10_000, 'connectTimeoutMs', 1),
  });
}

export class PostgresCaptureStore extends CaptureStoreCore {
  /** The URL without its password. */
  readonly url: string;
  /** Schema version of the database after open (always {@link POSTGRES_SCHEMA_VERSION}). */
  readonly schemaVersion = POSTGRES_SCHEMA_VERSION;
  protected readonly newCaptureId: () => string;
  private readonly pool: pg.Pool;
  private readonly clock: (() => Date) | undefined;
  private readonly retries: number;
  private readonly logger: Logger;
  /** How a listener connects (LISTEN needs a session of its own, outside the pool); holds the password. */
  private readonly listenerConfig: pg.ClientConfig | undefined;
  private readonly subscriptions = new Set<StoreSubscription>();
  private closed = false;
  /** Writes committed and tries thrown away, for {@link counters}. */
  private readonly tally = { writes: 0, retries: 0 };

  /** Use {@link openPostgresStore}, which migrates the database first. */
  constructor(pool: pg.Pool, url: string, options: PostgresStoreOptions, listenerConfig?: pg.ClientConfig) {
    super();
    this.pool = pool;
    this.url = url;
    this.clock = options.now;
    this.newCaptureId = options.newCaptureId ?? randomUUID;
    this.retries = checkInteger(options.retries ?? 20, 'retries');
    this.logger = options.logger ?? silentLogger();
    this.listenerConfig = listenerConfig;
  }

  /**
   * LISTEN on a connection of its own. A lost connection is replaced after {@link LISTEN_RETRY_MS}, then
   * `resync` is delivered (wakes sent meanwhile are lost: the caller looks at the store again). Opening
   * fails only when the store is closed; a database that cannot be reached yet is retried the same way.
   */
  override async subscribe(onWake: (wake: StoreWake) => void): Promise<StoreSubscription> {
    if (this.closed)
      throw storeError(STORE_ERROR_CODES.STORE_CLOSED, `subscribe: the store ${this.url} is closed`);
    const config = this.listenerConfig;
    if (config === undefined) return super.subscribe(onWake);
    const log = this.logger;
    const where = this.url;
    let client: pg.Client | undefined;
    let retry: NodeJS.Timeout | undefined;
    let ended = false;
    const deliver = (wake: StoreWake) => {
      try {
        onWake(wake);
      } catch (err) {
        log.warn({ err }, 'a store wake listener threw');
      }
    };
    const again = () => {
      if (ended || retry !== undefined) return;
      const old = client;
      client = undefined;
      old?.end().catch(() => undefined);
      retry = setTimeout(() => {
        retry = undefined;
        connect().catch(again);
      }, LISTEN_RETRY_MS);
      retry.unref();
    };
    const connect = async () => {
      const c = new pg.Client(config);
      c.on('notification', (n) => {
        if (n.channel !== WAKE_CHANNEL) return;
        const wake = parseWake(n.payload);
        if (wake) deliver(wake);
      });
      c.on('error', (err) => {
        log.warn({ database: where, err: err.message }, 'store listener lost; polling until it is back');
        again();
      });
      c.on('end', again);
      client = c;
      await c.connect();
      await c.query(`LISTEN ${WAKE_CHANNEL}`);
      if (ended) {
        await c.end();
        return;
      }
      deliver({ kind: 'resync' });
    };
    await connect().catch((err: unknown) => {
      log.warn(
        { database: where, err: err instanceof Error ? err.message : String(err) },
        'store listener could not connect; polling until it can',
      );
      again();
    });
    const subscription: StoreSubscription = {
      live: true,
      close: async () => {
        ended = true;
        this.subscriptions.delete(subscription);
        clearTimeout(retry);
        await client?.end().catch(() => undefined);
      },
    };
    this.subscriptions.add(subscription);
    return subscription;
  }

  /**
   * Writes (and claims) this store committed, and how many tries it threw away and started again after a
   * serialization failure or deadlock: what the benchmark reports as contention between writers.
   */
  counters(): { writes: number; retries: number } {
    return { ...this.tally };
  }

  protected async transact<T>(kind: TxKind, operation: string, body: (tx: Tx) => Gen<T>): Promise<T> {
    if (this.closed)
      throw storeError(STORE_ERROR_CODES.STORE_CLOSED, `${operation}: the store ${this.url} is closed`);
    let client: pg.PoolClient;
    try {
      client = await this.pool.connect();
    } catch (err) {
      throw asStoreError(err, operation);
    }
    // A connection that cannot even roll back is broken: it is closed, not given back to the pool.
    let broken = false;
    try {
      for (let attempt = 0; ; attempt++) {
        try {
          const result = await this.attempt(client, kind, body);
          if (kind !== 'read') this.tally.writes++;
          return result;
        } catch (err) {
          // A one-row write opened no transaction: its failed statement has rolled itself back.
          if (kind !== 'row')
            await client.query('ROLLBACK').catch(() => {
              broken = true;
            });
          if (!RETRYABLE.has(sqlState(err))) throw asStoreError(err, operation);
          if (attempt >= this.retries) {
            throw storeError(
              STORE_ERROR_CODES.STORE_BUSY,
              `${operation}: still conflicting with other writers after ${attempt + 1} attempts (${
                err instanceof Error ? err.message : String(err)
              })`,
              { pgCode: sqlState(err), attempts: attempt + 1 },
              err,
            );
          }
          this.tally.retries++;
          // Back off a little, at random, so that the writers that collided do not collide again.
          await sleep(Math.random() * Math.min(50, 2 ** attempt));
        }
      }
    } finally {
      client.release(broken);
    }
  }

  /** One try: BEGIN, the operation's statements, COMMIT (a one-row write: its statement alone). */
  private async attempt<T>(client: pg.PoolClient, kind: TxKind, body: (tx: Tx) => Gen<T>): Promise<T> {
    let start: string;
    if (kind === 'row') {
      // No BEGIN, no COMMIT, no clock reading first: three round trips fewer. The write is one
      // statement, atomic on its own, that reads the database's clock itself (COMPILED_ROW), and runs in
      // its implicit transaction at READ COMMITTED (the server's default). That is safe because every
      // check it depends on is in its WHERE on one row (TxKind 'row'): PostgreSQL re-checks the WHERE
      // against the newest version of a row another transaction changed meanwhile, under the row lock
      // the statement then holds. So a claim (generation + 1) or a completion that committed first makes
      // it match nothing (FENCED, as under SERIALIZABLE), and one that comes later waits for it; the
      // event number it takes is counted under the same lock. Predicate locks would protect nothing more
      // here and cost every state change their bookkeeping. (A server whose default isolation is
      // SERIALIZABLE runs it so: still correct, retried on a conflict like any write.)
      // `tx.now()` is then only this process's estimate, which the statements do not use.
      start = new Date().toISOString();
    } else if (kind !== 'read') {
      // One round trip: the transaction and its time. A claim relies on its row locks (READ COMMITTED:
      // SKIP LOCKED passes over rows another claim holds, which SERIALIZABLE would turn into conflicts).
      const isolation = kind === 'claim' ? 'READ COMMITTED' : 'SERIALIZABLE';
      const results = (await client.query(
        `BEGIN ISOLATION LEVEL ${isolation}; SELECT ${ISO_NOW} AS now`,
      )) as unknown as pg.QueryResult<{ now: string }>[];
      start = results[1]?.rows[0]?.now ?? new Date().toISOString();
    } else {
      await client.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
      start = new Date().toISOString();
    }
    const clock = this.clock;
    // A test clock is bound as `@now` like any time; otherwise a one-row write's statement reads its own.
    const compiled = kind === 'row' && clock === undefined ? COMPILED_ROW : COMPILED;
    const exec = (name: StatementName, params: Params | undefined) => {
      const c = compiled[name];
      return client.query({ name: c.name, text: c.text, values: c.params.map((p) => params?.[p] ?? null) });
    };
    const tx: Tx = {
      *get<R>(name: StatementName, params?: Params): Gen<R | undefined> {
        const result = (yield exec(name, params)) as pg.QueryResult;
        return result.rows[0] as R | undefined;
      },
      *all<R>(name: StatementName, params?: Params): Gen<R[]> {
        return ((yield exec(name, params)) as pg.QueryResult).rows as R[];
      },
      *run(name: StatementName, params?: Params): Gen<number> {
        return ((yield exec(name, params)) as pg.QueryResult).rowCount ?? 0;
      },
      now: () => (clock ? clock().toISOString() : start),
      later: (ms) => new Date((clock ? clock().getTime() : Date.parse(start)) + ms).toISOString(),
      *notify(wake: StoreWake): Gen<void> {
        // Sent at COMMIT, and not at all if the transaction rolls back.
        yield client.query('SELECT pg_notify($1, $2)', [WAKE_CHANNEL, JSON.stringify(wake)]);
      },
    };
    const gen = body(tx);
    let step = gen.next();
    while (step.done !== true) {
      let value: unknown;
      try {
        value = await step.value;
      } catch (err) {
        // The statement failed: the generator's own handlers do not see database errors (none has any).
        gen.return(undefined as never);
        throw err;
      }
      step = gen.next(value);
    }
    if (kind !== 'row') await client.query('COMMIT');
    return step.value;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const s of [...this.subscriptions]) await s.close();
    await this.pool.end();
  }
}
