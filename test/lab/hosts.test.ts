/**
 * The lab's hosts through the project's SSH transport: pinned host keys, outputs the drivers' parsers read,
 * the OS plans answered on Linux and Windows guests, shell-like answers to unknown commands, hostile
 * values arriving as one word, and a clean stop.
 */
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  bootIdCommand,
  LINUX_PLANS,
  type OsStepContext,
  parseBootId,
  WINDOWS_PLANS,
} from '../../src/drivers/os-commands.js';
import { hasToolCommand } from '../../src/drivers/preflight-commands.js';
import { parseInventory } from '../../src/inventory/schema.js';
import { GUEST_PROFILES, LAB_REPOSITORIES, startLab } from '../../src/lab/index.js';
import {
  firstDisk,
  libvirt,
  parseDomblklist,
  parseDomstate,
  parseImageInfo,
} from '../../src/provisioners/libvirt/commands.js';
import {
  datastorePath,
  parseGetallvms,
  parsePowerState,
  parseVmxDisks,
  vmware,
} from '../../src/provisioners/vmware/commands.js';
import { parseNodestat, parseRpowerStat, parseSizes, xcat } from '../../src/provisioners/xcat/commands.js';
import { isSshError } from '../../src/ssh/index.js';
import { eventually, type LabHarness, openLab, RawClient } from './helpers.js';

let h: LabHarness;
beforeAll(async () => {
  h = await openLab({ guestProfiles: { 'vm-linux-1': GUEST_PROFILES.busybox } });
});
afterAll(async () => {
  await h?.close();
});

describe('the inventory', () => {
  it('validates, and names every host, computer and repository of the default lab', () => {
    const inv = h.lab.inventory;
    expect(parseInventory(inv)).toEqual(inv);
    expect(Object.keys(inv.computers).sort()).toEqual([
      'lv-linux-1',
      'lv-windows-1',
      'px-linux-1',
      'px-windows-1',
      'vm-linux-1',
      'vm-windows-1',
      'xc-linux-1',
      'xc-windows-1',
    ]);
    expect(Object.keys(inv.hosts).sort()).toEqual(
      ['esxi-host', 'libvirt-host', 'pve-node', 'repo-host', 'xcat-mn', ...Object.keys(inv.computers)].sort(),
    );
    expect(inv.repositories).toEqual(LAB_REPOSITORIES);
    expect(inv.computers['xc-windows-1']).toMatchObject({
      os: 'windows',
      host: 'xc-windows-1',
      repository: 'xcat-images',
      provisioner: { type: 'xcat', host: 'xcat-mn', node: 'xc-windows-1' },
    });
    for (const host of Object.values(inv.hosts)) {
      expect(host.address).toBe('127.0.0.1');
      expect(host.hostKey.fingerprints?.[0]).toMatch(/^SHA256:/);
      expect(host.privateKeyPath).toBe(h.lab.privateKeyPath);
    }
    const ports = new Set(Object.values(inv.hosts).map((x) => x.port));
    expect(ports.size).toBe(Object.keys(inv.hosts).length);
  });

  it('asks for N computers of each kind', async () => {
    const lab = await startLab({ computers: { 'libvirt-linux': 3, 'xcat-windows': 2 } });
    try {
      expect(lab.computerNames()).toEqual([
        'lv-linux-1',
        'lv-linux-2',
        'lv-linux-3',
        'xc-windows-1',
        'xc-windows-2',
      ]);
      expect(lab.computer('lv-linux-3')).toMatchObject({
        power: 'on',
        boots: 1,
        disk: { host: 'libvirt-host' },
      });
    } finally {
      await lab.stop();
    }
  });
});

describe('host keys', () => {
  it('are each host’s own and match the pinned fingerprints', async () => {
    const fps = new Set(Object.values(h.lab.hosts).map((x) => x.fingerprint));
    expect(fps.size).toBe(Object.keys(h.lab.hosts).length);
    const r = await h.exec('esxi-host', ['true']);
    expect(r.code).toBe(0);
  });

  it('refuse a connection whose pin names another host’s key', async () => {
    const wrong = {
      ...h.host('repo-host'),
      name: 'repo-wrong-pin',
      hostKey: { fingerprints: [h.lab.hosts['esxi-host']?.fingerprint ?? ''] },
    };
    const err = await h.pool.exec(wrong, ['true']).catch((e: unknown) => e);
    expect(isSshError(err, 'SSH_HOSTKEY_MISMATCH')).toBe(true);
  });

  it('accept only the lab’s client key and user', async () => {
    const other = { ...h.host('repo-host'), name: 'repo-other-user', username: 'nobody' };
    const err = await h.pool.exec(other, ['true']).catch((e: unknown) => e);
    expect(isSshError(err, 'SSH_AUTH_FAILED')).toBe(true);
  });
});

describe('provisioner hosts answer in formats the drivers parse', () => {
  it('libvirt: domstate, domblklist, qemu-img info', async () => {
    const state = parseDomstate((await h.exec('libvirt-host', libvirt.domstate('lv-linux-1'))).stdout);
    expect(state).toEqual({ state: 'running', reason: 'booted' });
    const disk = firstDisk(
      parseDomblklist((await h.exec('libvirt-host', libvirt.domblklist('lv-linux-1'))).stdout),
    );
    expect(disk).toEqual({
      type: 'file',
      device: 'disk',
      target: 'vda',
      source: '/var/lib/libvirt/images/lv-linux-1.qcow2',
    });
    const info = parseImageInfo((await h.exec('libvirt-host', libvirt.imageInfo(disk.source))).stdout);
    expect(info).toMatchObject({ format: 'qcow2', virtualSize: 4 * 1024 * 1024 });
    const missing = await h.exec('libvirt-host', libvirt.domstate('no-such'));
    expect(missing).toMatchObject({ code: 1, stderr: "error: failed to get domain 'no-such'\n" });
  });

  it('ESXi: getallvms, the .vmx and its one disk, power.getstate', async () => {
    const vms = parseGetallvms((await h.exec('esxi-host', vmware.getallvms())).stdout);
    expect(vms.map((v) => v.name)).toEqual(['vm-linux-1', 'vm-windows-1']);
    const vm = vms[0] as (typeof vms)[number];
    expect(vm).toEqual({ vmid: 1, name: 'vm-linux-1', file: '[datastore1] vm-linux-1/vm-linux-1.vmx' });
    const vmx = datastorePath(vm.file);
    const disks = parseVmxDisks((await h.exec('esxi-host', vmware.readFile(vmx))).stdout);
    expect(disks).toEqual([{ key: 'scsi0:0', fileName: 'vm-linux-1.vmdk', mode: 'persistent' }]);
    expect(parsePowerState((await h.exec('esxi-host', vmware.powerState(1))).stdout)).toBe('on');
    const flat = '/vmfs/volumes/datastore1/vm-linux-1/vm-linux-1-flat.vmdk';
    expect((await h.exec('esxi-host', vmware.exists(flat))).code).toBe(0);
    const none = await h.exec('esxi-host', vmware.powerState(99));
    expect(none.code).toBe(1);
    expect(none.stderr).toContain('vim.fault.NotFound');
  });

  it('xCAT: rpower stat, nodestat, nodech, nodeset, sizes', async () => {
    expect(
      parseRpowerStat((await h.exec('xcat-mn', xcat.powerStat('xc-linux-1'))).stdout, 'xc-linux-1'),
    ).toBe('on');
    expect(parseNodestat((await h.exec('xcat-mn', xcat.nodestat('xc-linux-1'))).stdout, 'xc-linux-1')).toBe(
      'sshd',
    );
    expect((await h.exec('xcat-mn', xcat.nodech('xc-linux-1', 'img-v0'))).code).toBe(0);
    const bad = await h.exec('xcat-mn', xcat.nodesetImage('xc-linux-1', 'not-an-image'));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toContain('Cannot find the OS image definition');
    expect((await h.exec('xcat-mn', xcat.nodesetBoot('xc-linux-1'))).stdout).toBe('xc-linux-1: boot\n');
    const unknown = await h.exec('xcat-mn', xcat.powerStat('nope'));
    expect(unknown.stderr).toContain('Invalid nodes and/or groups in noderange: nope');
    const dir = LAB_REPOSITORIES['xcat-images'].path;
    await h.exec('xcat-mn', ['tee', `${dir}/img-v0.img`], { stdin: 'abc' });
    await h.exec('xcat-mn', ['tee', `${dir}/other.img`], { stdin: 'abcdef' });
    // Revision 10 of another image with the same base: its upload is not this one's progress.
    await h.exec('xcat-mn', ['tee', `${dir}/img-v1.img`], { stdin: 'ab' });
    await h.exec('xcat-mn', ['tee', `${dir}/img-v10.img`], { stdin: 'abcd' });
    const sizes = parseSizes((await h.exec('xcat-mn', xcat.sizes(dir, 'img-v0'))).stdout);
    expect([...sizes]).toEqual([['img-v0.img', 3]]);
    const v1 = parseSizes((await h.exec('xcat-mn', xcat.sizes(dir, 'img-v1'))).stdout);
    expect([...v1]).toEqual([['img-v1.img', 2]]);
    expect(
      (await h.exec('xcat-mn', xcat.remove([`${dir}/img-v0.img`, `${dir}/img-v0.img.capturedone`]))).code,
    ).toBe(0);
    expect((await h.exec('xcat-mn', xcat.exists(`${dir}/img-v0.img`))).code).toBe(1);
  });

  it('every host: sha256sum, stat, test, mkdir, mv, rm as the drivers use them', async () => {
    const p = '/srv/vcl/images/sub/a file';
    expect((await h.exec('repo-host', ['mkdir', '-p', '/srv/vcl/images/sub'])).code).toBe(0);
    expect((await h.exec('repo-host', ['tee', p], { stdin: 'hello\n' })).stdout).toBe('hello\n');
    const sum = await h.exec('repo-host', ['sha256sum', '--', p]);
    expect(sum.stdout).toBe(`5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03  ${p}\n`);
    expect((await h.exec('repo-host', ['stat', '-c', '%s', '--', p])).stdout).toBe('6\n');
    expect((await h.exec('repo-host', ['stat', '-L', '-c', '%s:%F', '--', p])).stdout).toBe(
      '6:regular file\n',
    );
    expect((await h.exec('repo-host', ['mv', '-f', '--', p, `${p}.moved`])).code).toBe(0);
    expect((await h.exec('repo-host', ['test', '-e', p])).code).toBe(1);
    expect((await h.exec('repo-host', ['test', '-e', `${p}.moved`])).code).toBe(0);
    expect((await h.exec('repo-host', ['rm', '-rf', '/srv/vcl/images/sub'])).code).toBe(0);
    const gone = await h.exec('repo-host', ['stat', '-c', '%s', '--', p]);
    expect(gone).toMatchObject({ code: 1, stderr: `stat: cannot statx '${p}': No such file or directory\n` });
    expect((await h.exec('repo-host', ['rm', '--', p])).code).toBe(1);
    expect((await h.exec('repo-host', ['rm', '-f', '--', p])).code).toBe(0);
    expect((await h.exec('repo-host', ['rm', '-rf', '/'])).code).toBe(1);
  });
});

const ctx: OsStepContext = {
  computer: 'lv-linux-1',
  image: { name: 'linux-Base1-v0', imageId: 1, revision: 0 },
  reservationUsers: ['vcluser'],
};

describe('guests answer the pre_capture plans', () => {
  for (const [os, guest, plans] of [
    ['linux', 'lv-linux-1', LINUX_PLANS],
    ['windows', 'lv-windows-1', WINDOWS_PLANS],
  ] as const) {
    it(`${os}: every probe applies and every command succeeds (except the reboots)`, async () => {
      for (const [step, plan] of Object.entries(plans)) {
        const p = plan({ ...ctx, computer: guest });
        if (p.reboots) continue;
        if (p.probe) {
          const r = await h.exec(guest, p.probe.argv);
          expect(r.code, `${step} probe`).toBe(0);
          if (p.probe.applies) expect(p.probe.applies(r.stdout), step).toBe(true);
        }
        for (const c of p.commands) {
          const r = await h.exec(guest, c.argv, c.stdin === undefined ? {} : { stdin: c.stdin });
          expect(c.okCodes ?? [0], `${step}: ${c.argv.join(' ')} -> ${r.code} ${r.stderr}`).toContain(r.code);
        }
      }
      expect(h.lab.internalErrors).toEqual([]);
    });
  }

  it('linux: the steps change the guest (metadata written, fstab and firstboot edited, /tmp emptied)', async () => {
    const meta = (await h.lab.readFile('lv-linux-1', '/root/currentimage.txt')).toString();
    expect(meta).toContain('imagename=linux-Base1-v0');
    expect((await h.lab.readFile('lv-linux-1', '/etc/fstab')).toString()).not.toMatch(/nfs/);
    expect((await h.lab.readFile('lv-linux-1', '/etc/sysconfig/firstboot')).toString()).toBe(
      'RUN_FIRSTBOOT=NO\n',
    );
    expect(
      (await h.lab.readFile('lv-linux-1', '/etc/sysconfig/network-scripts/ifcfg-eth0')).toString(),
    ).toContain('BOOTPROTO=dhcp');
    expect(await h.lab.exists('lv-linux-1', '/tmp/reservation-notes.txt')).toBe(false);
    expect(await h.lab.exists('lv-linux-1', '/tmp')).toBe(true);
    // The account is gone: deleting it again reports "does not exist" (6, which the plan accepts).
    expect((await h.exec('lv-linux-1', ['userdel', '-r', '-f', 'vcluser'])).code).toBe(6);
  });

  it('a busybox guest lacks userdel: the probe says the step does not apply', async () => {
    const plan = LINUX_PLANS.delete_reservation_users?.({ ...ctx, computer: 'vm-linux-1' });
    const probe = await h.exec('vm-linux-1', plan?.probe?.argv ?? []);
    expect(probe.code).toBe(1);
    expect((await h.exec('vm-linux-1', ['userdel', 'vcluser'])).code).toBe(127);
    expect((await h.exec('vm-linux-1', hasToolCommand('deluser'))).stdout).toBe('/usr/bin/deluser\n');
    // `command` is a shell builtin: behind the transport's `exec` it is no program, as on a real host.
    expect((await h.exec('vm-linux-1', ['command', '-v', 'deluser'])).code).toBe(127);
  });

  it('boot ids parse on both OSes', async () => {
    const linux = parseBootId((await h.exec('xc-linux-1', bootIdCommand('linux'))).stdout);
    expect(linux).toBe(h.lab.computer('xc-linux-1').bootId);
    const win = parseBootId((await h.exec('xc-windows-1', bootIdCommand('windows'))).stdout);
    expect(win).toBe(h.lab.computer('xc-windows-1').bootId);
    expect(win).toMatch(/^\d{14}\.\d{6}\+000$/);
  });

  it('windows: a computer in a domain leaves it, and is then no longer in one', async () => {
    const plan = WINDOWS_PLANS.leave_domain?.({ ...ctx, computer: 'vm-windows-1' });
    const before = await h.exec('vm-windows-1', plan?.probe?.argv ?? []);
    expect(plan?.probe?.applies?.(before.stdout)).toBe(true);
    const { bootId, boots } = h.lab.computer('vm-windows-1');
    const r = await h.exec('vm-windows-1', plan?.commands[0]?.argv ?? [], { expectDisconnect: true });
    expect(r.code === 0 || r.disconnected).toBe(true);
    await eventually(() => {
      const c = h.lab.computer('vm-windows-1');
      return c.boots > boots && c.power === 'on';
    });
    expect(h.lab.computer('vm-windows-1').bootId).not.toBe(bootId);
    const after = await h.exec('vm-windows-1', plan?.probe?.argv ?? []);
    expect(plan?.probe?.applies?.(after.stdout)).toBe(false);
  });
});

describe('like a shell', () => {
  it('sync: files and folders that exist are synced (exit 0); a missing one fails as coreutils 9 says', async () => {
    expect((await h.exec('repo-host', ['sync', '--', '/srv/vcl/images', '/root'])).code).toBe(0);
    const r = await h.exec('repo-host', ['sync', '--', '/srv/vcl/images', '/srv/vcl/images/nothing']);
    expect(r).toMatchObject({
      code: 1,
      stderr: "sync: error opening '/srv/vcl/images/nothing': No such file or directory\n",
    });
  });

  it('answers unknown commands with 127 and "not found"', async () => {
    const r = await h.exec('lv-linux-1', ['frobnicate', '--now']);
    expect(r).toMatchObject({ code: 127, stdout: '', stderr: 'sh: 1: frobnicate: not found\n' });
    const script = await h.exec('lv-linux-1', ['sh', '-c', 'rm -rf /']);
    expect(script.code).toBe(127);
  });

  it('delivers hostile values as one argv word, and logs them so', async () => {
    const hostile = 'x; rm -rf / $(id) `id` \'q\' "dq" two words\nnewline';
    h.lab.clearLog();
    const r = await h.exec('repo-host', ['test', '-e', hostile]);
    expect(r.code).toBe(1);
    const entry = h.lab.commandLog.find((e) => e.host === 'repo-host');
    expect(entry?.argv).toEqual(['test', '-e', hostile]);
    expect(entry?.kind).toBe('exec');
    expect(h.lab.commands('repo-host')).toEqual([['test', '-e', hostile]]);
  });

  it('refuses an unquoted ; with exit 2, and runs nothing', async () => {
    const raw = await RawClient.connect(h.lab, 'repo-host');
    try {
      h.lab.clearLog();
      const r = await raw.run('rm -rf /srv; echo pwned');
      expect(r.code).toBe(2);
      expect(r.stdout).toBe('');
      expect(r.stderr).toContain("unquoted ';'");
      expect(h.lab.commandLog).toEqual([
        expect.objectContaining({
          host: 'repo-host',
          kind: 'refused',
          argv: null,
          line: 'rm -rf /srv; echo pwned',
        }),
      ]);
      expect(await h.lab.exists('repo-host', '/srv/vcl/images')).toBe(true);
    } finally {
      raw.end();
    }
  });
});

describe('stop', () => {
  it('closes the servers and removes the temp dir, key included', async () => {
    const lab = await startLab({ computers: { 'vmware-linux': 1 } });
    const port = lab.hosts['esxi-host']?.port;
    await lab.realPath('esxi-host', '/vmfs/volumes/datastore1/vm-linux-1/vm-linux-1-flat.vmdk');
    expect(existsSync(lab.privateKeyPath)).toBe(true);
    await lab.stop();
    await lab.stop();
    expect(existsSync(lab.dir)).toBe(false);
    const refused = await new Promise<string | undefined>((resolve) => {
      const socket = connect(port ?? 1, '127.0.0.1');
      socket.on('error', (err: NodeJS.ErrnoException) => resolve(err.code));
      socket.on('connect', () => {
        socket.destroy();
        resolve(undefined);
      });
    });
    expect(refused).toBe('ECONNREFUSED');
  });
});
