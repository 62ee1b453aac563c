/**
 * `vcl-capture daemon --config inventory.yaml`: resumes the captures a previous daemon left unfinished,
 * then runs captures queued in the store (`vcl-capture capture --queue`, `runner.enqueue`) within the
 * inventory's concurrency limits, until SIGTERM or SIGINT.
 *
 * The first signal stops gracefully: no new work, each running capture goes on to its next transition,
 * which is persisted, then the process exits 0. A second signal exits at once: what is persisted is
 * consistent (every write is one transaction), and the in-flight steps re-run on the next start.
 *
 * `--listen host:port` serves the HTTP API and `/metrics` (src/api) for the same runner and store; beyond
 * loopback only with a bearer token (`VCL_CAPTURE_API_TOKEN` or `--api-token-file`).
 *
 * With `notifications` in the inventory, the daemon also delivers the store's notification outbox
 * (src/notify): at once when one of its captures ends, and every poll for what other processes wrote
 * or what is due for a retry. A missing signing secret is bad input (exit 2) before anything opens.
 */
import { checkExposure, type ListenAddress, readApiToken } from '../../api/auth.js';
import { type ApiServer, startApiServer } from '../../api/server.js';
import { loadInventoryFile } from '../../inventory/load.js';
import { createNotifier, resolveReceivers } from '../../notify/index.js';
import { openStore } from '../../store/index.js';
import { EXIT } from '../exit-codes.js';
import { cliLogger, type LogOptions } from '../logging.js';
import { startObservedRunner } from './inspect.js';

export interface DaemonOptions extends LogOptions {
  config: string;
  db: string;
  /** Longest wait for running steps at a graceful stop before they are stopped (re-run on resume). */
  stopTimeout?: number;
  leaseMs?: number;
  queuePollMs?: number;
  pollMs?: number;
  inspect?: boolean | number;
  stately?: string;
  /** Serve the HTTP API here. */
  listen?: ListenAddress;
  /** File holding the API's bearer token (else `VCL_CAPTURE_API_TOKEN`). */
  apiTokenFile?: string;
}

/** Exit code of a second signal: the process was told twice to stop and did not wait. */
const FORCED_EXIT = 128 + 15;

export async function daemonCommand(o: DaemonOptions): Promise<number> {
  const inventory = loadInventoryFile(o.config);
  // Refused before anything opens: an API exposed without a token is bad input, not a warning.
  const token = o.listen
    ? readApiToken(o.apiTokenFile === undefined ? {} : { file: o.apiTokenFile })
    : undefined;
  if (o.listen) checkExposure(o.listen, token);
  // Checked here too, so a missing secret is refused before the store is opened.
  resolveReceivers(inventory.notifications);
  const logger = cliLogger({ ...o, logLevel: o.logLevel ?? 'info' }).child({ component: 'daemon' });
  const store = await openStore(o.db, { logger });
  const { runner, inspecting, stately } = await startObservedRunner({
    store,
    inventory,
    logger,
    inspect: o.inspect,
    stately: o.stately,
    runner: {
      ...(o.pollMs ? { pollMs: o.pollMs } : {}),
      ...(o.leaseMs ? { leaseMs: o.leaseMs } : {}),
      ...(o.queuePollMs ? { queuePollMs: o.queuePollMs } : {}),
    },
  }).catch(async (err: unknown) => {
    await store.close();
    throw err;
  });
  const notifier = createNotifier({ store, config: inventory.notifications, logger });
  let api: ApiServer | undefined;
  if (o.listen) {
    try {
      api = await startApiServer({
        runner,
        store,
        listen: o.listen,
        logger,
        ...(token === undefined ? {} : { token }),
      });
    } catch (err) {
      await runner.close();
      stately?.stop();
      await inspecting?.inspector.close();
      await store.close();
      throw err;
    }
  }
  runner.on((e) => {
    if (e.type === 'finished') notifier?.kick();
    if (e.type === 'finished')
      logger.info(
        {
          captureId: e.captureId,
          status: e.result.status,
          ...(e.result.status === 'completed'
            ? {}
            : { code: e.result.error.code, step: e.result.error.step }),
        },
        'capture finished',
      );
    else if (e.type === 'resumed') logger.info({ captureId: e.captureId, state: e.state }, 'capture resumed');
  });

  let signals = 0;
  let stopRequested: () => void = () => undefined;
  const stopping = new Promise<void>((resolve) => {
    stopRequested = resolve;
  });
  const onSignal = (signal: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ signal }, 'second signal: exiting at once; in-flight steps re-run on the next start');
      process.exit(FORCED_EXIT);
    }
    logger.info({ signal }, 'stopping: no new work; running captures stop at their next transition');
    stopRequested();
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  try {
    const report = await runner.start();
    notifier?.start();
    logger.info(
      {
        runner: runner.id,
        db: o.db,
        resumed: report.resumed,
        started: report.started,
        failed: report.failed,
        notify: notifier?.receivers.map((r) => r.name) ?? [],
      },
      'daemon ready',
    );
    await stopping;
    await runner.stop(o.stopTimeout === undefined ? {} : { timeoutMs: o.stopTimeout });
    await notifier?.stop();
    logger.info('daemon stopped');
    return EXIT.OK;
  } finally {
    await notifier?.stop();
    await api?.close();
    stately?.stop();
    await inspecting?.inspector.close();
    await store.close();
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}
