/** Notifications: webhooks and command hooks told when a capture ends or a computer goes to maintenance. */
export { type CommandReceiver, type Receiver, resolveReceivers, type WebhookReceiver } from './config.js';
export {
  backoffMs,
  createNotifier,
  type Notifier,
  type NotifierOptions,
  type NotifierStats,
} from './notifier.js';
export { SIGNATURE_HEADER, signBody } from './webhook.js';
