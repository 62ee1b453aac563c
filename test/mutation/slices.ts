/**
 * What `npm run mutate` measures: the code under mutation testing, cut into slices that each run against
 * the fast tests that check that code directly (step-level and unit tests, not whole captures: a
 * surviving mutant runs every test that reaches it, and a whole-capture path test costs 20-60 s per
 * mutant). Each slice keeps its own incremental file, so a rerun tests only what changed. docs/testing.md
 * gives the scores and the surviving mutants; its table follows this list.
 */

export interface Slice {
  /** Names the slice on the command line (`npm run mutate -- runner`) and its files under reports/. */
  name: string;
  /** The files mutated (globs, relative to the repository). */
  mutate: string[];
  /** The test files run against its mutants. */
  tests: string[];
}

/** Minimum score per folder (killed and timed out over all mutants, uncovered ones included), issue 14. */
export const TARGETS: { folder: RegExp; label: string; min: number }[] = [
  { folder: /^machines\//, label: 'machines/', min: 85 },
  {
    folder: /^src\/(drivers\/[\w-]+-commands|provisioners\/\w+\/commands)\.ts$/,
    label: 'command builders',
    min: 85,
  },
  { folder: /^src\/runner\//, label: 'src/runner/', min: 75 },
  { folder: /^src\/(provisioners\/\w+\/steps|drivers\/(env|verify|errors))\.ts$/, label: 'steps', min: 75 },
];

export const SLICES: Slice[] = [
  {
    name: 'commands',
    mutate: [
      'src/drivers/os-commands.ts',
      'src/drivers/preflight-commands.ts',
      'src/provisioners/*/commands.ts',
    ],
    tests: [
      'test/drivers/parsers.test.ts',
      'test/drivers/commands.test.ts',
      'test/drivers/os-plans.test.ts',
      'test/drivers/preflight-commands.test.ts',
      'test/drivers/boot-test-commands.test.ts',
      // qm/pvesm/qemu-img argv and parsers of proxmox/commands.ts, without proxmox.test.ts's lab.
      'test/drivers/proxmox-commands.test.ts',
      'test/lab/power.test.ts',
      'test/lab/copies.test.ts',
      'test/lab/faults.test.ts',
      'test/lab/hosts.test.ts',
    ],
  },
  {
    name: 'machines-os',
    mutate: ['machines/os/**/*.ts', 'machines/steps.ts', 'machines/index.ts', 'machines/types.ts'],
    tests: ['test/machines.test.ts', 'test/model/os.test.ts', 'test/visualize.test.ts'],
  },
  {
    name: 'machines-provisioners',
    mutate: ['machines/provisioners/**/*.ts'],
    tests: [
      'test/machines.test.ts',
      'test/capture-machine.test.ts',
      'test/model/provisioners.test.ts',
      'test/visualize.test.ts',
    ],
  },
  {
    name: 'steps-libvirt',
    mutate: [
      'src/provisioners/libvirt/steps.ts',
      'src/drivers/env.ts',
      'src/drivers/verify.ts',
      'src/drivers/errors.ts',
    ],
    tests: [
      'test/drivers/env.test.ts',
      'test/drivers/libvirt-steps.test.ts',
      'test/drivers/libvirt-wait.test.ts',
      // libvirtPreflight and the boot test steps, which the two above do not reach.
      'test/drivers/libvirt-preflight-boot.test.ts',
      // parseManifest (verify.ts) against sha256sum's lines.
      'test/drivers/commands.test.ts',
    ],
  },
  {
    name: 'steps-others',
    mutate: [
      'src/provisioners/vmware/steps.ts',
      'src/provisioners/xcat/steps.ts',
      'src/provisioners/proxmox/steps.ts',
    ],
    tests: [
      'test/drivers/vmware-steps.test.ts',
      'test/drivers/xcat-steps.test.ts',
      'test/drivers/proxmox.test.ts',
      // The three preflights as `vcl-capture preflight` collects them: check names, texts, what is skipped.
      'test/drivers/provisioner-preflight.test.ts',
    ],
  },
  {
    name: 'runner',
    mutate: [
      'src/runner/step.ts',
      'src/runner/limits.ts',
      'src/runner/cancel.ts',
      'src/runner/store-steps.ts',
      'src/runner/fence.ts',
      'src/runner/leftovers.ts',
      'src/runner/resume.ts',
      'src/runner/preflight.ts',
    ],
    tests: [
      'test/runner/step.test.ts',
      'test/runner/resume-check.test.ts',
      'test/runner/leftovers-remote.test.ts',
      'test/runner/limits.test.ts',
      'test/runner/fence.test.ts',
      'test/runner/cancel.test.ts',
      'test/runner/store-steps.test.ts',
      'test/runner/preflight.test.ts',
    ],
  },
  {
    name: 'small',
    mutate: ['src/ssh/quote.ts', 'src/store/naming.ts', 'src/inventory/**/*.ts'],
    tests: [
      'test/ssh/units.test.ts',
      'test/store/naming.test.ts',
      'test/inventory.test.ts',
      'test/lab/words.test.ts',
    ],
  },
];
