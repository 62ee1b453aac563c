/**
 * Runners on "other machines": three `vcl-capture daemon` processes, each in a network namespace of its
 * own (`ip netns`) with its own host name (a UTS namespace) and address, joined by veth pairs to a bridge
 * on which PostgreSQL (a private cluster over TCP) and the built-in lab's SSH servers listen. A SIGKILLed
 * runner is restarted on its "machine"; the others see another host's owner and wait for its lease. A
 * link taken down is a real partition: the runner's TCP connections to the database and to the hosts go
 * silent (no reset) and come back when the link does.
 *
 * (1) 60 queued captures of every provisioner, runners SIGKILLed and restarted at random: each completes
 * exactly once with one revision, no half-made file stays, and the slot table sampled every 100 ms never
 * holds more than a host's limit. (2) A runner cut off while it runs captures: others take them over
 * after its lease; once back it writes nothing (its writes are fenced) and its remote commands are gone.
 * (3) A cancel from another runner's namespace reaches the owner through NOTIFY within a second. A tally
 * is printed, as the crash suite's.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Inventory } from '../../src/inventory/schema.js';
import { startLab } from '../../src/lab/index.js';
import { COMPUTER_KINDS, type ComputerKind, type Lab } from '../../src/lab/types.js';
import { createRunner, type Runner } from '../../src/runner/runner.js';
import { LEFTOVER_SWEEP_SCRIPT } from '../../src/ssh/index.js';
import { openPostgresStore } from '../../src/store/index.js';
import type { CaptureDetail, CaptureStore } from '../../src/store/types.js';
import {
  checkOutcome,
  HALF_MADE,
  isFinished,
  random,
  ready,
  repositoryFiles,
  until,
} from '../crash/harness.js';
import { type PostgresCluster, postgresAvailable, startPostgres } from '../helpers/postgres.js';
import { createNet, type Net, netnsAvailable, sweepStale } from './netns.js';

const BIN = join(import.meta.dirname, '../../src/cli/bin.mjs');
const SUITE = 'runners in network namespaces';
const usable = netnsAvailable(SUITE) && postgresAvailable(SUITE);

const RUNNERS = 3;
/** Lease of scenario (1): a killed runner's captures wait this long at most. */
const LEASE_MS = 6000;
/**
 * Lease of scenario (2): long enough that a cut-off runner's stop budget (a quarter of it) covers the
 * 7 s in which an unanswered stop resets its SSH connections (docs/resume.md, "Fencing"), as with the
 * default 60 s. With a shorter one, requests it sent into the partition could still reach a host after
 * the take-over.
 */
const PARTITION_LEASE_MS = 48_000;
/** Captures per provisioner in (1): 15 of each of the four, 60 in all. */
const PER_PROVISIONER = 15;
const CAPTURE_LIMIT = 3;
const COPY_LIMIT = 2;
/** Captures one runner claims at once: below the backlog, so that the three share it. */
const PER_RUNNER = 8;

/** Computers of each kind: 15 per provisioner, split over its Linux and Windows computers. */
const COMPUTERS = Object.fromEntries(
  COMPUTER_KINDS.map((k) => [
    k,
    k.endsWith('-linux') ? Math.ceil(PER_PROVISIONER / 2) : PER_PROVISIONER >> 1,
  ]),
) as Record<ComputerKind, number>;

interface Ctx {
  net: Net;
  cluster: PostgresCluster;
  lab: Lab;
  store: CaptureStore;
  producer: Runner;
  inventory: Inventory;
  inventoryPath: string;
  dir: string;
  dbUrl: string;
}

let ctx: Ctx | undefined;
const daemons: NsDaemon[] = [];

/** A `vcl-capture daemon` on runner `i`'s "machine": its namespace, its host name `runner-<i>`. */
class NsDaemon {
  readonly proc: ChildProcess;
  readonly exited: Promise<void>;
  readonly logFile: string;
  private stderr = '';

  constructor(
    readonly index: number,
    c: Ctx,
    leaseMs: number,
  ) {
    const runner = c.net.runners[index];
    if (runner === undefined) throw new Error(`no runner ${index}`);
    this.logFile = join(c.dir, `runner-${index}-${daemons.length}.log`);
    // Each step execs the next (setpriv, ip netns exec, unshare, sh): the pid we hold is node's. The
    // parent-death signal takes the daemon down with the test process, however that ends.
    this.proc = spawn(
      'setpriv',
      [
        '--pdeathsig',
        'KILL',
        'ip',
        'netns',
        'exec',
        runner.ns,
        'unshare',
        '--uts',
        '--',
        'sh',
        '-c',
        'hostname "$0" && exec "$@"',
        `runner-${index}`,
        process.execPath,
        BIN,
        'daemon',
        '--config',
        c.inventoryPath,
        '--db',
        c.dbUrl,
        '--lease',
        String(leaseMs),
        '--queue-poll',
        '200',
        '--poll-ms',
        '20',
        '--log-file',
        this.logFile,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.proc.stderr?.on('data', (d: Buffer) => {
      this.stderr = (this.stderr + d.toString()).slice(-10_000);
    });
    this.exited = new Promise((resolve) => this.proc.once('exit', () => resolve()));
    daemons.push(this);
  }

  /** Owners of this process's claims start with this. */
  get ownerPrefix(): string {
    return `runner-${this.index}/${this.proc.pid}/`;
  }

  get alive(): boolean {
    return this.proc.exitCode === null && this.proc.signalCode === null;
  }

  get log(): string {
    try {
      return readFileSync(this.logFile, 'utf8');
    } catch {
      return '';
    }
  }

  /** Waits for its "daemon ready" log line; fails with its stderr when it does not come. */
  async ready(timeoutMs = 60_000): Promise<void> {
    try {
      await until(
        () => this.log.includes('"daemon ready"') || !this.alive,
        timeoutMs,
        `runner-${this.index} ready`,
      );
    } catch (err) {
      throw new Error(`${(err as Error).message}; its stderr: ${this.stderr}`);
    }
    if (!this.alive) throw new Error(`runner-${this.index} exited at start: ${this.stderr}`);
  }

  async kill(): Promise<void> {
    if (this.alive) this.proc.kill('SIGKILL');
    await this.exited;
  }
}

const world = (): Ctx => {
  if (ctx === undefined) throw new Error('the namespaces, PostgreSQL or the lab did not start');
  return ctx;
};

beforeAll(async () => {
  if (!usable) return;
  sweepStale();
  const net = createNet(RUNNERS);
  const dir = mkdtempSync(join(tmpdir(), 'vcl-netns-'));
  let cluster: PostgresCluster | undefined;
  let lab: Lab | undefined;
  try {
    cluster = await startPostgres({ listen: { address: net.hub, allow: net.cidr } });
    const dbName = new URL(await cluster.createDatabase()).pathname.slice(1);
    const dbUrl = cluster.tcpUrl(dbName) as string;
    lab = await startLab({
      listenAddress: net.hub,
      computers: COMPUTERS,
      powerDelayMs: 100,
      commandLatencyMs: 20,
      diskBytes: 8 * 1024 * 1024,
    });
    const inventory = structuredClone(lab.inventory);
    for (const [name, host] of Object.entries(inventory.hosts)) {
      if (['libvirt-host', 'esxi-host', 'xcat-mn', 'pve-node', 'repo-host'].includes(name)) {
        host.maxCaptures = CAPTURE_LIMIT;
        host.maxCopies = COPY_LIMIT;
      }
    }
    inventory.defaults.maxConcurrentCaptures = PER_RUNNER;
    const inventoryPath = join(dir, 'inventory.json');
    writeFileSync(inventoryPath, JSON.stringify(inventory));
    // The test's own client: over TCP to the hub too (the socket would do as well).
    const store = await openPostgresStore(dbUrl);
    await store.registerComputers(Object.keys(inventory.computers).map((name) => ({ name })));
    const producer = createRunner({ inventory, store, id: 'producer' });
    ctx = { net, cluster, lab, store, producer, inventory, inventoryPath, dir, dbUrl };
  } catch (err) {
    await lab?.stop();
    await cluster?.stop();
    net.close();
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}, 120_000);

afterAll(async () => {
  for (const d of daemons) await d.kill();
  if (ctx === undefined) return;
  const c = ctx;
  ctx = undefined;
  await c.producer.close().catch(() => undefined);
  await c.store.close().catch(() => undefined);
  await c.lab.stop();
  await c.cluster.stop();
  c.net.close();
  // NETNS_KEEP=1 keeps the runners' logs and the inventory for a look after a failure.
  if (process.env.NETNS_KEEP === '1') console.log(`kept ${c.dir}`);
  else rmSync(c.dir, { recursive: true, force: true });
}, 60_000);

async function queue(c: Ctx, computer: string, label: string): Promise<string> {
  await ready(c, computer);
  const record = await c.producer.enqueue({
    computer,
    image: { osName: c.lab.computer(computer).os, prettyName: label, owner: 'netns' },
  });
  return record.id;
}

/** The database's clock now (events and leases are on it; PostgreSQL runs on this machine's clock). */
async function dbNow(c: Ctx): Promise<number> {
  const [row] = await c.cluster.query<{ t: Date }>('SELECT clock_timestamp() AS t');
  if (row === undefined) throw new Error('no time from the database');
  return row.t.getTime();
}

const claims = (d: CaptureDetail) =>
  d.events
    .filter((e) => e.type === 'capture.claimed')
    .map((e) => ({
      at: Date.parse(e.at),
      ...(e.details as { owner: string; previousOwner: string | null }),
    }));

/** Samples `host_slots` every 100 ms: the most rows each (host, kind) ever held. */
function sampleSlots(c: Ctx) {
  const max = new Map<string, number>();
  let samples = 0;
  let stopped = false;
  const db = new URL(c.dbUrl).pathname.slice(1);
  let failure: unknown;
  const done = (async () => {
    while (!stopped) {
      const rows = await c.cluster.query<{ host: string; kind: string; n: number }>(
        'SELECT host, kind, count(*)::int AS n FROM host_slots GROUP BY host, kind',
        [],
        db,
      );
      samples += 1;
      for (const r of rows) {
        const key = `${r.host} ${r.kind}`;
        max.set(key, Math.max(max.get(key) ?? 0, r.n));
      }
      await sleep(100);
    }
  })().catch((err: unknown) => {
    failure = err;
  });
  return {
    max,
    get samples() {
      return samples;
    },
    /** Stops sampling; throws when a sample failed. */
    async stop() {
      stopped = true;
      await done;
      if (failure !== undefined) throw failure;
    },
  };
}

/** Scenario (1): queues a capture of every computer, SIGKILLs and restarts runners at random until all end. */
async function killAtRandom(
  c: Ctx,
  live: (NsDaemon | undefined)[],
  slots: ReturnType<typeof sampleSlots>,
  next: () => number,
  seed: number,
): Promise<void> {
  const computers = c.lab.computerNames();
  expect(computers).toHaveLength(PER_PROVISIONER * 4);
  const ids = new Map<string, string>();
  for (const computer of computers) ids.set(await queue(c, computer, `Netns ${computer}`), computer);
  const sources = new Map<string, string>();
  for (const computer of computers) sources.set(computer, await c.lab.diskSha256(computer));
  const allDone = async () =>
    (await Promise.all([...ids.keys()].map((id) => c.store.getCaptureRecord(id)))).every((r) =>
      isFinished(r?.status),
    );
  let kills = 0;
  const started = Date.now();
  while (!(await allDone())) {
    if (Date.now() - started > 180_000) {
      const stuck = [];
      for (const id of ids.keys()) {
        const d = await c.store.getCapture(id);
        if (!isFinished(d?.status))
          stuck.push(`${id} ${d?.computer} ${d?.status} ${d?.owner} ${JSON.stringify(d?.events.at(-1))}`);
      }
      throw new Error(`the captures take too long (${kills} kills); unfinished:\n${stuck.join('\n')}`);
    }
    const end = Date.now() + 1000 + next() * 2500;
    await until(async () => Date.now() >= end || (await allDone()), 5000, 'a kill moment');
    if (await allDone()) break;
    const i = Math.floor(next() * RUNNERS);
    await live[i]?.kill();
    kills += 1;
    live[i] = new NsDaemon(i, c, LEASE_MS);
  }
  const took = Date.now() - started;
  await slots.stop();

  let sameMachine = 0;
  let afterLease = 0;
  const completed = new Map<string, number>();
  for (const [id, computer] of ids) {
    const detail = await checkOutcome(c, id, sources.get(computer) ?? '');
    expect(detail.status, `${id} (${computer})`).toBe('completed');
    expect(detail.events.filter((e) => e.type === 'capture.completed')).toHaveLength(1);
    for (const claim of claims(detail).filter((k) => k.previousOwner !== null)) {
      if (claim.owner.split('/')[0] === claim.previousOwner?.split('/')[0]) sameMachine += 1;
      else afterLease += 1;
    }
    const p = c.lab.computer(computer).provisioner;
    completed.set(p, (completed.get(p) ?? 0) + 1);
  }
  expect((await repositoryFiles(c)).filter((f) => HALF_MADE.test(f))).toEqual([]);
  expect(c.lab.internalErrors).toEqual([]);
  expect(kills).toBeGreaterThan(0);
  expect(sameMachine + afterLease).toBeGreaterThan(0);

  const limitOf = (host: string, kind: string) => {
    const h = c.inventory.hosts[host];
    return kind === 'capture' ? h?.maxCaptures : h?.maxCopies;
  };
  const slotLines: string[] = [];
  for (const [key, n] of [...slots.max.entries()].sort()) {
    const [host = '', kind = ''] = key.split(' ');
    const limit = limitOf(host, kind) ?? 0;
    slotLines.push(`  ${key.padEnd(28)} max ${n} of ${limit}`);
    expect(n, `${key}: most slots held at once`).toBeLessThanOrEqual(limit);
  }
  expect(slots.samples).toBeGreaterThan(10);
  tally.push(
    `(1) seed ${seed}: ${ids.size} captures on ${RUNNERS} runners in ${Math.round(took / 1000)} s; ${kills} SIGKILLs (each runner restarted on its machine); ` +
      `${sameMachine + afterLease} take-overs (${sameMachine} at once by the restarted runner, ${afterLease} by another machine after the lease)\n` +
      `  completed per provisioner: ${[...completed.entries()].map(([p, n]) => `${p} ${n}`).join(', ')}\n` +
      `  slots held at once (${slots.samples} samples of host_slots):\n${slotLines.join('\n')}`,
  );
  for (const d of live) await d?.kill();
}

/** Scenario (2): cuts off a runner running captures, checks the take-overs, heals it, checks it changed nothing. */
async function partitionScenario(c: Ctx, live: NsDaemon[]): Promise<void> {
  // Two of each provisioner, so that every runner gets some.
  const computers = c.lab.computerNames().filter((n) => /-[12]$/.test(n));
  const ids: string[] = [];
  for (const computer of computers) ids.push(await queue(c, computer, `Partition ${computer}`));
  // The victim: a runner holding two running captures, cut off while the hosts run commands of its own
  // (checked in the same turn of the event loop as the cut, so they are still running at the cut).
  const addressOf = (d: NsDaemon) => c.net.runners[d.index]?.address ?? '';
  let candidates: NsDaemon[] = [];
  await until(
    async () => {
      const records = await Promise.all(ids.map((id) => c.store.getCaptureRecord(id)));
      candidates = live.filter(
        (d) =>
          records.filter((r) => r?.status === 'running' && r.owner?.startsWith(d.ownerPrefix)).length >= 2,
      );
      return candidates.length > 0;
    },
    60_000,
    'a runner running two captures',
  );
  let victim: NsDaemon | undefined;
  await until(
    () => {
      victim = candidates.find((d) => c.lab.runningCommandsOf(addressOf(d)).length > 0);
      if (victim !== undefined) c.net.partition(victim.index);
      return victim !== undefined;
    },
    30_000,
    'a command of that runner running on a host',
  );
  const cutAt = Date.now();
  const a = victim as NsDaemon;
  const address = addressOf(a);
  const commandsAtCut = c.lab.runningCommandsOf(address);
  const logFrom = c.lab.commandLog.length;
  const atCut = (await Promise.all(ids.map((id) => c.store.getCaptureRecord(id)))).filter(
    (r) => r?.owner?.startsWith(a.ownerPrefix) && r.status === 'running',
  );
  expect(atCut.length).toBeGreaterThan(0);
  expect(commandsAtCut.length).toBeGreaterThan(0);

  await until(
    async () =>
      (await Promise.all(ids.map((id) => c.store.getCaptureRecord(id)))).every((r) => isFinished(r?.status)),
    120_000,
    'the captures to finish without the cut-off runner',
  );
  const leftAtTakeover = c.lab.runningCommandsOf(address).length;
  // The new owners' resumed steps stop what the cut-off runner left on a host before their first command.
  const sweeps = c.lab.commandLog
    .slice(logFrom)
    .filter((e) => e.client !== address && e.argv?.[2] === LEFTOVER_SWEEP_SCRIPT).length;
  expect(sweeps).toBeGreaterThan(0);
  const delays: number[] = [];
  const snapshot = async () =>
    JSON.stringify(
      await Promise.all(
        atCut.map(async (r) => {
          const d = (await c.store.getCapture(r?.id ?? '')) as CaptureDetail;
          const image = await c.store.getImage(d.image.imageId);
          return { status: d.status, owner: d.owner, generation: d.generation, events: d.events, image };
        }),
      ),
    );
  for (const r of atCut) {
    const detail = (await c.store.getCapture(r?.id ?? '')) as CaptureDetail;
    expect(detail.status).toBe('completed');
    const takeover = claims(detail).find((k) => k.previousOwner?.startsWith(a.ownerPrefix));
    expect(takeover, `${detail.id} taken over from the cut-off runner`).toBeDefined();
    expect(takeover?.owner.startsWith(a.ownerPrefix)).toBe(false);
    // Not before the lease the cut-off runner held at the cut.
    expect(takeover?.at ?? 0).toBeGreaterThanOrEqual(Date.parse(r?.leaseUntil ?? ''));
    expect(detail.generation).toBeGreaterThan(r?.generation ?? 0);
    delays.push((takeover?.at ?? 0) - cutAt);
  }
  const before = await snapshot();

  // Back on the network: its connections to the database and the hosts resume.
  const healAt = await dbNow(c);
  c.net.heal(a.index);
  const healLog = c.lab.commandLog.length;
  const db = new URL(c.dbUrl).pathname.slice(1);
  await until(
    async () =>
      (
        await c.cluster.query<{ n: number }>(
          `SELECT count(*)::int AS n FROM pg_stat_activity WHERE client_addr = $1::inet AND state_change > $2`,
          [address, new Date(healAt)],
          db,
        )
      )[0]?.n !== 0,
    60_000,
    'the cut-off runner to talk to the database again',
  );
  await until(
    () => c.lab.runningCommandsOf(address).length === 0,
    30_000,
    "the cut-off runner's commands to stop",
  );
  // It is back on the database, so anything it still meant to write has been sent; a second more lets
  // such a write reach the store (where fencing must refuse it).
  await sleep(1000);
  expect(await snapshot()).toBe(before);
  const startedSince = c.lab.commandLog
    .slice(healLog)
    .filter((e) => e.client === address && e.kind === 'exec');
  expect(startedSince.map((e) => e.argv?.join(' '))).toEqual([]);
  expect(a.alive).toBe(true);
  expect(a.log).toMatch(/LEASE_LOST|FENCED/);
  const sent = c.lab.commandLog.slice(logFrom, healLog).filter((e) => e.client === address).length;
  tally.push(
    `(2) runner-${a.index} cut off with ${atCut.length} running captures and ${commandsAtCut.length} remote commands (${commandsAtCut.map((x) => `${x.host}: ${x.argv[0]}`).join(', ')}); ` +
      `taken over ${delays.map((d) => `${(d / 1000).toFixed(1)} s`).join(', ')} after the cut (lease ${PARTITION_LEASE_MS / 1000} s)\n` +
      `  leftover sweeps by the new owners: ${sweeps}; its commands still running at the take-overs' end: ${leftAtTakeover}; after the heal: 0; lines it sent while cut off that arrived: ${sent}; ` +
      `commands it started after the heal: ${startedSince.length}; store rows it changed after the heal: none`,
  );
}

const tally: string[] = [];

describe.skipIf(!usable).sequential(SUITE, () => {
  it(`(1) ${PER_PROVISIONER * 4} captures, runners SIGKILLed and restarted at random: each completes once`, async () => {
    const c = world();
    const seed = Number(process.env.NETNS_SEED ?? Date.now() % 2 ** 31);
    const next = random(seed);
    const live: (NsDaemon | undefined)[] = [];
    for (let i = 0; i < RUNNERS; i += 1) live[i] = new NsDaemon(i, c, LEASE_MS);
    for (const d of live) await d?.ready();
    const slots = sampleSlots(c);
    try {
      await killAtRandom(c, live, slots, next, seed);
    } finally {
      await slots.stop();
      for (const d of live) await d?.kill();
    }
  }, 240_000);

  it('(2) a runner cut off by a partition: its captures are taken over after the lease; once back it changes nothing', async () => {
    const c = world();
    const live = Array.from({ length: RUNNERS }, (_, i) => new NsDaemon(i, c, PARTITION_LEASE_MS));
    try {
      for (const d of live) await d.ready();
      await partitionScenario(c, live);
    } finally {
      for (let i = 0; i < RUNNERS; i += 1) c.net.heal(i);
      for (const d of live) await d.kill();
    }
  }, 150_000);

  it('(3) a cancel from another runner reaches the owner through NOTIFY within a second', async () => {
    const c = world();
    // A lease of 60 s: renewals (which also carry cancellations) come every 20 s, so only NOTIFY can be
    // that fast.
    const live = Array.from({ length: RUNNERS }, (_, i) => new NsDaemon(i, c, 60_000));
    try {
      for (const d of live) await d.ready();
      await cancelScenario(c, live);
    } finally {
      for (const d of live) await d.kill();
    }
    console.log(`runners in network namespaces:\n${tally.join('\n')}`);
  }, 120_000);
});

/** Scenario (3): a cancel run in another runner's namespace; the delay until the owner enters cleanup. */
async function cancelScenario(c: Ctx, live: NsDaemon[]): Promise<void> {
  const computers = ['lv-linux-3', 'vm-linux-3', 'xc-linux-3', 'px-linux-3'];
  const delays: number[] = [];
  for (const computer of computers) {
    // Every command on the capture's own OS hangs (until stopped) until the cancel is asked, so that it
    // is still running when the cancel comes, however fast the lab and however slow the CLI's start. Not
    // only the first: its first command is a reachability probe, which gives up after its own timeout
    // and asks again (a loaded run saw the capture complete before the CLI had started).
    const hang = c.lab.faults.add({
      kind: 'hangCommand',
      host: computer,
      match: /./,
      times: Number.POSITIVE_INFINITY,
    });
    const id = await queue(c, computer, `Cancel ${computer}`);
    let owner: NsDaemon | undefined;
    await until(
      async () => {
        const d = await c.store.getCapture(id);
        owner = live.find((x) => d?.owner?.startsWith(x.ownerPrefix));
        return d?.status === 'running' && hang.fired > 0 && owner !== undefined;
      },
      30_000,
      `${computer} running`,
    );
    const from = live.find((x) => x !== owner) as NsDaemon;
    const cli = spawn(
      'ip',
      [
        'netns',
        'exec',
        c.net.runners[from.index]?.ns ?? '',
        process.execPath,
        BIN,
        'cancel',
        id,
        '--db',
        c.dbUrl,
        '--reason',
        'netns test',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    cli.stdout?.on('data', (d: Buffer) => (out += d.toString()));
    cli.stderr?.on('data', (d: Buffer) => (out += d.toString()));
    const code = await new Promise<number | null>((resolve) => cli.once('exit', resolve));
    // The cleanup's own commands must run.
    hang.clear();
    expect(code, out).toBe(0);
    let reacted: number | undefined;
    let requested: number | undefined;
    let events: CaptureDetail['events'] = [];
    try {
      await until(
        async () => {
          const d = (await c.store.getCapture(id)) as CaptureDetail;
          events = d.events;
          const i = d.events.findIndex((e) => e.type === 'capture.cancel_requested');
          const reaction = d.events
            .slice(i + 1)
            .find((e) => e.type === 'state.entered' && JSON.stringify(e.stateValue).includes('cleanup'));
          requested = Date.parse(d.events[i]?.at ?? '');
          reacted = reaction === undefined ? undefined : Date.parse(reaction.at);
          return reacted !== undefined;
        },
        10_000,
        `${computer}: the owner to enter cleanup`,
      );
    } catch (err) {
      // Seen once in a clean-clone CI run (px-linux-3, 2026-12-04 20:38): keep what tells where it stuck.
      const lines = events.map((e) => `${e.at} ${e.type} ${JSON.stringify(e.stateValue ?? '')}`);
      const ownerLog = (owner?.log ?? '').split('\n').slice(-40).join('\n');
      throw new Error(
        `${(err as Error).message}\nowner runner-${owner?.index}, alive ${owner?.alive}; the cancel CLI said: ${out}\nthe capture's events:\n${lines.join('\n')}\nthe owner's last log lines:\n${ownerLog}`,
      );
    }
    delays.push((reacted ?? 0) - (requested ?? 0));
    await until(
      async () => isFinished((await c.store.getCaptureRecord(id))?.status),
      60_000,
      `${computer} to end`,
    );
    expect((await c.store.getCaptureRecord(id))?.status).toBe('cancelled');
    hang.clear();
  }
  tally.push(
    `(3) cancel via NOTIFY (lease 60 s): from another runner's namespace to the owner's cleanup: ${delays.map((d) => `${d} ms`).join(', ')}`,
  );
  for (const d of delays) expect(d).toBeLessThan(1000);
}
