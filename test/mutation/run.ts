/**
 * `npm run mutate [-- <slice>... ] [--force] [--concurrency N]`: runs Stryker once per slice
 * (test/mutation/slices.ts), one after the other, then prints the score per file, per folder and against
 * each target from every slice's last report (reports/mutation/<slice>.json, and <slice>.html to browse
 * its survivors in the source). `--summary` prints the table only. `--concurrency N` runs N test-runner
 * processes instead of stryker.config.mjs's one: for a machine with nothing else to do.
 */
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { SLICES, type Slice, TARGETS } from './slices.js';

interface Report {
  files: Record<string, { mutants: { status: string }[] }>;
}

interface Tally {
  killed: number;
  survived: number;
  noCoverage: number;
  ignored: number;
}

const args = process.argv.slice(2);
const force = args.includes('--force');
const summaryOnly = args.includes('--summary');
const concurrencyAt = args.indexOf('--concurrency');
const concurrency = concurrencyAt >= 0 ? args[concurrencyAt + 1] : undefined;
if (concurrencyAt >= 0 && !/^[1-9]\d*$/.test(concurrency ?? '')) {
  console.error(
    `--concurrency needs a whole number of test-runner processes (got ${concurrency ?? 'nothing'}), e.g. --concurrency 2`,
  );
  process.exit(2);
}
const names = args.filter((a, i) => !a.startsWith('--') && (concurrencyAt < 0 || i !== concurrencyAt + 1));
const unknown = names.filter((n) => !SLICES.some((s) => s.name === n));
if (unknown.length > 0) {
  console.error(
    `unknown slice ${unknown.join(', ')}; the slices are: ${SLICES.map((s) => s.name).join(', ')} (test/mutation/slices.ts)`,
  );
  process.exit(2);
}
const chosen = names.length > 0 ? SLICES.filter((s) => names.includes(s.name)) : SLICES;
const reportOf = (slice: Slice) => `reports/mutation/${slice.name}.json`;

const times = new Map<string, number>();
if (!summaryOnly) {
  for (const slice of chosen) {
    console.log(`\n=== mutation slice ${slice.name}: ${slice.mutate.join(', ')}`);
    const started = Date.now();
    const r = spawnSync(
      'npx',
      [
        'stryker',
        'run',
        '--ignoreStatic',
        '--mutate',
        slice.mutate.join(','),
        '--testFiles',
        slice.tests.join(','),
        '--incrementalFile',
        `reports/incremental-${slice.name}.json`,
        '--reporters',
        'clear-text,progress,json,html',
        ...(force ? ['--force'] : []),
        ...(concurrency ? ['--concurrency', concurrency] : []),
      ],
      { stdio: 'inherit' },
    );
    if (r.status !== 0) {
      console.error(
        `slice ${slice.name}: stryker exited with ${r.status ?? r.signal}; its scores are not updated`,
      );
      process.exit(1);
    }
    copyFileSync('reports/mutation/mutation.json', reportOf(slice));
    copyFileSync('reports/mutation/mutation.html', `reports/mutation/${slice.name}.html`);
    times.set(slice.name, Date.now() - started);
  }
}

const byFile = new Map<string, Tally>();
for (const slice of SLICES) {
  if (!existsSync(reportOf(slice))) continue;
  const report = JSON.parse(readFileSync(reportOf(slice), 'utf8')) as Report;
  for (const [file, { mutants }] of Object.entries(report.files)) {
    const t: Tally = { killed: 0, survived: 0, noCoverage: 0, ignored: 0 };
    for (const m of mutants) {
      if (m.status === 'Killed' || m.status === 'Timeout') t.killed += 1;
      else if (m.status === 'Survived') t.survived += 1;
      else if (m.status === 'NoCoverage') t.noCoverage += 1;
      else t.ignored += 1;
    }
    byFile.set(file, t);
  }
}

const add = (a: Tally, b: Tally): Tally => ({
  killed: a.killed + b.killed,
  survived: a.survived + b.survived,
  noCoverage: a.noCoverage + b.noCoverage,
  ignored: a.ignored + b.ignored,
});
const zero: Tally = { killed: 0, survived: 0, noCoverage: 0, ignored: 0 };
const score = (t: Tally) => {
  const all = t.killed + t.survived + t.noCoverage;
  return all === 0 ? 'n/a' : `${((100 * t.killed) / all).toFixed(2)} %`;
};
const row = (label: string, t: Tally, extra = '') =>
  `${label.padEnd(44)} ${score(t).padStart(9)}  killed ${String(t.killed).padStart(4)}  survived ${String(t.survived).padStart(3)}  no coverage ${String(t.noCoverage).padStart(3)}  static ${String(t.ignored).padStart(3)}${extra}`;

const files = [...byFile.keys()].sort();
const folders = new Map<string, Tally>();
for (const f of files) folders.set(dirname(f), add(folders.get(dirname(f)) ?? zero, byFile.get(f) ?? zero));

console.log('\nMutation score per file (static mutants not run: --ignoreStatic)');
for (const f of files) console.log(row(`  ${f}`, byFile.get(f) ?? zero));
console.log('\nPer folder');
for (const [folder, t] of folders) console.log(row(`  ${folder}/`, t));
console.log('\nAgainst the targets');
for (const target of TARGETS) {
  const t = files
    .filter((f) => target.folder.test(f))
    .reduce((acc, f) => add(acc, byFile.get(f) ?? zero), zero);
  const all = t.killed + t.survived + t.noCoverage;
  const met = all > 0 && (100 * t.killed) / all >= target.min;
  console.log(
    row(
      `  ${target.label} (>= ${target.min} %)`,
      t,
      all === 0 ? '  not measured' : met ? '  met' : '  MISSED',
    ),
  );
}
if (times.size > 0) {
  console.log('\nRun time per slice');
  for (const [name, ms] of times) console.log(`  ${name.padEnd(24)} ${(ms / 60_000).toFixed(1)} min`);
  const total = [...times.values()].reduce((a, b) => a + b, 0);
  console.log(`  ${'all'.padEnd(24)} ${(total / 60_000).toFixed(1)} min`);
}
