/**
 * VMware ESXi steps over SSH to the ESXi host (docs/capture-flow.md, "VMware"): locate the VM and its one disk,
 * power it off (escalating to a hard power off), thin-clone the disk with vmkfstools (one repair and retry
 * on "needs repair"), then stream the clone's data into the repository with its sha256 in the same pass.
 */
import { posix } from 'node:path';
import type { CaptureStepInput, CaptureStepOutput } from '../../machines/index.js';
import { pollUntil, type StepFn } from '../runner/step.js';
import { isSshError } from '../ssh/index.js';
import {
  copyOptions,
  type DriverEnv,
  execFor,
  exists,
  provisionerSettings,
  removeCopyLeftovers,
  repositoryPath,
} from './env.js';
import { driverError } from './errors.js';
import { verifyArtifact } from './verify.js';
import {
  datastorePath,
  needsRepair,
  noSpace,
  parseGetallvms,
  parsePowerState,
  parseVmxDisks,
  vmware,
} from './vmware-commands.js';

type Step = StepFn<CaptureStepInput, CaptureStepOutput>;

function settings(env: DriverEnv) {
  return provisionerSettings(env, 'vmware');
}

/** The thin clone: `/vmfs/volumes/<datastore>/<image>/<image>.vmdk`. */
function clonePath(datastore: string, input: CaptureStepInput): string {
  return `/vmfs/volumes/${datastore}/${input.image.name}/${input.image.name}.vmdk`;
}

/** A thin clone's data file beside its descriptor: `<image>-flat.vmdk`. */
function flatPath(clone: string): string {
  return clone.replace(/\.vmdk$/, '-flat.vmdk');
}

export function vmwareSteps(env: DriverEnv): Record<string, Step> {
  const { vm } = settings(env);
  const host = env.provisionerHost;
  const vmid = (input: CaptureStepInput) => Number(input.facts.vmid);

  const powerState = async (run: Parameters<Step>[0]) =>
    parsePowerState((await execFor(env, run)(host, vmware.powerState(vmid(run.input)))).stdout);
  const waitOff: Step = async (run) => {
    await pollUntil(run, env.pollMs, async () => ((await powerState(run)) === 'off' ? true : undefined));
    return {};
  };

  return {
    locate_vm: async (run) => {
      const exec = execFor(env, run);
      const vms = parseGetallvms((await exec(host, vmware.getallvms())).stdout).filter((v) => v.name === vm);
      if (vms.length === 0) throw driverError('NOT_FOUND', `no VM named ${vm} is registered on ${host.name}`);
      if (vms.length > 1) throw driverError('AMBIGUOUS', `${vms.length} VMs are named ${vm} on ${host.name}`);
      const found = vms[0] as (typeof vms)[number];
      const vmx = datastorePath(found.file);
      const disks = parseVmxDisks((await exec(host, vmware.readFile(vmx))).stdout);
      if (disks.length !== 1)
        throw driverError(
          'UNSUPPORTED_DISK',
          `${vm} has ${disks.length} disks; a capture needs exactly one`,
          {
            disks: disks.map((d) => d.fileName),
          },
        );
      const disk = disks[0] as (typeof disks)[number];
      if (disk.mode?.toLowerCase().startsWith('nonpersistent'))
        throw driverError('UNSUPPORTED_DISK', `${vm}'s disk is nonpersistent: its changes are never written`);
      const diskPath = disk.fileName.startsWith('/')
        ? disk.fileName
        : posix.join(posix.dirname(vmx), disk.fileName);
      const datastore =
        settings(env).datastore ?? /^\/vmfs\/volumes\/([^/]+)\//.exec(vmx)?.[1] ?? 'datastore1';
      return { facts: { vmid: found.vmid, vmx, disk: diskPath, datastore } };
    },
    check_target: async (run) => {
      const exec = execFor(env, run);
      const clone = clonePath(String(run.input.facts.datastore), run.input);
      const target = repositoryPath(env, `${run.input.image.name}.vmdk`);
      for (const [where, path] of [
        [host, clone],
        [env.repository.host, target],
      ] as const) {
        if (await exists(exec, where, path))
          throw driverError(
            'TARGET_EXISTS',
            `${path} already exists on ${where.name}; nothing is overwritten`,
            { path },
          );
      }
      return { facts: { clone, target } };
    },
    request_power_off: async (run) => {
      if ((await powerState(run)) === 'off') return {};
      // Without VMware Tools the guest shutdown is refused; the wait then times out and escalates.
      const r = await execFor(env, run)(host, vmware.shutdown(vmid(run.input)), { check: false });
      // After the OS's own shutdown its Tools stop first: a refusal for that reason is the expected case.
      if (r.code !== 0 && /ToolsUnavailable/.test(r.stderr))
        run.log.info('VMware Tools not running (the OS is going down); waiting for the power off');
      else if (r.code !== 0)
        run.log.warn({ stderr: r.stderr.trim() }, 'guest shutdown refused; waiting for the OS to power off');
      return {};
    },
    wait_power_off: waitOff,
    force_power_off: async (run) => {
      if ((await powerState(run)) === 'off') return {};
      try {
        await execFor(env, run)(host, vmware.powerOff(vmid(run.input)));
      } catch (err) {
        // Off meanwhile (on its own, or by an earlier attempt of this step a crash interrupted): done.
        if ((await powerState(run)) !== 'off') throw err;
        run.log.info('the VM is already powered off');
      }
      return {};
    },
    wait_forced_off: waitOff,
    clone_disk: async (run) => {
      const exec = execFor(env, run);
      const clone = String(run.input.facts.clone);
      await exec(host, vmware.mkdir(posix.dirname(clone)));
      // vmkfstools refuses an existing destination; one here is an interrupted attempt's (a re-run after a
      // crash): check_target refused a clone that existed before this capture.
      await exec(host, ['rm', '-f', '--', clone, flatPath(clone)]);
      try {
        await exec(host, vmware.cloneThin(String(run.input.facts.disk), clone));
      } catch (err) {
        const out = isSshError(err)
          ? String((err.details as { stderr?: string } | undefined)?.stderr ?? err.message)
          : '';
        if (needsRepair(out) || needsRepair(String((err as Error).message)))
          throw driverError('NEEDS_REPAIR', `vmkfstools: the source disk needs repair`, {
            disk: run.input.facts.disk,
          });
        if (noSpace(out)) throw driverError('NO_SPACE', `no space left for the clone on ${host.name}`);
        throw err;
      }
      return {};
    },
    repair_disk: async (run) => {
      const exec = execFor(env, run);
      await exec(host, vmware.removeTree(posix.dirname(String(run.input.facts.clone))));
      await exec(host, vmware.repair(String(run.input.facts.disk)));
      return {};
    },
    copy_to_repository: async (run) => {
      const exec = execFor(env, run);
      const clone = String(run.input.facts.clone);
      const flat = flatPath(clone);
      // A thin clone is a descriptor plus its -flat data file; the data is what the image is.
      const source = (await exists(exec, host, flat)) ? flat : clone;
      const target = String(run.input.facts.target);
      // A re-run (the capture resumed after a crash) finds what the interrupted attempt left: temporary
      // files, even the target it renamed into place (check_target refused one that existed before).
      await removeCopyLeftovers(exec, env.repository.host, target);
      const copied = await env.remote.copy(
        { host, path: source },
        { host: env.repository.host, path: target },
        copyOptions(env, run),
      );
      return { artifact: { path: target, sizeBytes: copied.bytes, sha256: copied.sha256, format: 'vmdk' } };
    },
    verify_image: (run) => verifyArtifact(env, run),
    remove_repository_copy: async (run) => {
      const target = run.input.facts.target;
      if (target !== undefined)
        await removeCopyLeftovers(execFor(env, run), env.repository.host, String(target));
      return {};
    },
    remove_clone: async (run) => {
      const clone = run.input.facts.clone;
      if (clone !== undefined) await execFor(env, run)(host, vmware.removeTree(posix.dirname(String(clone))));
      return {};
    },
  };
}
