import { describe, expect, it } from 'vitest';
import { isVclError } from '../../src/errors.js';
import {
  buildImageName,
  IMAGE_NAME_RULE,
  MAX_IMAGE_NAME_LENGTH,
  MAX_OS_NAME_LENGTH,
  MAX_PRETTY_NAME_LENGTH,
  nextRevisionName,
  OS_NAME_RULE,
  PRETTY_NAME_RULE,
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

  it('accepts names exactly at each length limit and refuses one character more', () => {
    expect(validateOsName('w'.repeat(MAX_OS_NAME_LENGTH))).toBe('w'.repeat(MAX_OS_NAME_LENGTH));
    expect(refusal(() => validateOsName('w'.repeat(MAX_OS_NAME_LENGTH + 1)))).toMatchObject({
      code: 'INVALID_IMAGE_NAME',
      message: `OS name "${'w'.repeat(31)}" is not allowed: ${OS_NAME_RULE}`,
      details: { osName: 'w'.repeat(31) },
    });
    expect(validatePrettyName('p'.repeat(MAX_PRETTY_NAME_LENGTH))).toBe('p'.repeat(60));
    const atLimit = `${'a'.repeat(MAX_IMAGE_NAME_LENGTH - 3)}-v0`;
    expect(validateImageName(atLimit)).toBe(atLimit);
    expect(refusal(() => validateImageName(`a${atLimit}`))).toMatchObject({
      message: `image name "a${atLimit}" is 101 characters long: ${IMAGE_NAME_RULE}`,
      details: { name: `a${atLimit}` },
    });
    expect(validateSafeName('c'.repeat(MAX_IMAGE_NAME_LENGTH), 'computer name')).toHaveLength(100);
  });

  it('names the field, the value and the rule in every refusal', () => {
    expect(refusal(() => validateOsName(''))).toMatchObject({
      code: 'INVALID_IMAGE_NAME',
      message: `OS name is empty: ${OS_NAME_RULE}`,
      details: { osName: '' },
    });
    expect(refusal(() => validateOsName(7 as unknown as string))).toMatchObject({
      code: 'INVALID_IMAGE_NAME',
      message: `OS name is empty: ${OS_NAME_RULE}`,
    });
    expect(refusal(() => validatePrettyName('  '))).toMatchObject({
      message: `pretty name is empty: ${PRETTY_NAME_RULE}`,
      details: { prettyName: '  ' },
    });
    expect(refusal(() => validatePrettyName(undefined as unknown as string))).toMatchObject({
      code: 'INVALID_IMAGE_NAME',
      message: `pretty name is empty: ${PRETTY_NAME_RULE}`,
    });
    expect(refusal(() => validatePrettyName('tab\there'))).toMatchObject({
      message: `pretty name "tab\\there" is not allowed: ${PRETTY_NAME_RULE}`,
      details: { prettyName: 'tab\there' },
    });
    expect(refusal(() => validatePrettyName('~~'))).toMatchObject({
      message: expect.stringContaining('has no ASCII letter or digit'),
      details: { prettyName: '~~' },
    });
    expect(refusal(() => validateImageName(''))).toMatchObject({
      message: `image name is empty: ${IMAGE_NAME_RULE}`,
      details: { name: '' },
    });
    expect(refusal(() => validateImageName(5 as unknown as string))).toMatchObject({
      code: 'INVALID_IMAGE_NAME',
    });
    expect(refusal(() => validateImageName('a b-v0'))).toMatchObject({
      message: `image name "a b-v0" has characters that are not allowed: ${IMAGE_NAME_RULE}`,
      details: { name: 'a b-v0' },
    });
    expect(refusal(() => validateImageName('noversion'))).toMatchObject({
      message: `image name "noversion" does not end in -v<revision>: ${IMAGE_NAME_RULE}`,
      details: { name: 'noversion' },
    });
    expect(refusal(() => renameRevision('noversion', 1))).toMatchObject({
      code: 'INVALID_IMAGE_NAME',
      message: 'previous revision name "noversion" does not end in -v<revision>',
      details: { name: 'noversion' },
    });
    expect(refusal(() => buildImageName({ osName: 'a', prettyName: 'b', imageId: -2 }))).toMatchObject({
      message: 'image id must be a positive integer, got -2',
      details: { imageId: -2 },
    });
    expect(refusal(() => renameRevision('a-b1-v0', 0.5))).toMatchObject({
      message: 'revision must be a non-negative integer, got 0.5',
      details: { revision: 0.5 },
    });
    expect(refusal(() => validateSafeName('a b', 'capture id'))).toMatchObject({
      code: 'INVALID_INPUT',
      message: expect.stringMatching(/^capture id "a b" is not allowed: use 1-100 ASCII letters/),
      details: { field: 'capture id', value: 'a b' },
    });
    expect(codeOf(() => validateSafeName(undefined as unknown as string, 'computer name'))).toBe(
      'INVALID_INPUT',
    );
  });

  it('returns the pretty name trimmed and takes revision numbers only while they are exact', () => {
    expect(validatePrettyName('  Base lab ')).toBe('Base lab');
    expect(parseRevisionName('x-v99999999999999999999')).toBeUndefined();
    expect(parseRevisionName('x-v9007199254740991')).toEqual({ base: 'x', revision: 9007199254740991 });
  });
});

/** The VclError `fn` throws, as a plain object; fails the test when it throws nothing. */
function refusal(fn: () => unknown): { code: string; message: string; details: unknown } {
  try {
    fn();
  } catch (err) {
    if (!isVclError(err)) throw err;
    return { code: err.code, message: err.message, details: err.details };
  }
  throw new Error('expected a refusal');
}
