/**
 * `computers`: the computers a store knows, their state, and for one in maintenance the capture and
 * error that put it there. `release`: an operator puts a computer back from maintenance after a look.
 */
import { isVclError } from '../../errors.js';
import { maintenanceCauseText, openStore, storeLabel } from '../../store/index.js';
import type { MaintenanceCause } from '../../store/types.js';
import { EXIT } from '../exit-codes.js';
import { cliLogger, type LogOptions } from '../logging.js';
import { table } from './store-read.js';

function causeText(cause: MaintenanceCause | null): string {
  return cause ? maintenanceCauseText(cause) : '';
}

export async function computersCommand(o: { db: string; json?: boolean }): Promise<number> {
  const store = await openStore(o.db);
  try {
    const computers = await store.describeComputers();
    if (o.json) {
      console.log(JSON.stringify(computers, null, 2));
      return EXIT.OK;
    }
    console.log(
      table(
        computers.map((c) => ({
          computer: c.name,
          state: c.state,
          'held by': c.heldBy ?? '',
          since: c.updatedAt,
          'put in maintenance by':
            c.state === 'maintenance' ? causeText(c.maintenance) || '(not a capture)' : '',
        })),
      ),
    );
    if (computers.some((c) => c.state === 'maintenance'))
      console.log(
        '\nA computer in maintenance takes no capture until an operator has looked at it and released it:\n' +
          `  vcl-capture release <computer> --reason "<what was checked or fixed>" --db ${storeLabel(o.db)}`,
      );
    return EXIT.OK;
  } finally {
    await store.close();
  }
}

export async function releaseCommand(
  computer: string,
  o: LogOptions & { db: string; reason: string; json?: boolean },
): Promise<number> {
  const store = await openStore(o.db, { logger: cliLogger(o) });
  try {
    const released = await store.releaseComputer(computer, o.reason);
    if (o.json) console.log(JSON.stringify(released, null, 2));
    else
      console.log(
        `released: ${computer} is ${released.computer.state} again` +
          (released.cause
            ? ` (${causeText(released.cause)}); recorded in the audit trail of capture ${released.cause.captureId}`
            : ' (no capture had put it in maintenance)'),
      );
    return EXIT.OK;
  } catch (err) {
    if (isVclError(err, 'COMPUTER_BUSY')) {
      const holder = (err.details as { heldBy?: string } | undefined)?.heldBy;
      console.error(
        `vcl-capture: refused: ${err.message}. A capture that holds a computer hands it back itself when it ends` +
          (holder ? `; to end it now: vcl-capture cancel ${holder} --db ${storeLabel(o.db)}` : ''),
      );
      return EXIT.BUSY;
    }
    if (isVclError(err, 'INVALID_TRANSITION') || isVclError(err, 'UNKNOWN_COMPUTER')) {
      console.error(`vcl-capture: ${err.message}`);
      return EXIT.BAD_INPUT;
    }
    throw err;
  } finally {
    await store.close();
  }
}
