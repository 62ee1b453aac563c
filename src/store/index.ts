/** The store: the runner-facing interface ({@link CaptureStore}), its SQLite and PostgreSQL implementations. */
export * from './errors.js';
export {
  APPLICATION_ID,
  applyMigrations,
  checkStoreFile,
  MIGRATIONS,
  type Migration,
  SCHEMA_VERSION,
} from './migrations.js';
export * from './naming.js';
export { type OpenStoreOptions, openStore, storeKind, storeLabel } from './open.js';
export * from './paths.js';
export {
  isPostgresUrl,
  openPostgresStore,
  PostgresCaptureStore,
  type PostgresStoreOptions,
  redactUrl,
} from './postgres.js';
export { POSTGRES_MIGRATIONS, POSTGRES_SCHEMA_VERSION } from './postgres-migrations.js';
export { openSqliteStore, SqliteCaptureStore, type SqliteStoreOptions } from './sqlite.js';
export * from './types.js';
