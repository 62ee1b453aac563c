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
  hasToolCommand,
  MARGIN,
  parseAllocation,
  parseDf,
  parseTools,
  parseVmfs,
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
