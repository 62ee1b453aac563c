/**
 * The live inspector (docs/inspector.md): watch captures move through their machines in a browser.
 *
 *     const inspector = createInspector({ store, inventory });
 *     const runner = createRunner({ inventory, store, inspect: inspector.inspect });
 *     inspector.attach(runner);
 *     const { url } = await inspector.listen({ port: 7780 });
 *
 * The inventory is only read for the secrets it leads to (keys, passphrases), which are then cut out of
 * everything shown; the inventory itself is never served.
 */
import { type HubOptions, InspectorHub, type RunnerLike } from './hub.js';
import { secretsOfInventory } from './redact.js';
import { type InspectorServer, startInspectorServer } from './server.js';

export const DEFAULT_INSPECT_PORT = 7780;

export interface InspectorOptions extends HubOptions {
  /** Read only to learn which strings are secrets (added to `secrets`). */
  inventory?: unknown;
  /** Where `passphraseEnv` variables are looked up (default process.env). */
  env?: NodeJS.ProcessEnv;
}

export interface Inspector {
  hub: InspectorHub;
  /** The `inspect` option of `createRunner` (and of xstate's `createActor`). */
  inspect: InspectorHub['inspect'];
  /** Listens to a runner's state, progress and end events. */
  attach(runner: RunnerLike): () => void;
  /** Serves the page, diagrams, API and WebSocket on loopback. */
  listen(options?: { port?: number; host?: string }): Promise<InspectorServer>;
  /** Closes the server (if listening) and the hub. */
  close(): Promise<void>;
}

export function createInspector(options: InspectorOptions = {}): Inspector {
  const secrets = [
    ...(options.secrets ?? []),
    ...(options.inventory === undefined ? [] : secretsOfInventory(options.inventory, options.env)),
  ];
  const hub = new InspectorHub({ ...options, secrets });
  const servers: InspectorServer[] = [];
  return {
    hub,
    inspect: hub.inspect,
    attach: (runner) => hub.attach(runner),
    async listen(o = {}) {
      const server = await startInspectorServer({ hub, ...o });
      servers.push(server);
      return server;
    },
    async close() {
      hub.close();
      await Promise.all(servers.splice(0).map((s) => s.close()));
    },
  };
}

export type { ClientQueueOptions, Sink } from './client-queue.js';
export { ClientQueue } from './client-queue.js';
export { type HubOptions, InspectorHub, type RunnerLike, summaryOfRecord, transitionsOf } from './hub.js';
export type * from './messages.js';
export { REDACTED, redact, redactString, secretsOfInventory } from './redact.js';
export { sanitizeInspection, statePath, stateValueOf } from './sanitize.js';
export { type InspectorServer, machineDiagrams, startInspectorServer } from './server.js';
