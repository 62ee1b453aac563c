import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    // Suites that start real servers (sshd, VMs) must not share the 2 cores with each other.
    fileParallelism: true,
    maxWorkers: 2,
    reporters: ['default'],
  },
});
