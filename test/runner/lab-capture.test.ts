/**
 * The runner against the built-in lab over real SSH: a capture of every provisioner x OS completes, the
 * image in the repository is the source disk byte for byte, and the store says so.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { COMPUTER_KINDS, COPY_FINALIZE_SCRIPT, labComputerName, startLab } from '../../src/lab/index.js';
import type { Fault, Lab } from '../../src/lab/types.js';
import { createRunner, type Runner } from '../../src/runner/runner.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';
import { expectStoredImage } from '../helpers/stored-image.js';

let lab: Lab;
let store: SqliteCaptureStore;
let runner: Runner;
let dir: string;

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-runner-'));
  lab = await startLab({ powerDelayMs: 20 });
  store = openSqliteStore(join(dir, 'store.sqlite'));
  runner = createRunner({ inventory: lab.inventory, store, pollMs: 20 });
});

afterAll(async () => {
  await runner?.close();
  await store?.close();
  await lab?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe('captures against the lab', () => {
  it.each(COMPUTER_KINDS.map((k) => labComputerName(k, 1)))(
    '%s completes with the source disk in the repository',
    async (computer) => {
      const source = await lab.diskSha256(computer);
      const handle = await runner.capture({
        computer,
        image: { osName: lab.computer(computer).os, prettyName: `Base ${computer}`, owner: 'test' },
      });
      const result = await handle.result;
      if (result.status !== 'completed') throw new Error(`${result.status}: ${JSON.stringify(result.error)}`);
      await expectStoredImage(lab, computer, result.artifact, source);
      const record = await store.getCapture(handle.id);
      expect(record?.status).toBe('completed');
      expect((await store.getComputer(computer))?.state).toBe('reload');
      // The source is never modified.
      expect(await lab.diskSha256(computer)).toBe(source);
      expect(lab.internalErrors).toEqual([]);
    },
  );
});

/** A computer captured earlier, made ready again: back in service and switched on. */
async function again(computer: string): Promise<void> {
  if ((await store.getComputer(computer))?.state !== 'available')
    await store.setComputerState(computer, 'available');
  if (lab.computer(computer).power !== 'on') {
    lab.powerOn(computer);
    await lab.waitForPower(computer, 'on');
  }
}

describe('VMware repository copy: a 2gbsparse set', () => {
  /**
   * A capture of `computer` with `fault` in place, which must fail in `step` with `code` and a message
   * containing `says`, leaving no file of the set in the repository nor anything of it on the datastore.
   */
  async function failsLeavingNothing(
    computer: string,
    fault: Fault,
    expected: { code: string; step: string; says: (image: string) => string },
  ) {
    await again(computer);
    lab.clearLog();
    lab.faults.add(fault);
    const handle = await runner.capture({
      computer,
      image: { osName: lab.computer(computer).os, prettyName: `Fails ${expected.code}`, owner: 'test' },
    });
    const result = await handle.result;
    lab.faults.clear();
    expect(result.status).toBe('failed');
    if (result.status !== 'failed') throw new Error('completed');
    expect(result.error).toMatchObject({ code: expected.code, step: expected.step });
    expect(result.error.message).toContain(expected.says(handle.image.name));
    const repo = await lab.realPath('repo-host', lab.inventory.repositories.images?.path ?? '');
    expect(readdirSync(repo).filter((f) => f.includes(handle.image.name))).toEqual([]);
    expect(await lab.exists('esxi-host', `/vmfs/volumes/datastore1/${handle.image.name}`)).toBe(false);
    expect(lab.internalErrors).toEqual([]);
    return handle.image.name;
  }

  it("verify_image opens the stored set with the repository host's qemu-img; a check that fails fails it", async () => {
    const image = await failsLeavingNothing(
      'vm-linux-1',
      {
        kind: 'failCommand',
        host: 'repo-host',
        match: ['qemu-img', 'check'],
        exitCode: 2,
        stderr: 'ERROR: the grain table of extent 1 is corrupt\n',
      },
      { code: 'VERIFY_MISMATCH', step: 'verify_image', says: () => 'the grain table of extent 1 is corrupt' },
    );
    const descriptor = `${lab.inventory.repositories.images?.path}/${image}.vmdk`;
    const onRepo = lab.commandLog.filter((e) => e.host === 'repo-host' && e.argv?.[0] === 'qemu-img');
    expect(onRepo.map((e) => e.argv)).toEqual([
      ['qemu-img', 'info', '--output=json', descriptor],
      ['qemu-img', 'check', '-q', descriptor],
    ]);
  });

  it('an ESXi without the multiextent module fails the copy with how to load it, leaving nothing', async () => {
    await failsLeavingNothing(
      'vm-linux-1',
      {
        kind: 'failCommand',
        host: 'esxi-host',
        match: /^vmkfstools -i .* -d 2gbsparse$/,
        exitCode: 1,
        stderr: 'Failed to clone disk: The system cannot find the file specified (25).\n',
      },
      {
        code: 'COMMAND_FAILED',
        step: 'copy_to_repository',
        says: () => 'esxcli system module load -m multiextent',
      },
    );
  });

  it('an extent changed after it was stored fails verify_image, and no file of the set is kept', async () => {
    await failsLeavingNothing(
      'vm-windows-1',
      { kind: 'corrupt', at: 'file', host: 'repo-host', path: /-s001\.vmdk$/ },
      { code: 'VERIFY_MISMATCH', step: 'verify_image', says: (image) => `${image}-s001.vmdk has sha256` },
    );
  });

  it("without qemu-img on the repository host, the manifest's hashes alone verify the set", async () => {
    const bare = await startLab({ powerDelayMs: 20, missingTools: { 'repo-host': ['qemu-img'] } });
    const bareStore = openSqliteStore(join(dir, 'bare.sqlite'));
    const bareRunner = createRunner({ inventory: bare.inventory, store: bareStore, pollMs: 20 });
    try {
      const source = await bare.diskSha256('vm-linux-1');
      const progress: { bytes: number; total?: number }[] = [];
      bareRunner.on((e) => {
        if (e.type === 'progress' && e.step === 'copy_to_repository') progress.push(e);
      });
      const handle = await bareRunner.capture({
        computer: 'vm-linux-1',
        image: { osName: 'linux', prettyName: 'No qemu-img', owner: 'test' },
      });
      const result = await handle.result;
      if (result.status !== 'completed') throw new Error(JSON.stringify(result.error));
      await expectStoredImage(bare, 'vm-linux-1', result.artifact, source);
      // One progress over the whole set: it never goes back, and ends at the set and its manifest.
      const manifest = await bare.readFile('repo-host', `${result.artifact.path}.sha256`);
      const total = result.artifact.sizeBytes + manifest.length;
      expect(progress.length).toBeGreaterThanOrEqual(4);
      expect(progress.map((p) => p.bytes)).toEqual(progress.map((p) => p.bytes).sort((a, b) => a - b));
      expect(progress.at(-1)).toMatchObject({ bytes: total, total });
      expect(bare.commandLog.filter((e) => e.host === 'repo-host' && e.argv?.[0] === 'qemu-img')).toEqual([]);
    } finally {
      await bareRunner.close();
      await bareStore.close();
      await bare.stop();
    }
  });
});

describe('deadlines and hostile values', () => {
  it('a step past its deadline fails with TIMEOUT in that step, and its partial copy is removed', async () => {
    await again('lv-linux-1');
    lab.faults.add({ kind: 'hangCommand', host: 'libvirt-host', match: ['qemu-img', 'convert'] });
    const handle = await runner.capture({
      computer: 'lv-linux-1',
      image: { osName: 'linux', prettyName: 'Deadline', owner: 'test' },
      timeouts: { copyMs: 400 },
    });
    const result = await handle.result;
    lab.faults.clear();
    expect(result.status).toBe('failed');
    if (result.status === 'completed') return;
    expect(result.error).toMatchObject({ code: 'TIMEOUT', step: 'copy_image' });
    // The hung convert was stopped, not left running on the host.
    expect(lab.runningCommands('libvirt-host')).toBe(0);
    const repo = await lab.realPath('repo-host', '/srv/vcl/images');
    expect(readdirSync(repo).filter((f) => f.includes(handle.image.name))).toEqual([]);
    expect((await store.getComputer('lv-linux-1'))?.state).toBe('maintenance');
  });

  it('a repository path full of shell syntax reaches the hosts as one quoted word', async () => {
    const hostile = `/srv/vcl/it's a $(touch pwned) \`id\`; "dir" & more`;
    mkdirSync(await lab.realPath('repo-host', hostile), { recursive: true });
    const inventory = structuredClone(lab.inventory);
    const repository = inventory.repositories.images;
    if (!repository) throw new Error('lab has no images repository');
    repository.path = hostile;
    const hostileStore = openSqliteStore(join(dir, 'hostile.sqlite'));
    const hostileRunner = createRunner({ inventory, store: hostileStore, pollMs: 20 });
    if (lab.computer('vm-linux-1').power !== 'on') {
      lab.powerOn('vm-linux-1');
      await lab.waitForPower('vm-linux-1', 'on');
    }
    try {
      const source = await lab.diskSha256('vm-linux-1');
      lab.clearLog();
      const handle = await hostileRunner.capture({
        computer: 'vm-linux-1',
        image: { osName: 'linux', prettyName: 'x; rm -rf / $(reboot)', owner: 'test' },
      });
      const result = await handle.result;
      if (result.status !== 'completed') throw new Error(JSON.stringify(result.error));
      // The image name was made safe by VCL's naming (non-word characters dropped).
      expect(result.image.name).toMatch(/^linux-xrmrfreboot\d+-v0$/);
      expect(result.artifact.path.startsWith(`${hostile}/`)).toBe(true);
      await expectStoredImage(lab, 'vm-linux-1', result.artifact, source);
      const touching = lab.commandLog.filter((e) => e.line.includes('touch pwned'));
      expect(touching.length).toBeGreaterThan(0);
      for (const e of touching) {
        expect(e.kind).toBe('exec');
        // Each word that carries the path carries all of it, from its start: quoted as one word.
        const words = e.argv?.filter((w) => w.includes('touch pwned')) ?? [];
        expect(words.length, e.line).toBeGreaterThan(0);
        for (const w of words) expect(w.startsWith(hostile), e.line).toBe(true);
      }
      expect(lab.commandLog.filter((e) => e.kind === 'refused')).toEqual([]);
    } finally {
      await hostileRunner.close();
      await hostileStore.close();
    }
  });
});

describe('durability: the image and its name are synced on the host that keeps them, before the revision', () => {
  let local: Lab;
  let localStore: SqliteCaptureStore;
  let localRunner: Runner;

  beforeAll(async () => {
    local = await startLab({ powerDelayMs: 20, repositories: { libvirt: 'kvm-local' } });
    localStore = openSqliteStore(join(dir, 'durable.sqlite'));
    localRunner = createRunner({ inventory: local.inventory, store: localStore, pollMs: 20 });
  });

  afterAll(async () => {
    await localRunner?.close();
    await localStore?.close();
    await local?.stop();
  });

  /** The commands on `host` that synced `tmp`, renamed it to `path` and synced its folder. */
  const durableMoves = (l: Lab, host: string, path: string) =>
    l.commandLog.filter(
      (e) =>
        e.host === host && e.argv?.[0] === 'sh' && e.argv[2] === COPY_FINALIZE_SCRIPT && e.argv[5] === path,
    );

  it.each([
    [
      'qemu-img convert into the repository on the libvirt host',
      'lv-linux-1',
      () => local,
      () => localRunner,
    ],
    ['the copy streamed to the repository host', 'lv-linux-1', () => lab, () => runner],
    ['the VMware clone streamed to the repository host', 'vm-linux-1', () => lab, () => runner],
  ])('%s', async (_what, computer, labOf, runnerOf) => {
    const l = labOf();
    if (l === lab) await again(computer);
    const handle = await runnerOf().capture({
      computer,
      image: { osName: l.computer(computer).os, prettyName: `Durable ${computer}`, owner: 'test' },
    });
    const result = await handle.result;
    if (result.status !== 'completed') throw new Error(`${result.status}: ${JSON.stringify(result.error)}`);
    const repo = l.inventory.repositories[l.inventory.computers[computer]?.repository ?? ''];
    const host = repo?.host ?? '';
    const moves = durableMoves(l, host, result.artifact.path);
    expect(moves).toHaveLength(1);
    if (l.computer(computer).provisioner !== 'vmware') {
      expect(await l.sha256(host, result.artifact.path)).toBe(result.artifact.sha256);
      return;
    }
    // A 2gbsparse set: each file of it moved into place durably, the manifest (whose sha256 is recorded)
    // last, so that a manifest in place means the whole set is.
    const manifest = `${result.artifact.path}.sha256`;
    expect(await l.sha256(host, manifest)).toBe(result.artifact.sha256);
    const [last] = durableMoves(l, host, manifest);
    const names = (await l.readFile(host, manifest))
      .toString('utf8')
      .trim()
      .split('\n')
      .map((line) => line.slice(66));
    expect(names).toContain(result.artifact.path.split('/').at(-1));
    for (const name of names) {
      const [move] = durableMoves(l, host, `${result.artifact.path.replace(/[^/]+$/, '')}${name}`);
      expect(move?.atMs, name).toBeLessThanOrEqual(last?.atMs ?? -1);
      expect(l.commandLog.indexOf(move as never), name).toBeLessThan(l.commandLog.indexOf(last as never));
    }
  });

  it('the image the xCAT capture environment uploaded, and its folder', async () => {
    await again('xc-linux-1');
    const handle = await runner.capture({
      computer: 'xc-linux-1',
      image: { osName: 'linux', prettyName: 'Durable xc-linux-1', owner: 'test' },
    });
    const result = await handle.result;
    if (result.status !== 'completed') throw new Error(`${result.status}: ${JSON.stringify(result.error)}`);
    const repo = lab.inventory.repositories[lab.inventory.computers['xc-linux-1']?.repository ?? ''];
    const path = result.artifact.path;
    const synced = lab.commandLog.filter(
      (e) => e.host === repo?.host && e.argv?.join(' ') === `sync -- ${path} ${path.replace(/\/[^/]*$/, '')}`,
    );
    expect(synced).toHaveLength(1);
  });
});
