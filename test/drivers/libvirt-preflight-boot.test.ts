/**
 * libvirt's preflight (the checks of `vcl-capture preflight` and of inspect_domain) and its boot test
 * steps (boot_test, remove_boot_test) one by one against the lab: each check's name, status and the text
 * a user reads, each failure's code and message; the commands the boot test sends, what it returns, how
 * it fails, and what its removal tolerates.
 */
import { copyFile } from 'node:fs/promises';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CaptureStepInput, Facts } from '../../machines/index.js';
import type { Remote } from '../../src/drivers/contract.js';
import type { DriverEnv } from '../../src/drivers/env.js';
import type { Inventory } from '../../src/inventory/schema.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { silentLogger } from '../../src/log.js';
import { labTransientDomains } from '../../src/provisioners/libvirt/lab-commands.js';
import { libvirtPreflight, libvirtSteps } from '../../src/provisioners/libvirt/steps.js';
import { SshPool } from '../../src/ssh/index.js';
import { type BootTestSetting, withBootTest } from '../helpers/boot-test.js';
import { changed, check, inventoryEnv, preflightOf as preflightWith, statuses } from './preflight-helpers.js';
import { captureOf, filesWith, refusal, stepRun } from './rerun-helpers.js';

const IMAGES = '/var/lib/libvirt/images';
const SSH_PORT = 20122;

let lab: Lab;
let pool: SshPool;

beforeAll(async () => {
  lab = await startLab({ powerDelayMs: 20, computers: { 'libvirt-linux': 3 } });
  pool = new SshPool({ logger: silentLogger() });
});

afterEach(() => {
  lab.faults.clear();
});

afterAll(async () => {
  await pool?.close();
  await lab?.stop();
});

/** The environment the runner gives a capture of `computer` under `inventory` (changed by the test). */
function envOf(computer: string, inventory: Inventory = lab.inventory, remote: Remote = pool): DriverEnv {
  return inventoryEnv(inventory, remote, computer);
}

/** The collecting preflight as `vcl-capture preflight` runs it: every check recorded. */
function preflightOf(env: DriverEnv, imageName?: string, target?: boolean) {
  return preflightWith(libvirtPreflight, env, imageName, target);
}

/** The lines `lab` received on the libvirt host while `fn` ran. */
async function sentDuring(fn: () => Promise<unknown>): Promise<string[]> {
  const from = lab.commandLog.length;
  await fn();
  return lab.commandLog
    .slice(from)
    .filter((e) => e.host === 'libvirt-host' && e.argv)
    .map((e) => (e.argv as string[]).join(' '));
}

const GiB = 1024 ** 3;

/** qemu-img info's answer for a disk of `virtual` bytes with `actual` allocated (absent: a block device). */
function imageInfo(format: string, virtual: number, actual?: number) {
  return {
    kind: 'failCommand' as const,
    host: 'libvirt-host',
    match: ['qemu-img', 'info'],
    exitCode: 0,
    stdout: JSON.stringify({
      format,
      'virtual-size': virtual,
      ...(actual === undefined ? {} : { 'actual-size': actual }),
    }),
  };
}

function domblklist(rows: string) {
  return {
    kind: 'failCommand' as const,
    host: 'libvirt-host',
    match: ['virsh', 'domblklist'],
    exitCode: 0,
    stdout: ` Type      Device   Target   Source\n------------------------------------\n${rows}`,
  };
}

describe('libvirt preflight', () => {
  it('reports each host, the domain with its state and disk, the target free and the room for the copy; returns the facts', async () => {
    lab.faults.add(imageInfo('qcow2', 40 * GiB, 3 * GiB));
    const { facts, checks, ok } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre1-v0');
    expect(ok).toBe(true);
    expect(statuses(checks)).toEqual([
      ['reach libvirt-host', 'ok'],
      ['tools on libvirt-host', 'ok'],
      ['reach repo-host', 'ok'],
      ['tools on repo-host', 'ok'],
      ['domain lv-linux-1', 'ok'],
      ['target', 'ok'],
      ['space in repository images', 'ok'],
      ['space in staging folder', 'ok'],
    ]);
    expect(check(checks, 'domain lv-linux-1').detail).toBe(
      `running, first disk ${IMAGES}/lv-linux-1.qcow2 (qcow2, 3.0 GiB (3221225472 bytes) allocated)`,
    );
    expect(check(checks, 'target').detail).toBe('/srv/vcl/images/linux-Pre1-v0.qcow2 is free');
    // A qcow2 copy takes what the disk has allocated, in the repository and in the staging folder.
    for (const name of ['space in repository images', 'space in staging folder'])
      expect(check(checks, name).detail).toBe(
        '512.0 GiB (549755813888 bytes) free, 4.0 GiB (4294967296 bytes) needed',
      );
    expect(facts).toStrictEqual({
      domain: 'lv-linux-1',
      disk: `${IMAGES}/lv-linux-1.qcow2`,
      sourceFormat: 'qcow2',
      target: '/srv/vcl/images/linux-Pre1-v0.qcow2',
    });
  });

  it('a domain that is off, copied raw to another host: the repository needs the whole virtual size', async () => {
    lab.powerOff('lv-linux-3');
    await lab.waitForPower('lv-linux-3', 'off');
    lab.faults.add(imageInfo('qcow2', 40 * GiB, 3 * GiB));
    const raw = changed(lab.inventory, 'lv-linux-3', (e) => {
      (e.provisioner as { format: string }).format = 'raw';
    });
    const { facts, checks } = await preflightOf(envOf('lv-linux-3', raw), 'linux-Raw1-v0');
    lab.powerOn('lv-linux-3');
    expect(check(checks, 'domain lv-linux-3').detail).toMatch(/^shut off, first disk /);
    expect(check(checks, 'space in repository images').detail).toBe(
      '512.0 GiB (549755813888 bytes) free, 42.0 GiB (45097156608 bytes) needed',
    );
    expect(check(checks, 'space in staging folder').detail).toBe(
      '512.0 GiB (549755813888 bytes) free, 4.0 GiB (4294967296 bytes) needed',
    );
    expect(facts?.target).toBe('/srv/vcl/images/linux-Raw1-v0.raw');
    await lab.waitForPower('lv-linux-3', 'on');
  });

  it('without the target check (no image name from the CLI) the target is skipped and no target fact returned', async () => {
    const named = await preflightOf(envOf('lv-linux-1'), 'linux-Pre2-v0', false);
    expect(check(named.checks, 'target')).toEqual({
      name: 'target',
      status: 'skipped',
      detail: 'no image name given',
    });
    expect(named.ok).toBe(true);
    expect(named.facts).toStrictEqual({
      domain: 'lv-linux-1',
      disk: `${IMAGES}/lv-linux-1.qcow2`,
      sourceFormat: 'qcow2',
    });
  });

  it('a repository on the libvirt host: one host checked, no staging folder', async () => {
    const local = changed(lab.inventory, 'lv-linux-1', (e) => {
      e.repository = 'kvm-local';
    });
    const { checks, facts } = await preflightOf(envOf('lv-linux-1', local), 'linux-Pre3-v0');
    expect(statuses(checks)).toEqual([
      ['reach libvirt-host', 'ok'],
      ['tools on libvirt-host', 'ok'],
      ['domain lv-linux-1', 'ok'],
      ['target', 'ok'],
      ['space in repository kvm-local', 'ok'],
    ]);
    expect(facts?.target).toBe('/var/lib/vcl/images/linux-Pre3-v0.qcow2');
  });

  it('a block device disk is copied: its size is its virtual size', async () => {
    lab.faults.add(domblklist(' block     disk     vda      /dev/vg0/lv-linux-1\n'));
    lab.faults.add(imageInfo('raw', 8 * GiB));
    const local = changed(lab.inventory, 'lv-linux-1', (e) => {
      e.repository = 'kvm-local';
    });
    const { checks, facts, ok } = await preflightOf(envOf('lv-linux-1', local), 'linux-Blk1-v0');
    expect(ok).toBe(true);
    expect(check(checks, 'domain lv-linux-1').detail).toBe(
      'running, first disk /dev/vg0/lv-linux-1 (raw, 8.0 GiB (8589934592 bytes) allocated)',
    );
    expect(check(checks, 'space in repository kvm-local').detail).toMatch(
      /, 9\.0 GiB \(9663676416 bytes\) needed$/,
    );
    expect(facts).toMatchObject({ disk: '/dev/vg0/lv-linux-1', sourceFormat: 'raw' });
  });

  it('a host that fails its check skips the domain and asks the libvirt host nothing about it', async () => {
    lab.faults.add({ kind: 'unreachable', host: 'repo-host' });
    let result: Awaited<ReturnType<typeof preflightOf>> | undefined;
    const sent = await sentDuring(async () => {
      result = await preflightOf(envOf('lv-linux-1'), 'linux-Pre4-v0');
    });
    expect(result?.facts).toBeUndefined();
    expect(statuses(result?.checks ?? [])).toEqual([
      ['reach libvirt-host', 'ok'],
      ['tools on libvirt-host', 'ok'],
      ['reach repo-host', 'failed'],
      ['tools on repo-host', 'skipped'],
      ['domain lv-linux-1', 'skipped'],
    ]);
    expect(check(result?.checks ?? [], 'domain lv-linux-1').detail).toBe(
      'a host on the path failed its check',
    );
    expect(sent.filter((l) => l.startsWith('virsh'))).toEqual([]);
  });

  it('a domain the libvirt host does not have: NOT_FOUND saying what to fix; the target is skipped', async () => {
    const gone = changed(lab.inventory, 'lv-linux-1', (e) => {
      (e.provisioner as { domain: string }).domain = 'lv-gone';
    });
    const { checks, facts } = await preflightOf(envOf('lv-linux-1', gone), 'linux-Pre5-v0');
    expect(facts).toBeUndefined();
    expect(checks.slice(-2)).toEqual([
      {
        name: 'domain lv-gone',
        status: 'failed',
        detail:
          'libvirt-host has no domain lv-gone: define it there (virsh define) or fix provisioner.domain of lv-linux-1 in the inventory',
        error: {
          code: 'NOT_FOUND',
          message:
            'libvirt-host has no domain lv-gone: define it there (virsh define) or fix provisioner.domain of lv-linux-1 in the inventory',
        },
      },
      { name: 'target', status: 'skipped', detail: 'the check of domain lv-gone failed' },
    ]);
    // The capture's step (stopping at the first failure) throws it with the domain named.
    const steps = libvirtSteps(envOf('lv-linux-1', gone));
    const cap = captureOf(lab, 'lv-linux-1', 'off');
    const err = await refusal(Promise.resolve(steps.inspect_domain?.(stepRun(cap.input('inspect_domain')))));
    expect(err).toMatchObject({ code: 'NOT_FOUND', details: { domain: 'lv-gone' } });
  });

  it('virsh domstate failing otherwise is COMMAND_FAILED with its stderr, not NOT_FOUND', async () => {
    lab.faults.add({
      kind: 'failCommand',
      host: 'libvirt-host',
      match: ['virsh', 'domstate'],
      exitCode: 1,
      stdout: 'running (booted)\n',
      stderr: 'error: failed to connect to the hypervisor\n',
    });
    const { checks } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre6-v0');
    expect(check(checks, 'domain lv-linux-1').error).toEqual({
      code: 'COMMAND_FAILED',
      message: 'virsh domstate lv-linux-1 on libvirt-host failed: error: failed to connect to the hypervisor',
    });
  });

  it('a network (rbd) disk is refused as UNSUPPORTED_DISK, naming its target and type', async () => {
    lab.faults.add({ ...domblklist(' network   disk     vda      libvirt-pool/lv-linux-1\n'), times: 2 });
    const { checks, facts } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre7-v0');
    expect(facts).toBeUndefined();
    expect(check(checks, 'domain lv-linux-1').error).toEqual({
      code: 'UNSUPPORTED_DISK',
      message: "lv-linux-1's first disk (vda) is a network disk; a capture copies file or block disks only",
    });
    expect(check(checks, 'target').status).toBe('skipped');
    const steps = libvirtSteps(envOf('lv-linux-1'));
    const cap = captureOf(lab, 'lv-linux-1', 'off');
    const err = await refusal(Promise.resolve(steps.inspect_domain?.(stepRun(cap.input('inspect_domain')))));
    expect(err.details).toEqual({ type: 'network', source: 'libvirt-pool/lv-linux-1' });
  });

  it('a target the repository already holds fails TARGET_EXISTS; no space is checked', async () => {
    const path = '/srv/vcl/images/linux-Taken9-v0.qcow2';
    const { writeFile, rm } = await import('node:fs/promises');
    const real = await lab.realPath('repo-host', path);
    await writeFile(real, 'an older image');
    const { checks, facts } = await preflightOf(envOf('lv-linux-1'), 'linux-Taken9-v0');
    await rm(real);
    expect(facts).toBeUndefined();
    expect(statuses(checks).slice(4)).toEqual([
      ['domain lv-linux-1', 'ok'],
      ['target', 'failed'],
    ]);
    expect(check(checks, 'target').error).toEqual({
      code: 'TARGET_EXISTS',
      message: `the repository already holds ${path}; nothing is overwritten`,
    });
  });

  it('a full repository fails PREFLIGHT_NO_SPACE; the staging folder is still checked; no facts', async () => {
    lab.faults.add(imageInfo('qcow2', 40 * GiB, 3 * GiB));
    lab.faults.add({ kind: 'diskFull', host: 'repo-host' });
    const { checks, facts, ok } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre8-v0');
    expect(ok).toBe(false);
    expect(facts).toBeUndefined();
    expect(statuses(checks).slice(-2)).toEqual([
      ['space in repository images', 'failed'],
      ['space in staging folder', 'ok'],
    ]);
    expect(check(checks, 'space in repository images').error).toEqual({
      code: 'PREFLIGHT_NO_SPACE',
      message:
        "repository images (repo-host:/srv/vcl/images) has 0 bytes free; the capture needs 4.0 GiB (4294967296 bytes) (the copy's 3.0 GiB (3221225472 bytes) plus the margin): free space there or point the inventory at a larger one",
    });
  });

  it('a full staging folder beside the disk fails PREFLIGHT_NO_SPACE there', async () => {
    lab.faults.add({ kind: 'diskFull', host: 'libvirt-host' });
    const { checks, facts } = await preflightOf(envOf('lv-linux-1'), 'linux-Pre9-v0');
    expect(facts).toBeUndefined();
    expect(check(checks, 'space in staging folder').error?.message).toMatch(
      /^staging folder \(libvirt-host:\/var\/lib\/libvirt\/images\) has 0 bytes free/,
    );
  });

  // The detail's text is matched with an optional `}`: steps.ts has a stray brace after the check's text.
  it('with the boot test on: checks it can boot the image where it lies, and says how it sees the boot', async () => {
    const console = await preflightOf(
      envOf('lv-linux-1', withBootTest(lab.inventory, ['lv-linux-1'])),
      'linux-Bt1-v0',
    );
    expect(statuses(console.checks).slice(-1)).toEqual([['boot test', 'ok']]);
    expect(check(console.checks, 'boot test').detail).toMatch(
      /^console line \/login:\/, from an overlay beside the disk$/,
    );
    expect(console.facts).toStrictEqual({
      domain: 'lv-linux-1',
      disk: `${IMAGES}/lv-linux-1.qcow2`,
      sourceFormat: 'qcow2',
      target: '/var/lib/vcl/images/linux-Bt1-v0.qcow2',
      bootTest: true,
    });
    const ssh = await preflightOf(
      envOf('lv-linux-1', withBootTest(lab.inventory, ['lv-linux-1'], { check: 'ssh', port: SSH_PORT })),
    );
    expect(check(ssh.checks, 'boot test').detail).toMatch(
      /^SSH banner on 127\.0\.0\.1:20122, from an overlay beside the disk$/,
    );
  });

  it('the boot test of an image on another host is refused as BOOT_TEST_UNSUPPORTED; none after a failed check', async () => {
    const far = withBootTest(lab.inventory, ['lv-linux-1']);
    const entry = far.computers['lv-linux-1'];
    if (entry) entry.repository = 'images';
    const refused = await preflightOf(envOf('lv-linux-1', far), 'linux-Bt2-v0');
    expect(refused.facts).toBeUndefined();
    expect(check(refused.checks, 'boot test').error).toEqual({
      code: 'BOOT_TEST_UNSUPPORTED',
      message:
        'the boot test of lv-linux-1 boots the image on libvirt-host, but repository images is on repo-host: capture into a repository on libvirt-host or set provisioner.bootTest.enabled to false',
    });
    lab.faults.add({ kind: 'diskFull', host: 'libvirt-host' });
    const full = await preflightOf(
      envOf('lv-linux-1', withBootTest(lab.inventory, ['lv-linux-1'])),
      'linux-Bt3-v0',
    );
    expect(full.checks.map((c) => c.name)).not.toContain('boot test');
  });
});

/**
 * A boot test of `computer`'s captured image (a copy of its disk in the repository on the libvirt host),
 * its steps' log kept in `logged`; `remote` and `pollMs` replace the runner's.
 */
async function bootCase(
  computer: string,
  setting: BootTestSetting = {},
  options: { remote?: Remote; pollMs?: number } = {},
) {
  const env = {
    ...envOf(computer, withBootTest(lab.inventory, [computer], setting), options.remote),
    ...(options.pollMs === undefined ? {} : { pollMs: options.pollMs }),
  };
  const logged: { level: number; msg: string; [field: string]: unknown }[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => logged.push(JSON.parse(line)) });
  const steps = libvirtSteps(env);
  const cap = captureOf(lab, computer, 'off');
  const disk = `${IMAGES}/${computer}.qcow2`;
  const path = `/var/lib/vcl/images/${cap.name}.qcow2`;
  await copyFile(await lab.realPath('libvirt-host', disk), await lab.realPath('libvirt-host', path));
  const id = String(cap.input('x').captureId);
  const names = {
    domain: `vcl-boot-${id}`,
    overlay: `${IMAGES}/.vcl-boot-${id}.qcow2`,
    xml: `${IMAGES}/.vcl-boot-${id}.xml`,
    console: `${IMAGES}/.vcl-boot-${id}.console.log`,
  };
  const input = (step: string, facts: Facts = { disk }, withArtifact = true): CaptureStepInput => ({
    ...cap.input(step, facts),
    ...(withArtifact ? { artifact: { path, format: 'qcow2', sizeBytes: 1, sha256: 'x'.repeat(64) } } : {}),
  });
  const run = (step: string, i: CaptureStepInput = input(step), timeoutMs = 20_000) => {
    const fn = steps[step];
    if (!fn) throw new Error(`no step ${step}`);
    return fn({ ...stepRun(i, { timeoutMs }), log });
  };
  const removal = [
    `virsh destroy ${names.domain}`,
    `virsh undefine ${names.domain}`,
    `rm -f -- ${names.overlay} ${names.xml} ${names.console}`,
  ];
  return { env, cap, disk, path, names, input, run, removal, logged };
}

/** The log lines at warning level or above. */
const warnings = (logged: { level: number }[]) => logged.filter((l) => l.level >= 40);

/** `pool`, keeping the domain XML each `tee` is given (the boot test's definition of its test domain). */
function xmlKept(): Remote & { xml: string[] } {
  const xml: string[] = [];
  return {
    xml,
    exec: (host, argv, options) => {
      if (argv[0] === 'tee') xml.push(String(options?.stdin));
      return pool.exec(host, argv, options);
    },
    copy: (from, to, options) => pool.copy(from, to, options),
  };
}

/** The libvirt host answers `argv` so, once (a `failCommand` fault: exit code and output chosen). */
function libvirtAnswers(argv: string[], answer: { exitCode: number; stdout?: string; stderr?: string }) {
  lab.faults.add({ kind: 'failCommand', host: 'libvirt-host', match: argv, ...answer });
}

/** The test domain answers `virsh domstate` with `shut off` once: the boot test reads its console then. */
function foundOff(names: { domain: string }) {
  libvirtAnswers(['virsh', 'domstate', names.domain], { exitCode: 0, stdout: 'shut off (destroyed)\n\n' });
}

/** What a boot test left: its hidden files beside the disks, its live transient domain. */
async function leftovers(domain: string) {
  return {
    files: await filesWith(lab, 'libvirt-host', IMAGES, '.vcl-boot-'),
    domain: labTransientDomains().includes(domain),
  };
}

describe('libvirt boot test steps', () => {
  it('boots the image in a transient domain on a qcow2 overlay, watches its console, removes both; returns the boot time', async () => {
    const b = await bootCase('lv-linux-1');
    let out: Awaited<ReturnType<typeof b.run>> | undefined;
    const sent = await sentDuring(async () => {
      out = await b.run('boot_test');
    });
    expect(sent.slice(0, 8)).toEqual([
      ...b.removal,
      `qemu-img create -f qcow2 -b ${b.path} -F qcow2 ${b.names.overlay}`,
      `chown --reference=${b.disk} -- ${b.names.overlay}`,
      'virsh dumpxml --inactive lv-linux-1',
      `tee -- ${b.names.xml}`,
      `virsh create ${b.names.xml}`,
    ]);
    const waited = sent.slice(8, -3);
    expect(waited.length).toBeGreaterThanOrEqual(2);
    for (const [i, line] of waited.entries())
      expect(line).toBe(
        i % 2 === 0 ? `virsh domstate ${b.names.domain} --reason` : `cat -- ${b.names.console}`,
      );
    expect(sent.slice(-3)).toEqual(b.removal);
    const ms = Number(out?.facts?.bootTestMs);
    // The lab's guest prints its login prompt 150 ms after the domain starts.
    expect(ms).toBeGreaterThanOrEqual(150);
    expect(ms).toBeLessThan(10_000);
    expect(await leftovers(b.names.domain)).toEqual({ files: [], domain: false });
    // The overlay's chown succeeded: nothing to warn about.
    expect(warnings(b.logged)).toEqual([]);
  });

  it('the SSH check probes the forwarded port instead of reading the console; a chown that fails only warns', async () => {
    const b = await bootCase('lv-linux-2', { check: 'ssh', port: SSH_PORT });
    // A long error (the same line three times): the warning quotes its first 200 characters.
    const denied = `chown: changing ownership of '${b.names.overlay}': Operation not permitted\n`.repeat(3);
    libvirtAnswers(['chown'], {
      exitCode: 1,
      stderr: denied,
    });
    const sent = await sentDuring(() => b.run('boot_test'));
    expect(warnings(b.logged)).toEqual([
      expect.objectContaining({
        msg: 'the overlay keeps its owner: chown failed',
        stderr: denied.trim().slice(0, 200),
      }),
    ]);
    const probes = lab.commandLog
      .filter((e) => e.host === 'libvirt-host' && e.argv?.[0] === 'bash')
      .map((e) => e.argv?.[4]);
    expect(probes.length).toBeGreaterThan(0);
    expect(new Set(probes)).toEqual(new Set([String(SSH_PORT)]));
    expect(sent.filter((l) => l.startsWith(`cat -- ${b.names.console}`))).toEqual([]);
    expect(await leftovers(b.names.domain)).toEqual({ files: [], domain: false });
  });

  it('a guest that never shows it booted fails BOOT_TEST_FAILED before the deadline, quoting its console; remove_boot_test removes it', async () => {
    const b = await bootCase('lv-linux-3');
    lab.faults.add({ kind: 'doesNotBoot', host: 'libvirt-host', mode: 'hang' });
    // It ends a fifth of the budget early (BOOT_TEST_FAILED, not the step's own timeout): time to clean up.
    const err = await refusal(b.run('boot_test', b.input('boot_test'), 400));
    expect(err.code).toBe('BOOT_TEST_FAILED');
    expect(err.message).toMatch(
      new RegExp(
        `^the image ${b.path} did not show it booted \\(no console line matching /login:/\\) within [0-9] s \\(console: SeaBIOS \\(version 1\\.16\\.0\\) \\| Booting from Hard Disk\\.\\.\\.\\)$`,
      ),
    );
    expect(err.details).toEqual({ domain: b.names.domain });
    expect((await leftovers(b.names.domain)).domain).toBe(true);
    const sent = await sentDuring(() => b.run('remove_boot_test'));
    expect(sent).toEqual(b.removal);
    expect(await leftovers(b.names.domain)).toEqual({ files: [], domain: false });
  });

  it('the SSH check of a guest that never answers names the port', async () => {
    const b = await bootCase('lv-linux-1', { check: 'ssh', port: SSH_PORT });
    lab.faults.add({ kind: 'doesNotBoot', host: 'libvirt-host', mode: 'hang' });
    const err = await refusal(b.run('boot_test', b.input('boot_test'), 300));
    expect(err.message).toMatch(/did not show it booted \(no SSH banner on 127\.0\.0\.1:20122\) within/);
    await b.run('remove_boot_test');
  });

  it('a test domain that vanishes (kernel panic) fails at once, with the last console lines', async () => {
    const b = await bootCase('lv-linux-2');
    lab.faults.add({ kind: 'doesNotBoot', host: 'libvirt-host', mode: 'panic' });
    const err = await refusal(b.run('boot_test', b.input('boot_test'), 20_000));
    expect(err).toMatchObject({
      code: 'BOOT_TEST_FAILED',
      message: `the image ${b.path} did not boot: its test domain vanished before the guest showed it booted (console: SeaBIOS (version 1.16.0) | Booting from Hard Disk... | Kernel panic - not syncing: No working init found.)`,
      details: { domain: b.names.domain },
    });
    await b.run('remove_boot_test');
    expect(await leftovers(b.names.domain)).toEqual({ files: [], domain: false });
  });

  it('a test domain found shut off or crashed fails with its state; an empty console is said so', async () => {
    for (const [state, shown] of [
      ['shut off (destroyed)', 'shut off'],
      ['crashed (panicked)', 'crashed'],
    ]) {
      const b = await bootCase('lv-linux-3');
      libvirtAnswers(['virsh', 'domstate', b.names.domain], {
        exitCode: 0,
        stdout: `${state}\n\n`,
      });
      libvirtAnswers(['cat', '--', b.names.console], {
        exitCode: 0,
        stdout: '\r\n\r\n',
      });
      const err = await refusal(b.run('boot_test'));
      expect(err.message).toBe(
        `the image ${b.path} did not boot: its test domain is ${shown} before the guest showed it booted (the console printed nothing)`,
      );
      await b.run('remove_boot_test');
    }
  });

  it('a virsh domstate that fails for another reason does not end the wait', async () => {
    const b = await bootCase('lv-linux-1');
    libvirtAnswers(['virsh', 'domstate', b.names.domain], {
      exitCode: 1,
      stdout: 'shut off (destroyed)\n',
      stderr: 'error: failed to connect to the hypervisor\n',
    });
    const out = await b.run('boot_test');
    expect(out.facts?.bootTestMs).toBeGreaterThanOrEqual(150);
  });

  it('only a failed state read says the test domain vanished, not a read that succeeded with a warning', async () => {
    const b = await bootCase('lv-linux-1');
    libvirtAnswers(['virsh', 'domstate', b.names.domain], {
      exitCode: 0,
      stdout: 'running (booted)\n\n',
      stderr: "error: failed to get domain 'vcl-boot-other' (Domain not found) while listing\n",
    });
    const out = await b.run('boot_test');
    expect(out.facts?.bootTestMs).toBeGreaterThanOrEqual(150);
  });

  it('a console that cannot be read yet is read again; a failed test without a console file quotes none', async () => {
    const b = await bootCase('lv-linux-2');
    const noConsole = {
      kind: 'failCommand' as const,
      host: 'libvirt-host',
      match: ['cat', '--', b.names.console],
      exitCode: 1,
      stderr: `cat: ${b.names.console}: No such file or directory\n`,
    };
    lab.faults.add(noConsole);
    expect((await b.run('boot_test')).facts?.bootTestMs).toBeGreaterThanOrEqual(150);
    const c = await bootCase('lv-linux-3');
    foundOff(c.names);
    lab.faults.add({ ...noConsole, match: ['cat', '--', c.names.console] });
    expect(await refusal(c.run('boot_test'))).toMatchObject({
      code: 'BOOT_TEST_FAILED',
      message: `the image ${c.path} did not boot: its test domain is shut off before the guest showed it booted (the console printed nothing)`,
    });
    await c.run('remove_boot_test');
  });

  it("quotes the console's last three lines that are not blank, CRLF or LF, at most 300 characters", async () => {
    const b = await bootCase('lv-linux-1');
    foundOff(b.names);
    const [x, y, z] = ['a', 'b', 'c'].map((ch) => ch.repeat(120));
    libvirtAnswers(['cat', '--', b.names.console], {
      exitCode: 0,
      stdout: `SeaBIOS (version 1.16.0)\r\n${x}\r\n  \t \r\n${y}\n\n${z}\r\n`,
    });
    const err = await refusal(b.run('boot_test'));
    // Three lines of 120 joined with ' | ' make 366 characters: the quote keeps the last 300.
    expect(err.message).toBe(
      `the image ${b.path} did not boot: its test domain is shut off before the guest showed it booted (console: ${'a'.repeat(54)} | ${y} | ${z})`,
    );
    await b.run('remove_boot_test');
    // Short lines: the three last ones whole, not the line before them.
    const c = await bootCase('lv-linux-1');
    foundOff(c.names);
    lab.faults.add({
      kind: 'failCommand',
      host: 'libvirt-host',
      match: ['cat', '--', c.names.console],
      exitCode: 0,
      stdout:
        'SeaBIOS (version 1.16.0)\nBooting from Hard Disk...\nGRUB loading.\nKernel panic - not syncing\n',
    });
    expect((await refusal(c.run('boot_test'))).message).toBe(
      `the image ${c.path} did not boot: its test domain is shut off before the guest showed it booted (console: Booting from Hard Disk... | GRUB loading. | Kernel panic - not syncing)`,
    );
    await c.run('remove_boot_test');
  });

  it('with 10 s left it keeps polling a guest that has not booted at the first look', async () => {
    const b = await bootCase('lv-linux-2');
    libvirtAnswers(['cat', '--', b.names.console], {
      exitCode: 0,
      stdout: 'SeaBIOS (version 1.16.0)\r\n',
    });
    const out = await b.run('boot_test', b.input('boot_test'), 10_000);
    expect(out.facts?.bootTestMs).toBeGreaterThanOrEqual(150);
  });

  it('never sleeps past the end of its wait: with polls of 4 s in a 10 s budget it fails BOOT_TEST_FAILED, not at the deadline', async () => {
    const b = await bootCase('lv-linux-3', {}, { pollMs: 4000 });
    lab.faults.add({ kind: 'doesNotBoot', host: 'libvirt-host', mode: 'hang' });
    // The wait ends a fifth of the budget early (at 8 s): the poll at about 4 s is its last, then it fails.
    const err = await refusal(b.run('boot_test', b.input('boot_test'), 10_000));
    expect(err).toMatchObject({ code: 'BOOT_TEST_FAILED', details: { domain: b.names.domain } });
    expect(err.message).toMatch(/did not show it booted \(no console line matching \/login:\/\)/);
    await b.run('remove_boot_test');
  });

  it('a console pattern with ^ and $ matches a whole line in the middle of the console', async () => {
    const b = await bootCase('lv-linux-1', { pattern: '^Debian GNU/Linux 12 \\S+ ttyS0$' });
    const out = await b.run('boot_test');
    expect(out.facts?.bootTestMs).toBeGreaterThanOrEqual(150);
  });

  it('forwards the SSH port to the test domain for the SSH check only, not for a console check with a port', async () => {
    for (const [setting, forwarded] of [
      [{ check: 'ssh', port: SSH_PORT }, true],
      [{ check: 'console', port: SSH_PORT }, false],
      [{ check: 'console' }, false],
    ] as const) {
      const remote = xmlKept();
      const b = await bootCase('lv-linux-2', setting, { remote });
      await b.run('boot_test');
      expect(remote.xml, JSON.stringify(setting)).toHaveLength(1);
      expect(remote.xml[0]?.includes('hostfwd=tcp:127.0.0.1:20122-:22'), JSON.stringify(setting)).toBe(
        forwarded,
      );
      expect(remote.xml[0]?.includes('hostfwd'), JSON.stringify(setting)).toBe(forwarded);
    }
  });

  it('a re-run first removes the domain and overlay an earlier attempt left, then boots', async () => {
    const b = await bootCase('lv-linux-2');
    lab.faults.add({ kind: 'doesNotBoot', host: 'libvirt-host', mode: 'hang' });
    await refusal(b.run('boot_test', b.input('boot_test'), 300));
    expect((await leftovers(b.names.domain)).domain).toBe(true);
    const out = await b.run('boot_test');
    expect(out.facts?.bootTestMs).toBeGreaterThanOrEqual(150);
    expect(await leftovers(b.names.domain)).toEqual({ files: [], domain: false });
  });

  it('removal tolerates a domain already gone, not running or transient; any other virsh failure stands', async () => {
    const b = await bootCase('lv-linux-3');
    for (const [sub, stderr] of [
      ['destroy', "error: failed to get domain 'x'\n"],
      ['destroy', 'error: Domain not found: no domain with matching name\n'],
      ['destroy', 'error: Requested operation is not valid: domain is not running\n'],
      ['undefine', 'error: Requested operation is not valid: cannot undefine transient domain\n'],
    ] as const) {
      lab.faults.add({
        kind: 'failCommand',
        host: 'libvirt-host',
        match: ['virsh', sub, b.names.domain],
        exitCode: 1,
        stderr,
      });
      expect(await sentDuring(() => b.run('remove_boot_test'))).toEqual(b.removal);
    }
    libvirtAnswers(['virsh', 'undefine', b.names.domain], {
      exitCode: 1,
      stderr: 'error: internal error: cannot connect to the monitor\n',
    });
    const sent: string[] = [];
    const err = await refusal(
      sentDuring(() => b.run('remove_boot_test')).then((s) => {
        sent.push(...s);
      }),
    );
    expect(err).toMatchObject({
      code: 'COMMAND_FAILED',
      message: `virsh undefine ${b.names.domain} on libvirt-host failed: error: internal error: cannot connect to the monitor`,
    });
    expect(
      lab
        .commands('libvirt-host')
        .map((a) => a.join(' '))
        .at(-1),
    ).toBe(`virsh undefine ${b.names.domain}`);
  });

  it('without a source disk or an image: remove_boot_test sends nothing, boot_test refuses', async () => {
    const b = await bootCase('lv-linux-1');
    const sent = await sentDuring(async () => {
      expect(await b.run('remove_boot_test', b.input('remove_boot_test', {}))).toEqual({});
      for (const i of [b.input('boot_test', {}), b.input('boot_test', { disk: b.disk }, false)])
        expect(await refusal(b.run('boot_test', i))).toMatchObject({
          code: 'COMMAND_FAILED',
          message: 'boot_test runs after the copy: no image or source disk known',
        });
    });
    expect(sent).toEqual([]);
  });
});
