/**
 * What a provisioner is besides its pure machine (machines/provisioners/<name>.ts): the contract each
 * `src/provisioners/<name>/index.ts` fills in and the registry (`./index.ts`) lists once. The runner, the
 * inventory schema, the CLI, the preflight, the dry run and the lab all read it from the registry.
 */
import type { z } from 'zod';
import type { CaptureStepInput, CaptureStepOutput, Facts } from '../../machines/index.js';
import type { StepFn } from '../drivers/contract.js';
import type { DriverEnv } from '../drivers/env.js';
import type { Checklist, CheckRun } from '../drivers/preflight.js';
import type { ComputerRecord, Handler, HostRuntime } from '../lab/core.js';
import type { HostFs } from '../lab/fs.js';
import type { LabComputer } from '../lab/types.js';

/** One step implementation of a provisioner, by the effect name its machine invokes. */
export type CaptureStep = StepFn<CaptureStepInput, CaptureStepOutput>;

/** The run the preflight checks get (a capture's check step, or `vcl-capture preflight`). */
export type PreflightRun = CheckRun & { input: { image?: { name: string } } };

export interface Provisioner {
  /**
   * Its settings in an inventory computer's `provisioner` entry (zod, strict, `type` = its name): the
   * inventory schema's discriminated union is made of these.
   */
  settings: z.ZodObject;
  /** Its machine's effects (besides the store's and `os`), over the capture's hosts. */
  steps(env: DriverEnv): Record<string, CaptureStep>;
  /**
   * `vcl-capture preflight`'s checks: those of its check steps, collected in `list` (every check, not
   * only up to the first failure). `target`: also check that the image name is free.
   */
  preflight(
    env: DriverEnv,
    run: PreflightRun,
    list: Checklist,
    options: { target: boolean },
  ): Promise<unknown>;
  /** The dry run's (and the model tests') plausible success outputs of its steps that carry facts. */
  dryRun: { outputs: Readonly<Record<string, Facts | { facts: Facts }>>; artifactStep: string };
  /** Its host in the built-in lab. */
  lab: LabProvisioner;
}

/** What the built-in lab (src/lab) needs to play a provisioner's host and its computers. */
export interface LabProvisioner {
  /** Its infrastructure host: inventory name, the lab's role name, folders, the commands it answers. */
  host: {
    name: string;
    role: string;
    dirs: readonly string[];
    /** Command tables besides the POSIX and transport ones every host answers. */
    commands: readonly ReadonlyMap<string, Handler>[];
    /** Files to write once its folders exist. */
    prepare?(fs: HostFs): Promise<void>;
  };
  /** Repositories on its host (name -> path), besides the lab's shared `images`. */
  repositories: Readonly<Record<string, string>>;
  /** The repository its computers capture into unless the lab's options say otherwise. */
  defaultRepository: string;
  /** Its computers' name prefix (`lv` for `lv-linux-1`). */
  prefix: string;
  /** The first four bytes of its computers' MAC addresses. */
  macVendor: string;
  /** Its computers are numbered (VMware's vmid): the n-th computer of this provisioner gets n, others 0. */
  numbered?: boolean;
  /** A computer's disk: where it lies and how to create it (lazily). */
  disk(ctx: LabDiskContext): { disk: LabComputer['disk']; flatPath?: string; ensureDisk(): Promise<string> };
  /** What else a new computer needs once its record exists (its host's files, its boot choice). */
  setUp?(rec: ComputerRecord, host: HostRuntime | undefined): void;
  /** Its entry's `provisioner` settings in the lab's inventory. */
  inventory(computer: string, host: string): { type: string } & Record<string, unknown>;
}

export interface LabDiskContext {
  /** The computer's name. */
  name: string;
  /** Its provisioner's lab host (undefined for bare metal without one). */
  host: HostRuntime;
  /** The lab's temp dir. */
  dir: string;
  sizeBytes: number;
  /** Aborted when the lab stops. */
  stopping: AbortSignal;
}
