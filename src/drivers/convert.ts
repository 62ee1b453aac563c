/**
 * A disk converted with `qemu-img convert` on its hypervisor host into the repository, shared by the
 * provisioners whose host runs qemu-img (libvirt, Proxmox VE). Straight into the repository when it lives
 * on that host (a `.partial` renamed durably once checked and hashed), else into a staging file on that
 * host that is streamed to the repository with its sha256 taken in the same pass.
 */
import { posix } from 'node:path';
import type { CaptureStepInput, CaptureStepOutput } from '../../machines/index.js';
import { durableMoveCommand, type SshHost } from '../ssh/index.js';
import type { StepRun } from './contract.js';
import {
  copyOptions,
  type DriverEnv,
  execFor,
  exists,
  removeCopyLeftovers,
  repositoryPath,
  sameHost,
  sha256Of,
  sizeOf,
} from './env.js';
import { driverError } from './errors.js';
import { type Checklist, type CheckRun, checkSpace } from './preflight.js';

export interface Conversion {
  /** The hypervisor host that runs qemu-img and holds the source disk. */
  host: SshHost;
  /** The image in the repository. */
  target: string;
  /** The file on `host` the conversion writes when the repository is another host (unknown: none yet). */
  staging: string | undefined;
  format: string;
}

/**
 * Everything a conversion to `target` may have left, on both hosts: the staging file, the `.partial`,
 * the transport's temporary files, and the target itself when an attempt interrupted after its rename
 * left it (the check step refused a target that existed before this capture: any target now is ours).
 */
export async function removeConversion(
  env: DriverEnv,
  run: StepRun<CaptureStepInput>,
  c: Omit<Conversion, 'format'>,
): Promise<void> {
  const exec = execFor(env, run);
  if (!sameHost(c.host, env.repository.host) && c.staging !== undefined)
    await exec(c.host, ['rm', '-f', '--', c.staging]);
  await removeCopyLeftovers(exec, env.repository.host, c.target, [c.target, `${c.target}.partial`]);
}

/**
 * Runs `convert(output)` on the host, checks a qcow2 output with `check(output)`, and brings the result
 * durably into the repository with its size and sha256 (as `sha256sum` prints it). A re-run (the capture
 * resumed after a crash) first removes whatever the interrupted attempt left.
 */
export async function convertIntoRepository(
  env: DriverEnv,
  run: StepRun<CaptureStepInput>,
  c: Conversion & { convert(output: string): string[]; check(output: string): string[] },
): Promise<CaptureStepOutput> {
  const exec = execFor(env, run);
  const { host, target, format } = c;
  const local = sameHost(host, env.repository.host);
  if (!local && c.staging === undefined)
    throw driverError('COMMAND_FAILED', 'no staging file for a repository on another host');
  const partial = local ? `${target}.partial` : (c.staging as string);
  await removeConversion(env, run, c);
  await exec(host, c.convert(partial));
  await exec(host, c.check(partial), { check: false }).then((r) => {
    // qemu-img check exits 0 (clean) or 3 (leaked clusters, harmless); others mean corruption.
    if (r.code !== 0 && r.code !== 3 && format === 'qcow2')
      throw driverError('VERIFY_MISMATCH', `qemu-img check found errors in the copy: ${r.stderr.trim()}`);
  });
  if (local) {
    const sha256 = await sha256Of(exec, host, partial);
    const sizeBytes = await sizeOf(exec, host, partial);
    // qemu-img convert leaves its output in the page cache (its default target cache mode does not
    // flush): the image and its name are made durable before the revision can be recorded.
    await exec(host, durableMoveCommand(partial, target));
    return { artifact: { path: target, sizeBytes, sha256, format } };
  }
  try {
    const copied = await env.remote.copy(
      { host, path: partial },
      { host: env.repository.host, path: target },
      copyOptions(env, run),
    );
    return { artifact: { path: target, sizeBytes: copied.bytes, sha256: copied.sha256, format } };
  } finally {
    await exec(host, ['rm', '-f', '--', partial], { check: false }).catch(() => undefined);
  }
}

/**
 * The preflight of a conversion, once its source is known: the target `<repository>/<image>.<format>`
 * free (`target`: false when no image name is known, from the CLI), room for the copy in the repository
 * and, when the repository is another host, in the staging folder on the hypervisor host. qemu-img convert
 * writes sparse output: the copy takes what the source allocates (`allocatedBytes`); a raw image staged
 * and then streamed to another host arrives dense, at its virtual size. Returns the target (undefined
 * without an image name), or undefined when a check failed (collecting checklist).
 */
export async function checkConversion(
  env: DriverEnv,
  run: CheckRun & { input: { image?: { name: string } } },
  list: Checklist,
  c: {
    target: boolean;
    host: SshHost;
    format: string;
    stagingDir: string;
    virtualBytes: number;
    allocatedBytes: number;
  },
): Promise<{ target: string | undefined } | undefined> {
  const exec = execFor(env, run);
  const image = run.input.image;
  let target: string | undefined;
  if (c.target && image) {
    target = repositoryPath(env, `${image.name}.${c.format}`);
    const free = await list.check('target', async () => {
      const path = target as string;
      if (await exists(exec, env.repository.host, path))
        throw driverError('TARGET_EXISTS', `the repository already holds ${path}; nothing is overwritten`, {
          target: path,
        });
      return { value: true, detail: `${path} is free` };
    });
    if (!free) return undefined;
  } else list.skip('target', 'no image name given');
  const staged = !sameHost(c.host, env.repository.host);
  await checkSpace(
    env,
    run,
    list,
    { what: `repository ${env.computer.repository}`, host: env.repository.host, dir: env.repository.path },
    staged && c.format === 'raw' ? c.virtualBytes : c.allocatedBytes,
  );
  if (staged)
    await checkSpace(
      env,
      run,
      list,
      { what: 'staging folder', host: c.host, dir: c.stagingDir },
      c.allocatedBytes,
    );
  return list.ok ? { target } : undefined;
}

/** The staging file of a capture in `dir` on the hypervisor host (hidden, named after the capture). */
export function stagingFile(dir: string, captureId: string, format: string): string {
  return posix.join(dir, `.vcl-capture-${captureId}.${format}`);
}
