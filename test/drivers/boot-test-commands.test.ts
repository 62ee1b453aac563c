/**
 * The boot test's command lines and its throwaway domain's definition, made from a real domain's
 * `virsh dumpxml --inactive` (libvirt 9, the e2e suite's kind of domain: kernel boot, user network with a
 * forwarded port through QEMU arguments, a second data disk, a serial console on a pty).
 */
import { describe, expect, it } from 'vitest';
import { isVclError } from '../../src/errors.js';
import {
  bootTestDomainXml,
  bootTestNames,
  freeRootSlot,
  isSshBanner,
  libvirt,
  SSH_BANNER_SCRIPT,
  sshBannerProbe,
} from '../../src/provisioners/libvirt/commands.js';
import { thrownBy } from './rerun-helpers.js';

const DUMPXML = `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vm1</name>
  <uuid>2b1f6f0e-55d1-4bc4-b5a0-0e4e1f1d3c11</uuid>
  <memory unit='KiB'>262144</memory>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/srv/e2e/vmlinuz</kernel>
    <initrd>/srv/e2e/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/>
      <source file='/var/lib/libvirt/images/vm1.img'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw'/>
      <source dev='/dev/vg0/data'/>
      <target dev='vdb' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:12:34:56'/>
      <source network='default'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=n0,hostfwd=tcp:127.0.0.1:40022-:22'/>
  </qemu:commandline>
</domain>
`;

const names = bootTestNames('/var/lib/libvirt/images/', 'c-42');

describe('boot test commands', () => {
  it('names the domain and files after the capture, beside the disk', () => {
    expect(names).toEqual({
      domain: 'vcl-boot-c-42',
      overlay: '/var/lib/libvirt/images/.vcl-boot-c-42.qcow2',
      xml: '/var/lib/libvirt/images/.vcl-boot-c-42.xml',
      console: '/var/lib/libvirt/images/.vcl-boot-c-42.console.log',
    });
    for (const bad of ['../x', 'a b', '', `x${'y'.repeat(63)}`]) {
      let err: unknown;
      try {
        bootTestNames('/d', bad);
      } catch (e) {
        err = e;
      }
      expect(isVclError(err) && err.code, bad).toBe('PARSE_FAILED');
    }
  });

  it('makes the overlay with an explicit backing format, and a transient domain', () => {
    expect(libvirt.overlay('/r/img.qcow2', 'qcow2', names.overlay)).toEqual([
      'qemu-img',
      'create',
      '-f',
      'qcow2',
      '-b',
      '/r/img.qcow2',
      '-F',
      'qcow2',
      names.overlay,
    ]);
    expect(libvirt.ownLike('/d/vm1.img', names.overlay)).toEqual([
      'chown',
      '--reference=/d/vm1.img',
      '--',
      names.overlay,
    ]);
    expect(libvirt.create(names.xml)).toEqual(['virsh', 'create', names.xml]);
    expect(libvirt.dumpxml('vm1')).toEqual(['virsh', 'dumpxml', '--inactive', 'vm1']);
    expect(sshBannerProbe(2222, 1.5)).toEqual([
      'bash',
      '-c',
      SSH_BANNER_SCRIPT,
      'vcl-boot-probe',
      '2222',
      '2',
    ]);
  });

  it('the console check: the first disk reads the overlay, nothing else of the real domain is writable or on its network', () => {
    const xml = bootTestDomainXml(DUMPXML, { names });
    expect(xml).toContain('<name>vcl-boot-c-42</name>');
    expect(xml).not.toContain('<uuid>');
    expect(xml).not.toContain('vm1.img');
    expect(xml).not.toContain('/dev/vg0/data');
    expect(xml).not.toContain('<interface');
    expect(xml).not.toContain('hostfwd');
    expect(xml).not.toContain("type='pty'");
    expect(xml.match(/<disk type='file' device='disk'>/g)).toHaveLength(1);
    expect(xml).toMatch(
      /<disk type='file' device='disk'>\s*<driver name='qemu' type='qcow2'\/>\s*<source file='\/var\/lib\/libvirt\/images\/\.vcl-boot-c-42\.qcow2'\/>\s*<target dev='vda' bus='virtio'\/>\s*<\/disk>/,
    );
    // The cdrom has no source: it stays, read-only.
    expect(xml).toContain("<disk type='file' device='cdrom'>");
    expect(xml).toMatch(
      /<serial type='file'>\s*<source path='\/var\/lib\/libvirt\/images\/\.vcl-boot-c-42\.console\.log'\/>/,
    );
    // The kernel boot of the real domain is kept: the test boots what the domain boots.
    expect(xml).toContain('<cmdline>console=ttyS0 quiet</cmdline>');
    expect(xml.trim().endsWith('</domain>')).toBe(true);
  });

  it('the SSH check: one user network forwarding the loopback port to the guest, declared in the qemu namespace', () => {
    const plain = DUMPXML.replace(" xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'", '').replace(
      /\s*<qemu:commandline>[\s\S]*<\/qemu:commandline>/,
      '',
    );
    const xml = bootTestDomainXml(plain, { names, ssh: { address: '127.0.0.1', port: 2222 } });
    expect(xml).toContain("<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>");
    expect(xml).toContain("<qemu:arg value='user,id=vclboot,hostfwd=tcp:127.0.0.1:2222-:22'/>");
    expect(xml).toContain("<qemu:arg value='virtio-net-pci,netdev=vclboot,romfile=,bus=pci.0,addr=0x1e'/>");
    const again = bootTestDomainXml(DUMPXML, { names, ssh: { address: '127.0.0.1', port: 2222 } });
    expect(again.match(/xmlns:qemu=/g)).toHaveLength(1);
    expect(again).not.toContain('40022');
  });

  it("gives the SSH check's NIC a root bus slot none of the definition's devices has (QEMU would take theirs)", () => {
    const slot = (n: number) =>
      `<address type='pci' domain='0x0000' bus='0x00' slot='0x${n.toString(16).padStart(2, '0')}' function='0x0'/>`;
    expect(
      freeRootSlot(`<type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>${slot(2)}${slot(3)}`),
    ).toEqual({
      bus: 'pci.0',
      slot: 0x1e,
    });
    expect(freeRootSlot(`<type arch='x86_64' machine='pc-q35-7.2'>hvm</type>${slot(0x1e)}`)).toEqual({
      bus: 'pcie.0',
      slot: 0x1d,
    });
    // A device on another bus does not take the root bus's slot.
    const otherBus = "<address type='pci' domain='0x0000' bus='0x01' slot='0x1e' function='0x0'/>";
    expect(freeRootSlot(`<type machine='pc'>hvm</type>${otherBus}`).slot).toBe(0x1e);
    const full = Array.from({ length: 0x1c }, (_, i) => slot(i + 3)).join('');
    expect(() => freeRootSlot(full)).toThrow(/no free slot/);
    const xml = bootTestDomainXml(
      DUMPXML.replace("<target dev='vda' bus='virtio'/>", `<target dev='vda' bus='virtio'/>${slot(0x1e)}`),
      {
        names,
        ssh: { address: '127.0.0.1', port: 2222 },
      },
    );
    expect(xml).toContain("<qemu:arg value='virtio-net-pci,netdev=vclboot,romfile=,bus=pci.0,addr=0x1d'/>");
  });

  it('escapes what it writes into attributes, and refuses a definition without a bootable disk', () => {
    const odd = bootTestNames("/srv/it's&here", 'c1');
    expect(bootTestDomainXml(DUMPXML, { names: odd })).toContain(
      "<source file='/srv/it&apos;s&amp;here/.vcl-boot-c1.qcow2'/>",
    );
    const diskless = DUMPXML.replace(/<disk type='(file|block)' device='disk'>[\s\S]*?<\/disk>/g, '');
    expect(() => bootTestDomainXml(diskless, { names })).toThrow(/no disk with a source/);
    expect(() => bootTestDomainXml('error: failed to get domain', { names })).toThrow(/no <domain>/);
  });

  it('tells an SSH identification line from other answers', () => {
    expect(isSshBanner('SSH-2.0-dropbear_2022.83\r\n')).toBe(true);
    expect(isSshBanner('SSH-1.99-OpenSSH_3.9\n')).toBe(true);
    expect(isSshBanner('')).toBe(false);
    expect(isSshBanner('HTTP/1.1 400 Bad Request\n')).toBe(false);
    expect(isSshBanner('SSH-1.5-old\n')).toBe(false);
  });
});

/** A libvirt 9 q35 domain as `virsh dumpxml --inactive` prints it: a CD-ROM with an install ISO before the
 * system disk, whose source carries a per-disk security label and which states it has no backing image. */
const Q35_DUMPXML = `<domain type='kvm'>
  <name>web-01</name>
  <uuid>7c0a4f4e-2b8e-4d0b-9b8e-5a0e6f0c1d22</uuid>
  <memory unit='KiB'>2097152</memory>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/iso/install.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' discard='unmap'/>
      <source file='/var/lib/libvirt/images/web-01.qcow2'>
        <seclabel model='dac' relabel='no'/>
      </source>
      <backingStore/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <controller type='sata' index='0'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pcie-root'/>
    <interface type='bridge'>
      <mac address='52:54:00:ab:cd:ef'/>
      <source bridge='br0'/>
      <model type='virtio'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <serial type='pty'>
      <target type='isa-serial' port='0'>
        <model name='isa-serial'/>
      </target>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1e' function='0x0'/>
    </video>
  </devices>
</domain>
`;

/** The serial port and console a boot test writes to `path`, as the definition's last devices. */
const consoleDevices = (path: string) => `    <serial type='file'>
      <source path='${path}'/>
      <target port='0'/>
    </serial>
    <console type='file'>
      <source path='${path}'/>
      <target type='serial' port='0'/>
    </console>
  </devices>
`;

describe('boot test definition, exactly', () => {
  it('names the files in dir however many slashes end it, and accepts capture ids of 1 to 63 characters', () => {
    expect(bootTestNames('/var/lib/libvirt/images//', 'c-42')).toEqual({
      domain: 'vcl-boot-c-42',
      overlay: '/var/lib/libvirt/images/.vcl-boot-c-42.qcow2',
      xml: '/var/lib/libvirt/images/.vcl-boot-c-42.xml',
      console: '/var/lib/libvirt/images/.vcl-boot-c-42.console.log',
    });
    expect(bootTestNames('/srv', '7').overlay).toBe('/srv/.vcl-boot-7.qcow2');
    const longest = `c${'1'.repeat(62)}`;
    expect(bootTestNames('/srv/', longest).domain).toBe(`vcl-boot-${longest}`);
    expect(thrownBy(() => bootTestNames('/srv', '../x'))).toEqual({
      code: 'PARSE_FAILED',
      message: 'a capture id unfit for a domain or file name: "../x"',
    });
  });

  it("the console check's definition: the real domain's, its first disk on the overlay, no network, the console to the log", () => {
    const n = bootTestNames('/var/lib/libvirt/images', 'c-42');
    expect(
      bootTestDomainXml(DUMPXML, { names: n }),
    ).toBe(`<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vcl-boot-c-42</name>
  <memory unit='KiB'>262144</memory>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <kernel>/srv/e2e/vmlinuz</kernel>
    <initrd>/srv/e2e/initrd.gz</initrd>
    <cmdline>console=ttyS0 quiet</cmdline>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/.vcl-boot-c-42.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
${consoleDevices('/var/lib/libvirt/images/.vcl-boot-c-42.console.log')}</domain>
`);
  });

  it("the SSH check's definition: the forwarding QEMU arguments in place of the real domain's", () => {
    const n = bootTestNames('/var/lib/libvirt/images', 'c-42');
    const xml = bootTestDomainXml(DUMPXML, { names: n, ssh: { address: '127.0.0.1', port: 2222 } });
    expect(xml.slice(xml.indexOf('  </devices>'))).toBe(`  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=vclboot,hostfwd=tcp:127.0.0.1:2222-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=vclboot,romfile=,bus=pci.0,addr=0x1e'/>
  </qemu:commandline>
</domain>
`);
    expect(
      xml.startsWith("<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n"),
    ).toBe(true);
  });

  it('boots the first disk with a source, whatever its source element holds; a CD-ROM with an ISO stays as it is', () => {
    const n = bootTestNames('/var/lib/libvirt/images', 'c-7');
    const xml = bootTestDomainXml(Q35_DUMPXML, { names: n, ssh: { address: '127.0.0.1', port: 40022 } });
    expect(xml).toBe(`<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>vcl-boot-c-7</name>
  <memory unit='KiB'>2097152</memory>
  <os>
    <type arch='x86_64' machine='pc-q35-8.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/iso/install.iso'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/.vcl-boot-c-7.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <controller type='sata' index='0'>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1f' function='0x2'/>
    </controller>
    <controller type='pci' index='0' model='pcie-root'/>
    <video>
      <model type='virtio' heads='1' primary='yes'/>
      <address type='pci' domain='0x0000' bus='0x00' slot='0x1e' function='0x0'/>
    </video>
${consoleDevices('/var/lib/libvirt/images/.vcl-boot-c-7.console.log')}  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=vclboot,hostfwd=tcp:127.0.0.1:40022-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=vclboot,romfile=,bus=pcie.0,addr=0x1d'/>
  </qemu:commandline>
</domain>
`);
  });

  it("keeps the disk's own serial number, and drops a backing chain given in the definition, nested as libvirt prints it", () => {
    const source = `<domain type='kvm'>
  <name>db-01</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/db-01.qcow2'/>
      <backingStore type='file'>
        <format type='qcow2'/>
        <source file='/var/lib/libvirt/images/base.qcow2'/>
        <backingStore type='file'>
          <format type='raw'/>
          <source file='/var/lib/libvirt/images/base.img'/>
          <backingStore/>
        </backingStore>
      </backingStore>
      <target dev='vda' bus='virtio'/>
      <serial>WD-WCC4N1234567</serial>
    </disk>
    <serial type='pty'>
      <target type='isa-serial' port='0'/>
    </serial>
    <console type='pty'/>
  </devices>
</domain>
`;
    const n = bootTestNames('/var/lib/libvirt/images', 'c-9');
    expect(bootTestDomainXml(source, { names: n })).toBe(`<domain type='kvm'>
  <name>vcl-boot-c-9</name>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/.vcl-boot-c-9.qcow2'/>
      <target dev='vda' bus='virtio'/>
      <serial>WD-WCC4N1234567</serial>
    </disk>
${consoleDevices('/var/lib/libvirt/images/.vcl-boot-c-9.console.log')}</domain>
`);
  });

  it('adds the console to a domain that had none, and leaves no blank line where its network was', () => {
    const n = bootTestNames('/var/lib/libvirt/images', 'c-9');
    const desktop = `<domain type='kvm'>
  <name>desk-01</name>
  <uuid>0f6b1c8e-4a57-4f0e-8a43-9d2c7e1b5a60</uuid>
  <memory unit='KiB'>4194304</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/desk-01.qcow2'/>
      <target dev='sda' bus='sata'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <interface type='network'>
      <mac address='52:54:00:6a:01:02'/>
      <source network='default'/>
      <model type='e1000e'/>
      <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
    </interface>
    <input type='tablet' bus='usb'>
      <address type='usb' bus='0' port='1'/>
    </input>
    <graphics type='spice' autoport='yes'>
      <listen type='address'/>
    </graphics>
  </devices>
</domain>
`;
    expect(bootTestDomainXml(desktop, { names: n })).toBe(`<domain type='kvm'>
  <name>vcl-boot-c-9</name>
  <memory unit='KiB'>4194304</memory>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/.vcl-boot-c-9.qcow2'/>
      <target dev='sda' bus='sata'/>
      <address type='drive' controller='0' bus='0' target='0' unit='0'/>
    </disk>
    <input type='tablet' bus='usb'>
      <address type='usb' bus='0' port='1'/>
    </input>
    <graphics type='spice' autoport='yes'>
      <listen type='address'/>
    </graphics>
${consoleDevices('/var/lib/libvirt/images/.vcl-boot-c-9.console.log')}</domain>
`);
  });

  it('drops a disk without a source (virsh lists it with "-") and boots the next one', () => {
    const n = bootTestNames('/var/lib/libvirt/images', 'c-8');
    const sourceless = DUMPXML.replace(
      "    <disk type='file' device='disk'>",
      "    <disk type='block' device='disk'>\n      <driver name='qemu' type='raw'/>\n      <target dev='vdz' bus='virtio'/>\n    </disk>\n    <disk type='file' device='disk'>",
    );
    const xml = bootTestDomainXml(sourceless, { names: n });
    expect(xml).toBe(bootTestDomainXml(DUMPXML, { names: n }));
    expect(xml).not.toContain('vdz');
  });

  it('escapes the characters XML gives a meaning in the paths it writes', () => {
    const n = bootTestNames(`/srv/a<b>"c'&d`, 'c1');
    const xml = bootTestDomainXml(DUMPXML, { names: n });
    expect(xml).toContain("<source file='/srv/a&lt;b&gt;&quot;c&apos;&amp;d/.vcl-boot-c1.qcow2'/>");
    expect(xml).toContain(consoleDevices('/srv/a&lt;b&gt;&quot;c&apos;&amp;d/.vcl-boot-c1.console.log'));
  });

  it('names what the definition lacks in its errors', () => {
    const n = bootTestNames('/var/lib/libvirt/images', 'c-42');
    const noDevices = "<domain type='kvm'>\n  <name>vm1</name>\n</domain>\n";
    const unreadable = { code: 'PARSE_FAILED', message: 'virsh dumpxml printed no <domain> with <devices>' };
    expect(thrownBy(() => bootTestDomainXml(noDevices, { names: n }))).toEqual(unreadable);
    expect(thrownBy(() => bootTestDomainXml('error: failed to get domain', { names: n }))).toEqual(
      unreadable,
    );
    const diskless = DUMPXML.replace(/<disk type='(file|block)' device='disk'>[\s\S]*?<\/disk>/g, '');
    expect(thrownBy(() => bootTestDomainXml(diskless, { names: n }))).toEqual({
      code: 'NO_DISK',
      message: 'the domain definition has no disk with a source to boot the image from',
    });
  });

  it('takes the lowest root slot, 0x03, when it is the only one left, and says when none is', () => {
    const slot = (s: number) =>
      `<address type='pci' domain='0x0000' bus='0x00' slot='0x${s.toString(16).padStart(2, '0')}' function='0x0'/>`;
    const upper = Array.from({ length: 0x1b }, (_, i) => slot(i + 4)).join('\n');
    expect(freeRootSlot(`<type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>\n${upper}`)).toEqual({
      bus: 'pci.0',
      slot: 0x03,
    });
    expect(thrownBy(() => freeRootSlot(`${slot(3)}\n${upper}`))).toEqual({
      code: 'PARSE_FAILED',
      message: "the domain definition leaves no free slot on its root PCI bus for the boot test's NIC",
    });
  });

  it('takes an identification only at the start of a line', () => {
    expect(isSshBanner('Protocol mismatch: SSH-2.0-OpenSSH_9.6\n')).toBe(false);
    expect(isSshBanner('Welcome\r\nSSH-2.0-OpenSSH_9.6\r\n')).toBe(true);
  });
});
