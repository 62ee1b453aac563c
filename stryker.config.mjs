// @ts-check
/**
 * Mutation testing (not part of CI): see docs/testing.md for the commands, the measured scores and the
 * surviving mutants. `npm run mutate` runs this config once per slice of test/mutation/slices.ts (each
 * slice's files against its fast tests); `npx stryker run` alone runs the whole `mutate` list below
 * against every suite of vitest.mutate.config.ts, whole-capture paths included (many hours).
 * @type {import('@stryker-mutator/api/core').PartialStrykerOptions}
 */
export default {
  testRunner: 'vitest',
  vitest: { configFile: 'vitest.mutate.config.ts', related: true },
  plugins: ['@stryker-mutator/vitest-runner'],
  mutate: [
    'machines/**/*.ts',
    'src/runner/**/*.ts',
    'src/drivers/**/*.ts',
    'src/provisioners/*/{steps,commands}.ts',
    'src/ssh/quote.ts',
    'src/store/naming.ts',
    'src/inventory/**/*.ts',
  ],
  // Not copied to the sandbox: files no test reads (test/visualize.test.ts reads visualizations/).
  ignorePatterns: ['/docs', '/bench', '/reports', '/coverage', '/*.qcow2', '/*.img'],
  // Each mutant runs only the tests that reached it in the dry run (vitest `related` narrows the files).
  coverageAnalysis: 'perTest',
  // 2 shared cores: one test-runner process.
  concurrency: 1,
  // A rerun only tests mutants whose code or covering tests changed since the recorded run.
  incremental: true,
  incrementalFile: 'reports/stryker-incremental.json',
  reporters: ['clear-text', 'progress', 'html', 'json'],
  htmlReporter: { fileName: 'reports/mutation/mutation.html' },
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  thresholds: { high: 85, low: 75, break: null },
  // A mutant that freezes its tests (an eventless cleanup loop that never ends) is stopped after 1.5 × its
  // tests' dry-run time + this + the runner's overhead. Just above vitest.mutate.config.ts's testTimeout
  // (10 s): a test that waits its whole testTimeout fails as itself (killed), only a frozen process is
  // left to this timeout, and each of those costs 12 s instead of 30.
  timeoutMS: 12_000,
  tempDirName: '.stryker-tmp',
  cleanTempDir: 'always',
};
