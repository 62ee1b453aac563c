/**
 * The provisioner registry (src/provisioners): one entry per machine, each giving every effect its
 * machine invokes, and the copy steps taken from the machines' step metadata rather than a hand list.
 */
import { describe, expect, it } from 'vitest';
import { effectNames, provisioners as machines, PROVISIONERS } from '../machines/index.js';
import type { DriverEnv } from '../src/drivers/env.js';
import { COPY_STEPS, provisioners } from '../src/provisioners/index.js';
import { storeSteps } from '../src/runner/store-steps.js';

const STORE_STEPS = Object.keys(storeSteps({} as never, () => [], Promise.resolve));

describe.each(PROVISIONERS)('%s', (name) => {
  const entry = provisioners[name];
  const effects = effectNames(machines[name].machine).filter((n) => n !== 'os');
  const env = {
    computerName: 'pc1',
    computer: { provisioner: { type: name, host: 'h1' } },
  } as unknown as DriverEnv;

  it('has an entry whose steps, with the store steps, give every effect of its machine', () => {
    const given = new Set([...STORE_STEPS, ...Object.keys(entry.steps(env))]);
    expect(effects.filter((n) => !given.has(n))).toEqual([]);
  });

  it('names effects of its machine for the dry run', () => {
    expect(effects).toContain(entry.dryRun.artifactStep);
    for (const step of Object.keys(entry.dryRun.outputs)) expect(effects).toContain(step);
  });

  it("takes its copy steps from the machine's StepMeta.effect 'copy'", () => {
    for (const step of COPY_STEPS[name]) expect(effects).toContain(step);
    expect(COPY_STEPS[name].has(entry.dryRun.artifactStep)).toBe(true);
  });
});

it('counts repair_disk among the VMware copy steps (the hand list it replaces left it out)', () => {
  expect([...COPY_STEPS.vmware].sort()).toEqual(['clone_disk', 'copy_to_repository', 'repair_disk']);
  expect([...COPY_STEPS.libvirt]).toEqual(['copy_image']);
  expect([...COPY_STEPS.xcat]).toEqual(['watch_upload']);
  expect([...COPY_STEPS.proxmox]).toEqual(['copy_image']);
});
