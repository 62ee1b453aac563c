import { FAILURE_CODES } from '../../machines/types.js';
import { VclError } from '../errors.js';

/** Failures a driver tells apart; the machines route on some of them (TIMEOUT, NEEDS_REPAIR). */
export const DRIVER_ERROR_CODES = {
  PARSE_FAILED: 'PARSE_FAILED',
  NO_DISK: 'NO_DISK',
  TARGET_EXISTS: 'TARGET_EXISTS',
  NOT_FOUND: 'NOT_FOUND',
  AMBIGUOUS: 'AMBIGUOUS',
  UNSUPPORTED_DISK: 'UNSUPPORTED_DISK',
  NEEDS_REPAIR: 'NEEDS_REPAIR',
  NO_SPACE: 'NO_SPACE',
  UPLOAD_FAILED: 'UPLOAD_FAILED',
  VERIFY_MISMATCH: 'VERIFY_MISMATCH',
  NO_PROGRESS: 'NO_PROGRESS',
  TIMEOUT: 'TIMEOUT',
  COMMAND_FAILED: 'COMMAND_FAILED',
  PREFLIGHT_TOOL_MISSING: FAILURE_CODES.PREFLIGHT_TOOL_MISSING,
  PREFLIGHT_NO_SPACE: FAILURE_CODES.PREFLIGHT_NO_SPACE,
  BOOT_TEST_FAILED: FAILURE_CODES.BOOT_TEST_FAILED,
  /** The boot test cannot run where the image is (a repository on another host than the hypervisor). */
  BOOT_TEST_UNSUPPORTED: 'BOOT_TEST_UNSUPPORTED',
} as const;

export type DriverErrorCode = keyof typeof DRIVER_ERROR_CODES;

export function driverError(
  code: DriverErrorCode,
  message: string,
  details?: Record<string, unknown>,
): VclError {
  return new VclError(code, message, details ? { details } : {});
}
