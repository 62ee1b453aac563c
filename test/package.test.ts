/**
 * The package as a daemon's author gets it: `npm pack`, the tarball installed into an empty project, and
 * there the bin (`--version`, `demo`), a plain ESM consumer that runs a capture against the built-in lab,
 * and a TypeScript consumer type-checked in strict mode against the shipped declarations. Nothing here
 * reads the clone's sources: the consumer sees only what the tarball holds.
 *
 * The install is offline and takes the versions of the project's own package-lock.json (a lockfile for
 * the consumer is derived from it), so it needs only the npm cache that `npm ci` filled. Install scripts
 * are skipped and better-sqlite3's native build is copied from the project's own install, the same
 * version: compiling SQLite again takes about 3 minutes on 2 cores, and it is not what this test checks.
 */
import { type SpawnSyncReturns, spawnSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  realpathSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PROVISIONERS } from '../machines/index.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TSC = join(ROOT, 'node_modules/typescript/bin/tsc');

interface LockEntry {
  dev?: boolean;
  [key: string]: unknown;
}
interface Manifest {
  name: string;
  version: string;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  bin: Record<string, string>;
  engines: Record<string, string>;
  license: string;
}

const readJson = (file: string): unknown => JSON.parse(readFileSync(join(ROOT, file), 'utf8'));
const manifest = readJson('package.json') as Manifest;
const lock = readJson('package-lock.json') as { packages: Record<string, LockEntry> };

let dir: string;
let consumer: string;
let tarball: string;
let packSeconds: number;
let installSeconds: number;

// What `npm test` / `npx vitest` set about the project itself (its package, its directory as the local
// prefix) must not reach the npm run in the consumer; the user's npm configuration (npm_config_cache...)
// does.
const ABOUT_THE_PROJECT = /^npm_(package_|lifecycle_|command$|config_local_prefix$|config_call$)/i;

function userEnv(): NodeJS.ProcessEnv {
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !ABOUT_THE_PROJECT.test(k)));
  return { ...env, NO_COLOR: '1' };
}

function run(command: string, args: string[], cwd: string, timeout: number): SpawnSyncReturns<string> {
  const r = spawnSync(command, args, { cwd, encoding: 'utf8', timeout, env: userEnv() });
  if (r.error) throw r.error;
  return r;
}

function ok(r: SpawnSyncReturns<string>, what: string): string {
  expect(r.status, `${what} failed:\n${r.stdout}\n${r.stderr}`).toBe(0);
  return r.stdout;
}

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-package-'));
  let t = Date.now();
  ok(run('npm', ['pack', '--pack-destination', dir, '--no-audit', '--no-fund'], ROOT, 150_000), 'npm pack');
  packSeconds = (Date.now() - t) / 1000;
  const packed = readdirSync(dir).filter((f) => f.endsWith('.tgz'));
  expect(packed).toEqual([`${manifest.name}-${manifest.version}.tgz`]);
  tarball = join(dir, packed[0] as string);

  consumer = join(dir, 'consumer');
  mkdirSync(consumer);
  const spec = `file:${tarball}`;
  // The project's production dependency tree, as locked (dev-only packages are flagged `dev`).
  const packages: Record<string, unknown> = {
    '': { name: 'consumer', dependencies: { [manifest.name]: spec } },
    [`node_modules/${manifest.name}`]: {
      version: manifest.version,
      resolved: spec,
      dependencies: manifest.dependencies,
      bin: manifest.bin,
      engines: manifest.engines,
      license: manifest.license,
    },
  };
  for (const [path, entry] of Object.entries(lock.packages)) {
    if (path !== '' && !entry.dev) packages[path] = entry;
  }
  writeFileSync(
    join(consumer, 'package.json'),
    JSON.stringify({
      name: 'consumer',
      private: true,
      type: 'module',
      dependencies: { [manifest.name]: spec },
    }),
  );
  writeFileSync(
    join(consumer, 'package-lock.json'),
    JSON.stringify({ name: 'consumer', lockfileVersion: 3, requires: true, packages }),
  );
  t = Date.now();
  ok(
    run('npm', ['ci', '--offline', '--ignore-scripts', '--no-audit', '--no-fund'], consumer, 120_000),
    'npm ci of the tarball',
  );
  installSeconds = (Date.now() - t) / 1000;
  cpSync(
    join(ROOT, 'node_modules/better-sqlite3/build'),
    join(consumer, 'node_modules/better-sqlite3/build'),
    {
      recursive: true,
    },
  );
}, 270_000);

afterAll(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('the packed tarball', () => {
  it('ships the compiled JavaScript, declarations, source maps and runtime assets, and no tests', () => {
    const files = ok(run('tar', ['tzf', tarball], dir, 30_000), 'tar')
      .split('\n')
      .filter(Boolean);
    for (const f of [
      'package/package.json',
      'package/dist/src/index.js',
      'package/dist/src/index.d.ts',
      'package/dist/src/index.js.map',
      'package/dist/src/index.d.ts.map',
      'package/dist/machines/index.js',
      'package/dist/machines/index.d.ts',
      'package/dist/src/cli/main.js',
      'package/src/index.ts', // what the source maps point at
      'package/src/inspector/public/index.html',
      'package/src/inspector/public/app.js',
      'package/visualizations/README.md',
    ]) {
      expect(files, f).toContain(f);
    }
    for (const prefix of ['package/test/', 'package/bench/', 'package/examples/', 'package/node_modules/']) {
      expect(files.filter((f) => f.startsWith(prefix))).toEqual([]);
    }
    // The clone's tsx launcher would fail where tsx is not installed.
    expect(files).not.toContain('package/src/cli/bin.mjs');
    console.log(
      `tarball ${(statSync(tarball).size / 1024).toFixed(0)} KiB, ${files.length} files; ` +
        `npm pack ${packSeconds.toFixed(1)} s, npm ci of it ${installSeconds.toFixed(1)} s`,
    );
  });

  it('installs without tsx: the bin runs compiled JavaScript', () => {
    expect(existsSync(join(consumer, 'node_modules', manifest.name, 'dist/src/index.js'))).toBe(true);
    expect(existsSync(join(consumer, 'node_modules/tsx'))).toBe(false);
    expect(realpathSync(join(consumer, 'node_modules/.bin/vcl-capture'))).toBe(
      join(consumer, 'node_modules', manifest.name, 'dist/src/cli/main.js'),
    );
  });

  it('spawnLab (benchmarks) runs the compiled lab in its child process, without tsx', () => {
    const script = `const { spawnLab } = await import('./node_modules/${manifest.name}/dist/src/lab/child.js');
const lab = await spawnLab();
console.log(JSON.stringify({ args: lab.process.spawnargs.slice(1), hosts: Object.keys(lab.hosts).length }));
await lab.stop();`;
    const out = ok(
      run(process.execPath, ['--input-type=module', '-e', script], consumer, 30_000),
      'spawnLab',
    );
    expect(JSON.parse(out)).toEqual({
      args: [join(consumer, 'node_modules', manifest.name, 'dist/src/lab/main.js'), '{}'],
      hosts: expect.any(Number),
    });
    expect((JSON.parse(out) as { hosts: number }).hosts).toBeGreaterThan(0);
  });
});

describe('the installed bin', () => {
  it('prints the package version', () => {
    const out = ok(run('npx', ['vcl-capture', '--version'], consumer, 30_000), '--version');
    expect(out.trim()).toBe(manifest.version);
  });

  it('runs the demo to its summary, and points at the diagrams it ships', () => {
    const db = join(dir, 'demo.sqlite');
    const r = run('npx', ['vcl-capture', 'demo', '--db', db], consumer, 90_000);
    ok(r, 'demo');
    expect(r.stderr).toBe('');
    const summary = r.stdout.slice(r.stdout.indexOf('\nSummary\n'));
    for (const [computer, provisioner] of [
      ['lv-linux-1', 'libvirt'],
      ['vm-windows-1', 'vmware'],
      ['xc-linux-1', 'xcat'],
      ['px-linux-1', 'proxmox'],
    ]) {
      expect(summary).toMatch(new RegExp(`^${computer} +${provisioner} .* completed$`, 'm'));
    }
    expect(summary).toContain(`Database: ${db}`);
    const diagrams = /^Diagrams of the machines: (.+)$/m.exec(summary)?.[1];
    expect(diagrams).toBe(join(consumer, 'node_modules', manifest.name, 'visualizations/README.md'));
    expect(existsSync(diagrams as string)).toBe(true);
  }, 90_000);
});

describe('a daemon importing the package', () => {
  it('plain ESM: createRunner captures a lab computer; the machines entry and the inspector page load', () => {
    writeFileSync(
      join(consumer, 'consumer.mjs'),
      `import { createInspector, createLogger, createRunner, openSqliteStore, startLab } from 'vcl-capture';
import { provisioners } from 'vcl-capture/machines';

const lab = await startLab({ powerDelayMs: 20 });
const store = openSqliteStore('captures.sqlite');
const runner = createRunner({ inventory: lab.inventory, store, logger: createLogger({ level: 'warn' }), pollMs: 20 });
const inspector = createInspector({ store, inventory: lab.inventory });
try {
  const server = await inspector.listen({ port: 0 });
  const page = await fetch(server.url);
  const script = await fetch(new URL('app.js', server.url));
  const handle = await runner.capture({
    computer: 'lv-linux-1',
    image: { osName: 'linux', prettyName: 'Consumer base', owner: 'consumer' },
  });
  const result = await handle.result;
  console.log(JSON.stringify({
    resolved: import.meta.resolve('vcl-capture'),
    provisioners: Object.keys(provisioners),
    status: result.status,
    image: result.image.name,
    sha256: result.status === 'completed' ? result.artifact.sha256 : result.error,
    page: [page.status, (await page.text()).includes('<html')],
    script: [script.status, (await script.text()).length > 0],
  }));
} finally {
  await inspector.close();
  await runner.close();
  await store.close();
  await lab.stop();
}
`,
    );
    const r = run(process.execPath, ['consumer.mjs'], consumer, 60_000);
    ok(r, 'consumer.mjs');
    expect(r.stderr).toBe('');
    expect(JSON.parse(r.stdout)).toEqual({
      resolved: `file://${join(consumer, 'node_modules', manifest.name, 'dist/src/index.js')}`,
      provisioners: [...PROVISIONERS],
      status: 'completed',
      image: expect.stringMatching(/^linux-Consumerbase\d+-v0$/),
      sha256: expect.stringMatching(/^[0-9a-f]{64}$/),
      page: [200, true],
      script: [200, true],
    });
  }, 60_000);

  it('TypeScript: a strict consumer type-checks against the shipped declarations (skipLibCheck off)', () => {
    writeFileSync(
      join(consumer, 'consumer.ts'),
      `import {
  type CaptureRunResult,
  createRunner,
  isVclError,
  loadInventoryFile,
  openSqliteStore,
  type Runner,
  startLab,
} from 'vcl-capture';
import { type ProvisionerName, provisioners } from 'vcl-capture/machines';

const lab = await startLab({ powerDelayMs: 20 });
const runner: Runner = createRunner({ inventory: lab.inventory, store: openSqliteStore('captures.sqlite') });
const handle = await runner.capture({ computer: 'lv-linux-1', image: { osName: 'linux', prettyName: 'x', owner: 'y' } });
const result: CaptureRunResult = await handle.result;
const sha: string = result.status === 'completed' ? result.artifact.sha256 : result.status;
const names: ProvisionerName[] = Object.keys(provisioners) as ProvisionerName[];
export const seen = [sha, names, isVclError(new Error('x')), typeof loadInventoryFile];
// The declarations are real types, not \`any\`: a wrong call is an error.
// @ts-expect-error computer must be a string
await runner.capture({ computer: 1, image: 12 });
`,
    );
    writeFileSync(
      join(consumer, 'tsconfig.json'),
      JSON.stringify({
        compilerOptions: {
          target: 'ES2022',
          module: 'NodeNext',
          moduleResolution: 'NodeNext',
          strict: true,
          skipLibCheck: false,
          noEmit: true,
          types: ['node'],
        },
        files: ['consumer.ts'],
      }),
    );
    ok(run(process.execPath, [TSC, '-p', '.'], consumer, 120_000), 'tsc --noEmit of consumer.ts');
  }, 120_000);
});
