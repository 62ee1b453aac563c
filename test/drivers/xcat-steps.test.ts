/**
 * xCAT's step implementations one by one against the lab's management node over real SSH, on what a user
 * would see: the commands each step sends (no power-on that would capture twice, no power-off to a node
 * already off), the facts and artifact it hands on, what the repository holds after it, and each refusal's
 * code, message and details (bounded by the step's deadline where it waits).
 */
import { mkdir, rm, stat, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import type { CaptureStepInput, EndState } from '../../machines/index.js';
import type { Remote } from '../../src/drivers/contract.js';
import type { CopyStepProgress, DriverEnv } from '../../src/drivers/env.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { silentLogger } from '../../src/log.js';
import { xcatSteps } from '../../src/provisioners/xcat/steps.js';
import { SshPool } from '../../src/ssh/index.js';
import {
  captureOf,
  driverEnv,
  filesWith,
  interceptRemote,
  type RunOptions,
  refusal,
  stepRun,
  withoutTool,
} from './rerun-helpers.js';

const MN = 'xcat-mn';
const REPO = '/install/image/x86';
const CAPTURE_IMAGE = 'vcl-capture-x86_64';
const DISK = 1024 * 1024;
const GiB = 1024 ** 3;

let lab: Lab;
let pool: SshPool;

beforeAll(async () => {
  lab = await startLab({
    powerDelayMs: 20,
    diskBytes: DISK,
    captureChunkBytes: 256 * 1024,
    captureChunkMs: 10,
    computers: { 'xcat-linux': 4 },
  });
  pool = new SshPool({ logger: silentLogger() });
});

afterAll(async () => {
  await pool?.close();
  await lab?.stop();
});

afterEach(() => {
  lab.faults.clear();
  expect(lab.internalErrors).toEqual([]);
});

/** A transport that keeps each command line it sends. */
function watched(inner: Remote = pool): Remote & { sent: string[] } {
  const w = {
    sent: [] as string[],
    exec: ((host, argv, options) => {
      w.sent.push(argv.join(' '));
      return inner.exec(host, argv, options);
    }) as Remote['exec'],
    copy: ((from, to, options) => inner.copy(from, to, options)) as Remote['copy'],
  };
  return w;
}

/** Writes a file in the repository, as the capture environment (or another capture) would have. */
async function put(path: string, content: string | Buffer = 'x'): Promise<void> {
  const real = await lab.realPath(MN, path);
  await mkdir(dirname(real), { recursive: true });
  await writeFile(real, content);
}

async function off(node: string): Promise<void> {
  if (lab.computer(node).power !== 'off') lab.powerOff(node);
  await lab.waitForPower(node, 'off');
}

async function inOs(node: string): Promise<void> {
  await off(node);
  await pool.exec(driverEnv(lab, pool, node).provisionerHost, ['nodeset', node, 'boot']);
  lab.powerOn(node);
  await lab.waitForPower(node, 'on');
}

type Options = RunOptions & { artifact?: CaptureStepInput['artifact']; noProgressMs?: number };

/** A capture of `node` (end state `endState`, settings changed by `settings`), its steps run one by one. */
function capture(
  node: string,
  options: {
    remote?: Remote;
    endState?: EndState;
    settings?: (p: Record<string, unknown>) => Record<string, unknown>;
  } = {},
) {
  const base = driverEnv(lab, options.remote ?? pool, node);
  const progress: { step: string; p: CopyStepProgress }[] = [];
  // The changed settings are what a hand-edited inventory would hold: not checked against its schema here.
  const provisioner = (options.settings ?? ((p) => p))(
    base.computer.provisioner,
  ) as unknown as DriverEnv['computer']['provisioner'];
  const env: DriverEnv = {
    ...base,
    computer: { ...base.computer, provisioner },
    progress: (step, p) => progress.push({ step, p }),
  };
  const steps = xcatSteps(env);
  const cap = captureOf(lab, node, options.endState ?? 'off');
  const image = `${REPO}/${cap.name}.img`;
  const go = (step: string, o: Options = {}) => {
    const fn = steps[step];
    if (!fn) throw new Error(`no step ${step}`);
    const input = cap.input(step, { target: image });
    return fn(
      stepRun(
        {
          ...input,
          ...(o.artifact ? { artifact: o.artifact } : {}),
          ...(o.noProgressMs === undefined
            ? {}
            : { timeouts: { ...input.timeouts, uploadNoProgressMs: o.noProgressMs } }),
        },
        o,
      ),
    );
  };
  return { env, cap, image, go, progress, files: () => filesWith(lab, MN, REPO, cap.name) };
}

describe('check_target', () => {
  it('hands on the image’s path, reading only the node’s power: its boot setting is left alone', async () => {
    const remote = watched();
    const x = capture('xc-linux-1', { remote });
    expect(await x.go('check_target')).toEqual({ facts: { target: x.image } });
    expect(remote.sent.filter((l) => /^(rpower|nodeset|nodech|nodestat)/.test(l))).toEqual([
      'rpower xc-linux-1 stat',
    ]);
  });

  it('refuses a host that lacks a tool the path needs, before touching anything', async () => {
    const lacking = withoutTool(pool, 'nodestat');
    expect(await refusal(capture('xc-linux-1', { remote: lacking }).go('check_target'))).toMatchObject({
      code: 'PREFLIGHT_TOOL_MISSING',
      message:
        'xcat-mn lacks nodestat (needed as xcat and repository host): install it or fix the PATH of root',
      details: { host: 'xcat-mn', missing: ['nodestat'] },
    });
  });

  it('refuses a node xCAT does not know (said on stderr or stdout), and names rpower’s other failures', async () => {
    const x = capture('xc-linux-1', { settings: (p) => ({ ...p, node: 'xc-nope' }) });
    expect(await refusal(x.go('check_target'))).toMatchObject({
      code: 'NOT_FOUND',
      message:
        'xCAT on xcat-mn does not know node xc-nope: define it (mkdef) or fix provisioner.node of xc-linux-1 in the inventory',
      details: { node: 'xc-nope' },
    });
    const y = capture('xc-linux-1');
    lab.faults.add({
      kind: 'failCommand',
      host: MN,
      match: ['rpower', 'xc-linux-1', 'stat'],
      exitCode: 1,
      stdout: 'xc-linux-1: Error: xc-linux-1 is not in the nodelist\n',
    });
    expect(await refusal(y.go('check_target'))).toMatchObject({ code: 'NOT_FOUND' });
    lab.faults.add({
      kind: 'failCommand',
      host: MN,
      match: ['rpower', 'xc-linux-1', 'stat'],
      exitCode: 1,
      stderr: 'Error: [xcat-mn]: xc-linux-1: BMC did not respond\n',
    });
    expect(await refusal(y.go('check_target'))).toMatchObject({
      code: 'COMMAND_FAILED',
      message: 'rpower xc-linux-1 stat on xcat-mn failed: Error: [xcat-mn]: xc-linux-1: BMC did not respond',
    });
  });

  it('refuses the image or either marker that exists, naming it, and leaves it', async () => {
    const x = capture('xc-linux-1');
    for (const path of [x.image, `${x.image}.capturedone`, `${x.image}.capturefailed`]) {
      await put(path, 'theirs');
      expect(await refusal(x.go('check_target')), path).toMatchObject({
        code: 'TARGET_EXISTS',
        message: `${path} already exists; nothing is overwritten`,
        details: { path },
      });
      expect((await lab.readFile(MN, path)).toString()).toBe('theirs');
      await rm(await lab.realPath(MN, path));
    }
  });

  it('asks the repository for the margin alone: the upload’s size is not known before it', async () => {
    const x = capture('xc-linux-1');
    lab.faults.add({ kind: 'diskFull', host: MN, afterBytes: GiB });
    await x.go('check_target');
    lab.faults.clear();
    lab.faults.add({ kind: 'diskFull', host: MN, afterBytes: GiB - 1 });
    expect(await refusal(x.go('check_target'))).toMatchObject({
      code: 'PREFLIGHT_NO_SPACE',
      message: expect.stringContaining(
        "the capture needs the margin of 1.0 GiB (1073741824 bytes) (the upload's size is not known before it)",
      ),
      details: { host: MN, dir: REPO, freeBytes: GiB - 1, neededBytes: GiB },
    });
  });
});

describe('a capture through the capture environment', () => {
  it('points the node at the capture image, powers it on once, watches the upload, hashes it; the node halts', async () => {
    const node = 'xc-linux-2';
    await off(node);
    const remote = watched();
    const x = capture(node, { remote });
    expect(await x.go('set_capture_boot')).toEqual({});
    expect(remote.sent).toEqual([
      `nodech ${node} nodetype.profile=${x.cap.name}`,
      `nodeset ${node} osimage=${CAPTURE_IMAGE}`,
    ]);
    const boots = lab.computer(node).boots;
    await x.go('ensure_node_on');
    await x.go('wait_capture_env');
    expect(lab.computer(node).running).toBe('captureEnv');
    const out = await x.go('watch_upload');
    expect(out.artifact).toEqual({
      path: x.image,
      sizeBytes: DISK,
      sha256: await lab.diskSha256(node),
      format: 'img',
    });
    expect(remote.sent.filter((l) => l === `rpower ${node} on`)).toHaveLength(1);
    expect(lab.computer(node).boots).toBe(boots + 1);
    // Readable by the web servers that hand it out; durable before it is recorded.
    expect((await stat(await lab.realPath(MN, x.image))).mode & 0o777).toBe(0o644);
    const chmod = remote.sent.indexOf(`chmod 644 ${x.image}`);
    expect(chmod).toBeGreaterThan(0);
    expect(remote.sent.slice(chmod + 1)).toContain(`sync -- ${x.image} ${REPO}`);
    // Progress counts the image's bytes as they arrive, for this step.
    const reports = x.progress.map((r) => r);
    expect(reports.length).toBeGreaterThan(0);
    expect(reports.every((r) => r.step === 'watch_upload')).toBe(true);
    for (let i = 1; i < reports.length; i++)
      expect(reports[i]?.p.bytes).toBeGreaterThanOrEqual(reports[i - 1]?.p.bytes ?? 0);
    const last = reports.at(-1)?.p;
    expect(last?.bytes).toBeGreaterThan(0);
    expect(last?.bytesPerSecond).toBeGreaterThan(0);

    expect(await x.go('verify_image', { artifact: out.artifact })).toEqual({});
    expect(
      await refusal(
        x.go('verify_image', {
          artifact: { ...(out.artifact as NonNullable<typeof out.artifact>), sizeBytes: 1 },
        }),
      ),
    ).toMatchObject({ code: 'VERIFY_MISMATCH' });

    await lab.waitForPower(node, 'off');
    const from = remote.sent.length;
    await x.go('reset_boot');
    await x.go('remove_upload');
    expect(remote.sent.slice(from)).toEqual([
      `nodeset ${node} boot`,
      `rpower ${node} stat`,
      `rm -f -- ${x.image} ${x.image}.capturedone ${x.image}.capturefailed`,
    ]);
    expect(await x.files()).toEqual([]);
    // Its next boot is its OS again.
    lab.powerOn(node);
    await lab.waitForPower(node, 'on');
    expect(lab.computer(node).running).toBe('os');
  });
});

describe('ensure_node_on', () => {
  it('end state on: powers on a node that is off, and sends nothing more to one that is on', async () => {
    const node = 'xc-linux-3';
    await inOs(node);
    const remote = watched();
    const x = capture(node, { remote, endState: 'on' });
    await x.go('ensure_node_on');
    expect(remote.sent).toEqual([`rpower ${node} stat`]);
    await off(node);
    remote.sent.length = 0;
    await x.go('ensure_node_on');
    expect(remote.sent.filter((l) => l.startsWith('rpower'))).toEqual([
      `rpower ${node} stat`,
      `rpower ${node} on`,
    ]);
    await lab.waitForPower(node, 'on');
  });

  it('end state off: no power-on when the upload already ended (a marker, done or failed) or the node boots the capture image', async () => {
    const node = 'xc-linux-3';
    await off(node);
    for (const marker of ['capturedone', 'capturefailed']) {
      const remote = watched();
      const x = capture(node, { remote });
      await put(`${x.image}.${marker}`, '');
      await x.go('ensure_node_on');
      expect(
        remote.sent.filter((l) => l.startsWith('rpower')),
        marker,
      ).toEqual([`rpower ${node} stat`]);
      expect(lab.computer(node).power).toBe('off');
      await rm(await lab.realPath(MN, `${x.image}.${marker}`));
    }
    // Up in its OS (the end state's shutdown not done yet) but the upload already over: done.
    await inOs(node);
    const remote = watched();
    const x = capture(node, { remote });
    await put(`${x.image}.capturedone`, '');
    await x.go('ensure_node_on', { timeoutMs: 2000 });
    expect(remote.sent.filter((l) => / on$/.test(l))).toEqual([]);
    await rm(await lab.realPath(MN, `${x.image}.capturedone`));
    // Netbooting into the capture image (an earlier attempt powered it on): done, not powered on again.
    await off(node);
    await x.go('set_capture_boot');
    lab.powerOn(node);
    expect(lab.computer(node).power).toBe('booting');
    const from = remote.sent.length;
    await x.go('ensure_node_on', { timeoutMs: 2000 });
    expect(remote.sent.slice(from).filter((l) => l.startsWith('rpower'))).toEqual([`rpower ${node} stat`]);
    expect(remote.sent.slice(from)).toContain(`nodestat ${node}`);
    await x.go('remove_upload');
    await x.go('reset_boot');
  });

  it('end state off: a node on in the capture environment or netbooting into it is not powered on again', async () => {
    const node = 'xc-linux-3';
    await inOs(node);
    for (const now of ['netbooting', 'capturing', 'imaging', 'image']) {
      const remote = watched();
      const x = capture(node, { remote });
      // What nodestat says while the node stays on: the step must not wait for a power off that comes
      // only once the upload is over.
      lab.faults.add({
        kind: 'failCommand',
        host: MN,
        match: ['nodestat', node],
        exitCode: 0,
        stdout: `${node}: ${now}\n`,
        times: Number.POSITIVE_INFINITY,
      });
      expect(await x.go('ensure_node_on', { timeoutMs: 1000 }), now).toEqual({});
      expect(
        remote.sent.filter((l) => l.startsWith('rpower')),
        now,
      ).toEqual([`rpower ${node} stat`]);
      lab.faults.clear();
    }
  });

  it('end state off: waits for a node still up in its OS to power off, within the step’s deadline, never powering it on', async () => {
    const node = 'xc-linux-4';
    await inOs(node);
    const remote = watched();
    const x = capture(node, { remote });
    const started = Date.now();
    await expect(x.go('ensure_node_on', { timeoutMs: 200 })).rejects.toThrow();
    // Bounded by the deadline, not by a wait of its own; the margin is for a loaded machine.
    expect(Date.now() - started).toBeLessThan(5000);
    expect(remote.sent.filter((l) => / on$/.test(l))).toEqual([]);
    // Polled: the power and what runs, more than once.
    expect(remote.sent.filter((l) => l === `nodestat ${node}`).length).toBeGreaterThan(1);
    expect(lab.computer(node).power).toBe('on');
  });
});

describe('wait_capture_env', () => {
  it('returns once a marker says the upload ended, and otherwise waits within the deadline', async () => {
    const node = 'xc-linux-4';
    await off(node);
    const x = capture(node);
    const started = Date.now();
    await expect(x.go('wait_capture_env', { timeoutMs: 150 })).rejects.toThrow();
    // Bounded by the deadline, not by a wait of its own; the margin is for a loaded machine.
    expect(Date.now() - started).toBeLessThan(5000);
    for (const marker of ['capturedone', 'capturefailed']) {
      await put(`${x.image}.${marker}`, '');
      expect(await x.go('wait_capture_env', { timeoutMs: 2000 }), marker).toEqual({});
      await rm(await lab.realPath(MN, `${x.image}.${marker}`));
    }
  });
});

describe('watch_upload', () => {
  it('a failed upload (its marker, even beside a done one) fails UPLOAD_FAILED; so does an empty image', async () => {
    const x = capture('xc-linux-4');
    await put(x.image, Buffer.alloc(10));
    await put(`${x.image}.capturedone`, '');
    await put(`${x.image}.capturefailed`, 'write error\n');
    expect(await refusal(x.go('watch_upload'))).toMatchObject({
      code: 'UPLOAD_FAILED',
      message: `the capture environment reported a failed upload (${x.image}.capturefailed)`,
    });
    await rm(await lab.realPath(MN, `${x.image}.capturefailed`));
    await put(x.image, '');
    expect(await refusal(x.go('watch_upload'))).toMatchObject({
      code: 'UPLOAD_FAILED',
      message: `the uploaded image ${x.image} is empty`,
    });
    await x.go('remove_upload');
    expect(await x.files()).toEqual([]);
  });

  it('the capture environment’s own failure (captureFails) is reported, and remove_upload leaves nothing', async () => {
    const node = 'xc-linux-4';
    await off(node);
    const x = capture(node);
    lab.faults.add({ kind: 'captureFails', computer: node, afterBytes: 256 * 1024 });
    await x.go('set_capture_boot');
    await x.go('ensure_node_on');
    expect(await refusal(x.go('watch_upload'))).toMatchObject({
      code: 'UPLOAD_FAILED',
      message: `the capture environment reported a failed upload (${x.image}.capturefailed)`,
    });
    await x.go('remove_upload');
    await x.go('reset_boot');
    expect(await x.files()).toEqual([]);
    expect(lab.computer(node).power).toBe('off');
  });

  it('an upload that stops growing fails NO_PROGRESS after the timeout, counting every file of the image and no other', async () => {
    const x = capture('xc-linux-4');
    await put(x.image, Buffer.alloc(10, 1));
    await put(`${x.image}.log`, Buffer.alloc(5, 1));
    // Another capture's upload whose name starts alike is not this one's.
    await put(`${REPO}/${x.cap.name}0.img`, Buffer.alloc(100, 1));
    const started = Date.now();
    expect(await refusal(x.go('watch_upload', { noProgressMs: 1000 }))).toMatchObject({
      code: 'NO_PROGRESS',
      message: 'the upload made no progress for 1000 ms (15 bytes)',
    });
    const took = Date.now() - started;
    // Past the timeout by a poll or so (a poll is an SSH round trip: up to a few hundred ms on a loaded
    // machine), well before twice it.
    expect(took).toBeGreaterThanOrEqual(1000);
    expect(took).toBeLessThan(2000);
    await rm(await lab.realPath(MN, `${REPO}/${x.cap.name}0.img`));
    await rm(await lab.realPath(MN, `${x.image}.log`));
    await x.go('remove_upload');
  });

  it('a change of what nodestat says resets the no-progress timer too', async () => {
    const node = 'xc-linux-4';
    const x = capture(node);
    await put(x.image, Buffer.alloc(3, 1));
    for (let i = 0; i < 8; i++)
      lab.faults.add({
        kind: 'failCommand',
        host: MN,
        match: ['nodestat', node],
        exitCode: 0,
        stdout: `${node}: step${i}\n`,
      });
    const started = Date.now();
    expect(await refusal(x.go('watch_upload', { noProgressMs: 60 }))).toMatchObject({
      code: 'NO_PROGRESS',
      message: 'the upload made no progress for 60 ms (3 bytes)',
    });
    expect(lab.faults.list()).toEqual([]);
    expect(Date.now() - started).toBeGreaterThan(8 * 20);
    await x.go('remove_upload');
  });

  it('growth resets the no-progress timer', async () => {
    let grown = 0;
    let lastGrowth = 0;
    const base = capture('xc-linux-4');
    const real = await lab.realPath(MN, base.image);
    await put(base.image, Buffer.alloc(1, 1));
    // The image grows by a byte before each of the first polls' nodestat, for longer than the timeout.
    const growing = interceptRemote(pool, ['nodestat'], async () => {
      if (grown >= 8) return;
      await writeFile(real, Buffer.alloc(1 + ++grown, 1));
      lastGrowth = Date.now();
    });
    const steps = xcatSteps({ ...base.env, remote: growing });
    const input = base.cap.input('watch_upload', { target: base.image });
    const started = Date.now();
    const err = await refusal(
      steps.watch_upload?.(stepRun({ ...input, timeouts: { ...input.timeouts, uploadNoProgressMs: 60 } })),
    );
    expect(err).toMatchObject({
      code: 'NO_PROGRESS',
      message: 'the upload made no progress for 60 ms (9 bytes)',
    });
    expect(grown).toBe(8);
    // The timeout counts from the last growth, not from the start.
    expect(Date.now() - lastGrowth).toBeGreaterThanOrEqual(60);
    expect(Date.now() - started).toBeGreaterThan(8 * 20);
    await base.go('remove_upload');
  });
});

describe('watch_upload’s progress', () => {
  /**
   * watch_upload of xc-linux-4 whose image (1 byte at first) grows by a byte at each of the first `grows`
   * polls (after its listing, at nodestat), the capture environment's done marker coming with the last; the
   * progress the user sees, each report with the time it came (none without `listening`).
   */
  async function growingUpload(grows: number, listening = true) {
    const base = capture('xc-linux-4');
    const real = await lab.realPath(MN, base.image);
    await put(base.image, Buffer.alloc(1, 1));
    let grown = 0;
    const growing = interceptRemote(pool, ['nodestat'], async () => {
      if (grown >= grows) return;
      await writeFile(real, Buffer.alloc(1 + ++grown, 1));
      if (grown === grows) await put(`${base.image}.capturedone`, '');
    });
    const reports: (CopyStepProgress & { step: string; at: number })[] = [];
    const env: DriverEnv = listening
      ? { ...base.env, remote: growing, progress: (step, p) => reports.push({ ...p, step, at: Date.now() }) }
      : driverEnv(lab, growing, 'xc-linux-4');
    const input = base.cap.input('watch_upload', { target: base.image });
    return { base, reports, run: () => xcatSteps(env).watch_upload?.(stepRun(input)) };
  }

  it('reports the bytes each poll finds, at a rate no lower than those bytes over the time since the step began', async () => {
    const { base, reports, run } = await growingUpload(4);
    const began = Date.now();
    expect((await run())?.artifact).toMatchObject({ path: base.image, sizeBytes: 5 });
    expect(reports.map((r) => [r.step, r.bytes])).toEqual([
      ['watch_upload', 1],
      ['watch_upload', 2],
      ['watch_upload', 3],
      ['watch_upload', 4],
    ]);
    for (const r of reports) {
      // The rate is the bytes over the seconds since the step began: no more seconds than since `began`.
      expect(Number.isFinite(r.bytesPerSecond), String(r.bytesPerSecond)).toBe(true);
      expect(r.bytesPerSecond).toBeGreaterThanOrEqual(r.bytes / ((r.at - began) / 1000));
    }
    await base.go('remove_upload');
  });

  it('watches the upload to its end without a progress listener', async () => {
    const { base, run } = await growingUpload(2, false);
    expect((await run())?.artifact).toMatchObject({ path: base.image, sizeBytes: 3 });
    await base.go('remove_upload');
  });

  it('a clock that has not moved since the step began gives a rate of 0, not an infinite one', async () => {
    const { base, reports, run } = await growingUpload(2);
    vi.useFakeTimers({ toFake: ['Date'] });
    try {
      expect((await run())?.artifact).toMatchObject({ path: base.image, sizeBytes: 3 });
    } finally {
      vi.useRealTimers();
    }
    expect(reports.map((r) => [r.bytes, r.bytesPerSecond])).toEqual([
      [1, 0],
      [2, 0],
    ]);
    await base.go('remove_upload');
  });
});

describe('remove_upload', () => {
  it('powers off a node that is on before removing (its next boot would upload again), and not one that is off', async () => {
    const node = 'xc-linux-1';
    await inOs(node);
    const remote = watched();
    const x = capture(node, { remote });
    await put(x.image);
    await x.go('remove_upload');
    expect(remote.sent).toEqual([
      `rpower ${node} stat`,
      `rpower ${node} off`,
      `rm -f -- ${x.image} ${x.image}.capturedone ${x.image}.capturefailed`,
    ]);
    expect(lab.computer(node).power).toBe('off');
    expect(await x.files()).toEqual([]);
    remote.sent.length = 0;
    await x.go('remove_upload');
    expect(remote.sent.filter((l) => l.startsWith('rpower'))).toEqual([`rpower ${node} stat`]);
  });
});
