/**
 * `notifications`: the deliveries of the notification outbox (webhooks, command hooks), newest first,
 * with their attempts and last error; `--retry <id>` makes a dead one pending again for the daemon.
 */
import { isVclError } from '../../errors.js';
import { openStore, storeLabel } from '../../store/index.js';
import type { NotificationStatus } from '../../store/types.js';
import { EXIT } from '../exit-codes.js';
import { table } from './store-read.js';

export async function notificationsCommand(o: {
  db: string;
  status?: NotificationStatus[];
  limit?: number;
  retry?: number;
  json?: boolean;
}): Promise<number> {
  const store = await openStore(o.db);
  try {
    if (o.retry !== undefined) {
      const d = await store.retryNotification(o.retry);
      if (o.json) console.log(JSON.stringify(d, null, 2));
      else
        console.log(
          `pending again: delivery ${d.id} of ${d.event.type} ${d.event.id} to ${d.target}; a running daemon attempts it at its next poll`,
        );
      return EXIT.OK;
    }
    const deliveries = await store.listNotifications({
      ...(o.status?.length ? { status: o.status } : {}),
      ...(o.limit === undefined ? {} : { limit: o.limit }),
    });
    if (o.json) {
      console.log(JSON.stringify(deliveries, null, 2));
      return EXIT.OK;
    }
    console.log(
      table(
        deliveries.map((d) => ({
          id: d.id,
          receiver: d.target,
          event: d.event.type,
          capture: d.event.capture.id,
          computer: d.event.computer.name,
          status: d.status,
          attempts: d.attempts,
          'next attempt': d.status === 'pending' ? d.nextAttemptAt : '',
          'last error': d.lastError ?? '',
        })),
      ),
    );
    const counts = await store.countNotifications();
    if (counts.dead > 0)
      console.log(
        `\n${counts.dead} notification${counts.dead === 1 ? ' was' : 's were'} given up (dead): fix the receiver, then\n` +
          `  vcl-capture notifications --retry <id> --db ${storeLabel(o.db)}`,
      );
    return EXIT.OK;
  } catch (err) {
    if (isVclError(err, 'NOT_FOUND') || isVclError(err, 'INVALID_TRANSITION')) {
      console.error(`vcl-capture: ${err.message}`);
      return EXIT.BAD_INPUT;
    }
    throw err;
  } finally {
    await store.close();
  }
}
