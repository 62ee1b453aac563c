import { describe, expect, it } from 'vitest';
import { isVclError } from '../../src/errors.js';
import {
  buildImageName,
  nextRevisionName,
  parseRevisionName,
  renameRevision,
  stripNonWordCharacters,
  validateImageName,
  validateOsName,
  validatePrettyName,
  validateSafeName,
} from '../../src/store/naming.js';

function codeOf(fn: () => unknown): string | undefined {
  try {
    fn();
  } catch (err) {
    return isVclError(err) ? err.code : `not a VclError: ${String(err)}`;
  }
  return undefined;
}

describe('VCL image names', () => {
  it('builds the VCL example vmwarewin7-Base12345-v0', () => {
    expect(buildImageName({ osName: 'vmwarewin7', prettyName: 'Base', imageId: 12345 })).toBe(
      'vmwarewin7-Base12345-v0',
    );
  });

  it('drops every non-word character of the pretty name, Unicode letters included', () => {
    expect(stripNonWordCharacters('Ubuntu 22.04 (GPU) lab_A')).toBe('Ubuntu2204GPUlab_A');
    expect(buildImageName({ osName: 'ubuntu', prettyName: 'Ubuntu 22.04 (GPU)', imageId: 7 }, 3)).toBe(
      'ubuntu-Ubuntu2204GPU7-v3',
    );
    expect(buildImageName({ osName: 'win10', prettyName: 'Café Lab; rm -rf /', imageId: 9 })).toBe(
      'win10-CafLabrmrf9-v0',
    );
  });

  it('renames only the trailing -vN for a new revision', () => {
    expect(renameRevision('vmwarewin7-Base12345-v3', 4)).toBe('vmwarewin7-Base12345-v4');
    expect(renameRevision('centos7-Web-v2-Server77-v9', 10)).toBe('centos7-Web-v2-Server77-v10');
  });

  it('takes the next revision from the latest one (keeping its base), or builds revision 0', () => {
    const parts = { osName: 'vmwarewin7', prettyName: 'Renamed later', imageId: 12345 };
    expect(nextRevisionName(parts, undefined)).toBe('vmwarewin7-Renamedlater12345-v0');
    expect(nextRevisionName(parts, { name: 'vmwarewin7-Base12345-v3', revision: 3 })).toBe(
      'vmwarewin7-Base12345-v4',
    );
  });

  it('parses revision names', () => {
    expect(parseRevisionName('vmwarewin7-Base12345-v12')).toEqual({
      base: 'vmwarewin7-Base12345',
      revision: 12,
    });
    expect(parseRevisionName('vmwarewin7-Base12345')).toBeUndefined();
    expect(parseRevisionName('x-v01')).toBeUndefined();
  });

  it('refuses empty and illegal names with INVALID_IMAGE_NAME', () => {
    expect(codeOf(() => validateOsName(''))).toBe('INVALID_IMAGE_NAME');
    expect(codeOf(() => validateOsName('win-7'))).toBe('INVALID_IMAGE_NAME');
    expect(codeOf(() => validateOsName('win 7'))).toBe('INVALID_IMAGE_NAME');
    expect(codeOf(() => validateOsName('_win7'))).toBe('INVALID_IMAGE_NAME');
    expect(codeOf(() => validatePrettyName('   '))).toBe('INVALID_IMAGE_NAME');
    expect(codeOf(() => validatePrettyName('!!! ???'))).toBe('INVALID_IMAGE_NAME');
    expect(codeOf(() => validatePrettyName('line\nbreak'))).toBe('INVALID_IMAGE_NAME');
    expect(codeOf(() => validatePrettyName('x'.repeat(61)))).toBe('INVALID_IMAGE_NAME');
    for (const bad of [
      '',
      '-v0',
      'a b-v0',
      'a;b-v0',
      'a/b-v0',
      '../x-v0',
      '.hidden-v0',
      '-rf-v0',
      'a$(x)-v0',
      'noversion',
      `${'a'.repeat(98)}-v0`,
    ]) {
      expect(
        codeOf(() => validateImageName(bad)),
        bad,
      ).toBe('INVALID_IMAGE_NAME');
    }
    expect(validateImageName('vmwarewin7-Base12345-v0')).toBe('vmwarewin7-Base12345-v0');
  });

  it('says what is allowed', () => {
    try {
      validateImageName('bad name-v0');
      expect.unreachable();
    } catch (err) {
      expect(String(err)).toMatch(/ASCII letters, digits, "_", "\." and "-"/);
    }
  });

  it('refuses ids and revisions that are not non-negative integers', () => {
    expect(codeOf(() => buildImageName({ osName: 'a', prettyName: 'b', imageId: 0 }))).toBe('INVALID_INPUT');
    expect(codeOf(() => buildImageName({ osName: 'a', prettyName: 'b', imageId: 1.5 }))).toBe(
      'INVALID_INPUT',
    );
    expect(codeOf(() => renameRevision('a-b1-v0', -1))).toBe('INVALID_INPUT');
  });

  it('checks computer and capture names against the same allow-list', () => {
    expect(validateSafeName('lab-pc07.example.org', 'computer name')).toBe('lab-pc07.example.org');
    for (const bad of ['', '-x', 'a b', 'a;b', 'a\nb', 'x'.repeat(101)]) {
      expect(
        codeOf(() => validateSafeName(bad, 'computer name')),
        bad,
      ).toBe('INVALID_INPUT');
    }
  });
});
