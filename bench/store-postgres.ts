/**
 * PostgreSQL figures of `npm run bench:store -- --postgres <url|local>` (issue 18):
 *
 * 1. State changes per second (`recordTransition`, fenced as a runner writes them, with snapshot and
 *    audit event) with 1 and 4 writer processes (`--writers 1,4`), each its own store (pool of 4) driving
 *    its own `--running` captures one write at a time, as one runner's captures do.
 * 2. Claim latency with 4 runner processes taking a backlog of `--backlog` queued captures one
 *    `claimQueuedCaptures(limit 1)` at a time (SKIP LOCKED): p50 / p99, and that each capture was claimed
 *    once.
 * 3. Round trips per capture: the store calls one capture costs a runner (claim, slots, reservation,
 *    tags, `--transitions` state changes, completion), counted at node-postgres' `Client.query`.
 *
 * `local` starts a private cluster (`test/helpers/postgres.ts`) with its durability settings kept (fsync
 * on); a URL must name an empty database of its own, whose tables are emptied between figures.
 * Writers and runners are child processes (this file, forked with `--worker`), so that they contend in
 * the database as separate runners do, not in one Node event loop.
 */
import { fork } from 'node:child_process';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { openPostgresStore, type PostgresCaptureStore } from '../src/store/index.js';
import { type PostgresCluster, startPostgres } from '../test/helpers/postgres.js';

const REPOSITORY = '/var/lib/libvirt/images';
const SELF = fileURLToPath(import.meta.url);

export interface PostgresBenchOptions {
  /** A URL, or `local`. */
  target: string;
  seconds: number;
  running: number;
  writers: number[];
  backlog: number;
  transitions: number;
  snapshot: (captureId: string, step: number) => Record<string, unknown>;
}

/** What a worker reports: its operations' latencies in ms. */
interface WorkerReport {
  latencies: number[];
  claimed?: string[];
  /** Tries thrown away after a serialization failure or deadlock, and writes committed. */
  retries: number;
  writes: number;
}

type WorkerJob =
  | { kind: 'write'; url: string; owner: string; ids: string[]; snapshotBytes: number }
  | { kind: 'claim'; url: string; owner: string };

function quantile(sorted: number[], q: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? Number.NaN;
}

const int = (n: number) => Math.round(n).toLocaleString('en-US');

/** The workers' serialization retries, as a count and per 100 committed writes. */
function retries(reports: WorkerReport[]): string {
  const thrown = reports.reduce((n, r) => n + r.retries, 0);
  const writes = reports.reduce((n, r) => n + r.writes, 0);
  return `serialization retries ${int(thrown)}, ${((100 * thrown) / Math.max(1, writes)).toFixed(1)} per 100 writes`;
}

/** Runs `jobs` in child processes: each prepares, then all start together and run until `untilMs`. */
async function runWorkers(jobs: WorkerJob[], seconds: number): Promise<WorkerReport[]> {
  const children = jobs.map(() =>
    fork(SELF, ['--worker'], { execArgv: process.execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }),
  );
  const reports = children.map(
    (child) =>
      new Promise<WorkerReport>((resolve, reject) => {
        child.on('message', (m: { report?: WorkerReport }) => {
          if (m.report) resolve(m.report);
        });
        child.on('exit', (code) => reject(new Error(`bench worker exited with ${code}`)));
      }),
  );
  const ready = children.map(
    (child) =>
      new Promise<void>((resolve, reject) => {
        child.on('message', (m: { ready?: boolean }) => m.ready && resolve());
        child.on('exit', (code) => reject(new Error(`bench worker exited with ${code} before it was ready`)));
      }),
  );
  children.forEach((child, i) => {
    child.send({ job: jobs[i] });
  });
  await Promise.all(ready);
  const untilMs = Date.now() + seconds * 1000;
  for (const child of children) child.send({ go: untilMs });
  const out = await Promise.all(reports);
  for (const child of children) child.disconnect();
  return out;
}

/** The worker side (this file run with `--worker`). */
export async function workerMain(): Promise<void> {
  const job = await new Promise<WorkerJob>((resolve) =>
    process.once('message', (m: { job: WorkerJob }) => resolve(m.job)),
  );
  const store = await openPostgresStore(job.url);
  const latencies: number[] = [];
  const claimed: string[] = [];
  const padding = job.kind === 'write' ? 'x'.repeat(job.snapshotBytes) : '';
  const go = new Promise<number>((resolve) =>
    process.on('message', (m: { go?: number }) => m.go !== undefined && resolve(m.go)),
  );
  process.send?.({ ready: true });
  const untilMs = await go;
  try {
    if (job.kind === 'write') {
      const fence = { owner: job.owner, generation: 1 };
      for (let n = 0; Date.now() < untilMs; n++) {
        const id = job.ids[n % job.ids.length] as string;
        const step = Math.floor(n / job.ids.length);
        const t = performance.now();
        await store.recordTransition(id, {
          stateValue: { capture: `step_${step}` },
          snapshot: { status: 'active', value: { capture: `step_${step}` }, context: { id, step, padding } },
          machineVersion: 'libvirt@1',
          event: { type: 'state.entered', step: `step_${step}` },
          fence,
        });
        latencies.push(performance.now() - t);
      }
    } else {
      for (;;) {
        const t = performance.now();
        const got = await store.claimQueuedCaptures(job.owner, { leaseMs: 3_600_000, limit: 1 });
        latencies.push(performance.now() - t);
        if (got.length === 0) break;
        claimed.push(...got.map((c) => c.id));
      }
    }
  } finally {
    await store.close();
  }
  process.send?.({ report: { latencies, claimed, ...store.counters() } satisfies WorkerReport });
}

async function prepare(store: PostgresCaptureStore, computers: number): Promise<void> {
  await store.registerComputers(Array.from({ length: computers }, (_, i) => ({ name: `pc-${i}` })));
  await store.registerImage({ id: 501, osName: 'centos7', prettyName: 'Lab', owner: 'bench' });
}

const TABLES =
  'computers, images, image_revisions, captures, capture_events, notifications, notification_deliveries, remote_tags, host_slots';

export async function postgresFigures(o: PostgresBenchOptions): Promise<void> {
  let cluster: PostgresCluster | undefined;
  if (o.target === 'local') cluster = await startPostgres({ durable: true });
  /** An empty store for the next figure. */
  const fresh = async (): Promise<{ url: string; store: PostgresCaptureStore }> => {
    const url = cluster ? await cluster.createDatabase() : o.target;
    const store = await openPostgresStore(url);
    if (!cluster) {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        await client.query(`TRUNCATE ${TABLES} CASCADE`);
      } finally {
        await client.end();
      }
    }
    return { url, store };
  };
  try {
    const server = await (async () => {
      const { store, url } = await fresh();
      await store.close();
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      try {
        const r = await client.query<{ v: string; fsync: string; sc: string }>(
          "SELECT version() AS v, current_setting('fsync') AS fsync, current_setting('synchronous_commit') AS sc",
        );
        return r.rows[0];
      } finally {
        await client.end();
      }
    })();
    console.log(
      `PostgreSQL: ${server?.v.split(',')[0] ?? 'unknown'}, fsync=${server?.fsync}, synchronous_commit=${server?.sc}` +
        (cluster ? ' (a private cluster on this machine, unix socket)' : ''),
    );

    for (const writers of o.writers) {
      const { url, store } = await fresh();
      const jobs: WorkerJob[] = [];
      try {
        await prepare(store, o.running * writers);
        for (let w = 0; w < writers; w++) {
          const owner = `bench-w${w}`;
          const ids: string[] = [];
          for (let i = 0; i < o.running; i++) {
            const c = await store.createCapture({
              id: `w${w}-${i}`,
              computer: `pc-${w * o.running + i}`,
              imageId: 501,
              provisioner: 'libvirt',
              os: 'linux',
              repository: REPOSITORY,
              owner,
              leaseMs: 3_600_000,
            });
            ids.push(c.id);
          }
          jobs.push({ kind: 'write', url, owner, ids, snapshotBytes: 1800 });
        }
      } finally {
        await store.close();
      }
      const reports = await runWorkers(jobs, o.seconds);
      const all = reports.flatMap((r) => r.latencies).sort((a, b) => a - b);
      console.log(
        `state changes with audit events, ${writers} writer process${writers === 1 ? '' : 'es'}: ${int(all.length / o.seconds)} /s ` +
          `(${int(all.length)} in ${o.seconds} s over ${o.running * writers} running captures; latency p50 ${quantile(all, 0.5).toFixed(2)} ms, ` +
          `p99 ${quantile(all, 0.99).toFixed(2)} ms; ${retries(reports)})`,
      );
    }

    {
      const { url, store } = await fresh();
      try {
        await prepare(store, 100);
        for (let i = 0; i < o.backlog; i++)
          await store.createCapture({
            id: `q-${i}`,
            computer: `pc-${i % 100}`,
            imageId: 501,
            provisioner: 'libvirt',
            os: 'linux',
            repository: REPOSITORY,
            reserve: false,
          });
      } finally {
        await store.close();
      }
      const started = performance.now();
      const reports = await runWorkers(
        [0, 1, 2, 3].map((r) => ({ kind: 'claim', url, owner: `bench-r${r}` })),
        0,
      );
      const elapsedS = (performance.now() - started) / 1000;
      const claimed = reports.flatMap((r) => r.claimed ?? []);
      const once = new Set(claimed).size === claimed.length && claimed.length === o.backlog;
      const all = reports.flatMap((r) => r.latencies).sort((a, b) => a - b);
      console.log(
        `claims with 4 runner processes: p50 ${quantile(all, 0.5).toFixed(2)} ms, p99 ${quantile(all, 0.99).toFixed(2)} ms ` +
          `(${int(o.backlog)} queued captures claimed one at a time in ${elapsedS.toFixed(2)} s, ` +
          `shares ${reports.map((r) => r.claimed?.length ?? 0).join('/')}; each claimed once: ${once ? 'yes' : 'NO'}; ${retries(reports)})`,
      );
      if (!once) process.exitCode = 1;
    }

    await roundTrips(fresh, o);
  } finally {
    await cluster?.stop();
  }
}

/** Counts `Client.query` calls (one round trip each) of the store calls one capture costs a runner. */
async function roundTrips(
  fresh: () => Promise<{ url: string; store: PostgresCaptureStore }>,
  o: PostgresBenchOptions,
): Promise<void> {
  const { store } = await fresh();
  const counts = new Map<string, number>();
  let current = '';
  const original = pg.Client.prototype.query;
  // Counting at the driver: every store transaction's BEGIN, statements and COMMIT are one call each.
  pg.Client.prototype.query = function (this: pg.Client, ...args: unknown[]) {
    counts.set(current, (counts.get(current) ?? 0) + 1);
    return (original as (...a: unknown[]) => unknown).apply(this, args);
  } as typeof original;
  const step = async <T>(name: string, fn: () => Promise<T>): Promise<T> => {
    current = name;
    try {
      return await fn();
    } finally {
      current = '';
    }
  };
  try {
    await prepare(store, 1);
    const hosts = ['hypervisor', 'repository'];
    const queued = await step('enqueue', () =>
      store.createCapture({
        id: 'rt-1',
        computer: 'pc-0',
        imageId: 501,
        provisioner: 'libvirt',
        os: 'linux',
        repository: REPOSITORY,
        reserve: false,
      }),
    );
    const [claim] = await step('claim', () =>
      store.claimQueuedCaptures('bench-r', { leaseMs: 60_000, limit: 1 }),
    );
    const fence = { owner: 'bench-r', generation: claim?.generation ?? 0 };
    await step('host slots', () =>
      store.acquireHostSlot(queued.id, { host: 'hv', kind: 'capture', limit: 5 }, fence),
    );
    await step('remote tags', () => store.remoteTags(queued.id));
    await step('reserve', async () => {
      await store.getComputer('pc-0');
      await store.reserveComputer(queued.id, { fence });
    });
    for (const h of hosts)
      await step('remote tags', () => store.recordRemoteTag(queued.id, h, 'abcdef0123456789', { fence }));
    for (let t = 0; t < o.transitions; t++)
      await step('transitions', () =>
        store.recordTransition(queued.id, {
          stateValue: { capture: `step_${t}` },
          snapshot: o.snapshot(queued.id, t),
          machineVersion: 'libvirt@1',
          event: { type: 'state.entered', step: `step_${t}` },
          fence,
        }),
      );
    await step('host slots', async () => {
      await store.acquireHostSlot(queued.id, { host: 'hv', kind: 'copy', limit: 2 }, fence);
      await store.releaseHostSlot(queued.id, 'hv', 'copy');
    });
    await step('complete', async () => {
      await store.getCaptureRecord(queued.id);
      await store.completeCapture(
        queued.id,
        { path: 'rt-1.qcow2', sizeBytes: 1, sha256: 'ab'.repeat(32), format: 'qcow2' },
        { fence },
      );
      await store.getCaptureRecord(queued.id);
    });
    await step('remote tags', () => store.forgetRemoteTags(queued.id, undefined, { fence }));
    await step('host slots', () => store.releaseHostSlot(queued.id, 'hv', 'capture'));
  } finally {
    pg.Client.prototype.query = original;
    await store.close();
  }
  counts.delete('');
  const total = [...counts.values()].reduce((a, b) => a + b, 0);
  console.log(
    `round trips per capture (${o.transitions} state changes, 2 hosts): ${total} ` +
      `(${[...counts].map(([k, v]) => `${k} ${v}`).join(', ')}); plus one renewal (3) per runner every third of a lease`,
  );
}

if (process.argv.includes('--worker')) await workerMain();
