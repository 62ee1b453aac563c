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
  type BootTestNames,
  bootTestDomainXml,
  bootTestNames,
  firstDisk,
  isSshBanner,
  libvirt,
  lifecycleWaitTimedOut,
  parseDomblklist,
  parseDomstate,
  parseImageInfo,
  sshBannerProbe,
  TOOLS,
  UNKNOWN_DOMAIN,
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
  const { domain, format, bootTest } = settings(env);
  const host = env.provisionerHost;
  const exec = execFor(env, run);
  if (!(await checkHosts(env, run, list, TOOLS))) {
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
    list.skip('target', `the check of domain ${domain} failed`);
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
  if (bootTest.enabled) {
    const fits = await list.check('boot test', async () => {
      // The throwaway domain boots an overlay over the image itself: the image must be on this host.
      if (!sameHost(host, env.repository.host))
        throw driverError(
          'BOOT_TEST_UNSUPPORTED',
          `the boot test of ${env.computerName} boots the image on ${host.name}, but repository ${env.computer.repository} is on ${env.repository.host.name}: capture into a repository on ${host.name} or set provisioner.bootTest.enabled to false`,
        );
      return {
        value: true,
        detail: `${bootTest.check === 'ssh' ? `SSH banner on 127.0.0.1:${bootTest.port}` : `console line /${bootTest.pattern}/`}, from an overlay beside the disk`,
      };
    });
    if (!fits) return undefined;
  }
  run.log.info({ domain, state: found.state, disk, sourceFormat: info.format }, 'domain inspected');
  return {
    domain,
    disk,
    sourceFormat: info.format,
    ...(target === undefined ? {} : { target }),
    ...(bootTest.enabled ? { bootTest: true } : {}),
  };
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

  /** The boot test's names, beside the source disk (known from inspect_domain, which precedes it). */
  const bootNames = (run: Parameters<Step>[0]): BootTestNames | undefined =>
    run.input.facts.disk === undefined
      ? undefined
      : bootTestNames(posix.dirname(String(run.input.facts.disk)), run.input.captureId);

  /**
   * Removes a boot test's domain and files, whatever an attempt left: the transient domain is destroyed
   * (it then vanishes), one that somehow got defined is undefined too, and the files are removed. A domain
   * that is already gone is what we want; any other virsh failure stands.
   */
  const removeBootTest = async (run: Parameters<Step>[0], names: BootTestNames) => {
    const exec = execFor(env, run);
    const tolerated =
      /failed to get domain|Domain not found|domain is not running|cannot undefine transient domain/;
    let found = false;
    for (const command of [
      ['virsh', 'destroy', names.domain],
      ['virsh', 'undefine', names.domain],
    ]) {
      const r = await exec(host, command, { check: false });
      if (r.code === 0) found = true;
      else if (!tolerated.test(r.stderr))
        throw driverError(
          'COMMAND_FAILED',
          `${command.join(' ')} on ${host.name} failed: ${r.stderr.trim()}`,
        );
    }
    await exec(host, ['rm', '-f', '--', names.overlay, names.xml, names.console]);
    if (found) run.log.info({ domain: names.domain }, 'boot test domain removed');
  };

  /** The last lines of the test domain's console, for a failure message. */
  const consoleTail = async (run: Parameters<Step>[0], names: BootTestNames): Promise<string> => {
    const r = await execFor(env, run)(host, ['cat', '--', names.console], {
      check: false,
      timeoutMs: 10_000,
    });
    const lines = r.stdout.split(/\r?\n/).filter((l) => l.trim() !== '');
    return lines.length === 0
      ? 'the console printed nothing'
      : `console: ${lines.slice(-3).join(' | ').slice(-300)}`;
  };

  /**
   * Boots the verified image in a throwaway transient domain on a copy-on-write overlay (the image is
   * only read) and waits for the guest to show it booted, then removes the domain and the overlay. The
   * wait ends a little before the step's deadline so that a guest that does not boot fails as
   * BOOT_TEST_FAILED, not TIMEOUT, and success has time left to clean up; on failure or cancel the
   * compensation (remove_boot_test) removes them. A re-run first removes what an earlier attempt left.
   */
  const bootTest: Step = async (run) => {
    const { bootTest: test } = settings(env);
    const artifact = run.input.artifact;
    const names = bootNames(run);
    if (artifact === undefined || names === undefined)
      throw driverError('COMMAND_FAILED', 'boot_test runs after the copy: no image or source disk known');
    const exec = execFor(env, run);
    const started = Date.now();
    const stopAt = started + run.remainingMs() - Math.min(15_000, run.remainingMs() / 5);
    await removeBootTest(run, names);
    await exec(host, libvirt.overlay(artifact.path, artifact.format, names.overlay));
    // QEMU writes the overlay as the user it runs the computer's domain as: the owner of its disk. (A
    // system libvirtd also chowns it itself; a session one, or another user's, does not.)
    const owned = await exec(host, libvirt.ownLike(String(run.input.facts.disk), names.overlay), {
      check: false,
    });
    if (owned.code !== 0)
      run.log.warn(
        { stderr: owned.stderr.trim().slice(0, 200) },
        'the overlay keeps its owner: chown failed',
      );
    const definition = (await exec(host, libvirt.dumpxml(domain))).stdout;
    const xml = bootTestDomainXml(definition, {
      names,
      ...(test.check === 'ssh' && test.port !== undefined
        ? { ssh: { address: '127.0.0.1', port: test.port } }
        : {}),
    });
    await exec(host, ['tee', '--', names.xml], { stdin: xml });
    await exec(host, libvirt.create(names.xml));
    run.log.info(
      { domain: names.domain, check: test.check, overlay: names.overlay },
      'boot test domain started',
    );
    const pattern = new RegExp(test.pattern, 'm');
    for (;;) {
      const state = await exec(host, libvirt.domstate(names.domain), { check: false });
      const gone = state.code !== 0 && UNKNOWN_DOMAIN.test(state.stderr);
      if (gone || (state.code === 0 && /shut off|crashed/.test(state.stdout)))
        throw driverError(
          'BOOT_TEST_FAILED',
          `the image ${artifact.path} did not boot: its test domain ${gone ? 'vanished' : `is ${parseDomstate(state.stdout).state}`} before the guest showed it booted (${await consoleTail(run, names)})`,
          { domain: names.domain },
        );
      const booted =
        test.check === 'ssh'
          ? isSshBanner(
              (await exec(host, sshBannerProbe(test.port as number, 2), { check: false, timeoutMs: 10_000 }))
                .stdout,
            )
          : pattern.test((await exec(host, ['cat', '--', names.console], { check: false })).stdout);
      if (booted) break;
      if (Date.now() + env.pollMs >= stopAt)
        throw driverError(
          'BOOT_TEST_FAILED',
          `the image ${artifact.path} did not show it booted (${test.check === 'ssh' ? `no SSH banner on 127.0.0.1:${test.port}` : `no console line matching /${test.pattern}/`}) within ${Math.round((Date.now() - started) / 1000)} s (${await consoleTail(run, names)})`,
          { domain: names.domain },
        );
      await sleep(env.pollMs, run.signal);
    }
    const bootMs = Date.now() - started;
    run.log.info({ domain: names.domain, bootMs }, 'the image booted');
    await removeBootTest(run, names);
    return { facts: { bootTestMs: bootMs } };
  };

  return {
    boot_test: bootTest,
    remove_boot_test: async (run) => {
      const names = bootNames(run);
      if (names) await removeBootTest(run, names);
      return {};
    },
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
