/**
 * The receivers of notifications, from the inventory's `notifications` section, with their secrets read
 * from the environment or a file. Everything is checked when a notifier is created (a daemon's start), so
 * a missing secret stops the daemon with a message naming the field and the fix instead of failing every
 * delivery later. The secrets stay in these objects: they are never logged, stored or sent anywhere but
 * into the HMAC.
 */
import { readFileSync } from 'node:fs';
import { VclError } from '../errors.js';
import type { NotificationsConfig } from '../inventory/schema.js';
import { NOTIFICATION_EVENT_TYPES, type NotificationEventType } from '../store/types.js';

/** Shortest accepted signing key: a shorter one is most likely a mistake (an empty or truncated file). */
export const MIN_SECRET_LENGTH = 16;

export interface WebhookReceiver {
  kind: 'webhook';
  name: string;
  url: string;
  /** The HMAC-SHA256 key. */
  secret: string;
  events: readonly NotificationEventType[];
  timeoutMs: number;
}

export interface CommandReceiver {
  kind: 'command';
  name: string;
  argv: readonly string[];
  events: readonly NotificationEventType[];
  timeoutMs: number;
}

export type Receiver = WebhookReceiver | CommandReceiver;

export interface ResolveOptions {
  env?: NodeJS.ProcessEnv;
  readFile?: (path: string) => string;
}

function configError(field: string, message: string): VclError {
  return new VclError('INVALID_INVENTORY', `the inventory is invalid:\n  ${field}: ${message}`, {
    details: { problems: [`${field}: ${message}`], field },
  });
}

function readSecret(
  secret: { env: string } | { file: string },
  field: string,
  o: Required<ResolveOptions>,
): string {
  let value: string | undefined;
  if ('env' in secret) {
    value = o.env[secret.env];
    if (value === undefined || value.trim() === '')
      throw configError(
        `${field}.env`,
        `the environment variable ${secret.env} is not set (or empty): export it in the daemon's environment ` +
          '(systemd: Environment= or EnvironmentFile=), or point secret.file at a file holding the key',
      );
  } else {
    try {
      value = o.readFile(secret.file).split(/\r?\n/)[0];
    } catch (err) {
      throw configError(
        `${field}.file`,
        `cannot read ${secret.file}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}: ` +
          'create it with the signing key on its first line, readable by the daemon only (chmod 600)',
      );
    }
  }
  const key = (value ?? '').trim();
  if (key.length < MIN_SECRET_LENGTH)
    throw configError(
      field,
      `the signing key is ${key.length} characters long; use at least ${MIN_SECRET_LENGTH} ` +
        '(e.g. the output of `openssl rand -hex 32`)',
    );
  return key;
}

/** The configured receivers with their secrets; throws INVALID_INVENTORY naming the field to fix. */
export function resolveReceivers(
  config: NotificationsConfig | undefined,
  options: ResolveOptions = {},
): Receiver[] {
  if (config === undefined) return [];
  const o = {
    env: options.env ?? process.env,
    readFile: options.readFile ?? ((path: string) => readFileSync(path, 'utf8')),
  };
  const all = (events: readonly NotificationEventType[] | undefined) => events ?? NOTIFICATION_EVENT_TYPES;
  return [
    ...config.webhooks.map(
      (w, i): WebhookReceiver => ({
        kind: 'webhook',
        name: w.name,
        url: w.url,
        secret: readSecret(w.secret, `notifications.webhooks.${i}.secret`, o),
        events: all(w.events),
        timeoutMs: w.timeoutMs,
      }),
    ),
    ...config.commands.map(
      (c): CommandReceiver => ({
        kind: 'command',
        name: c.name,
        argv: c.argv,
        events: all(c.events),
        timeoutMs: c.timeoutMs,
      }),
    ),
  ];
}
