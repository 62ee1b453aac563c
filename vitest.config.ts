import { defineConfig } from 'vitest/config';

/**
 * Suites that boot QEMU, kill and restart daemon fleets, drive Chromium or build and install the package. Each one loads both cores by
 * itself: they run after everything else, one file at a time, so no two of them (and no timing-sensitive
 * light suite) ever share the machine.
 */
const HEAVY = [
  'test/e2e/**/*.test.ts',
  'test/crash/**/*.test.ts',
  // Daemons in network namespaces of their own, PostgreSQL over TCP, partitions.
  'test/multi/**/*.test.ts',
  'test/inspector/browser.test.ts',
  'test/daemon.test.ts',
  // Builds, packs and installs the package, then runs its demo and a strict tsc in the install.
  'test/package.test.ts',
];

const shared = {
  testTimeout: 30_000,
  hookTimeout: 60_000,
};

export default defineConfig({
  test: {
    reporters: ['default'],
    projects: [
      {
        test: {
          ...shared,
          name: 'light',
          include: ['test/**/*.test.ts'],
          exclude: HEAVY,
          // Unit, model and single-server suites: two files at a time, one per core.
          maxWorkers: 2,
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          ...shared,
          name: 'heavy',
          include: HEAVY,
          maxWorkers: 1,
          fileParallelism: false,
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
