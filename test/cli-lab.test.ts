/**
 * The `vcl-capture` command run as a user runs it (the installed bin, a child process) against the
 * built-in lab: the demo, a capture from an inventory file, bad inventories, and Ctrl-C.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import { startLab } from '../src/lab/index.js';
import type { Lab } from '../src/lab/types.js';
import { openSqliteStore } from '../src/store/index.js';
import { expectStoredImage } from './helpers/stored-image.js';

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
function cliAsync(
  args: string[],
  env: NodeJS.ProcessEnv = process.env,
): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env });
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
      ['px-linux-1', 'proxmox', 'completed'],
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
    const out = JSON.parse(r.stdout) as {
      status: string;
      sha256: string;
      path: string;
      sizeBytes: number;
      image: string;
    };
    expect(out.status).toBe('completed');
    expect(out.image).toMatch(/^linux-CLIbase\d+-v0$/);
    await expectStoredImage(
      lab,
      'vm-linux-1',
      { path: out.path, sizeBytes: out.sizeBytes, sha256: out.sha256, format: 'vmdk' },
      await lab.diskSha256('vm-linux-1'),
    );
  });

  it('captures a Proxmox VM (the disk its entry names of two) and refuses a VM id Proxmox cannot have', async () => {
    const r = await cliAsync([
      'capture',
      'px-windows-1',
      '--image',
      'PVE base',
      '--config',
      inventoryFile,
      '--db',
      join(dir, 'px.sqlite'),
      '--json',
    ]);
    expect(r.code, r.stderr).toBe(0);
    const out = JSON.parse(r.stdout) as { status: string; sha256: string; path: string };
    expect(out.status).toBe('completed');
    expect(out.path).toMatch(/^\/srv\/vcl\/images\/windows-PVEbase\d+-v0\.qcow2$/);
    expect(out.sha256).toBe(await lab.diskSha256('px-windows-1'));
    const file = join(dir, 'bad-vmid.yaml');
    writeFileSync(file, stringify(lab.inventory).replace(/vmid: 20001/, 'vmid: 42'));
    const bad = await cliAsync(['capture', 'px-windows-1', '--image', 'x', '--config', file]);
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/computers\.px-windows-1\.provisioner\.vmid: Proxmox VM ids start at 100/);
  });

  it('notifies before it exits: a signed webhook on loopback and a command hook; `notifications` lists them', async () => {
    const secret = 'cli-test-signing-key-0123456789';
    const bodies: { body: string; signature: string }[] = [];
    const server = createServer((req, res) => {
      let body = '';
      req.on('data', (d) => {
        body += String(d);
      });
      req.on('end', () => {
        bodies.push({ body, signature: String(req.headers['x-vcl-capture-signature']) });
        res.writeHead(204).end();
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    try {
      const port = (server.address() as AddressInfo).port;
      const hookOut = join(dir, 'hook.json');
      const file = join(dir, 'notify.yaml');
      writeFileSync(
        file,
        stringify({
          ...lab.inventory,
          notifications: {
            webhooks: [
              { name: 'ops', url: `http://127.0.0.1:${port}/vcl`, secret: { env: 'TEST_HOOK_SECRET' } },
            ],
            commands: [
              { name: 'save', argv: ['/bin/sh', '-c', `cat > '${hookOut}'`], events: ['capture.completed'] },
            ],
          },
        }),
      );
      const db = join(dir, 'notify.sqlite');
      const r = await cliAsync(
        ['capture', 'lv-linux-1', '--image', 'Notified', '--config', file, '--db', db, '--json'],
        { ...process.env, TEST_HOOK_SECRET: secret },
      );
      expect(r.code, r.stderr).toBe(0);
      const out = JSON.parse(r.stdout) as { captureId: string };
      // Delivered by the time the command exited: no daemon involved.
      expect(bodies).toHaveLength(1);
      const [got] = bodies;
      expect(got?.signature).toBe(
        `sha256=${createHmac('sha256', secret)
          .update(got?.body ?? '')
          .digest('hex')}`,
      );
      expect(JSON.parse(got?.body ?? '')).toMatchObject({
        type: 'capture.completed',
        capture: { id: out.captureId },
      });
      expect(JSON.parse(readFileSync(hookOut, 'utf8'))).toEqual(JSON.parse(got?.body ?? ''));
      const listed = await cliAsync(['notifications', '--db', db]);
      expect(listed.code, listed.stderr).toBe(0);
      expect(listed.stdout).toMatch(/ops\s+capture\.completed\s+\S+\s+lv-linux-1\s+delivered\s+1/);
      expect(listed.stdout).toMatch(/save\s+capture\.completed\s+\S+\s+lv-linux-1\s+delivered\s+1/);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
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
      lab.commandLog
        .slice(logStart)
        .some((e) => e.host === 'esxi-host' && e.argv?.[0] === 'vmkfstools' && e.argv[1] === '-i') &&
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

describe('a computer the capture never touched, and one in maintenance', () => {
  it('a wrong host key fingerprint: exit 4, the computer as it was; fixed, the same database captures', async () => {
    const db = join(dir, 'untouched.sqlite');
    const broken = structuredClone(lab.inventory);
    const libvirtHost = broken.hosts['libvirt-host'];
    if (!libvirtHost) throw new Error('no libvirt-host');
    libvirtHost.hostKey = { fingerprints: [`SHA256:${'A'.repeat(43)}`] };
    const brokenFile = join(dir, 'wrong-fingerprint.yaml');
    writeFileSync(brokenFile, stringify(broken));
    const args = ['capture', 'lv-windows-1', '--image', 'Untouched', '--db', db, '--json'];
    const first = await cliAsync([...args, '--config', brokenFile]);
    expect(first.code, first.stderr).toBe(4);
    const out = JSON.parse(first.stdout) as { status: string; error: { code: string; step: string } };
    expect(out).toMatchObject({
      status: 'failed',
      error: { code: 'SSH_HOSTKEY_MISMATCH', step: 'inspect_domain' },
    });
    const listed = cli(['computers', '--db', db, '--json']);
    expect(listed.code, listed.stderr).toBe(0);
    const computers = JSON.parse(listed.stdout) as { name: string; state: string }[];
    expect(computers.find((c) => c.name === 'lv-windows-1')?.state).toBe('available');

    const second = await cliAsync([...args, '--config', inventoryFile]);
    expect(second.code, second.stderr).toBe(0);
    expect((JSON.parse(second.stdout) as { status: string }).status).toBe('completed');
  }, 60_000);

  it('refused at reservation (maintenance, or held): exit 5, says which and what to do, records nothing; release puts it back', async () => {
    const db = join(dir, 'maintenance.sqlite');
    const computer = 'xc-windows-1';
    const store = openSqliteStore(db);
    const image = await store.registerImage({ osName: 'windows', prettyName: 'Broken', owner: 'test' });
    await store.registerComputers([{ name: computer }]);
    const created = { computer, imageId: image.id, provisioner: 'xcat', os: 'windows' } as const;
    await store.createCapture({ ...created, id: 'broke-1' });
    const error = { code: 'UPLOAD_FAILED', step: 'watch_upload', message: 'the capture environment failed' };
    await store.failCapture('broke-1', error, 'maintenance');
    await store.close();
    const count = async () => {
      const s = openSqliteStore(db);
      try {
        return (await s.listCaptures({ computer })).length;
      } finally {
        await s.close();
      }
    };
    const capture = ['capture', computer, '--image', 'Broken', '--config', inventoryFile, '--db', db];

    const refused = await cliAsync([...capture, '--json']);
    expect(refused.code, refused.stderr).toBe(5);
    const out = JSON.parse(refused.stdout) as { status: string; error: { code: string; details: unknown } };
    expect(out).toMatchObject({
      status: 'refused',
      error: {
        code: 'COMPUTER_BUSY',
        details: { reason: 'maintenance', maintenance: { captureId: 'broke-1' } },
      },
    });
    expect(refused.stderr).toContain('UPLOAD_FAILED in watch_upload');
    expect(refused.stderr).toContain(`vcl-capture release ${computer} --reason`);
    expect(await count()).toBe(1);

    const listed = cli(['computers', '--db', db]);
    expect(listed.code, listed.stderr).toBe(0);
    expect(listed.stdout).toMatch(new RegExp(`${computer} +maintenance .*capture broke-1 .*UPLOAD_FAILED`));
    expect(listed.stdout).toContain('vcl-capture release <computer> --reason');
    const json = JSON.parse(cli(['computers', '--db', db, '--json']).stdout) as {
      name: string;
      maintenance: unknown;
    }[];
    expect(json.find((c) => c.name === computer)?.maintenance).toMatchObject({ captureId: 'broke-1', error });

    expect(cli(['release', computer, '--db', db]).code).toBe(2);
    const released = cli(['release', computer, '--reason', 'checked the node', '--db', db]);
    expect(released.code, released.stderr).toBe(0);
    expect(released.stdout).toContain(`released: ${computer} is available again`);
    const again = cli(['release', computer, '--reason', 'checked the node', '--db', db]);
    expect(again.code).toBe(2);
    expect(again.stderr).toMatch(/not maintenance/);
    const shown = JSON.parse(cli(['show', 'broke-1', '--db', db, '--json']).stdout) as {
      events: { type: string; details: unknown }[];
    };
    expect(shown.events.at(-1)).toMatchObject({
      type: 'computer.released',
      details: { reason: 'checked the node', to: 'available' },
    });

    // Held by another capture: the same exit code, the holder named, how to end it.
    const holder = openSqliteStore(db);
    await holder.createCapture({ ...created, id: 'holder-1' });
    await holder.close();
    const held = await cliAsync([...capture, '--json']);
    expect(held.code, held.stderr).toBe(5);
    expect(JSON.parse(held.stdout)).toMatchObject({
      status: 'refused',
      error: { code: 'COMPUTER_BUSY', details: { reason: 'held', heldBy: 'holder-1' } },
    });
    expect(held.stderr).toContain('vcl-capture cancel holder-1');
    const releaseHeld = cli(['release', computer, '--reason', 'x', '--db', db]);
    expect(releaseHeld.code).toBe(5);
    expect(releaseHeld.stderr).toMatch(/held by capture holder-1.*vcl-capture cancel holder-1/);
    expect(await count()).toBe(2);
  }, 120_000);
});
