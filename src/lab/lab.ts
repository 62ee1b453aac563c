/**
 * `startLab()`: builds the world (computers and their disks), one SSH server per host on loopback, and
 * the inventory that points at them. See README-like notes in index.ts for the layout.
 */
import { randomUUID } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { ProvisionerName } from '../../machines/index.js';
import { type Inventory, type InventoryInput, parseInventory } from '../inventory/schema.js';
import { type LabProvisioner, PROVISIONER_ENTRIES, provisioners } from '../provisioners/index.js';
import { LAB_CAPTURE_IMAGE } from '../provisioners/xcat/lab.js';
import { findLocalZstd } from '../ssh/zstd.js';
import { startCaptureEnv } from './capture-env.js';
import { LINUX_COMMANDS, WINDOWS_COMMANDS } from './commands/guest.js';
import { POSIX_COMMANDS, sha256File } from './commands/posix.js';
import { hasLocalQemuImg, REPOSITORY_QEMU_IMG } from './commands/qemu-img.js';
import { TRANSPORT_COMMANDS } from './commands/transport.js';
import { ZSTD_COMMANDS } from './commands/zstd.js';
import {
  type ComputerRecord,
  type GuestState,
  type Handler,
  type HostRuntime,
  type LabCore,
  NoSpaceError,
} from './core.js';
import { FaultRegistry, hostMatches, pathMatches } from './faults.js';
import { flipByteInFile, HostFs } from './fs.js';
import { generateClientKey, generateHostKey, type HostKey } from './keys.js';
import { guestProfileOf, type ResolvedOptions, resolveOptions } from './options.js';
import { HostServer } from './server.js';
import {
  COMPUTER_KINDS,
  type CommandLogEntry,
  type ComputerKind,
  type Fault,
  type HostRole,
  type Lab,
  type LabComputer,
  type LabHostInfo,
  type LabOptions,
  type Os,
  type PowerState,
  type Provisioner,
} from './types.js';
import { Computer } from './world.js';

type InventoryProvisioner = InventoryInput['computers'][string]['provisioner'];

const LABS = PROVISIONER_ENTRIES.map(([name, p]) => [name, p.lab] as const);
type ProvisionerLab = (typeof provisioners)[ProvisionerName]['lab'];

/** Inventory names of the infrastructure hosts, by the lab's role for them. */
export const LAB_HOSTS = {
  ...(Object.fromEntries(LABS.map(([, l]) => [l.host.role, l.host.name])) as {
    [L in ProvisionerLab as L['host']['role']]: L['host']['name'];
  }),
  repository: 'repo-host',
} as const;

/** Repositories every lab defines: host and path (the shared one, then those on provisioner hosts). */
export const LAB_REPOSITORIES = {
  images: { host: LAB_HOSTS.repository, path: '/srv/vcl/images' },
  ...(Object.fromEntries(
    LABS.flatMap(([, l]) =>
      Object.entries(l.repositories).map(([k, path]) => [k, { host: l.host.name, path }]),
    ),
  ) as { [K in LabRepositoryOf<ProvisionerLab>]: { host: string; path: string } }),
} as const;

type LabRepositoryOf<L> = L extends { repositories: infer R } ? keyof R & string : never;

export { LAB_CAPTURE_IMAGE };

function commandTable(...tables: ReadonlyMap<string, Handler>[]): ReadonlyMap<string, Handler> {
  const out = new Map<string, Handler>();
  for (const t of tables) for (const [k, v] of t) out.set(k, v);
  return out;
}

const BASE_COMMANDS = [POSIX_COMMANDS, TRANSPORT_COMMANDS] as const;
// Debian hosts have zstd (each provisioner's lab host says whether it does); the repository host also
// qemu-utils, which the VMware verification uses where it is installed.
const REPOSITORY_COMMANDS = commandTable(...BASE_COMMANDS, ZSTD_COMMANDS, REPOSITORY_QEMU_IMG);
const GUEST_COMMANDS: Record<Os, ReadonlyMap<string, Handler>> = {
  linux: commandTable(POSIX_COMMANDS, TRANSPORT_COMMANDS, LINUX_COMMANDS),
  windows: commandTable(POSIX_COMMANDS, TRANSPORT_COMMANDS, WINDOWS_COMMANDS),
};

class Runtime implements LabCore {
  readonly faults = new FaultRegistry();
  readonly hosts = new Map<string, HostRuntime>();
  readonly computers = new Map<string, ComputerRecord>();
  readonly captureImage = LAB_CAPTURE_IMAGE;
  readonly internalErrors: Error[] = [];
  readonly commandLog: CommandLogEntry[] = [];
  readonly servers = new Map<string, HostServer>();
  private readonly timers = new Set<NodeJS.Timeout>();
  private readonly stopController = new AbortController();
  private readonly started = performance.now();
  private pid = 1000;
  private readonly work = new Set<Promise<unknown>>();
  /** Bytes each `diskFull` fault let through so far. */
  private readonly written = new WeakMap<Fault, number>();

  constructor(readonly options: ResolvedOptions) {
    // Every capture environment running listens for the lab's stop (one per xCAT node capturing):
    // hundreds at a time are expected, not a leak.
    setMaxListeners(0, this.stopController.signal);
    this.faults.checkNames = (fault) => {
      const hosts = 'host' in fault && fault.host !== undefined ? [fault.host].flat() : [];
      const unknownHost = hosts.find((h) => !this.hosts.has(h));
      if (unknownHost !== undefined)
        throw new RangeError(`fault ${fault.kind}: the lab has no host ${unknownHost}`);
      if ('computer' in fault && !this.computers.has(fault.computer))
        throw new RangeError(`fault ${fault.kind}: the lab has no computer ${fault.computer}`);
    };
    this.faults.added = (fault) => {
      if (fault.kind !== 'unreachable') return;
      for (const [name, server] of this.servers) if (hostMatches(fault.host, name)) server.dropAll();
    };
  }

  get stopping(): AbortSignal {
    return this.stopController.signal;
  }

  nextPid(): number {
    this.pid = this.pid >= 4_000_000 ? 1000 : this.pid + 1;
    return this.pid;
  }

  log(entry: Omit<CommandLogEntry, 'atMs'>): void {
    this.commandLog.push({ ...entry, atMs: Math.round((performance.now() - this.started) * 1000) / 1000 });
  }

  freeBytes(host: string): number {
    const full = this.faults.peek('diskFull', (f) => hostMatches(f.host, host));
    if (full !== undefined) return Math.max(0, (full.afterBytes ?? 0) - (this.written.get(full) ?? 0));
    return this.options.freeBytes[host] ?? this.options.defaultFreeBytes;
  }

  checkWrite(host: string, bytes: number): void {
    const full = this.faults.peek('diskFull', (f) => hostMatches(f.host, host));
    if (full === undefined) return;
    const used = this.written.get(full) ?? 0;
    if (used + bytes <= (full.afterBytes ?? 0)) {
      this.written.set(full, used + bytes);
      return;
    }
    // Once full, it stays full: a smaller write later must not squeeze into the space left.
    this.written.set(full, Number.POSITIVE_INFINITY);
    this.faults.fire(full);
    throw new NoSpaceError();
  }

  async beforeRead(host: HostRuntime, path: string, real: string): Promise<void> {
    const rot = this.faults.take(
      'corrupt',
      (f) => f.at === 'file' && hostMatches(f.host, host.name) && pathMatches(f.path, path),
    );
    if (rot !== undefined) await flipByteInFile(real, rot.offset);
  }

  track(work: Promise<unknown>): void {
    this.work.add(work);
    work.finally(() => this.work.delete(work)).catch(() => {});
  }

  /** Waits (at most `ms`) for commands and uploads that were stopped to finish unwinding. */
  async settled(ms: number): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.work]),
      new Promise((r) => {
        timer = setTimeout(r, ms);
      }),
    ]);
    clearTimeout(timer);
  }

  setTimer(fn: () => void, ms: number): NodeJS.Timeout {
    const t = setTimeout(() => {
      this.timers.delete(t);
      if (!this.stopping.aborted) fn();
    }, ms);
    this.timers.add(t);
    return t;
  }

  stop(): void {
    this.stopController.abort();
    for (const host of this.hosts.values()) host.fs.close();
    for (const t of this.timers) clearTimeout(t);
    this.timers.clear();
    for (const rec of this.computers.values()) {
      rec.stopCapture?.();
      rec.computer.dispose();
    }
  }
}

function hostRuntime(
  name: string,
  role: HostRole,
  user: string,
  fs: HostFs,
  commands: ReadonlyMap<string, Handler>,
  computer: Computer | undefined,
  guest: GuestState | undefined,
  drop: () => void,
): HostRuntime {
  return {
    name,
    role,
    user,
    fs,
    commands,
    computer,
    guest,
    missingTools: new Set(guest?.profile.missingTools ?? []),
    procs: new Map(),
    running: new Set(),
    dropConnections: drop,
  };
}

function macOf(i: number, vendor: string): string {
  return `${vendor}:${((i >> 8) & 0xff).toString(16).padStart(2, '0')}:${(i & 0xff).toString(16).padStart(2, '0')}`;
}

/** A lab computer's name: its provisioner's prefix, its OS and its number of that kind (`lv-linux-1`). */
export function labComputerName(kind: ComputerKind, n: number): string {
  const [provisioner, os] = kind.split('-') as [Provisioner, Os];
  return `${provisioners[provisioner].lab.prefix}-${os}-${n}`;
}

export async function startLab(options: LabOptions = {}): Promise<Lab> {
  const opts = resolveOptions(options);
  const dir = await mkdtemp(join(opts.tmpDir ?? tmpdir(), 'vcl-lab-'));
  const rt = new Runtime(opts);
  try {
    return await build(rt, dir);
  } catch (err) {
    rt.stop();
    await Promise.all([...rt.servers.values()].map((s) => s.close()));
    await rm(dir, { recursive: true, force: true });
    throw err;
  }
}

async function build(rt: Runtime, dir: string): Promise<Lab> {
  const opts = rt.options;
  const clientKey = generateClientKey();
  const privateKeyPath = join(dir, 'client', 'id_ed25519');
  await mkdir(dirname(privateKeyPath), { recursive: true, mode: 0o700 });
  await writeFile(privateKeyPath, clientKey.privateKey, { mode: 0o600 });
  await chmod(privateKeyPath, 0o600);
  await writeFile(`${privateKeyPath}.pub`, `${clientKey.publicKey}\n`, { mode: 0o644 });

  const keys = new Map<string, HostKey>();
  const roles = new Map<string, HostRole>();
  const dropper = (name: string) => () => rt.servers.get(name)?.dropAll();

  // Infrastructure hosts.
  const infra: [
    string,
    HostRole,
    string[],
    ReadonlyMap<string, Handler>,
    ((fs: HostFs) => Promise<void>)?,
  ][] = [
    ...LABS.map(([, l]): (typeof infra)[number] => [
      l.host.name,
      l.host.role,
      [...l.host.dirs, ...Object.values(l.repositories)],
      commandTable(...BASE_COMMANDS, ...l.host.commands),
      'prepare' in l.host ? l.host.prepare : undefined,
    ]),
    [LAB_HOSTS.repository, 'repository', [LAB_REPOSITORIES.images.path, '/root'], REPOSITORY_COMMANDS],
  ];
  const hasLocalZstd = (await findLocalZstd()) !== undefined;
  const hasQemuImg = await hasLocalQemuImg();
  for (const [name, role, dirs, commands, prepare] of infra) {
    const fs = new HostFs(join(dir, 'hosts', name));
    for (const d of dirs) await mkdir(fs.realOf(d), { recursive: true });
    await prepare?.(fs);
    const runtime = hostRuntime(name, role, 'root', fs, commands, undefined, undefined, dropper(name));
    runtime.missingTools = new Set(opts.missingTools[name] ?? []);
    // The lab's zstd needs this machine's binary for the frame format: without it, no host has zstd.
    if (!hasLocalZstd) runtime.missingTools = new Set([...runtime.missingTools, 'zstd']);
    // The same for the repository host's qemu-img (only there: the libvirt host's is the lab's model).
    if (!hasQemuImg && role === 'repository')
      runtime.missingTools = new Set([...runtime.missingTools, 'qemu-img']);
    rt.hosts.set(name, runtime);
    roles.set(name, role);
    keys.set(name, generateHostKey());
  }

  // Computers: the world, their disks, and one guest host each.
  const numbered: Partial<Record<Provisioner, number>> = {};
  let n = 0;
  for (const kind of COMPUTER_KINDS) {
    const [provisioner, os] = kind.split('-') as [Provisioner, Os];
    const lab: LabProvisioner = provisioners[provisioner].lab;
    for (let i = 1; i <= opts.computers[kind]; i++) {
      n++;
      const name = labComputerName(kind, i);
      if (lab.numbered) numbered[provisioner] = (numbered[provisioner] ?? 0) + 1;
      const vmid = lab.numbered ? (numbered[provisioner] ?? 0) : 0;
      const rec = addComputer(rt, dir, name, kind, provisioner, os, vmid, n);
      const guestHome = os === 'linux' ? '/root' : '/home/Administrator';
      const profile = guestProfileOf(opts, name, os);
      const fs = new HostFs(join(dir, 'hosts', name), guestHome, async () => {
        for (const d of [guestHome, ...profile.dirs]) await mkdir(fs.realOf(d), { recursive: true });
        for (const [p, text] of Object.entries(profile.files)) {
          await mkdir(dirname(fs.realOf(p)), { recursive: true });
          await writeFile(fs.realOf(p), text);
        }
      });
      const guest: GuestState = {
        profile,
        users: new Set([...profile.users, ...opts.reservationUsers]),
        inDomain: os === 'windows' && profile.inDomain,
        pagefile: true,
        rootLocked: false,
      };
      const user = os === 'linux' ? 'root' : 'Administrator';
      const host = hostRuntime(
        name,
        'guest',
        user,
        fs,
        GUEST_COMMANDS[os],
        rec.computer,
        guest,
        dropper(name),
      );
      rt.hosts.set(name, host);
      roles.set(name, 'guest');
      keys.set(name, generateHostKey());
      rec.computer.on('power', () => {
        if (!rec.computer.answersSsh) host.dropConnections();
        if (rec.computer.power === 'on' && rec.computer.running === 'captureEnv') startCaptureEnv(rt, rec);
      });
    }
  }

  // Servers.
  await Promise.all(
    [...rt.hosts.values()].map(async (host) => {
      const server = new HostServer(rt, host, keys.get(host.name) as HostKey, clientKey);
      rt.servers.set(host.name, server);
      await server.listen();
    }),
  );

  const hosts: Record<string, LabHostInfo> = {};
  for (const host of rt.hosts.values()) {
    hosts[host.name] = {
      name: host.name,
      role: roles.get(host.name) as HostRole,
      port: rt.servers.get(host.name)?.port ?? 0,
      user: host.user,
      fingerprint: (keys.get(host.name) as HostKey).fingerprint,
      root: host.fs.root,
    };
  }
  const inventory = parseInventory(inventoryOf(rt, hosts, privateKeyPath));
  return makeLab(rt, dir, privateKeyPath, hosts, inventory);
}

function addComputer(
  rt: Runtime,
  dir: string,
  name: string,
  kind: LabComputer['kind'],
  provisioner: Provisioner,
  os: Os,
  vmid: number,
  index: number,
): ComputerRecord {
  const opts = rt.options;
  const computer = new Computer(
    name,
    kind,
    os,
    provisioner,
    { bootMs: opts.powerDelayMs, downMs: opts.powerDelayMs },
    () => {
      const f = rt.faults.peek('neverPowersOff', (x) => x.computer === name);
      return f === undefined ? undefined : (f.mode ?? 'ignore');
    },
  );
  const lab: LabProvisioner = provisioners[provisioner].lab;
  const host = rt.hosts.get(lab.host.name) as HostRuntime;
  const repository = LAB_REPOSITORIES[opts.repositories[provisioner]];
  const { disk, flatPath, ensureDisk } = lab.disk({
    name,
    host,
    dir,
    sizeBytes: opts.diskBytes,
    stopping: rt.stopping,
  });
  const rec: ComputerRecord = {
    computer,
    info: { name, kind, os, provisioner, guestHost: name, disk },
    os,
    provisioner,
    uuid: randomUUID(),
    mac: macOf(index, lab.macVendor),
    flatPath,
    vmid,
    registered: true,
    defined: true,
    nodeset: { kind: 'boot' },
    profile: 'compute',
    repository: { host: repository.host, path: repository.path },
    stopCapture: undefined,
    ensureDisk,
  };
  lab.setUp?.(rec, host);
  rt.computers.set(name, rec);
  return rec;
}

function inventoryOf(
  rt: Runtime,
  hosts: Record<string, LabHostInfo>,
  privateKeyPath: string,
): InventoryInput {
  return {
    hosts: Object.fromEntries(
      Object.values(hosts).map((h) => [
        h.name,
        {
          address: '127.0.0.1',
          port: h.port,
          user: h.user,
          privateKeyPath,
          hostKey: { fingerprints: [h.fingerprint] },
        },
      ]),
    ),
    computers: Object.fromEntries(
      [...rt.computers.values()].map((rec) => {
        const name = rec.info.name;
        const lab: LabProvisioner = provisioners[rec.provisioner].lab;
        const provisioner = lab.inventory(name, lab.host.name) as InventoryProvisioner;
        return [
          name,
          {
            os: rec.os,
            host: name,
            provisioner,
            repository: rt.options.repositories[rec.provisioner],
            reservationUsers: rt.options.reservationUsers,
          },
        ];
      }),
    ),
    repositories: Object.fromEntries(
      Object.entries(LAB_REPOSITORIES).map(([k, v]) => [k, { host: v.host, path: v.path }]),
    ),
    ...(rt.options.timeouts === undefined ? {} : { defaults: { timeouts: rt.options.timeouts } }),
  };
}

function makeLab(
  rt: Runtime,
  dir: string,
  privateKeyPath: string,
  hosts: Record<string, LabHostInfo>,
  inventory: Inventory,
): Lab {
  let stopped: Promise<void> | undefined;
  const record = (name: string): ComputerRecord => {
    const rec = rt.computers.get(name);
    if (rec === undefined) throw new Error(`the lab has no computer ${name}`);
    return rec;
  };
  const hostOf = (name: string): HostRuntime => {
    const h = rt.hosts.get(name);
    if (h === undefined) throw new Error(`the lab has no host ${name}`);
    return h;
  };
  const realPath = async (host: string, path: string) => (await hostOf(host).fs.prepare(path)).real;
  return {
    inventory,
    dir,
    privateKeyPath,
    hosts,
    commandLog: rt.commandLog,
    faults: rt.faults,
    internalErrors: rt.internalErrors,
    computerNames: () => [...rt.computers.keys()],
    computer(name) {
      const rec = record(name);
      const c = rec.computer;
      return { ...rec.info, power: c.power, running: c.running, bootId: c.bootId, boots: c.boots };
    },
    waitForPower(name, state: PowerState, timeoutMs = 10_000) {
      const c = record(name).computer;
      if (c.power === state) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const t = setTimeout(() => {
          c.off('power', on);
          reject(new Error(`${name} did not reach ${state} within ${timeoutMs} ms (it is ${c.power})`));
        }, timeoutMs);
        const on = (s: PowerState) => {
          if (s !== state) return;
          clearTimeout(t);
          c.off('power', on);
          resolve();
        };
        c.on('power', on);
      });
    },
    powerOn: (name) => {
      record(name).computer.powerOn();
    },
    powerOff: (name) => {
      record(name).computer.hardOff();
    },
    realPath,
    async exists(host, path) {
      return (await stat(await realPath(host, path)).catch(() => undefined)) !== undefined;
    },
    async readFile(host, path) {
      return await readFile(await realPath(host, path));
    },
    async sha256(host, path) {
      return await sha256File(await realPath(host, path));
    },
    async diskSha256(name) {
      return await sha256File(await record(name).ensureDisk());
    },
    runningCommands: (host) =>
      [...rt.hosts.values()]
        .filter((x) => host === undefined || x.name === host)
        .reduce((n, x) => n + x.running.size, 0),
    commands: (host) =>
      rt.commandLog
        .filter((e) => e.kind === 'exec' && (host === undefined || e.host === host))
        .map((e) => e.argv as string[]),
    clearLog() {
      rt.commandLog.length = 0;
    },
    stop() {
      stopped ??= (async () => {
        rt.stop();
        await Promise.all([...rt.servers.values()].map((s) => s.close()));
        // Commands were aborted with their connections; let those still unwinding finish their last
        // file operation before the files go.
        await rt.settled(1000);
        await rm(dir, { recursive: true, force: true, maxRetries: 3 });
      })();
      return stopped;
    },
  };
}
