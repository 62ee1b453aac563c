/**
 * The registries: provisioner name -> capture machine, OS name -> pre_capture sub-machine, and the one
 * function that composes them for a capture.
 */
import type { AnyActorLogic } from 'xstate';
import { linuxMachine } from './os/linux.js';
import type { OsMachine } from './os/os-machine.js';
import { windowsMachine } from './os/windows.js';
import { defaultEndState, type ProvisionerSpec } from './provisioners/capture-machine.js';
import { LIBVIRT, libvirtMachine } from './provisioners/libvirt.js';
import { PROXMOX, proxmoxMachine } from './provisioners/proxmox.js';
import { VMWARE, vmwareMachine } from './provisioners/vmware.js';
import { XCAT, xcatMachine } from './provisioners/xcat.js';
import type { EndState, OsName, ProvisionerName } from './types.js';

export const provisioners = {
  libvirt: { spec: LIBVIRT, machine: libvirtMachine },
  vmware: { spec: VMWARE, machine: vmwareMachine },
  xcat: { spec: XCAT, machine: xcatMachine },
  proxmox: { spec: PROXMOX, machine: proxmoxMachine },
} as const satisfies Record<ProvisionerName, { spec: ProvisionerSpec; machine: unknown }>;

/** The provisioners in registry order (a tuple type, for `z.enum` and commander's choices). */
export const PROVISIONERS = Object.keys(provisioners) as [ProvisionerName, ...ProvisionerName[]];

export const operatingSystems = {
  linux: { machine: linuxMachine },
  windows: { machine: windowsMachine },
} as const satisfies Record<OsName, { machine: OsMachine }>;

export type CaptureMachine = (typeof provisioners)[ProvisionerName]['machine'];

/** The effects a machine names, in the order its setup declares them: what the runner must provide. */
export function effectNames(machine: { implementations: { actors: Record<string, unknown> } }): string[] {
  return Object.keys(machine.implementations.actors);
}

export function defaultEndStateOf(provisioner: ProvisionerName, os: OsName): EndState {
  return defaultEndState(provisioners[provisioner].spec, os);
}

export function allowedEndStates(provisioner: ProvisionerName): readonly EndState[] {
  return provisioners[provisioner].spec.endStates;
}

export interface ComposeOptions {
  provisioner: ProvisionerName;
  os: OsName;
  /** Real implementations of the provisioner's effects (the OS sub-machine is added here). */
  provisionerActors?: Record<string, AnyActorLogic>;
  /** Real implementations of the OS sub-machine's effects. */
  osActors?: Record<string, AnyActorLogic>;
}

/**
 * The machine for one capture: the provisioner's machine with the computer's OS sub-machine as its `os`
 * actor, each given the implementations supplied. Missing implementations stay placeholders that fail
 * with NOT_PROVIDED, so a forgotten effect is an error, never a silent no-op.
 */
export function composeCaptureMachine(options: ComposeOptions): CaptureMachine {
  const { provisioner, os } = options;
  const entry = provisioners[provisioner];
  if (!entry)
    throw new RangeError(
      `unknown provisioner '${provisioner}'; known: ${Object.keys(provisioners).join(', ')}`,
    );
  const osEntry = operatingSystems[os];
  if (!osEntry)
    throw new RangeError(`unknown OS '${os}'; known: ${Object.keys(operatingSystems).join(', ')}`);
  const osMachine = osEntry.machine.provide({ actors: options.osActors ?? {} });
  // provide() is typed per machine; the three provisioner machines share one context/input/output shape.
  const machine = entry.machine as CaptureMachine;
  return machine.provide({
    actors: { ...(options.provisionerActors ?? {}), os: osMachine },
  }) as CaptureMachine;
}

export type { OsStepInput, OsStepOutput } from './os/os-machine.js';
export type {
  CaptureContext,
  CaptureStepInput,
  CaptureStepOutput,
  Facts,
} from './provisioners/capture-machine.js';
export { releaseOutcome, upgradeCaptureSnapshot } from './provisioners/capture-machine.js';
export * from './types.js';
export { libvirtMachine, linuxMachine, proxmoxMachine, vmwareMachine, windowsMachine, xcatMachine };
