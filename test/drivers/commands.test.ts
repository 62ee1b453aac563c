/**
 * The command lines the libvirt, VMware and xCAT drivers send (argv words as the hosts' tools document
 * them) and the parsers' edges: output they must refuse with PARSE_FAILED, and output they must not
 * misread (another node's line, a name with regex characters, a line that only looks similar).
 */
import { describe, expect, it } from 'vitest';
import { manifestLine, parseManifest } from '../../src/drivers/verify.js';
import { isVclError } from '../../src/errors.js';
import {
  firstDisk,
  libvirt,
  lifecycleWaitTimedOut,
  parseDomblklist,
  parseDomstate,
  parseImageInfo,
} from '../../src/provisioners/libvirt/commands.js';
import {
  datastorePath,
  needsRepair,
  noSpace,
  parseGetallvms,
  parsePowerState,
  parseVmdkExtents,
  parseVmxDisks,
  referenceVmx,
  sparseSetFiles,
  vmware,
} from '../../src/provisioners/vmware/commands.js';
import { parseNodestat, parseRpowerStat, parseSizes, xcat } from '../../src/provisioners/xcat/commands.js';

/** The error code a call throws (undefined: it did not throw a VclError). */
function codeOf(f: () => unknown): string | undefined {
  try {
    f();
  } catch (e) {
    return isVclError(e) ? e.code : `not a VclError: ${String(e)}`;
  }
  return undefined;
}

describe('refused output', () => {
  it('is named in the error an operator reads', () => {
    expect(() => parseDomblklist('error: no domain')).toThrow(
      'virsh domblklist printed no header (Type Device Target Source)',
    );
    expect(() => firstDisk([])).toThrow('the domain has no disk with a source to capture');
    expect(() => parseImageInfo('qemu-img: Could not open')).toThrow('qemu-img info did not print JSON');
    expect(() => parseImageInfo('{}')).toThrow('qemu-img info JSON lacks format or virtual-size');
    expect(() => parseGetallvms('Connection failed')).toThrow('vim-cmd vmsvc/getallvms printed no VM table');
    expect(() => datastorePath('vm1/vm1.vmx')).toThrow('not a datastore path: vm1/vm1.vmx');
    expect(() => parsePowerState(`vim.fault.NotFound${' '.repeat(300)}`)).toThrow(
      `cannot read power state: "vim.fault.NotFound${' '.repeat(182)}"`,
    );
    expect(() => parseRpowerStat(`n1: unknown${'.'.repeat(300)}`, 'n1')).toThrow(
      `cannot read rpower stat for n1: "n1: unknown${'.'.repeat(189)}"`,
    );
    expect(() => parseNodestat('n2: boot', 'n1')).toThrow('cannot read nodestat for n1');
  });
});

describe('libvirt commands', () => {
  it('sends these virsh and qemu-img command lines', () => {
    expect(libvirt.domstate('vm 1')).toEqual(['virsh', 'domstate', 'vm 1', '--reason']);
    expect(libvirt.domblklist('vm1')).toEqual(['virsh', 'domblklist', 'vm1', '--details']);
    expect(libvirt.shutdown('vm1')).toEqual(['virsh', 'shutdown', 'vm1']);
    expect(libvirt.destroy('vm1')).toEqual(['virsh', 'destroy', 'vm1']);
    expect(libvirt.imageInfo('/i/a.qcow2')).toEqual([
      'qemu-img',
      'info',
      '--output=json',
      '-U',
      '/i/a.qcow2',
    ]);
    expect(libvirt.convert('/i/a.qcow2', 'qcow2', '/r/b.qcow2')).toEqual([
      'qemu-img',
      'convert',
      '-O',
      'qcow2',
      '/i/a.qcow2',
      '/r/b.qcow2',
    ]);
    expect(libvirt.check('/r/b.qcow2')).toEqual(['qemu-img', 'check', '-q', '/r/b.qcow2']);
  });

  it('waits for a lifecycle event at least one whole second, rounding up', () => {
    const wait = (s: number) => libvirt.awaitLifecycle('vm1', s);
    expect(wait(5)).toEqual(['virsh', 'event', '--domain', 'vm1', '--event', 'lifecycle', '--timeout', '5']);
    expect(wait(2.1).at(-1)).toBe('3');
    expect(wait(0.2).at(-1)).toBe('1');
    expect(wait(0).at(-1)).toBe('1');
  });

  it('tells a timed-out event wait only from its own line', () => {
    expect(lifecycleWaitTimedOut('event loop timed out\n')).toBe(true);
    expect(lifecycleWaitTimedOut("event 'lifecycle' for domain 'vm1': Stopped Shutdown\n")).toBe(false);
    expect(lifecycleWaitTimedOut('the event loop timed out twice\n')).toBe(false);
    expect(lifecycleWaitTimedOut('the event loop timed out\n')).toBe(false);
    expect(lifecycleWaitTimedOut('event loop timed out twice\n')).toBe(false);
  });

  it('refuses output it cannot read with PARSE_FAILED', () => {
    expect(codeOf(() => parseDomstate('shut offf\n'))).toBe('PARSE_FAILED');
    expect(parseDomstate('  paused (user)  \n')).toEqual({ state: 'paused', reason: 'user' });
    expect(codeOf(() => parseDomblklist('error: failed to get domain'))).toBe('PARSE_FAILED');
    expect(codeOf(() => parseImageInfo('not json'))).toBe('PARSE_FAILED');
    expect(codeOf(() => parseImageInfo('{"format": "qcow2"}'))).toBe('PARSE_FAILED');
    expect(codeOf(() => parseImageInfo('{"virtual-size": 1}'))).toBe('PARSE_FAILED');
    expect(parseImageInfo('{"format": "raw", "virtual-size": 512}')).toStrictEqual({
      format: 'raw',
      virtualSize: 512,
    });
  });

  it('reads only a whole domstate line, and shows the unreadable output (at most 200 characters)', () => {
    expect(codeOf(() => parseDomstate('domain is not running\n'))).toBe('PARSE_FAILED');
    expect(codeOf(() => parseDomstate('running (booted) since boot\n'))).toBe('PARSE_FAILED');
    expect(parseDomstate('running   (booted)\n')).toEqual({ state: 'running', reason: 'booted' });
    expect(() => parseDomstate('shut offf\n')).toThrow('cannot read virsh domstate output: "shut offf\\n"');
    const long = `error: ${'x'.repeat(300)}`;
    expect(() => parseDomstate(long)).toThrow(`cannot read virsh domstate output: "${long.slice(0, 200)}"`);
  });

  it('lists every device under the domblklist header, nothing above it or from the rule line', () => {
    const out = [
      'warning: the domain is transient',
      ' Type   Device   Target   Source',
      '-------------------------------------',
      ' file   cdrom    sda      /iso/install disk.iso',
      '',
      ' block  disk     vda      -',
      ' file   disk     vdb      /var/lib/libvirt/images/vm1.qcow2',
    ].join('\n');
    const devices = parseDomblklist(out);
    expect(devices).toEqual([
      { type: 'file', device: 'cdrom', target: 'sda', source: '/iso/install disk.iso' },
      { type: 'block', device: 'disk', target: 'vda', source: '-' },
      { type: 'file', device: 'disk', target: 'vdb', source: '/var/lib/libvirt/images/vm1.qcow2' },
    ]);
    // The CD-ROM has a source but is no disk; vda is a disk without one.
    expect(firstDisk(devices).target).toBe('vdb');
    expect(codeOf(() => firstDisk(devices.slice(0, 2)))).toBe('NO_DISK');
    expect(codeOf(() => parseDomblklist('Type Device Target Source Bus\n'))).toBe('PARSE_FAILED');
  });

  it('leaves the fields of a row cut short empty, so that it is no disk to capture', () => {
    const cut = parseDomblklist(
      ' Type   Device   Target   Source\n------------------------\n file   disk\n block\n',
    );
    expect(cut).toEqual([
      { type: 'file', device: 'disk', target: '', source: '' },
      { type: 'block', device: '', target: '', source: '' },
    ]);
    expect(codeOf(() => firstDisk(cut))).toBe('NO_DISK');
  });
});

describe('VMware commands', () => {
  it('sends these vim-cmd and vmkfstools command lines', () => {
    expect(vmware.getallvms()).toEqual(['vim-cmd', 'vmsvc/getallvms']);
    expect(vmware.powerState(12)).toEqual(['vim-cmd', 'vmsvc/power.getstate', '12']);
    expect(vmware.shutdown(12)).toEqual(['vim-cmd', 'vmsvc/power.shutdown', '12']);
    expect(vmware.powerOff(12)).toEqual(['vim-cmd', 'vmsvc/power.off', '12']);
    expect(vmware.powerOn(12)).toEqual(['vim-cmd', 'vmsvc/power.on', '12']);
    expect(vmware.unregister(12)).toEqual(['vim-cmd', 'vmsvc/unregister', '12']);
    expect(vmware.readFile('/v/a.vmx')).toEqual(['cat', '/v/a.vmx']);
    expect(vmware.exists('/v/a')).toEqual(['test', '-e', '/v/a']);
    expect(vmware.mkdir('/v/a')).toEqual(['mkdir', '-p', '/v/a']);
    expect(vmware.removeTree('/v/a')).toEqual(['rm', '-rf', '/v/a']);
    expect(vmware.cloneThin('/v/a.vmdk', '/r/b.vmdk')).toEqual([
      'vmkfstools',
      '-i',
      '/v/a.vmdk',
      '/r/b.vmdk',
      '-d',
      'thin',
    ]);
    expect(vmware.repair('/v/a.vmdk')).toEqual(['vmkfstools', '-x', 'repair', '/v/a.vmdk']);
    expect(vmware.clone2gbSparse('/v/a.vmdk', '/r/b.vmdk')).toEqual([
      'vmkfstools',
      '-i',
      '/v/a.vmdk',
      '/r/b.vmdk',
      '-d',
      '2gbsparse',
    ]);
    expect(vmware.writeFile('/v/a.vmx')).toEqual(['tee', '--', '/v/a.vmx']);
    expect(vmware.qemuInfo('/r/b.vmdk')).toEqual(['qemu-img', 'info', '--output=json', '/r/b.vmdk']);
    expect(vmware.qemuCheck('/r/b.vmdk')).toEqual(['qemu-img', 'check', '-q', '/r/b.vmdk']);
  });

  it("names the files of a 2gbsparse set so that either tool's extents are covered", () => {
    const MiB = 1024 ** 2;
    expect(sparseSetFiles('img', 4 * MiB)).toEqual(['img.vmdk', 'img-s001.vmdk']);
    expect(sparseSetFiles('img', 2047 * MiB)).toEqual(['img.vmdk', 'img-s001.vmdk']);
    // One byte past VMware's 2047 MiB extent: a second one (qemu-img's 2048 MiB would still hold it).
    expect(sparseSetFiles('img', 2047 * MiB + 1)).toEqual(['img.vmdk', 'img-s001.vmdk', 'img-s002.vmdk']);
    expect(sparseSetFiles('img', 0)).toEqual(['img.vmdk', 'img-s001.vmdk']);
    expect(sparseSetFiles('img', 1024 * 1024 * MiB)).toHaveLength(1 + 513);
    expect(sparseSetFiles('img', 1024 * 1024 * MiB).at(-1)).toBe('img-s513.vmdk');
  });

  it("makes the reference .vmx point at the stored disk, without the captured VM's identity", () => {
    const vmx = [
      '.encoding = "UTF-8"',
      'displayName = "vm-linux-1"',
      'scsi0:0.present = "TRUE"',
      'scsi0:0.fileName = "vm-linux-1.vmdk"',
      'sata0:0.fileName = "/vmfs/volumes/datastore1/iso/tools.iso"',
      'ethernet0.addressType = "generated"',
      'ethernet0.generatedAddress = "00:0c:29:00:00:01"',
      'uuid.bios = "42 1a"',
      'uuid.location = "56 4d"',
      'memSize = "2048"',
      '',
    ].join('\n');
    expect(referenceVmx(vmx, 'img-v0.vmdk', 'img-v0')).toBe(
      [
        '.encoding = "UTF-8"',
        'displayName = "img-v0"',
        'scsi0:0.present = "TRUE"',
        'scsi0:0.fileName = "img-v0.vmdk"',
        'sata0:0.fileName = "/vmfs/volumes/datastore1/iso/tools.iso"',
        'memSize = "2048"',
        '',
      ].join('\n'),
    );
    expect(codeOf(() => referenceVmx('memSize = "1"\n', 'a.vmdk', 'a'))).toBe('UNSUPPORTED_DISK');
  });

  it('reads a sha256sum manifest of files in its own folder, refusing anything else', () => {
    const sha = 'a'.repeat(64);
    const text = `${manifestLine(sha, 'img-s001.vmdk')}${manifestLine('b'.repeat(64), 'img.vmdk')}`;
    expect(text).toBe(`${sha}  img-s001.vmdk\n${'b'.repeat(64)}  img.vmdk\n`);
    expect(parseManifest(text)).toEqual([
      { sha256: sha, file: 'img-s001.vmdk' },
      { sha256: 'b'.repeat(64), file: 'img.vmdk' },
    ]);
    // Binary mode (`*`) as sha256sum -b writes it.
    expect(parseManifest(`${sha} *img.vmdk\n`)).toEqual([{ sha256: sha, file: 'img.vmdk' }]);
    for (const bad of [
      '',
      `${sha}  ../img.vmdk\n`,
      `${sha}  /srv/img.vmdk\n`,
      `${sha}  .hidden\n`,
      `${sha}  a b.vmdk\n`,
      `${sha.slice(1)}  img.vmdk\n`,
      `${sha.toUpperCase()}  img.vmdk\n`,
      `\\${sha}  img\\nx.vmdk\n`,
    ])
      expect(
        codeOf(() => parseManifest(bad)),
        JSON.stringify(bad),
      ).toBe('PARSE_FAILED');
    // The operator reads which line was refused, or that nothing was listed.
    expect(() => parseManifest(`${sha}  ../img.vmdk\n`)).toThrow(
      `not a sha256sum line of a file in its folder: "${sha}  ../img.vmdk"`,
    );
    expect(() => parseManifest('\n\n')).toThrow('the manifest lists no file');
  });

  it('reads an empty VM table as no VMs, and output without the table as PARSE_FAILED', () => {
    expect(parseGetallvms('Vmid   Name   File   Guest OS   Version   Annotation\n')).toEqual([]);
    // An annotation runs on over lines of its own: a VM named in it is not a registered VM.
    const annotated = [
      'Vmid   Name   File                     Guest OS        Version   Annotation',
      '4      web    [datastore1] web/web.vmx  ubuntu64Guest   vmx-19    cloned from',
      'copy of 3 old [datastore1] old/old.vmx ',
    ].join('\n');
    expect(parseGetallvms(annotated)).toEqual([{ vmid: 4, name: 'web', file: '[datastore1] web/web.vmx' }]);
    expect(codeOf(() => parseGetallvms('Connection failed\n'))).toBe('PARSE_FAILED');
    expect(codeOf(() => datastorePath('vm1/vm1.vmx'))).toBe('PARSE_FAILED');
    expect(codeOf(() => datastorePath('see [datastore1] vm1/vm1.vmx'))).toBe('PARSE_FAILED');
    expect(parsePowerState('Retrieved runtime info\nSuspended\n')).toBe('suspended');
    expect(codeOf(() => parsePowerState('vim.fault.NotFound'))).toBe('PARSE_FAILED');
  });

  it('lists hard disks whatever the key case and bus, skipping non-vmdk files, CD-ROMs and absent disks', () => {
    const vmx = [
      'nvme0:0.FileName = "data.VMDK"',
      'ide0:0.fileName = "boot.vmdk"',
      'ide0:0.present = "false"',
      'sata0:1.fileName = "disk.iso"',
      'sata0:2.fileName = "cd.vmdk"',
      'sata0:2.deviceType = "atapi-cdrom"',
      'usb0:0.fileName = "stick.vmdk"',
      '  scsi1:3.fileName   =   "two words.vmdk"  ',
      'scsi1:3.mode = "independent-persistent"',
      '# scsi0:1.fileName = "commented.vmdk"',
      'scsi0:10.fileName = "unit10.vmdk"',
      'scsi0:11.fileName = "trailing.vmdk" junk',
    ].join('\n');
    expect(parseVmxDisks(vmx)).toEqual([
      { key: 'nvme0:0', fileName: 'data.VMDK', mode: undefined },
      { key: 'scsi1:3', fileName: 'two words.vmdk', mode: 'independent-persistent' },
      { key: 'scsi0:10', fileName: 'unit10.vmdk', mode: undefined },
    ]);
  });

  it('reads the extents of a disk descriptor: ZERO ones without a file, commented-out ones skipped', () => {
    const descriptor = [
      '# Disk DescriptorFile',
      'version=1',
      'CID=fffffffe',
      'createType="twoGbMaxExtentSparse"',
      '',
      '# Extent description',
      'RW 4192256 SPARSE "img-s001.vmdk"',
      'RDONLY 4192256 SPARSE "img-s002.vmdk"',
      'NOACCESS 2048 ZERO',
      '# RW 4192256 SPARSE "img-old-s001.vmdk"',
      '#RW 4192256 SPARSE "img-old-s002.vmdk"',
      '',
      '# The Disk Data Base',
      '#DDB',
      'ddb.adapterType = "lsilogic"',
    ].join('\n');
    expect(parseVmdkExtents(descriptor)).toEqual([
      { access: 'RW', sectors: 4192256, type: 'SPARSE', file: 'img-s001.vmdk' },
      { access: 'RDONLY', sectors: 4192256, type: 'SPARSE', file: 'img-s002.vmdk' },
      { access: 'NOACCESS', sectors: 2048, type: 'ZERO', file: undefined },
    ]);
    expect(parseVmdkExtents('RW 2048 ZERO\n')).toEqual([
      { access: 'RW', sectors: 2048, type: 'ZERO', file: undefined },
    ]);
    expect(() => parseVmdkExtents('# Disk DescriptorFile\nversion=1\n# RW 8 VMFS "a.vmdk"\n')).toThrow(
      'the disk descriptor lists no extent (RW <sectors> ...)',
    );
    expect(codeOf(() => parseVmdkExtents("cat: can't open 'x.vmdk': No such file or directory\n"))).toBe(
      'PARSE_FAILED',
    );
  });

  it('does not take an advanced setting that only contains a disk key for a disk', () => {
    // guestinfo.* keys are free-form settings (vSphere's ExtraConfig) that land in the .vmx.
    const vmx = [
      'scsi0:0.fileName = "vm1.vmdk"',
      'guestinfo.seed.scsi0:1.fileName = "seed.vmdk"',
      'scsi0:2.fileName.orig = "old.vmdk"',
    ].join('\n');
    expect(parseVmxDisks(vmx)).toEqual([{ key: 'scsi0:0', fileName: 'vm1.vmdk', mode: undefined }]);
  });

  it('rewrites hand-edited .vmx lines (blanks around "=") and leaves comments and look-alike settings alone', () => {
    const vmx = [
      '# displayName = "from the template"',
      '# ethernet0.generatedAddress = "00:0c:29:00:00:02"',
      'displayName="vm-linux-1"',
      '  scsi0:0.fileName   =   "vm-linux-1.vmdk"',
      'ethernet0.generatedAddress  =  "00:0c:29:00:00:01"',
      'guestinfo.uuid.bios = "kept by the guest"',
    ].join('\n');
    expect(referenceVmx(vmx, 'img-v0.vmdk', 'img-v0')).toBe(
      [
        '# displayName = "from the template"',
        '# ethernet0.generatedAddress = "00:0c:29:00:00:02"',
        'displayName = "img-v0"',
        'scsi0:0.fileName = "img-v0.vmdk"',
        'guestinfo.uuid.bios = "kept by the guest"',
      ].join('\n'),
    );
    expect(() =>
      referenceVmx('scsi0:0.fileName = "a.vmdk"\nscsi0:1.fileName = "b.vmdk"\n', 'x.vmdk', 'x'),
    ).toThrow('the .vmx declares 2 disks; a capture needs exactly one');
  });

  it('tells vmkfstools output that needs a repair or a full datastore from other failures', () => {
    expect(needsRepair('Failed to clone disk: Input/output error (327689).')).toBe(false);
    expect(noSpace('Failed to clone disk: No space left on device (1835017).')).toBe(true);
    expect(noSpace('Failed to clone disk: The virtual disk NEEDS REPAIR')).toBe(false);
  });
});

describe('xCAT commands', () => {
  it('sends these rpower, nodech, nodeset, nodestat and file command lines', () => {
    expect(xcat.powerStat('n1')).toEqual(['rpower', 'n1', 'stat']);
    expect(xcat.powerOn('n1')).toEqual(['rpower', 'n1', 'on']);
    expect(xcat.powerOff('n1')).toEqual(['rpower', 'n1', 'off']);
    expect(xcat.nodech('n1', 'img-v0')).toEqual(['nodech', 'n1', 'nodetype.profile=img-v0']);
    expect(xcat.nodesetImage('n1', 'img-v0')).toEqual(['nodeset', 'n1', 'osimage=img-v0']);
    expect(xcat.nodesetBoot('n1')).toEqual(['nodeset', 'n1', 'boot']);
    expect(xcat.nodestat('n1')).toEqual(['nodestat', 'n1']);
    expect(xcat.exists('/i/a')).toEqual(['test', '-e', '/i/a']);
    expect(xcat.sizes('/install/x', 'img-v0')).toEqual([
      'find',
      '/install/x',
      '-maxdepth',
      '1',
      '-name',
      'img-v0.*',
      '-printf',
      '%s %f\\n',
    ]);
    expect(xcat.remove(['/i/a', '/i/b'])).toEqual(['rm', '-f', '--', '/i/a', '/i/b']);
    expect(xcat.chmod('0644', '/i/a')).toEqual(['chmod', '0644', '/i/a']);
  });

  it("reads only the asked node's line, its name taken literally", () => {
    expect(parseRpowerStat('n1x1: on\nn1.1:off  \n', 'n1.1')).toBe('off');
    expect(codeOf(() => parseRpowerStat('n1x1: on\n', 'n1.1'))).toBe('PARSE_FAILED');
    expect(codeOf(() => parseRpowerStat('n1: unknown\n', 'n1'))).toBe('PARSE_FAILED');
    expect(codeOf(() => parseRpowerStat('xn1: on\n', 'n1'))).toBe('PARSE_FAILED');
    expect(parseNodestat('n2: boot\nn1:   noping  \n', 'n1')).toBe('noping');
    expect(codeOf(() => parseNodestat('n1+: sshd\n', 'n1+'))).toBeUndefined();
    expect(codeOf(() => parseNodestat('n11: sshd\n', 'n1'))).toBe('PARSE_FAILED');
  });

  it('reads file sizes, skipping lines that are not a size and a name', () => {
    expect(parseSizes('find: /x: Permission denied\n12 a b.img\n\n7\n')).toEqual(new Map([['a b.img', 12]]));
    expect(parseSizes("find: '/install/x/12 b': Permission denied\n")).toEqual(new Map());
  });
});
