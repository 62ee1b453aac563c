/**
 * A private libvirt daemon for the end-to-end suite (recipe: shared/docs/real-vm-lab.md, "libvirt"):
 * `libvirtd` in session mode (`qemu:///session`), no systemd, D-Bus or network driver needed. Run as
 * root, the suite starts it as the unprivileged user `nobody` (root cannot have a session daemon); run as
 * anyone else, as that user. Its state, sockets and logs live in a temp folder (`XDG_*` point there), so
 * nothing outside it changes. Clients reach it with `qemu:///session?socket=<folder>/run/libvirt/libvirt-sock`
 * (root may use another user's socket), which is what the loopback sshd puts into `LIBVIRT_DEFAULT_URI`
 * for the runner's `virsh` commands.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { chownSync, closeSync, existsSync, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** Who runs the daemon and QEMU: `nobody` when we are root, else ourselves. */
export function daemonUser(): { uid: number; gid: number } | undefined {
  return process.getuid?.() === 0 ? { uid: 65534, gid: 65534 } : undefined;
}

export interface CommandResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export function run(cmd: string, args: string[], env?: NodeJS.ProcessEnv, timeoutMs = 60_000) {
  return new Promise<CommandResult>((resolve) => {
    execFile(
      cmd,
      args,
      { encoding: 'utf8', timeout: timeoutMs, env: env ?? process.env, maxBuffer: 16 * 1024 * 1024 },
      (err, stdout, stderr) => {
        const code = err ? (typeof err.code === 'number' ? err.code : null) : 0;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

export interface Libvirtd {
  /** The folder holding the daemon's XDG folders and log. */
  dir: string;
  uri: string;
  pid: number;
  logFile: string;
  /** Milliseconds from spawn to the first successful `virsh list`. */
  startMs: number;
  virsh(args: string[], timeoutMs?: number): Promise<CommandResult>;
  /** `virsh domstate` without the reason: `running`, `shut off`... */
  domstate(domain: string): Promise<string>;
  /** Polls until the domain is in `state`, or throws after `timeoutMs`. */
  waitState(domain: string, state: string, timeoutMs: number): Promise<number>;
  /** Destroys and undefines every domain, then stops the daemon. Safe to call twice. */
  stop(): Promise<void>;
}

export interface DomainSpec {
  name: string;
  /** Direct kernel boot: the kernel and initramfs QEMU loads (and loads again on every reset). */
  kernel?: string;
  initramfs?: string;
  /**
   * Network boot instead: the NIC's iPXE ROM boots first, QEMU's user network answers DHCP with
   * `bootfile` and serves `tftpboot` over TFTP; `sercon` is SeaBIOS's serial console port file.
   */
  netboot?: { tftpboot: string; bootfile: string; rom: string; sercon: string };
  disk: string;
  serialLog: string;
  /** Loopback port forwarded to the guest's port 22. */
  sshPort: number;
  memoryMiB?: number;
}

/** Domain XML: direct kernel or network boot, virtio disk, user networking with a loopback port forward. */
export function domainXml(d: DomainSpec): string {
  const esc = (s: string) =>
    s.replaceAll('&', '&amp;').replaceAll('<', '&lt;').replaceAll('>', '&gt;').replaceAll("'", '&apos;');
  const nb = d.netboot;
  return `<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>${esc(d.name)}</name>
  <memory unit='MiB'>${d.memoryMiB ?? 256}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>${
      d.kernel === undefined
        ? ''
        : `
    <kernel>${esc(d.kernel)}</kernel>
    <initrd>${esc(d.initramfs ?? '')}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>`
    }
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='${esc(d.disk)}'/>
      <target dev='vda' bus='virtio'/>${nb ? "\n      <boot order='2'/>" : ''}
    </disk>
    <serial type='file'><source path='${esc(d.serialLog)}' append='on'/><target port='0'/></serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-netdev'/>
    <qemu:arg value='user,id=n0,${nb ? `tftp=${esc(nb.tftpboot)},bootfile=${esc(nb.bootfile)},` : ''}hostfwd=tcp:127.0.0.1:${d.sshPort}-:22'/>
    <qemu:arg value='-device'/>
    <qemu:arg value='virtio-net-pci,netdev=n0,romfile=${nb ? `${esc(nb.rom)},bootindex=1,disable-legacy=on` : ''},bus=pci.0,addr=0x10'/>${
      nb
        ? `
    <qemu:arg value='-fw_cfg'/>
    <qemu:arg value='name=etc/sercon-port,file=${esc(nb.sercon)}'/>`
        : ''
    }
  </qemu:commandline>
</domain>
`;
}

/** Starts libvirtd in session mode with its state under `dir` (created, owned by the daemon's user). */
export async function startLibvirtd(dir: string): Promise<Libvirtd> {
  const user = daemonUser();
  const xdg = {
    HOME: join(dir, 'home'),
    XDG_RUNTIME_DIR: join(dir, 'run'),
    XDG_CONFIG_HOME: join(dir, 'config'),
    XDG_CACHE_HOME: join(dir, 'cache'),
  };
  for (const d of [dir, ...Object.values(xdg), join(xdg.XDG_CONFIG_HOME, 'libvirt')]) {
    mkdirSync(d, { recursive: true, mode: 0o700 });
    if (user) chownSync(d, user.uid, user.gid);
  }
  // QEMU's output to a file rather than through virtlogd: one daemon less to start and stop.
  const qemuConf = join(xdg.XDG_CONFIG_HOME, 'libvirt', 'qemu.conf');
  writeFileSync(qemuConf, 'stdio_handler = "file"\n');
  if (user) chownSync(qemuConf, user.uid, user.gid);
  const socket = join(xdg.XDG_RUNTIME_DIR, 'libvirt', 'libvirt-sock');
  const uri = `qemu:///session?socket=${socket}`;
  const logFile = join(dir, 'libvirtd.log');
  const clientEnv = { ...process.env, LIBVIRT_DEFAULT_URI: uri };

  const started = Date.now();
  const logFd = openSync(logFile, 'a');
  const child: ChildProcess = spawn('libvirtd', [], {
    stdio: ['ignore', logFd, logFd],
    env: { PATH: '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', ...xdg },
    ...(user ? { uid: user.uid, gid: user.gid } : {}),
  });
  closeSync(logFd);
  let exited: string | undefined;
  child.on('exit', (code, signal) => {
    exited = `libvirtd exited (code ${code}, signal ${signal})`;
  });
  const pid = child.pid ?? 0;

  const virsh = (args: string[], timeoutMs = 60_000) => run('virsh', args, clientEnv, timeoutMs);
  const failStart = async (why: string) => {
    child.kill('SIGKILL');
    const log = existsSync(logFile) ? readFileSync(logFile, 'utf8').slice(-3000) : '';
    throw new Error(`${why}; libvirtd log:\n${log}`);
  };
  for (;;) {
    if (exited) await failStart(exited);
    if (existsSync(socket) && (await virsh(['list', '--all'], 10_000)).code === 0) break;
    if (Date.now() - started > 30_000) await failStart('libvirtd did not answer within 30 s');
    await sleep(100);
  }
  const startMs = Date.now() - started;

  const domstate = async (domain: string) => {
    const r = await virsh(['domstate', domain]);
    if (r.code !== 0) throw new Error(`virsh domstate ${domain}: ${r.stderr.trim()}`);
    return r.stdout.trim();
  };

  let stopped = false;
  return {
    dir,
    uri,
    pid,
    logFile,
    startMs,
    virsh,
    domstate,
    async waitState(domain, state, timeoutMs) {
      const t0 = Date.now();
      for (;;) {
        const now = await domstate(domain);
        if (now === state) return Date.now() - t0;
        if (Date.now() - t0 > timeoutMs)
          throw new Error(`domain ${domain} is '${now}', not '${state}', after ${timeoutMs} ms`);
        await sleep(100);
      }
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      if (!exited) {
        const list = await virsh(['list', '--all', '--name'], 10_000);
        for (const name of list.stdout
          .split('\n')
          .map((l) => l.trim())
          .filter(Boolean)) {
          await virsh(['destroy', name], 10_000);
          await virsh(['undefine', name], 10_000);
        }
        child.kill('SIGTERM');
        const until = Date.now() + 5000;
        while (!exited && Date.now() < until) await sleep(20);
        if (!exited) child.kill('SIGKILL');
      }
    },
  };
}
