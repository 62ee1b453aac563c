/**
 * Where an image revision lives: a repository root and a path inside it. Pure functions, no I/O.
 *
 * Repositories are directories on remote Linux hosts (ESXi datastores, libvirt image directories,
 * xCAT install trees), so paths are POSIX whatever the runner's platform is. Spaces are allowed
 * (`/vmfs/volumes/datastore 1` is a common datastore name); what is refused:
 * - empty strings, NUL, newlines and every other control character;
 * - a repository that is not absolute;
 * - any `..` segment, even one that would resolve back inside (a location is never allowed to climb);
 * - an absolute path that is not under the repository root, or a path naming the root itself.
 * Symbolic links cannot be checked here (the files are on another host); the runner must not follow
 * links out of a repository when it writes.
 */
import { posix } from 'node:path';
import { STORE_ERROR_CODES, storeError } from './errors.js';

/** A checked location: `path` is relative to `repository`, `absolutePath` is the two joined. */
export interface ResolvedLocation {
  repository: string;
  path: string;
  absolutePath: string;
}

// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point.
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f]/;

function checkCharacters(value: string, what: string): void {
  if (typeof value !== 'string' || value.length === 0) {
    throw storeError(STORE_ERROR_CODES.INVALID_PATH, `${what} is empty`, { [what]: value });
  }
  if (CONTROL_CHARACTERS.test(value)) {
    throw storeError(
      STORE_ERROR_CODES.INVALID_PATH,
      `${what} ${JSON.stringify(value)} contains a NUL, newline or other control character`,
      { [what]: value },
    );
  }
}

function hasDotDot(value: string): boolean {
  return value.split('/').includes('..');
}

/** Checks a repository root and returns it normalised (no trailing slash, no `.` segments). */
export function normalizeRepository(repository: string): string {
  checkCharacters(repository, 'repository');
  if (!repository.startsWith('/')) {
    throw storeError(
      STORE_ERROR_CODES.INVALID_PATH,
      `repository ${JSON.stringify(repository)} must be an absolute path`,
      { repository },
    );
  }
  if (hasDotDot(repository)) {
    throw storeError(
      STORE_ERROR_CODES.INVALID_PATH,
      `repository ${JSON.stringify(repository)} must not contain ".." segments`,
      { repository },
    );
  }
  const normalized = posix.normalize(repository);
  return normalized.length > 1 && normalized.endsWith('/') ? normalized.slice(0, -1) : normalized;
}

/**
 * Resolves `path` (relative to `repository`, or absolute under it) and proves it stays inside.
 * Throws `INVALID_PATH` for malformed input and `PATH_OUTSIDE_REPOSITORY` for any way out.
 */
export function resolveLocation(repository: string, path: string): ResolvedLocation {
  const root = normalizeRepository(repository);
  checkCharacters(path, 'path');
  if (hasDotDot(path)) {
    throw storeError(
      STORE_ERROR_CODES.PATH_OUTSIDE_REPOSITORY,
      `path ${JSON.stringify(path)} contains a ".." segment; locations inside repository ${root} may not climb`,
      { repository: root, path },
    );
  }
  const joined = posix.normalize(path.startsWith('/') ? path : posix.join(root, path));
  const absolutePath = joined.length > 1 ? joined.replace(/\/+$/, '') : joined;
  const prefix = root === '/' ? '/' : `${root}/`;
  if (!absolutePath.startsWith(prefix) || absolutePath.length <= prefix.length) {
    throw storeError(
      STORE_ERROR_CODES.PATH_OUTSIDE_REPOSITORY,
      absolutePath === root
        ? `path ${JSON.stringify(path)} names the repository ${root} itself, not a file inside it`
        : `path ${JSON.stringify(path)} resolves to ${absolutePath}, outside repository ${root}`,
      { repository: root, path, absolutePath },
    );
  }
  return { repository: root, path: absolutePath.slice(prefix.length), absolutePath };
}
