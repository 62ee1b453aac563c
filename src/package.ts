/**
 * Where the package's own files are, from the TypeScript sources (a clone, under tsx: `src/`) and from
 * the build (`dist/src/`, what the installed package runs) alike. Files shipped beside the code (the
 * inspector's page, the diagrams, package.json) are found from the package root, never relative to a
 * module, because a module sits one directory deeper in `dist/` than in the sources.
 */
import { readFileSync } from 'node:fs';

const NAME = 'vcl-capture';

function findRoot(): { root: URL; version: string } {
  let dir = new URL('./', import.meta.url);
  for (;;) {
    const manifest = new URL('package.json', dir);
    try {
      const pkg = JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown; version?: unknown };
      if (pkg.name === NAME && typeof pkg.version === 'string') return { root: dir, version: pkg.version };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
    const parent = new URL('../', dir);
    if (parent.href === dir.href)
      throw new Error(`${NAME}: no package.json of ${NAME} above ${import.meta.url}`);
    dir = parent;
  }
}

const found = findRoot();

/** The package root (the directory of its package.json), as a `file:` URL ending in `/`. */
export const PACKAGE_ROOT: URL = found.root;
/** The package's version (package.json). */
export const PACKAGE_VERSION: string = found.version;

/** A file or directory shipped with the package, by its path from the package root (`visualizations/`). */
export function packageFile(path: string): URL {
  return new URL(path, PACKAGE_ROOT);
}
