/**
 * The boot test of captured libvirt images (`boot_test`) through the runner against the lab: an image
 * that boots is recorded; one that does not (its guest hangs, or panics) fails the capture with
 * BOOT_TEST_FAILED, nothing is recorded and its file is removed; a cancel during the boot test removes the
 * test domain; a re-run finds and removes an earlier attempt's domain and overlay first; the preflight
 * refuses a boot test of an image on another host. Every case ends with no test domain and no overlay.
 */
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { labTransientDomains } from '../../src/provisioners/libvirt/lab-commands.js';
import { createRunner, type Runner, type RunnerEvent } from '../../src/runner/runner.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import { withBootTest } from '../helpers/boot-test.js';

const IMAGES = '/var/lib/libvirt/images';
const REPOSITORY = '/var/lib/vcl/images';
const SSH_PORT = 20022;

let lab: Lab;
let store: SqliteCaptureStore;
let runner: Runner;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-boot-'));
  lab = await startLab({ powerDelayMs: 15, computers: { 'libvirt-linux': 6 } });
  store = openSqliteStore(join(dir, 'store.sqlite'));
  const inventory = withBootTest(
    withBootTest(lab.inventory, ['lv-linux-1', 'lv-linux-2', 'lv-linux-3', 'lv-linux-4']),
    ['lv-linux-5'],
    { check: 'ssh', port: SSH_PORT },
  );
  runner = createRunner({ inventory, store, pollMs: 15 });
});

afterAll(async () => {
  await runner?.close();
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

/** The boot test's leftovers: hidden files beside the disks, and live transient domains. */
async function leftovers(): Promise<{ files: string[]; domains: string[] }> {
  const files = readdirSync(await lab.realPath('libvirt-host', IMAGES)).filter((f) => f.startsWith('.vcl-'));
  return { files, domains: labTransientDomains() };
}

async function repositoryFiles(image: string): Promise<string[]> {
  return readdirSync(await lab.realPath('libvirt-host', REPOSITORY)).filter((f) => f.includes(image));
}

async function capture(
  computer: string,
  timeouts?: Record<string, number>,
  onState?: (e: RunnerEvent) => void,
) {
  let id = '';
  const off = runner.on((e) => {
    if (e.type === 'queued' && e.computer === computer) id = e.captureId;
    if (e.type === 'state' && e.captureId === id) onState?.(e);
  });
  const handle = await runner.capture({
    computer,
    image: { osName: 'linux', prettyName: `Boot ${computer}`, owner: 'test' },
    ...(timeouts ? { timeouts } : {}),
  });
  const result = await handle.result;
  off();
  return { handle, result };
}

/** Revisions of the capture's image that were recorded (not deleted). */
async function recorded(imageId: number): Promise<number> {
  const image = await store.getImage(imageId);
  return image?.revisions.filter((r) => !r.deleted).length ?? 0;
}

describe('boot test of captured libvirt images', () => {
  it('an image that boots (console line) is recorded; the test domain booted an overlay over it and is gone', async () => {
    const source = await lab.diskSha256('lv-linux-1');
    lab.clearLog();
    const { handle, result } = await capture('lv-linux-1');
    if (result.status !== 'completed') throw new Error(JSON.stringify(result.error));
    expect(result.artifact.sha256).toBe(source);
    // The image itself was never written: it still has the source's bytes.
    expect(await lab.sha256('libvirt-host', result.artifact.path)).toBe(source);
    const commands = lab.commands('libvirt-host').map((a) => a.join(' '));
    const overlay = `${IMAGES}/.vcl-boot-${handle.id}.qcow2`;
    expect(commands).toContain(`qemu-img create -f qcow2 -b ${result.artifact.path} -F qcow2 ${overlay}`);
    // QEMU runs as the owner of the computer's disk: the overlay is given to it.
    expect(commands).toContain(`chown --reference=${IMAGES}/lv-linux-1.qcow2 -- ${overlay}`);
    const created = commands.indexOf(`virsh create ${IMAGES}/.vcl-boot-${handle.id}.xml`);
    const destroyed = commands.lastIndexOf(`virsh destroy vcl-boot-${handle.id}`);
    expect(created).toBeGreaterThan(0);
    expect(destroyed).toBeGreaterThan(created);
    expect(commands.findIndex((c) => c.startsWith('sha256sum'))).toBeLessThan(created);
    expect(await leftovers()).toEqual({ files: [], domains: [] });
    expect(await recorded(handle.image.imageId)).toBe(1);
    expect(lab.internalErrors).toEqual([]);
  });

  it('an image that does not boot within bootTestMs fails with BOOT_TEST_FAILED: nothing recorded, file, domain and overlay removed', async () => {
    lab.faults.add({ kind: 'doesNotBoot', host: 'libvirt-host', mode: 'hang' });
    const { handle, result } = await capture('lv-linux-2', { bootTestMs: 1500 });
    expect(result.status).toBe('failed');
    if (result.status === 'completed') return;
    expect(result.error.code).toBe('BOOT_TEST_FAILED');
    expect(result.error.step).toBe('boot_test');
    expect(result.error.message).toMatch(/no console line matching \/login:\/.*Booting from Hard Disk/);
    expect(result.cleanupFailures).toEqual([]);
    expect(await repositoryFiles(handle.image.name)).toEqual([]);
    expect(await recorded(handle.image.imageId)).toBe(0);
    expect(await leftovers()).toEqual({ files: [], domains: [] });
    expect((await store.getCapture(handle.id))?.status).toBe('failed');
    // The copy touched the computer (it was powered off for it): an operator looks before it is reloaded.
    expect((await store.getComputer('lv-linux-2'))?.state).toBe('maintenance');
  });

  it('a guest whose kernel panics fails at once, quoting its console', async () => {
    lab.faults.add({ kind: 'doesNotBoot', host: 'libvirt-host', mode: 'panic' });
    const started = Date.now();
    const { handle, result } = await capture('lv-linux-3', { bootTestMs: 60_000 });
    if (result.status === 'completed') throw new Error('completed');
    expect(result.error.code).toBe('BOOT_TEST_FAILED');
    expect(result.error.message).toMatch(/test domain vanished.*Kernel panic - not syncing/);
    // Well before the 60 s budget: the vanished domain ends the wait.
    expect(Date.now() - started).toBeLessThan(30_000);
    expect(await repositoryFiles(handle.image.name)).toEqual([]);
    expect(await leftovers()).toEqual({ files: [], domains: [] });
  });

  it('a cancel while the test domain runs removes the domain, the overlay and the image', async () => {
    lab.faults.add({ kind: 'doesNotBoot', host: 'libvirt-host', mode: 'hang' });
    let id = '';
    let poll: NodeJS.Timeout | undefined;
    const running = new Promise<void>((resolve) => {
      const off = runner.on((e) => {
        if (e.type === 'queued' && e.computer === 'lv-linux-4') id = e.captureId;
        if (
          e.type !== 'state' ||
          e.captureId !== id ||
          JSON.stringify(e.state) !== '{"capturing":"boot_test"}'
        )
          return;
        off();
        // Cancel once the test domain exists: its removal is then the compensation's work.
        poll = setInterval(() => {
          if (labTransientDomains().includes(`vcl-boot-${id}`)) resolve();
        }, 5);
      });
    });
    const handle = await runner.capture({
      computer: 'lv-linux-4',
      image: { osName: 'linux', prettyName: 'Boot cancel', owner: 'test' },
      timeouts: { bootTestMs: 60_000 },
    });
    await running;
    clearInterval(poll);
    await handle.cancel('operator');
    const result = await handle.result;
    lab.faults.clear();
    expect(result.status).toBe('cancelled');
    if (result.status === 'completed') return;
    expect(result.error.step).toBe('boot_test');
    expect(result.cleanupFailures).toEqual([]);
    expect(await repositoryFiles(handle.image.name)).toEqual([]);
    expect(await recorded(handle.image.imageId)).toBe(0);
    expect(await leftovers()).toEqual({ files: [], domains: [] });
  });

  it('the SSH check: the banner on the forwarded port shows the guest booted', async () => {
    lab.clearLog();
    const { handle, result } = await capture('lv-linux-5');
    if (result.status !== 'completed') throw new Error(JSON.stringify(result.error));
    const xml = lab.commands('libvirt-host').find((a) => a[0] === 'tee');
    expect(xml).toEqual(['tee', '--', `${IMAGES}/.vcl-boot-${handle.id}.xml`]);
    const probes = lab.commands('libvirt-host').filter((a) => a[0] === 'bash');
    expect(probes.length).toBeGreaterThan(0);
    expect(probes[0]?.[4]).toBe(String(SSH_PORT));
    expect(await leftovers()).toEqual({ files: [], domains: [] });
  });

  it('the preflight refuses a boot test of an image that would not be on the libvirt host', async () => {
    const inventory = withBootTest(lab.inventory, ['lv-linux-6']);
    const entry = inventory.computers['lv-linux-6'];
    if (entry) entry.repository = 'images';
    const other = createRunner({ inventory, store, pollMs: 15 });
    try {
      const handle = await other.capture({
        computer: 'lv-linux-6',
        image: { osName: 'linux', prettyName: 'Boot elsewhere', owner: 'test' },
      });
      const result = await handle.result;
      if (result.status === 'completed') throw new Error('completed');
      expect(result.error).toMatchObject({ code: 'BOOT_TEST_UNSUPPORTED', step: 'inspect_domain' });
      expect(result.error.message).toMatch(/repository images is on repo-host/);
      // Nothing was touched: the computer is back as it was.
      expect((await store.getComputer('lv-linux-6'))?.state).toBe('available');
    } finally {
      await other.close();
    }
  });
});
