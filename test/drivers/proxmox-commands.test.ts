/**
 * Proxmox VE's qm, pvesm and qemu-img command lines and the parsers of what qm(1) and pvesm(1) print
 * (src/provisioners/proxmox/commands.ts), alone: no lab, no SSH. The argv each builder sends, the values
 * read from Proxmox VE 8 output, and the refusals (code, message, details) of unreadable output, bad VM
 * ids and volume ids, and disks a capture cannot copy or choose by itself.
 */
import { describe, expect, it } from 'vitest';
import { VclError } from '../../src/errors.js';
import * as pve from '../../src/provisioners/proxmox/commands.js';

/** `qm config 100` of a UEFI VM with a CD drive, a TPM, an unused volume and two disks. */
const CONFIG = `agent: 1
bios: ovmf
boot: order=virtio1;ide2;net0
cores: 4
efidisk0: local-lvm:vm-100-disk-0,efitype=4m,pre-enrolled-keys=1,size=4M
ide2: local:iso/debian-12.5.0-amd64-netinst.iso,media=cdrom,size=629M
memory: 8192
meta: creation-qemu=8.1.5,ctime=1712345678
name: web1
net0: virtio=BC:24:11:5E:2A:01,bridge=vmbr0,firewall=1
ostype: l26
scsihw: virtio-scsi-single
tpmstate0: local-lvm:vm-100-disk-3,size=4M,version=v2.0
unused0: local-lvm:vm-100-disk-4
virtio0: file=local:100/vm-100-disk-2.qcow2,discard=on,size=100G
virtio1: local-lvm:vm-100-disk-1,iothread=1,size=32G
vmgenid: 2b0b0e6c-5d62-4a35-a2d1-0f6f1a9d2c11
`;

/** The typed error `fn` throws (failing the test when it throws nothing or something else). */
function refused(fn: () => unknown): VclError {
  const thrown = (() => {
    try {
      fn();
    } catch (err) {
      return err;
    }
    return undefined;
  })();
  expect(thrown).toBeInstanceOf(VclError);
  return thrown as VclError;
}

describe('qm and pvesm output', () => {
  it('reads the disks of qm config: no CD, EFI, TPM or unused volume; file= or bare volume ids', () => {
    const config = pve.parseQmConfig(CONFIG);
    expect(pve.vmDisks(config)).toEqual([
      { key: 'virtio0', volid: 'local:100/vm-100-disk-2.qcow2', size: '100G' },
      { key: 'virtio1', volid: 'local-lvm:vm-100-disk-1', size: '32G' },
    ]);
    expect(pve.bootOrder(config)).toEqual(['virtio1', 'ide2', 'net0']);
    expect(pve.bootOrder(new Map([['bootdisk', 'scsi0']]))).toEqual(['scsi0']);
    // A snapshot section's keys are not the current configuration.
    expect(
      pve.vmDisks(pve.parseQmConfig('scsi0: local-lvm:vm-1-disk-0,size=1G\n[before]\nscsi1: x:y\n')),
    ).toHaveLength(1);
    expect(refused(() => pve.parseQmConfig('\n'))).toMatchObject({ code: 'PARSE_FAILED' });
  });

  it('captures the only disk or the one named; several and none named is refused, naming the boot disk', () => {
    const config = pve.parseQmConfig(CONFIG);
    expect(pve.chooseDisk(config, 'virtio0').volid).toBe('local:100/vm-100-disk-2.qcow2');
    expect(refused(() => pve.chooseDisk(config, undefined))).toMatchObject({
      code: 'AMBIGUOUS',
      message:
        'the VM has 2 disks (virtio0, virtio1; it boots from virtio1): name the one to capture in provisioner.disk',
    });
    expect(refused(() => pve.chooseDisk(config, 'scsi0'))).toMatchObject({
      code: 'NO_DISK',
      message: 'the VM has no disk scsi0 (its disks: virtio0, virtio1)',
    });
    const one = pve.parseQmConfig('ide2: none,media=cdrom\nscsi0: local-lvm:vm-101-disk-0,size=8G\n');
    expect(pve.chooseDisk(one, undefined)).toEqual({
      key: 'scsi0',
      volid: 'local-lvm:vm-101-disk-0',
      size: '8G',
    });
    expect(
      refused(() => pve.chooseDisk(pve.parseQmConfig('ide2: none,media=cdrom\n'), undefined)),
    ).toMatchObject({
      code: 'NO_DISK',
    });
  });

  it('tells a block device from an image file by pvesm path; a volume without a local path is refused', () => {
    expect(pve.parsePvesmPath('/dev/pve/vm-100-disk-1\n', 'local-lvm:vm-100-disk-1')).toEqual({
      path: '/dev/pve/vm-100-disk-1',
      block: true,
      format: 'raw',
    });
    expect(pve.parsePvesmPath('/dev/zvol/rpool/data/vm-100-disk-1\n', 'local-zfs:vm-100-disk-1').block).toBe(
      true,
    );
    expect(
      pve.parsePvesmPath('/var/lib/vz/images/100/vm-100-disk-2.qcow2\n', 'local:100/vm-100-disk-2.qcow2'),
    ).toEqual({ path: '/var/lib/vz/images/100/vm-100-disk-2.qcow2', block: false, format: 'qcow2' });
    expect(
      refused(() => pve.parsePvesmPath('rbd:rbd/vm-100-disk-0:mon_host=10.0.0.1\n', 'ceph:vm-100-disk-0')),
    ).toMatchObject({
      code: 'UNSUPPORTED_DISK',
    });
    expect(
      refused(() => pve.parsePvesmPath('/mnt/pve/nfs/images/100/x.img\n', 'nfs:100/x.img')),
    ).toMatchObject({
      code: 'UNSUPPORTED_DISK',
    });
  });

  it('reads qm status and a shutdown that timed out', () => {
    expect(pve.parseQmStatus('status: stopped\n')).toBe('stopped');
    expect(pve.parseQmStatus('status: running\n')).toBe('running');
    expect(refused(() => pve.parseQmStatus('VM 100 not running\n'))).toMatchObject({ code: 'PARSE_FAILED' });
    expect(pve.shutdownTimedOut('VM quit/powerdown failed - got timeout\n')).toBe(true);
    expect(pve.shutdownTimedOut("VM 100 qmp command 'system_powerdown' failed\n")).toBe(false);
  });

  it('builds command lines only from a VM id and a volume id, never from an option or a path', () => {
    expect(pve.qm.shutdown(100, 30.7)).toEqual(['qm', 'shutdown', '100', '--timeout', '30']);
    expect(pve.pvesm.path('local:100/vm-100-disk-2.qcow2')).toEqual([
      'pvesm',
      'path',
      'local:100/vm-100-disk-2.qcow2',
    ]);
    for (const vmid of [99, 100.5, Number.NaN, 1e10])
      expect(refused(() => pve.qm.status(vmid)).code).toBe('COMMAND_FAILED');
    for (const volid of ['--help', 'local:../../etc/shadow', '/dev/sda', 'local:a b'])
      expect(refused(() => pve.pvesm.path(volid)).code).toBe('COMMAND_FAILED');
  });
});

describe('command lines', () => {
  it('sends qm config, status and stop with the VM id alone, at both ends of the range Proxmox VE takes', () => {
    expect(pve.qm.config(100)).toEqual(['qm', 'config', '100']);
    expect(pve.qm.status(20001)).toEqual(['qm', 'status', '20001']);
    expect(pve.qm.stop(10003)).toEqual(['qm', 'stop', '10003']);
    expect(pve.qm.config(999_999_999)).toEqual(['qm', 'config', '999999999']);
    expect([pve.VMID_MIN, pve.VMID_MAX]).toEqual([100, 999_999_999]);
  });

  it('refuses a VM id out of range or not whole, in every qm command, naming it', () => {
    const builders = [
      (id: number) => pve.qm.config(id),
      (id: number) => pve.qm.status(id),
      (id: number) => pve.qm.stop(id),
      (id: number) => pve.qm.shutdown(id, 60),
    ];
    for (const build of builders) {
      expect(refused(() => build(99))).toMatchObject({
        code: 'COMMAND_FAILED',
        message: 'not a Proxmox VM id: 99',
      });
      expect(refused(() => build(1_000_000_000))).toMatchObject({
        code: 'COMMAND_FAILED',
        message: 'not a Proxmox VM id: 1000000000',
      });
      expect(refused(() => build(100.5))).toMatchObject({
        code: 'COMMAND_FAILED',
        message: 'not a Proxmox VM id: 100.5',
      });
      expect(refused(() => build(-100)).message).toBe('not a Proxmox VM id: -100');
    }
  });

  it('gives qm shutdown a whole number of seconds, at least one', () => {
    const timeout = (seconds: number) => pve.qm.shutdown(100, seconds);
    expect(timeout(1)).toEqual(['qm', 'shutdown', '100', '--timeout', '1']);
    expect(timeout(2)).toEqual(['qm', 'shutdown', '100', '--timeout', '2']);
    expect(timeout(115.99)).toEqual(['qm', 'shutdown', '100', '--timeout', '115']);
    expect(timeout(1.9)[4]).toBe('1');
    expect(timeout(0.5)[4]).toBe('1');
    expect(timeout(0)[4]).toBe('1');
    expect(timeout(-5)[4]).toBe('1');
  });

  it('sends pvesm path with a volume id of any storage kind qm config names', () => {
    for (const volid of [
      'local-lvm:vm-100-disk-0',
      'local-zfs:vm-100-disk-1',
      'local:100/vm-100-disk-2.qcow2',
      'nfs_store.2:100/base-100-disk-0.raw',
      'x:1',
      'local:100/vm-100-disk..qcow2',
    ])
      expect(pve.pvesm.path(volid)).toEqual(['pvesm', 'path', volid]);
  });

  it('refuses a volume id that is an option, a path, a parent directory or not storage:name, naming it', () => {
    for (const volid of [
      '',
      'local',
      'local:',
      ':vm-100-disk-0',
      '1local:vm-100-disk-0',
      '-local:vm-100-disk-0',
      '--local:vm-100-disk-0',
      'local:-o',
      'local:/etc/shadow',
      'local:.hidden',
      'local:vm-100-disk-0 --help',
      'local:vm-100-disk-0\n--help',
      'local:vm-100;rm',
      'local:..',
      'local:100/../../etc/shadow',
      'local:100/..',
    ])
      expect(
        refused(() => pve.pvesm.path(volid)),
        JSON.stringify(volid),
      ).toMatchObject({
        code: 'COMMAND_FAILED',
        message: `not a storage volume: ${JSON.stringify(volid)}`,
      });
  });

  it('runs qemu-img on the node told the source format: info as JSON without a lock, convert, check', () => {
    expect(pve.qemuImg.info('/dev/pve/vm-100-disk-0', 'raw')).toEqual([
      'qemu-img',
      'info',
      '-f',
      'raw',
      '--output=json',
      '-U',
      '/dev/pve/vm-100-disk-0',
    ]);
    expect(
      pve.qemuImg.convert(
        '/var/lib/vz/images/100/vm-100-disk-2.qcow2',
        'qcow2',
        'vmdk',
        '/srv/vcl/images/web1.vmdk',
      ),
    ).toEqual([
      'qemu-img',
      'convert',
      '-f',
      'qcow2',
      '-O',
      'vmdk',
      '/var/lib/vz/images/100/vm-100-disk-2.qcow2',
      '/srv/vcl/images/web1.vmdk',
    ]);
    expect(pve.qemuImg.check('/srv/vcl/images/web1.qcow2')).toEqual([
      'qemu-img',
      'check',
      '-q',
      '/srv/vcl/images/web1.qcow2',
    ]);
  });

  it('has the preflight look for the node’s programs on its PATH', () => {
    expect(pve.TOOLS).toEqual({ host: ['qm', 'pvesm', 'qemu-img', 'sha256sum', 'stat', 'sync', 'df'] });
  });
});

/** `qm config 101` on Proxmox VE 8 of a BIOS VM with a snapshot: sorted keys, a digest, a description. */
const CONFIG_PVE8 = `boot: order=scsi0;ide2;net0
cores: 2
cpu: x86-64-v2-AES
description: Lab web server%0Ahttp://web1:8080/
digest: 5f2d0b3c9e6a7f41c0e3bd2a9a6b84c1f0d7e2a3
ide2: none,media=cdrom
memory: 2048
name: web1
net0: virtio=BC:24:11:9A:01:02,bridge=vmbr0
numa: 0
ostype: l26
parent: before-upgrade
scsi0: local-lvm:vm-101-disk-0,iothread=1,size=32G
scsihw: virtio-scsi-single
smbios1: uuid=9c1d7a55-2f1e-4a8b-a1c2-7d3e5f6a7b8c
sockets: 1
vmgenid: 0b6b3f8e-4c1a-4e8d-9f0a-1b2c3d4e5f60

[before-upgrade]
boot: order=scsi0;ide2;net0
memory: 1024
scsi0: local-lvm:vm-101-disk-0,iothread=1,size=16G
scsi1: local-lvm:vm-101-disk-1,size=8G
snaptime: 1712345678
`;

describe('qm config', () => {
  it('reads every current setting as qm prints it, values whole (colons and all), not the snapshot’s', () => {
    const config = pve.parseQmConfig(CONFIG_PVE8);
    expect(config.get('name')).toBe('web1');
    expect(config.get('memory')).toBe('2048');
    expect(config.get('description')).toBe('Lab web server%0Ahttp://web1:8080/');
    expect(config.get('scsi0')).toBe('local-lvm:vm-101-disk-0,iothread=1,size=32G');
    expect(config.get('boot')).toBe('order=scsi0;ide2;net0');
    expect(config.get('snaptime')).toBeUndefined();
    expect(config.has('scsi1')).toBe(false);
    expect([...config.keys()]).toEqual([
      'boot',
      'cores',
      'cpu',
      'description',
      'digest',
      'ide2',
      'memory',
      'name',
      'net0',
      'numa',
      'ostype',
      'parent',
      'scsi0',
      'scsihw',
      'smbios1',
      'sockets',
      'vmgenid',
    ]);
    expect(pve.vmDisks(config)).toEqual([{ key: 'scsi0', volid: 'local-lvm:vm-101-disk-0', size: '32G' }]);
  });

  it('skips what is not a `key: value` line, and keeps a value without its trailing blanks', () => {
    const config = pve.parseQmConfig(
      'WARN: old config format\nWarning: unable to close filehandle\n  scsi5: local-lvm:vm-1-disk-5\n# a comment\n\nname: web1  \nscsi0:local-lvm:vm-1-disk-0\n',
    );
    expect([...config.entries()]).toEqual([
      ['name', 'web1'],
      ['scsi0', 'local-lvm:vm-1-disk-0'],
    ]);
  });

  it('refuses output with no setting (an unknown VM prints nothing on stdout), quoting its start', () => {
    expect(refused(() => pve.parseQmConfig(''))).toMatchObject({
      code: 'PARSE_FAILED',
      message: 'qm config printed no settings: ""',
    });
    expect(refused(() => pve.parseQmConfig('\n'))).toMatchObject({
      message: 'qm config printed no settings: "\\n"',
    });
    const long = `ipcc_send_rec[1] failed: ${'x'.repeat(300)}`;
    expect(refused(() => pve.parseQmConfig(long))).toMatchObject({
      code: 'PARSE_FAILED',
      message: `qm config printed no settings: ${JSON.stringify(long.slice(0, 200))}`,
    });
    // A snapshot section alone is no current configuration.
    expect(refused(() => pve.parseQmConfig('[snap1]\nmemory: 512\n')).code).toBe('PARSE_FAILED');
  });
});

describe('qm status', () => {
  it('reads the status line, also among the lines of qm status --verbose', () => {
    expect(pve.parseQmStatus('status: running\n')).toBe('running');
    expect(pve.parseQmStatus('status: stopped')).toBe('stopped');
    // Lines ending in CR LF (a terminal's) or blanks.
    expect(pve.parseQmStatus('status: running\r\n')).toBe('running');
    expect(pve.parseQmStatus('status: stopped  \n')).toBe('stopped');
    // A paused VM: qmpstatus says paused, the status line running.
    expect(
      pve.parseQmStatus(
        'cpus: 2\nname: web1\npid: 4242\nqmpstatus: paused\nrunning-machine: pc-i440fx-8.1+pve0\nstatus: running\nuptime: 73\n',
      ),
    ).toBe('running');
  });

  it('refuses output without a one-word status line, quoting its start', () => {
    expect(refused(() => pve.parseQmStatus('VM 100 not running\n'))).toMatchObject({
      code: 'PARSE_FAILED',
      message: 'cannot read qm status output: "VM 100 not running\\n"',
    });
    expect(refused(() => pve.parseQmStatus('status: \n')).code).toBe('PARSE_FAILED');
    expect(refused(() => pve.parseQmStatus('status: running late\n')).code).toBe('PARSE_FAILED');
    const long = `Use of uninitialized value ${'y'.repeat(300)}`;
    expect(refused(() => pve.parseQmStatus(long)).message).toBe(
      `cannot read qm status output: ${JSON.stringify(long.slice(0, 200))}`,
    );
  });

  it('tells an unknown VM by qm’s words, not another missing thing', () => {
    expect(
      pve.UNKNOWN_VM.test("Configuration file 'nodes/pve1/qemu-server/4242.conf' does not exist\n"),
    ).toBe(true);
    expect(pve.UNKNOWN_VM.test("storage 'ceph' does not exist\n")).toBe(false);
    expect(pve.UNKNOWN_VM.test('ipcc_send_rec[1] failed: Connection refused\n')).toBe(false);
    expect(pve.shutdownTimedOut('VM quit/powerdown failed\n')).toBe(false);
  });
});

describe('the VM’s disks', () => {
  const disks = (lines: string) => pve.vmDisks(pve.parseQmConfig(lines));

  it('counts IDE, SATA, SCSI and VirtIO disks of any number, sizes as qm prints them (K, M, G, T)', () => {
    expect(
      disks(
        [
          'efidisk0: local-lvm:vm-100-disk-9,efitype=4m,size=528K',
          'hostpci0: 0000:01:00.0',
          'ide0: local-lvm:vm-100-disk-0,size=512K',
          'net0: virtio=BC:24:11:5E:2A:01,bridge=vmbr0',
          'sata5: local-lvm:vm-100-disk-1,media=disk,size=1536M',
          'scsi30: local-zfs:vm-100-disk-2,size=2T',
          'scsihw: virtio-scsi-pci',
          'unused1: local-lvm:vm-100-disk-8',
          'virtio15: local:100/vm-100-disk-3.raw,size=40G',
          'virtiofs0: share1,cache=auto',
        ].join('\n'),
      ),
    ).toEqual([
      { key: 'ide0', volid: 'local-lvm:vm-100-disk-0', size: '512K' },
      { key: 'sata5', volid: 'local-lvm:vm-100-disk-1', size: '1536M' },
      { key: 'scsi30', volid: 'local-zfs:vm-100-disk-2', size: '2T' },
      { key: 'virtio15', volid: 'local:100/vm-100-disk-3.raw', size: '40G' },
    ]);
  });

  it('leaves out CD drives and empty drives, and gives no size where qm prints none', () => {
    expect(
      disks(
        [
          'ide0: none',
          'ide2: local:iso/debian-12.5.0-amd64-netinst.iso,media=cdrom,size=629M',
          'sata0: cdrom,media=cdrom',
          'scsi0: file=local-lvm:vm-100-disk-0,iothread=1',
          'scsi1:',
          'scsi2: file=none',
        ].join('\n'),
      ),
    ).toEqual([{ key: 'scsi0', volid: 'local-lvm:vm-100-disk-0', size: undefined }]);
  });
});

describe('the boot order', () => {
  const order = (entries: [string, string][]) => pve.bootOrder(new Map(entries));

  it('reads `boot: order=`, alone or after a legacy letter list', () => {
    expect(order([['boot', 'order=scsi0']])).toEqual(['scsi0']);
    expect(order([['boot', 'order=net0;ide2;virtio1']])).toEqual(['net0', 'ide2', 'virtio1']);
    expect(
      order([
        ['boot', 'legacy=cdn,order=scsi1;net0'],
        ['bootdisk', 'scsi0'],
      ]),
    ).toEqual(['scsi1', 'net0']);
    // The order ends at the next option; `order=` inside another option's value is not it.
    expect(order([['boot', 'order=scsi0;net0,legacy=cdn']])).toEqual(['scsi0', 'net0']);
    expect(
      order([
        ['boot', 'legacy=cdn,xorder=scsi1'],
        ['bootdisk', 'scsi0'],
      ]),
    ).toEqual(['scsi0']);
    // An empty order boots nothing, whatever an older bootdisk said.
    expect(
      order([
        ['boot', 'order='],
        ['bootdisk', 'scsi0'],
      ]),
    ).toEqual([]);
  });

  it('falls back to the legacy bootdisk (boot: cdn), and to nothing', () => {
    expect(
      order([
        ['boot', 'cdn'],
        ['bootdisk', 'virtio0'],
      ]),
    ).toEqual(['virtio0']);
    expect(order([['bootdisk', 'scsi0']])).toEqual(['scsi0']);
    expect(order([['boot', 'cdn']])).toEqual([]);
    expect(order([])).toEqual([]);
  });
});

describe('the disk to capture', () => {
  const config = (lines: string[]) => pve.parseQmConfig(lines.join('\n'));
  const twoDisks = [
    'ide2: none,media=cdrom',
    'scsi0: local-lvm:vm-100-disk-0,size=32G',
    'scsi1: local-lvm:vm-100-disk-1,size=100G',
  ];

  it('captures the only disk whatever the boot order, and the one named among several', () => {
    expect(
      pve.chooseDisk(config(['boot: order=net0', 'virtio0: local:100/vm-100-disk-0.qcow2']), undefined),
    ).toEqual({ key: 'virtio0', volid: 'local:100/vm-100-disk-0.qcow2', size: undefined });
    expect(pve.chooseDisk(config(twoDisks), 'scsi1')).toEqual({
      key: 'scsi1',
      volid: 'local-lvm:vm-100-disk-1',
      size: '100G',
    });
  });

  it('names the boot disk among several: the first disk of the boot order, or the legacy bootdisk', () => {
    expect(
      refused(() => pve.chooseDisk(config(['boot: order=net0;ide2;scsi1;scsi0', ...twoDisks]), undefined)),
    ).toMatchObject({
      code: 'AMBIGUOUS',
      message:
        'the VM has 2 disks (scsi0, scsi1; it boots from scsi1): name the one to capture in provisioner.disk',
      details: { disks: ['scsi0', 'scsi1'], boot: 'scsi1' },
    });
    expect(
      refused(() => pve.chooseDisk(config(['boot: cdn', 'bootdisk: scsi0', ...twoDisks]), undefined)).message,
    ).toBe(
      'the VM has 2 disks (scsi0, scsi1; it boots from scsi0): name the one to capture in provisioner.disk',
    );
  });

  it('refuses several disks without a boot disk among them, naming them all', () => {
    const err = refused(() =>
      pve.chooseDisk(
        config(['boot: order=net0', ...twoDisks, 'virtio0: local-lvm:vm-100-disk-2']),
        undefined,
      ),
    );
    expect(err.code).toBe('AMBIGUOUS');
    expect(err.message).toBe(
      'the VM has 3 disks (scsi0, scsi1, virtio0): name the one to capture in provisioner.disk',
    );
    expect(err.details).toEqual({ disks: ['scsi0', 'scsi1', 'virtio0'] });
  });

  it('refuses a named disk the VM lacks, listing its disks if it has any, and a VM without disks', () => {
    expect(refused(() => pve.chooseDisk(config(twoDisks), 'ide2'))).toMatchObject({
      code: 'NO_DISK',
      message: 'the VM has no disk ide2 (its disks: scsi0, scsi1)',
      details: { disk: 'ide2' },
    });
    const diskless = config(['ide2: none,media=cdrom', 'memory: 512']);
    expect(refused(() => pve.chooseDisk(diskless, 'scsi0'))).toMatchObject({
      code: 'NO_DISK',
      message: 'the VM has no disk scsi0',
      details: { disk: 'scsi0' },
    });
    expect(refused(() => pve.chooseDisk(diskless, undefined))).toMatchObject({
      code: 'NO_DISK',
      message: 'the VM has no disk to capture',
      details: undefined,
    });
  });
});

describe('pvesm path', () => {
  it('reads a block device as raw, and an image file by its extension', () => {
    expect(pve.parsePvesmPath('/dev/zvol/rpool/data/vm-100-disk-1\n', 'local-zfs:vm-100-disk-1')).toEqual({
      path: '/dev/zvol/rpool/data/vm-100-disk-1',
      block: true,
      format: 'raw',
    });
    expect(
      pve.parsePvesmPath('/var/lib/vz/images/100/vm-100-disk-3.raw\n', 'local:100/vm-100-disk-3.raw'),
    ).toEqual({ path: '/var/lib/vz/images/100/vm-100-disk-3.raw', block: false, format: 'raw' });
    expect(
      pve.parsePvesmPath('/mnt/pve/nfs/images/100/vm-100-disk-0.vmdk\n', 'nfs:100/vm-100-disk-0.vmdk'),
    ).toEqual({ path: '/mnt/pve/nfs/images/100/vm-100-disk-0.vmdk', block: false, format: 'vmdk' });
  });

  it('refuses a volume without a local path, quoting what pvesm printed', () => {
    const noPath = (printed: string, volid: string) =>
      `volume ${volid} has no local path (pvesm path printed ${JSON.stringify(printed)}): a capture copies disks on directory, LVM or ZFS storages`;
    const iscsi = 'iscsi://10.0.0.5/iqn.2003-01.org.linux-iscsi.san:lun0/0';
    expect(refused(() => pve.parsePvesmPath(`${iscsi}\n`, 'san:0.0.0.scsi-36001405'))).toMatchObject({
      code: 'UNSUPPORTED_DISK',
      message: noPath(iscsi, 'san:0.0.0.scsi-36001405'),
      details: { volid: 'san:0.0.0.scsi-36001405' },
    });
    expect(refused(() => pve.parsePvesmPath('', 'local-lvm:vm-1-disk-0')).message).toBe(
      noPath('', 'local-lvm:vm-1-disk-0'),
    );
    expect(
      refused(() =>
        pve.parsePvesmPath('/dev/pve/vm-1-disk-0\n/dev/pve/vm-1-disk-1\n', 'local-lvm:vm-1-disk-0'),
      ).code,
    ).toBe('UNSUPPORTED_DISK');
    const up = '/var/lib/vz/images/../../../etc/x.raw';
    expect(refused(() => pve.parsePvesmPath(up, 'local:1/x.raw')).message).toBe(noPath(up, 'local:1/x.raw'));
    const long = `rbd:${'p'.repeat(300)}`;
    expect(refused(() => pve.parsePvesmPath(long, 'ceph:vm-1-disk-0')).message).toBe(
      noPath(long.slice(0, 200), 'ceph:vm-1-disk-0'),
    );
  });

  it('refuses a file that is not a qcow2, raw or vmdk image', () => {
    expect(
      refused(() => pve.parsePvesmPath('/mnt/pve/nfs/images/100/x.img\n', 'nfs:100/x.img')),
    ).toMatchObject({
      code: 'UNSUPPORTED_DISK',
      message: 'volume nfs:100/x.img (/mnt/pve/nfs/images/100/x.img) is not a qcow2, raw or vmdk image',
      details: { volid: 'nfs:100/x.img' },
    });
    for (const path of [
      '/var/lib/vz/images/100/vm-100-disk-0.qcow2.part',
      '/var/lib/vz/images/100/vm-100-disk-0qcow2',
      '/var/lib/vz/images/100/vm-100-disk-0.subvol',
    ])
      expect(refused(() => pve.parsePvesmPath(path, 'local:100/x')).code).toBe('UNSUPPORTED_DISK');
  });
});
