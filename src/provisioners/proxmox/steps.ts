/**
 * Proxmox VE steps over SSH to the node that runs the VM: `qm` for its configuration and power, `pvesm
 * path` for where its disk lies, and the conversion shared with libvirt (src/drivers/convert.ts):
 * `qemu-img convert` on the node, straight into the repository when it lives on the node, else into a
 * staging file streamed to the repository with its sha256 taken in the same pass.
 */
import type { Facts } from '../../../machines/index.js';
import { sleep } from '../../drivers/contract.js';
import {
  checkConversion,
  convertIntoRepository,
  removeConversion,
  stagingFile,
} from '../../drivers/convert.js';
import { type DriverEnv, execFor, provisionerSettings, sameHost } from '../../drivers/env.js';
import { driverError } from '../../drivers/errors.js';
import { checkHosts, preflightStep } from '../../drivers/preflight.js';
import { formatBytes } from '../../drivers/preflight-commands.js';
import { verifyArtifact } from '../../drivers/verify.js';
import { parseImageInfo } from '../libvirt/commands.js';
import type { PreflightRun, Provisioner, CaptureStep as Step } from '../types.js';
import {
  bootOrder,
  chooseDisk,
  parsePvesmPath,
  parseQmConfig,
  parseQmStatus,
  pvesm,
  qemuImg,
  qm,
  shutdownTimedOut,
  TOOLS,
  UNKNOWN_VM,
} from './commands.js';

/** Where a copy is staged on the node when the repository is another host, unless the inventory says. */
export const DEFAULT_STAGING_DIR = '/var/lib/vz/dump';

function settings(env: DriverEnv) {
  return provisionerSettings(env, 'proxmox');
}

function stagingDir(env: DriverEnv): string {
  return settings(env).stagingDir ?? DEFAULT_STAGING_DIR;
}

async function vmStatus(env: DriverEnv, run: Parameters<Step>[0]): Promise<string> {
  const exec = execFor(env, run);
  return parseQmStatus((await exec(env.provisionerHost, qm.status(settings(env).vmid))).stdout);
}

/** Time a `qm shutdown --timeout` command's own deadline allows past qm's timeout. */
const SHUTDOWN_GRACE_MS = 5000;

/**
 * Seconds `qm shutdown --timeout` waits for the guest: the power-off timeout, within the request step's
 * deadline (less the grace its command needs), at least 1. A guest still running then is left to
 * wait_power_off, which escalates to `qm stop` when its own deadline passes.
 */
export function shutdownWaitSeconds(powerOffMs: number, remainingMs: number): number {
  return Math.max(1, Math.floor(Math.min(powerOffMs, remainingMs - SHUTDOWN_GRACE_MS) / 1000));
}

/**
 * The VM configured on the node, its disk (the only one, or the one `provisioner.disk` names), where
 * that disk's volume lies (`pvesm path`) and what qemu-img reads there.
 */
async function inspectVm(env: DriverEnv, run: PreflightRun) {
  const { vmid, disk: wanted } = settings(env);
  const host = env.provisionerHost;
  const exec = execFor(env, run);
  const r = await exec(host, qm.config(vmid), { check: false });
  if (r.code !== 0)
    throw UNKNOWN_VM.test(r.stderr)
      ? driverError(
          'NOT_FOUND',
          `${host.name} has no VM ${vmid}: fix provisioner.vmid (or provisioner.host, the node it runs on) of ${env.computerName} in the inventory`,
          { vmid },
        )
      : driverError('COMMAND_FAILED', `qm config ${vmid} on ${host.name} failed: ${r.stderr.trim()}`);
  const config = parseQmConfig(r.stdout);
  const disk = chooseDisk(config, wanted);
  // A host device passed through (`scsi1: /dev/disk/by-id/…`) is no volume of a storage: no pvesm path.
  if (disk.volid.startsWith('/'))
    throw driverError(
      'UNSUPPORTED_DISK',
      `${disk.key} of VM ${vmid} is the host device ${disk.volid} passed through, not a storage volume: a capture copies a volume (name another disk with provisioner.disk of ${env.computerName})`,
      { disk: disk.key, volid: disk.volid },
    );
  const source = parsePvesmPath((await exec(host, pvesm.path(disk.volid))).stdout, disk.volid);
  const info = parseImageInfo((await exec(host, qemuImg.info(source.path, source.format))).stdout);
  const status = parseQmStatus((await exec(host, qm.status(vmid))).stdout);
  // A block device's allocation is its storage's (LVM-thin, ZFS), which qemu-img info does not know:
  // the copy is assumed to take its whole size.
  const allocated = source.block ? info.virtualSize : (info.actualSize ?? info.virtualSize);
  const boots = bootOrder(config)[0] === disk.key ? ', its boot disk' : '';
  return {
    value: { status, disk, source, info, allocated },
    detail: `${status}; ${disk.key}${boots}: ${disk.volid} at ${source.path} (${source.block ? 'block device' : source.format}, ${formatBytes(info.virtualSize)})`,
  };
}

/** The registry's preflight, returning the facts a capture goes on with. */
type Preflight = (...args: Parameters<Provisioner['preflight']>) => Promise<Facts | undefined>;

/**
 * The Proxmox preflight (inspect_vm, and `vcl-capture preflight`): the node and repository hosts
 * reachable with their tools; the VM and its disk (inspectVm); the target free in the repository; room
 * for the copy in the repository and, when the repository is another host, in the staging folder.
 * Returns the facts the capture goes on with, or undefined when a check failed (collecting checklist).
 */
export const proxmoxPreflight: Preflight = async (env, run, list, options) => {
  const { vmid, format } = settings(env);
  const reached = await checkHosts(env, run, list, TOOLS);
  const vm = reached ? await list.check(`VM ${vmid}`, () => inspectVm(env, run)) : undefined;
  if (vm === undefined) {
    if (reached) list.skip('target', `the check of VM ${vmid} failed`);
    else list.skip(`VM ${vmid}`, 'a host on the path failed its check');
    return undefined;
  }
  const checked = await checkConversion(env, run, list, {
    target: options.target,
    host: env.provisionerHost,
    format,
    stagingDir: stagingDir(env),
    virtualBytes: vm.info.virtualSize,
    allocatedBytes: vm.allocated,
  });
  if (!checked) return undefined;
  run.log.info({ vmid, status: vm.status, disk: vm.disk.key, path: vm.source.path }, 'VM inspected');
  return {
    vmid,
    diskKey: vm.disk.key,
    disk: vm.source.path,
    sourceFormat: vm.source.format,
    ...(checked.target === undefined ? {} : { target: checked.target }),
  };
};

export function proxmoxSteps(env: DriverEnv): Record<string, Step> {
  const { vmid, format } = settings(env);
  const host = env.provisionerHost;

  /** The conversion to `target` (the staging file's name needs only the capture and the format). */
  const conversion = (run: Parameters<Step>[0], target: string) => ({
    host,
    target,
    staging: sameHost(host, env.repository.host)
      ? undefined
      : stagingFile(stagingDir(env), run.input.captureId, format),
    format,
  });

  const waitStopped: Step = async (run) => {
    while ((await vmStatus(env, run)) !== 'stopped') await sleep(env.pollMs, run.signal);
    return {};
  };

  return {
    inspect_vm: preflightStep((run, list, options) => proxmoxPreflight(env, run, list, options)),
    request_power_off: async (run) => {
      if ((await vmStatus(env, run)) === 'stopped') return {};
      const seconds = shutdownWaitSeconds(run.input.timeouts.powerOffMs, run.remainingMs());
      const r = await execFor(env, run)(host, qm.shutdown(vmid, seconds), {
        check: false,
        timeoutMs: seconds * 1000 + SHUTDOWN_GRACE_MS,
      });
      if (r.code === 0) return {};
      // The ACPI request was sent and the guest is still going down: wait_power_off goes on waiting.
      if (shutdownTimedOut(r.stderr)) {
        run.log.info({ vmid, seconds }, 'qm shutdown timed out; waiting for the VM to stop');
        return {};
      }
      // It failed because the VM stopped meanwhile (or an interrupted earlier attempt stopped it).
      if ((await vmStatus(env, run)) === 'stopped') return {};
      throw driverError('COMMAND_FAILED', `qm shutdown ${vmid} on ${host.name} failed: ${r.stderr.trim()}`);
    },
    wait_power_off: waitStopped,
    force_power_off: async (run) => {
      // qm stop of a VM that stopped meanwhile succeeds: that is the state we wanted.
      if ((await vmStatus(env, run)) !== 'stopped') await execFor(env, run)(host, qm.stop(vmid));
      return {};
    },
    wait_forced_off: waitStopped,
    copy_image: (run) => {
      const { facts } = run.input;
      return convertIntoRepository(env, run, {
        ...conversion(run, String(facts.target)),
        convert: (output) => qemuImg.convert(String(facts.disk), String(facts.sourceFormat), format, output),
        check: qemuImg.check,
      });
    },
    verify_image: (run) => verifyArtifact(env, run),
    remove_copy: async (run) => {
      const target = run.input.facts.target;
      if (target !== undefined) await removeConversion(env, run, conversion(run, String(target)));
      return {};
    },
  };
}
