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
    // A mutant that makes a test wait for what never comes (a slot, a wake, an event) is killed by this
    // timeout: the tests here take under 3 s each, so 10 s, not the suite's 30 s, per such mutant.
    testTimeout: 10_000,
    hookTimeout: 60_000,
  },
});
