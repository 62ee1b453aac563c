import { describe, expect, it } from 'vitest';
import { isVclError } from '../../src/errors.js';
import { normalizeRepository, resolveLocation } from '../../src/store/paths.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isVclError(err) ? err.code : `not a VclError: ${String(err)}`;
  }
  return undefined;
}

describe('repository locations', () => {
  it('resolves relative and absolute paths inside the repository', () => {
    expect(resolveLocation('/install/image/x86/', 'img-v0/img-v0.img')).toEqual({
      repository: '/install/image/x86',
      path: 'img-v0/img-v0.img',
      absolutePath: '/install/image/x86/img-v0/img-v0.img',
    });
    expect(resolveLocation('/vmfs/volumes/datastore 1', '/vmfs/volumes/datastore 1//a/./b.vmdk').path).toBe(
      'a/b.vmdk',
    );
  });

  it('refuses any way out of the repository', () => {
    expect(codeOf(() => resolveLocation('/repo', '../etc/passwd'))).toBe('PATH_OUTSIDE_REPOSITORY');
    expect(codeOf(() => resolveLocation('/repo', 'a/../b'))).toBe('PATH_OUTSIDE_REPOSITORY');
    expect(codeOf(() => resolveLocation('/repo', '/etc/passwd'))).toBe('PATH_OUTSIDE_REPOSITORY');
    expect(codeOf(() => resolveLocation('/repo', '/repository-other/x'))).toBe('PATH_OUTSIDE_REPOSITORY');
    expect(codeOf(() => resolveLocation('/repo', '/repo'))).toBe('PATH_OUTSIDE_REPOSITORY');
    expect(codeOf(() => resolveLocation('/repo', '.'))).toBe('PATH_OUTSIDE_REPOSITORY');
    expect(codeOf(() => resolveLocation('/repo', '/'))).toBe('PATH_OUTSIDE_REPOSITORY');
  });

  it('refuses NUL, newlines and other control characters, and relative repositories', () => {
    expect(codeOf(() => resolveLocation('/repo', 'a\u0000b'))).toBe('INVALID_PATH');
    expect(codeOf(() => resolveLocation('/repo', 'a\nb'))).toBe('INVALID_PATH');
    expect(codeOf(() => resolveLocation('/repo', 'a\rb'))).toBe('INVALID_PATH');
    expect(codeOf(() => resolveLocation('/repo', ''))).toBe('INVALID_PATH');
    expect(codeOf(() => resolveLocation('repo', 'a'))).toBe('INVALID_PATH');
    expect(codeOf(() => normalizeRepository('/a/../b'))).toBe('INVALID_PATH');
    expect(codeOf(() => normalizeRepository('/a\nb'))).toBe('INVALID_PATH');
  });

  it('names the repository and the resolved path in its message', () => {
    try {
      resolveLocation('/repo', '/srv/x.img');
      expect.unreachable();
    } catch (err) {
      expect(String(err)).toMatch(/\/srv\/x\.img, outside repository \/repo/);
    }
  });
});
