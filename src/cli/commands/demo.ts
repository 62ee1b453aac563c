/**
 * `vcl-capture demo` (what `npm start` runs): the built-in lab, one capture per provisioner at once, live
 * progress, then a summary that matches the store. Leaves nothing running; keeps the database to browse.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startLab } from '../../lab/index.js';
import { packageFile } from '../../package.js';
import type { CaptureRunResult } from '../../runner/runner.js';
import { openStore, storeKind, storeLabel } from '../../store/index.js';
import { EXIT } from '../exit-codes.js';
import { cliLogger, type LogOptions } from '../logging.js';
import { progressView } from '../progress.js';
import { inspectPort, startObservedRunner, untilSignal } from './inspect.js';

export const DEMO_COMPUTERS = ['lv-linux-1', 'vm-windows-1', 'xc-linux-1', 'px-linux-1'] as const;

export interface DemoOptions extends LogOptions {
  db?: string;
  json?: boolean;
  /** `--inspect [port]`: serve the live inspector (the lab then runs slower, to be watched). */
  inspect?: boolean | number;
  /** `--stately <ws-url>`: also send inspection events to a Stately (@statelyai/inspect) receiver. */
  stately?: string;
  /** Lab power-off and boot delay in ms (default 200; 1500 with --inspect). */
  stepDelay?: number;
}

export async function demoCommand(o: DemoOptions): Promise<number> {
  const dbPath =
    o.db !== undefined && storeKind(o.db) === 'postgres'
      ? o.db
      : resolve(o.db ?? join(mkdtempSync(join(tmpdir(), 'vcl-capture-demo-')), 'captures.sqlite'));
  const logger = cliLogger(o);
  const started = Date.now();
  if (!o.json)
    console.log(
      'Starting the built-in lab (SSH hosts on 127.0.0.1: libvirt, ESXi, xCAT, Proxmox VE, repository, guests)...',
    );
  const port = inspectPort(o.inspect);
  const lab = await startLab({
    powerDelayMs: o.stepDelay ?? (port === undefined ? 200 : 1500),
    diskBytes: 64 * 1024 * 1024,
    captureChunkMs: port === undefined ? 40 : 150,
    captureChunkBytes: 4 * 1024 * 1024,
  });
  const store = await openStore(dbPath, { logger });
  const { runner, inspecting, stately } = await startObservedRunner({
    store,
    inventory: lab.inventory,
    logger,
    inspect: o.inspect,
    stately: o.stately,
    runner: { pollMs: 100 },
  }).catch(async (err: unknown) => {
    await store.close();
    await lab.stop();
    throw err;
  });
  const rows: {
    computer: string;
    provisioner: string;
    endState: string;
    result: CaptureRunResult;
    ms: number;
  }[] = [];
  let finished = false;
  try {
    const handles = await Promise.all(
      DEMO_COMPUTERS.map((computer) =>
        runner.capture({
          computer,
          image: { osName: lab.computer(computer).os, prettyName: 'Demo base', owner: 'demo' },
        }),
      ),
    );
    const view = o.json
      ? undefined
      : progressView(
          new Map(handles.map((h) => [h.id, `${h.computer} (${lab.computer(h.computer).provisioner})`])),
        );
    const off = runner.on((e) => view?.handle(e));
    await Promise.all(
      handles.map(async (h) => {
        const result = await h.result;
        const record = await store.getCaptureRecord(h.id);
        rows.push({
          computer: h.computer,
          provisioner: lab.computer(h.computer).provisioner,
          endState: record?.endState ?? '',
          result,
          ms: Date.now() - started,
        });
      }),
    );
    off();
    view?.stop();
    finished = true;
  } finally {
    await runner.close();
    stately?.stop();
    await lab.stop();
    // With --inspect the page keeps reading the store after the captures (below).
    if (!inspecting || !finished) {
      await inspecting?.inspector.close();
      await store.close();
    }
  }
  rows.sort(
    (a, b) => DEMO_COMPUTERS.indexOf(a.computer as never) - DEMO_COMPUTERS.indexOf(b.computer as never),
  );
  const summary = rows.map((r) => ({
    computer: r.computer,
    provisioner: r.provisioner,
    endState: r.endState,
    image: r.result.image.name,
    status: r.result.status,
    sizeBytes: r.result.status === 'completed' ? r.result.artifact.sizeBytes : null,
    sha256: r.result.status === 'completed' ? r.result.artifact.sha256 : null,
    seconds: Number((r.ms / 1000).toFixed(1)),
    ...(r.result.status === 'completed' ? {} : { error: r.result.error }),
  }));
  const diagrams = fileURLToPath(packageFile('visualizations'));
  if (o.json) {
    console.log(JSON.stringify({ captures: summary, database: storeLabel(dbPath), diagrams }, null, 2));
  } else {
    console.log('\nSummary');
    const head = [
      'computer',
      'provisioner',
      'end state',
      'image revision',
      'size',
      'sha256',
      'time',
      'result',
    ];
    const lines = summary.map((s) => [
      s.computer,
      s.provisioner,
      s.endState,
      s.image,
      s.sizeBytes === null ? '-' : `${(s.sizeBytes / 1024 / 1024).toFixed(0)} MiB`,
      s.sha256 === null ? '-' : `${s.sha256.slice(0, 16)}…`,
      `${s.seconds.toFixed(1)} s`,
      s.status === 'completed' ? s.status : `${s.status}: ${s.error?.code} in ${s.error?.step}`,
    ]);
    const width = head.map((h, i) => Math.max(h.length, ...lines.map((l) => (l[i] ?? '').length)));
    const fmt = (cells: string[]) =>
      cells
        .map((c, i) => c.padEnd(width[i] ?? 0))
        .join('  ')
        .trimEnd();
    console.log([fmt(head), fmt(width.map((w) => '-'.repeat(w))), ...lines.map(fmt)].join('\n'));
    console.log(`\nDatabase: ${storeLabel(dbPath)}`);
    console.log(
      `  browse it: vcl-capture captures --db ${storeLabel(dbPath)}   (or: images, show <capture-id>)`,
    );
    console.log(`Diagrams of the machines: ${diagrams}/README.md`);
  }
  if (inspecting) {
    // The page keeps serving the finished captures (replay) until the operator is done with it.
    console.error(
      `Inspector still serving at ${inspecting.server.url} (replay the captures there); press Ctrl-C to stop.`,
    );
    await untilSignal();
    await inspecting.inspector.close();
    await store.close();
  }
  return summary.every((s) => s.status === 'completed') ? EXIT.OK : EXIT.FAILED;
}
