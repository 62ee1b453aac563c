/** Exit codes of `vcl-capture`, documented in the README. */
export const EXIT = {
  /** The capture completed (or the command did what it was asked). */
  OK: 0,
  /**
   * The capture failed: the computer is in maintenance if the capture had touched it, else back in the
   * state it was reserved from.
   */
  FAILED: 1,
  /** Bad input: options, inventory file, image or computer names. Nothing was changed. */
  BAD_INPUT: 2,
  /** The capture was cancelled (Ctrl-C, SIGTERM). */
  CANCELLED: 3,
  /** A host could not be reached or refused us (network, authentication, host key). */
  UNREACHABLE: 4,
  /**
   * The computer may not be captured now (`COMPUTER_BUSY`): held by another capture, or in maintenance
   * (or another state a capture may not take it from). Refused before anything was recorded.
   */
  BUSY: 5,
  /** The runner stopped before the capture ended; it stays in the store and resumes on the next start. */
  SUSPENDED: 75,
  /** Anything else: a bug or an environment problem (database not writable...). */
  INTERNAL: 70,
} as const;

const UNREACHABLE_CODES = new Set([
  'SSH_UNREACHABLE',
  'SSH_AUTH_FAILED',
  'SSH_HOSTKEY_UNKNOWN',
  'SSH_HOSTKEY_MISMATCH',
  'SSH_HANDSHAKE_FAILED',
]);
const BAD_INPUT_CODES = new Set([
  'INVALID_INVENTORY',
  'UNKNOWN_COMPUTER',
  'INVALID_END_STATE',
  'INVALID_INPUT',
  'INVALID_IMAGE_NAME',
]);

export function exitCodeForError(code: string | undefined): number {
  if (code === 'COMPUTER_BUSY') return EXIT.BUSY;
  if (code && UNREACHABLE_CODES.has(code)) return EXIT.UNREACHABLE;
  if (code && BAD_INPUT_CODES.has(code)) return EXIT.BAD_INPUT;
  return EXIT.INTERNAL;
}

export function exitCodeForResult(
  status: 'completed' | 'failed' | 'cancelled' | 'suspended',
  errorCode?: string,
): number {
  if (status === 'completed') return EXIT.OK;
  if (status === 'suspended') return EXIT.SUSPENDED;
  if (status === 'cancelled') return EXIT.CANCELLED;
  // Another capture took the computer between the request's check and the reservation.
  if (errorCode === 'COMPUTER_BUSY') return EXIT.BUSY;
  return errorCode && UNREACHABLE_CODES.has(errorCode) ? EXIT.UNREACHABLE : EXIT.FAILED;
}
