/** `vcl-capture capture <computer> --image <name>`: one capture against real hosts from an inventory file. */
import type { EndState } from '../../../machines/index.js';
import { isVclError } from '../../errors.js';
import { loadInventoryFile } from '../../inventory/load.js';
import type { Logger } from '../../log.js';
import { createNotifier, type Notifier } from '../../notify/index.js';
import { cancelThroughStore } from '../../runner/cancel.js';
import type { CaptureRunResult } from '../../runner/runner.js';
import { openStore, storeLabel } from '../../store/index.js';
import { EXIT, exitCodeForResult } from '../exit-codes.js';
import { cliLogger, type LogOptions } from '../logging.js';
import { progressView } from '../progress.js';
import { startObservedRunner } from './inspect.js';

export interface CaptureOptions extends LogOptions {
  image: string;
  endState?: EndState;
  config: string;
  db: string;
  owner: string;
  json?: boolean;
  /** Record the capture as queued for a daemon and return. */
  queue?: boolean;
  pollMs?: number;
  /** `--inspect [port]`: serve the live inspector while the capture runs. */
  inspect?: boolean | number;
  /** `--stately <ws-url>`: also send inspection events to a Stately (@statelyai/inspect) receiver. */
  stately?: string;
}

export function resultSummary(result: CaptureRunResult) {
  return result.status === 'completed'
    ? {
        status: result.status,
        captureId: result.captureId,
        image: result.image.name,
        path: result.artifact.path,
        sizeBytes: result.artifact.sizeBytes,
        sha256: result.artifact.sha256,
        warnings: result.warnings,
      }
    : {
        status: result.status,
        captureId: result.captureId,
        image: result.image.name,
        error: result.error,
        warnings: result.warnings,
        cleanupFailures: result.cleanupFailures,
      };
}

/** How long `capture` waits, after the capture, for its notifications' first attempts. */
const NOTIFY_DRAIN_MS = 15_000;

/**
 * The notifier of a foreground capture: it makes the first attempt of the capture's notifications
 * before the command exits; whatever is not delivered then (receiver down, retry due later, a secret
 * this shell lacks) stays in the store's outbox for a daemon on the same database.
 */
function foregroundNotifier(
  store: Parameters<typeof createNotifier>[0]['store'],
  config: Parameters<typeof createNotifier>[0]['config'],
  logger: Logger,
): Notifier | undefined {
  try {
    return createNotifier({ store, config, logger });
  } catch (err) {
    logger.warn(
      { err: isVclError(err) ? err.message : String(err) },
      'notifications are not delivered by this command; they stay in the store for a daemon',
    );
    return undefined;
  }
}

async function deliverBeforeExit(notifier: Notifier | undefined, logger: Logger): Promise<void> {
  if (notifier === undefined) return;
  const pending = await notifier.drain(NOTIFY_DRAIN_MS);
  if (pending > 0)
    logger.warn(
      { pending },
      'notifications not delivered yet stay in the store: a `vcl-capture daemon` on this database retries them',
    );
}

export async function captureCommand(computer: string, o: CaptureOptions): Promise<number> {
  const inventory = loadInventoryFile(o.config);
  const entry = inventory.computers[computer];
  const logger = cliLogger(o);
  const store = await openStore(o.db, { logger });
  const { runner, inspecting, stately } = await startObservedRunner({
    store,
    inventory,
    logger,
    inspect: o.inspect,
    stately: o.stately,
    runner: o.pollMs ? { pollMs: o.pollMs } : {},
  }).catch(async (err: unknown) => {
    await store.close();
    throw err;
  });
  try {
    const existing = (await store.listImages()).find((i) => i.prettyName === o.image);
    const request = {
      computer,
      image: existing ? existing.id : { osName: entry?.os ?? 'linux', prettyName: o.image, owner: o.owner },
      ...(o.endState ? { endState: o.endState } : {}),
    };
    if (o.queue) {
      const queued = await runner.enqueue(request);
      if (o.json)
        console.log(
          JSON.stringify({ status: 'queued', captureId: queued.id, image: queued.image.name }, null, 2),
        );
      else
        console.log(
          `queued: ${queued.id} (${queued.image.name}); a \`vcl-capture daemon --db ${storeLabel(o.db)}\` runs it`,
        );
      return EXIT.OK;
    }
    const handle = await runner.capture(request);
    const view = o.json
      ? undefined
      : progressView(new Map([[handle.id, `${computer} ${handle.image.name}`]]));
    const off = runner.on((e) => view?.handle(e));
    // Ctrl-C cancels: cleanup runs; a second Ctrl-C leaves at once (the store stays consistent).
    let interrupts = 0;
    const onSignal = () => {
      interrupts += 1;
      if (interrupts > 1) process.exit(EXIT.CANCELLED);
      handle.cancel('interrupted by the operator');
    };
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
    const result = await handle.result;
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    off();
    view?.stop();
    await deliverBeforeExit(foregroundNotifier(store, inventory.notifications, logger), logger);
    if (o.json) console.log(JSON.stringify(resultSummary(result), null, 2));
    else if (result.status === 'completed')
      console.log(
        `completed: ${result.image.name} at ${result.artifact.path} (${result.artifact.sizeBytes} bytes, sha256 ${result.artifact.sha256})`,
      );
    else
      console.log(`${result.status}: ${result.error.code} in ${result.error.step}: ${result.error.message}`);
    return exitCodeForResult(result.status, result.status === 'completed' ? undefined : result.error.code);
  } catch (err) {
    if (o.json && isVclError(err))
      console.log(JSON.stringify({ status: 'refused', error: err.toJSON() }, null, 2));
    throw err;
  } finally {
    await runner.close();
    stately?.stop();
    if (inspecting) {
      console.error(
        `Inspector closed; replay this capture with: vcl-capture inspect --db ${storeLabel(o.db)}`,
      );
      await inspecting.inspector.close();
    }
    await store.close();
  }
}

/** `vcl-capture cancel <id>`: through the store, for a capture this process does not run. */
export async function cancelCommand(
  captureId: string,
  o: LogOptions & { db: string; reason: string },
): Promise<number> {
  const store = await openStore(o.db, { logger: cliLogger(o) });
  try {
    const { outcome } = await cancelThroughStore(store, captureId, o.reason);
    console.log(
      outcome === 'cancelled'
        ? `cancelled: ${captureId} was still queued`
        : `cancel requested: the runner of ${captureId} cancels it and cleans up (see \`vcl-capture show ${captureId}\`)`,
    );
    return EXIT.OK;
  } finally {
    await store.close();
  }
}
