/** The lab's public types: options, the running lab, faults, the command log. */
import { PROVISIONERS } from '../../machines/index.js';
import { OPERATING_SYSTEMS, type OsName, type ProvisionerName, type Timeouts } from '../../machines/types.js';
import type { Inventory } from '../inventory/schema.js';
import type { provisioners } from '../provisioners/index.js';
import type { LAB_REPOSITORIES } from './lab.js';

export type Provisioner = ProvisionerName;
export type Os = OsName;
/** A kind of computer: provisioner and OS, e.g. `libvirt-linux`. */
export type ComputerKind = `${Provisioner}-${Os}`;

/** Every kind, provisioner by provisioner (the registry's order), OS by OS. */
export const COMPUTER_KINDS: readonly ComputerKind[] = PROVISIONERS.flatMap((p) =>
  OPERATING_SYSTEMS.map((o): ComputerKind => `${p}-${o}`),
);

/** A repository every lab defines (`images`, and those on provisioner hosts). */
export type LabRepositoryName = keyof typeof LAB_REPOSITORIES;

/** What a guest OS has installed and holds, for the probes of the pre_capture plans. */
export interface GuestProfile {
  /**
   * Programs that are not installed (`command -v` fails, running them answers 127). E.g. `['userdel']`
   * for a busybox system, which has `deluser` instead.
   */
  missingTools: string[];
  /** Files the guest starts with, by absolute path (created when the guest is first used). */
  files: Record<string, string>;
  /** Folders the guest starts with. */
  dirs: string[];
  /** Local accounts (those `userdel`/`net user /delete` can remove). */
  users: string[];
  /** Windows: the computer is joined to an AD domain (`wmic computersystem get PartOfDomain`). */
  inDomain: boolean;
}

export interface LabOptions {
  /**
   * How many computers of each kind. Default: one of each (`lv-linux-1`, `lv-windows-1`, `vm-linux-1`,
   * `vm-windows-1`, `xc-linux-1`, `xc-windows-1`, `px-linux-1`, `px-windows-1`). When given, kinds left out
   * get none.
   */
  computers?: Partial<Record<ComputerKind, number>>;
  /** Time of each power transition (booting, going down). Default 50 ms. */
  powerDelayMs?: number;
  /** How long sysprep works before it shuts down, reboots or quits. Default `powerDelayMs`. */
  sysprepMs?: number;
  /** Size of every computer's disk (a sparse file). Default 4 MiB. */
  diskBytes?: number;
  /** xCAT capture environment: bytes written per step and time between steps. Default 1 MiB / 20 ms. */
  captureChunkBytes?: number;
  captureChunkMs?: number;
  /** Delay before every command runs (a slow host). Default 0. */
  commandLatencyMs?: number;
  /** Accounts each computer's reservation created (inventory `reservationUsers`). Default `['vcluser']`. */
  reservationUsers?: string[];
  /** Guest profiles by computer name, merged over the OS defaults (`GUEST_PROFILES`). */
  guestProfiles?: Record<string, Partial<GuestProfile>>;
  /** Repository each provisioner's computers use. Default: its lab entry's (`images`; xCAT `xcat-images`). */
  repositories?: Partial<Record<Provisioner, LabRepositoryName>>;
  /** Put into the inventory's `defaults.timeouts`. */
  timeouts?: Partial<Timeouts>;
  /** Parent of the lab's temp dir. Default `os.tmpdir()`. */
  tmpDir?: string;
  /**
   * Bytes free on a host's file systems as `df -P -B1` and `vmkfstools -P` report them, by host name
   * (default 512 GiB; a `diskFull` fault on the host makes it what the fault still lets through). Only
   * reported: writes are limited by `diskFull` alone.
   */
  freeBytes?: Record<string, number>;
  /**
   * Programs an infrastructure host lacks, by host name (`{ 'libvirt-host': ['qemu-img'] }`): `command -v`
   * fails for them and running them answers 127. Guests take theirs from `guestProfiles`.
   */
  missingTools?: Record<string, string[]>;
}

export type PowerState = 'off' | 'booting' | 'on' | 'goingDown';

/** One computer as tests see it. */
export interface LabComputer {
  name: string;
  kind: ComputerKind;
  os: Os;
  provisioner: Provisioner;
  /** The inventory host of its own OS (same name as the computer). */
  guestHost: string;
  power: PowerState;
  /** What runs while it is on: its own OS, or (xCAT) the capture environment. */
  running: 'os' | 'captureEnv' | undefined;
  /** Changes at every boot (Linux boot_id UUID, Windows LastBootUpTime); undefined while off. */
  bootId: string | undefined;
  boots: number;
  /**
   * Its disk: host and virtual path (VMware: the .vmdk descriptor) and the real path of its data (VMware:
   * the -flat.vmdk). xCAT disks belong to the bare metal: no host, `path` is the real path.
   */
  disk: { host: string | undefined; path: string; real: string };
}

export interface CommandLogEntry {
  /** Inventory name of the host that received the line. */
  host: string;
  /** The command line exactly as received. */
  line: string;
  /**
   * The words the lab read from it (after the transport's `echo VCLPID=$$; exec` prefix); null for a
   * refused line and for the transport's kill script.
   */
  argv: string[] | null;
  kind: 'exec' | 'kill' | 'refused';
  /** Milliseconds since the lab started. */
  atMs: number;
}

/** Which hosts a fault applies to: one name, several, or (absent) every host. */
export type HostMatch = string | readonly string[];
/** Which commands: an argv prefix (`['virsh', 'shutdown']`), or a RegExp tested on `argv.join(' ')`. */
export type CommandMatch = readonly string[] | RegExp;
/** Which files: a virtual path (itself or anything below it) or a RegExp. */
export type PathMatch = string | RegExp;

interface Counted {
  /** How many times it fires before it is used up. Default 1; `Infinity` until cleared. */
  times?: number;
}

/** A matching command exits with `exitCode` and `stderr` (and `stdout`) instead of running. */
export interface FailCommandFault extends Counted {
  kind: 'failCommand';
  host?: HostMatch;
  match: CommandMatch;
  exitCode: number;
  stderr?: string;
  stdout?: string;
}

/** A matching command never finishes: until the client closes its channel, signals or kills it. */
export interface HangCommandFault extends Counted {
  kind: 'hangCommand';
  host?: HostMatch;
  match: CommandMatch;
}

/**
 * The SSH connection a matching command runs on drops (TCP closed, no exit status): at once, after
 * `afterMs`, or (mid-copy) once the command has sent or received `afterBytes` bytes of data.
 */
export interface DropConnectionFault extends Counted {
  kind: 'dropConnection';
  host?: HostMatch;
  /** Default: any command. */
  match?: CommandMatch;
  afterMs?: number;
  afterBytes?: number;
}

/**
 * A computer never powers off by itself: graceful requests (its own `shutdown`, `virsh shutdown`,
 * `power.shutdown`, sysprep) are `ignored` (it keeps running and answering), or it `hang`s going down (no
 * longer answers, power stays on). Hard power off (`virsh destroy`, `power.off`, `rpower off`) still
 * works. Lasts until cleared.
 */
export interface NeverPowersOffFault {
  kind: 'neverPowersOff';
  computer: string;
  mode?: 'ignore' | 'hang';
}

/**
 * Copied bytes are corrupted: `read` flips a byte in what `cat` streams out of a matching file, `write`
 * flips one in what a streamed copy writes into a matching file (the transport's temp file counts as its
 * final name), `file` flips one in the matching file on disk the next time a command reads it (a copy that
 * rots between write and verification).
 */
export interface CorruptFault extends Counted {
  kind: 'corrupt';
  at: 'read' | 'write' | 'file';
  host?: HostMatch;
  path?: PathMatch;
  /** Offset of the flipped byte. Default: the middle of the file (`read`/`file`) or of the first chunk. */
  offset?: number;
}

/**
 * A host's disk is full: writes fail with "No space left on device" once `afterBytes` (default 0) more
 * bytes were written, and every write after that too. Each refused write counts as a firing; lasts until
 * cleared unless `times` is given.
 */
export interface DiskFullFault extends Counted {
  kind: 'diskFull';
  host: HostMatch;
  afterBytes?: number;
}

/** `vmkfstools -i` finds the source disk needs repair (until `vmkfstools -x repair` runs). */
export interface NeedsRepairFault extends Counted {
  kind: 'needsRepair';
  host?: HostMatch;
  /** The source disk (descriptor path). Default: any. */
  disk?: PathMatch;
}

/** The xCAT capture environment fails after `afterBytes` and writes the `.capturefailed` marker. */
export interface CaptureFailsFault extends Counted {
  kind: 'captureFails';
  computer: string;
  afterBytes?: number;
}

/**
 * A captured image does not boot in a boot test: the test domain started from an overlay over a matching
 * image `hang`s (runs, never prints its login prompt nor answers SSH) or `panic`s (its kernel finds no
 * init and the transient domain ends).
 */
export interface DoesNotBootFault extends Counted {
  kind: 'doesNotBoot';
  host?: HostMatch;
  /** The image the overlay is backed by. Default: any. */
  image?: PathMatch;
  mode?: 'hang' | 'panic';
}

/**
 * The host does not answer: new TCP connections are reset at once (as by a host that is down or a
 * firewall), and the connections it had are dropped. Lasts until cleared.
 */
export interface UnreachableFault {
  kind: 'unreachable';
  host: HostMatch;
}

export type Fault =
  | UnreachableFault
  | FailCommandFault
  | HangCommandFault
  | DropConnectionFault
  | NeverPowersOffFault
  | CorruptFault
  | DiskFullFault
  | NeedsRepairFault
  | CaptureFailsFault
  | DoesNotBootFault;

export interface FaultHandle {
  readonly id: number;
  readonly fault: Fault;
  /** Times it fired so far. */
  readonly fired: number;
  /** Times it may still fire. */
  readonly remaining: number;
  clear(): void;
}

export interface LabFaults {
  add(fault: Fault): FaultHandle;
  /** Removes one fault, or all of them. */
  clear(handle?: FaultHandle | number): void;
  list(): FaultHandle[];
}

/** What a lab host plays: a provisioner's host (its lab entry's role), the repository host, a guest. */
export type HostRole = (typeof provisioners)[Provisioner]['lab']['host']['role'] | 'repository' | 'guest';

export interface LabHostInfo {
  name: string;
  role: HostRole;
  port: number;
  user: string;
  fingerprint: string;
  /** Real directory behind the host's `/`. */
  root: string;
}

export interface Lab {
  /** Validated inventory pointing at the lab (loopback ports, pinned host keys, the lab's client key). */
  readonly inventory: Inventory;
  /** The lab's temp dir (removed by `stop`). */
  readonly dir: string;
  readonly privateKeyPath: string;
  readonly hosts: Readonly<Record<string, LabHostInfo>>;
  /** Every command line received, in order (a live array). */
  readonly commandLog: readonly CommandLogEntry[];
  readonly faults: LabFaults;
  computerNames(): string[];
  computer(name: string): LabComputer;
  /** Resolves when the computer reaches `state` (rejects after `timeoutMs`, default 10 s). */
  waitForPower(name: string, state: PowerState, timeoutMs?: number): Promise<void>;
  /** Test setup: switch a computer on (booting first) or off at once, like pressing its power button. */
  powerOn(name: string): void;
  powerOff(name: string): void;
  /** The real path behind `path` on `host`, its lazy files created. */
  realPath(host: string, path: string): Promise<string>;
  exists(host: string, path: string): Promise<boolean>;
  readFile(host: string, path: string): Promise<Buffer>;
  sha256(host: string, path: string): Promise<string>;
  /** sha256 of a computer's disk data (VMware: the -flat.vmdk; xCAT: the bare metal's disk). */
  diskSha256(computer: string): Promise<string>;
  /** Failures inside the lab itself (a bug, not an answer): tests assert this stays empty. */
  readonly internalErrors: readonly Error[];
  /** Commands running now on a host (all hosts when absent): a stopped command no longer counts. */
  runningCommands(host?: string): number;
  /** Argv of the commands a host received (all hosts when absent), in order. */
  commands(host?: string): string[][];
  clearLog(): void;
  /** Closes every server and connection, stops every timer and removes the temp dir. */
  stop(): Promise<void>;
}
