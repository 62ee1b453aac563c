/**
 * The embedded store: one SQLite file through better-sqlite3.
 *
 * Connection settings (applied at open):
 * - `journal_mode = WAL`: readers (the CLI, the inspector) never block the runner's writes, and a
 *   commit is one append to the WAL instead of a rewrite of the pages plus a rollback journal.
 * - `synchronous = NORMAL`: in WAL mode this is still safe against corruption and against a crash of
 *   the process (a committed transaction is in the WAL); only a power loss or OS crash can lose the last
 *   few commits, which come back as an older (consistent) state: at worst a capture resumes from an
 *   earlier snapshot and repeats a step, which the machines must tolerate anyway. It saves one fsync per
 *   transaction, which is what makes thousands of state changes per second possible. `FULL` is an option.
 * - `busy_timeout`: a writer waits (default 5 s) for another process's transaction instead of failing.
 * - `foreign_keys = ON`: SQLite does not enforce foreign keys unless told, per connection.
 *
 * Every write is a `BEGIN IMMEDIATE` transaction: it takes the write lock at its start, so a
 * read-then-write inside it cannot be overtaken by another process (no `SQLITE_BUSY_SNAPSHOT` when a
 * read transaction is upgraded), and waiting for the lock goes through `busy_timeout`. The reservation
 * is nevertheless written as a conditional `UPDATE` (compare-and-swap), the form that stays correct on
 * PostgreSQL under READ COMMITTED.
 */
import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { type Logger, silentLogger } from '../log.js';
import { CaptureStoreCore, type TxKind } from './core.js';
import { asStoreError, STORE_ERROR_CODES, storeError } from './errors.js';
import { applyMigrations, checkStoreFile, MIGRATIONS, SCHEMA_VERSION } from './migrations.js';
import { type Gen, type Params, type StatementName, statements, type Tx } from './sql.js';
import { checkInteger, invalid } from './validate.js';

export interface SqliteStoreOptions {
  /** How long a write waits for another process's transaction, in ms (default 5000). */
  busyTimeoutMs?: number;
  /** `NORMAL` (default, see the module comment) or `FULL` (fsync at every commit). */
  synchronous?: 'NORMAL' | 'FULL';
  /** Clock, for tests. */
  now?: () => Date;
  /** Capture id generator when `NewCapture.id` is omitted (default `crypto.randomUUID`). */
  newCaptureId?: () => string;
  logger?: Logger;
}

/** A statement's result as the shared logic takes it: at once, with nothing to await. */
// biome-ignore lint/correctness/useYield: better-sqlite3 is synchronous, so this generator returns without yielding
function* at<T>(result: () => T): Gen<T> {
  return result();
}

/** Every statement of `sql.ts`, prepared once at open. */
function prepareStatements(db: Database.Database): Record<StatementName, Database.Statement> {
  const sql = statements({
    jsonList: (param) => `SELECT value FROM json_each(${param})`,
    // SQLite gives an INTEGER PRIMARY KEY left NULL the next rowid.
    newImageId: '@id',
    // Every write holds the file's write lock: there is nothing to skip.
    skipLocked: '',
    writesInWith: false,
  });
  const out = {} as Record<StatementName, Database.Statement>;
  for (const name of Object.keys(sql) as StatementName[]) out[name] = db.prepare(sql[name]);
  return out;
}

function isBusy(err: unknown): boolean {
  return (
    typeof err === 'object' &&
    err !== null &&
    'code' in err &&
    typeof err.code === 'string' &&
    err.code.startsWith('SQLITE_BUSY')
  );
}

/**
 * Switches the file to WAL mode and returns the journal mode SQLite reports. Leaving rollback mode needs
 * an exclusive lock, and SQLite answers `SQLITE_BUSY` at once instead of calling the busy handler when
 * another connection holds the file (two runners opening a new file together), so the wait is done here,
 * up to the busy timeout. A file already in WAL mode returns at once.
 */
function enableWal(db: Database.Database, busyTimeoutMs: number): unknown {
  const deadline = Date.now() + busyTimeoutMs;
  const pause = new Int32Array(new SharedArrayBuffer(4));
  for (let delayMs = 1; ; delayMs = Math.min(delayMs * 2, 50)) {
    try {
      return db.pragma('journal_mode = WAL', { simple: true });
    } catch (err) {
      if (!isBusy(err) || Date.now() >= deadline) throw err;
      // Opening is synchronous (and rare): block the thread briefly rather than spin.
      Atomics.wait(pause, 0, 0, delayMs);
    }
  }
}

/** Opens (creating and migrating if needed) the store at `path`. Throws a `VclError` on any problem. */
export function openSqliteStore(path: string, options: SqliteStoreOptions = {}): SqliteCaptureStore {
  return new SqliteCaptureStore(path, options);
}

export class SqliteCaptureStore extends CaptureStoreCore {
  readonly path: string;
  /** Schema version of the file after open (always {@link SCHEMA_VERSION}). */
  readonly schemaVersion: number;
  protected readonly newCaptureId: () => string;
  private readonly db: Database.Database;
  private readonly statements: Record<StatementName, Database.Statement>;
  private readonly tx: Database.Transaction<(fn: () => unknown) => unknown>;
  private readonly clock: () => Date;
  /** The statements as the shared logic calls them: they never yield (better-sqlite3 is synchronous). */
  private readonly q: Tx;

  constructor(path: string, options: SqliteStoreOptions = {}) {
    super();
    this.path = path;
    this.clock = options.now ?? (() => new Date());
    this.newCaptureId = options.newCaptureId ?? randomUUID;
    const logger = options.logger ?? silentLogger();
    const busyTimeoutMs = checkInteger(options.busyTimeoutMs ?? 5000, 'busyTimeoutMs');
    const synchronous = options.synchronous ?? 'NORMAL';
    if (synchronous !== 'NORMAL' && synchronous !== 'FULL')
      throw invalid('synchronous must be NORMAL or FULL');

    let db: Database.Database;
    try {
      db = new Database(path, { timeout: busyTimeoutMs });
    } catch (err) {
      throw storeError(
        STORE_ERROR_CODES.STORE_ERROR,
        `cannot open store ${path}: ${err instanceof Error ? err.message : String(err)}`,
        { path },
        err,
      );
    }
    try {
      db.pragma(`busy_timeout = ${busyTimeoutMs}`);
      // Refuse foreign or newer files before anything (even the journal mode) is written to them.
      checkStoreFile(db, SCHEMA_VERSION);
      const mode = enableWal(db, busyTimeoutMs);
      if (mode !== 'wal') {
        throw storeError(
          STORE_ERROR_CODES.STORE_ERROR,
          `${path}: SQLite refused WAL mode (journal_mode is ${String(mode)})`,
          {
            path,
          },
        );
      }
      db.pragma(`synchronous = ${synchronous}`);
      db.pragma('foreign_keys = ON');
      const applied = applyMigrations(db, MIGRATIONS, () => this.clock().toISOString());
      if (applied.length > 0) logger.info({ path, applied }, 'store schema migrated');
      this.schemaVersion = db.pragma('user_version', { simple: true }) as number;
      this.statements = prepareStatements(db);
    } catch (err) {
      db.close();
      const sqliteCode =
        typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string'
          ? err.code
          : '';
      if (sqliteCode === 'SQLITE_NOTADB') {
        throw storeError(
          STORE_ERROR_CODES.NOT_A_CAPTURE_STORE,
          `${path} is not an SQLite database, so not a vcl-capture store`,
          { path },
          err,
        );
      }
      throw asStoreError(err, `opening store ${path}`);
    }
    this.db = db;
    this.tx = db.transaction((fn: () => unknown) => fn());
    const clock = this.clock;
    const s = this.statements;
    this.q = {
      get: <R>(name: StatementName, params?: Params) =>
        at(
          (): R | undefined => (params === undefined ? s[name].get() : s[name].get(params)) as R | undefined,
        ),
      all: <R>(name: StatementName, params?: Params) =>
        at(() => (params === undefined ? s[name].all() : s[name].all(params)) as R[]),
      run: (name: StatementName, params?: Params) =>
        at(() => (params === undefined ? s[name].run() : s[name].run(params)).changes),
      now: () => clock().toISOString(),
      later: (ms) => new Date(clock().getTime() + ms).toISOString(),
      // No NOTIFY in SQLite: runners on a file poll it.
      notify: () => at(() => undefined),
    };
  }

  private ensureOpen(operation: string): void {
    if (!this.db.open)
      throw storeError(STORE_ERROR_CODES.STORE_CLOSED, `${operation}: the store ${this.path} is closed`);
  }

  /**
   * Runs `body` to its end inside one transaction: `BEGIN IMMEDIATE` for any write (a claim or a
   * one-row write too: SQLite has one writer at a time), a deferred (read) transaction for a read (one
   * consistent snapshot of the WAL); any throw rolls everything back.
   */
  protected transact<T>(kind: TxKind, operation: string, body: (tx: Tx) => Gen<T>): Promise<T> {
    this.ensureOpen(operation);
    const run = (): T => {
      const step = body(this.q).next();
      if (step.done !== true) throw new Error(`${operation}: an SQLite statement yielded`);
      return step.value;
    };
    try {
      return Promise.resolve((kind === 'read' ? this.tx.deferred(run) : this.tx.immediate(run)) as T);
    } catch (err) {
      throw asStoreError(err, operation);
    }
  }

  /**
   * SQLite only: folds the WAL back into the database file and truncates it (the runner may call it when
   * idle; SQLite also checkpoints on its own every 1000 pages).
   */
  checkpoint(): void {
    this.ensureOpen('checkpoint');
    this.db.pragma('wal_checkpoint(TRUNCATE)');
  }

  async close(): Promise<void> {
    if (this.db.open) this.db.close();
  }
}
