/**
 * A real OpenSSH server on a loopback port, for tests and benchmarks (recipe: shared/docs/real-vm-lab.md,
 * "OpenSSH sshd as a test host").
 *
 * `startSshd()` writes a config, a fresh ed25519 host key and user key into a temp folder, runs
 * `/usr/sbin/sshd -D -e -f <config>` on 127.0.0.1 and a free port, and waits until it sends its banner.
 * The server stops by itself even if the test process dies: it runs under `setpriv --pdeathsig` (signalled
 * when this process exits) and `timeout` (a maximum lifetime). `stop()` ends the listener and every session
 * process by PID and removes the temp folder (and `/run/sshd` if a helper created it and no sshd is left).
 *
 * Suites call `sshdAvailable()` first: when sshd is missing it throws in CI (`CI=true`) and otherwise warns
 * and returns false, so the suite can `describe.skipIf(...)`.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  readlinkSync,
  rmdirSync,
  writeFileSync,
} from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, Socket } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SshHost } from '../../src/ssh/types.js';
import { ed25519KeyPair } from './keys.js';

export const SSHD_PATH = '/usr/sbin/sshd';
const PRIVSEP_DIR = '/run/sshd';
/** Written when a helper created /run/sshd, so that only then is it removed again. */
const PRIVSEP_MARKER = join(tmpdir(), '.vcl-test-created-run-sshd');

export interface StartSshdOptions {
  /** OpenSSH's `MaxSessions` (channels per connection). Default 10, OpenSSH's own default. */
  maxSessions?: number;
  /**
   * Environment for every command (sshd `SetEnv`, which takes only its first line: so one line for all).
   */
  env?: Readonly<Record<string, string>>;
  /** Extra sshd_config lines (not `SetEnv`: use `env`). */
  extraConfig?: readonly string[];
  /** The server exits by itself after this long, whatever happens. Default 15 minutes. */
  lifetimeMs?: number;
  /** sshd `LogLevel`; the log goes to `<dir>/sshd.log`. Default `ERROR`. */
  logLevel?: string;
}

export interface SshdServer {
  /** Temp folder holding config, keys, log and pid file; removed by `stop()`. */
  readonly dir: string;
  readonly host: '127.0.0.1';
  readonly port: number;
  /** The login user (root when the tests run as root, with `PermitRootLogin yes`). */
  readonly username: string;
  /** The user's private key (OpenSSH format, unencrypted) and its file. */
  readonly userPrivateKey: Buffer;
  readonly userKeyPath: string;
  /** The server's public host key as `type base64`, and its `SHA256:` fingerprint. */
  readonly hostPublicKey: string;
  readonly hostKeyFingerprint: string;
  readonly logFile: string;
  /** PID of the listening sshd (changes on `restart()`). */
  readonly pid: number;
  /** An `SshHost` for this server, its key pinned by fingerprint unless `overrides.hostKey` says otherwise. */
  sshHost(overrides?: Partial<SshHost>): SshHost;
  /** A known_hosts line for this server (`[127.0.0.1]:port type key`). */
  knownHostsLine(): string;
  /** Options for OpenSSH's `ssh`/`scp` clients: key, known_hosts with this server, batch mode. */
  clientOptions(): string[];
  /** PIDs of the per-connection sshd processes (privileged monitor and session child of each connection). */
  sessionPids(): number[];
  /** Sends a signal to every per-connection sshd process (SIGSTOP freezes, SIGKILL drops connections). */
  signalSessions(signal: NodeJS.Signals): number[];
  /** Stops the listener and sessions, then starts sshd again on the same port with the same keys. */
  restart(): Promise<void>;
  /** Stops only the listener and sessions, keeping the folder (for `start()` later). */
  halt(): Promise<void>;
  /** Starts the server again after `halt()`. */
  start(): Promise<void>;
  /** Stops everything and removes the temp folder. Safe to call twice. */
  stop(): Promise<void>;
}

/**
 * Whether this machine can run the OpenSSH suites. Missing sshd: throws when `CI=true` (a suite must not
 * silently skip in CI), otherwise prints a warning naming the package and returns false.
 */
export function sshdAvailable(suite = 'OpenSSH integration tests'): boolean {
  const problem = sshdProblem();
  if (problem === undefined) return true;
  const message = `${suite}: ${problem}. Install the Debian package openssh-server (apt-get install openssh-server).`;
  if (process.env.CI === 'true') throw new Error(`${message} (CI=true: failing instead of skipping)`);
  console.warn(`SKIPPING ${message}`);
  return false;
}

function sshdProblem(): string | undefined {
  if (!existsSync(SSHD_PATH)) return `${SSHD_PATH} not found`;
  if (!existsSync('/usr/bin/ssh-keygen') && !existsSync('/bin/ssh-keygen')) return 'ssh-keygen not found';
  if (!existsSync(PRIVSEP_DIR) && process.getuid?.() !== 0)
    return `${PRIVSEP_DIR} is missing and we are not root`;
  return undefined;
}

/** SHA256 fingerprint of an OpenSSH public key line or base64 blob, as `ssh-keygen -l` prints it. */
export function fingerprintOfPublicKey(publicKey: string): string {
  const parts = publicKey.trim().split(/\s+/);
  const b64 = parts.length > 1 ? parts[1] : parts[0];
  const blob = Buffer.from(b64 ?? '', 'base64');
  return `SHA256:${createHash('sha256').update(blob).digest('base64').replace(/=+$/, '')}`;
}

export async function freePort(): Promise<number> {
  return await new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

/** Resolves once something on host:port sends an SSH banner, or throws after `timeoutMs`. */
export async function waitForBanner(port: number, timeoutMs: number, isDead?: () => string | undefined) {
  const deadline = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < deadline) {
    const dead = isDead?.();
    if (dead !== undefined) throw new Error(dead);
    const ok = await new Promise<boolean>((resolve) => {
      const sock = new Socket();
      const t = setTimeout(() => {
        sock.destroy();
        resolve(false);
      }, 1000);
      sock.once('data', (d) => {
        clearTimeout(t);
        last = d.toString('latin1');
        sock.destroy();
        resolve(last.startsWith('SSH-'));
      });
      sock.once('error', (e) => {
        clearTimeout(t);
        last = e.message;
        resolve(false);
      });
      sock.connect(port, '127.0.0.1');
    });
    if (ok) return;
    await sleep(50);
  }
  throw new Error(`sshd on 127.0.0.1:${port} did not answer within ${timeoutMs} ms (${last})`);
}

/** Direct children of a process, from /proc (Linux). */
export function childPids(pid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'latin1');
      // Format: pid (comm) state ppid ...; comm may contain spaces and parentheses.
      const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(rest[1]) === pid) out.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return out;
}

function exeOf(pid: number): string | undefined {
  try {
    return readlinkSync(`/proc/${pid}/exe`);
  } catch {
    return undefined;
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

function anySshdRunning(): boolean {
  for (const entry of readdirSync('/proc')) {
    if (/^\d+$/.test(entry) && exeOf(Number(entry)) === SSHD_PATH) return true;
  }
  return false;
}

function ensurePrivsepDir(): void {
  if (existsSync(PRIVSEP_DIR)) return;
  mkdirSync(PRIVSEP_DIR, { mode: 0o755, recursive: true });
  writeFileSync(PRIVSEP_MARKER, `${process.pid}\n`);
}

function releasePrivsepDir(): void {
  if (!existsSync(PRIVSEP_MARKER) || anySshdRunning()) return;
  try {
    rmdirSync(PRIVSEP_DIR);
  } catch {
    // Not empty or already gone: leave it.
  }
  rm(PRIVSEP_MARKER, { force: true }).catch(() => {});
}

function hasCommand(cmd: string): boolean {
  return spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
}

export async function startSshd(options: StartSshdOptions = {}): Promise<SshdServer> {
  const problem = sshdProblem();
  if (problem !== undefined) throw new Error(`cannot start sshd: ${problem} (install openssh-server)`);
  const dir = await mkdtemp(join(tmpdir(), 'vcl-sshd-'));
  const username = userInfo().username;
  const hostKey = ed25519KeyPair();
  const userKey = ed25519KeyPair();
  const hostKeyPath = join(dir, 'ssh_host_ed25519_key');
  const userKeyPath = join(dir, 'id_ed25519');
  const authorizedKeys = join(dir, 'authorized_keys');
  const configPath = join(dir, 'sshd_config');
  const pidFile = join(dir, 'sshd.pid');
  const logFile = join(dir, 'sshd.log');
  const knownHostsPath = join(dir, 'known_hosts');
  writeFileSync(hostKeyPath, hostKey.private, { mode: 0o600 });
  writeFileSync(`${hostKeyPath}.pub`, `${hostKey.public}\n`);
  writeFileSync(userKeyPath, userKey.private, { mode: 0o600 });
  writeFileSync(authorizedKeys, `${userKey.public}\n`, { mode: 0o600 });
  const hostPublicKey = hostKey.public.trim().split(/\s+/).slice(0, 2).join(' ');
  const hostKeyFingerprint = fingerprintOfPublicKey(hostPublicKey);
  const lifetimeS = Math.ceil((options.lifetimeMs ?? 15 * 60_000) / 1000);
  const usePdeathsig = hasCommand('setpriv');

  let port = await freePort();
  let child: ChildProcess | undefined;
  let sshdPid = 0;
  let stopped = false;

  const writeConfig = () => {
    const lines = [
      'ListenAddress 127.0.0.1',
      `Port ${port}`,
      `HostKey ${hostKeyPath}`,
      `AuthorizedKeysFile ${authorizedKeys}`,
      'UsePAM no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PubkeyAuthentication yes',
      'StrictModes no',
      `PidFile ${pidFile}`,
      'PermitRootLogin yes',
      `MaxSessions ${options.maxSessions ?? 10}`,
      'MaxStartups 100:30:200',
      'PrintMotd no',
      'PrintLastLog no',
      'UseDNS no',
      // Debian's bash reads ~/.bashrc for every command sshd runs unless SHLVL says it is nested: the
      // user's rc file (on CI machines, pyenv's 1.3 s of set-up) must not be part of every command.
      `SetEnv ${Object.entries({ SHLVL: '1', ...options.env })
        .map(([k, v]) => `${k}=${v}`)
        .join(' ')}`,
      `LogLevel ${options.logLevel ?? 'ERROR'}`,
      'Subsystem sftp internal-sftp',
      ...(options.extraConfig ?? []),
    ];
    writeFileSync(configPath, `${lines.join('\n')}\n`);
    writeFileSync(knownHostsPath, `[127.0.0.1]:${port} ${hostPublicKey}\n`);
  };

  const launch = async () => {
    for (let attempt = 1; ; attempt++) {
      ensurePrivsepDir();
      writeConfig();
      await rm(pidFile, { force: true });
      const sshdArgs = [SSHD_PATH, '-D', '-e', '-f', configPath];
      const wrapped = ['timeout', '-k', '5', String(lifetimeS), ...sshdArgs];
      const argv = usePdeathsig ? ['setpriv', '--pdeathsig', 'TERM', ...wrapped] : wrapped;
      const logFd = openSync(logFile, 'a');
      const proc = spawn(argv[0] as string, argv.slice(1), { stdio: ['ignore', logFd, logFd] });
      closeSync(logFd);
      let exited: string | undefined;
      proc.on('exit', (code, sig) => {
        exited = `sshd exited early (code ${code}, signal ${sig}); log: ${readFileSync(logFile, 'utf8').slice(-2000)}`;
      });
      proc.unref();
      try {
        await waitForBanner(port, 10_000, () => exited);
        // The pid file is written right after bind; wait for it so stop() can signal sshd itself.
        const until = Date.now() + 5000;
        while (!existsSync(pidFile) && Date.now() < until) await sleep(20);
        sshdPid = Number(readFileSync(pidFile, 'utf8').trim());
        child = proc;
        return;
      } catch (err) {
        if (proc.exitCode === null) proc.kill('SIGKILL');
        if (attempt >= 3) throw err;
        // Most likely the port was taken between freePort() and sshd's bind(): pick another.
        port = await freePort();
      }
    }
  };

  const halt = async () => {
    const proc = child;
    child = undefined;
    if (proc === undefined) return;
    const sessions = sessionPids();
    const pids = [sshdPid, ...sessions].filter((p) => p > 0);
    for (const p of pids) {
      try {
        process.kill(p, 'SIGCONT');
        process.kill(p, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    if (proc.exitCode === null && proc.signalCode === null) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          proc.kill('SIGKILL');
          resolve();
        }, 7000);
        proc.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
    const until = Date.now() + 5000;
    while (pids.some(alive) && Date.now() < until) await sleep(20);
  };

  const sessionPids = (): number[] => {
    if (sshdPid <= 0) return [];
    const out: number[] = [];
    const walk = (pid: number) => {
      for (const c of childPids(pid)) {
        if (exeOf(c) !== SSHD_PATH) continue;
        out.push(c);
        walk(c);
      }
    };
    walk(sshdPid);
    return out;
  };

  await launch();

  const server: SshdServer = {
    dir,
    host: '127.0.0.1',
    get port() {
      return port;
    },
    username,
    userPrivateKey: Buffer.from(userKey.private),
    userKeyPath,
    hostPublicKey,
    hostKeyFingerprint,
    logFile,
    get pid() {
      return sshdPid;
    },
    sshHost(overrides = {}) {
      return {
        name: `sshd-${port}`,
        host: '127.0.0.1',
        port,
        username,
        privateKey: Buffer.from(userKey.private),
        hostKey: { fingerprints: [hostKeyFingerprint] },
        ...overrides,
      };
    },
    knownHostsLine() {
      return `[127.0.0.1]:${port} ${hostPublicKey}`;
    },
    clientOptions() {
      return [
        '-i',
        userKeyPath,
        '-o',
        `UserKnownHostsFile=${knownHostsPath}`,
        '-o',
        'GlobalKnownHostsFile=/dev/null',
        '-o',
        'StrictHostKeyChecking=yes',
        '-o',
        'BatchMode=yes',
        '-o',
        'IdentitiesOnly=yes',
        '-o',
        'LogLevel=ERROR',
      ];
    },
    sessionPids,
    signalSessions(signal) {
      const pids = sessionPids();
      for (const p of pids) {
        try {
          process.kill(p, signal);
        } catch {
          // Already gone.
        }
      }
      return pids;
    },
    async restart() {
      await halt();
      await launch();
    },
    halt,
    async start() {
      if (stopped) throw new Error('sshd helper: start() after stop()');
      if (child === undefined) await launch();
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      await halt();
      await rm(dir, { recursive: true, force: true });
      releasePrivsepDir();
    },
  };
  return server;
}
