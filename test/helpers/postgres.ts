/**
 * A private PostgreSQL cluster for tests: Debian's `postgresql` package, found by globbing
 * `/usr/lib/postgresql/<version>/bin` (it is not on PATH), `initdb` into a temp folder and `postgres`
 * listening only on a unix socket in that folder (`listen_addresses = ''`), so it neither depends on nor
 * conflicts with a system cluster on port 5432. As root the cluster runs as the `postgres` user.
 *
 * The server stops by itself when the test process dies: it runs under `setpriv --pdeathsig INT` (a fast
 * shutdown when this process exits, however it exits); `stop()` (call it in `afterAll`) stops it at once and
 * removes the folder, and a process `exit` hook stops any left running.
 *
 * Suites call `postgresAvailable()` first: when PostgreSQL is missing it throws in CI (`CI=true`) and
 * otherwise warns and returns false, so the suite can skip (as `sshdAvailable()` does for OpenSSH).
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { appendFileSync, chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { type AddressInfo, createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { afterAll, beforeAll } from 'vitest';

const ROOT = '/usr/lib/postgresql';
const PORT = 5432;

/** The `bin` folder of the newest PostgreSQL installed, or undefined. */
export function postgresBin(): string | undefined {
  if (!existsSync(ROOT)) return undefined;
  const versions = readdirSync(ROOT)
    .filter((v) => /^\d+$/.test(v) && existsSync(join(ROOT, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(ROOT, versions[0], 'bin');
}

function postgresProblem(): string | undefined {
  if (postgresBin() === undefined) return `no ${ROOT}/<version>/bin/initdb found`;
  if (process.getuid?.() === 0 && spawnSync('id', ['-u', 'postgres']).status !== 0)
    return 'running as root but there is no postgres user to run the server as';
  if (spawnSync('setpriv', ['--version']).status !== 0) return 'setpriv (util-linux) not found';
  return undefined;
}

export function postgresAvailable(suite = 'PostgreSQL store tests'): boolean {
  const problem = postgresProblem();
  if (problem === undefined) return true;
  const message = `${suite}: ${problem}. Install the Debian package postgresql (apt-get install postgresql).`;
  if (process.env.CI === 'true') throw new Error(`${message} (CI=true: failing instead of skipping)`);
  console.warn(`SKIPPING ${message}`);
  return false;
}

export interface PostgresCluster {
  /** Temp folder holding the data directory, the socket and the log; removed by `stop()`. */
  readonly dir: string;
  readonly pid: number;
  /** A URL for `database` on this cluster (over the socket, as the superuser). */
  url(database?: string): string;
  /** The same over TCP, to the `listen` address (undefined when the cluster listens on its socket only). */
  tcpUrl(database?: string): string | undefined;
  /** Creates an empty database (a fresh name each call) and returns its URL. */
  createDatabase(): Promise<string>;
  /** Runs SQL as the superuser in `database` (default `postgres`). */
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(
    sql: string,
    params?: unknown[],
    database?: string,
  ): Promise<R[]>;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const proc of running) proc.kill('SIGINT');
});

/** Runs `argv` as the cluster's owner (the postgres user when we are root). */
function asOwner(argv: string[]): string[] {
  return process.getuid?.() === 0
    ? ['setpriv', '--reuid=postgres', '--regid=postgres', '--init-groups', ...argv]
    : argv;
}

export interface StartPostgresOptions {
  /**
   * Keep PostgreSQL's durability settings (fsync, synchronous commit, full page writes), which a test
   * cluster turns off: for benchmarks whose figures must mean what a real server does.
   */
  durable?: boolean;
  /**
   * Also listen on TCP at this local address, trusting clients from `allow` (a CIDR): for runners in other
   * network namespaces, which cannot reach the socket. The port is a free one, not 5432.
   */
  listen?: { address: string; allow: string };
}

/** A TCP port free on `address` now (the kernel's pick, released at once). */
async function freePort(address: string): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, address, () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

export async function startPostgres(options: StartPostgresOptions = {}): Promise<PostgresCluster> {
  const bin = postgresBin();
  if (bin === undefined) throw new Error('PostgreSQL is not installed (apt-get install postgresql)');
  const dir = mkdtempSync(join(tmpdir(), 'vcl-pg-'));
  const user = process.getuid?.() === 0 ? 'postgres' : userInfo().username;
  if (process.getuid?.() === 0) {
    const ids = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
    const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
    chownSync(dir, Number(ids.stdout.trim()), Number(gid.stdout.trim()));
  }
  const data = join(dir, 'data');
  const init = asOwner([
    join(bin, 'initdb'),
    '-D',
    data,
    '-U',
    'postgres',
    '-A',
    'trust',
    '-E',
    'UTF8',
    '--locale=C',
    '--no-sync',
  ]);
  const initdb = spawnSync(init[0] as string, init.slice(1), { encoding: 'utf8', cwd: dir });
  if (initdb.status !== 0) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`initdb failed (${initdb.status}): ${initdb.stderr || initdb.stdout}`);
  }
  const port = options.listen === undefined ? PORT : await freePort(options.listen.address);
  if (options.listen !== undefined)
    appendFileSync(join(data, 'pg_hba.conf'), `host all all ${options.listen.allow} trust\n`);
  const argv = [
    'setpriv',
    '--pdeathsig',
    'INT',
    ...asOwner([
      join(bin, 'postgres'),
      '-D',
      data,
      '-k',
      dir,
      '-p',
      String(port),
      '-c',
      // No TCP at all unless asked: the socket only.
      `listen_addresses=${options.listen?.address ?? ''}`,
      // A throwaway cluster: durability buys nothing.
      ...(options.durable
        ? []
        : ['-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off']),
      '-c',
      'max_connections=100',
    ]),
  ];
  let log = '';
  const proc = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', 'pipe', 'pipe'], cwd: dir });
  proc.stdout?.on('data', (d: Buffer) => {
    log += d.toString();
  });
  proc.stderr?.on('data', (d: Buffer) => {
    log = (log + d.toString()).slice(-20_000);
  });
  running.add(proc);
  let exited = false;
  const gone = new Promise<void>((resolve) =>
    proc.once('exit', () => {
      exited = true;
      running.delete(proc);
      resolve();
    }),
  );
  const url = (database = 'postgres') =>
    `postgresql://${user === 'postgres' ? 'postgres' : encodeURIComponent('postgres')}@localhost:${port}/${database}?host=${encodeURIComponent(dir)}`;
  const tcpUrl = (database = 'postgres') =>
    options.listen === undefined
      ? undefined
      : `postgresql://postgres@${options.listen.address}:${port}/${database}`;

  const stop = async () => {
    if (!exited) {
      proc.kill('SIGINT');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(timer);
    }
    rmSync(dir, { recursive: true, force: true });
  };

  // Ready when it accepts a connection.
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (exited) {
      await stop();
      throw new Error(`postgres exited at start: ${log}`);
    }
    const client = new pg.Client({ connectionString: url() });
    try {
      await client.connect();
      await client.end();
      break;
    } catch (err) {
      await client.end().catch(() => undefined);
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`postgres did not accept connections within 30 s: ${String(err)}\n${log}`);
      }
      await sleep(50);
    }
  }

  const query = async <R extends pg.QueryResultRow>(
    sql: string,
    params: unknown[] = [],
    database = 'postgres',
  ) => {
    const client = new pg.Client({ connectionString: url(database) });
    await client.connect();
    try {
      return (await client.query<R>(sql, params)).rows;
    } finally {
      await client.end();
    }
  };
  let databases = 0;
  return {
    dir,
    pid: proc.pid ?? -1,
    url,
    tcpUrl,
    async createDatabase() {
      databases += 1;
      const name = `store_${databases}`;
      await query(`CREATE DATABASE ${name} TEMPLATE template0`);
      return url(name);
    },
    query,
    stop,
  };
}

/**
 * One private cluster for the calling test file (or `describe` block): started in `beforeAll`, stopped in
 * `afterAll`. The getter throws when it did not start.
 */
export function clusterForSuite(options: StartPostgresOptions = {}): () => PostgresCluster {
  let cluster: PostgresCluster | undefined;
  beforeAll(async () => {
    cluster = await startPostgres(options);
  }, 60_000);
  afterAll(async () => {
    await cluster?.stop();
  });
  return () => {
    if (cluster === undefined) throw new Error('the PostgreSQL cluster did not start');
    return cluster;
  };
}
