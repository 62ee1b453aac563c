/**
 * The libvirt host: `virsh` (domstate, domblklist, shutdown, destroy, start, event, dumpxml, undefine,
 * list, create) and `qemu-img` (info, convert, check, create), in libvirt 8 / QEMU 6 output formats.
 * `virsh create` starts a transient boot-test domain from an XML file: it boots from its copy-on-write
 * overlay (its serial console, written to the file the XML names, shows the boot and then a login
 * prompt; a forwarded SSH port answers `bash`'s /dev/tcp probe with a banner) and vanishes when destroyed.
 * The `doesNotBoot` fault makes it hang or panic instead. A running domain
 * holds its disk's write lock: `qemu-img convert` or `check` on it fails as QEMU's does. Conversions are
 * byte copies (zero runs of 4 KiB left as holes) that record the target format, which `qemu-img info`
 * then reports.
 */

import { appendFile, readFile, writeFile } from 'node:fs/promises';
import { errnoText, options, statOf } from '../../lab/commands/posix.js';
import type { CommandContext, ComputerRecord, Handler, LabCore } from '../../lab/core.js';
import { diskInUse, fail, NoSpaceError } from '../../lab/core.js';
import { hostMatches, pathMatches } from '../../lab/faults.js';
import { copySparse } from '../../lab/fs.js';
import { SSH_BANNER_SCRIPT } from './commands.js';

/** A transient domain `virsh create` started (a boot test's): gone from the lab once destroyed. */
interface TransientDomain {
  name: string;
  host: string;
  overlay: string;
  /** Real path of the file its serial console writes to. */
  console: string | undefined;
  /** The libvirt host's loopback port it forwards to the guest's SSH. */
  port: number | undefined;
  booted: boolean;
  timers: NodeJS.Timeout[];
}

/** Live transient domains of each running lab; a lab's are dropped when it stops. */
const transient = new Map<LabCore, Map<string, TransientDomain>>();
/** Overlays `qemu-img create -b` made, by host and path: their backing image. */
const backing = new Map<LabCore, Map<string, string>>();

function labState<T>(all: Map<LabCore, Map<string, T>>, core: LabCore): Map<string, T> {
  let m = all.get(core);
  if (m === undefined) {
    m = new Map();
    all.set(core, m);
    core.stopping.addEventListener(
      'abort',
      () => {
        for (const d of transient.get(core)?.values() ?? []) for (const t of d.timers) clearTimeout(t);
        transient.delete(core);
        backing.delete(core);
      },
      { once: true },
    );
  }
  return m;
}

/** Names of the transient (boot test) domains alive in any lab of this process, for tests. */
export function labTransientDomains(): string[] {
  return [...transient.values()].flatMap((m) => [...m.keys()]);
}

const unescapeXml = (v: string) =>
  v
    .replace(/&apos;/g, "'")
    .replace(/&quot;/g, '"')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');

/** Milliseconds the lab's guest takes from `virsh create` to its login prompt. */
const LAB_BOOT_MS = 150;

async function createTransient(ctx: CommandContext, file: string | undefined): Promise<number> {
  if (file === undefined) fail(1, "error: command 'create' requires <file> option");
  const f = await ctx.host.fs.prepare(file);
  const xml = await readFile(f.real, 'utf8').catch(() =>
    fail(
      1,
      `error: Failed to read file '${file}' to create domain\nerror: Failed to open file '${file}': No such file or directory`,
    ),
  );
  const name = /<name>([^<]+)<\/name>/.exec(xml)?.[1];
  const disk = /<disk\b[^>]*device='disk'[^>]*>[\s\S]*?<source file='([^']+)'/.exec(xml)?.[1];
  if (name === undefined || disk === undefined)
    fail(1, `error: Failed to create domain from ${file}\nerror: XML error: missing name or disk source`);
  const domains = labState(transient, ctx.core);
  const clash = domains.get(name) ?? ctx.core.computers.get(name);
  if (clash !== undefined)
    fail(
      1,
      `error: Failed to create domain from ${file}\nerror: operation failed: domain '${name}' already exists`,
    );
  const overlay = unescapeXml(disk);
  const o = await ctx.host.fs.prepare(overlay);
  if ((await statOf(o.real)) === undefined)
    fail(
      1,
      `error: Failed to create domain from ${file}\nerror: Cannot access storage file '${overlay}': No such file or directory`,
    );
  const consolePath = /<serial type='file'>\s*<source path='([^']+)'/.exec(xml)?.[1];
  const console =
    consolePath === undefined ? undefined : (await ctx.host.fs.prepare(unescapeXml(consolePath))).real;
  const port = /hostfwd=tcp:127\.0\.0\.1:(\d+)-:22/.exec(xml)?.[1];
  const image = labState(backing, ctx.core).get(`${ctx.host.name}:${overlay}`) ?? overlay;
  const fault = ctx.core.faults.take(
    'doesNotBoot',
    (x) => hostMatches(x.host, ctx.host.name) && pathMatches(x.image, image),
  );
  const d: TransientDomain = {
    name,
    host: ctx.host.name,
    overlay,
    console,
    port: port === undefined ? undefined : Number(port),
    booted: false,
    timers: [],
  };
  const write = (text: string) => (console === undefined ? Promise.resolve() : appendFile(console, text));
  if (console !== undefined)
    await writeFile(console, 'SeaBIOS (version 1.16.0)\r\nBooting from Hard Disk...\r\n');
  const later = (ms: number, fn: () => Promise<void>) => {
    const t = setTimeout(() => void fn().catch(() => undefined), ms);
    t.unref();
    d.timers.push(t);
  };
  if (fault?.mode === 'panic')
    later(LAB_BOOT_MS, async () => {
      await write('Kernel panic - not syncing: No working init found.\r\n');
      domains.delete(name);
    });
  else if (fault === undefined)
    later(LAB_BOOT_MS, async () => {
      await write(`\r\nDebian GNU/Linux 12 ${name} ttyS0\r\n\r\n${name} login: `);
      d.booted = true;
    });
  domains.set(name, d);
  await ctx.out(`Domain '${name}' created from ${file}\n\n`);
  return 0;
}

/** virsh subcommands on a transient domain; undefined when `name` is not one. */
async function onTransient(ctx: CommandContext, sub: string | undefined, name: string | undefined) {
  const domains = labState(transient, ctx.core);
  const d = name === undefined ? undefined : domains.get(name);
  if (d === undefined) return undefined;
  switch (sub) {
    case 'domstate':
      await ctx.out(`running (booted)\n\n`);
      return 0;
    case 'destroy':
      for (const t of d.timers) clearTimeout(t);
      domains.delete(d.name);
      await ctx.out(`Domain '${d.name}' destroyed\n\n`);
      return 0;
    case 'undefine':
      fail(
        1,
        `error: Failed to undefine domain '${d.name}'\nerror: Requested operation is not valid: cannot undefine transient domain`,
      );
      break;
    default:
      fail(1, `error: the lab does not play virsh ${sub ?? ''} on a transient domain`);
  }
  return 1;
}

/**
 * bash, for the boot test's SSH check only (SSH_BANNER_SCRIPT): a forwarded port of a booted guest
 * answers with its banner; one not booted yet accepts and closes (QEMU's user network does); a port no
 * domain forwards refuses.
 */
const bash: Handler = async (ctx) => {
  const [, flag, script, , port] = ctx.argv;
  if (flag !== '-c' || script !== SSH_BANNER_SCRIPT)
    fail(2, "bash: the lab plays only the boot test's SSH probe");
  const d = [...labState(transient, ctx.core).values()].find(
    (x) => x.host === ctx.host.name && x.port !== undefined && String(x.port) === port,
  );
  if (d === undefined)
    fail(
      1,
      `bash: connect: Connection refused\nbash: line 1: /dev/tcp/127.0.0.1/${port}: Connection refused`,
    );
  if (!d.booted) return 1;
  await ctx.out('SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n');
  return 0;
};

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
  const onOne = await onTransient(ctx, sub, name);
  if (onOne !== undefined) return onOne;
  switch (sub) {
    case 'create':
      return await createTransient(ctx, name);
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
      for (const d of labState(transient, ctx.core).values())
        if (d.host === ctx.host.name) rows.push(` ${String(++id).padEnd(4)} ${d.name.padEnd(20)} running`);
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
    ['-O', '-f', '-o', '-t', '-T', '-b', '-F'],
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
    case 'create': {
      const [overlay] = operands;
      const back = values.get('-b');
      const format = values.get('-f') ?? 'raw';
      if (overlay === undefined) fail(1, 'qemu-img: Expecting image file name');
      if (back === undefined) fail(1, 'qemu-img: Image creation needs a size parameter');
      const backFormat = values.get('-F');
      if (backFormat === undefined)
        fail(1, `qemu-img: ${overlay}: Backing file specified without backing format`);
      // qemu-img opens the backing file (read-only, shared) for its size.
      const base = await openImage(ctx, back, false);
      if (ctx.host.fs.formatOf(base.path) !== backFormat)
        fail(1, `qemu-img: ${overlay}: Could not open '${back}': Image is not in ${backFormat} format`);
      const out = await ctx.host.fs.prepare(overlay);
      await writeFile(out.real, Buffer.alloc(196_608)).catch((err: unknown) =>
        fail(1, `qemu-img: ${overlay}: Could not create '${overlay}': ${errnoText(err)}`),
      );
      ctx.host.fs.formats.set(out.path, format);
      labState(backing, ctx.core).set(`${ctx.host.name}:${out.path}`, base.path);
      await ctx.out(
        `Formatting '${overlay}', fmt=${format} cluster_size=65536 extended_l2=off compression_type=zlib size=${base.st.size} backing_file=${back} backing_fmt=${backFormat} lazy_refcounts=off refcount_bits=16\n`,
      );
      return 0;
    }
    default:
      fail(1, `qemu-img: Command not found: ${sub ?? ''}`);
  }
};

/** GNU chown `--reference=R -- FILE`: the lab's files have one owner, so only the paths are checked. */
const chown: Handler = async (ctx) => {
  const args = ctx.argv.slice(1);
  const ref = args.find((a) => a.startsWith('--reference='))?.slice('--reference='.length);
  const files = args.filter((a) => !a.startsWith('-'));
  if (ref === undefined || files.length === 0)
    fail(1, 'chown: the lab plays only chown --reference=RFILE FILE...');
  for (const path of [ref, ...files]) {
    const f = await ctx.host.fs.prepare(path);
    if ((await statOf(f.real)) === undefined)
      fail(
        1,
        `chown: ${path === ref ? 'failed to get attributes of' : 'cannot access'} '${path}': No such file or directory`,
      );
  }
  return 0;
};

export const LIBVIRT_COMMANDS: ReadonlyMap<string, Handler> = new Map([
  ['virsh', virsh],
  ['qemu-img', qemuImg],
  ['bash', bash],
  ['chown', chown],
]);
