/**
 * Types shared by the capture machines and the runner that provides their effects.
 * Pure data: no I/O, no imports from src/.
 */

export const END_STATES = ['on', 'off', 'reboot'] as const;
/** The power state the OS must leave the computer in at the end of `pre_capture` (VCL-94). */
export type EndState = (typeof END_STATES)[number];

/**
 * The provisioners' names. Each provisioner's machine file adds its own (`declare module '../types.js' {
 * interface ProvisionerNames { proxmox: true } }`), so no list here is kept in step by hand; the machine
 * registry (machines/index.ts) must then have exactly these keys (a compile error otherwise), and the
 * runtime list `PROVISIONERS` is read from it. Not derived from the registry's type: the machines' own
 * types use the name, which would make that type refer to itself.
 */
// biome-ignore lint/suspicious/noEmptyInterface: filled by module augmentation in each machine file.
export interface ProvisionerNames {}
export type ProvisionerName = keyof ProvisionerNames;

export const OPERATING_SYSTEMS = ['linux', 'windows'] as const;
export type OsName = (typeof OPERATING_SYSTEMS)[number];

/** Critical steps abort the capture on failure; advisory ones record a warning and the flow goes on. */
export type StepKind = 'critical' | 'advisory';

/**
 * Failure codes the machines branch on or report. Drivers may use finer codes of their own in
 * `StepFailure.code`; the machines only test for the ones listed here.
 */
export const FAILURE_CODES = {
  /** The step's deadline passed. */
  TIMEOUT: 'TIMEOUT',
  /** The step's tool reported something it cannot do (wrong input, refused). */
  STEP_FAILED: 'STEP_FAILED',
  /** vmkfstools said the source disk needs repair. */
  NEEDS_REPAIR: 'NEEDS_REPAIR',
  /** The target image already exists in the repository: nothing may be overwritten. */
  TARGET_EXISTS: 'TARGET_EXISTS',
  /** The computer is held by another capture or in a state that does not allow capture. */
  COMPUTER_BUSY: 'COMPUTER_BUSY',
  /** The capture environment (xCAT) reported a failed upload. */
  UPLOAD_FAILED: 'UPLOAD_FAILED',
  /** The xCAT upload made no progress within its no-progress window. */
  NO_PROGRESS: 'NO_PROGRESS',
  /** Verification found the copy differs from what was written. */
  VERIFY_MISMATCH: 'VERIFY_MISMATCH',
  /** The capture was cancelled. */
  CANCELLED: 'CANCELLED',
  /** A machine implementation was not provided (the runner must `.provide()` every effect). */
  NOT_PROVIDED: 'NOT_PROVIDED',
  /** Preflight: a host on the capture's path lacks a program the capture runs there (the message names it). */
  PREFLIGHT_TOOL_MISSING: 'PREFLIGHT_TOOL_MISSING',
  /** Preflight: the repository, the staging folder or the datastore has less free space than the copy needs plus the margin. */
  PREFLIGHT_NO_SPACE: 'PREFLIGHT_NO_SPACE',
  /** A process an earlier run of the capture left on a host survived SIGKILL: the step does not start beside it. */
  REMOTE_LEFTOVER: 'REMOTE_LEFTOVER',
  /** The captured image did not show it booted (SSH banner, console line) in a throwaway domain within its timeout. */
  BOOT_TEST_FAILED: 'BOOT_TEST_FAILED',
} as const;
export type FailureCode = (typeof FAILURE_CODES)[keyof typeof FAILURE_CODES] | (string & {});

/** A typed failure: what went wrong, in which step. Plain data, so it persists and crosses actors. */
export interface StepFailure {
  code: FailureCode;
  step: string;
  message: string;
}

/** An advisory step that failed (or did not apply): recorded, never fatal. */
export interface StepWarning {
  step: string;
  code: FailureCode;
  message: string;
}

/** What the machines know of the image being captured. Fixed before the capture starts (VCL defect avoided). */
export interface ImageRef {
  /** Full revision name, e.g. `vmwarewin7-Base12345-v0`. */
  name: string;
  imageId: number;
  revision: number;
}

/**
 * Timeouts in milliseconds. Defaults are VCL's (docs/capture-flow.md, "Timeouts VCL uses by default");
 * every one can be overridden per capture and per host.
 */
export interface Timeouts {
  /** An ordinary remote command (one pre_capture step). */
  commandMs: number;
  /** Waiting for a computer to answer SSH (VCL: ping and ssh waits 300 s). */
  respondMs: number;
  /** Linux/Windows without sysprep: the OS stops answering after its shutdown command. */
  osShutdownMs: number;
  /** Windows sysprep: no answer after sysprep (VCL: 1800 s). */
  sysprepMs: number;
  /** Reboot: the computer went down (stopped answering or its boot id changed). */
  rebootDownMs: number;
  /** Reboot: the computer answers again with a new boot id. */
  rebootUpMs: number;
  /** Disk cleanup on Windows (VCL: 600 s). */
  cleanDiskMs: number;
  /** The provisioner waits for a graceful power off before forcing it (VCL: 300 s; VMware 600 s). */
  powerOffMs: number;
  /** After a forced power off, the hypervisor must report off within this. */
  forcedOffMs: number;
  /** A disk copy or conversion (VCL: 2 h). */
  copyMs: number;
  /** Verification of a copy (re-hash at the destination). */
  verifyMs: number;
  /** xCAT: the node boots into the capture environment. */
  captureEnvMs: number;
  /** xCAT: the upload shows no growth and no status change for this long (VCL: 20 min). */
  uploadNoProgressMs: number;
  /** xCAT: the whole upload (VCL: 6 h). */
  uploadOverallMs: number;
  /** The boot test of a captured image (libvirt): from creating its overlay until the guest shows it booted. */
  bootTestMs: number;
}

export const DEFAULT_TIMEOUTS: Readonly<Timeouts> = Object.freeze({
  commandMs: 120_000,
  respondMs: 300_000,
  osShutdownMs: 300_000,
  sysprepMs: 1_800_000,
  rebootDownMs: 300_000,
  rebootUpMs: 300_000,
  cleanDiskMs: 600_000,
  powerOffMs: 300_000,
  forcedOffMs: 60_000,
  copyMs: 7_200_000,
  verifyMs: 7_200_000,
  captureEnvMs: 900_000,
  uploadNoProgressMs: 1_200_000,
  uploadOverallMs: 21_600_000,
  bootTestMs: 600_000,
});

export type TimeoutName = keyof Timeouts;

/** Power state the OS sub-machine reports at its end. */
export type OsPowerState =
  /** The computer stopped answering after a shutdown command (the provisioner confirms power off). */
  | 'off'
  /** The shutdown command ran but the computer still answered at the deadline: the provisioner must force it. */
  | 'shutting_down'
  /** The computer went down for a reboot; the provisioner watches the return itself. */
  | 'rebooting'
  /** The computer is running and answers. */
  | 'on';

/**
 * `touched`: whether a step that touches the computer started (absent: assume it did). A failure with
 * `touched: false` (the computer refused us in `ensure_responding`) leaves the computer as it was.
 */
export type OsResult =
  | { ok: true; powerState: OsPowerState; bootId?: string; warnings: StepWarning[]; touched?: boolean }
  | { ok: false; error: StepFailure; warnings: StepWarning[]; touched?: boolean };

/** Input of an OS sub-machine, given by the provisioner that invokes it. */
export interface OsInput {
  computer: string;
  image: ImageRef;
  endState?: EndState;
  /** Reboot only: the provisioner watches the computer come back (xCAT: it boots into the capture environment). */
  provisionerWatchesReturn?: boolean;
  /** Windows only: generalise with sysprep (default true). */
  sysprep?: boolean;
  timeouts?: Partial<Timeouts>;
}

/** Input of a provisioner (capture) machine. */
export interface CaptureInput {
  captureId: string;
  computer: string;
  os: OsName;
  image: ImageRef;
  /** Defaults to the end state the provisioner needs. Must be one it allows. */
  endState?: EndState;
  sysprep?: boolean;
  timeouts?: Partial<Timeouts>;
}

/** Where a verified image ended up. */
export interface ImageArtifact {
  path: string;
  sizeBytes: number;
  sha256: string;
  format: string;
}

export type CaptureStatus = 'completed' | 'failed' | 'cancelled';

/** The final output of every provisioner machine. */
export type CaptureResult =
  | {
      status: 'completed';
      captureId: string;
      image: ImageRef;
      artifact: ImageArtifact;
      warnings: StepWarning[];
    }
  | {
      status: 'failed' | 'cancelled';
      captureId: string;
      image: ImageRef;
      error: StepFailure;
      warnings: StepWarning[];
      /** Steps of cleanup that themselves failed (the computer is in maintenance; an operator should look). */
      cleanupFailures: StepFailure[];
    };

/**
 * How the computer is handed back at the end of a capture that did not complete. One rule, the guard
 * `computerUntouched` of every capture machine (machines/provisioners/capture-machine.ts): a capture that
 * failed or was cancelled before any step that touches the computer started (and whose undo steps all
 * worked) restores it; any other goes to maintenance.
 */
export type ReleaseOutcome =
  /** Failed or cancelled after the computer was touched (or an undo failed): an operator must look at it. */
  | 'maintenance'
  /** Failed or cancelled before anything on the computer changed: back to the state it was reserved from. */
  | 'restore';
