/**
 * What command handlers see of the lab: the host they run on, the world, the faults, and the context of
 * one command (its argv, stdin, output with back-pressure, the abort signal of a kill or closed channel).
 */
import type { Readable } from 'node:stream';
import type { ExecInfo } from './exec.js';
import type { FaultRegistry } from './faults.js';
import type { HostFs } from './fs.js';
import type { ResolvedOptions } from './options.js';
import type { CommandLogEntry, GuestProfile, HostRole, LabComputer, Os, Provisioner } from './types.js';
import type { Computer } from './world.js';

/** A command's answer: exit status and a message for stderr. Thrown by handlers to fail. */
export class CommandError extends Error {
  constructor(
    readonly exitCode: number,
    readonly stderr: string,
  ) {
    super(stderr);
  }
}

/** A write the lab's `diskFull` fault refused; handlers turn it into their tool's own message. */
export class NoSpaceError extends Error {
  readonly code = 'ENOSPC';
  constructor() {
    super('No space left on device');
  }
}

export function fail(exitCode: number, stderr: string): never {
  throw new CommandError(exitCode, stderr.endsWith('\n') || stderr === '' ? stderr : `${stderr}\n`);
}

export interface CommandContext {
  readonly core: LabCore;
  readonly host: HostRuntime;
  readonly argv: readonly string[];
  /** Aborted when the command is killed (signal request, kill script) or its channel or connection closes. */
  readonly signal: AbortSignal;
  readonly stdin: Readable;
  /** Writes to stdout; resolves once the data is on its way (SSH window permitting). */
  out(data: string | Buffer): Promise<void>;
  err(data: string | Buffer): Promise<void>;
  /** Waits, or rejects when the command is aborted. */
  sleep(ms: number): Promise<void>;
  /** Drops the SSH connection the command arrived on (TCP closed, no exit status). */
  dropConnection(): void;
}

/** Returns the exit status; throws `CommandError` to fail with a message. */
export type Handler = (ctx: CommandContext) => Promise<number>;

export interface HostRuntime {
  name: string;
  role: HostRole;
  user: string;
  fs: HostFs;
  commands: ReadonlyMap<string, Handler>;
  /** Guests: the computer whose OS this is. */
  computer: Computer | undefined;
  /** Programs `command -v` reports missing, beyond those the host has no handler for. */
  missingTools: ReadonlySet<string>;
  /** Drops every connection to this host (a guest going down). */
  dropConnections(): void;
  /** Running commands by (fake) PID, for the transport's kill script, with their runner tag if any. */
  procs: Map<number, { kill(signal: string): void; tag?: string | undefined }>;
  /** Commands running now (with or without a PID). */
  running: Set<ExecInfo>;
  /** Guests: what the OS holds that its commands change. */
  guest: GuestState | undefined;
}

export interface GuestState {
  profile: GuestProfile;
  users: Set<string>;
  inDomain: boolean;
  pagefile: boolean;
  rootLocked: boolean;
}

/** Per-computer facts the provisioner hosts answer from. */
export interface ComputerRecord {
  computer: Computer;
  info: Omit<LabComputer, 'power' | 'running' | 'bootId' | 'boots'>;
  os: Os;
  provisioner: Provisioner;
  uuid: string;
  mac: string;
  /** VMware: the `-flat.vmdk` data file beside the descriptor `info.disk.path`. */
  flatPath: string | undefined;
  /** VMware: the VM's id in `vim-cmd vmsvc/getallvms`; registered until `unregister`. */
  vmid: number;
  registered: boolean;
  /** libvirt: the domain is defined until `virsh undefine`. */
  defined: boolean;
  /** xCAT: `nodeset` (boot from disk, or an osimage) and `nodech nodetype.profile=`. */
  nodeset: { kind: 'boot' } | { kind: 'osimage'; image: string };
  profile: string;
  /** xCAT: the capture environment's repository. */
  repository: { host: string; path: string };
  /** Stops a running capture environment upload. */
  stopCapture: (() => void) | undefined;
  /** The disk's real path, created (sparse) on first use. */
  ensureDisk(): Promise<string>;
}

export interface LabCore {
  readonly options: ResolvedOptions;
  readonly faults: FaultRegistry;
  readonly hosts: ReadonlyMap<string, HostRuntime>;
  readonly computers: ReadonlyMap<string, ComputerRecord>;
  /** The xCAT osimage that boots a node into the capture environment. */
  readonly captureImage: string;
  /**
   * Bytes free on `host`'s file systems, as `df` and `vmkfstools -P` report them: what a `diskFull` fault
   * still lets through while one covers the host, else the `freeBytes` option.
   */
  freeBytes(host: string): number;
  /** Fails with ENOSPC ("No space left on device") when a `diskFull` fault covers `bytes` more on `host`. */
  checkWrite(host: string, bytes: number): void;
  /** Runs `corrupt at: 'file'` faults for a file about to be read. */
  beforeRead(host: HostRuntime, path: string, real: string): Promise<void>;
  /** Timers the lab owns (stopped by `stop()`). */
  setTimer(fn: () => void, ms: number): NodeJS.Timeout;
  readonly stopping: AbortSignal;
  /** Next fake PID (also the process group the transport kills). */
  nextPid(): number;
  /** Appends to the command log. */
  log(entry: Omit<CommandLogEntry, 'atMs'>): void;
  /** Keeps a command's work in sight until it settles (stop waits for it before removing files). */
  track(work: Promise<unknown>): void;
  /** Handler failures that were the lab's own fault (tests assert there are none). */
  readonly internalErrors: Error[];
}

/** The computer whose running domain (or VM) holds `path` open on `host`. */
export function diskInUse(core: LabCore, host: string, path: string): ComputerRecord | undefined {
  for (const rec of core.computers.values()) {
    const disk = rec.info.disk;
    if (disk.host !== host || rec.computer.power === 'off') continue;
    if (disk.path === path || rec.flatPath === path) return rec;
  }
  return undefined;
}
