import { VclError } from '../errors.js';

/**
 * Error codes the store throws (always as a {@link VclError}). Callers branch on `code`, never on the
 * message; messages are for people and name the things involved (computer, capture, revision, path).
 */
export const STORE_ERROR_CODES = {
  /** The computer is held by another capture (the message names it) or is in a state that forbids capture. */
  COMPUTER_BUSY: 'COMPUTER_BUSY',
  /** A compare-and-swap with `expectedVersion` found the computer at another version. */
  COMPUTER_CHANGED: 'COMPUTER_CHANGED',
  /** No computer of that name was registered. */
  UNKNOWN_COMPUTER: 'UNKNOWN_COMPUTER',
  /** An OS name, pretty name or image name breaks the naming rules (the message says what is allowed). */
  INVALID_IMAGE_NAME: 'INVALID_IMAGE_NAME',
  /** The revision (number or name) already exists: nothing is overwritten. */
  REVISION_EXISTS: 'REVISION_EXISTS',
  /** An image id is already registered with different attributes. */
  IMAGE_CONFLICT: 'IMAGE_CONFLICT',
  /** A capture with that id already exists. */
  CAPTURE_EXISTS: 'CAPTURE_EXISTS',
  /** Another runner owns the capture and its lease has not run out (the message names the owner). */
  CAPTURE_CLAIMED: 'CAPTURE_CLAIMED',
  /**
   * A runner's write names a claim (owner, generation) that is no longer the capture's: another runner
   * took it over (or it was released). Nothing was changed; the runner must drop the capture.
   */
  FENCED: 'FENCED',
  /** An artifact path resolves outside its repository (`..`, or an absolute path elsewhere). */
  PATH_OUTSIDE_REPOSITORY: 'PATH_OUTSIDE_REPOSITORY',
  /** A path or repository is malformed (empty, relative repository, NUL, newline or other control character). */
  INVALID_PATH: 'INVALID_PATH',
  /** Another live (un-deleted) revision already sits at that repository location. */
  LOCATION_IN_USE: 'LOCATION_IN_USE',
  /** Any other malformed argument (the message names the field). */
  INVALID_INPUT: 'INVALID_INPUT',
  /** The capture, image or revision does not exist. */
  NOT_FOUND: 'NOT_FOUND',
  /** The operation is not allowed from the capture's (or computer's) current status. */
  INVALID_TRANSITION: 'INVALID_TRANSITION',
  /** The database was written by a newer vcl-capture (the message names both schema versions). */
  SCHEMA_TOO_NEW: 'SCHEMA_TOO_NEW',
  /** The file is not a vcl-capture store (another application's SQLite file, or not SQLite at all). */
  NOT_A_CAPTURE_STORE: 'NOT_A_CAPTURE_STORE',
  /** A migration failed; the database was left at its previous version. */
  MIGRATION_FAILED: 'MIGRATION_FAILED',
  /** The database stayed locked by another process for longer than the busy timeout. */
  STORE_BUSY: 'STORE_BUSY',
  /** The store was closed. */
  STORE_CLOSED: 'STORE_CLOSED',
  /** Any other database failure (I/O, disk full, corruption); the SQLite error is the `cause`. */
  STORE_ERROR: 'STORE_ERROR',
} as const;

export type StoreErrorCode = (typeof STORE_ERROR_CODES)[keyof typeof STORE_ERROR_CODES];

/** Builds a store error; `details` should name the ids involved so the CLI can print them without parsing. */
export function storeError(
  code: StoreErrorCode,
  message: string,
  details?: Record<string, unknown>,
  cause?: unknown,
): VclError {
  return new VclError(code, message, {
    ...(details === undefined ? {} : { details }),
    ...(cause === undefined ? {} : { cause }),
  });
}

/**
 * Turns whatever a database call threw into a {@link VclError}: our own errors pass through, the
 * database's are wrapped (`SQLITE_BUSY*` -> `STORE_BUSY`, anything else -> `STORE_ERROR`, with SQLite's
 * code as `details.sqliteCode` or PostgreSQL's SQLSTATE as `details.pgCode`) with the original as `cause`.
 */
export function asStoreError(err: unknown, operation: string): VclError {
  if (err instanceof VclError) return err;
  const sqliteCode =
    typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : '';
  const text = err instanceof Error ? err.message : String(err);
  if (sqliteCode.startsWith('SQLITE_BUSY') || sqliteCode.startsWith('SQLITE_LOCKED')) {
    return storeError(
      STORE_ERROR_CODES.STORE_BUSY,
      `${operation}: the database stayed locked by another process past the busy timeout (${text})`,
      { sqliteCode },
      err,
    );
  }
  if (err instanceof TypeError && /not open/i.test(text)) {
    return storeError(STORE_ERROR_CODES.STORE_CLOSED, `${operation}: the store is closed`, undefined, err);
  }
  const details =
    sqliteCode === '' ? undefined : sqliteCode.startsWith('SQLITE') ? { sqliteCode } : { pgCode: sqliteCode };
  return storeError(
    STORE_ERROR_CODES.STORE_ERROR,
    `${operation} failed in the database: ${text}`,
    details,
    err,
  );
}
