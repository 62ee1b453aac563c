import { type Logger, type LoggerOptions, pino } from 'pino';

export type { Logger };

/**
 * Keys that must never reach a log line, wherever they sit in a logged object. pino's redaction works on
 * paths, so the common nestings are listed explicitly.
 */
const SECRET_KEYS = ['password', 'passphrase', 'privateKey', 'token', 'secret', 'key'];
export const REDACT_PATHS = SECRET_KEYS.flatMap((k) => [k, `*.${k}`, `*.*.${k}`]);

export function createLogger(options: LoggerOptions = {}): Logger {
  return pino({
    level: process.env.VCL_LOG_LEVEL ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    ...options,
  });
}

/** A logger that discards everything: the default for library use when the caller gives none. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
