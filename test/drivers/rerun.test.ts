/**
 * Every driver step must survive being run twice: after the daemon is killed, the capture resumes from its
 * last snapshot and the step that was in flight starts again with the same input (`resumed: true`). The
 * earlier attempt may have done none, part or all of its work. Against the lab over real SSH: copies
 * interrupted while bytes flow, with the files a killed process leaves (the transport's temporary file, a
 * `.partial`, a staging file, the target already renamed into place), re-run to one correct image and
 * nothing else; their cleanup leaves nothing; end-state and power steps re-run when the world already moved.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, posix } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { OsStepInput } from '../../machines/index.js';
import type { DriverEnv } from '../../src/drivers/env.js';
import { osSteps } from '../../src/drivers/os.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { silentLogger } from '../../src/log.js';
import { labTransientDomains } from '../../src/provisioners/libvirt/lab-commands.js';
import { libvirtSteps } from '../../src/provisioners/libvirt/steps.js';
import { vmwareSteps } from '../../src/provisioners/vmware/steps.js';
import { xcatSteps } from '../../src/provisioners/xcat/steps.js';
import { copyLeftoversCommand, SshPool } from '../../src/ssh/index.js';
import { execResult, fakeGuestEnv } from '../helpers/fake-guest.js';
import { expectVmdkSet } from '../helpers/stored-image.js';
import {
  captureOf,
  driverEnv,
  filesWith,
  interceptRemote,
  osInput,
  stepRun,
  waitForFile,
} from './rerun-helpers.js';

const MiB = 1024 * 1024;
/** What a killed copy leaves: the transport's temporary file, under its random name. */
const KILLED_TMP_SUFFIX = '.vcl-tmp-0123456789ab';

/** Big disks: a streamed copy lasts long enough to be interrupted while bytes flow. */
let big: Lab;
/** Small disks and a slow xCAT upload; libvirt's repository on the libvirt host itself (kvm-local). */
let small: Lab;
let pool: SshPool;

beforeAll(async () => {
  [big, small] = await Promise.all([
    startLab({
      powerDelayMs: 20,
      diskBytes: 64 * MiB,
      computers: { 'libvirt-linux': 4, 'libvirt-windows': 1, 'vmware-linux': 2 },
    }),
    startLab({
      powerDelayMs: 20,
      captureChunkBytes: 256 * 1024,
      captureChunkMs: 40,
      repositories: { libvirt: 'kvm-local' },
      computers: { 'libvirt-linux': 2, 'xcat-linux': 2 },
    }),
  ]);
  pool = new SshPool({ logger: silentLogger() });
});

afterAll(async () => {
  await pool?.close();
  await Promise.all([big?.stop(), small?.stop()]);
});

/** A libvirt capture of `c`, its domain off, past inspect_domain: what its copy steps work with. */
async function inspectedLibvirt(lab: Lab, c: string) {
  await powerOff(lab, c);
  const env = driverEnv(lab, pool, c);
  const steps = libvirtSteps(env);
  const cap = captureOf(lab, c, 'off');
  const repo = repoOf(env);
  const { facts = {} } = (await steps.inspect_domain?.(stepRun(cap.input('inspect_domain')))) ?? {};
  const target = String(facts.target);
  const staging = posix.join(
    posix.dirname(String(facts.disk)),
    `.vcl-capture-${cap.input('x').captureId}.qcow2`,
  );
  return { env, steps, cap, repo, facts, target, image: posix.basename(target), staging };
}

function repoOf(env: DriverEnv) {
  return { host: env.repository.host.name, path: env.repository.path };
}

/** Writes a file on a lab host, as an interrupted attempt left it. */
async function leave(lab: Lab, host: string, path: string, bytes = MiB): Promise<void> {
  const real = await lab.realPath(host, path);
  await mkdir(dirname(real), { recursive: true });
  await writeFile(real, Buffer.alloc(bytes, 7));
}

async function powerOff(lab: Lab, computer: string): Promise<void> {
  if (lab.computer(computer).power !== 'off') lab.powerOff(computer);
  await lab.waitForPower(computer, 'off');
}

async function powerOn(lab: Lab, computer: string): Promise<void> {
  if (lab.computer(computer).power === 'off') lab.powerOn(computer);
  await lab.waitForPower(computer, 'on');
}

/** Runs a copy step and aborts it once `tmp` (a file of the repository) holds `bytes`; it must fail. */
async function interrupted(
  lab: Lab,
  env: DriverEnv,
  start: (signal: AbortSignal) => Promise<unknown>,
  match: (name: string) => boolean,
  bytes: number,
): Promise<void> {
  const ac = new AbortController();
  const copy = start(ac.signal);
  copy.catch(() => {});
  const seen = await Promise.race([
    waitForFile(lab, repoOf(env).host, repoOf(env).path, match, bytes),
    copy.then(() => undefined),
  ]);
  expect(seen, 'the copy ended before it could be interrupted').toBeDefined();
  ac.abort();
  await expect(copy).rejects.toThrow();
}

describe('libvirt: the disk converted on the libvirt host, streamed into the repository', () => {
  it('power-off steps re-run when the domain is already off succeed; so does a destroy or shutdown the domain beat', async () => {
    const c = 'lv-linux-1';
    const env = driverEnv(big, pool, c);
    const steps = libvirtSteps(env);
    const cap = captureOf(big, c, 'on');
    const { facts } = (await steps.inspect_domain?.(stepRun(cap.input('inspect_domain')))) ?? {};
    await steps.request_power_off?.(stepRun(cap.input('request_power_off', facts)));
    await steps.wait_power_off?.(stepRun(cap.input('wait_power_off', facts)));
    expect(big.computer(c).power).toBe('off');
    for (const step of ['request_power_off', 'wait_power_off', 'force_power_off', 'wait_forced_off'])
      await expect(steps[step]?.(stepRun(cap.input(step, facts), { resumed: true })), step).resolves.toEqual(
        {},
      );

    // The domain goes off between the step's look and its command (an earlier attempt's command landing).
    for (const [step, command] of [
      ['force_power_off', ['virsh', 'destroy']],
      ['request_power_off', ['virsh', 'shutdown']],
    ] as const) {
      await powerOn(big, c);
      const racing = libvirtSteps({
        ...env,
        remote: interceptRemote(pool, command, () => big.powerOff(c)),
      });
      await expect(racing[step]?.(stepRun(cap.input(step, facts), { resumed: true })), step).resolves.toEqual(
        {},
      );
      expect(big.computer(c).power).toBe('off');
    }
  });

  it('copy_image interrupted while bytes flow, then re-run over what a killed process leaves: one image, the source bytes', async () => {
    const c = 'lv-linux-2';
    const { env, steps, cap, repo, facts, target, image, staging } = await inspectedLibvirt(big, c);

    await interrupted(
      big,
      env,
      (signal) => steps.copy_image?.(stepRun(cap.input('copy_image', facts), { signal })) as Promise<unknown>,
      (n) => n.startsWith(`.${image}.vcl-tmp-`),
      4 * MiB,
    );
    // A killed process would not have cleaned up: its temporary file, a staging copy, a .partial stay.
    await leave(big, repo.host, `${repo.path}/.${image}${KILLED_TMP_SUFFIX}`);
    await leave(big, repo.host, `${target}.partial`);
    await leave(big, 'libvirt-host', staging);
    expect(await filesWith(big, repo.host, repo.path, cap.name)).toEqual([
      `.${image}${KILLED_TMP_SUFFIX}`,
      `${image}.partial`,
    ]);

    const source = await big.diskSha256(c);
    for (const attempt of ['after the interruption', 'after the copy completed']) {
      const out = await steps.copy_image?.(stepRun(cap.input('copy_image', facts), { resumed: true }));
      expect(out?.artifact?.sha256, attempt).toBe(source);
      expect(await big.sha256(repo.host, target), attempt).toBe(source);
      expect(await filesWith(big, repo.host, repo.path, cap.name), attempt).toEqual([image]);
      expect(await big.exists('libvirt-host', staging), attempt).toBe(false);
      const verify = cap.input('verify_image', facts);
      if (out?.artifact) verify.artifact = out.artifact;
      await expect(steps.verify_image?.(stepRun(verify, { resumed: true }))).resolves.toEqual({});
    }
    expect(await big.diskSha256(c)).toBe(source);
  });

  it('remove_copy after a killed copy leaves nothing, on either host; run twice, still nothing', async () => {
    const { steps, cap, repo, facts, target, image, staging } = await inspectedLibvirt(big, 'lv-linux-3');
    await leave(big, repo.host, `${repo.path}/.${image}${KILLED_TMP_SUFFIX}`);
    await leave(big, repo.host, `${repo.path}/.${image}.vcl-tmp-fedcba987654`);
    await leave(big, repo.host, target);
    await leave(big, 'libvirt-host', staging);
    // Someone else's files beside ours are not touched.
    await leave(big, repo.host, `${repo.path}/.other.qcow2${KILLED_TMP_SUFFIX}`, 10);
    for (let i = 0; i < 2; i++) {
      await expect(
        steps.remove_copy?.(stepRun(cap.input('remove_copy', facts), { resumed: i > 0 })),
      ).resolves.toEqual({});
      expect(await filesWith(big, repo.host, repo.path, cap.name)).toEqual([]);
      expect(await big.exists('libvirt-host', staging)).toBe(false);
    }
    expect(await big.exists(repo.host, `${repo.path}/.other.qcow2${KILLED_TMP_SUFFIX}`)).toBe(true);
  });
});

describe('libvirt with the repository on the libvirt host (convert straight into it)', () => {
  it('copy_image re-run over a .partial, a temporary file and the renamed target: one image; remove_copy then leaves nothing', async () => {
    const c = 'lv-linux-1';
    const { env, steps, cap, repo, facts, target, image } = await inspectedLibvirt(small, c);
    expect(env.repository.host.name).toBe('libvirt-host');
    await leave(small, repo.host, `${target}.partial`);
    await leave(small, repo.host, `${repo.path}/.${image}${KILLED_TMP_SUFFIX}`);
    await leave(small, repo.host, target);
    const source = await small.diskSha256(c);
    const out = await steps.copy_image?.(stepRun(cap.input('copy_image', facts), { resumed: true }));
    expect(out?.artifact?.sha256).toBe(source);
    expect(await small.sha256(repo.host, target)).toBe(source);
    expect(await filesWith(small, repo.host, repo.path, cap.name)).toEqual([image]);

    await leave(small, repo.host, `${target}.partial`);
    await steps.remove_copy?.(stepRun(cap.input('remove_copy', facts), { resumed: true }));
    expect(await filesWith(small, repo.host, repo.path, cap.name)).toEqual([]);
  });
});

describe('libvirt boot test', () => {
  it('boot_test re-run after an attempt killed while its test domain ran: that domain and overlay go first, then one boot, nothing left', async () => {
    const c = 'lv-linux-2';
    const inspected = await inspectedLibvirt(small, c);
    const { cap, facts } = inspected;
    const entry = inspected.env.computer;
    if (entry.provisioner.type !== 'libvirt') throw new Error('not libvirt');
    const env: DriverEnv = {
      ...inspected.env,
      computer: {
        ...entry,
        provisioner: {
          ...entry.provisioner,
          bootTest: { enabled: true, check: 'console', pattern: 'login:' },
        },
      },
    };
    const steps = libvirtSteps(env);
    const copied = await steps.copy_image?.(stepRun(cap.input('copy_image', facts)));
    const artifact = copied?.artifact;
    if (!artifact) throw new Error('no artifact');
    const domain = `vcl-boot-${cap.input('x').captureId}`;
    const overlay = `.vcl-boot-${cap.input('x').captureId}.qcow2`;
    const input = (step: string) => ({ ...cap.input(step, facts), artifact });

    // The first attempt: its guest hangs, and the attempt stops while the domain runs (as a killed runner's).
    small.faults.add({ kind: 'doesNotBoot', host: 'libvirt-host', mode: 'hang' });
    const kill = new AbortController();
    const watch = setInterval(() => {
      if (labTransientDomains().includes(domain)) kill.abort();
    }, 5);
    await expect(steps.boot_test?.(stepRun(input('boot_test'), { signal: kill.signal }))).rejects.toThrow();
    clearInterval(watch);
    expect(labTransientDomains()).toEqual([domain]);
    const disks = posix.dirname(String(facts.disk));
    expect(await filesWith(small, 'libvirt-host', disks, overlay)).toEqual([overlay]);

    small.clearLog();
    const out = await steps.boot_test?.(stepRun(input('boot_test'), { resumed: true }));
    expect(out?.facts?.bootTestMs).toBeGreaterThan(0);
    const sent = small.commands('libvirt-host').map((a) => a.join(' '));
    const destroyed = sent.indexOf(`virsh destroy ${domain}`);
    expect(destroyed).toBeGreaterThanOrEqual(0);
    expect(destroyed).toBeLessThan(sent.findIndex((l) => l.startsWith('qemu-img create')));
    expect(labTransientDomains()).toEqual([]);
    expect(await filesWith(small, 'libvirt-host', disks, '.vcl-boot-')).toEqual([]);
    // The image was only read: its bytes are still the copy's.
    expect(await small.sha256('libvirt-host', artifact.path)).toBe(artifact.sha256);
    // The compensation after a finished test finds nothing and succeeds.
    await expect(steps.remove_boot_test?.(stepRun(input('remove_boot_test')))).resolves.toEqual({});
  });
});

describe('VMware: a thin clone on the datastore, its 2gbsparse copy streamed into the repository', () => {
  it('power-off steps re-run when the VM is already off succeed; so does a hard power off the VM beat', async () => {
    const c = 'vm-linux-1';
    await powerOn(big, c);
    const env = driverEnv(big, pool, c);
    const steps = vmwareSteps(env);
    const cap = captureOf(big, c, 'off');
    let facts = (await steps.locate_vm?.(stepRun(cap.input('locate_vm'))))?.facts ?? {};
    facts = { ...facts, ...(await steps.check_target?.(stepRun(cap.input('check_target', facts))))?.facts };
    await steps.request_power_off?.(stepRun(cap.input('request_power_off', facts)));
    await steps.wait_power_off?.(stepRun(cap.input('wait_power_off', facts)));
    expect(big.computer(c).power).toBe('off');
    for (const step of ['request_power_off', 'wait_power_off', 'force_power_off', 'wait_forced_off'])
      await expect(steps[step]?.(stepRun(cap.input(step, facts), { resumed: true })), step).resolves.toEqual(
        {},
      );

    await powerOn(big, c);
    const racing = vmwareSteps({
      ...env,
      remote: interceptRemote(pool, ['vim-cmd', 'vmsvc/power.off'], () => big.powerOff(c)),
    });
    await expect(
      racing.force_power_off?.(stepRun(cap.input('force_power_off', facts), { resumed: true })),
    ).resolves.toEqual({});
    expect(big.computer(c).power).toBe('off');
  });

  it('clone_disk and copy_to_repository re-run over what a killed process leaves: one set, the source disk; the cleanup leaves nothing', async () => {
    const c = 'vm-linux-2';
    await powerOff(big, c);
    const env = driverEnv(big, pool, c);
    const steps = vmwareSteps(env);
    const cap = captureOf(big, c, 'off');
    const repo = repoOf(env);
    let facts = (await steps.locate_vm?.(stepRun(cap.input('locate_vm'))))?.facts ?? {};
    facts = { ...facts, ...(await steps.check_target?.(stepRun(cap.input('check_target', facts))))?.facts };
    const clone = String(facts.clone);
    const flat = clone.replace(/\.vmdk$/, '-flat.vmdk');
    const target = String(facts.target);
    const image = posix.basename(target);
    const source = await big.diskSha256(c);

    // A clone killed half-way leaves its data file; one that completed, both files (vmkfstools then
    // refuses the destination).
    await leave(big, 'esxi-host', flat);
    await steps.clone_disk?.(stepRun(cap.input('clone_disk', facts), { resumed: true }));
    await expect(
      steps.clone_disk?.(stepRun(cap.input('clone_disk', facts), { resumed: true })),
    ).resolves.toEqual({});
    expect(await big.sha256('esxi-host', flat)).toBe(source);

    // The repository copy: a 2gbsparse set staged beside the clone, its files streamed one by one. Killed
    // while the extent streams; then also with the descriptor already renamed into place and a staged
    // extent half-written on the datastore.
    const extent = `${cap.name}-s001.vmdk`;
    const set = [extent, image, `${cap.name}.vmx`, `${image}.sha256`].sort();
    await interrupted(
      big,
      env,
      (signal) =>
        steps.copy_to_repository?.(
          stepRun(cap.input('copy_to_repository', facts), { signal }),
        ) as Promise<unknown>,
      (n) => n.startsWith(`.${extent}.vcl-tmp-`),
      MiB,
    );
    await leave(big, repo.host, `${repo.path}/.${extent}${KILLED_TMP_SUFFIX}`);
    await leave(big, repo.host, target);
    await leave(big, 'esxi-host', posix.join(posix.dirname(clone), 'repository', extent));
    expect(await filesWith(big, repo.host, repo.path, cap.name)).toEqual(
      [`.${extent}${KILLED_TMP_SUFFIX}`, image].sort(),
    );
    for (const attempt of ['after the interruption', 'after the copy completed']) {
      const out = await steps.copy_to_repository?.(
        stepRun(cap.input('copy_to_repository', facts), { resumed: true }),
      );
      if (!out?.artifact) throw new Error(`no artifact ${attempt}`);
      await expectVmdkSet(big, repo.host, out.artifact, big.computer(c).disk.real);
      expect(await filesWith(big, repo.host, repo.path, cap.name), attempt).toEqual(set);
      // The staged set is gone from the datastore; the clone stays (VCL's datastore copy).
      expect(await big.exists('esxi-host', posix.join(posix.dirname(clone), 'repository')), attempt).toBe(
        false,
      );
      expect(await big.sha256('esxi-host', flat), attempt).toBe(source);
    }

    // Killed once more mid-copy, then the capture fails: its cleanup leaves nothing.
    await leave(big, repo.host, `${repo.path}/.${extent}${KILLED_TMP_SUFFIX}`);
    for (let i = 0; i < 2; i++) {
      await steps.remove_repository_copy?.(
        stepRun(cap.input('remove_repository_copy', facts), { resumed: i > 0 }),
      );
      await steps.remove_clone?.(stepRun(cap.input('remove_clone', facts), { resumed: i > 0 }));
      expect(await filesWith(big, repo.host, repo.path, cap.name)).toEqual([]);
      expect(await big.exists('esxi-host', posix.dirname(clone))).toBe(false);
    }
    expect(await big.diskSha256(c)).toBe(source);
  });
});

/** An xCAT capture of `c` (end state off) past check_target and set_capture_boot. */
async function bootingCaptureImage(c: string) {
  const env = driverEnv(small, pool, c);
  const steps = xcatSteps(env);
  const cap = captureOf(small, c, 'off');
  const { facts = {} } = (await steps.check_target?.(stepRun(cap.input('check_target')))) ?? {};
  await steps.set_capture_boot?.(stepRun(cap.input('set_capture_boot', facts)));
  return { env, steps, cap, repo: repoOf(env), facts, image: `${cap.name}.img` };
}

describe('xCAT: the capture environment uploads, the provisioner watches', () => {
  it('ensure_node_on re-run after it powered the node on, watch_upload interrupted and re-run: the uploaded image, once', async () => {
    const c = 'xc-linux-1';
    const { env, steps, cap, repo, facts, image } = await bootingCaptureImage(c);
    // The OS shut down (end state off); the step powers the node on, into the capture image.
    await powerOff(small, c);
    const boots = small.computer(c).boots;
    await steps.ensure_node_on?.(stepRun(cap.input('ensure_node_on', facts)));
    // Its re-run finds the node on in the capture image: done, not waiting for a power off that comes
    // only when the upload is over (the deadline is shorter than the upload).
    await expect(
      steps.ensure_node_on?.(stepRun(cap.input('ensure_node_on', facts), { resumed: true, timeoutMs: 400 })),
    ).resolves.toEqual({});
    await steps.wait_capture_env?.(stepRun(cap.input('wait_capture_env', facts)));
    await steps.wait_capture_env?.(stepRun(cap.input('wait_capture_env', facts), { resumed: true }));

    await interrupted(
      small,
      env,
      (signal) =>
        steps.watch_upload?.(stepRun(cap.input('watch_upload', facts), { signal })) as Promise<unknown>,
      (n) => n === image,
      512 * 1024,
    );
    const source = await small.diskSha256(c);
    for (const attempt of ['during the upload', 'after it completed']) {
      const out = await steps.watch_upload?.(stepRun(cap.input('watch_upload', facts), { resumed: true }));
      expect(out?.artifact?.sha256, attempt).toBe(source);
      expect(await small.sha256(repo.host, `${repo.path}/${image}`), attempt).toBe(source);
      expect(await filesWith(small, repo.host, repo.path, cap.name), attempt).toEqual([
        image,
        `${image}.capturedone`,
      ]);
    }
    // Re-runs of the earlier steps once the upload is over and the node halted: nothing starts again.
    await small.waitForPower(c, 'off');
    await steps.wait_capture_env?.(stepRun(cap.input('wait_capture_env', facts), { resumed: true }));
    await steps.ensure_node_on?.(stepRun(cap.input('ensure_node_on', facts), { resumed: true }));
    expect(small.computer(c).power).toBe('off');
    expect(small.computer(c).boots).toBe(boots + 1);
    await steps.reset_boot?.(stepRun(cap.input('reset_boot', facts)));
    await steps.reset_boot?.(stepRun(cap.input('reset_boot', facts), { resumed: true }));
  });

  it('remove_upload while the capture environment still uploads (its watcher killed) leaves nothing, not even a late marker', async () => {
    const c = 'xc-linux-2';
    const { steps, cap, repo, facts, image } = await bootingCaptureImage(c);
    await powerOff(small, c);
    await steps.ensure_node_on?.(stepRun(cap.input('ensure_node_on', facts)));
    await waitForFile(small, repo.host, repo.path, (n) => n === image, 256 * 1024);
    for (let i = 0; i < 2; i++)
      await steps.remove_upload?.(stepRun(cap.input('remove_upload', facts), { resumed: i > 0 }));
    // Longer than the rest of the upload would have taken.
    await new Promise((r) => setTimeout(r, 900));
    expect(await filesWith(small, repo.host, repo.path, cap.name)).toEqual([]);
    expect(small.computer(c).power).toBe('off');
  });

  it('remove_upload powers off a node still up in its OS while its next boot is the capture image', async () => {
    // pre_capture failed, or its reboot is still on its way: the node would boot into the capture
    // environment and upload after the removal (before reset_boot runs). Only a node that is off is safe.
    const c = 'xc-linux-1';
    await powerOff(small, c);
    await small.waitForPower(c, 'off');
    await pool.exec(driverEnv(small, pool, c).provisionerHost, ['nodeset', c, 'boot']);
    await powerOn(small, c);
    expect(small.computer(c).running).toBe('os');
    const { steps, cap, repo, facts } = await bootingCaptureImage(c);
    await steps.remove_upload?.(stepRun(cap.input('remove_upload', facts)));
    expect(small.computer(c).power).toBe('off');
    expect(await filesWith(small, repo.host, repo.path, cap.name)).toEqual([]);
  });
});

describe('OS end state re-run after a crash', () => {
  const linux = 'lv-linux-4';

  async function bootIdOf(env: DriverEnv, computer: string): Promise<string> {
    const out = await osSteps(env).ensure_responding?.(stepRun(osInput(big, computer, 'ensure_responding')));
    if (!out?.bootId) throw new Error('no boot id');
    return out.bootId;
  }

  it('shutdown: resumed after the guest went down it succeeds; a first run on a guest that does not answer fails', async () => {
    await powerOn(big, linux);
    const env = driverEnv(big, pool, linux);
    const os = osSteps(env);
    const id = await bootIdOf(env, linux);
    await os.shutdown?.(stepRun(osInput(big, linux, 'shutdown', id)));
    await big.waitForPower(linux, 'off');
    const started = Date.now();
    await expect(
      os.shutdown?.(stepRun(osInput(big, linux, 'shutdown', id), { resumed: true, timeoutMs: 20_000 })),
    ).resolves.toEqual({});
    // Seen gone by its probe, not by waiting out the step's budget.
    expect(Date.now() - started).toBeLessThan(10_000);
    await expect(
      os.shutdown?.(stepRun(osInput(big, linux, 'shutdown', id), { timeoutMs: 1500 })),
    ).rejects.toThrow();
    expect(big.computer(linux).power).toBe('off');
  });

  it('shutdown: resumed while the guest still answers with its boot id, the command is sent again', async () => {
    await powerOn(big, linux);
    const env = driverEnv(big, pool, linux);
    const id = await bootIdOf(env, linux);
    await osSteps(env).shutdown?.(stepRun(osInput(big, linux, 'shutdown', id), { resumed: true }));
    await big.waitForPower(linux, 'off');
  });

  it('reboot: resumed after the guest came back with a new boot id, no second reboot; with its old id, sent again', async () => {
    await powerOn(big, linux);
    const env = driverEnv(big, pool, linux);
    const os = osSteps(env);
    const before = await bootIdOf(env, linux);
    await os.reboot?.(stepRun(osInput(big, linux, 'reboot', before)));
    const until = Date.now() + 10_000;
    while (big.computer(linux).power !== 'on' || big.computer(linux).bootId === before) {
      if (Date.now() > until) throw new Error('no reboot');
      await new Promise((r) => setTimeout(r, 5));
    }
    const boots = big.computer(linux).boots;
    await expect(
      os.reboot?.(stepRun(osInput(big, linux, 'reboot', before), { resumed: true })),
    ).resolves.toEqual({});
    await new Promise((r) => setTimeout(r, 150));
    expect(big.computer(linux).boots).toBe(boots);

    // The same boot id still: the interrupted attempt's command never took effect.
    const now = big.computer(linux).bootId;
    await os.reboot?.(stepRun(osInput(big, linux, 'reboot', now), { resumed: true }));
    const back = Date.now() + 10_000;
    while (big.computer(linux).boots === boots) {
      if (Date.now() > back) throw new Error('the reboot was not sent again');
      await new Promise((r) => setTimeout(r, 5));
    }
  });

  it('Windows pre_capture step that reboots, resumed after its reboot: the new boot id, no second reboot', async () => {
    const win = 'lv-windows-1';
    await powerOn(big, win);
    const env = driverEnv(big, pool, win);
    const os = osSteps(env);
    const before = await bootIdOf(env, win);
    const first = await os.disable_pagefile?.(stepRun(osInput(big, win, 'disable_pagefile', before)));
    expect(first?.bootId).toBeDefined();
    expect(first?.bootId).not.toBe(before);
    const boots = big.computer(win).boots;
    const again = await os.disable_pagefile?.(
      stepRun(osInput(big, win, 'disable_pagefile', before), { resumed: true }),
    );
    expect(again).toEqual({ bootId: first?.bootId });
    expect(big.computer(win).boots).toBe(boots);
  });

  it('Windows shutdown resumed, answered "a system shutdown is in progress": the interrupted attempt’s own, done', async () => {
    const ID = '20260101000000.000000+000';
    const sent: string[][] = [];
    const env = fakeGuestEnv('windows', (argv) => {
      sent.push([...argv]);
      if (argv[0] === 'wmic') return execResult(0, `LastBootUpTime=${ID}\r\n`);
      return execResult(91, '', 'A system shutdown is in progress.(1115)\r\n');
    });
    const input = { step: 'shutdown', os: 'windows', bootId: ID, deadline: Date.now() + 5000 } as OsStepInput;
    await expect(osSteps(env).shutdown?.(stepRun(input, { resumed: true }))).resolves.toEqual({});
    expect(sent.map((a) => a[0])).toEqual(['wmic', 'shutdown.exe']);
  });
});

describe('the command that removes a copy’s temporary files', () => {
  it('matches that destination’s temporary files only, in its own folder, and refuses glob characters', () => {
    expect(copyLeftoversCommand('/srv/vcl/images/linux-A1-v0.qcow2')).toEqual([
      'find',
      '/srv/vcl/images',
      '-mindepth',
      '1',
      '-maxdepth',
      '1',
      '-type',
      'f',
      '-name',
      '.linux-A1-v0.qcow2.vcl-tmp-*',
      '-exec',
      'rm',
      '-f',
      '--',
      '{}',
      '+',
    ]);
    for (const bad of ['/r/a*.img', '/r/a?.img', '/r/[ab].img', '/r/a\\b.img', '/', '-r/x.img'])
      expect(() => copyLeftoversCommand(bad), bad).toThrow();
  });
});
