/**
 * The provisioner registry: one entry per provisioner, keyed by the machines' `ProvisionerName`, so a
 * provisioner without an entry is a compile error. Everything outside a provisioner's folder that
 * depends on which provisioners exist reads this: the runner's steps, the preflight, the inventory
 * schema, the CLI, the dry run, the lab, the model tests. See README "Adding a provisioner".
 */
import type { AnyStateMachine, AnyStateNode } from 'xstate';
import { provisioners as machines, type ProvisionerName } from '../../machines/index.js';
import { libvirtProvisioner } from './libvirt/index.js';
import { proxmoxProvisioner } from './proxmox/index.js';
import type { Provisioner } from './types.js';
import { vmwareProvisioner } from './vmware/index.js';
import { xcatProvisioner } from './xcat/index.js';

export const provisioners = {
  libvirt: libvirtProvisioner,
  vmware: vmwareProvisioner,
  xcat: xcatProvisioner,
  proxmox: proxmoxProvisioner,
} as const satisfies Record<ProvisionerName, Provisioner>;

export type ProvisionerEntry = (typeof provisioners)[ProvisionerName];

/** The provisioners in registry order. */
export const PROVISIONER_ENTRIES = Object.entries(provisioners) as [ProvisionerName, ProvisionerEntry][];

/** The inventory's `provisioner` settings schemas, for its discriminated union on `type`. */
export function provisionerSettingsSchemas(): [
  ProvisionerEntry['settings'],
  ...ProvisionerEntry['settings'][],
] {
  return PROVISIONER_ENTRIES.map(([, p]) => p.settings) as [
    ProvisionerEntry['settings'],
    ...ProvisionerEntry['settings'][],
  ];
}

/** The effects a machine invokes from states whose step metadata says `effect: kind` (e.g. `copy`). */
export function effectsOfKind(machine: AnyStateMachine, kind: string): Set<string> {
  const out = new Set<string>();
  const walk = (n: AnyStateNode) => {
    if ((n.meta as { step?: { effect?: string } } | undefined)?.step?.effect === kind)
      for (const inv of n.invoke) out.add(inv.id);
    for (const child of Object.values(n.states)) walk(child as AnyStateNode);
  };
  walk(machine.root);
  return out;
}

/** The copy steps of each provisioner's machine (they share a per-host copy limit). */
export const COPY_STEPS: Readonly<Record<ProvisionerName, ReadonlySet<string>>> = Object.fromEntries(
  Object.entries(machines).map(([name, m]) => [name, effectsOfKind(m.machine as AnyStateMachine, 'copy')]),
) as unknown as Record<ProvisionerName, ReadonlySet<string>>;

export type { CaptureStep, LabProvisioner, PreflightRun, Provisioner } from './types.js';
