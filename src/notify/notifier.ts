/**
 * The delivery worker: claims due deliveries from the store's outbox, attempts each (webhook POST or
 * command hook) under its deadline, and records the outcome: delivered, failed with the next attempt
 * after an exponential back-off with jitter, or dead once the attempts or the event's age run out.
 *
 * Claims are leases in the store, longer than an attempt can last: a worker that crashes mid-attempt
 * leaves the delivery to come back due when its lease ends, so nothing is lost (and a receiver may see
 * an event twice: it de-duplicates on the event's `id`). Several processes on one database (a daemon and
 * a foreground `vcl-capture capture`) share the work through the same claims.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { isVclError } from '../errors.js';
import type { NotificationsConfig } from '../inventory/schema.js';
import { type Logger, silentLogger } from '../log.js';
import type { NotificationDelivery, NotificationOutbox, NotificationTarget } from '../store/types.js';
import { runCommandHook } from './command.js';
import { type Receiver, type ResolveOptions, resolveReceivers } from './config.js';
import { postWebhook } from './webhook.js';

export interface NotifierOptions extends ResolveOptions {
  store: NotificationOutbox;
  /** The inventory's `notifications` section (validated). */
  config: NotificationsConfig | undefined;
  logger?: Logger;
  /** Claim owner (default `<host>/<pid>/<random>`). */
  id?: string;
  /** How often to look for due deliveries when nothing wakes the worker (default 1000 ms). */
  pollMs?: number;
  /** Deliveries attempted at once (default 4). */
  concurrency?: number;
  /** For tests: the jitter's source (default Math.random) and the HTTP client. */
  random?: () => number;
  fetch?: typeof fetch;
}

export interface NotifierStats {
  delivered: number;
  failed: number;
  dead: number;
}

export interface Notifier {
  readonly id: string;
  readonly receivers: readonly { kind: Receiver['kind']; name: string }[];
  /** Starts the background loop (a daemon); `drain` works without it. */
  start(): void;
  /** Look for due deliveries now (a capture just finished) instead of at the next poll. */
  kick(): void;
  /**
   * Attempts what is due now, once each, until nothing due is left or `timeoutMs` passed; returns the
   * number of pending deliveries left (retries scheduled later included). For a process about to exit.
   */
  drain(timeoutMs: number): Promise<number>;
  /** Stops: attempts in flight are aborted and handed back (not counted), the loop ends. */
  stop(): Promise<void>;
  stats(): NotifierStats;
}

/** Delay before attempt `attempts + 1`: exponential, capped, with jitter (half fixed, half random). */
export function backoffMs(
  attempts: number,
  retry: { initialDelayMs: number; maxDelayMs: number },
  random: () => number = Math.random,
): number {
  const exp = Math.min(retry.maxDelayMs, retry.initialDelayMs * 2 ** Math.max(0, attempts - 1));
  return Math.round(exp / 2 + (exp / 2) * random());
}

/** Extra lease beyond the longest attempt: the time to record the outcome on a loaded machine. */
const LEASE_MARGIN_MS = 5_000;

/**
 * A notifier for the configured receivers, or undefined when none is configured. Reads the secrets now:
 * throws INVALID_INVENTORY naming the field when one is missing.
 */
export function createNotifier(o: NotifierOptions): Notifier | undefined {
  const receivers = resolveReceivers(o.config, o);
  const retry = o.config?.retry;
  if (receivers.length === 0 || retry === undefined) return undefined;
  const byName = new Map(receivers.map((r) => [r.name, r]));
  const targets: NotificationTarget[] = receivers.map((r) => ({ name: r.name, events: r.events }));
  const id = o.id ?? `${hostname()}/${process.pid}/${randomBytes(3).toString('hex')}`;
  const log = (o.logger ?? silentLogger()).child({ component: 'notify' });
  const pollMs = o.pollMs ?? 1000;
  const concurrency = o.concurrency ?? 4;
  const random = o.random ?? Math.random;
  const leaseMs = Math.max(...receivers.map((r) => r.timeoutMs)) + LEASE_MARGIN_MS;
  const stats: NotifierStats = { delivered: 0, failed: 0, dead: 0 };
  const stopping = new AbortController();
  let wake: (() => void) | undefined;
  let kicked = false;
  let loop: Promise<void> | undefined;

  const attempt = async (d: NotificationDelivery, signal: AbortSignal): Promise<void> => {
    const receiver = byName.get(d.target);
    const where = { delivery: d.id, receiver: d.target, event: d.event.type, eventId: d.event.id };
    let outcome: Parameters<NotificationOutbox['finishDelivery']>[1];
    try {
      if (receiver === undefined) throw new Error('no such receiver configured here');
      if (receiver.kind === 'webhook') await postWebhook(receiver, d.event, signal, o.fetch);
      else await runCommandHook(receiver, d.event, signal);
      outcome = { result: 'delivered' };
      stats.delivered += 1;
      log.info({ ...where, attempts: d.attempts + 1 }, 'notification delivered');
    } catch (err) {
      const error = (err as Error).message;
      if (signal.aborted) {
        // Cut short by a stop or a drain's deadline: not the receiver's failure, not counted.
        outcome = { result: 'released' };
      } else {
        const attempts = d.attempts + 1;
        const now = Date.now();
        const retryAt = now + backoffMs(attempts, retry, random);
        const expired = retryAt - Date.parse(d.event.occurredAt) > retry.maxAgeMs;
        if (attempts >= retry.maxAttempts || expired) {
          outcome = { result: 'failed', error, retryAt: null };
          stats.dead += 1;
          log.error(
            { ...where, attempts, error },
            `notification given up after ${attempts} attempt${attempts === 1 ? '' : 's'}: see \`vcl-capture notifications --status dead\``,
          );
        } else {
          outcome = { result: 'failed', error, retryAt: new Date(retryAt).toISOString() };
          stats.failed += 1;
          log.warn(
            { ...where, attempts, error, retryInMs: retryAt - now },
            'notification attempt failed; retrying later',
          );
        }
      }
    }
    try {
      await o.store.finishDelivery(d.id, outcome);
    } catch (err) {
      // Our lease ran out and another worker recorded this delivery: its record stands.
      if (isVclError(err, 'INVALID_TRANSITION'))
        log.debug({ ...where, err }, 'delivery recorded by another worker');
      else throw err;
    }
  };

  /** One claim and its attempts; returns how many deliveries were claimed. */
  const round = async (signal: AbortSignal): Promise<number> => {
    const batch = await o.store.claimNotifications(id, {
      targets,
      leaseMs,
      limit: concurrency,
      maxAgeMs: retry.maxAgeMs,
    });
    await Promise.all(batch.map((d) => attempt(d, signal)));
    return batch.length;
  };

  const pause = () =>
    new Promise<void>((resolve) => {
      if (kicked || stopping.signal.aborted) {
        kicked = false;
        resolve();
        return;
      }
      const timer = setTimeout(done, pollMs);
      function done() {
        clearTimeout(timer);
        wake = undefined;
        kicked = false;
        resolve();
      }
      wake = done;
    });

  const run = async () => {
    while (!stopping.signal.aborted) {
      try {
        if ((await round(stopping.signal)) > 0) continue;
      } catch (err) {
        // The store may be busy or closing: say so, and try again at the next poll.
        if (!stopping.signal.aborted) log.warn({ err }, 'notification round failed');
      }
      await pause();
    }
  };

  return {
    id,
    receivers: receivers.map((r) => ({ kind: r.kind, name: r.name })),
    start() {
      loop ??= run();
    },
    kick() {
      kicked = true;
      wake?.();
    },
    async drain(timeoutMs: number) {
      const signal = AbortSignal.any([stopping.signal, AbortSignal.timeout(timeoutMs)]);
      while (!signal.aborted) {
        if ((await round(signal)) === 0) break;
      }
      return (await o.store.countNotifications()).pending;
    },
    async stop() {
      stopping.abort();
      wake?.();
      await loop;
    },
    stats: () => ({ ...stats }),
  };
}
