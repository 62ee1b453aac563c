/**
 * VMware ESXi steps over SSH to the ESXi host (docs/capture-flow.md, "VMware"): locate the VM and its one disk,
 * power it off (escalating to a hard power off), thin-clone the disk with vmkfstools (one repair and retry
 * on "needs repair"), then stream the clone's data into the repository with its sha256 in the same pass.
 */
import { posix } from 'node:path';
import type { CaptureStepInput, Facts } from '../../../machines/index.js';
import { pollUntil } from '../../drivers/contract.js';
import {
  copyOptions,
  type DriverEnv,
  execFor,
  exists,
  provisionerSettings,
  removeCopyLeftovers,
  repositoryPath,
} from '../../drivers/env.js';
import { driverError } from '../../drivers/errors.js';
import { Checklist, type CheckRun, checkHosts, checkSpace, logPassed } from '../../drivers/preflight.js';
import { allocationCommand, formatBytes, parseAllocation } from '../../drivers/preflight-commands.js';
import { verifyArtifact } from '../../drivers/verify.js';
import { isSshError } from '../../ssh/index.js';
import type { PreflightRun, CaptureStep as Step } from '../types.js';
import {
  datastorePath,
  needsRepair,
  noSpace,
  parseGetallvms,
  parsePowerState,
  parseVmdkExtents,
  parseVmxDisks,
  vmware,
} from './commands.js';

function settings(env: DriverEnv) {
  return provisionerSettings(env, 'vmware');
}

/** The thin clone: `/vmfs/volumes/<datastore>/<image>/<image>.vmdk`. */
function clonePath(datastore: string, image: string): string {
  return `/vmfs/volumes/${datastore}/${image}/${image}.vmdk`;
}

/** A thin clone's data file beside its descriptor: `<image>-flat.vmdk`. */
function flatPath(clone: string): string {
  return clone.replace(/\.vmdk$/, '-flat.vmdk');
}

/**
 * locate_vm's checks: the ESXi and repository hosts reachable with their tools; the VM registered once
 * with exactly one persistent disk; the disk's virtual and allocated size (from its descriptor's extents
 * and `stat`). Returns the facts, or undefined when a check failed (collecting checklist).
 */
export async function locateVm(env: DriverEnv, run: CheckRun, list: Checklist): Promise<Facts | undefined> {
  const { vm } = settings(env);
  const host = env.provisionerHost;
  const exec = execFor(env, run);
  if (!(await checkHosts(env, run, list))) {
    list.skip(`VM ${vm}`, 'a host on the path failed its check');
    return undefined;
  }
  return await list.check(`VM ${vm}`, async () => {
    const vms = parseGetallvms((await exec(host, vmware.getallvms())).stdout).filter((v) => v.name === vm);
    if (vms.length === 0)
      throw driverError(
        'NOT_FOUND',
        `no VM named ${vm} is registered on ${host.name}: register it or fix provisioner.vm of ${env.computerName} in the inventory`,
      );
    if (vms.length > 1) throw driverError('AMBIGUOUS', `${vms.length} VMs are named ${vm} on ${host.name}`);
    const found = vms[0] as (typeof vms)[number];
    const vmx = datastorePath(found.file);
    const disks = parseVmxDisks((await exec(host, vmware.readFile(vmx))).stdout);
    if (disks.length !== 1)
      throw driverError('UNSUPPORTED_DISK', `${vm} has ${disks.length} disks; a capture needs exactly one`, {
        disks: disks.map((d) => d.fileName),
      });
    const disk = disks[0] as (typeof disks)[number];
    if (disk.mode?.toLowerCase().startsWith('nonpersistent'))
      throw driverError('UNSUPPORTED_DISK', `${vm}'s disk is nonpersistent: its changes are never written`);
    const diskPath = disk.fileName.startsWith('/')
      ? disk.fileName
      : posix.join(posix.dirname(vmx), disk.fileName);
    const datastore = settings(env).datastore ?? /^\/vmfs\/volumes\/([^/]+)\//.exec(vmx)?.[1] ?? 'datastore1';
    const extents = parseVmdkExtents((await exec(host, vmware.readFile(diskPath))).stdout);
    const virtualBytes = extents.reduce((n, e) => n + e.sectors * 512, 0);
    let allocatedBytes = 0;
    for (const e of extents) {
      const file = e.file === undefined ? undefined : posix.join(posix.dirname(diskPath), e.file);
      const r = file === undefined ? undefined : await exec(host, allocationCommand(file), { check: false });
      // An extent stat cannot read counts whole: the check errs on the side of room.
      allocatedBytes += r?.code === 0 ? parseAllocation(r.stdout).allocatedBytes : e.sectors * 512;
    }
    return {
      value: { vmid: found.vmid, vmx, disk: diskPath, datastore, virtualBytes, allocatedBytes },
      detail: `vmid ${found.vmid}, one disk ${diskPath} (${formatBytes(virtualBytes)}, ${formatBytes(allocatedBytes)} allocated)`,
    };
  });
}

/**
 * check_target's checks: neither the clone's folder on the datastore nor the repository target exists
 * (`target`: false without an image name, from the CLI); the datastore has room for the thin clone (what
 * the disk allocates) and the repository for the copy (the clone's data file streams whole: its virtual
 * size), each plus the margin.
 */
export async function checkVmTarget(
  env: DriverEnv,
  run: PreflightRun,
  list: Checklist,
  facts: Facts,
  options: { target: boolean },
): Promise<Facts | undefined> {
  const host = env.provisionerHost;
  const exec = execFor(env, run);
  const datastore = String(facts.datastore);
  const image = run.input.image;
  let paths: { clone: string; target: string } | undefined;
  if (options.target && image) {
    const clone = clonePath(datastore, image.name);
    const target = repositoryPath(env, `${image.name}.vmdk`);
    const free = await list.check('target', async () => {
      for (const [where, path] of [
        [host, clone],
        [env.repository.host, target],
      ] as const) {
        if (await exists(exec, where, path))
          throw driverError(
            'TARGET_EXISTS',
            `${path} already exists on ${where.name}; nothing is overwritten`,
            {
              path,
            },
          );
      }
      return { value: true, detail: `${clone} and ${target} are free` };
    });
    if (!free) return undefined;
    paths = { clone, target };
  } else list.skip('target', 'no image name given');
  await checkSpace(
    env,
    run,
    list,
    { what: `datastore ${datastore}`, host, dir: `/vmfs/volumes/${datastore}`, reader: 'vmfs' },
    Number(facts.allocatedBytes),
  );
  await checkSpace(
    env,
    run,
    list,
    { what: `repository ${env.computer.repository}`, host: env.repository.host, dir: env.repository.path },
    Number(facts.virtualBytes),
  );
  if (!list.ok) return undefined;
  return paths ?? {};
}

/** `vcl-capture preflight`'s checks: locate_vm's, then check_target's on what it found. */
export async function vmwarePreflight(
  env: DriverEnv,
  run: PreflightRun,
  list: Checklist,
  options: { target: boolean },
): Promise<Facts | undefined> {
  const facts = await locateVm(env, run, list);
  if (facts) return await checkVmTarget(env, run, list, facts, options);
  list.skip('target and space', `VM ${settings(env).vm} was not found`);
  return undefined;
}

export function vmwareSteps(env: DriverEnv): Record<string, Step> {
  // Refuses, at once, a computer that is not provisioned by VMware.
  settings(env);
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
      const list = new Checklist(true);
      const facts = await locateVm(env, run, list);
      logPassed(run, list);
      return { facts: facts ?? {} };
    },
    check_target: async (run) => {
      const list = new Checklist(true);
      const facts = await checkVmTarget(env, run, list, run.input.facts, { target: true });
      logPassed(run, list);
      return { facts: facts ?? {} };
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
