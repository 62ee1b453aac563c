/**
 * The libvirt host: `virsh` (domstate, domblklist, shutdown, destroy, start, event, dumpxml, undefine,
 * list) and `qemu-img` (info, convert, check), in libvirt 8 / QEMU 6 output formats. A running domain
 * holds its disk's write lock: `qemu-img convert` or `check` on it fails as QEMU's does. Conversions are
 * byte copies (zero runs of 4 KiB left as holes) that record the target format, which `qemu-img info`
 * then reports.
 */

import { errnoText, options, statOf } from '../../lab/commands/posix.js';
import type { CommandContext, ComputerRecord, Handler, LabCore } from '../../lab/core.js';
import { diskInUse, fail, NoSpaceError } from '../../lab/core.js';
import { copySparse } from '../../lab/fs.js';

export function libvirtDomain(core: LabCore, name: string | undefined): ComputerRecord {
  const rec = name === undefined ? undefined : core.computers.get(name);
  if (rec === undefined || rec.provisioner !== 'libvirt' || (!rec.defined && rec.computer.power === 'off'))
    fail(1, `error: failed to get domain '${name ?? ''}'`);
  return rec;
}

function stateText(rec: ComputerRecord, withReason: boolean): string {
  const power = rec.computer.power;
  if (power === 'off') return withReason ? `shut off (${rec.computer.stopReason})` : 'shut off';
  return withReason ? 'running (booted)' : 'running';
}

/** The domain named by `--domain D` or by the first operand. */
function domainArg(args: readonly string[]): string | undefined {
  const i = args.indexOf('--domain');
  if (i >= 0) return args[i + 1];
  return args.find((a, j) => !a.startsWith('--') && args[j - 1] !== '--timeout' && args[j - 1] !== '--event');
}

async function event(ctx: CommandContext, args: string[]): Promise<number> {
  const i = args.indexOf('--timeout');
  const seconds = i >= 0 ? Number(args[i + 1]) : Number.POSITIVE_INFINITY;
  if (!(seconds > 0)) fail(1, `error: invalid timeout '${args[i + 1]}'`);
  const kind = args.indexOf('--event') >= 0 ? args[args.indexOf('--event') + 1] : 'lifecycle';
  if (kind !== 'lifecycle') fail(1, `error: unknown event type ${kind}`);
  const named = args.includes('--domain') ? domainArg(args) : undefined;
  const domains =
    named === undefined
      ? [...ctx.core.computers.values()].filter((r) => r.provisioner === 'libvirt')
      : [libvirtDomain(ctx.core, named)];
  const seen = await new Promise<string | undefined>((resolve) => {
    const stops: (() => void)[] = [];
    const done = (line: string | undefined) => {
      for (const s of stops) s();
      resolve(line);
    };
    for (const rec of domains) {
      const on = (e: { event: string; detail: string }) =>
        done(`event 'lifecycle' for domain '${rec.info.name}': ${e.event} ${e.detail}`);
      rec.computer.on('lifecycle', on);
      stops.push(() => rec.computer.off('lifecycle', on));
    }
    if (Number.isFinite(seconds)) {
      const t = setTimeout(() => done(undefined), seconds * 1000);
      stops.push(() => clearTimeout(t));
    }
    const onAbort = () => done(undefined);
    ctx.signal.addEventListener('abort', onAbort, { once: true });
    stops.push(() => ctx.signal.removeEventListener('abort', onAbort));
  });
  if (ctx.signal.aborted) return 130;
  // As virsh 9 prints it; a wait that timed out exits 1.
  if (seen === undefined) {
    await ctx.out('event loop timed out\nevents received: 0\n\n');
    return 1;
  }
  await ctx.out(`${seen}\nevents received: 1\n\n`);
  return 0;
}

function dumpxml(rec: ComputerRecord): string {
  return `<domain type='kvm'>
  <name>${rec.info.name}</name>
  <uuid>${rec.uuid}</uuid>
  <memory unit='KiB'>2097152</memory>
  <vcpu placement='static'>2</vcpu>
  <os>
    <type arch='x86_64' machine='pc-q35-6.2'>hvm</type>
    <boot dev='hd'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${rec.info.disk.path}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <target dev='sda' bus='sata'/>
      <readonly/>
    </disk>
    <interface type='network'>
      <mac address='${rec.mac}'/>
      <source network='default'/>
      <model type='virtio'/>
    </interface>
  </devices>
</domain>
`;
}

const virsh: Handler = async (ctx) => {
  const [sub, ...args] = ctx.argv.slice(1);
  const name = domainArg(args);
  switch (sub) {
    case 'domstate': {
      const rec = libvirtDomain(ctx.core, name);
      await ctx.out(`${stateText(rec, args.includes('--reason'))}\n\n`);
      return 0;
    }
    case 'domblklist': {
      const rec = libvirtDomain(ctx.core, name);
      const rows = args.includes('--details')
        ? [
            ' Type   Device   Target   Source',
            '------------------------------------------------------------',
            ` file   disk     vda      ${rec.info.disk.path}`,
            ' file   cdrom    sda      -',
          ]
        : [
            ' Target   Source',
            '------------------------------------------------',
            ` vda      ${rec.info.disk.path}`,
            ' sda      -',
          ];
      await ctx.out(`${rows.join('\n')}\n\n`);
      return 0;
    }
    case 'shutdown': {
      const rec = libvirtDomain(ctx.core, name);
      if (rec.computer.power === 'off')
        fail(
          1,
          `error: Failed to shutdown domain '${name}'\nerror: Requested operation is not valid: domain is not running`,
        );
      // ACPI power button: a guest that ignores it still got the request.
      rec.computer.shutdown();
      await ctx.out(`Domain '${name}' is being shutdown\n\n`);
      return 0;
    }
    case 'destroy': {
      const rec = libvirtDomain(ctx.core, name);
      if (!rec.computer.hardOff())
        fail(
          1,
          `error: Failed to destroy domain '${name}'\nerror: Requested operation is not valid: domain is not running`,
        );
      await ctx.out(`Domain '${name}' destroyed\n\n`);
      return 0;
    }
    case 'start': {
      const rec = libvirtDomain(ctx.core, name);
      if (!rec.computer.powerOn())
        fail(
          1,
          `error: Failed to start domain '${name}'\nerror: Requested operation is not valid: domain is already active`,
        );
      await ctx.out(`Domain '${name}' started\n\n`);
      return 0;
    }
    case 'undefine': {
      const rec = libvirtDomain(ctx.core, name);
      rec.defined = false;
      await ctx.out(`Domain '${name}' has been undefined\n\n`);
      return 0;
    }
    case 'dumpxml':
      await ctx.out(dumpxml(libvirtDomain(ctx.core, name)));
      return 0;
    case 'event':
      return await event(ctx, args);
    case 'list': {
      const all = args.includes('--all');
      const rows = [' Id   Name                 State', '-----------------------------------------'];
      let id = 0;
      for (const rec of ctx.core.computers.values()) {
        if (rec.provisioner !== 'libvirt' || (!rec.defined && rec.computer.power === 'off')) continue;
        const on = rec.computer.power !== 'off';
        id++;
        if (!on && !all) continue;
        rows.push(
          ` ${on ? String(id).padEnd(4) : '-   '} ${rec.info.name.padEnd(20)} ${stateText(rec, false)}`,
        );
      }
      await ctx.out(`${rows.join('\n')}\n\n`);
      return 0;
    }
    case undefined:
      fail(1, 'error: command is required');
      break;
    default:
      fail(1, `error: unknown command: '${sub}'`);
  }
  return 1;
};

const FORMATS = new Set(['qcow2', 'raw', 'vmdk', 'vdi', 'vpc', 'vhdx', 'qed']);

function lockError(path: string): never {
  fail(
    1,
    `qemu-img: Could not open '${path}': Failed to get shared "write" lock\nIs another process using the image [${path}]?`,
  );
}

async function openImage(ctx: CommandContext, path: string, force: boolean) {
  const f = await ctx.host.fs.prepare(path);
  const st = await statOf(f.real);
  if (st === undefined)
    fail(1, `qemu-img: Could not open '${path}': Could not open '${path}': No such file or directory`);
  if (st.isDirectory()) fail(1, `qemu-img: Could not open '${path}': Is a directory`);
  if (!force && diskInUse(ctx.core, ctx.host.name, f.path) !== undefined) lockError(path);
  return { ...f, st };
}

const qemuImg: Handler = async (ctx) => {
  const [sub, ...rest] = ctx.argv.slice(1);
  const { flags, values, operands } = options(
    rest.map((a) => (a === '--output=json' ? '-J' : a)),
    ['-O', '-f', '-o', '-t', '-T'],
  );
  const force = flags.has('U');
  switch (sub) {
    case 'info': {
      const path = operands[0];
      if (path === undefined) fail(1, 'qemu-img: Expecting one image file name');
      const img = await openImage(ctx, path, force);
      const format = ctx.host.fs.formatOf(img.path);
      const info = {
        'virtual-size': img.st.size,
        filename: path,
        ...(format === 'qcow2' ? { 'cluster-size': 65536 } : {}),
        format,
        'actual-size': img.st.blocks * 512,
        ...(format === 'qcow2'
          ? {
              'format-specific': {
                type: 'qcow2',
                data: {
                  compat: '1.1',
                  'lazy-refcounts': false,
                  'refcount-bits': 16,
                  corrupt: false,
                  'extended-l2': false,
                },
              },
            }
          : {}),
        'dirty-flag': false,
      };
      if (flags.has('J')) await ctx.out(`${JSON.stringify(info, null, 4)}\n`);
      else
        await ctx.out(
          `image: ${path}\nfile format: ${format}\nvirtual size: ${img.st.size} bytes\ndisk size: ${img.st.blocks * 512} bytes\n`,
        );
      return 0;
    }
    case 'convert': {
      const format = values.get('-O') ?? 'raw';
      if (!FORMATS.has(format)) fail(1, `qemu-img: Unknown file format '${format}'`);
      const [src, dst] = operands;
      if (src === undefined || dst === undefined) fail(1, 'qemu-img: Expecting image file name');
      const img = await openImage(ctx, src, force);
      const out = await ctx.host.fs.prepare(dst);
      const dir = await statOf(out.real.slice(0, out.real.lastIndexOf('/')));
      if (dir === undefined || !dir.isDirectory())
        fail(
          1,
          `qemu-img: ${dst}: error while converting ${format}: Could not create '${dst}': No such file or directory`,
        );
      await ctx.core.beforeRead(ctx.host, img.path, img.real);
      let done = 0;
      try {
        // qemu-img convert leaves zero runs of 4 KiB unwritten (its `-S 4k` default): sparse output.
        await copySparse(img.real, out.real, {
          signal: ctx.signal,
          beforeWrite: (n) => ctx.core.checkWrite(ctx.host.name, n),
          zeroBlock: 4096,
        });
        done = img.st.size;
      } catch (err) {
        if (err instanceof NoSpaceError)
          fail(1, `qemu-img: error while writing at byte ${done}: No space left on device`);
        if (ctx.signal.aborted) throw err;
        fail(1, `qemu-img: error while converting ${format}: ${errnoText(err)}`);
      }
      ctx.host.fs.formats.set(out.path, format);
      return 0;
    }
    case 'check': {
      const path = operands[0];
      if (path === undefined) fail(1, 'qemu-img: Expecting one image file name');
      const img = await openImage(ctx, path, force);
      const format = values.get('-f') ?? ctx.host.fs.formatOf(img.path);
      if (format !== 'qcow2' && format !== 'vdi' && format !== 'qed' && format !== 'vhdx')
        fail(63, 'qemu-img: This image format does not support checks');
      if (!flags.has('q')) {
        const clusters = Math.ceil(img.st.size / 65536);
        await ctx.out(
          `No errors were found on the image.\n${clusters}/${clusters} = 100.00% allocated, 0.00% fragmented, 0.00% compressed clusters\nImage end offset: ${img.st.size}\n`,
        );
      }
      return 0;
    }
    default:
      fail(1, `qemu-img: Command not found: ${sub ?? ''}`);
  }
};

export const LIBVIRT_COMMANDS: ReadonlyMap<string, Handler> = new Map([
  ['virsh', virsh],
  ['qemu-img', qemuImg],
]);
