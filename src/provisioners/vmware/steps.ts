/**
 * VMware ESXi steps over SSH to the ESXi host (docs/capture-flow.md, "VMware"): locate the VM and its one disk,
 * power it off (escalating to a hard power off), thin-clone the disk with vmkfstools (one repair and retry
 * on "needs repair"), then clone that as a 2gbsparse set on the datastore and stream its files, a reference
 * .vmx and their sha256 manifest into the repository (docs/performance-copy.md, "VMware repository format").
 */
import { posix } from 'node:path';
import type { CaptureStepInput, Facts } from '../../../machines/index.js';
import { pollUntil } from '../../drivers/contract.js';
import {
  copyOptions,
  type DriverEnv,
  type Exec,
  execFor,
  exists,
  provisionerSettings,
  removeCopyLeftovers,
  repositoryPath,
  sizeOf,
} from '../../drivers/env.js';
import { driverError } from '../../drivers/errors.js';
import { Checklist, type CheckRun, checkHosts, checkSpace, logPassed } from '../../drivers/preflight.js';
import {
  allocationCommand,
  formatBytes,
  hasToolCommand,
  parseAllocation,
} from '../../drivers/preflight-commands.js';
import { manifestLine, verifyManifestArtifact } from '../../drivers/verify.js';
import { isSshError, type SshHost } from '../../ssh/index.js';
import type { PreflightRun, CaptureStep as Step } from '../types.js';
import {
  datastorePath,
  needsRepair,
  noSpace,
  parseGetallvms,
  parsePowerState,
  parseVmdkExtents,
  parseVmxDisks,
  referenceVmx,
  sparseSetFiles,
  TOOLS,
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
 * The 2gbsparse copy staged on the datastore before it streams: `<clone folder>/repository/<image>.vmdk`,
 * inside the clone's folder so that remove_clone takes it with the clone.
 */
function stagingPath(clone: string): string {
  return posix.join(posix.dirname(clone), 'repository', posix.basename(clone));
}

/**
 * Every file the repository copy `<image>.vmdk` may consist of, in the order they are written: the
 * 2gbsparse extents, the descriptor, the reference `.vmx`, and last the manifest whose sha256 is recorded.
 * Derived from the disk's virtual size, so that a cleanup knows the set before (or without) the copy.
 */
function repositorySet(target: string, virtualBytes: number) {
  const dir = posix.dirname(target);
  const image = posix.basename(target).replace(/\.vmdk$/, '');
  const [descriptor, ...extents] = sparseSetFiles(image, virtualBytes) as [string, ...string[]];
  const vmx = `${image}.vmx`;
  const manifest = `${image}.vmdk.sha256`;
  return { dir, image, descriptor, extents, vmx, manifest, all: [...extents, descriptor, vmx, manifest] };
}

/** Removes every file of the set and the transport's temporary files of each (a re-run, a cleanup). */
async function removeRepositorySet(exec: Exec, host: SshHost, set: ReturnType<typeof repositorySet>) {
  const paths = set.all.map((f) => posix.join(set.dir, f));
  await exec(host, ['rm', '-f', '--', ...paths]);
  for (const path of paths) await removeCopyLeftovers(exec, host, path, []);
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
  if (!(await checkHosts(env, run, list, TOOLS))) {
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
    // `nonpersistent` and `independent-nonpersistent` both drop the guest's writes at power-off.
    if (disk.mode?.toLowerCase().endsWith('nonpersistent'))
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
 * check_target's checks: neither the clone's folder on the datastore nor any file of the repository copy
 * exists (`target`: false without an image name, from the CLI); the datastore has room for the thin clone
 * and its staged 2gbsparse copy (each what the disk allocates) and the repository for that compact set
 * (what the disk allocates), each plus the margin.
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
    const set = repositorySet(target, Number(facts.virtualBytes));
    const free = await list.check('target', async () => {
      // The folder, not the clone's file: remove_clone takes the whole folder, which must be this capture's.
      for (const [where, path] of [
        [host, posix.dirname(clone)],
        [env.repository.host, target],
        ...set.all
          .filter((f) => f !== set.descriptor)
          .map((f) => [env.repository.host, posix.join(set.dir, f)] as const),
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
      return { value: true, detail: `${posix.dirname(clone)}/ and ${target} are free` };
    });
    if (!free) return undefined;
    paths = { clone, target };
  } else list.skip('target', 'no image name given');
  await checkSpace(
    env,
    run,
    list,
    { what: `datastore ${datastore}`, host, dir: `/vmfs/volumes/${datastore}`, reader: 'vmfs' },
    2 * Number(facts.allocatedBytes),
  );
  await checkSpace(
    env,
    run,
    list,
    { what: `repository ${env.computer.repository}`, host: env.repository.host, dir: env.repository.path },
    Number(facts.allocatedBytes),
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
  list.skip('target and space', `the check of VM ${settings(env).vm} failed`);
  return undefined;
}

/**
 * A vmkfstools clone whose failures that mean something are typed: the source needs repair, no space. A
 * 2gbsparse clone of a source that exists failing with "cannot find the file specified" is ESXi 5.1+
 * without its multiextent module (which writes that format): the message says how to load it.
 */
async function cloneOrExplain(exec: Exec, host: SshHost, argv: string[], source: unknown): Promise<void> {
  try {
    await exec(host, argv);
  } catch (err) {
    const out = isSshError(err)
      ? String((err.details as { stderr?: string } | undefined)?.stderr ?? err.message)
      : '';
    if (needsRepair(out) || needsRepair(String((err as Error).message)))
      throw driverError('NEEDS_REPAIR', `vmkfstools: the source disk needs repair`, { disk: source });
    if (noSpace(out)) throw driverError('NO_SPACE', `no space left for the clone on ${host.name}`);
    if (argv.includes('2gbsparse') && /cannot find the file specified/i.test(out))
      throw driverError(
        'COMMAND_FAILED',
        `vmkfstools could not write the 2gbsparse copy of ${String(source)} on ${host.name} (${out.trim()}): ESXi 5.1 and later need the multiextent module for it (esxcli system module load -m multiextent)`,
        { disk: source },
      );
    throw err;
  }
}

/** The fields of `qemu-img info --output=json` the verification reads. */
function parseQemuInfo(stdout: string): { format: string; createType: string | undefined } {
  try {
    const info = JSON.parse(stdout) as {
      format?: unknown;
      'format-specific'?: { data?: { 'create-type'?: unknown } };
    };
    const createType = info['format-specific']?.data?.['create-type'];
    return {
      format: String(info.format),
      createType: typeof createType === 'string' ? createType : undefined,
    };
  } catch {
    throw driverError('PARSE_FAILED', 'qemu-img info printed no JSON');
  }
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
      await cloneOrExplain(
        exec,
        host,
        vmware.cloneThin(String(run.input.facts.disk), clone),
        run.input.facts.disk,
      );
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
      const repo = env.repository.host;
      const { facts } = run.input;
      const clone = String(facts.clone);
      const set = repositorySet(String(facts.target), Number(facts.virtualBytes));
      const staging = stagingPath(clone);
      const stagingDir = posix.dirname(staging);
      // A re-run (the capture resumed after a crash) finds what the interrupted attempt left: files of the
      // set, even renamed into place (check_target refused any that existed before), their temporary
      // files, and the staged set.
      await removeRepositorySet(exec, repo, set);
      await exec(host, vmware.removeTree(stagingDir));
      await exec(host, vmware.mkdir(stagingDir));
      await cloneOrExplain(exec, host, vmware.clone2gbSparse(clone, staging), clone);
      const extents = parseVmdkExtents((await exec(host, vmware.readFile(staging))).stdout).map(
        (e) => e.file,
      );
      const unexpected = extents.filter((f) => f === undefined || !set.extents.includes(f));
      if (unexpected.length > 0 || extents.length === 0)
        throw driverError(
          'PARSE_FAILED',
          `vmkfstools named extents outside the 2gbsparse set of ${set.image}`,
          {
            extents,
            expected: set.extents,
          },
        );
      const vmx = referenceVmx(
        (await exec(host, vmware.readFile(String(facts.vmx)))).stdout,
        set.descriptor,
        set.image,
      );
      await exec(host, vmware.writeFile(posix.join(stagingDir, set.vmx)), { stdin: vmx });
      // Extents first, descriptor, .vmx, the manifest last: each lands durably under its final name (the
      // transport's temporary name, sync, rename, folder sync), so a manifest in place means the whole set
      // is; nothing is recorded before it.
      const files = [...(extents as string[]), set.descriptor, set.vmx];
      // The step's progress covers the whole set (one bar, one total, wire bytes and resumes summed), not
      // each file from 0.
      let total = 0;
      for (const file of files) total += await sizeOf(exec, host, posix.join(stagingDir, file));
      const options = copyOptions(env, run);
      let done = 0;
      let wire = 0;
      let resumes = 0;
      const copy = async (file: string) => {
        const copied = await env.remote.copy(
          { host, path: posix.join(stagingDir, file) },
          { host: repo, path: posix.join(set.dir, file) },
          {
            ...options,
            onProgress: (p) =>
              options.onProgress({
                ...p,
                bytes: done + p.bytes,
                wireBytes: wire + p.wireBytes,
                resumes: resumes + p.resumes,
                total,
              }),
          },
        );
        done += copied.bytes;
        wire += copied.wireBytes;
        resumes += copied.resumes;
        return copied;
      };
      let manifest = '';
      for (const file of files) manifest += manifestLine((await copy(file)).sha256, file);
      const sizeBytes = done;
      await exec(host, vmware.writeFile(posix.join(stagingDir, set.manifest)), { stdin: manifest });
      total += Buffer.byteLength(manifest);
      const listed = await copy(set.manifest);
      await exec(host, vmware.removeTree(stagingDir));
      return {
        artifact: {
          path: posix.join(set.dir, set.descriptor),
          sizeBytes,
          sha256: listed.sha256,
          format: 'vmdk',
        },
      };
    },
    verify_image: async (run) => {
      const { dir, files } = await verifyManifestArtifact(env, run);
      const exec = execFor(env, run);
      const repo = env.repository.host;
      const descriptor = String(run.input.artifact?.path);
      const extents = parseVmdkExtents((await exec(repo, vmware.readFile(descriptor))).stdout);
      // An extent without a file (ZERO, NULL) has none for the manifest to list.
      const unlisted = [
        posix.basename(descriptor),
        ...extents.flatMap((e) => (e.file === undefined ? [] : [e.file])),
      ].filter((f) => !files.includes(f));
      if (unlisted.length > 0)
        throw driverError(
          'VERIFY_MISMATCH',
          `the manifest of ${descriptor} does not list ${unlisted.join(', ')}`,
          {
            path: descriptor,
            unlisted,
          },
        );
      // qemu-img reads the set as a disk: the descriptor, each extent's header and grain tables. Only where
      // the repository host has it; the hashes above already hold every byte.
      if ((await exec(repo, hasToolCommand('qemu-img'), { check: false })).code === 0) {
        const info = parseQemuInfo((await exec(repo, vmware.qemuInfo(descriptor))).stdout);
        if (info.format !== 'vmdk' || info.createType !== 'twoGbMaxExtentSparse')
          throw driverError(
            'VERIFY_MISMATCH',
            `qemu-img reads ${descriptor} as ${info.format} ${info.createType ?? ''}, not a twoGbMaxExtentSparse vmdk`,
            { path: descriptor, ...info },
          );
        const check = await exec(repo, vmware.qemuCheck(descriptor), { check: false });
        // As for libvirt's copy: 0 clean, 3 leaked clusters (space lost, the disk reads right); others
        // mean corruption.
        if (check.code === 3) run.log.warn({ path: descriptor }, 'qemu-img check: leaked clusters');
        else if (check.code !== 0)
          throw driverError(
            'VERIFY_MISMATCH',
            `qemu-img check found errors in ${descriptor}: ${check.stderr.trim()}`,
            {
              path: descriptor,
              code: check.code,
            },
          );
      }
      run.log.info({ path: descriptor, files: files.length, dir }, 'copy verified (2gbsparse set)');
      return {};
    },
    remove_repository_copy: async (run) => {
      const target = run.input.facts.target;
      if (target !== undefined)
        await removeRepositorySet(
          execFor(env, run),
          env.repository.host,
          repositorySet(String(target), Number(run.input.facts.virtualBytes)),
        );
      return {};
    },
    remove_clone: async (run) => {
      const clone = run.input.facts.clone;
      if (clone !== undefined) await execFor(env, run)(host, vmware.removeTree(posix.dirname(String(clone))));
      return {};
    },
  };
}
