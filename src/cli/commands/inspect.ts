/**
 * `vcl-capture inspect`: the inspector page for a store: recent captures, replay of finished ones, and
 * the recorded states of captures another process is running. `--inspect [port]` on `demo` and
 * `capture` serves the same page with everything live (see {@link startCliInspector}).
 */
import { existsSync } from 'node:fs';
import { createInspector, DEFAULT_INSPECT_PORT, type Inspector } from '../../inspector/index.js';
import { secretsOfInventory } from '../../inspector/redact.js';
import type { InspectorServer } from '../../inspector/server.js';
import { composeInspect, type StatelyBridge, statelyBridge } from '../../inspector/stately.js';
import type { Inventory } from '../../inventory/schema.js';
import type { Logger } from '../../log.js';
import { createRunner, type Runner, type RunnerOptions } from '../../runner/runner.js';
import type { CaptureStore } from '../../store/index.js';
import { openStore, storeKind, storeLabel } from '../../store/index.js';
import { EXIT } from '../exit-codes.js';

export interface InspectOptions {
  port: number;
  db: string;
}

/** `--inspect` (true: the default port) or `--inspect <port>`. */
export function inspectPort(value: boolean | number | undefined): number | undefined {
  if (value === undefined || value === false) return undefined;
  return value === true ? DEFAULT_INSPECT_PORT : value;
}

/**
 * For `demo` and `capture --inspect`: an inspector on loopback whose URL is printed on stderr (stdout
 * stays the command's own output, JSON included). Its `inspect` goes to `createRunner`.
 */
export async function startCliInspector(
  port: number,
  store: CaptureStore,
  inventory: unknown,
): Promise<{ inspector: Inspector; server: InspectorServer }> {
  const inspector = createInspector({ store, inventory });
  try {
    const server = await inspector.listen({ port });
    console.error(`Inspector: ${server.url}  (open it in a browser; secrets are redacted)`);
    return { inspector, server };
  } catch (err) {
    await inspector.close();
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE')
      throw new RangeError(
        `--inspect: port ${port} is in use; give another one (--inspect 0 picks a free one)`,
      );
    throw err;
  }
}

export interface ObservedRunner {
  runner: Runner;
  /** With `--inspect`: the page, attached to the runner. */
  inspecting: { inspector: Inspector; server: InspectorServer } | undefined;
  /** With `--stately`: the bridge to a @statelyai/inspect receiver. */
  stately: StatelyBridge | undefined;
}

/**
 * For the commands that run captures (demo, capture, daemon): the runner, observed by the `--inspect`
 * page and the `--stately` receiver when asked. Closing them, the runner and the store is the caller's.
 */
export async function startObservedRunner(o: {
  store: CaptureStore;
  inventory: Inventory;
  logger: Logger;
  inspect: boolean | number | undefined;
  stately: string | undefined;
  runner: Omit<RunnerOptions, 'inventory' | 'store' | 'logger' | 'inspect'>;
}): Promise<ObservedRunner> {
  const port = inspectPort(o.inspect);
  const inspecting = port === undefined ? undefined : await startCliInspector(port, o.store, o.inventory);
  const stately = o.stately ? statelyBridge(o.stately, secretsOfInventory(o.inventory)) : undefined;
  const inspect = composeInspect(inspecting?.inspector.inspect, stately?.inspect);
  const runner = createRunner({
    ...o.runner,
    inventory: o.inventory,
    store: o.store,
    logger: o.logger,
    ...(inspect ? { inspect } : {}),
  });
  inspecting?.inspector.attach(runner);
  return { runner, inspecting, stately };
}

export function untilSignal(): Promise<void> {
  return new Promise<void>((resolve) => {
    const stop = () => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
}

export async function inspectCommand(o: InspectOptions): Promise<number> {
  if (storeKind(o.db) === 'sqlite' && !existsSync(o.db)) {
    console.error(
      `vcl-capture inspect: no database at ${storeLabel(o.db)} (give one with --db or VCL_CAPTURE_DB)`,
    );
    return EXIT.BAD_INPUT;
  }
  const store = await openStore(o.db);
  const inspector = createInspector({ store });
  try {
    const server = await inspector.listen({ port: o.port });
    inspector.hub.followStore(1000);
    console.log(`Inspector for ${storeLabel(o.db)}: ${server.url}`);
    console.log('Recent captures, replay of finished ones, states of running ones. Press Ctrl-C to stop.');
    await untilSignal();
    return EXIT.OK;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EADDRINUSE')
      throw new RangeError(`port ${o.port} is in use; give another with --port (0 picks a free one)`);
    throw err;
  } finally {
    await inspector.close();
    await store.close();
  }
}
