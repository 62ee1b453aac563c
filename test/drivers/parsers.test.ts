/** Driver parsers against output samples in the formats the tools' documentation shows. */
import { describe, expect, it } from 'vitest';
import { effectNames, operatingSystems } from '../../machines/index.js';
import { osSteps } from '../../src/drivers/os.js';
import { LINUX_PLANS, parseBootId, WINDOWS_PLANS } from '../../src/drivers/os-commands.js';
import {
  firstDisk,
  parseDomblklist,
  parseDomstate,
  parseImageInfo,
} from '../../src/provisioners/libvirt/commands.js';
import {
  datastorePath,
  needsRepair,
  parseGetallvms,
  parsePowerState,
  parseVmxDisks,
} from '../../src/provisioners/vmware/commands.js';
import { parseNodestat, parseRpowerStat, parseSizes } from '../../src/provisioners/xcat/commands.js';

describe('libvirt', () => {
  it('reads virsh domstate --reason', () => {
    expect(parseDomstate('shut off (shutdown)\n\n')).toEqual({ state: 'shut off', reason: 'shutdown' });
    expect(parseDomstate('running (booted)\n')).toEqual({ state: 'running', reason: 'booted' });
    expect(parseDomstate('in shutdown\n')).toEqual({ state: 'in shutdown', reason: undefined });
    expect(() => parseDomstate('error: failed to get domain')).toThrow(/cannot read virsh domstate/);
  });

  it('finds the first disk in virsh domblklist --details, skipping empty CD-ROMs', () => {
    const out = [
      ' Type   Device   Target   Source',
      '------------------------------------------------------------',
      ' file   cdrom    sda      -',
      ' file   disk     vda      /var/lib/libvirt/images/lab vm.qcow2',
      ' file   disk     vdb      /var/lib/libvirt/images/data.qcow2',
      '',
    ].join('\n');
    expect(firstDisk(parseDomblklist(out))).toEqual({
      type: 'file',
      device: 'disk',
      target: 'vda',
      source: '/var/lib/libvirt/images/lab vm.qcow2',
    });
    expect(() => firstDisk(parseDomblklist(' Type   Device   Target   Source\n---\n'))).toThrow(/no disk/);
  });

  it('reads qemu-img info --output=json', () => {
    const out = `{
    "virtual-size": 10737418240,
    "filename": "vm1.qcow2",
    "cluster-size": 65536,
    "format": "qcow2",
    "actual-size": 1969012736,
    "dirty-flag": false
}`;
    expect(parseImageInfo(out)).toEqual({
      format: 'qcow2',
      virtualSize: 10737418240,
      actualSize: 1969012736,
    });
    expect(() => parseImageInfo('qemu-img: Could not open')).toThrow(/did not print JSON/);
  });
});

describe('VMware ESXi', () => {
  it('reads vim-cmd vmsvc/getallvms, names with spaces included', () => {
    const out = [
      'Vmid        Name                         File                          Guest OS       Version   Annotation',
      '1      vm1                   [datastore1] vm1/vm1.vmx                ubuntu64Guest   vmx-19',
      '12     win 10 lab            [datastore 2] win10/win10.vmx          windows9_64Guest vmx-19    made by x',
    ].join('\n');
    expect(parseGetallvms(out)).toEqual([
      { vmid: 1, name: 'vm1', file: '[datastore1] vm1/vm1.vmx' },
      { vmid: 12, name: 'win 10 lab', file: '[datastore 2] win10/win10.vmx' },
    ]);
    expect(datastorePath('[datastore 2] win10/win10.vmx')).toBe('/vmfs/volumes/datastore 2/win10/win10.vmx');
  });

  it('reads power.getstate', () => {
    expect(parsePowerState('Retrieved runtime info\nPowered off\n')).toBe('off');
    expect(parsePowerState('Retrieved runtime info\nPowered on\n')).toBe('on');
    expect(() => parsePowerState('vim.fault.NotFound')).toThrow(/cannot read power state/);
  });

  it('lists present hard disks of a .vmx, not CD-ROMs', () => {
    const vmx = [
      '.encoding = "UTF-8"',
      'scsi0:0.present = "TRUE"',
      'scsi0:0.fileName = "vm1.vmdk"',
      'scsi0:0.mode = "persistent"',
      'scsi0:1.present = "FALSE"',
      'scsi0:1.fileName = "old.vmdk"',
      'sata0:0.deviceType = "cdrom-image"',
      'sata0:0.fileName = "/vmfs/volumes/iso/ubuntu.iso"',
    ].join('\n');
    expect(parseVmxDisks(vmx)).toEqual([{ key: 'scsi0:0', fileName: 'vm1.vmdk', mode: 'persistent' }]);
    expect(needsRepair('Failed to clone disk: The virtual disk needs repair (0xc00000000f)')).toBe(true);
  });
});

describe('xCAT', () => {
  it('reads rpower stat, nodestat and file sizes', () => {
    expect(parseRpowerStat('n1: on\n', 'n1')).toBe('on');
    expect(parseRpowerStat('n10: off\nn1: off\n', 'n1')).toBe('off');
    expect(parseNodestat('n1: sshd\n', 'n1')).toBe('sshd');
    expect(parseSizes('1048576 img1.img\n0 img1.img.capturedone\n')).toEqual(
      new Map([
        ['img1.img', 1048576],
        ['img1.img.capturedone', 0],
      ]),
    );
  });
});

describe('OS plans', () => {
  it('every OS effect has an implementation', () => {
    const env = {
      computer: { os: 'linux', reservationUsers: [] },
    } as unknown as Parameters<typeof osSteps>[0];
    for (const os of ['linux', 'windows'] as const) {
      const steps = osSteps({ ...env, computer: { ...env.computer, os } } as typeof env);
      const missing = effectNames(operatingSystems[os].machine).filter((n) => !(n in steps));
      expect(missing, os).toEqual([]);
    }
  });

  it('reads boot ids of both systems', () => {
    expect(parseBootId('3c1f0e6a-8f0e-4a8c-9a4e-2b9a4c1d7e10\n')).toBe(
      '3c1f0e6a-8f0e-4a8c-9a4e-2b9a4c1d7e10',
    );
    expect(parseBootId('\r\n\r\nLastBootUpTime=20261124103000.500000+000\r\n\r\n')).toBe(
      '20261124103000.500000+000',
    );
  });

  it('gives reservation users to commands as single words', () => {
    const ctx = {
      computer: 'pc1',
      image: { name: 'x-A1-v0', imageId: 1, revision: 0 },
      reservationUsers: ['bob'],
    };
    expect(LINUX_PLANS.delete_reservation_users?.(ctx).commands[0]?.argv).toEqual([
      'userdel',
      '-r',
      '-f',
      'bob',
    ]);
    expect(WINDOWS_PLANS.delete_reservation_users?.(ctx).commands[0]?.argv).toEqual([
      'net',
      'user',
      'bob',
      '/delete',
    ]);
    expect(LINUX_PLANS.logoff_users?.({ ...ctx, reservationUsers: [] }).probe?.notApplicable).toMatch(
      /no user/,
    );
  });
});
