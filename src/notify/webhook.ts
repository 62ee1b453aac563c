/**
 * One webhook attempt: POST the event as JSON, signed with HMAC-SHA256 of the exact bytes sent.
 *
 * Receivers verify (any language; Node shown):
 *
 *     const expected = 'sha256=' + createHmac('sha256', secret).update(rawBody).digest('hex');
 *     const ok = timingSafeEqual(Buffer.from(expected), Buffer.from(req.headers['x-vcl-capture-signature']));
 *
 * then de-duplicate on the body's `id` (also in `X-VCL-Capture-Delivery`): delivery is at-least-once.
 */
import { createHmac } from 'node:crypto';
import { PACKAGE_VERSION } from '../package.js';
import type { NotificationEvent } from '../store/types.js';
import type { WebhookReceiver } from './config.js';

export const SIGNATURE_HEADER = 'X-VCL-Capture-Signature';

/** `sha256=<hex>` of `body` under `secret`. */
export function signBody(secret: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(body, 'utf8').digest('hex')}`;
}

/** Longest part of a refusing receiver's answer kept in the error. */
const MAX_ANSWER = 300;

/**
 * Resolves when the receiver answered 2xx; rejects with a message saying what happened otherwise
 * (status and the start of the answer, timeout, connection error). Redirects are not followed: a
 * signed body is not re-sent to an address nobody configured.
 */
export async function postWebhook(
  receiver: WebhookReceiver,
  event: NotificationEvent,
  signal: AbortSignal,
  fetchFn: typeof fetch = fetch,
): Promise<void> {
  const body = JSON.stringify(event);
  const deadline = AbortSignal.timeout(receiver.timeoutMs);
  let response: Response;
  try {
    response = await fetchFn(receiver.url, {
      method: 'POST',
      redirect: 'manual',
      signal: AbortSignal.any([signal, deadline]),
      headers: {
        'content-type': 'application/json',
        'user-agent': `vcl-capture/${PACKAGE_VERSION}`,
        [SIGNATURE_HEADER]: signBody(receiver.secret, body),
        'X-VCL-Capture-Event': event.type,
        'X-VCL-Capture-Delivery': event.id,
        'X-VCL-Capture-Timestamp': String(Math.floor(Date.now() / 1000)),
      },
      body,
    });
  } catch (err) {
    if (deadline.aborted) throw new Error(`no answer within ${receiver.timeoutMs} ms`);
    if (signal.aborted) throw new Error('stopped');
    const cause = (err as { cause?: { code?: string; message?: string } }).cause;
    throw new Error(`cannot reach the receiver: ${cause?.code ?? cause?.message ?? (err as Error).message}`);
  }
  // Read (a bounded part of) the answer so the connection can be reused, and for the error text.
  const text = await response.text().catch(() => '');
  if (response.status >= 200 && response.status < 300) return;
  const answer = text.replace(/\s+/g, ' ').trim().slice(0, MAX_ANSWER);
  throw new Error(`HTTP ${response.status}${answer ? `: ${answer}` : ''}`);
}
