/**
 * Optional bridge to Stately's own tools through `@statelyai/inspect` (the xstate v5 successor of
 * `@xstate/inspect`, which only works with xstate v4): `--stately <ws-url>` sends the captures' inspection
 * events to a WebSocket receiver, e.g. Stately's inspector or the VS Code extension a developer runs
 * locally. Contexts and events pass through the same redaction as the built-in viewer first.
 */
import { createWebSocketInspector } from '@statelyai/inspect';
import type { InspectionEvent } from 'xstate';
import { redact } from './redact.js';

export interface StatelyBridge {
  inspect: (event: InspectionEvent) => void;
  stop(): void;
}

export function statelyBridge(url: string, secrets: readonly string[]): StatelyBridge {
  if (!/^wss?:\/\//.test(url)) throw new RangeError(`--stately expects a ws:// or wss:// URL, got ${url}`);
  const clean = <T>(v: T): T => redact(v, { secrets: [...secrets] }) as T;
  const inspector = createWebSocketInspector({
    url,
    sanitizeContext: (context) => clean(context),
    sanitizeEvent: (event) => clean(event),
  });
  return { inspect: (event) => inspector.inspect.next?.(event), stop: () => inspector.stop() };
}

/** Runs each observer given; none is allowed to break a capture. */
export function composeInspect(
  ...observers: (((event: InspectionEvent) => void) | undefined)[]
): ((event: InspectionEvent) => void) | undefined {
  const list = observers.filter((o): o is (event: InspectionEvent) => void => o !== undefined);
  if (list.length === 0) return undefined;
  return (event) => {
    for (const o of list) {
      try {
        o(event);
      } catch {
        // An inspector's failure is its own; the capture goes on.
      }
    }
  };
}
