/**
 * Store benchmark (issue 4): the two figures that tell whether the embedded store can keep up with a
 * runner driving hundreds of captures, on a real SQLite file in a temporary folder.
 *
 * 1. Sustained rate of capture state changes, each with its audit event and the machine's persisted
 *    snapshot, in one transaction (`recordTransition`), round-robin over `--running` running captures
 *    for `--seconds` seconds after a warm-up. Target: at least 5,000 per second.
 * 2. Size of the file per 1,000 finished captures: `--captures` captures created, driven through
 *    `--transitions` state changes and completed, then the store closed (WAL folded back) and the file
 *    measured, with the space per table.
 *
 * Defaults come from the machines: a dry run of every provisioner x OS makes 9-11 top-level state
 * changes per capture, with persisted snapshots of 1.7-2.2 KB of JSON (hence 12 changes of 2,000 bytes).
 *
 * Usage: npm run bench:store [-- --seconds 5 --running 200 --captures 1000 --transitions 12
 *        --snapshot-bytes 2000 --synchronous NORMAL|FULL --dir /path/on/the/disk/to/test]
 * The exit code is 1 when the rate misses the target.
 *
 * With `--postgres local` (a private cluster, fsync on) or `--postgres <url>` (an empty database of its
 * own), PostgreSQL's figures follow (bench/store-postgres.ts): state changes per second with
 * `--writers 1,4` writer processes, claim latency with 4 runner processes over a `--backlog 2000`, and
 * round trips per capture. `--skip-sqlite` runs only those.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import { availableParallelism, cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { openSqliteStore, type SqliteCaptureStore } from '../src/store/index.js';
import { postgresFigures } from './store-postgres.js';

const TARGET_PER_SECOND = 5_000;
const REPOSITORY = '/var/lib/libvirt/images';

const { values: args } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    running: { type: 'string', default: '200' },
    captures: { type: 'string', default: '1000' },
    transitions: { type: 'string', default: '12' },
    'snapshot-bytes': { type: 'string', default: '2000' },
    synchronous: { type: 'string', default: 'NORMAL' },
    dir: { type: 'string' },
    postgres: { type: 'string' },
    writers: { type: 'string', default: '1,4' },
    backlog: { type: 'string', default: '2000' },
    'skip-sqlite': { type: 'boolean', default: false },
  },
});

function positive(name: string, text: string | undefined): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got ${text}`);
  return n;
}

const seconds = positive('seconds', args.seconds);
const runningCaptures = Math.round(positive('running', args.running));
const finishedCaptures = Math.round(positive('captures', args.captures));
const transitionsPerCapture = Math.round(positive('transitions', args.transitions));
const snapshotBytes = Math.round(positive('snapshot-bytes', args['snapshot-bytes']));
const synchronous = args.synchronous === 'FULL' ? 'FULL' : 'NORMAL';

/**
 * A persisted-snapshot-shaped object of about `bytes` bytes of JSON. The varying fields keep SQLite
 * from writing the same page image again and again, as a real machine's changing context would.
 */
function snapshotFor(captureId: string, step: number): Record<string, unknown> {
  const shape = {
    status: 'active',
    value: { capture: `step_${step}` },
    historyValue: {},
    context: {
      captureId,
      computer: `pc-${captureId}`,
      image: { name: 'centos7-Lab501-v3', imageId: 501, revision: 3 },
      step: `step_${step}`,
      warnings: [],
      facts: { domain: 'vm1', disk: '/var/lib/libvirt/images/vm1.qcow2', format: 'qcow2', bootId: step },
      padding: '',
    },
    children: {},
  };
  const missing = snapshotBytes - JSON.stringify(shape).length;
  shape.context.padding = `${step}:`.padEnd(Math.max(0, missing), 'abcdefghijklmnopqrstuvwxyz0123456789');
  return shape;
}

function openBenchStore(path: string): SqliteCaptureStore {
  return openSqliteStore(path, { synchronous });
}

async function prepare(store: SqliteCaptureStore, computers: number): Promise<void> {
  await store.registerComputers(Array.from({ length: computers }, (_, i) => ({ name: `pc-${i}` })));
  await store.registerImage({ id: 501, osName: 'centos7', prettyName: 'Lab', owner: 'bench' });
}

function quantile(sorted: Float64Array, q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

interface RateResult {
  perSecond: number;
  transitions: number;
  elapsedS: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

async function measureRate(dir: string): Promise<RateResult> {
  const store = openBenchStore(join(dir, 'rate.sqlite'));
  try {
    await prepare(store, runningCaptures);
    const ids: string[] = [];
    for (let i = 0; i < runningCaptures; i++) {
      const capture = await store.createCapture({
        id: `run-${i}`,
        computer: `pc-${i}`,
        imageId: 501,
        provisioner: 'libvirt',
        os: 'linux',
        repository: REPOSITORY,
      });
      ids.push(capture.id);
    }
    let n = 0;
    const change = async () => {
      const id = ids[n % ids.length] as string;
      const step = Math.floor(n / ids.length);
      await store.recordTransition(id, {
        stateValue: { capture: `step_${step}` },
        snapshot: snapshotFor(id, step),
        machineVersion: 'libvirt@1',
        event: { type: 'state.entered', step: `step_${step}` },
      });
      n++;
    };
    const warmUpEnd = performance.now() + 500;
    while (performance.now() < warmUpEnd) await change();

    // Every latency of the run, kept in a preallocated buffer so that measuring costs no allocation.
    const latencies = new Float64Array(Math.ceil(seconds * 200_000));
    let count = 0;
    const start = performance.now();
    const end = start + seconds * 1000;
    let now = start;
    while (now < end && count < latencies.length) {
      await change();
      const after = performance.now();
      latencies[count++] = after - now;
      now = after;
    }
    const elapsedS = (now - start) / 1000;
    const sorted = latencies.subarray(0, count).sort();
    return {
      perSecond: count / elapsedS,
      transitions: count,
      elapsedS,
      p50Ms: quantile(sorted, 0.5),
      p99Ms: quantile(sorted, 0.99),
      maxMs: sorted[count - 1] ?? Number.NaN,
    };
  } finally {
    await store.close();
  }
}

interface SizeResult {
  bytes: number;
  perThousand: number;
  events: number;
  byTable: { name: string; bytes: number }[];
}

async function measureSize(dir: string): Promise<SizeResult> {
  const path = join(dir, 'size.sqlite');
  const computers = Math.min(finishedCaptures, 100);
  const store = openBenchStore(path);
  try {
    await prepare(store, computers);
    for (let i = 0; i < finishedCaptures; i++) {
      const computer = `pc-${i % computers}`;
      if (i >= computers) await store.setComputerState(computer, 'available');
      const capture = await store.createCapture({
        id: `cap-${i}`,
        computer,
        imageId: 501,
        provisioner: 'libvirt',
        os: 'linux',
        repository: REPOSITORY,
      });
      for (let t = 0; t < transitionsPerCapture; t++) {
        await store.recordTransition(capture.id, {
          stateValue: { capture: `step_${t}` },
          snapshot: snapshotFor(capture.id, t),
          machineVersion: 'libvirt@1',
          event: { type: 'state.entered', step: `step_${t}`, details: { attempt: 1 } },
        });
      }
      await store.completeCapture(capture.id, {
        path: `${capture.image.name}.qcow2`,
        sizeBytes: 21_474_836_480,
        sha256: 'ab'.repeat(32),
        format: 'qcow2',
      });
    }
  } finally {
    // The last connection to close folds the WAL back into the file and deletes it.
    await store.close();
  }
  const bytes = statSync(path).size;
  const db = new Database(path, { readonly: true });
  try {
    const events = db.prepare('SELECT count(*) FROM capture_events').pluck().get() as number;
    const byTable = db
      .prepare<[], { name: string; bytes: number }>(
        `SELECT coalesce(m.tbl_name, d.name) AS name, sum(d.pgsize) AS bytes
         FROM dbstat d LEFT JOIN sqlite_schema m ON m.name = d.name
         GROUP BY 1 ORDER BY 2 DESC`,
      )
      .all();
    return { bytes, perThousand: (bytes * 1000) / finishedCaptures, events, byTable };
  } finally {
    db.close();
  }
}

const mib = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(2)} MiB`;
const int = (n: number) => Math.round(n).toLocaleString('en-US');

async function main(): Promise<void> {
  if (!args['skip-sqlite']) await sqliteFigures();
  if (args.postgres !== undefined)
    await postgresFigures({
      target: args.postgres,
      seconds,
      running: runningCaptures,
      writers: (args.writers ?? '1,4').split(',').map((w) => Math.round(positive('writers', w))),
      backlog: Math.round(positive('backlog', args.backlog)),
      transitions: transitionsPerCapture,
      snapshot: snapshotFor,
    });
}

async function sqliteFigures(): Promise<void> {
  const dir = mkdtempSync(join(args.dir ?? tmpdir(), 'vcl-bench-store-'));
  const require = createRequire(import.meta.url);
  const betterSqlite = (require('better-sqlite3/package.json') as { version: string }).version;
  const memory = new Database(':memory:');
  const sqlite = memory.prepare('SELECT sqlite_version()').pluck().get() as string;
  memory.close();
  try {
    console.log(
      `store benchmark: better-sqlite3 ${betterSqlite}, SQLite ${sqlite}, WAL, synchronous=${synchronous}, ` +
        `Node ${process.version}, ${availableParallelism()} x ${cpus()[0]?.model.trim() ?? 'unknown CPU'}`,
    );
    console.log(`files in ${dir} (deleted afterwards)`);

    const rate = await measureRate(dir);
    const verdict = rate.perSecond >= TARGET_PER_SECOND ? 'PASS' : 'FAIL';
    console.log(
      `state changes with audit events: ${int(rate.perSecond)} /s sustained ` +
        `(${int(rate.transitions)} transactions in ${rate.elapsedS.toFixed(1)} s over ${runningCaptures} running captures, ` +
        `${snapshotBytes}-byte snapshots; latency p50 ${rate.p50Ms.toFixed(3)} ms, p99 ${rate.p99Ms.toFixed(3)} ms, ` +
        `max ${rate.maxMs.toFixed(1)} ms)`,
    );
    console.log(`  target >= ${int(TARGET_PER_SECOND)} /s: ${verdict}`);

    const size = await measureSize(dir);
    console.log(
      `file size per 1,000 finished captures: ${mib(size.perThousand)} ` +
        `(${int(finishedCaptures)} captures of ${transitionsPerCapture} state changes, ${int(size.events)} audit events, ` +
        `file ${int(size.bytes)} bytes)`,
    );
    console.log(`  by table: ${size.byTable.map((t) => `${t.name} ${mib(t.bytes)}`).join(', ')}`);
    if (verdict === 'FAIL') process.exitCode = 1;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
