/**
 * virsh and qemu-img command lines and output parsers for the libvirt driver. Pure: argv arrays in,
 * parsed values out; the transport quotes every word. Output formats follow virsh(1) and qemu-img(1).
 */
import { driverError } from '../../drivers/errors.js';
import type { PathTools } from '../../drivers/preflight-commands.js';

/** The programs its path runs, for the preflight (`vcl-capture preflight`, its check step). */
export const TOOLS: PathTools = { host: ['virsh', 'qemu-img', 'sha256sum', 'stat', 'sync', 'df'] };

export const libvirt = {
  domstate: (domain: string) => ['virsh', 'domstate', domain, '--reason'],
  domblklist: (domain: string) => ['virsh', 'domblklist', domain, '--details'],
  shutdown: (domain: string) => ['virsh', 'shutdown', domain],
  destroy: (domain: string) => ['virsh', 'destroy', domain],
  /** Blocks until the domain's next lifecycle event or `seconds` pass (virsh >= 1.2.3; polling is the fallback). */
  awaitLifecycle: (domain: string, seconds: number) => [
    'virsh',
    'event',
    '--domain',
    domain,
    '--event',
    'lifecycle',
    '--timeout',
    String(Math.max(1, Math.ceil(seconds))),
  ],
  imageInfo: (path: string) => ['qemu-img', 'info', '--output=json', '-U', path],
  convert: (source: string, format: string, target: string) => [
    'qemu-img',
    'convert',
    '-O',
    format,
    source,
    target,
  ],
  check: (path: string) => ['qemu-img', 'check', '-q', path],
  /** The domain's persistent definition (what `virsh define` was given), not the running one's. */
  dumpxml: (domain: string) => ['virsh', 'dumpxml', '--inactive', domain],
  /** A copy-on-write overlay over `image`: writes go to the overlay, the image is only read. */
  overlay: (image: string, format: string, overlay: string) => [
    'qemu-img',
    'create',
    '-f',
    'qcow2',
    '-b',
    image,
    '-F',
    format,
    overlay,
  ],
  /** Gives `path` the owner and group of `like` (GNU chown). */
  ownLike: (like: string, path: string) => ['chown', `--reference=${like}`, '--', path],
  /** Starts a transient domain from an XML file: it has no definition and vanishes when destroyed. */
  create: (xmlFile: string) => ['virsh', 'create', xmlFile],
};

/** A console line a booted Linux guest prints: getty's `<hostname> login:` prompt. */
export const DEFAULT_BOOT_PATTERN = 'login:';

/**
 * The SSH check, run on the libvirt host (bash's /dev/tcp): connects to 127.0.0.1:$1 and prints the first
 * line the server sends, waiting at most $2 seconds for it. Exit 1 when nothing listens there yet.
 */
export const SSH_BANNER_SCRIPT =
  'exec 3<>"/dev/tcp/127.0.0.1/$1" && IFS= read -r -t "$2" line <&3 && printf "%s\\n" "$line"';

/** The SSH check's command: `seconds` bounds the wait for the banner once connected. */
export function sshBannerProbe(port: number, seconds: number): string[] {
  return [
    'bash',
    '-c',
    SSH_BANNER_SCRIPT,
    'vcl-boot-probe',
    String(port),
    String(Math.max(1, Math.ceil(seconds))),
  ];
}

/** virsh's words for a domain that does not exist (any command naming it exits 1 with them). */
export const UNKNOWN_DOMAIN = /failed to get domain|Domain not found/;

/** A captured image's boot test: the throwaway domain and its files, all named after the capture. */
export interface BootTestNames {
  domain: string;
  overlay: string;
  xml: string;
  console: string;
}

/**
 * Names of a capture's boot test, deterministic so that a re-run after a crash finds what an earlier
 * attempt left: the domain `vcl-boot-<capture>` and hidden files in `dir` (beside the source disk).
 */
export function bootTestNames(dir: string, captureId: string): BootTestNames {
  if (!/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/.test(captureId))
    throw driverError(
      'PARSE_FAILED',
      `a capture id unfit for a domain or file name: ${JSON.stringify(captureId)}`,
    );
  const base = `${dir.replace(/\/+$/, '')}/.vcl-boot-${captureId}`;
  return {
    domain: `vcl-boot-${captureId}`,
    overlay: `${base}.qcow2`,
    xml: `${base}.xml`,
    console: `${base}.console.log`,
  };
}

function xmlAttr(value: string): string {
  return value
    .replace(/&/g, '&amp;')
    .replace(/</g, '&lt;')
    .replace(/>/g, '&gt;')
    .replace(/'/g, '&apos;')
    .replace(/"/g, '&quot;');
}

const QEMU_NS = 'http://libvirt.org/schemas/domain/qemu/1.0';

/**
 * The throwaway domain of a boot test, made from the captured domain's definition (`virsh dumpxml
 * --inactive`, which libvirt prints in one canonical layout): its name, no uuid (libvirt makes one), the
 * first disk reading the overlay, no other disk (they belong to the real domain, which must not be
 * written), no network interface (a clone of the computer must not appear on its network with its
 * identity), the serial console written to `console` (read by the console check, and quoted in a
 * failure); for the SSH check, one user-mode network that forwards `ssh.address:ssh.port` to the guest's
 * port 22 (its NIC without an option ROM: the test boots from disk, and hosts without ipxe's ROMs could
 * not start it), and nothing else of the original's QEMU pass-through arguments.
 */
export function bootTestDomainXml(
  source: string,
  t: { names: BootTestNames; ssh?: { address: string; port: number } },
): string {
  const { names } = t;
  if (!/<domain\b/.test(source) || !/<devices>/.test(source))
    throw driverError('PARSE_FAILED', 'virsh dumpxml printed no <domain> with <devices>');
  let xml = source
    .replace(/<name>[^<]*<\/name>/, `<name>${xmlAttr(names.domain)}</name>`)
    .replace(/\s*<uuid>[^<]*<\/uuid>/, '')
    .replace(/\s*<interface\b[\s\S]*?<\/interface>/g, '')
    // The devices, which always carry a type: not a disk's own `<serial>WD-123</serial>` (its by-id name).
    .replace(/\s*<(serial|console)\s[^>]*\/>/g, '')
    .replace(/\s*<(serial|console)\s[^>]*>[\s\S]*?<\/\1>/g, '')
    .replace(/\s*<qemu:commandline>[\s\S]*?<\/qemu:commandline>/g, '');
  let first = true;
  xml = xml.replace(
    /(\s*)<disk\b([^>]*)>([\s\S]*?)<\/disk>/g,
    (whole, indent: string, attrs: string, body: string) => {
      if (!/device=['"]disk['"]/.test(attrs) || !/<source\b/.test(body))
        return /device=['"]disk['"]/.test(attrs) ? '' : whole;
      if (!first) return '';
      first = false;
      const inner = body
        .replace(/<driver\b[^>]*\/>/, "<driver name='qemu' type='qcow2'/>")
        .replace(
          /<source\b[^>]*\/>|<source\b[^>]*>[\s\S]*?<\/source>/,
          `<source file='${xmlAttr(names.overlay)}'/>`,
        )
        // The overlay names its backing file itself. A chain given in the definition nests (its own
        // <format/>, <source/> and next <backingStore>): all of it goes, up to its last closing tag.
        .replace(/\s*<backingStore\b(?:[^>]*\/>|[\s\S]*<\/backingStore>)/, '');
      return `${indent}<disk type='file' device='disk'>${inner}</disk>`;
    },
  );
  if (first)
    throw driverError('NO_DISK', 'the domain definition has no disk with a source to boot the image from');
  const consoleLog = `    <serial type='file'>\n      <source path='${xmlAttr(names.console)}'/>\n      <target port='0'/>\n    </serial>\n    <console type='file'>\n      <source path='${xmlAttr(names.console)}'/>\n      <target type='serial' port='0'/>\n    </console>\n  </devices>`;
  xml = xml.replace(/\s*<\/devices>/, `\n${consoleLog}`);
  if (t.ssh) {
    const fwd = `user,id=vclboot,hostfwd=tcp:${t.ssh.address}:${t.ssh.port}-:22`;
    // QEMU places a device without an address before libvirt's own, taking the slot libvirt gave one of
    // them (the real e2e: "slot 2 function 0 not available for virtio-blk-pci, in use by virtio-net-pci"):
    // it gets a root bus slot no device of the definition uses.
    const { bus, slot } = freeRootSlot(xml);
    const nic = `virtio-net-pci,netdev=vclboot,romfile=,bus=${bus},addr=0x${slot.toString(16)}`;
    const args = ['-netdev', fwd, '-device', nic]
      .map((a) => `    <qemu:arg value='${xmlAttr(a)}'/>`)
      .join('\n');
    xml = xml.replace(/<\/domain>\s*$/, `  <qemu:commandline>\n${args}\n  </qemu:commandline>\n</domain>\n`);
    if (!xml.includes(QEMU_NS)) xml = xml.replace(/<domain\b([^>]*)>/, `<domain$1 xmlns:qemu='${QEMU_NS}'>`);
  }
  return xml;
}

/**
 * A slot of the root PCI bus (`pci.0`; `pcie.0` on q35 machines) that no device of the definition has,
 * from the top down (libvirt fills slots from the bottom; q35's 0x1f is its LPC bridge).
 */
export function freeRootSlot(xml: string): { bus: string; slot: number } {
  const q35 = /<type\b[^>]*machine=['"][^'"]*q35/.test(xml);
  const used = new Set(
    [
      ...xml.matchAll(
        /<address\b(?=[^>]*type=['"]pci['"])(?=[^>]*bus=['"]0x0*0['"])[^>]*slot=['"](0x[0-9a-fA-F]+)['"]/g,
      ),
    ].map((m) => Number.parseInt(m[1] as string, 16)),
  );
  for (let slot = 0x1e; slot >= 0x03; slot--)
    if (!used.has(slot)) return { bus: q35 ? 'pcie.0' : 'pci.0', slot };
  throw driverError(
    'PARSE_FAILED',
    "the domain definition leaves no free slot on its root PCI bus for the boot test's NIC",
  );
}

/** Whether a guest's boot is visible: an SSH identification line (RFC 4253, 4.2) at the start of a banner. */
export function isSshBanner(data: string): boolean {
  return /^SSH-(2\.0|1\.99)-\S+/m.test(data);
}

/** `virsh event --timeout` that saw no event prints `event loop timed out` (and exits 1). */
export function lifecycleWaitTimedOut(stdout: string): boolean {
  return /^event loop timed out$/m.test(stdout);
}

export type DomainState =
  | 'running'
  | 'shut off'
  | 'paused'
  | 'in shutdown'
  | 'crashed'
  | 'pmsuspended'
  | 'idle'
  | 'blocked';

/** `virsh domstate --reason` prints e.g. `running (booted)` or `shut off (shutdown)`. */
export function parseDomstate(stdout: string): { state: DomainState; reason: string | undefined } {
  const m =
    /^\s*(running|shut off|paused|in shutdown|crashed|pmsuspended|idle|blocked)(?:\s+\(([^)]*)\))?\s*$/m.exec(
      stdout,
    );
  if (!m)
    throw driverError(
      'PARSE_FAILED',
      `cannot read virsh domstate output: ${JSON.stringify(stdout.slice(0, 200))}`,
    );
  return { state: m[1] as DomainState, reason: m[2] };
}

export interface BlockDevice {
  type: string;
  device: string;
  target: string;
  source: string;
}

/**
 * `virsh domblklist --details`:
 * ```
 *  Type   Device   Target   Source
 * ------------------------------------------------
 *  file   disk     vda      /var/lib/libvirt/images/vm1.qcow2
 *  file   cdrom    sda      -
 * ```
 */
export function parseDomblklist(stdout: string): BlockDevice[] {
  const lines = stdout.split('\n').map((l) => l.trim());
  const header = lines.findIndex((l) => /^Type\s+Device\s+Target\s+Source$/.test(l));
  if (header < 0)
    throw driverError('PARSE_FAILED', 'virsh domblklist printed no header (Type Device Target Source)');
  return lines
    .slice(header + 1)
    .filter((l) => l && !/^-+$/.test(l))
    .map((l) => {
      const [type = '', device = '', target = '', ...rest] = l.split(/\s+/);
      return { type, device, target, source: rest.join(' ') };
    });
}

/** The disk to capture: the first `disk` device with a file or block source. */
export function firstDisk(devices: BlockDevice[]): BlockDevice {
  const disk = devices.find((d) => d.device === 'disk' && d.source && d.source !== '-');
  if (!disk) throw driverError('NO_DISK', 'the domain has no disk with a source to capture');
  return disk;
}

/** `qemu-img info --output=json`: the fields we rely on. */
export function parseImageInfo(stdout: string): { format: string; virtualSize: number; actualSize?: number } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(stdout);
  } catch {
    throw driverError('PARSE_FAILED', 'qemu-img info did not print JSON');
  }
  const o = parsed as { format?: unknown; 'virtual-size'?: unknown; 'actual-size'?: unknown };
  if (typeof o.format !== 'string' || typeof o['virtual-size'] !== 'number')
    throw driverError('PARSE_FAILED', 'qemu-img info JSON lacks format or virtual-size');
  return {
    format: o.format,
    virtualSize: o['virtual-size'],
    ...(typeof o['actual-size'] === 'number' ? { actualSize: o['actual-size'] } : {}),
  };
}
