/**
 * VCL image naming (docs/capture-flow.md, "Naming and revisions"). Pure functions, no I/O.
 *
 * A revision name is `<os name>-<pretty name without non-word characters><image id>-v<revision>`,
 * e.g. `vmwarewin7-Base12345-v0` (OS `vmwarewin7`, pretty name `Base`, image 12345, revision 0). A new
 * revision is the previous name with its trailing `-vN` replaced (`...-v3` -> `...-v4`), so an image
 * keeps the base name its first revision got even if its pretty name changes later.
 *
 * Names end up as file names on hypervisors and repositories and as words in remote shell commands,
 * so they are checked against a strict allow-list rather than a deny-list:
 * - an image (revision) name: 1-100 ASCII letters, digits, `_`, `.` and `-`, starting with a letter
 *   or digit (so never `-option`, `.` or `..`), and ending in `-v<revision>`;
 * - an OS name: 1-30 ASCII letters, digits and `_`, starting with a letter or digit;
 * - a pretty name: 1-60 characters, no control characters, at least one ASCII letter or digit
 *   (what is kept of it in the file name: only `[A-Za-z0-9_]`; Unicode letters are dropped too,
 *   because they are not safe in every shell and file system the image passes through).
 */
import { STORE_ERROR_CODES, storeError } from './errors.js';

/** Longest image name accepted (file names get suffixes such as `-flat.vmdk` or `.img.capturedone`). */
export const MAX_IMAGE_NAME_LENGTH = 100;
/** Longest OS name accepted. */
export const MAX_OS_NAME_LENGTH = 30;
/** Longest pretty name accepted (VCL's `image.prettyname` column is 60 characters). */
export const MAX_PRETTY_NAME_LENGTH = 60;

/** Characters safe both as a file name and as an unquoted shell word; no leading `-` or `.`. */
export const SAFE_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
const OS_NAME_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_]*$/;
const REVISION_SUFFIX = /-v(0|[1-9][0-9]*)$/;
const NON_WORD = /[^A-Za-z0-9_]/g;
// Control characters (C0, DEL, C1) are never part of a name.
// biome-ignore lint/suspicious/noControlCharactersInRegex: matching control characters is the point.
const CONTROL_CHARACTERS = /[\u0000-\u001f\u007f-\u009f]/;

export const IMAGE_NAME_RULE =
  'an image name is 1-100 ASCII letters, digits, "_", "." and "-", starts with a letter or digit and ends in -v<revision>';
export const OS_NAME_RULE =
  'an OS name is 1-30 ASCII letters, digits and "_", starting with a letter or digit';
export const PRETTY_NAME_RULE =
  'a pretty name is 1-60 characters without control characters and with at least one ASCII letter or digit';

/** The parts a first revision name is built from. */
export interface ImageNameParts {
  /** VCL's OS name of the image, e.g. `vmwarewin7`, `centos7` (not the `linux`/`windows` family). */
  osName: string;
  /** The image's human name, e.g. `Base` or `Ubuntu 22.04 (GPU)`. */
  prettyName: string;
  imageId: number;
}

function invalidName(message: string, details: Record<string, unknown>) {
  return storeError(STORE_ERROR_CODES.INVALID_IMAGE_NAME, message, details);
}

/** The pretty name as it appears in file names: everything but `[A-Za-z0-9_]` removed. */
export function stripNonWordCharacters(prettyName: string): string {
  return prettyName.replace(NON_WORD, '');
}

/** Throws `INVALID_IMAGE_NAME` unless `osName` follows {@link OS_NAME_RULE}. */
export function validateOsName(osName: string): string {
  if (typeof osName !== 'string' || osName.length === 0) {
    throw invalidName(`OS name is empty: ${OS_NAME_RULE}`, { osName });
  }
  if (osName.length > MAX_OS_NAME_LENGTH || !OS_NAME_PATTERN.test(osName)) {
    throw invalidName(`OS name ${JSON.stringify(osName)} is not allowed: ${OS_NAME_RULE}`, { osName });
  }
  return osName;
}

/** Throws `INVALID_IMAGE_NAME` unless `prettyName` follows {@link PRETTY_NAME_RULE}; returns it trimmed. */
export function validatePrettyName(prettyName: string): string {
  const trimmed = typeof prettyName === 'string' ? prettyName.trim() : '';
  if (trimmed.length === 0) {
    throw invalidName(`pretty name is empty: ${PRETTY_NAME_RULE}`, { prettyName });
  }
  if (trimmed.length > MAX_PRETTY_NAME_LENGTH || CONTROL_CHARACTERS.test(trimmed)) {
    throw invalidName(`pretty name ${JSON.stringify(prettyName)} is not allowed: ${PRETTY_NAME_RULE}`, {
      prettyName,
    });
  }
  if (!/[A-Za-z0-9]/.test(trimmed)) {
    throw invalidName(
      `pretty name ${JSON.stringify(prettyName)} has no ASCII letter or digit, so nothing of it would be left in the image name: ${PRETTY_NAME_RULE}`,
      { prettyName },
    );
  }
  return trimmed;
}

/** Throws `INVALID_INPUT` unless `imageId` is a positive safe integer. */
export function validateImageId(imageId: number): number {
  if (!Number.isSafeInteger(imageId) || imageId <= 0) {
    throw storeError(
      STORE_ERROR_CODES.INVALID_INPUT,
      `image id must be a positive integer, got ${String(imageId)}`,
      {
        imageId,
      },
    );
  }
  return imageId;
}

/** Throws `INVALID_INPUT` unless `revision` is a non-negative safe integer. */
export function validateRevisionNumber(revision: number): number {
  if (!Number.isSafeInteger(revision) || revision < 0) {
    throw storeError(
      STORE_ERROR_CODES.INVALID_INPUT,
      `revision must be a non-negative integer, got ${String(revision)}`,
      { revision },
    );
  }
  return revision;
}

/** Splits `name` into its base and revision number, or `undefined` if it does not end in `-v<n>`. */
export function parseRevisionName(name: string): { base: string; revision: number } | undefined {
  const match = REVISION_SUFFIX.exec(name);
  if (!match?.[1]) return undefined;
  const revision = Number(match[1]);
  if (!Number.isSafeInteger(revision)) return undefined;
  return { base: name.slice(0, match.index), revision };
}

/** Throws `INVALID_IMAGE_NAME` unless `name` follows {@link IMAGE_NAME_RULE}; returns it. */
export function validateImageName(name: string): string {
  if (typeof name !== 'string' || name.length === 0) {
    throw invalidName(`image name is empty: ${IMAGE_NAME_RULE}`, { name });
  }
  if (name.length > MAX_IMAGE_NAME_LENGTH) {
    throw invalidName(
      `image name ${JSON.stringify(name)} is ${name.length} characters long: ${IMAGE_NAME_RULE}`,
      {
        name,
      },
    );
  }
  if (!SAFE_NAME_PATTERN.test(name)) {
    throw invalidName(
      `image name ${JSON.stringify(name)} has characters that are not allowed: ${IMAGE_NAME_RULE}`,
      {
        name,
      },
    );
  }
  const parsed = parseRevisionName(name);
  if (parsed === undefined || parsed.base.length === 0) {
    throw invalidName(`image name ${JSON.stringify(name)} does not end in -v<revision>: ${IMAGE_NAME_RULE}`, {
      name,
    });
  }
  return name;
}

/** The name of revision `revision` of a new image: `<os>-<pretty without non-word chars><id>-v<revision>`. */
export function buildImageName(parts: ImageNameParts, revision = 0): string {
  const osName = validateOsName(parts.osName);
  const pretty = stripNonWordCharacters(validatePrettyName(parts.prettyName));
  const imageId = validateImageId(parts.imageId);
  return validateImageName(`${osName}-${pretty}${imageId}-v${validateRevisionNumber(revision)}`);
}

/** VCL's rename: `previousName` with its trailing `-vN` replaced by `-v<revision>`. */
export function renameRevision(previousName: string, revision: number): string {
  const parsed = parseRevisionName(previousName);
  if (parsed === undefined) {
    throw invalidName(`previous revision name ${JSON.stringify(previousName)} does not end in -v<revision>`, {
      name: previousName,
    });
  }
  return validateImageName(`${parsed.base}-v${validateRevisionNumber(revision)}`);
}

/**
 * The name of the next revision of an image: renamed from the latest existing revision when there is
 * one (VCL keeps the base name), built from the image's parts otherwise.
 */
export function nextRevisionName(
  parts: ImageNameParts,
  latest: { name: string; revision: number } | undefined,
  revision: number = latest === undefined ? 0 : latest.revision + 1,
): string {
  return latest === undefined ? buildImageName(parts, revision) : renameRevision(latest.name, revision);
}

/**
 * Names of computers and captures also reach shell commands and file names: same allow-list as image
 * names (1-100 ASCII letters, digits, `_`, `.`, `-`, starting with a letter or digit), without the
 * revision suffix. Throws `INVALID_INPUT` naming `what`.
 */
export function validateSafeName(value: string, what: string): string {
  if (
    typeof value !== 'string' ||
    value.length === 0 ||
    value.length > MAX_IMAGE_NAME_LENGTH ||
    !SAFE_NAME_PATTERN.test(value)
  ) {
    throw storeError(
      STORE_ERROR_CODES.INVALID_INPUT,
      `${what} ${JSON.stringify(value)} is not allowed: use 1-100 ASCII letters, digits, "_", "." and "-", starting with a letter or digit`,
      { field: what, value },
    );
  }
  return value;
}
