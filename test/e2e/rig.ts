/**
 * The real infrastructure of the end-to-end suite, all on 127.0.0.1 and in one temp folder:
 *
 * - a guest VM (guest.ts) defined as a libvirt domain in a private session libvirtd (libvirt.ts), its
 *   SSH (dropbear) forwarded to a loopback port;
 * - the "libvirt host": Debian's OpenSSH sshd (test/helpers/sshd.ts) whose sessions get
 *   `LIBVIRT_DEFAULT_URI` (sshd `SetEnv`), so the runner's `virsh` and `qemu-img` run there for real;
 * - a second sshd as a separate repository host, and a repository folder on the libvirt host;
 * - an inventory naming them all with pinned host keys, and the SQLite store.
 *
 * `stop()` stops all of it in order (domains, libvirtd, both sshd) and reports anything left. A guard
 * process watches this test process: if it dies, the guard kills every process that names the temp folder
 * or an sshd folder (QEMU, qemu-img, the CLI, sshd) and libvirtd, and removes the folders; it also ends
 * everything after a maximum lifetime.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import {
  appendFileSync,
  chmodSync,
  chownSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import type { DriverEnv } from '../../src/drivers/env.js';
import { inventoryHosts } from '../../src/inventory/hosts.js';
import { loadInventoryFile } from '../../src/inventory/load.js';
import type { Inventory, InventoryInput } from '../../src/inventory/schema.js';
import { SshPool } from '../../src/ssh/index.js';
import { freePort, type SshdServer, startSshd } from '../helpers/sshd.js';
import { buildGuest, type Guest } from './guest.js';
import { type CommandResult, daemonUser, domainXml, type Libvirtd, run, startLibvirtd } from './libvirt.js';

export const DOMAIN = 'vcl-e2e-guest';
/** Captured into the repository on the libvirt host, as qcow2, with the default timeouts. */
export const VM_LOCAL = 'vm1';
/** The same domain captured raw into the separate repository host, with a 6 s graceful power-off timeout. */
export const VM_REMOTE = 'vm1-raw';
export const SHORT_POWER_OFF_MS = 6000;
/** The domain again, its images boot-tested (the SSH check) before they are recorded. */
export const VM_BOOT = 'vm1-boot';
/** As `VM_BOOT`, for the image that must fail its boot test (one computer per case: `VM_BOOT` ends in reload). */
export const VM_NOBOOT = 'vm1-noboot';
/** A TCG boot to SSH takes 10-14 s on 2 idle cores: room for a loaded machine. */
export const BOOT_TEST_MS = 90_000;
const BIN = new URL('../../src/cli/bin.mjs', import.meta.url).pathname;

export interface Rig {
  dir: string;
  guest: Guest;
  libvirt: Libvirtd;
  /** sshd of the libvirt host (virsh, qemu-img run through it). */
  kvmHost: SshdServer;
  /** sshd of the separate repository host. */
  repoHost: SshdServer;
  disk: string;
  guestPort: number;
  localRepository: string;
  remoteRepository: string;
  inventoryFile: string;
  db: string;
  /** Setup timings in ms (guest build, libvirtd start, sshd...). */
  setup: Record<string, number>;
  /** A command in the guest through OpenSSH's client, the guest's host key pinned. */
  guestSsh(command: string, timeoutMs?: number): Promise<CommandResult>;
  /** The guest's boot id, or undefined when it does not answer. */
  bootId(): Promise<string | undefined>;
  /** `virsh start`, then waits until the guest answers over SSH. */
  startGuest(): Promise<{ bootId: string; ms: number }>;
  /** Waits until the guest answers with a boot id other than `notBoot`. */
  waitGuest(timeoutMs: number, notBoot?: string): Promise<string>;
  /** `vcl-capture <args>` as a user runs it (node src/cli/bin.mjs), with `--config` and `--db` of the rig. */
  cli(args: string[], timeoutMs?: number): Promise<CommandResult & { ms: number }>;
  /** What the runner gives a driver for `computer`, over a transport of its own (close it). */
  driverEnv(computer: string): { env: DriverEnv; inventory: Inventory; close(): Promise<void> };
  /** Processes that name the temp folder, and daemons of the rig still alive (empty when all is stopped). */
  leftovers(): string[];
  /** Stops everything; returns what was still running after the orderly stop (then killed). */
  stop(): Promise<string[]>;
}

/** Whether `pid` runs (a zombie does not). */
export function alive(pid: number): boolean {
  if (pid <= 0) return false;
  try {
    process.kill(pid, 0);
    const stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

/** PIDs (other than ours) whose command line mentions `needle`, with that command line. */
export function processesMentioning(needle: string): { pid: number; cmdline: string }[] {
  const out: { pid: number; cmdline: string }[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === process.pid) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'latin1').replaceAll('\0', ' ').trim();
      if (cmdline.includes(needle) && alive(Number(entry))) out.push({ pid: Number(entry), cmdline });
    } catch {
      // Ended while we looked.
    }
  }
  return out;
}

/**
 * The guard: signalled when this process dies (pdeathsig) or after `lifetimeS`, it kills every process
 * naming `dir` or a folder listed in `dir/guard-dirs`, and libvirtd (`pidFile`), and removes those folders.
 * SIGUSR1 ends it quietly after an orderly stop.
 */
const GUARD = `dir=$1; pidfile=$2
reap() {
  # More signals come while it sweeps (sshd's timeout signals its group as it dies): finish regardless.
  trap '' TERM INT HUP
  dirs="$dir"
  [ -f "$dir/guard-dirs" ] && dirs="$dirs $(cat "$dir/guard-dirs")"
  for p in /proc/[0-9]*; do
    n=\${p#/proc/}
    [ "$n" = "$$" ] && continue
    c=$(tr '\\000' ' ' < "$p/cmdline" 2>/dev/null)
    for d in $dirs; do
      case "$c" in *"$d"*) kill -9 "$n" 2>/dev/null; break ;; esac
    done
  done
  [ -s "$pidfile" ] && kill -9 "$(cat "$pidfile")" 2>/dev/null
  for d in $dirs; do rm -rf "$d"; done
  exit 0
}
sleep "$3" & s=$!
trap 'kill $s 2>/dev/null; exit 0' USR1
trap 'kill $s 2>/dev/null; reap' TERM INT HUP
wait $s
reap
`;

function startGuard(dir: string, pidFile: string, lifetimeS: number): ChildProcess {
  const guard = spawn(
    'setpriv',
    ['--pdeathsig', 'TERM', 'sh', '-c', GUARD, 'vcl-e2e-guard', dir, pidFile, String(lifetimeS)],
    { stdio: 'ignore' },
  );
  guard.unref();
  return guard;
}

export interface StartRigOptions {
  /** Everything is stopped by the guard after this long, whatever happens. Default 15 minutes. */
  lifetimeMs?: number;
  /** Size of the guest's disk. Default 64 MiB. */
  diskSize?: string;
}

export async function startRig(options: StartRigOptions = {}): Promise<Rig> {
  const setup: Record<string, number> = {};
  const t0 = Date.now();
  const dir = mkdtempSync(join(tmpdir(), 'vcl-e2e-'));
  // The daemon's user (nobody, when we are root) must reach the kernel, initramfs and disk.
  chmodSync(dir, 0o755);
  const user = daemonUser();
  const libvirtDir = join(dir, 'libvirt');
  const guard = startGuard(
    dir,
    join(libvirtDir, 'libvirtd.pid'),
    Math.ceil((options.lifetimeMs ?? 900_000) / 1000),
  );
  const stops: (() => Promise<void>)[] = [];
  const stopAll = async () => {
    for (const s of stops.reverse()) await s().catch(() => undefined);
    stops.length = 0;
  };
  try {
    const guestDir = join(dir, 'guest');
    mkdirSync(guestDir);
    const guest = buildGuest(guestDir);
    rmSync(join(guestDir, 'root'), { recursive: true, force: true });
    setup.guestBuild = guest.buildMs;

    const vmDir = join(dir, 'vm');
    mkdirSync(vmDir);
    const disk = join(vmDir, 'disk.qcow2');
    const created = await run('qemu-img', ['create', '-q', '-f', 'qcow2', disk, options.diskSize ?? '64M']);
    if (created.code !== 0) throw new Error(`qemu-img create: ${created.stderr}`);
    if (user) {
      chownSync(vmDir, user.uid, user.gid);
      chownSync(disk, user.uid, user.gid);
    }

    let t = Date.now();
    const libvirt = await startLibvirtd(libvirtDir);
    writeFileSync(join(libvirtDir, 'libvirtd.pid'), `${libvirt.pid}\n`);
    stops.push(() => libvirt.stop());
    setup.libvirtdStart = Date.now() - t;

    const guestPort = await freePort();
    let bootTestPort = await freePort();
    while (bootTestPort === guestPort) bootTestPort = await freePort();
    const xml = join(vmDir, 'domain.xml');
    writeFileSync(
      xml,
      domainXml({
        name: DOMAIN,
        kernel: guest.kernel,
        initramfs: guest.initramfs,
        disk,
        serialLog: join(vmDir, 'serial.log'),
        sshPort: guestPort,
      }),
    );
    const defined = await libvirt.virsh(['define', xml]);
    if (defined.code !== 0) throw new Error(`virsh define: ${defined.stderr}`);

    t = Date.now();
    const kvmHost = await startSshd({
      env: { LIBVIRT_DEFAULT_URI: libvirt.uri },
      lifetimeMs: options.lifetimeMs ?? 900_000,
    });
    stops.push(() => kvmHost.stop());
    const repoHost = await startSshd({ lifetimeMs: options.lifetimeMs ?? 900_000 });
    stops.push(() => repoHost.stop());
    // sshd stops by itself when we die (pdeathsig), but its folder would stay: the guard removes it.
    appendFileSync(join(dir, 'guard-dirs'), `${kvmHost.dir}\n${repoHost.dir}\n`);
    setup.sshdStart = Date.now() - t;

    const localRepository = join(dir, 'repo-local');
    const remoteRepository = join(dir, 'repo-remote');
    mkdirSync(localRepository);
    mkdirSync(remoteRepository);
    const logs = join(dir, 'logs');
    mkdirSync(logs);

    const hostEntry = (s: SshdServer) => ({
      address: '127.0.0.1',
      port: s.port,
      user: s.username,
      privateKeyPath: s.userKeyPath,
      hostKey: { fingerprints: [s.hostKeyFingerprint] },
    });
    const inventory: InventoryInput = {
      hosts: {
        kvm: hostEntry(kvmHost),
        images: hostEntry(repoHost),
        guest: {
          address: '127.0.0.1',
          port: guestPort,
          user: 'root',
          privateKeyPath: guest.userKeyPath,
          hostKey: { fingerprints: [guest.hostKeyFingerprint] },
        },
      },
      repositories: {
        local: { host: 'kvm', path: localRepository },
        central: { host: 'images', path: remoteRepository },
      },
      computers: {
        [VM_LOCAL]: {
          os: 'linux',
          host: 'guest',
          provisioner: { type: 'libvirt', host: 'kvm', domain: DOMAIN, format: 'qcow2' },
          repository: 'local',
        },
        [VM_REMOTE]: {
          os: 'linux',
          host: 'guest',
          provisioner: { type: 'libvirt', host: 'kvm', domain: DOMAIN, format: 'raw' },
          repository: 'central',
          timeouts: { powerOffMs: SHORT_POWER_OFF_MS, forcedOffMs: 30_000 },
        },
        ...Object.fromEntries(
          [VM_BOOT, VM_NOBOOT].map((name) => [
            name,
            {
              os: 'linux',
              host: 'guest',
              provisioner: {
                type: 'libvirt',
                host: 'kvm',
                domain: DOMAIN,
                format: 'qcow2',
                bootTest: { enabled: true, check: 'ssh', port: bootTestPort },
              },
              repository: 'local',
              timeouts: { bootTestMs: BOOT_TEST_MS },
            },
          ]),
        ),
      },
    };
    const inventoryFile = join(dir, 'inventory.yaml');
    writeFileSync(inventoryFile, stringify(inventory));
    const db = join(dir, 'captures.sqlite');

    const knownHosts = join(guestDir, 'known_hosts');
    writeFileSync(knownHosts, `[127.0.0.1]:${guestPort} ${guest.hostPublicKey}\n`);
    const sshArgs = [
      '-i',
      guest.userKeyPath,
      '-p',
      String(guestPort),
      '-o',
      `UserKnownHostsFile=${knownHosts}`,
      '-o',
      'GlobalKnownHostsFile=/dev/null',
      '-o',
      'StrictHostKeyChecking=yes',
      '-o',
      'BatchMode=yes',
      '-o',
      'IdentitiesOnly=yes',
      '-o',
      'ConnectTimeout=3',
      '-o',
      'LogLevel=ERROR',
    ];
    const guestSsh = (command: string, timeoutMs = 30_000) =>
      run('ssh', [...sshArgs, 'root@127.0.0.1', command], undefined, timeoutMs);
    const bootId = async () => {
      const r = await guestSsh('cat /proc/sys/kernel/random/boot_id', 8000);
      const id = r.stdout.trim();
      return r.code === 0 && /^[0-9a-f-]{36}$/.test(id) ? id : undefined;
    };
    const waitGuest = async (timeoutMs: number, notBoot?: string) => {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const id = await bootId();
        if (id !== undefined && id !== notBoot) return id;
        if (Date.now() > until) {
          const serial = readFileSync(join(vmDir, 'serial.log'), 'utf8').slice(-2000);
          throw new Error(`the guest did not answer over SSH within ${timeoutMs} ms; serial log:\n${serial}`);
        }
        await sleep(250);
      }
    };

    let captureNo = 0;
    let stopped: string[] | undefined;
    const leftovers = () => [
      ...processesMentioning(dir)
        .filter((p) => p.pid !== guard.pid)
        .map((p) => `pid ${p.pid}: ${p.cmdline.slice(0, 200)}`),
      ...(alive(libvirt.pid) ? [`libvirtd pid ${libvirt.pid}`] : []),
      ...(alive(kvmHost.pid) ? [`sshd (libvirt host) pid ${kvmHost.pid}`] : []),
      ...(alive(repoHost.pid) ? [`sshd (repository host) pid ${repoHost.pid}`] : []),
    ];
    setup.total = Date.now() - t0;

    return {
      dir,
      guest,
      libvirt,
      kvmHost,
      repoHost,
      disk,
      guestPort,
      localRepository,
      remoteRepository,
      inventoryFile,
      db,
      setup,
      guestSsh,
      bootId,
      waitGuest,
      async startGuest() {
        const started = Date.now();
        const r = await libvirt.virsh(['start', DOMAIN]);
        if (r.code !== 0) throw new Error(`virsh start: ${r.stderr}`);
        const id = await waitGuest(90_000);
        return { bootId: id, ms: Date.now() - started };
      },
      async cli(args, timeoutMs = 180_000) {
        captureNo += 1;
        const full = [
          '--log-level',
          'debug',
          '--log-file',
          join(logs, `cli-${captureNo}.jsonl`),
          ...args,
          ...((args[0] === 'capture' || args[0] === 'preflight') && !args.includes('--config')
            ? ['--config', inventoryFile]
            : []),
          // preflight reads no database: it reserves and records nothing.
          ...(args[0] === 'preflight' ? [] : ['--db', db]),
        ];
        const started = Date.now();
        const r = await run(process.execPath, [BIN, ...full], { ...process.env, NO_COLOR: '1' }, timeoutMs);
        return { ...r, ms: Date.now() - started };
      },
      driverEnv(computer) {
        const inv = loadInventoryFile(inventoryFile);
        const hosts = inventoryHosts(inv);
        const entry = inv.computers[computer];
        if (!entry) throw new Error(`no computer ${computer} in the rig's inventory`);
        const repo = inv.repositories[entry.repository];
        const host = (name: string) => {
          const h = hosts.get(name);
          if (!h) throw new Error(`no host ${name}`);
          return h;
        };
        const remote = new SshPool();
        const env: DriverEnv = {
          remote,
          computerName: computer,
          computer: entry,
          provisionerHost: host(entry.provisioner.host),
          guestHost: host(entry.host),
          repository: { host: host(repo?.host ?? ''), path: repo?.path ?? '' },
          pollMs: 500,
        };
        return { env, inventory: inv, close: () => remote.close() };
      },
      leftovers,
      async stop() {
        if (stopped) return stopped;
        await stopAll();
        // QEMU exits a moment after `virsh destroy` returns; sessions of sshd end with it.
        const until = Date.now() + 5000;
        let left = leftovers();
        while (left.length > 0 && Date.now() < until) {
          await sleep(100);
          left = leftovers();
        }
        stopped = left;
        if (left.length > 0)
          guard.kill('SIGTERM'); // the guard's sweep kills them and removes the folder
        else guard.kill('SIGUSR1');
        await new Promise<void>((resolve) => {
          if (guard.exitCode !== null || guard.signalCode !== null) return resolve();
          const timer = setTimeout(resolve, 5000);
          guard.once('exit', () => {
            clearTimeout(timer);
            resolve();
          });
        });
        rmSync(dir, { recursive: true, force: true });
        return left;
      },
    };
  } catch (err) {
    await stopAll();
    guard.kill('SIGTERM');
    await sleep(200);
    rmSync(dir, { recursive: true, force: true });
    throw err;
  }
}
