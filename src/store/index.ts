/** The store: the runner-facing interface ({@link CaptureStore}) and its SQLite implementation. */
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
export * from './paths.js';
export { openSqliteStore, SqliteCaptureStore, type SqliteStoreOptions } from './sqlite.js';
export * from './types.js';
