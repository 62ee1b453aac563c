/**
 * `vcl-capture preflight` run as a user runs it (the bin, a child process): against the built-in lab when
 * no inventory is given, and against a lab whose repository is full or whose host does not answer, from
 * an inventory file. The exit code and the printed checks are what an operator acts on.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { startLab } from '../src/lab/index.js';
import type { Lab } from '../src/lab/types.js';

const BIN = new URL('../src/cli/bin.mjs', import.meta.url).pathname;
let dir: string;
let lab: Lab;
let inventoryFile: string;

/** A child process, not spawnSync: the lab it talks to runs in this process's event loop. */
function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, NO_COLOR: '1' },
    });
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

interface Report {
  computer: string;
  ok: boolean;
  checks: { name: string; status: string; detail: string }[];
  error?: { code: string; check: string; message: string };
}

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-cli-preflight-'));
  lab = await startLab({ powerDelayMs: 20, computers: { 'libvirt-linux': 1, 'vmware-windows': 1 } });
  inventoryFile = join(dir, 'lab.yaml');
  writeFileSync(inventoryFile, stringify(lab.inventory));
});

afterAll(async () => {
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('vcl-capture preflight', () => {
  it('passes on the built-in lab without an inventory, every check listed', async () => {
    const r = await cli(['preflight', 'xc-linux-1', '--json']);
    expect(r.code, r.stderr).toBe(0);
    const report = JSON.parse(r.stdout) as Report;
    expect(report).toMatchObject({ computer: 'xc-linux-1', ok: true });
    expect(report.checks.map((c) => c.name)).toEqual([
      'reach xcat-mn',
      'tools on xcat-mn',
      'node xc-linux-1',
      'target',
      'space in repository xcat-images',
      'reach xc-linux-1',
    ]);
  });

  it('fails with exit 1 on a full repository, printing what to fix; touches nothing', async () => {
    const full = lab.faults.add({ kind: 'diskFull', host: 'repo-host' });
    const sent = lab.commandLog.length;
    try {
      const r = await cli([
        'preflight',
        'vm-windows-1',
        '--config',
        inventoryFile,
        '--image-name',
        'windows-A1-v0',
      ]);
      expect(r.code, r.stderr).toBe(1);
      expect(r.stdout).toMatch(
        /FAIL {2}space in repository images {2,}repository images \(repo-host:\/srv\/vcl\/images\) has 0 bytes free; .*free space there/,
      );
      expect(r.stdout).toMatch(
        /ok {4}target +\/vmfs\/volumes\/datastore1\/windows-A1-v0\/ and \/srv\/vcl\/images\/windows-A1-v0\.vmdk are free/,
      );
      expect(r.stdout).toContain('=> failed: PREFLIGHT_NO_SPACE (space in repository images)');
      const programs = lab.commandLog.slice(sent).map((e) => e.argv?.[0]);
      expect(
        programs.filter(
          (p) => !['sh', 'vim-cmd', 'cat', 'stat', 'test', 'df', 'vmkfstools', 'true'].includes(p ?? ''),
        ),
      ).toEqual([]);
    } finally {
      full.clear();
    }
  });

  it('exits 4 when a host does not answer, and 2 for a computer the inventory lacks', async () => {
    const down = lab.faults.add({ kind: 'unreachable', host: 'libvirt-host' });
    try {
      const r = await cli(['preflight', 'lv-linux-1', '--config', inventoryFile, '--json']);
      expect(r.code, r.stderr).toBe(4);
      expect((JSON.parse(r.stdout) as Report).error).toMatchObject({
        code: 'SSH_UNREACHABLE',
        check: 'reach libvirt-host',
      });
    } finally {
      down.clear();
    }
    const unknown = await cli(['preflight', 'nope', '--config', inventoryFile]);
    expect(unknown.code).toBe(2);
    expect(unknown.stderr).toContain("computer 'nope' is not in the inventory");
  });
});
