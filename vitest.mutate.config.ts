import { defineConfig } from 'vitest/config';

/**
 * The tests Stryker runs against mutants (`npm run mutate`, see docs/testing.md): the fast, in-process
 * suites that exercise the mutated code. The heavy suites (real VMs, crash, Chromium, daemon, sshd fleets)
 * are left out: too slow to run once per mutant and too timing-sensitive to tell a killed mutant from a
 * flaky test.
 */
export default defineConfig({
  test: {
    include: [
      'test/machines.test.ts',
      'test/capture-machine.test.ts',
      'test/visualize.test.ts',
      'test/model/*.test.ts',
      'test/drivers/*.test.ts',
      'test/runner/*.test.ts',
      'test/inventory.test.ts',
      'test/lab/*.test.ts',
      'test/store/naming.test.ts',
      'test/ssh/units.test.ts',
    ],
    exclude: [
      'test/e2e/**',
      'test/crash/**',
      'test/inspector/**',
      'test/daemon.test.ts',
      'test/lab/main.test.ts',
    ],
    testTimeout: 30_000,
    hookTimeout: 60_000,
  },
});
