/**
 * Disks are real sparse files and copies move real bytes: hypervisor tools on one host, streamed copies
 * between hosts through the transport, and the xCAT capture environment's upload all end with the source's
 * sha256.
 */
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { open, readdir, stat, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { endStateCommand } from '../../src/drivers/os-commands.js';
import { LAB_CAPTURE_IMAGE, LAB_REPOSITORIES } from '../../src/lab/index.js';
import { libvirt, parseImageInfo } from '../../src/provisioners/libvirt/commands.js';
import {
  needsRepair,
  noSpace,
  parseVmdkExtents,
  sparseSetFiles,
  vmware,
} from '../../src/provisioners/vmware/commands.js';
import { descriptorText } from '../../src/provisioners/vmware/lab-commands.js';
import { parseNodestat, parseSizes, xcat } from '../../src/provisioners/xcat/commands.js';
import { qemuInfo } from '../helpers/stored-image.js';
import { eventually, type LabHarness, openLab } from './helpers.js';

let h: LabHarness;
beforeAll(async () => {
  // The capture environment's upload takes 8 chunks of 100 ms: long enough to be seen growing.
  h = await openLab({ powerDelayMs: 30, captureChunkBytes: 512 * 1024, captureChunkMs: 100 });
});
afterAll(async () => {
  await h?.close();
});

const LV_DISK = '/var/lib/libvirt/images/lv-linux-1.qcow2';
const VM_DIR = '/vmfs/volumes/datastore1/vm-linux-1';

describe('disks', () => {
  it('are sparse files of the configured size with random blocks', async () => {
    const real = await h.lab.realPath('libvirt-host', LV_DISK);
    const st = await stat(real);
    expect(st.size).toBe(4 * 1024 * 1024);
    expect(st.blocks * 512).toBeLessThan(st.size / 4);
    expect(await h.lab.diskSha256('lv-linux-1')).not.toBe(await h.lab.diskSha256('lv-windows-1'));
  });
});

describe('libvirt: qemu-img', () => {
  it('refuses the disk of a running domain as QEMU does', async () => {
    const r = await h.exec('libvirt-host', libvirt.convert(LV_DISK, 'qcow2', '/var/lib/vcl/images/x.qcow2'));
    expect(r.code).toBe(1);
    expect(r.stderr).toBe(
      `qemu-img: Could not open '${LV_DISK}': Failed to get shared "write" lock\nIs another process using the image [${LV_DISK}]?\n`,
    );
    expect((await h.exec('libvirt-host', libvirt.check(LV_DISK))).stderr).toContain('write" lock');
  });

  it('converts a stopped domain’s disk byte for byte, records the format, checks it', async () => {
    await h.exec('libvirt-host', libvirt.destroy('lv-linux-1'));
    const target = '/var/lib/vcl/images/img-v0.qcow2.partial';
    expect(await h.exec('libvirt-host', libvirt.convert(LV_DISK, 'qcow2', target))).toMatchObject({
      code: 0,
      stdout: '',
      stderr: '',
    });
    expect(await h.lab.sha256('libvirt-host', target)).toBe(await h.lab.diskSha256('lv-linux-1'));
    const info = parseImageInfo((await h.exec('libvirt-host', libvirt.imageInfo(target))).stdout);
    expect(info).toMatchObject({ format: 'qcow2', virtualSize: 4 * 1024 * 1024 });
    expect((await h.exec('libvirt-host', libvirt.check(target))).code).toBe(0);
    // The format follows the file when it is renamed into place.
    await h.exec('libvirt-host', ['mv', '-f', '--', target, '/var/lib/vcl/images/img-v0.qcow2']);
    const moved = parseImageInfo(
      (await h.exec('libvirt-host', libvirt.imageInfo('/var/lib/vcl/images/img-v0.qcow2'))).stdout,
    );
    expect(moved.format).toBe('qcow2');
    const raw = '/var/lib/vcl/images/img-v0.raw';
    await h.exec('libvirt-host', libvirt.convert(LV_DISK, 'raw', raw));
    expect(parseImageInfo((await h.exec('libvirt-host', libvirt.imageInfo(raw))).stdout).format).toBe('raw');
    expect((await h.exec('libvirt-host', libvirt.check(raw))).code).toBe(63);
    const nowhere = await h.exec('libvirt-host', libvirt.convert(LV_DISK, 'qcow2', '/nope/x.qcow2'));
    expect(nowhere.stderr).toContain("Could not create '/nope/x.qcow2': No such file or directory");
  });
});

describe('streamed copies between hosts', () => {
  it('copy a libvirt disk to the repository with the source’s sha256', async () => {
    const to = `${LAB_REPOSITORIES.images.path}/lv-linux-1.qcow2`;
    const copied = await h.pool.copy(
      { host: h.host('libvirt-host'), path: LV_DISK },
      { host: h.host('repo-host'), path: to },
    );
    const source = await h.lab.diskSha256('lv-linux-1');
    expect(copied).toMatchObject({ bytes: 4 * 1024 * 1024, sha256: source });
    expect(await h.lab.sha256('repo-host', to)).toBe(source);
    const sum = await h.exec('repo-host', ['sha256sum', '--', to]);
    expect(sum.stdout).toBe(`${source}  ${to}\n`);
    const mode = (await stat(await h.lab.realPath('repo-host', to))).mode & 0o777;
    expect(mode).toBe(0o644);
    // Nothing is left under a temporary name.
    const left = await h.exec('repo-host', ['find', LAB_REPOSITORIES.images.path, '-name', '*vcl-tmp*']);
    expect(left.stdout).toBe('');
  });

  it('copy to this machine and back', async () => {
    const local = `${h.lab.dir}/local-copy.img`;
    const out = await h.pool.copy({ host: h.host('libvirt-host'), path: LV_DISK }, { path: local });
    const back = await h.pool.copy(
      { path: local },
      { host: h.host('repo-host'), path: '/srv/vcl/images/back.img' },
    );
    expect(back.sha256).toBe(out.sha256);
    expect(await h.lab.sha256('repo-host', '/srv/vcl/images/back.img')).toBe(out.sha256);
  });

  it('zstd on the wire between Debian hosts: the frame is small, the stored file sparse', async () => {
    const to = `${LAB_REPOSITORIES.images.path}/zstd.raw`;
    const r = await h.pool.copy(
      { host: h.host('libvirt-host'), path: LV_DISK },
      { host: h.host('repo-host'), path: to },
    );
    const source = await h.lab.diskSha256('lv-linux-1');
    expect(r).toMatchObject({ bytes: 4 * 1024 * 1024, sha256: source, compressed: true });
    // The disk holds 124 KiB of random data; the rest crossed the network as a few bytes of zstd.
    expect(r.wireBytes).toBeLessThan(200 * 1024);
    const sum = await h.exec('repo-host', ['sha256sum', '--', to]);
    expect(sum.stdout).toBe(`${source}  ${to}\n`);
    const st = await stat(await h.lab.realPath('repo-host', to));
    expect(st.size).toBe(4 * 1024 * 1024);
    expect(st.blocks * 512).toBeLessThanOrEqual(64 * 1024 + 15 * 32 * 1024);
    expect((await h.exec('repo-host', ['stat', '-c', '%s %b %B', '--', to])).stdout).toBe(
      `${st.size} ${st.blocks} 512\n`,
    );
  });

  it('from ESXi (busybox, no zstd) the copy goes raw and still stores the source’s bytes', async () => {
    expect((await h.exec('esxi-host', ['sh', '-c', 'command -v "$1"', 'sh', 'zstd'])).code).not.toBe(0);
    expect((await h.exec('repo-host', ['sh', '-c', 'command -v "$1"', 'sh', 'zstd'])).stdout).toBe(
      '/usr/bin/zstd\n',
    );
    const flat = `${VM_DIR}/vm-linux-1-flat.vmdk`;
    const to = `${LAB_REPOSITORIES.images.path}/from-esxi.vmdk`;
    const r = await h.pool.copy(
      { host: h.host('esxi-host'), path: flat },
      { host: h.host('repo-host'), path: to },
    );
    expect(r).toMatchObject({ bytes: 4 * 1024 * 1024, wireBytes: 4 * 1024 * 1024, compressed: false });
    expect(r.sha256).toBe(await h.lab.diskSha256('vm-linux-1'));
    expect(await h.lab.sha256('repo-host', to)).toBe(r.sha256);
  });
});

describe('zstd fallback at the destination, and the probe once per host', () => {
  it('a repository without zstd gets the data decompressed by the runner, with cat', async () => {
    const lab = await openLab({ missingTools: { 'repo-host': ['zstd'] } });
    try {
      const probes = () =>
        lab.lab.commandLog
          .filter((e) => e.argv?.join(' ') === 'sh -c command -v "$1" sh zstd')
          .map((e) => e.host);
      const to = `${LAB_REPOSITORIES.images.path}/no-zstd.raw`;
      for (const name of ['a', 'b']) {
        const r = await lab.pool.copy(
          { host: lab.host('libvirt-host'), path: LV_DISK },
          { host: lab.host('repo-host'), path: `${to}.${name}` },
        );
        // Compressed from the libvirt host (small on the wire), written by cat at the repository.
        expect(r).toMatchObject({ bytes: 4 * 1024 * 1024, compressed: true });
        expect(r.wireBytes).toBeLessThan(200 * 1024);
        expect(await lab.lab.sha256('repo-host', `${to}.${name}`)).toBe(r.sha256);
      }
      // One probe per host for both copies: the pool keeps the answer.
      expect(probes().sort()).toEqual(['libvirt-host', 'repo-host']);
      const writers = lab.lab.commandLog.filter((e) => e.host === 'repo-host' && e.argv?.[0] === 'sh');
      expect(writers.some((e) => e.argv?.[2] === 'umask 077 && exec cat > "$1"')).toBe(true);
      expect(writers.some((e) => e.argv?.[2]?.includes('zstd -q -d'))).toBe(false);
    } finally {
      await lab.close();
    }
  });
});

describe('ESXi: vmkfstools', () => {
  it('refuses a running VM’s disk, thin-clones a stopped one, repairs', async () => {
    const clone = '/vmfs/volumes/datastore1/img-v0/img-v0.vmdk';
    const locked = await h.exec('esxi-host', vmware.cloneThin(`${VM_DIR}/vm-linux-1.vmdk`, clone));
    expect(locked.stderr).toContain('Failed to lock the file');
    await h.exec('esxi-host', vmware.powerOff(1));
    expect((await h.exec('esxi-host', vmware.mkdir('/vmfs/volumes/datastore1/img-v0'))).code).toBe(0);
    const r = await h.exec('esxi-host', vmware.cloneThin(`${VM_DIR}/vm-linux-1.vmdk`, clone));
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout).toContain('Clone: 100% done.');
    const flat = '/vmfs/volumes/datastore1/img-v0/img-v0-flat.vmdk';
    expect(await h.lab.sha256('esxi-host', flat)).toBe(await h.lab.diskSha256('vm-linux-1'));
    const descriptor = (await h.lab.readFile('esxi-host', clone)).toString();
    expect(descriptor).toContain('RW 8192 VMFS "img-v0-flat.vmdk"');
    expect(descriptor).toContain('ddb.thinProvisioned = "1"');
    const twice = await h.exec('esxi-host', vmware.cloneThin(`${VM_DIR}/vm-linux-1.vmdk`, clone));
    expect(twice.stderr).toBe('Failed to clone disk: The file already exists (39).\n');
    expect(needsRepair(twice.stderr)).toBe(false);
    expect((await h.exec('esxi-host', vmware.repair(`${VM_DIR}/vm-linux-1.vmdk`))).stdout).toBe(
      'Disk is error free\n',
    );
    expect((await h.exec('esxi-host', vmware.removeTree('/vmfs/volumes/datastore1/img-v0'))).code).toBe(0);
    expect((await h.exec('esxi-host', vmware.exists(clone))).code).toBe(1);
  });
});

describe('ESXi: vmkfstools -d 2gbsparse', () => {
  it('writes a real twoGbMaxExtentSparse set, split at 2 GB, identical to the source and compact', async () => {
    // A disk past one extent: 2.5 GiB virtual, data at its start and in its second extent only.
    const dir = '/vmfs/volumes/datastore1/big';
    expect((await h.exec('esxi-host', vmware.mkdir(`${dir}/out`))).code).toBe(0);
    const size = 2.5 * 1024 ** 3;
    const flat = await h.lab.realPath('esxi-host', `${dir}/big-flat.vmdk`);
    const fh = await open(flat, 'w');
    await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, 0);
    await fh.write(randomBytes(64 * 1024), 0, 64 * 1024, 2.25 * 1024 ** 3);
    await fh.truncate(size);
    await fh.close();
    await writeFile(await h.lab.realPath('esxi-host', `${dir}/big.vmdk`), descriptorText('big', size, true));
    const r = await h.exec('esxi-host', vmware.clone2gbSparse(`${dir}/big.vmdk`, `${dir}/out/img.vmdk`));
    expect(r).toMatchObject({ code: 0, stderr: '' });
    expect(r.stdout).toBe(
      `Destination disk format: sparse with 2GB maximum extent size\nCloning disk '${dir}/big.vmdk'...\nClone: 100% done.\n`,
    );
    expect((await readdir(await h.lab.realPath('esxi-host', `${dir}/out`))).sort()).toEqual([
      'img-s001.vmdk',
      'img-s002.vmdk',
      'img.vmdk',
    ]);
    const descriptor = (await h.lab.readFile('esxi-host', `${dir}/out/img.vmdk`)).toString();
    expect(parseVmdkExtents(descriptor).map((e) => e.file)).toEqual(['img-s001.vmdk', 'img-s002.vmdk']);
    // The extents the driver expects for this size cover the ones written.
    expect(sparseSetFiles('img', size)).toEqual(['img.vmdk', 'img-s001.vmdk', 'img-s002.vmdk']);
    const out = await h.lab.realPath('esxi-host', `${dir}/out/img.vmdk`);
    const info = qemuInfo(out);
    expect(info['format-specific']?.data?.['create-type']).toBe('twoGbMaxExtentSparse');
    expect(info['virtual-size']).toBe(size);
    expect(spawnSync('qemu-img', ['check', out]).status).toBe(0);
    expect(
      spawnSync('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', flat, out], { encoding: 'utf8' }).stdout,
    ).toBe('Images are identical.\n');
    let stored = 0;
    for (const f of ['img.vmdk', 'img-s001.vmdk', 'img-s002.vmdk'])
      stored += (await stat(await h.lab.realPath('esxi-host', `${dir}/out/${f}`))).size;
    // 128 KiB of data in 2.5 GiB: the set holds the data and its grain tables, not the holes.
    expect(stored).toBeLessThan(4 * 1024 ** 2);
    expect((await h.exec('esxi-host', vmware.removeTree(dir))).code).toBe(0);
  });

  it("the repository host's qemu-img reads a stored set in its own paths, and runs only info and check", async () => {
    const repo = LAB_REPOSITORIES.images.path;
    const real = await h.lab.realPath('repo-host', `${repo}/q.vmdk`);
    // An empty set, as `qemu-img create` makes one (what the set holds does not matter here).
    expect(
      spawnSync('qemu-img', [
        'create',
        '-q',
        '-f',
        'vmdk',
        '-o',
        'subformat=twoGbMaxExtentSparse',
        real,
        '1M',
      ]).status,
    ).toBe(0);
    const info = await h.exec('repo-host', vmware.qemuInfo(`${repo}/q.vmdk`));
    expect(info.code).toBe(0);
    expect(info.stdout).not.toContain(real);
    const parsed = JSON.parse(info.stdout);
    expect(parsed).toMatchObject({ filename: `${repo}/q.vmdk`, format: 'vmdk' });
    expect(parsed['format-specific'].data.extents[0].filename).toBe(`${repo}/q-s001.vmdk`);
    expect(await h.exec('repo-host', vmware.qemuCheck(`${repo}/q.vmdk`))).toMatchObject({
      code: 0,
      stderr: '',
    });
    const missing = await h.exec('repo-host', vmware.qemuCheck(`${repo}/none.vmdk`));
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`Could not open '${repo}/none.vmdk'`);
    expect(
      (await h.exec('repo-host', ['qemu-img', 'convert', '-O', 'raw', `${repo}/q.vmdk`, '/tmp/x'])).code,
    ).toBe(1);
    await h.exec('repo-host', ['rm', '-f', '--', `${repo}/q.vmdk`, `${repo}/q-s001.vmdk`]);
  });

  it('fails on a full datastore as vmkfstools does, leaving no file of the set', async () => {
    const clone = '/vmfs/volumes/datastore1/full/full.vmdk';
    expect((await h.exec('esxi-host', vmware.mkdir('/vmfs/volumes/datastore1/full'))).code).toBe(0);
    await h.exec('esxi-host', vmware.powerOff(1));
    const fault = h.lab.faults.add({ kind: 'diskFull', host: 'esxi-host' });
    try {
      const r = await h.exec('esxi-host', vmware.clone2gbSparse(`${VM_DIR}/vm-linux-1.vmdk`, clone));
      expect(r.code).toBe(1);
      expect(r.stderr).toBe('Failed to clone disk: No space left on device (1835017).\n');
      expect(noSpace(r.stderr)).toBe(true);
    } finally {
      h.lab.faults.clear(fault);
    }
    expect(await readdir(await h.lab.realPath('esxi-host', '/vmfs/volumes/datastore1/full'))).toEqual([]);
    expect((await h.exec('esxi-host', vmware.removeTree('/vmfs/volumes/datastore1/full'))).code).toBe(0);
  });
});

describe('xCAT capture environment', () => {
  it('after nodeset osimage= and a reboot, uploads the disk in chunks, marks it done and halts', async () => {
    const node = 'xc-linux-1';
    const repo = LAB_REPOSITORIES['xcat-images'].path;
    const image = `${repo}/xc-img-v0.img`;
    await h.exec('xcat-mn', xcat.nodech(node, 'xc-img-v0'));
    expect((await h.exec('xcat-mn', xcat.nodesetImage(node, LAB_CAPTURE_IMAGE))).stdout).toBe(
      `${node}: netboot ${LAB_CAPTURE_IMAGE}\n`,
    );
    const r = await h.exec(node, endStateCommand('linux', 'reboot'), { expectDisconnect: true });
    expect(r.disconnected).toBe(true);
    await h.lab.waitForPower(node, 'on');
    // Watched from the start of the upload, while the checks below run.
    const sizes: number[] = [];
    const watched = eventually(async () => {
      const s = parseSizes((await h.exec('xcat-mn', xcat.sizes(repo, 'xc-img-v0'))).stdout);
      sizes.push(s.get('xc-img-v0.img') ?? 0);
      return s.has('xc-img-v0.img.capturedone');
    }, 30_000);
    expect(h.lab.computer(node).running).toBe('captureEnv');
    expect(parseNodestat((await h.exec('xcat-mn', xcat.nodestat(node))).stdout, node)).toBe('capturing');
    // The OS does not run: its SSH server does not answer.
    const quick = { ...h.host(node), name: 'xc-quick', connectDeadlineMs: 100 };
    await expect(h.pool.exec(quick, ['true'])).rejects.toMatchObject({ code: 'SSH_UNREACHABLE' });
    await watched;
    expect(new Set(sizes).size).toBeGreaterThan(1);
    expect(await h.lab.sha256('xcat-mn', image)).toBe(await h.lab.diskSha256(node));
    await h.lab.waitForPower(node, 'off');
    await h.exec('xcat-mn', xcat.nodesetBoot(node));
    await h.exec('xcat-mn', xcat.powerOn(node));
    await h.lab.waitForPower(node, 'on');
    expect(h.lab.computer(node).running).toBe('os');
    expect(h.lab.internalErrors).toEqual([]);
  });
});
