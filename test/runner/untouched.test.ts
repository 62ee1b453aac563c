/**
 * A capture that fails before it touched the computer leaves the computer as it was (issue 15): a refused
 * handshake or host key on any host of its path, an unreachable host, a target already in the
 * repository, a domain / VM / node the hypervisor does not know. Each such failure ends the capture
 * `failed` with its typed code, puts the computer back in the state it was reserved from, runs no command
 * on the computer, and a second capture right after, the cause fixed, succeeds on the same database.
 * A failure after the computer was touched still sends it to maintenance, from where an operator
 * releases it.
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Inventory } from '../../src/inventory/schema.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { createRunner } from '../../src/runner/runner.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import { ed25519KeyPair } from '../helpers/keys.js';
import { expectStoredImage } from '../helpers/stored-image.js';

let lab: Lab;
let store: SqliteCaptureStore;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-untouched-'));
  lab = await startLab({
    powerDelayMs: 20,
    computers: { 'libvirt-linux': 7, 'vmware-linux': 4, 'xcat-linux': 5 },
  });
  store = openSqliteStore(join(dir, 'store.sqlite'));
});

afterAll(async () => {
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** A well-formed fingerprint no lab host has. */
const WRONG_FINGERPRINT = `SHA256:${'A'.repeat(43)}`;

/** A loopback port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise((resolve) => server.close(resolve));
  if (typeof address !== 'object' || address === null) throw new Error('no port');
  return address.port;
}

function hostOf(inventory: Inventory, name: string): Inventory['hosts'][string] {
  const host = inventory.hosts[name];
  if (!host) throw new Error(`no host ${name}`);
  return host;
}

interface Case {
  name: string;
  computer: string;
  /** The failure's code and the step it happens in. */
  code: string;
  step: string;
  /** Breaks the inventory (a copy of the lab's), or the lab, before the first capture. */
  breakIt: (inventory: Inventory, computer: string) => Promise<void> | void;
  /** Undoes what `breakIt` did to the lab (the fixed inventory is the lab's own). */
  fix?: () => Promise<void> | void;
  /** The state the computer is in before the capture (default available). */
  from?: 'available' | 'reserved';
  /** The image to capture into (default: a new image). */
  image?: () => number;
}

let existing: { path: string; imageId: number } | undefined;

const cases: Case[] = [
  {
    name: 'wrong pinned fingerprint of the libvirt host',
    computer: 'lv-linux-1',
    code: 'SSH_HOSTKEY_MISMATCH',
    step: 'inspect_domain',
    breakIt: (inv) => {
      hostOf(inv, 'libvirt-host').hostKey = { fingerprints: [WRONG_FINGERPRINT] };
    },
  },
  {
    name: 'wrong pinned fingerprint of the repository host',
    computer: 'lv-linux-2',
    code: 'SSH_HOSTKEY_MISMATCH',
    step: 'inspect_domain',
    breakIt: (inv) => {
      hostOf(inv, 'repo-host').hostKey = { fingerprints: [WRONG_FINGERPRINT] };
    },
  },
  {
    name: 'wrong pinned fingerprint of the guest itself (refused in ensure_responding)',
    computer: 'lv-linux-3',
    code: 'SSH_HOSTKEY_MISMATCH',
    step: 'ensure_responding',
    from: 'reserved',
    breakIt: (inv, computer) => {
      hostOf(inv, computer).hostKey = { fingerprints: [WRONG_FINGERPRINT] };
    },
  },
  {
    name: 'wrong pinned fingerprint of the ESXi host',
    computer: 'vm-linux-1',
    code: 'SSH_HOSTKEY_MISMATCH',
    step: 'locate_vm',
    breakIt: (inv) => {
      hostOf(inv, 'esxi-host').hostKey = { fingerprints: [WRONG_FINGERPRINT] };
    },
  },
  {
    name: 'wrong pinned fingerprint of the xCAT management node',
    computer: 'xc-linux-1',
    code: 'SSH_HOSTKEY_MISMATCH',
    step: 'check_target',
    breakIt: (inv) => {
      hostOf(inv, 'xcat-mn').hostKey = { fingerprints: [WRONG_FINGERPRINT] };
    },
  },
  {
    name: 'unknown host key (an empty known_hosts file, no acceptNew)',
    computer: 'vm-linux-2',
    code: 'SSH_HOSTKEY_UNKNOWN',
    step: 'locate_vm',
    breakIt: (inv) => {
      const file = join(dir, 'empty_known_hosts');
      writeFileSync(file, '');
      hostOf(inv, 'esxi-host').hostKey = { knownHostsFile: file };
    },
  },
  {
    name: 'a known_hosts entry that changed (another key for the xCAT management node)',
    computer: 'xc-linux-5',
    code: 'SSH_HOSTKEY_MISMATCH',
    step: 'check_target',
    breakIt: (inv) => {
      const file = join(dir, 'changed_known_hosts');
      const mn = hostOf(inv, 'xcat-mn');
      const other = ed25519KeyPair().public.split(' ').slice(0, 2).join(' ');
      writeFileSync(file, `[${mn.address}]:${mn.port} ${other}\n`);
      mn.hostKey = { knownHostsFile: file };
    },
  },
  {
    name: 'unreachable libvirt host (the preflight sees no SSH banner: refused at once, no retries)',
    computer: 'lv-linux-4',
    code: 'SSH_UNREACHABLE',
    step: 'inspect_domain',
    breakIt: async (inv) => {
      hostOf(inv, 'libvirt-host').port = await closedPort();
    },
  },
  {
    name: 'unreachable guest (connection refused until ensure_responding gives up)',
    computer: 'lv-linux-5',
    code: 'TIMEOUT',
    step: 'ensure_responding',
    breakIt: async (inv, computer) => {
      hostOf(inv, computer).port = await closedPort();
      inv.defaults.timeouts = { ...inv.defaults.timeouts, respondMs: 800 };
    },
  },
  {
    name: 'target already in the repository',
    computer: 'lv-linux-6',
    code: 'TARGET_EXISTS',
    step: 'inspect_domain',
    breakIt: async () => {
      // The name the next revision of this image gets (revision 0 of a new image).
      const image = await store.registerImage({ osName: 'linux', prettyName: 'Exists', owner: 'test' });
      existing = { path: `/srv/vcl/images/linux-Exists${image.id}-v0.qcow2`, imageId: image.id };
      writeFileSync(await lab.realPath('repo-host', existing.path), 'someone else’s image');
    },
    fix: async () => {
      rmSync(await lab.realPath('repo-host', existing?.path ?? ''));
    },
    image: () => existing?.imageId ?? -1,
  },
  {
    name: 'domain missing on the libvirt host',
    computer: 'lv-linux-7',
    code: 'NOT_FOUND',
    step: 'inspect_domain',
    breakIt: (inv, computer) => {
      const c = inv.computers[computer];
      if (c?.provisioner.type === 'libvirt') c.provisioner.domain = 'no-such-domain';
    },
  },
  {
    name: 'VM missing on the ESXi host',
    computer: 'vm-linux-3',
    code: 'NOT_FOUND',
    step: 'locate_vm',
    breakIt: (inv, computer) => {
      const c = inv.computers[computer];
      if (c?.provisioner.type === 'vmware') c.provisioner.vm = 'no-such-vm';
    },
  },
  {
    name: 'node missing in xCAT',
    computer: 'xc-linux-2',
    code: 'NOT_FOUND',
    step: 'check_target',
    breakIt: (inv, computer) => {
      const c = inv.computers[computer];
      if (c?.provisioner.type === 'xcat') c.provisioner.node = 'no-such-node';
    },
  },
];

describe('a failure before the computer was touched leaves it as it was', () => {
  it.each(cases.map((c) => [c.name, c] as const))('%s', async (_name, c) => {
    const inventory = structuredClone(lab.inventory) as Inventory;
    await c.breakIt(inventory, c.computer);
    const from = c.from ?? 'available';
    await store.registerComputers([{ name: c.computer }]);
    if (from !== 'available') await store.setComputerState(c.computer, from);
    const bootId = lab.computer(c.computer).bootId;
    const source = await lab.diskSha256(c.computer);
    const logStart = lab.commandLog.length;

    const broken = createRunner({ inventory, store, pollMs: 20 });
    const image = c.image?.() ?? { osName: 'linux', prettyName: 'Untouched', owner: 'test' };
    const handle = await broken.capture({ computer: c.computer, image });
    const result = await handle.result;
    await broken.close();
    expect(result.status).toBe('failed');
    if (result.status === 'completed' || result.status === 'suspended') return;
    expect(result.error).toMatchObject({ code: c.code, step: c.step });
    const record = await store.getCapture(handle.id);
    expect(record).toMatchObject({ status: 'failed', releaseOutcome: 'restore' });
    expect(await store.getComputer(c.computer)).toMatchObject({ state: from, heldBy: null });
    // Nothing ran on the computer: no command reached it, it did not reboot, its disk is unchanged.
    expect(lab.commandLog.slice(logStart).filter((e) => e.host === c.computer && e.kind === 'exec')).toEqual(
      [],
    );
    expect(lab.computer(c.computer).bootId).toBe(bootId);
    expect(await lab.diskSha256(c.computer)).toBe(source);

    // The cause fixed (the lab's own inventory), the same database: the next capture succeeds.
    await c.fix?.();
    const fixed = createRunner({ inventory: lab.inventory, store, pollMs: 20 });
    const again = await fixed.capture({ computer: c.computer, image });
    const second = await again.result;
    await fixed.close();
    if (second.status !== 'completed') throw new Error(`${second.status}: ${JSON.stringify(second.error)}`);
    await expectStoredImage(lab, c.computer, second.artifact, source);
    expect((await store.getComputer(c.computer))?.state).toBe('reload');
    expect(lab.internalErrors).toEqual([]);
  });
});

describe('a failure after the computer was touched still goes to maintenance', () => {
  it('the OS fails a changing step: maintenance, the cause listed, released by an operator, captured again', async () => {
    const computer = 'xc-linux-3';
    const runner = createRunner({ inventory: lab.inventory, store, pollMs: 20 });
    const image = { osName: 'linux', prettyName: 'Touched', owner: 'test' };
    lab.faults.add({ kind: 'failCommand', host: computer, match: ['umount'], exitCode: 32, times: Infinity });
    const handle = await runner.capture({ computer, image });
    const result = await handle.result;
    lab.faults.clear();
    expect(result.status).toBe('failed');
    expect((await store.getCapture(handle.id))?.releaseOutcome).toBe('maintenance');
    const status = await store.describeComputer(computer);
    expect(status).toMatchObject({
      state: 'maintenance',
      maintenance: { captureId: handle.id, status: 'failed', error: { step: 'unmount_network_shares' } },
    });

    // Refused while in maintenance, with what to do; nothing is recorded.
    const before = (await store.listCaptures({ computer })).length;
    const refused = await runner.capture({ computer, image }).catch((e: unknown) => e);
    expect(refused).toMatchObject({
      code: 'COMPUTER_BUSY',
      details: { reason: 'maintenance', maintenance: { captureId: handle.id } },
    });
    expect((refused as Error).message).toContain(`vcl-capture release ${computer} --reason`);
    expect((await store.listCaptures({ computer })).length).toBe(before);

    const released = await store.releaseComputer(computer, 'checked the node: shares unmounted by hand');
    expect(released.computer.state).toBe('available');
    const trail = await store.getCapture(handle.id);
    expect(trail?.events.at(-1)).toMatchObject({
      type: 'computer.released',
      details: {
        computer,
        from: 'maintenance',
        to: 'available',
        reason: 'checked the node: shares unmounted by hand',
      },
    });
    expect((await store.describeComputer(computer))?.maintenance).toBeNull();

    if (lab.computer(computer).power !== 'on') {
      lab.powerOn(computer);
      await lab.waitForPower(computer, 'on');
    }
    const again = await runner.capture({ computer, image });
    expect((await again.result).status).toBe('completed');
    await runner.close();
  });

  it('a copy that fails after the power off: maintenance', async () => {
    const computer = 'xc-linux-4';
    const runner = createRunner({ inventory: lab.inventory, store, pollMs: 20 });
    lab.faults.add({ kind: 'captureFails', computer, afterBytes: 1024 });
    const handle = await runner.capture({
      computer,
      image: { osName: 'linux', prettyName: 'Touched upload', owner: 'test' },
    });
    const result = await handle.result;
    lab.faults.clear();
    expect(result.status).toBe('failed');
    expect((await store.getCapture(handle.id))?.releaseOutcome).toBe('maintenance');
    expect((await store.getComputer(computer))?.state).toBe('maintenance');
    await runner.close();
  });
});
