/** Every fault kind the lab injects, added and cleared while it runs. */
import { randomBytes } from 'node:crypto';
import { appendFile, truncate, writeFile } from 'node:fs/promises';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { endStateCommand } from '../../src/drivers/os-commands.js';
import {
  COPY_READ_SCRIPT,
  COPY_WRITE_SCRIPT,
  LAB_CAPTURE_IMAGE,
  LAB_REPOSITORIES,
  ZSTD_READ_SCRIPT,
  ZSTD_WRITE_SCRIPT,
} from '../../src/lab/index.js';
import { libvirt } from '../../src/provisioners/libvirt/commands.js';
import { needsRepair, noSpace, vmware } from '../../src/provisioners/vmware/commands.js';
import { xcat } from '../../src/provisioners/xcat/commands.js';
import {
  RESUME_READ_SCRIPT,
  RESUME_WRITE_SCRIPT,
  ZSTD_RESUME_READ_SCRIPT,
  ZSTD_RESUME_WRITE_SCRIPT,
} from '../../src/ssh/copy-resume.js';
import { isSshError } from '../../src/ssh/index.js';
import { eventually, type LabHarness, openLab } from './helpers.js';

let h: LabHarness;
beforeAll(async () => {
  h = await openLab({ powerDelayMs: 40, captureChunkMs: 5, captureChunkBytes: 512 * 1024 });
  const real = await h.lab.realPath('libvirt-host', MIXED_DISK);
  await writeFile(real, randomBytes(8 * MiB));
  await truncate(real, 10 * MiB);
  await appendFile(real, randomBytes(2 * MiB));
});
afterEach(() => {
  h.lab.faults.clear();
  expect(h.lab.internalErrors).toEqual([]);
});
afterAll(async () => {
  await h?.close();
});

const LV_DISK = '/var/lib/libvirt/images/lv-linux-1.qcow2';
const REPO = LAB_REPOSITORIES.images.path;

const MiB = 1024 * 1024;
/** A disk of random data, a 2 MiB hole, random data (12 MiB), written once on the libvirt host for the resume tests. */
const MIXED_DISK = '/var/lib/libvirt/images/mixed.img';
const MIXED_BYTES = 12 * MiB;

async function sha256Of(host: string, file: string): Promise<string | undefined> {
  return (await h.exec(host, ['sha256sum', file])).stdout.split(' ')[0];
}

async function tempFilesIn(host: string, dir: string): Promise<string> {
  return (await h.exec(host, ['find', dir, '-name', '*vcl-tmp*'])).stdout;
}

describe('the fault API', () => {
  it('refuses names the lab does not have, and bad counts', () => {
    expect(() => h.lab.faults.add({ kind: 'diskFull', host: 'repo' })).toThrow(/no host repo/);
    expect(() => h.lab.faults.add({ kind: 'neverPowersOff', computer: 'lv-linux-9' })).toThrow(/no computer/);
    expect(() => h.lab.faults.add({ kind: 'hangCommand', match: ['x'], times: 0 })).toThrow(/positive/);
    expect(h.lab.faults.list()).toEqual([]);
  });
});

describe('failCommand', () => {
  it('fails matching commands N times with the given status and output, then lets them run', async () => {
    const fault = h.lab.faults.add({
      kind: 'failCommand',
      host: 'libvirt-host',
      match: ['virsh', 'domstate'],
      exitCode: 1,
      stderr: 'error: failed to connect to the hypervisor\n',
      times: 2,
    });
    for (let i = 0; i < 2; i++) {
      const r = await h.exec('libvirt-host', libvirt.domstate('lv-linux-1'));
      expect(r).toMatchObject({
        code: 1,
        stdout: '',
        stderr: 'error: failed to connect to the hypervisor\n',
      });
    }
    expect(fault.fired).toBe(2);
    expect(fault.remaining).toBe(0);
    expect((await h.exec('libvirt-host', libvirt.domstate('lv-linux-1'))).code).toBe(0);
    // Other hosts and other commands are untouched; the command still reached the log.
    expect(h.lab.commands('libvirt-host').filter((a) => a[1] === 'domstate')).toHaveLength(3);
  });

  it('matches by RegExp on the joined argv, on any host, until cleared', async () => {
    const fault = h.lab.faults.add({
      kind: 'failCommand',
      match: /^shutdown\.exe \/s/,
      exitCode: 1190 & 0xff,
      stderr: 'A system shutdown has already been scheduled.(1190)\r\n',
      times: Number.POSITIVE_INFINITY,
    });
    for (const guest of ['lv-windows-1', 'vm-windows-1']) {
      const r = await h.exec(guest, endStateCommand('windows', 'shutdown'), { expectDisconnect: true });
      expect(r.code).toBe(166);
      expect(r.stderr).toContain('already been scheduled');
    }
    fault.clear();
    expect(h.lab.faults.list()).toEqual([]);
    expect(h.lab.computer('lv-windows-1').power).toBe('on');
  });
});

describe('hangCommand', () => {
  it('never answers: the transport times out, kills it, and the lab stops it', async () => {
    h.lab.faults.add({ kind: 'hangCommand', host: 'esxi-host', match: ['vim-cmd', 'vmsvc/getallvms'] });
    const err = await h.exec('esxi-host', vmware.getallvms(), { timeoutMs: 200 }).catch((e: unknown) => e);
    expect(isSshError(err, 'SSH_TIMEOUT')).toBe(true);
    await eventually(() => h.lab.runningCommands('esxi-host') === 0);
    expect(h.lab.commandLog.filter((e) => e.host === 'esxi-host').map((e) => e.kind)).toContain('kill');
    expect((await h.exec('esxi-host', vmware.getallvms())).code).toBe(0);
  });
});

const COPY_PATHS = [
  { name: 'raw', compress: false, read: COPY_READ_SCRIPT, write: COPY_WRITE_SCRIPT, after: 1024 * 1024 },
  { name: 'zstd', compress: true, read: ZSTD_READ_SCRIPT, write: ZSTD_WRITE_SCRIPT, after: 32 * 1024 },
] as const;

describe('dropConnection', () => {
  it('mid-command: the session ends without an exit status', async () => {
    h.lab.faults.add({ kind: 'dropConnection', host: 'xcat-mn', match: ['rpower'], afterMs: 20 });
    const err = await h.exec('xcat-mn', xcat.powerStat('xc-linux-1')).catch((e: unknown) => e);
    expect(isSshError(err, 'SSH_DISCONNECTED')).toBe(true);
    // The next command reconnects.
    expect((await h.exec('xcat-mn', xcat.powerStat('xc-linux-1'))).stdout).toBe('xc-linux-1: on\n');
  });

  // Both copy paths: the raw stream, and zstd on the wire (the lab's disks compress to ~130 KiB).
  for (const path of COPY_PATHS) {
    /** A copy from the libvirt host to the repository whose `side` drops its connection after N bytes. */
    const dropped = async (side: 'read' | 'write', to: string, resume: boolean) => {
      const fault = h.lab.faults.add({
        kind: 'dropConnection',
        host: side === 'read' ? 'libvirt-host' : 'repo-host',
        match: ['sh', '-c', path[side]],
        afterBytes: path.after,
      });
      const r = await h.pool
        .copy(
          { host: h.host('libvirt-host'), path: LV_DISK },
          { host: h.host('repo-host'), path: to },
          { compress: path.compress, resume, checkpointBytes: 128 * 1024 },
        )
        .catch((e: unknown) => e);
      expect(fault.fired).toBe(1);
      return r;
    };
    it(`mid-copy (${path.name}), not resumed: the source stops after N bytes, the copy fails and leaves nothing`, async () => {
      const to = `${REPO}/dropped-${path.name}.qcow2`;
      expect(isSshError(await dropped('read', to, false))).toBe(true);
      expect(await h.lab.exists('repo-host', to)).toBe(false);
      await eventually(async () => (await tempFilesIn('repo-host', REPO)) === '');
    });

    it(`mid-copy on the writing side (${path.name}), not resumed: fails and leaves nothing`, async () => {
      const to = `${REPO}/w-${path.name}.qcow2`;
      expect(isSshError(await dropped('write', to, false))).toBe(true);
      expect(await h.lab.exists('repo-host', to)).toBe(false);
    });

    for (const side of ['read', 'write'] as const) {
      it(`mid-copy on the ${side} side (${path.name}): the copy resumes from a checkpoint the destination holds`, async () => {
        const to = `${REPO}/resumed-${side}-${path.name}.img`;
        const logFrom = h.lab.commandLog.length;
        const fault = h.lab.faults.add({
          kind: 'dropConnection',
          host: side === 'read' ? 'libvirt-host' : 'repo-host',
          match: ['sh', '-c', path[side]],
          // Past the few MiB the streams between the two ends hold (SSH windows, pipes), so that the
          // destination has written more than a checkpoint when the connection drops.
          afterBytes: 6 * MiB,
        });
        const r = await h.pool.copy(
          { host: h.host('libvirt-host'), path: MIXED_DISK },
          { host: h.host('repo-host'), path: to },
          { compress: path.compress, checkpointBytes: 256 * 1024 },
        );
        expect(fault.fired).toBe(1);
        expect(r.resumes).toBe(1);
        expect(r.bytes).toBe(MIXED_BYTES);
        expect(r.sha256).toBe(await sha256Of('libvirt-host', MIXED_DISK));
        expect(await sha256Of('repo-host', to)).toBe(r.sha256);
        const resumed = h.lab.commandLog
          .slice(logFrom)
          .filter(
            (e) =>
              e.host === 'repo-host' &&
              e.argv?.[2] === (path.compress ? ZSTD_RESUME_WRITE_SCRIPT : RESUME_WRITE_SCRIPT),
          );
        expect(resumed).toHaveLength(1);
        // The writer went on from a checkpoint above zero: that prefix was checked there, not sent again.
        const offset = Number(resumed[0]?.argv?.[5]);
        expect(offset).toBeGreaterThan(0);
        expect(offset % (256 * 1024)).toBe(0);
        // The source read on from there.
        const reader = h.lab.commandLog
          .slice(logFrom)
          .filter(
            (e) =>
              e.host === 'libvirt-host' &&
              e.argv?.[2] === (path.compress ? ZSTD_RESUME_READ_SCRIPT : RESUME_READ_SCRIPT) &&
              e.argv?.[5] === String(offset + 1),
          );
        expect(reader).toHaveLength(1);
        await eventually(async () => (await tempFilesIn('repo-host', REPO)) === '');
      });
    }
  }

  it('a destination that does not hold what was sent gets everything again, and the copy is still right', async () => {
    const to = `${REPO}/rewritten.img`;
    // The destination's disk flips a byte of what it writes: after the drop its prefix's sha256 differs.
    h.lab.faults.add({ kind: 'corrupt', at: 'write', host: 'repo-host', path: to, offset: 1000 });
    const drop = h.lab.faults.add({
      kind: 'dropConnection',
      host: 'repo-host',
      match: ['sh', '-c', COPY_WRITE_SCRIPT],
      // As in the resume tests: past what the streams hold, so that the destination has written a
      // checkpoint when the connection drops (at 1 MiB a loaded writer had written none: it resumed from
      // 0, with nothing to find wrong).
      afterBytes: 6 * MiB,
    });
    const r = await h.pool.copy(
      { host: h.host('libvirt-host'), path: MIXED_DISK },
      { host: h.host('repo-host'), path: to },
      { compress: false, checkpointBytes: 256 * 1024 },
    );
    expect(drop.fired).toBe(1);
    // One resume from the checkpoint, whose prefix is found wrong; one more from the start.
    expect(r.resumes).toBe(2);
    expect(await sha256Of('repo-host', to)).toBe(r.sha256);
    expect(r.sha256).toBe(await sha256Of('libvirt-host', MIXED_DISK));
  });
});

describe('neverPowersOff', () => {
  it('ignore: graceful requests are accepted and nothing happens; hard power off still works', async () => {
    const fault = h.lab.faults.add({ kind: 'neverPowersOff', computer: 'lv-linux-1' });
    const r = await h.exec('lv-linux-1', endStateCommand('linux', 'shutdown'), { expectDisconnect: true });
    expect(r).toMatchObject({ code: 0, disconnected: false });
    expect((await h.exec('libvirt-host', libvirt.shutdown('lv-linux-1'))).code).toBe(0);
    await new Promise((res) => setTimeout(res, 120));
    expect(h.lab.computer('lv-linux-1').power).toBe('on');
    expect((await h.exec('lv-linux-1', ['true'])).code).toBe(0);
    expect(fault.remaining).toBe(Number.POSITIVE_INFINITY);
    await h.exec('libvirt-host', libvirt.destroy('lv-linux-1'));
    expect(h.lab.computer('lv-linux-1').power).toBe('off');
    fault.clear();
    await h.exec('libvirt-host', ['virsh', 'start', 'lv-linux-1']);
    await h.lab.waitForPower('lv-linux-1', 'on');
  });

  it('hang: the computer stops answering but stays on until forced off', async () => {
    h.lab.faults.add({ kind: 'neverPowersOff', computer: 'vm-linux-1', mode: 'hang' });
    const r = await h.exec('vm-linux-1', endStateCommand('linux', 'shutdown'), { expectDisconnect: true });
    expect(r.disconnected).toBe(true);
    await new Promise((res) => setTimeout(res, 120));
    expect(h.lab.computer('vm-linux-1').power).toBe('goingDown');
    expect((await h.exec('esxi-host', vmware.powerState(1))).stdout).toContain('Powered on');
    await h.exec('esxi-host', vmware.powerOff(1));
    expect(h.lab.computer('vm-linux-1').power).toBe('off');
  });
});

describe('corrupt', () => {
  it('write: the bytes written differ from those sent, which only a re-hash shows', async () => {
    h.lab.faults.add({ kind: 'corrupt', at: 'write', host: 'repo-host', path: `${REPO}/cw.qcow2` });
    const copied = await h.pool.copy(
      { host: h.host('libvirt-host'), path: LV_DISK },
      { host: h.host('repo-host'), path: `${REPO}/cw.qcow2` },
    );
    expect(copied.sha256).toBe(await h.lab.sha256('libvirt-host', LV_DISK));
    const sum = await h.exec('repo-host', ['sha256sum', '--', `${REPO}/cw.qcow2`]);
    expect(sum.stdout.slice(0, 64)).not.toBe(copied.sha256);
  });

  it('read: the streamed bytes differ from the source', async () => {
    h.lab.faults.add({ kind: 'corrupt', at: 'read', host: 'libvirt-host', path: LV_DISK, offset: 10 });
    const copied = await h.pool.copy(
      { host: h.host('libvirt-host'), path: LV_DISK },
      { host: h.host('repo-host'), path: `${REPO}/cr.qcow2` },
    );
    expect(copied.sha256).not.toBe(await h.lab.sha256('libvirt-host', LV_DISK));
    expect(copied.sha256).toBe(await h.lab.sha256('repo-host', `${REPO}/cr.qcow2`));
  });

  it('file: the copy rots on disk before it is next read', async () => {
    await h.exec('repo-host', ['tee', `${REPO}/rot.img`], { stdin: 'x'.repeat(1000) });
    const before = (await h.exec('repo-host', ['sha256sum', '--', `${REPO}/rot.img`])).stdout;
    h.lab.faults.add({ kind: 'corrupt', at: 'file', host: 'repo-host', path: /rot\.img$/ });
    const after = (await h.exec('repo-host', ['sha256sum', '--', `${REPO}/rot.img`])).stdout;
    expect(after).not.toBe(before);
    expect((await h.exec('repo-host', ['sha256sum', '--', `${REPO}/rot.img`])).stdout).toBe(after);
  });
});

describe('diskFull', () => {
  it('the repository refuses streamed copies and tee with "No space left on device"', async () => {
    const fault = h.lab.faults.add({ kind: 'diskFull', host: 'repo-host', afterBytes: 32 * 1024 });
    for (const path of COPY_PATHS) {
      const err = await h.pool
        .copy(
          { host: h.host('libvirt-host'), path: LV_DISK },
          { host: h.host('repo-host'), path: `${REPO}/full-${path.name}.qcow2` },
          { compress: path.compress },
        )
        .catch((e: unknown) => e as Error);
      // The writer answers first and closes its channel while data still flows; which error the transport
      // reports (the writer's message or the broken pipe) is its choice.
      expect(isSshError(err, 'COPY_FAILED'), path.name).toBe(true);
      expect(await h.lab.exists('repo-host', `${REPO}/full-${path.name}.qcow2`)).toBe(false);
    }
    const writer = await h.exec('repo-host', ['sh', '-c', COPY_WRITE_SCRIPT, 'sh', `${REPO}/.w.vcl-tmp-1`], {
      stdin: Buffer.alloc(64 * 1024, 1),
    });
    expect(writer).toMatchObject({ code: 1, stderr: 'cat: write error: No space left on device\n' });
    const tee = await h.exec('repo-host', ['tee', `${REPO}/t`], { stdin: 'x' });
    expect(tee.stderr).toBe(`tee: ${REPO}/t: No space left on device\n`);
    expect(fault.fired).toBe(4);
    fault.clear();
    expect((await h.exec('repo-host', ['tee', `${REPO}/t`], { stdin: 'x' })).code).toBe(0);
  });

  it('qemu-img and vmkfstools report it in their own words', async () => {
    h.lab.faults.add({ kind: 'diskFull', host: ['libvirt-host', 'esxi-host'] });
    await h.exec('libvirt-host', libvirt.destroy('lv-windows-1'));
    const q = await h.exec(
      'libvirt-host',
      libvirt.convert('/var/lib/libvirt/images/lv-windows-1.qcow2', 'qcow2', '/var/lib/vcl/images/f.qcow2'),
    );
    expect(q.stderr).toMatch(/^qemu-img: error while writing at byte \d+: No space left on device\n$/);
    await h.exec('esxi-host', vmware.powerOff(2));
    await h.exec('esxi-host', vmware.mkdir('/vmfs/volumes/datastore1/f'));
    const v = await h.exec(
      'esxi-host',
      vmware.cloneThin(
        '/vmfs/volumes/datastore1/vm-windows-1/vm-windows-1.vmdk',
        '/vmfs/volumes/datastore1/f/f.vmdk',
      ),
    );
    expect(noSpace(v.stderr)).toBe(true);
    expect((await h.exec('esxi-host', vmware.exists('/vmfs/volumes/datastore1/f/f-flat.vmdk'))).code).toBe(1);
  });
});

describe('needsRepair', () => {
  it('vmkfstools -i says the disk needs repair until -x repair fixes it', async () => {
    const disk = '/vmfs/volumes/datastore1/vm-windows-1/vm-windows-1.vmdk';
    const clone = '/vmfs/volumes/datastore1/r/r.vmdk';
    await h.exec('esxi-host', vmware.powerOff(2));
    await h.exec('esxi-host', vmware.mkdir('/vmfs/volumes/datastore1/r'));
    const fault = h.lab.faults.add({ kind: 'needsRepair', host: 'esxi-host', disk });
    for (let i = 0; i < 2; i++) {
      const r = await h.exec('esxi-host', vmware.cloneThin(disk, clone));
      expect(r.code).toBe(1);
      expect(needsRepair(r.stderr)).toBe(true);
    }
    expect(fault.fired).toBe(1);
    expect((await h.exec('esxi-host', vmware.repair(disk))).stdout).toBe('Disk was successfully repaired.\n');
    expect((await h.exec('esxi-host', vmware.cloneThin(disk, clone))).code).toBe(0);
  });
});

describe('xCAT capture failures', () => {
  async function capture(node: string, image: string) {
    await h.exec('xcat-mn', xcat.nodech(node, image));
    await h.exec('xcat-mn', xcat.nodesetImage(node, LAB_CAPTURE_IMAGE));
    await h.exec('xcat-mn', xcat.powerOff(node));
    await h.exec('xcat-mn', xcat.powerOn(node));
    const base = `${LAB_REPOSITORIES['xcat-images'].path}/${image}.img`;
    await eventually(
      async () =>
        (await h.lab.exists('xcat-mn', `${base}.capturedone`)) ||
        (await h.lab.exists('xcat-mn', `${base}.capturefailed`)),
    );
    return base;
  }

  it('captureFails: the capture environment writes the .capturefailed marker', async () => {
    h.lab.faults.add({ kind: 'captureFails', computer: 'xc-linux-1', afterBytes: 1024 * 1024 });
    const base = await capture('xc-linux-1', 'cf-v0');
    expect(await h.lab.exists('xcat-mn', `${base}.capturedone`)).toBe(false);
    expect((await h.lab.readFile('xcat-mn', `${base}.capturefailed`)).toString()).toContain('captureFails');
  });

  it('a full repository fails the upload the same way', async () => {
    h.lab.faults.add({ kind: 'diskFull', host: 'xcat-mn', afterBytes: 600 * 1024 });
    const base = await capture('xc-windows-1', 'full-v0');
    expect((await h.lab.readFile('xcat-mn', `${base}.capturefailed`)).toString()).toContain(
      'No space left on device',
    );
    await h.lab.waitForPower('xc-windows-1', 'off');
  });
});
