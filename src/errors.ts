/**
 * The one error type every layer of vcl-capture throws. A failure always carries a machine-readable
 * `code`, and where it is known, the capture step it happened in, so the runner, the store and the CLI
 * can report it without parsing messages.
 */
export class VclError extends Error {
  readonly code: string;
  /** The capture step (machine state or command name) the failure happened in, when known. */
  step: string | undefined;
  readonly details: Readonly<Record<string, unknown>> | undefined;

  constructor(
    code: string,
    message: string,
    options: { step?: string; cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.code = code;
    this.step = options.step;
    this.details = options.details;
  }

  /** A plain object safe to persist or send to the inspector (no stack, no cause chain). */
  toJSON(): {
    name: string;
    code: string;
    step?: string;
    message: string;
    details?: Record<string, unknown>;
  } {
    return {
      name: this.name,
      code: this.code,
      message: this.message,
      ...(this.step === undefined ? {} : { step: this.step }),
      ...(this.details === undefined ? {} : { details: { ...this.details } }),
    };
  }
}

export function isVclError(err: unknown, code?: string): err is VclError {
  return err instanceof VclError && (code === undefined || err.code === code);
}
