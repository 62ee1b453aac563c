/**
 * CLI logging: JSON lines (pino) to `--log-file`, or to stderr; readable lines (pino-pretty) when
 * stderr is a terminal. Secrets are redacted by the shared logger config either way.
 */
import { createWriteStream } from 'node:fs';
import { pino } from 'pino';
import pretty from 'pino-pretty';
import { type Logger, REDACT_PATHS } from '../log.js';

export interface LogOptions {
  logLevel?: string;
  logFile?: string;
}

const LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'];

export function cliLogger(o: LogOptions): Logger {
  const level = o.logLevel ?? (o.logFile ? 'info' : 'warn');
  if (!LEVELS.includes(level)) throw new RangeError(`--log-level must be one of ${LEVELS.join(', ')}`);
  const base = { level, redact: { paths: REDACT_PATHS, censor: '[redacted]' } };
  if (o.logFile) return pino(base, createWriteStream(o.logFile, { flags: 'a' }));
  if (process.stderr.isTTY)
    return pino(
      base,
      pretty({ destination: 2, colorize: !process.env.NO_COLOR, translateTime: 'HH:MM:ss.l' }),
    );
  return pino(base, pino.destination(2));
}
