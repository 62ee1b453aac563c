/**
 * xCAT steps over SSH to the management node (docs/capture-flow.md, "xCAT"), as VCL-94 intended: point the
 * node at the capture image first, let the OS reboot into it, then watch the upload (done/failed markers,
 * growth resets the no-progress timer) and hash what arrived.
 */
import { posix } from 'node:path';
import type { CaptureStepInput, Facts } from '../../../machines/index.js';
import { pollUntil, sleep } from '../../drivers/contract.js';
import {
  type DriverEnv,
  type Exec,
  execFor,
  exists,
  provisionerSettings,
  repositoryPath,
  sha256Of,
  sizeOf,
  syncPaths,
} from '../../drivers/env.js';
import { driverError } from '../../drivers/errors.js';
import { Checklist, checkHosts, checkSpace, logPassed } from '../../drivers/preflight.js';
import { verifyArtifact } from '../../drivers/verify.js';
import type { PreflightRun, CaptureStep as Step } from '../types.js';
import { parseNodestat, parseRpowerStat, parseSizes, TOOLS, xcat } from './commands.js';

function settings(env: DriverEnv) {
  return provisionerSettings(env, 'xcat');
}

/** nodestat values that mean the node runs the capture environment. */
const CAPTURE_ENV = /^(capturing|imaging|image)/i;
/** nodestat values of a node booting over the network: into the capture image set_capture_boot chose. */
const NETBOOTING = /^netboot/i;

/** rpower's words for a node xCAT does not know (`Error: Invalid nodes and/or groups in noderange: n1`). */
const UNKNOWN_NODE = /Invalid nodes and\/or groups|not in the nodelist|Unknown node/i;

/** The upload's files in the repository: the image and the capture environment's two markers. */
function uploadFiles(env: DriverEnv, image: string) {
  const path = repositoryPath(env, `${image}.img`);
  return { image: path, done: `${path}.capturedone`, failed: `${path}.capturefailed` };
}

/**
 * check_target's checks (and `vcl-capture preflight`'s): the management node and the repository host
 * reachable with their tools; xCAT knows the node (read-only `rpower stat`, before its boot setting is
 * changed); no file of the upload exists (`target`: false without an image name); the repository has the
 * margin free (an upload's size is not known before it).
 */
export async function xcatPreflight(
  env: DriverEnv,
  run: PreflightRun,
  list: Checklist,
  options: { target: boolean },
): Promise<Facts | undefined> {
  const { node } = settings(env);
  const mn = env.provisionerHost;
  const exec = execFor(env, run);
  if (!(await checkHosts(env, run, list, TOOLS))) {
    list.skip(`node ${node}`, 'a host on the path failed its check');
    return undefined;
  }
  const known = await list.check(`node ${node}`, async () => {
    const r = await exec(mn, xcat.powerStat(node), { check: false });
    if (r.code !== 0 && UNKNOWN_NODE.test(`${r.stderr}${r.stdout}`))
      throw driverError(
        'NOT_FOUND',
        `xCAT on ${mn.name} does not know node ${node}: define it (mkdef) or fix provisioner.node of ${env.computerName} in the inventory`,
        { node },
      );
    if (r.code !== 0)
      throw driverError('COMMAND_FAILED', `rpower ${node} stat on ${mn.name} failed: ${r.stderr.trim()}`);
    return { value: true, detail: `power ${parseRpowerStat(r.stdout, node)}` };
  });
  if (!known) return undefined;
  const image = run.input.image;
  let target: string | undefined;
  if (options.target && image) {
    const f = uploadFiles(env, image.name);
    const free = await list.check('target', async () => {
      for (const path of [f.image, f.done, f.failed]) {
        if (await exists(exec, env.repository.host, path))
          throw driverError('TARGET_EXISTS', `${path} already exists; nothing is overwritten`, { path });
      }
      return { value: true, detail: `${f.image} and its markers are free` };
    });
    if (!free) return undefined;
    target = f.image;
  } else list.skip('target', 'no image name given');
  await checkSpace(
    env,
    run,
    list,
    { what: `repository ${env.computer.repository}`, host: env.repository.host, dir: env.repository.path },
    undefined,
  );
  if (!list.ok) return undefined;
  return target === undefined ? {} : { target };
}

export function xcatSteps(env: DriverEnv): Record<string, Step> {
  const { node, captureImage } = settings(env);
  const mn = env.provisionerHost;
  const files = (input: CaptureStepInput) => uploadFiles(env, input.image.name);

  /**
   * The repository's files of this image (`find -printf '%s %f'`: sizes by name) and which upload markers
   * are among them: one command where two `test -e` and the listing were three.
   */
  const upload = async (exec: Exec, input: CaptureStepInput) => {
    const f = files(input);
    const sizes = parseSizes(
      (await exec(env.repository.host, xcat.sizes(env.repository.path, input.image.name))).stdout,
    );
    return {
      sizes,
      done: sizes.has(posix.basename(f.done)),
      failed: sizes.has(posix.basename(f.failed)),
    };
  };

  return {
    check_target: async (run) => {
      const list = new Checklist(true);
      const facts = await xcatPreflight(env, run, list, { target: true });
      logPassed(run, list);
      return { facts: facts ?? {} };
    },
    set_capture_boot: async (run) => {
      const exec = execFor(env, run);
      await exec(mn, xcat.nodech(node, run.input.image.name));
      await exec(mn, xcat.nodesetImage(node, captureImage));
      return {};
    },
    ensure_node_on: async (run) => {
      const exec = execFor(env, run);
      const stat = async () => parseRpowerStat((await exec(mn, xcat.powerStat(node))).stdout, node);
      const ended = async () => {
        const u = await upload(exec, run.input);
        return u.done || u.failed;
      };
      // After an `off` end state the OS stops answering before the node's power is off: wait for the
      // power itself (bounded by the step's deadline), or the node would never be powered on again.
      // On again, and booting or running the capture image, is this step already done: an attempt that
      // a crash interrupted powered it on (only a power-on boots the image set_capture_boot chose).
      const state =
        run.input.endState === 'off'
          ? await pollUntil(run, env.pollMs, async () => {
              if ((await stat()) === 'off') return 'off' as const;
              const now = parseNodestat((await exec(mn, xcat.nodestat(node))).stdout, node);
              if (CAPTURE_ENV.test(now) || NETBOOTING.test(now) || (await ended())) return 'on' as const;
              return undefined;
            })
          : await stat();
      if (state === 'on') return {};
      // Off may mean the capture environment already finished and halted the node (its markers are
      // written before it halts): powering on again would capture a second time over the upload.
      if (await ended()) return {};
      await exec(mn, xcat.powerOn(node));
      return {};
    },
    wait_capture_env: async (run) => {
      const exec = execFor(env, run);
      for (;;) {
        const stat = parseNodestat((await exec(mn, xcat.nodestat(node))).stdout, node);
        if (CAPTURE_ENV.test(stat)) return {};
        // A fast upload may already be over by the time we look (a re-run after a crash, too): done or
        // failed, watch_upload reads the marker.
        const u = await upload(exec, run.input);
        if (u.done || u.failed) return {};
        await sleep(env.pollMs, run.signal);
      }
    },
    watch_upload: async (run) => {
      const exec = execFor(env, run);
      const f = files(run.input);
      const noProgressMs = run.input.timeouts.uploadNoProgressMs;
      let lastTotal = -1;
      let lastStat = '';
      let lastProgress = Date.now();
      const started = Date.now();
      for (;;) {
        const { sizes, done, failed } = await upload(exec, run.input);
        if (failed)
          throw driverError(
            'UPLOAD_FAILED',
            `the capture environment reported a failed upload (${f.failed})`,
          );
        if (done) break;
        const total = [...sizes.values()].reduce((a, b) => a + b, 0);
        const stat = parseNodestat((await exec(mn, xcat.nodestat(node))).stdout, node);
        if (total !== lastTotal || stat !== lastStat) {
          run.log.debug({ bytes: total, nodestat: stat }, 'upload progress');
          const seconds = (Date.now() - started) / 1000;
          env.progress?.(run.input.step, { bytes: total, bytesPerSecond: seconds > 0 ? total / seconds : 0 });
          lastTotal = total;
          lastStat = stat;
          lastProgress = Date.now();
        } else if (Date.now() - lastProgress > noProgressMs) {
          throw driverError(
            'NO_PROGRESS',
            `the upload made no progress for ${noProgressMs} ms (${total} bytes)`,
          );
        }
        await sleep(env.pollMs, run.signal);
      }
      await exec(env.repository.host, xcat.chmod('644', f.image));
      // The capture environment's writes may still sit in the repository host's cache.
      await syncPaths(exec, env.repository.host, [f.image]);
      const sizeBytes = await sizeOf(exec, env.repository.host, f.image);
      if (sizeBytes === 0) throw driverError('UPLOAD_FAILED', `the uploaded image ${f.image} is empty`);
      const sha256 = await sha256Of(exec, env.repository.host, f.image);
      return { artifact: { path: f.image, sizeBytes, sha256, format: 'img' } };
    },
    verify_image: (run) => verifyArtifact(env, run),
    reset_boot: async (run) => {
      await execFor(env, run)(mn, xcat.nodesetBoot(node));
      return {};
    },
    remove_upload: async (run) => {
      const exec = execFor(env, run);
      const f = files(run.input);
      // A capture environment still at work (a capture cancelled or failed during the upload, or resumed
      // after a crash and failed) would write on, and its marker last, after the removal; so would one
      // still to come: the node's next boot is the capture image until reset_boot, after this step, and
      // a node going down, booting or still in its OS (its reboot on the way) would start one. Any node
      // that is on is stopped first.
      if (parseRpowerStat((await exec(mn, xcat.powerStat(node))).stdout, node) === 'on') {
        run.log.info('powering off the node: its next boot is the capture image');
        await exec(mn, xcat.powerOff(node));
      }
      await exec(env.repository.host, xcat.remove([f.image, f.done, f.failed]));
      return {};
    },
  };
}
