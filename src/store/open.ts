/**
 * The one way the CLI, the daemon and the inspector open a store: by location. A `postgres://` or
 * `postgresql://` URL opens the PostgreSQL store (runners on several machines); anything else is the path
 * of the embedded SQLite file (the default).
 */
import type { Logger } from '../log.js';
import { isPostgresUrl, openPostgresStore, redactUrl } from './postgres.js';
import { openSqliteStore } from './sqlite.js';
import type { CaptureStore } from './types.js';

export interface OpenStoreOptions {
  logger?: Logger;
}

/** Which backend a location names. */
export function storeKind(location: string): 'postgres' | 'sqlite' {
  return isPostgresUrl(location) ? 'postgres' : 'sqlite';
}

/** The location as it may be shown or logged: a URL without its password, a path as it is. */
export function storeLabel(location: string): string {
  return isPostgresUrl(location) ? redactUrl(location) : location;
}

/** Opens (creating and migrating if needed) the store at `location`. Throws a `VclError` on any problem. */
export async function openStore(location: string, options: OpenStoreOptions = {}): Promise<CaptureStore> {
  return isPostgresUrl(location) ? openPostgresStore(location, options) : openSqliteStore(location, options);
}
