/**
 * `vcl-capture preflight <computer>`: the checks a capture runs before it touches the computer, on
 * demand, without reserving it or recording anything. Without `--config`, against the built-in lab.
 */

import { loadInventoryFile } from '../../inventory/load.js';
import type { Inventory } from '../../inventory/schema.js';
import { startLab } from '../../lab/index.js';
import { type PreflightReport, preflight } from '../../runner/preflight.js';
import { SshPool } from '../../ssh/index.js';
import { EXIT, exitCodeForResult } from '../exit-codes.js';
import { cliLogger, type LogOptions } from '../logging.js';

export interface PreflightOptions extends LogOptions {
  config?: string;
  imageName?: string;
  json?: boolean;
}

const MARK = { ok: 'ok', failed: 'FAIL', skipped: 'skip' } as const;

function print(report: PreflightReport, where: string): void {
  console.log(`preflight of ${report.computer} (${report.provisioner}, ${where})`);
  const width = Math.max(...report.checks.map((c) => c.name.length));
  for (const c of report.checks)
    console.log(`  ${MARK[c.status].padEnd(4)}  ${c.name.padEnd(width)}  ${c.detail}`);
  console.log(
    report.ok
      ? '=> passed: a capture may start'
      : `=> failed: ${report.error?.code} (${report.error?.check}); fix it and run the preflight again`,
  );
}

export async function preflightCommand(computer: string, o: PreflightOptions): Promise<number> {
  const logger = cliLogger(o);
  let inventory: Inventory;
  let lab: Awaited<ReturnType<typeof startLab>> | undefined;
  if (o.config !== undefined) inventory = loadInventoryFile(o.config);
  else {
    if (!o.json) console.error('No --config: checking against the built-in lab (SSH hosts on 127.0.0.1).');
    lab = await startLab();
    inventory = lab.inventory;
  }
  const remote = new SshPool({ logger });
  const interrupt = new AbortController();
  const onSignal = () => interrupt.abort();
  process.once('SIGINT', onSignal);
  try {
    const report = await preflight({
      inventory,
      computer,
      remote,
      logger,
      signal: interrupt.signal,
      ...(o.imageName === undefined ? {} : { imageName: o.imageName }),
    });
    if (o.json) console.log(JSON.stringify(report, null, 2));
    else print(report, o.config ?? 'the built-in lab');
    if (report.ok) return EXIT.OK;
    // Ctrl-C stopped the checks in flight: what failed then says nothing about the hosts.
    if (interrupt.signal.aborted) return EXIT.CANCELLED;
    return exitCodeForResult('failed', report.error?.code);
  } finally {
    process.off('SIGINT', onSignal);
    await remote.close();
    await lab?.stop();
  }
}
