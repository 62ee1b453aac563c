/**
 * The preflight's command lines and parsers against the tools' documented output: GNU coreutils `df -P
 * -B1` (Debian's coreutils 9.1), ESXi's `vmkfstools -P` (VMFS and NFS volumes), `stat -c '%s %b %B'`,
 * and the tool check's own report.
 */
import { spawnSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { describe, expect, it } from 'vitest';
import type { Exec } from '../../src/drivers/env.js';
import { freeBytes } from '../../src/drivers/preflight.js';
import {
  allocationCommand,
  dfCommand,
  formatBytes,
  hasToolCommand,
  MARGIN,
  parseAllocation,
  parseDf,
  parseTools,
  parseVmfs,
  REPOSITORY_TOOLS,
  requiredBytes,
  TOOLS_SCRIPT,
  toolsCommand,
  toolsFor,
  vmfsCommand,
} from '../../src/drivers/preflight-commands.js';
import { TOOLS as LIBVIRT_TOOLS } from '../../src/provisioners/libvirt/commands.js';
import { TOOLS as VMWARE_TOOLS } from '../../src/provisioners/vmware/commands.js';
import { TOOLS as XCAT_TOOLS } from '../../src/provisioners/xcat/commands.js';
import type { SshHost } from '../../src/ssh/index.js';
import { toCommandLine } from '../../src/ssh/quote.js';
import { thrownBy } from './rerun-helpers.js';

describe('df -P -B1', () => {
  it('reads the available bytes of the file system holding the folder', () => {
    const out =
      'Filesystem         1-blocks        Used   Available Capacity Mounted on\n' +
      '/dev/vda       270553174016 27615629312 81328664576      26% /\n';
    expect(parseDf(out)).toEqual({ totalBytes: 270553174016, availableBytes: 81328664576, mountedOn: '/' });
  });

  it('keeps spaces in the file system name and the mount point', () => {
    const out =
      'Filesystem                1-blocks       Used  Available Capacity Mounted on\n' +
      'nas:/export/vcl images 1099511627776 1000 1099511626776       1% /mnt/vcl images\n';
    expect(parseDf(out)).toMatchObject({ availableBytes: 1099511626776, mountedOn: '/mnt/vcl images' });
  });

  it('refuses output without the POSIX 1-byte header (a df that ignored -B1 would report KiB)', () => {
    const out =
      'Filesystem     1024-blocks     Used Available Capacity Mounted on\n/dev/vda 264212084 26968388 79422524 26% /\n';
    expect(() => parseDf(out)).toThrow(expect.objectContaining({ code: 'PARSE_FAILED' }));
  });

  it('asks for the folder as one word, never as an option', () => {
    expect(toCommandLine(dfCommand('/srv/vcl images'))).toBe("df -P -B1 '/srv/vcl images'");
    expect(() => dfCommand('-h')).toThrow(expect.objectContaining({ code: 'COMMAND_FAILED' }));
  });
});

describe('vmkfstools -P', () => {
  it('reads the free bytes of a VMFS datastore', () => {
    const out = [
      'VMFS-6.82 (Raw Major Version: 24) file system spanning 1 partitions.',
      'File system label (if any): datastore1',
      'Mode: public',
      'Capacity 1798967459840 (1715616 file blocks * 1048576), 851521388544 (812074 blocks) avail, max supported file size 70368744177664',
      'UUID: 5a1b2c3d-4e5f6071-8293-a4b5c6d7e8f9',
    ].join('\n');
    expect(parseVmfs(out)).toEqual({ totalBytes: 1798967459840, availableBytes: 851521388544 });
  });

  it('reads an NFS datastore, which has no "max supported file size"', () => {
    const out =
      'NFS-1.00 file system spanning 1 partitions.\nFile system label (if any): Yaz\nMode: public\n' +
      'Capacity 8001326940160 (1953448960 file blocks * 4096), 3420039405568 (834970558 blocks) avail\n';
    expect(parseVmfs(out).availableBytes).toBe(3420039405568);
  });

  it('refuses anything else', () => {
    expect(() => parseVmfs('Could not retrieve attributes')).toThrow(
      expect.objectContaining({ code: 'PARSE_FAILED' }),
    );
    expect(vmfsCommand('/vmfs/volumes/datastore1')).toEqual(['vmkfstools', '-P', '/vmfs/volumes/datastore1']);
  });
});

describe('stat -c %s %b %B', () => {
  it('gives the apparent and the allocated size (blocks times their size)', () => {
    expect(parseAllocation('4194304 248 512\n')).toEqual({ sizeBytes: 4194304, allocatedBytes: 126976 });
    expect(allocationCommand('/vmfs/volumes/ds/vm/vm-flat.vmdk')).toEqual([
      'stat',
      '-c',
      '%s %b %B',
      '/vmfs/volumes/ds/vm/vm-flat.vmdk',
    ]);
    expect(() => parseAllocation("stat: cannot statx 'x'")).toThrow(
      expect.objectContaining({ code: 'PARSE_FAILED' }),
    );
  });
});

describe('the tool check', () => {
  it('runs command -v inside sh -c with the names as parameters (a builtin cannot be exec’d)', () => {
    const argv = toolsCommand(['virsh', 'qemu-img']);
    expect(argv).toEqual(['sh', '-c', TOOLS_SCRIPT, 'sh', 'virsh', 'qemu-img']);
    expect(toCommandLine(argv)).toBe(`sh -c '${TOOLS_SCRIPT}' sh virsh qemu-img`);
    expect(() => toolsCommand(['virsh; reboot'])).toThrow(
      expect.objectContaining({ code: 'COMMAND_FAILED' }),
    );
  });

  it('names the missing tools, and refuses a report that leaves one out', () => {
    expect(parseTools('present virsh\nmissing qemu-img\n', ['virsh', 'qemu-img'])).toEqual({
      missing: ['qemu-img'],
    });
    expect(() => parseTools('present virsh\n', ['virsh', 'qemu-img'])).toThrow(
      expect.objectContaining({ code: 'PARSE_FAILED' }),
    );
  });

  it('asks each host for the tools of its roles on the path, once each', () => {
    expect(toolsFor(['libvirt'], LIBVIRT_TOOLS)).toEqual([
      'virsh',
      'qemu-img',
      'sha256sum',
      'stat',
      'sync',
      'df',
    ]);
    const both = toolsFor(['xcat', 'repository'], XCAT_TOOLS);
    expect(both).toEqual(expect.arrayContaining(['rpower', 'nodeset', 'df', 'find', 'chmod']));
    expect(new Set(both).size).toBe(both.length);
    expect(toolsFor(['repository'], VMWARE_TOOLS)).not.toContain('find');
  });
});

describe('where free space is read', () => {
  const host = { name: 'h', host: '127.0.0.1', username: 'root', privateKey: '' } as SshHost;
  const asked: string[][] = [];
  const exec: Exec = async (_h, argv) => {
    asked.push([...argv]);
    const stdout =
      argv[0] === 'df'
        ? 'Filesystem 1-blocks Used Available Capacity Mounted on\n/dev/sda1 100 40 60 40% /\n'
        : 'Capacity 100 (100 file blocks * 1), 70 (70 blocks) avail\n';
    return { code: 0, signal: null, stdout, stderr: '', durationMs: 1, disconnected: false };
  };

  it('with df on a POSIX folder, with vmkfstools -P on an ESXi datastore (whose df takes no -P)', async () => {
    expect(await freeBytes(exec, { what: 'repository', host, dir: '/srv/vcl/images' })).toBe(60);
    expect(await freeBytes(exec, { what: 'repository', host, dir: '/vmfs/volumes/ds2/images' })).toBe(70);
    expect(asked).toEqual([
      ['df', '-P', '-B1', '/srv/vcl/images'],
      ['vmkfstools', '-P', '/vmfs/volumes/ds2/images'],
    ]);
  });
});

describe('the margin', () => {
  it('is at least 1 GiB, and 5 % of a large copy', () => {
    expect(requiredBytes(0)).toBe(MARGIN.minBytes);
    expect(requiredBytes(10 * 1024 ** 3)).toBe(10 * 1024 ** 3 + 1024 ** 3);
    expect(requiredBytes(100 * 1024 ** 3)).toBe(105 * 1024 ** 3);
  });
});

/** A command line as the transport sends it (src/ssh/process.ts), run by this machine's /bin/sh. */
function viaShell(argv: string[]) {
  const r = spawnSync('/bin/sh', ['-c', `echo VCLPID=$$; exec ${toCommandLine(argv)}`], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout.replace(/^VCLPID=\d+\n/, ''), stderr: r.stderr };
}

describe('on a real POSIX shell, behind the transport’s exec prefix', () => {
  it('the tool check reports a present and a missing tool (a bare `command -v` would exit 127)', () => {
    expect(viaShell(['command', '-v', 'sh']).code).toBe(127);
    const tools = ['sh', 'vcl-capture-no-such-tool'];
    const r = viaShell(toolsCommand(tools));
    expect(r.code).toBe(0);
    expect(parseTools(r.stdout, tools)).toEqual({ missing: ['vcl-capture-no-such-tool'] });
  });

  it('the one-tool probe of the OS plans exits 0 with the path, or non-zero (bash 1, dash 127)', () => {
    const found = viaShell(hasToolCommand('sh'));
    expect(found.code).toBe(0);
    expect(found.stdout).toMatch(/\/sh\n$/);
    const missing = viaShell(hasToolCommand('vcl-capture-no-such-tool'));
    expect(missing.code).not.toBe(0);
    expect(missing.stdout).toBe('');
  });

  it("this machine's df -P -B1 parses", () => {
    const r = viaShell(dfCommand(tmpdir()));
    expect(r.code).toBe(0);
    expect(parseDf(r.stdout).availableBytes).toBeGreaterThan(0);
  });
});

const DF_HEADER = 'Filesystem         1-blocks        Used   Available Capacity Mounted on';

describe('df -P -B1, as Debian 12 prints it', () => {
  it('reads a pseudo file system with no capacity ("-") and columns padded with several blanks', () => {
    const out = `${DF_HEADER}\nproc                      0           0           0        - /proc\n`;
    expect(parseDf(out)).toEqual({ totalBytes: 0, availableBytes: 0, mountedOn: '/proc' });
    const tmpfs = `${DF_HEADER}\ntmpfs           25276157952           0 25276157952       0% /dev/shm\n`;
    expect(parseDf(tmpfs)).toEqual({
      totalBytes: 25276157952,
      availableBytes: 25276157952,
      mountedOn: '/dev/shm',
    });
  });

  it('skips blank lines around and between the header and the file system line', () => {
    const out = `\n   \n${DF_HEADER}   \n\n  \n/dev/vda       270553174016 27615629312 81328664576      26% /srv/vcl\n\n`;
    expect(parseDf(out)).toEqual({
      totalBytes: 270553174016,
      availableBytes: 81328664576,
      mountedOn: '/srv/vcl',
    });
  });

  it('names the output it could not read: no header (the first 200 characters), no file system line', () => {
    const notDf = `df: invalid option -- 'B'${'.'.repeat(300)}`;
    expect(thrownBy(() => parseDf(notDf))).toEqual({
      code: 'PARSE_FAILED',
      message: `df -P -B1 printed no header: ${JSON.stringify(notDf.slice(0, 200))}`,
    });
    expect(thrownBy(() => parseDf(`${DF_HEADER}\n`))).toEqual({
      code: 'PARSE_FAILED',
      message: 'cannot read df -P -B1 output: ""',
    });
    // A mount point that is not an absolute path: the line is not read as one.
    const line = '/dev/vda 270553174016 27615629312 81328664576 26% srv';
    expect(thrownBy(() => parseDf(`${DF_HEADER}\n${line}\n`))).toEqual({
      code: 'PARSE_FAILED',
      message: `cannot read df -P -B1 output: ${JSON.stringify(line)}`,
    });
  });
});

describe('vmkfstools -P, as ESXi 8 prints it', () => {
  it('finds the Capacity line among the others, leading blanks included', () => {
    const out = [
      '',
      'VMFS-6.82 (Raw Major Version: 24) file system spanning 1 partitions.',
      'File system label (if any): datastore 2',
      'Mode: public',
      '  Capacity 1798967459840 (1715616 file blocks * 1048576), 851521388544 (812074 blocks) avail, max supported file size 70368744177664',
      'Disk Block Size: 512/512/0',
      'UUID: 5a1b2c3d-4e5f6071-8293-a4b5c6d7e8f9',
      'Partitions spanned (on "lvm"):',
      '\tnaa.6000c29a1b2c3d4e5f60718293a4b5c6:3',
      'Is Native Snapshot Capable: NO',
      '',
    ].join('\n');
    expect(parseVmfs(out)).toEqual({ totalBytes: 1798967459840, availableBytes: 851521388544 });
  });

  it('names the output it could not read (its first 200 characters)', () => {
    const out = `Could not retrieve attributes of /vmfs/volumes/nope${' '.repeat(250)}x`;
    expect(thrownBy(() => parseVmfs(out))).toEqual({
      code: 'PARSE_FAILED',
      message: `cannot read vmkfstools -P output: ${JSON.stringify(out.slice(0, 200))}`,
    });
  });
});

describe("stat -c '%s %b %B'", () => {
  it('reads the line with blanks around it', () => {
    expect(parseAllocation('  8589934592 16777216 512 \n')).toEqual({
      sizeBytes: 8589934592,
      allocatedBytes: 8589934592,
    });
  });

  it('refuses output besides the one line (a login script that prints), naming it', () => {
    for (const out of ['Welcome to esx01\n4194304 248 512\n', '4194304 248 512\nWelcome to esx01\n'])
      expect(thrownBy(() => parseAllocation(out))).toEqual({
        code: 'PARSE_FAILED',
        message: `cannot read stat -c '%s %b %B': ${JSON.stringify(out)}`,
      });
  });
});

describe('the folders and tools asked about', () => {
  it('refuses a relative path, an option and a NUL in a path, naming it', () => {
    expect(thrownBy(() => dfCommand('-h'))).toEqual({
      code: 'COMMAND_FAILED',
      message: 'not an absolute path: "-h"',
    });
    expect(thrownBy(() => vmfsCommand('vmfs/volumes/ds1'))).toEqual({
      code: 'COMMAND_FAILED',
      message: 'not an absolute path: "vmfs/volumes/ds1"',
    });
    expect(thrownBy(() => allocationCommand('/vmfs/a\0b'))).toEqual({
      code: 'COMMAND_FAILED',
      message: 'not an absolute path: "/vmfs/a\\u0000b"',
    });
  });

  it('refuses a tool name that is not one word, naming it', () => {
    expect(thrownBy(() => toolsCommand(['virsh', 'virsh; reboot']))).toEqual({
      code: 'COMMAND_FAILED',
      message: 'not a tool name: "virsh; reboot"',
    });
    expect(thrownBy(() => hasToolCommand('zstd; reboot'))).toEqual({
      code: 'COMMAND_FAILED',
      message: 'not a tool name: "zstd; reboot"',
    });
    expect(thrownBy(() => hasToolCommand('-v'))).toEqual({
      code: 'COMMAND_FAILED',
      message: 'not a tool name: "-v"',
    });
    expect(hasToolCommand('zstd').at(-1)).toBe('zstd');
  });

  it('asks a repository host for the repository tools only, when its provisioner names none of its own', () => {
    expect(toolsFor(['repository'], VMWARE_TOOLS)).toEqual(['cat', 'mv', 'sync', 'stat', 'sha256sum', 'df']);
    expect(toolsFor(['repository'], { host: ['x'] })).toEqual([...REPOSITORY_TOOLS]);
  });

  it('reads report lines with blanks or a carriage return around them', () => {
    expect(parseTools('  present virsh \r\nmissing qemu-img\r\n', ['virsh', 'qemu-img'])).toEqual({
      missing: ['qemu-img'],
    });
  });

  it('does not take a line that only contains a report for one, and names every tool left unreported', () => {
    const out = 'note: missing virsh\npresent qemu-img (from /etc/profile)\n';
    expect(thrownBy(() => parseTools(out, ['virsh', 'qemu-img']))).toEqual({
      code: 'PARSE_FAILED',
      message: 'the tool check did not report virsh, qemu-img',
    });
  });
});

describe('the margin, at its boundary', () => {
  const GiB = 1024 ** 3;
  it('is 1 GiB up to a 20 GiB copy, and 5 % (rounded up) past it', () => {
    expect(requiredBytes(20 * GiB - 20)).toBe(21 * GiB - 20);
    expect(requiredBytes(20 * GiB)).toBe(21 * GiB);
    expect(requiredBytes(20 * GiB + 20)).toBe(21 * GiB + 21);
    expect(requiredBytes(20 * GiB + 1)).toBe(21 * GiB + 2);
  });
});

describe('bytes as the preflight report shows them', () => {
  it('switches unit at 1024, with one decimal and the exact count', () => {
    expect(formatBytes(0)).toBe('0 bytes');
    expect(formatBytes(1023)).toBe('1023 bytes');
    expect(formatBytes(1024)).toBe('1.0 KiB (1024 bytes)');
    expect(formatBytes(1024 ** 2 - 1)).toBe('1024.0 KiB (1048575 bytes)');
    expect(formatBytes(1024 ** 2)).toBe('1.0 MiB (1048576 bytes)');
    expect(formatBytes(13207024435)).toBe('12.3 GiB (13207024435 bytes)');
    expect(formatBytes(3.5 * 1024 ** 4)).toBe('3.5 TiB (3848290697216 bytes)');
  });

  it('stops at PiB, however large', () => {
    expect(formatBytes(2 ** 53)).toBe('8.0 PiB (9007199254740992 bytes)');
    expect(formatBytes(1024 ** 6)).toBe('1024.0 PiB (1152921504606847000 bytes)');
  });
});
