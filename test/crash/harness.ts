/**
 * Crash harness: the built-in lab in this process, `vcl-capture daemon` as a real child process on a
 * store file, SIGKILL at chosen moments, restarts, and the checks every capture must pass whatever the
 * kills did (test/crash/crash.test.ts).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { expect } from 'vitest';
import type { Inventory } from '../../src/inventory/schema.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab, LabOptions } from '../../src/lab/types.js';
import { createRunner, type Runner } from '../../src/runner/runner.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import type { CaptureDetail, CaptureStore } from '../../src/store/types.js';
import { expectStoredImage } from '../helpers/stored-image.js';

const BIN = join(import.meta.dirname, '../../src/cli/bin.mjs');

/**
 * Repository folders of the lab (host, path), and the Proxmox node's staging folder: nothing half-made may
 * stay in them.
 */
const REPOSITORIES = [
  ['repo-host', '/srv/vcl/images'],
  ['libvirt-host', '/var/lib/vcl/images'],
  ['xcat-mn', '/install/image/x86'],
  ['pve-node', '/var/lib/vz/dump'],
] as const;

export interface Rig {
  lab: Lab;
  store: SqliteCaptureStore;
  /** Creates queued captures (never started: the daemon runs them). */
  producer: Runner;
  dir: string;
  /** The inventory the daemons run with. */
  inventory: Inventory;
  inventoryPath: string;
  dbPath: string;
  daemon: Daemon | undefined;
  close(): Promise<void>;
}

/** `inventory`: what the daemons are given instead of the lab's own (a switch turned on for some computers). */
export async function startRig(
  labOptions: LabOptions,
  inventory: (lab: Inventory) => Inventory = (i) => i,
): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'vcl-crash-'));
  const lab = await startLab(labOptions);
  const used = inventory(lab.inventory);
  const inventoryPath = join(dir, 'inventory.json');
  writeFileSync(inventoryPath, JSON.stringify(used));
  const dbPath = join(dir, 'store.sqlite');
  const store = openSqliteStore(dbPath);
  const producer = createRunner({ inventory: used, store, id: 'producer' });
  const rig: Rig = {
    lab,
    store,
    producer,
    dir,
    inventory: used,
    inventoryPath,
    dbPath,
    daemon: undefined,
    async close() {
      // Every daemon ever started, should a failing test have left one running.
      for (const d of allDaemons) await d.kill();
      await producer.close();
      await store.close();
      await lab.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return rig;
}

/** A `vcl-capture daemon` child process. */
export class Daemon {
  readonly proc: ChildProcess;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  private stderr = '';

  constructor(rig: Rig, n: number) {
    this.proc = spawn(
      process.execPath,
      [
        BIN,
        'daemon',
        '--config',
        rig.inventoryPath,
        '--db',
        rig.dbPath,
        '--poll-ms',
        '20',
        '--queue-poll',
        '50',
        '--log-file',
        join(rig.dir, `daemon-${n}.log`),
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    this.proc.stderr?.on('data', (d: Buffer) => {
      this.stderr += d.toString();
    });
    this.exited = new Promise((resolve) => {
      this.proc.once('exit', (code, signal) => resolve({ code, signal }));
    });
  }

  /** The owner name its captures carry in the store starts with this. */
  get ownerPrefix(): string {
    return `${hostname()}/${this.proc.pid}/`;
  }

  get output(): string {
    return this.stderr;
  }

  async kill(): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
    await this.exited;
  }

  async terminate(): Promise<{ code: number | null; signal: NodeJS.Signals | null }> {
    this.proc.kill('SIGTERM');
    return this.exited;
  }
}

const allDaemons: Daemon[] = [];

export function startDaemon(rig: Rig): Daemon {
  rig.daemon = new Daemon(rig, allDaemons.length + 1);
  allDaemons.push(rig.daemon);
  return rig.daemon;
}

/** A capture's position: its capture state and, inside pre_capture, its OS sub-machine's state. */
export function positionOf(event: CaptureDetail['events'][number]): string | undefined {
  if (event.type === 'state.entered') return JSON.stringify(event.stateValue);
  if (event.type === 'os.state.entered')
    return `${JSON.stringify(event.stateValue)} os ${JSON.stringify(event.details?.os)}`;
  return undefined;
}

/** The positions a capture went through, in order (a restart may repeat one). */
export function positions(detail: CaptureDetail | undefined): string[] {
  return (detail?.events ?? []).map(positionOf).filter((p): p is string => p !== undefined);
}

export const isFinished = (status: string | undefined) =>
  status === 'completed' || status === 'failed' || status === 'cancelled';

/** Polls `check` every few milliseconds until it is true, or fails after `timeoutMs`. */
export async function until(check: () => Promise<boolean> | boolean, timeoutMs: number, what: string) {
  const end = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(5);
  }
}

/** Makes a computer capturable again: back in service and switched on. */
export async function ready(rig: World, computer: string): Promise<void> {
  const state = (await rig.store.getComputer(computer))?.state;
  if (state !== 'available') await rig.store.setComputerState(computer, 'available');
  if (rig.lab.computer(computer).power !== 'on') {
    if (rig.lab.computer(computer).power === 'off') rig.lab.powerOn(computer);
    await rig.lab.waitForPower(computer, 'on', 20_000);
  }
}

export async function queue(rig: Rig, computer: string, label: string): Promise<string> {
  await ready(rig, computer);
  const record = await rig.producer.enqueue({
    computer,
    image: { osName: rig.lab.computer(computer).os, prettyName: label, owner: 'crash' },
  });
  return record.id;
}

/** What the outcome checks read: the lab, a store of either kind and the inventory the runners use. */
export type World = Pick<Rig, 'lab' | 'inventory'> & { store: CaptureStore };

/** Files in the lab's repositories. */
export async function repositoryFiles(rig: Pick<Rig, 'lab'>): Promise<string[]> {
  const out: string[] = [];
  for (const [host, path] of REPOSITORIES) {
    const real = await rig.lab.realPath(host, path);
    for (const f of readdirSync(real)) out.push(`${path}/${f}`);
  }
  return out;
}

/** Something half-made: a transport temp file, a partial or staging copy. */
export const HALF_MADE = /\.vcl-tmp-|\.partial$|\.vcl-capture-/;

/**
 * What every capture must satisfy at the end, however many kills it went through: completed with
 * exactly one usable revision whose file in the repository has the source disk's sha256, or failed /
 * cancelled with the computer in maintenance (or given back) and no usable revision.
 */
export async function checkOutcome(
  rig: World,
  captureId: string,
  sourceSha256: string,
): Promise<CaptureDetail> {
  const detail = await rig.store.getCapture(captureId);
  if (!detail) throw new Error(`capture ${captureId} vanished`);
  const revisions = (await rig.store.getImage(detail.image.imageId))?.revisions ?? [];
  const mine = revisions.filter((r) => r.revision === detail.image.revision);
  expect(mine, `${captureId}: one revision`).toHaveLength(1);
  const revision = mine[0];
  const computer = await rig.store.getComputer(detail.computer);
  if (detail.status === 'completed') {
    expect(revision?.deleted, `${captureId}: completed revision is usable`).toBe(false);
    const path = revision?.path ?? '';
    const full = path.startsWith('/') ? path : `${revision?.repository}/${path}`;
    // VMware's is a 2gbsparse set whose recorded sha256 is its manifest's; the others one file.
    await expectStoredImage(
      rig.lab,
      detail.computer,
      {
        path: full,
        sizeBytes: revision?.sizeBytes ?? -1,
        sha256: revision?.sha256 ?? '',
        format: revision?.format ?? '',
      },
      sourceSha256,
      rig.inventory,
    );
    expect(computer?.state).toBe('reload');
  } else {
    expect(revision?.deleted, `${captureId}: ${detail.status} revision is not usable`).toBe(true);
    expect(['maintenance', 'available'], `${captureId}: computer after ${detail.status}`).toContain(
      computer?.state,
    );
    const files = await repositoryFiles(rig);
    expect(files.filter((f) => f.includes(detail.image.name))).toEqual([]);
  }
  expect(computer?.heldBy ?? null).toBeNull();
  return detail;
}

/** The `capture.claimed` events that took a capture over from a runner that was killed. */
export function takeovers(detail: CaptureDetail): { owner: string; previousOwner: string }[] {
  return detail.events
    .filter((e) => e.type === 'capture.claimed' && e.details?.previousOwner)
    .map((e) => e.details as { owner: string; previousOwner: string });
}

/** mulberry32: a small seeded generator, so that a failing random run can be replayed from its seed. */
export function random(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
