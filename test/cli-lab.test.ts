/**
 * The `vcl-capture` command run as a user runs it (the installed bin, a child process) against the
 * built-in lab: the demo, a capture from an inventory file, bad inventories, and Ctrl-C.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { startLab } from '../src/lab/index.js';
import type { Lab } from '../src/lab/types.js';
import { openSqliteStore } from '../src/store/index.js';

const BIN = new URL('../src/cli/bin.mjs', import.meta.url).pathname;
let dir: string;
let lab: Lab;
let inventoryFile: string;

function cli(args: string[], timeout = 60_000) {
  const r = spawnSync(process.execPath, [BIN, ...args], {
    encoding: 'utf8',
    timeout,
    env: { ...process.env, NO_COLOR: '1' },
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** For commands that talk to the in-process lab: spawnSync would block the lab's event loop. */
function cliAsync(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => {
      stdout += String(d);
    });
    child.stderr.on('data', (d) => {
      stderr += String(d);
    });
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-cli-'));
  lab = await startLab({ powerDelayMs: 20 });
  inventoryFile = join(dir, 'lab.yaml');
  writeFileSync(inventoryFile, stringify(lab.inventory));
});

afterAll(async () => {
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('vcl-capture demo', () => {
  it('captures one computer per provisioner, and its summary matches the store', async () => {
    const db = join(dir, 'demo.sqlite');
    const r = cli(['demo', '--json', '--db', db]);
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const out = JSON.parse(r.stdout) as {
      captures: { computer: string; provisioner: string; status: string; image: string; sha256: string }[];
      database: string;
    };
    expect(out.database).toBe(db);
    expect(out.captures.map((c) => [c.computer, c.provisioner, c.status])).toEqual([
      ['lv-linux-1', 'libvirt', 'completed'],
      ['vm-windows-1', 'vmware', 'completed'],
      ['xc-linux-1', 'xcat', 'completed'],
    ]);
    const store = openSqliteStore(db);
    try {
      const images = await store.listImages();
      const revisions = images.flatMap((i) => i.revisions);
      for (const c of out.captures) {
        const rev = revisions.find((x) => x.name === c.image);
        expect(rev?.sha256).toBe(c.sha256);
        expect(rev?.deleted).toBe(false);
      }
      expect((await store.listCaptures()).map((c) => c.status)).toEqual([
        'completed',
        'completed',
        'completed',
      ]);
    } finally {
      await store.close();
    }
  });
});

describe('vcl-capture capture', () => {
  it('captures a lab computer from an inventory file, with a JSON result', async () => {
    const r = await cliAsync([
      'capture',
      'vm-linux-1',
      '--image',
      'CLI base',
      '--config',
      inventoryFile,
      '--db',
      join(dir, 'c.sqlite'),
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { status: string; sha256: string; path: string; image: string };
    expect(out.status).toBe('completed');
    expect(out.image).toMatch(/^linux-CLIbase\d+-v0$/);
    expect(await lab.sha256('repo-host', out.path)).toBe(out.sha256);
    expect(out.sha256).toBe(await lab.diskSha256('vm-linux-1'));
  });

  // Five CLI processes one after another: a budget for a loaded machine, where each takes seconds to start.
  it('refuses bad inventory files with exit 2 and a message naming the problem', { timeout: 120_000 }, () => {
    const good = stringify(lab.inventory);
    const cases: [string, string, RegExp][] = [
      [
        'missing field',
        good.replace(/\n {6}domain: lv-linux-1/, ''),
        /computers\.lv-linux-1\.provisioner\.domain/,
      ],
      ['wrong type', good.replace(/port: (\d+)/, 'port: "$1"'), /hosts\.[\w-]+\.port: .*number/],
      [
        'unknown provisioner',
        good.replace('type: libvirt', 'type: hyperv'),
        /provisioner\.type: .*'libvirt' \| 'vmware' \| 'xcat'/,
      ],
      ['duplicate computer', `${good}\ncomputers:\n  x: {}\n`, /Map keys must be unique/],
    ];
    for (const [what, text, message] of cases) {
      const file = join(dir, `bad-${what.replace(/ /g, '-')}.yaml`);
      writeFileSync(file, text);
      const r = cli([
        'capture',
        'lv-linux-1',
        '--image',
        'x',
        '--config',
        file,
        '--db',
        join(dir, 'bad.sqlite'),
      ]);
      expect(r.code, what).toBe(2);
      expect(r.stderr, what).toMatch(message);
      expect(r.stderr, what).toContain(file);
    }
    const illegal = cli([
      'capture',
      'lv-linux-1',
      '--image',
      '!!!',
      '--config',
      inventoryFile,
      '--db',
      join(dir, 'bad.sqlite'),
    ]);
    expect(illegal.code).toBe(2);
    expect(illegal.stderr).toMatch(/pretty name/i);
  });

  it('Ctrl-C cancels: the cleanup runs, exit 3, no partial image, computer in maintenance', async () => {
    lab.faults.add({ kind: 'hangCommand', host: 'esxi-host', match: ['vmkfstools', '-i'] });
    const logStart = lab.commandLog.length;
    const db = join(dir, 'sigint.sqlite');
    const child: ChildProcess = spawn(
      process.execPath,
      [
        BIN,
        'capture',
        'vm-windows-1',
        '--image',
        'Interrupted',
        '--config',
        inventoryFile,
        '--db',
        db,
        '--json',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    child.stdout?.on('data', (d) => {
      stdout += String(d);
    });
    const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
    const deadline = Date.now() + 30_000;
    // The clone is the hung command: wait until it is the one running (not an earlier quick command).
    const cloning = () =>
      lab.commandLog.slice(logStart).some((e) => e.host === 'esxi-host' && e.argv?.[0] === 'vmkfstools') &&
      lab.runningCommands('esxi-host') > 0;
    while (!cloning() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    child.kill('SIGINT');
    const code = await exited;
    lab.faults.clear();
    expect(code).toBe(3);
    const out = JSON.parse(stdout) as { status: string; error: { code: string; step: string } };
    expect(out.status).toBe('cancelled');
    expect(out.error).toMatchObject({ code: 'CANCELLED', step: 'clone_disk' });
    expect(lab.runningCommands('esxi-host')).toBe(0);
    const leftovers = readdirSync(await lab.realPath('esxi-host', '/vmfs/volumes/datastore1')).filter((f) =>
      f.includes('Interrupted'),
    );
    expect(leftovers).toEqual([]);
    const store = openSqliteStore(db);
    try {
      expect((await store.getComputer('vm-windows-1'))?.state).toBe('maintenance');
    } finally {
      await store.close();
    }
  });
});
