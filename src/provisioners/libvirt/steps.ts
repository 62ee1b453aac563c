/**
 * libvirt/KVM steps over SSH to the libvirt host (docs/capture-flow.md, "libvirt / KVM").
 * The disk is converted with `qemu-img convert` on the libvirt host, straight into the repository when
 * the repository lives on that host, else into a staging file that is streamed to the repository with
 * its sha256 computed in the same pass.
 */
import { posix } from 'node:path';
import type { CaptureStepInput, Facts } from '../../../machines/index.js';
import { sleep } from '../../drivers/contract.js';
import {
  checkConversion,
  convertIntoRepository,
  removeConversion,
  stagingFile,
} from '../../drivers/convert.js';
import { type DriverEnv, execFor, provisionerSettings, repositoryPath, sameHost } from '../../drivers/env.js';
import { driverError } from '../../drivers/errors.js';
import { type Checklist, checkHosts, preflightStep } from '../../drivers/preflight.js';
import { formatBytes } from '../../drivers/preflight-commands.js';
import { verifyArtifact } from '../../drivers/verify.js';
import type { SshHost } from '../../ssh/index.js';
import type { PreflightRun, CaptureStep as Step } from '../types.js';
import {
  firstDisk,
  libvirt,
  lifecycleWaitTimedOut,
  parseDomblklist,
  parseDomstate,
  parseImageInfo,
} from './commands.js';

function settings(env: DriverEnv) {
  return provisionerSettings(env, 'libvirt');
}

export function imageFileName(input: CaptureStepInput, format: string): string {
  return `${input.image.name}.${format}`;
}

/** Where the copy is made on the libvirt host before it reaches the repository. */
function stagingPath(env: DriverEnv, input: CaptureStepInput, disk: string): string {
  const format = settings(env).format;
  return sameHost(env.provisionerHost, env.repository.host)
    ? repositoryPath(env, imageFileName(input, format))
    : stagingFile(posix.dirname(disk), input.captureId, format);
}

async function domainState(env: DriverEnv, run: Parameters<Step>[0]) {
  const exec = execFor(env, run);
  return parseDomstate((await exec(env.provisionerHost, libvirt.domstate(settings(env).domain))).stdout)
    .state;
}

/** libvirt hosts whose virsh answered that it has no `event` command (libvirt before 1.2.3). */
const noLifecycleEvents = new WeakSet<SshHost>();
const eventsSupported = (h: SshHost) => !noLifecycleEvents.has(h);
/** Time the event command's own deadline allows past virsh's timeout (connection, output, exit). */
const EVENT_GRACE_MS = 5000;

/**
 * Seconds one `virsh event` may wait (whole seconds, as virsh takes them): ten poll intervals, at least
 * one second, at most 60 and never past the step's deadline (rounded down, at least 1).
 */
export function eventWaitSeconds(pollMs: number, remainingMs: number): number {
  const wanted = Math.min(60, Math.max(1, Math.ceil((10 * pollMs) / 1000)));
  return Math.max(1, Math.min(wanted, Math.floor(remainingMs / 1000)));
}

/** virsh's words for a domain it does not know (`virsh domstate` exits 1 with them). */
const UNKNOWN_DOMAIN = /failed to get domain|Domain not found/;

/**
 * The libvirt preflight (inspect_domain, and `vcl-capture preflight`): the libvirt and repository hosts
 * reachable with their tools; the domain defined with a file or block disk qemu-img can read; the target
 * free in the repository (`target`: false when no image name is known, from the CLI); room for the copy
 * in the repository and, when the repository is another host, in the staging folder beside the disk.
 * Returns the facts the capture goes on with, or undefined when a check failed (collecting checklist).
 */
export async function libvirtPreflight(
  env: DriverEnv,
  run: PreflightRun,
  list: Checklist,
  options: { target: boolean },
): Promise<Facts | undefined> {
  const { domain, format } = settings(env);
  const host = env.provisionerHost;
  const exec = execFor(env, run);
  if (!(await checkHosts(env, run, list))) {
    list.skip(`domain ${domain}`, 'a host on the path failed its check');
    return undefined;
  }
  const found = await list.check(`domain ${domain}`, async () => {
    const r = await exec(host, libvirt.domstate(domain), { check: false });
    if (r.code !== 0 && UNKNOWN_DOMAIN.test(r.stderr))
      throw driverError(
        'NOT_FOUND',
        `${host.name} has no domain ${domain}: define it there (virsh define) or fix provisioner.domain of ${env.computerName} in the inventory`,
        { domain },
      );
    if (r.code !== 0)
      throw driverError(
        'COMMAND_FAILED',
        `virsh domstate ${domain} on ${host.name} failed: ${r.stderr.trim()}`,
      );
    const state = parseDomstate(r.stdout);
    const disk = firstDisk(parseDomblklist((await exec(host, libvirt.domblklist(domain))).stdout));
    if (disk.type !== 'file' && disk.type !== 'block')
      throw driverError(
        'UNSUPPORTED_DISK',
        `${domain}'s first disk (${disk.target}) is a ${disk.type} disk; a capture copies file or block disks only`,
        { type: disk.type, source: disk.source },
      );
    const info = parseImageInfo((await exec(host, libvirt.imageInfo(disk.source))).stdout);
    return {
      value: { state: state.state, disk: disk.source, info },
      detail: `${state.state}, first disk ${disk.source} (${info.format}, ${formatBytes(info.actualSize ?? info.virtualSize)} allocated)`,
    };
  });
  if (!found) {
    list.skip('target', `domain ${domain} was not found`);
    return undefined;
  }
  const { disk, info } = found;
  const checked = await checkConversion(env, run, list, {
    target: options.target,
    host,
    format,
    stagingDir: posix.dirname(disk),
    virtualBytes: info.virtualSize,
    allocatedBytes: info.actualSize ?? info.virtualSize,
  });
  if (!checked) return undefined;
  const { target } = checked;
  run.log.info({ domain, state: found.state, disk, sourceFormat: info.format }, 'domain inspected');
  return { domain, disk, sourceFormat: info.format, ...(target === undefined ? {} : { target }) };
}

export function libvirtSteps(env: DriverEnv): Record<string, Step> {
  const { domain, format } = settings(env);
  const host = env.provisionerHost;

  /**
   * A power command that failed because the domain went off meanwhile (on its own, or by an earlier
   * attempt of this step that a crash interrupted) did what was asked; any other failure stands.
   */
  const unlessOff = async (run: Parameters<Step>[0], command: string[]) => {
    try {
      await execFor(env, run)(host, command);
    } catch (err) {
      if ((await domainState(env, run)) !== 'shut off') throw err;
      run.log.info({ command: command.slice(0, 2).join(' ') }, 'the domain is already off');
    }
  };

  /** The conversion of `disk` (unknown when the capture failed before inspect_domain) to `target`. */
  const conversion = (run: Parameters<Step>[0], target: string, disk: string | undefined) => ({
    host,
    target,
    staging: disk === undefined ? undefined : stagingPath(env, run.input, disk),
    format,
  });

  /**
   * Waits for the domain to be off on its lifecycle events (`virsh event`), reading its state after each:
   * three commands for a shutdown of any length instead of one every pollMs. Each event wait is bounded
   * (eventWaitSeconds) because an event that fires between the state read and virsh's subscription is
   * missed; the next state read then sees it. A virsh without `event` is polled.
   */
  const waitOff: Step = async (run) => {
    const exec = execFor(env, run);
    for (;;) {
      if ((await domainState(env, run)) === 'shut off') return {};
      if (!eventsSupported(host)) {
        await sleep(env.pollMs, run.signal);
        continue;
      }
      const seconds = eventWaitSeconds(env.pollMs, run.remainingMs());
      const r = await exec(host, libvirt.awaitLifecycle(domain, seconds), {
        check: false,
        timeoutMs: seconds * 1000 + EVENT_GRACE_MS,
      });
      if (r.code === 0 || lifecycleWaitTimedOut(r.stdout)) continue;
      if (/unknown command/i.test(r.stderr)) {
        noLifecycleEvents.add(host);
        run.log.info({ host: host.name }, 'virsh has no event command on this host: polling domstate');
      } else {
        run.log.warn(
          { host: host.name, code: r.code, stderr: r.stderr.trim().slice(0, 200) },
          'virsh event failed',
        );
        await sleep(env.pollMs, run.signal);
      }
    }
  };

  return {
    inspect_domain: preflightStep((run, list, options) => libvirtPreflight(env, run, list, options)),
    request_power_off: async (run) => {
      if ((await domainState(env, run)) !== 'shut off') await unlessOff(run, libvirt.shutdown(domain));
      return {};
    },
    wait_power_off: waitOff,
    force_power_off: async (run) => {
      // destroy fails on a domain that went off meanwhile: that is the state we wanted.
      if ((await domainState(env, run)) !== 'shut off') await unlessOff(run, libvirt.destroy(domain));
      return {};
    },
    wait_forced_off: waitOff,
    copy_image: (run) =>
      convertIntoRepository(env, run, {
        ...conversion(run, String(run.input.facts.target), String(run.input.facts.disk)),
        convert: (output) => libvirt.convert(String(run.input.facts.disk), format, output),
        check: libvirt.check,
      }),
    verify_image: (run) => verifyArtifact(env, run),
    remove_copy: async (run) => {
      const target = run.input.facts.target === undefined ? undefined : String(run.input.facts.target);
      const disk = run.input.facts.disk === undefined ? undefined : String(run.input.facts.disk);
      if (target) await removeConversion(env, run, conversion(run, target, disk));
      return {};
    },
  };
}
