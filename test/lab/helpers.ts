/** Shared by the lab's tests: a lab with the project's SSH transport in front of it, and a raw ssh2 client. */
import { readFileSync } from 'node:fs';
import ssh2 from 'ssh2';
import { inventoryHosts } from '../../src/inventory/hosts.js';
import { type Lab, type LabOptions, startLab } from '../../src/lab/index.js';
import { type ExecOptions, type ExecResult, type SshHost, SshPool } from '../../src/ssh/index.js';

export interface LabHarness {
  lab: Lab;
  pool: SshPool;
  host(name: string): SshHost;
  exec(host: string, argv: readonly string[], options?: ExecOptions): Promise<ExecResult>;
  close(): Promise<void>;
}

export async function openLab(options: LabOptions = {}): Promise<LabHarness> {
  const lab = await startLab({ powerDelayMs: 30, ...options });
  const hosts = inventoryHosts(lab.inventory);
  const pool = new SshPool();
  const host = (name: string): SshHost => {
    const h = hosts.get(name);
    if (h === undefined) throw new Error(`no host ${name}`);
    // A guest going down must not hold a test for the transport's default minute of reconnecting.
    return { ...h, connectDeadlineMs: 2000 };
  };
  return {
    lab,
    pool,
    host,
    exec: (name, argv, opts = {}) =>
      pool.exec(host(name), argv, { check: false, timeoutMs: 10_000, ...opts }),
    async close() {
      await pool.close();
      await lab.stop();
    },
  };
}

export interface RawResult {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
  /** Channel events in the order they arrived: `exit`, `eof`, `close`. */
  events: string[];
}

/** A plain ssh2 client on one lab host, sending command lines exactly as given. */
export class RawClient {
  private constructor(readonly client: ssh2.Client) {}

  static async connect(lab: Lab, hostName: string, verify?: (key: Buffer) => boolean): Promise<RawClient> {
    const h = lab.hosts[hostName];
    if (h === undefined) throw new Error(`no host ${hostName}`);
    const client = new ssh2.Client();
    await new Promise<void>((resolve, reject) => {
      client.once('ready', () => resolve());
      client.once('error', reject);
      client.connect({
        host: '127.0.0.1',
        port: h.port,
        username: h.user,
        privateKey: readFileSync(lab.privateKeyPath),
        ...(verify === undefined ? {} : { hostVerifier: verify }),
      });
    });
    client.on('error', () => {});
    return new RawClient(client);
  }

  /**
   * Runs a command line to the end. Listeners are attached inside ssh2's callback: a short command's
   * whole answer can arrive in the same packet batch as the exec reply.
   */
  run(line: string, stdin?: string | Buffer): Promise<RawResult> {
    return new Promise((resolve, reject) => {
      this.client.exec(line, (err, channel) => {
        if (err) reject(err);
        else collect(channel, stdin).then(resolve, reject);
      });
    });
  }

  /** Starts a command and hands over its channel with a collector already attached. */
  start(
    line: string,
  ): Promise<{ channel: ssh2.ClientChannel; result: Promise<RawResult>; stdoutSoFar: () => string }> {
    return new Promise((resolve, reject) => {
      this.client.exec(line, (err, channel) => {
        if (err) {
          reject(err);
          return;
        }
        const seen: Buffer[] = [];
        channel.on('data', (b: Buffer) => seen.push(b));
        resolve({
          channel,
          result: collect(channel, undefined, false),
          stdoutSoFar: () => Buffer.concat(seen).toString('utf8'),
        });
      });
    });
  }

  end(): void {
    this.client.end();
  }
}

export function collect(
  channel: ssh2.ClientChannel,
  stdin?: string | Buffer,
  endStdin = true,
): Promise<RawResult> {
  const out: Buffer[] = [];
  const err: Buffer[] = [];
  const events: string[] = [];
  let code: number | null = null;
  let signal: string | null = null;
  channel.on('data', (b: Buffer) => out.push(b));
  channel.stderr.on('data', (b: Buffer) => err.push(b));
  channel.on('exit', (c: number | null, s?: string) => {
    events.push('exit');
    code = c;
    signal = s ?? null;
  });
  channel.on('end', () => events.push('eof'));
  if (stdin !== undefined) channel.end(stdin);
  else if (endStdin) channel.end();
  return new Promise((resolve) => {
    channel.on('close', () => {
      events.push('close');
      resolve({
        code,
        signal,
        stdout: Buffer.concat(out).toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        events,
      });
    });
  });
}

/** Polls `check` until it holds (or fails after `timeoutMs`). */
export async function eventually(check: () => Promise<boolean> | boolean, timeoutMs = 5000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > until) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}
