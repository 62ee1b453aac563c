/**
 * The helpers every driver's steps share (src/drivers/env.ts) and the verification of a copy
 * (src/drivers/verify.ts): against the lab's hosts over real SSH where a host answers, and with a
 * scripted transport where the point is an answer no healthy host gives (fault injection).
 */
import { createHash } from 'node:crypto';
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { CaptureStepInput } from '../../machines/index.js';
import {
  copyOptions,
  type DriverEnv,
  execFor,
  exists,
  provisionerSettings,
  removeCopyLeftovers,
  repositoryPath,
  sameHost,
  sha256Of,
  sizeOf,
  syncPaths,
} from '../../src/drivers/env.js';
import { manifestLine, verifyArtifact, verifyManifestArtifact } from '../../src/drivers/verify.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { silentLogger } from '../../src/log.js';
import { copyLeftoversCommand, type ExecOptions, type SshHost, SshPool } from '../../src/ssh/index.js';
import { execResult } from '../helpers/fake-guest.js';
import { captureOf, driverEnv, refusal, stepRun } from './rerun-helpers.js';

let lab: Lab;
let pool: SshPool;
const COMPUTER = 'lv-linux-1';

beforeAll(async () => {
  lab = await startLab({ powerDelayMs: 20, computers: { 'libvirt-linux': 1 } });
  pool = new SshPool({ logger: silentLogger() });
});

afterAll(async () => {
  await pool?.close();
  await lab?.stop();
});

/** What a call throws, as the VclError it must be. */

/** An environment whose hosts answer each command from `answer`; `sent` records what was sent. */
function scripted(answer: (argv: readonly string[]) => ReturnType<typeof execResult>) {
  const sent: { host: string; argv: readonly string[]; options: ExecOptions | undefined }[] = [];
  const host: SshHost = { name: 'repo', host: '10.0.0.9', port: 22, username: 'root', privateKey: 'unused' };
  const env = {
    computerName: 'pc1',
    computer: { provisioner: { type: 'libvirt', host: 'kvm', domain: 'pc1', format: 'qcow2' } },
    repository: { host, path: '/srv/images' },
    pollMs: 1,
    remote: {
      exec: async (h: SshHost, argv: readonly string[], options?: ExecOptions) => {
        sent.push({ host: h.name, argv, options });
        return answer(argv);
      },
      copy: () => Promise.reject(new Error('no copies here')),
    },
  } as unknown as DriverEnv;
  const run = stepRun({ step: 'verify_image' });
  return { env, host, sent, exec: execFor(env, run), run };
}

describe('reading a file on a host', () => {
  it('sha256Of and sizeOf give what sha256sum and stat give for the file on the host', async () => {
    const env = driverEnv(lab, pool, COMPUTER);
    const exec = execFor(env, stepRun({ step: 'verify_image' }));
    const bytes = Buffer.from('the image bytes\n'.repeat(1000));
    const path = `${env.repository.path}/env-test.img`;
    const real = await lab.realPath(env.repository.host.name, path);
    await mkdir(dirname(real), { recursive: true });
    await writeFile(real, bytes);
    expect(await sha256Of(exec, env.repository.host, path)).toBe(
      createHash('sha256').update(bytes).digest('hex'),
    );
    expect(await sizeOf(exec, env.repository.host, path)).toBe(bytes.length);
    await writeFile(real, '');
    expect(await sizeOf(exec, env.repository.host, path)).toBe(0);
    expect(await exists(exec, env.repository.host, path)).toBe(true);
    expect(await exists(exec, env.repository.host, `${path}.nothing`)).toBe(false);
  });

  it('refuses an answer it cannot read, naming the file', async () => {
    const garbage = scripted(() => execResult(0, 'sha256sum: weird\n'));
    expect(await refusal(sha256Of(garbage.exec, garbage.host, '/srv/images/a.img'))).toMatchObject({
      code: 'PARSE_FAILED',
      message: 'sha256sum printed no digest for /srv/images/a.img',
    });
    for (const printed of ['-1\n', '12abc\n', '\n', '1.5\n']) {
      const s = scripted(() => execResult(0, printed));
      expect(await refusal(sizeOf(s.exec, s.host, '/srv/images/a.img')), printed).toMatchObject({
        code: 'PARSE_FAILED',
        message: 'stat printed no size for /srv/images/a.img',
      });
    }
    const broken = scripted(() => execResult(2, '', 'test: too many arguments\n'));
    expect(await refusal(exists(broken.exec, broken.host, '/srv/images/a.img'))).toMatchObject({
      code: 'COMMAND_FAILED',
      message: 'test -e /srv/images/a.img on repo failed (status 2): test: too many arguments',
    });
  });
});

describe('commands within the step', () => {
  it("carry the step's name, its signal and its deadline, or a shorter timeout when asked", async () => {
    const s = scripted(() => execResult(0));
    await s.exec(s.host, ['true']);
    await s.exec(s.host, ['true'], { timeoutMs: 5 });
    await s.exec(s.host, ['true'], { timeoutMs: 10_000_000 });
    const [plain, short, long] = s.sent.map((c) => c.options);
    expect(plain).toMatchObject({ step: 'verify_image', signal: s.run.signal });
    expect(plain?.timeoutMs).toBeGreaterThan(15_000);
    expect(plain?.timeoutMs).toBeLessThanOrEqual(20_000);
    expect(short?.timeoutMs).toBe(5);
    expect(long?.timeoutMs).toBeLessThanOrEqual(20_000);
  });

  it('report copy progress under the step, with the total, wire bytes and resumes only when known', () => {
    const seen: unknown[] = [];
    const env = { progress: (step: string, p: unknown) => seen.push([step, p]) } as unknown as DriverEnv;
    const run = stepRun({ step: 'copy_image' });
    const options = copyOptions(env, run);
    expect(options).toMatchObject({ signal: run.signal, step: 'copy_image' });
    options.onProgress({ bytes: 10, total: undefined, bytesPerSecond: 5 });
    options.onProgress({ bytes: 20, total: 40, bytesPerSecond: 6 });
    // A compressed copy (fewer bytes on the wire than in the file) resumed once after a dropped connection.
    options.onProgress({ bytes: 30, total: 40, bytesPerSecond: 7, wireBytes: 12, resumes: 1 });
    options.onProgress({ bytes: 35, total: undefined, bytesPerSecond: 7, resumes: 0 });
    expect(seen).toStrictEqual([
      ['copy_image', { bytes: 10, bytesPerSecond: 5 }],
      ['copy_image', { bytes: 20, bytesPerSecond: 6, total: 40 }],
      ['copy_image', { bytes: 30, bytesPerSecond: 7, total: 40, wireBytes: 12, resumes: 1 }],
      ['copy_image', { bytes: 35, bytesPerSecond: 7, resumes: 0 }],
    ]);
  });

  it('sync the files and each folder once; remove leftovers with or without named files', async () => {
    const s = scripted(() => execResult(0));
    await syncPaths(s.exec, s.host, ['/a/x.img', '/a/y.img', '/b/z.img']);
    await removeCopyLeftovers(s.exec, s.host, '/srv/images/t.img');
    await removeCopyLeftovers(s.exec, s.host, '/srv/images/t.img', []);
    expect(s.sent.map((c) => c.argv)).toEqual([
      ['sync', '--', '/a/x.img', '/a/y.img', '/b/z.img', '/a', '/b'],
      ['rm', '-f', '--', '/srv/images/t.img'],
      copyLeftoversCommand('/srv/images/t.img'),
      copyLeftoversCommand('/srv/images/t.img'),
    ]);
  });
});

describe('names and hosts', () => {
  it('keeps a repository path inside the repository', async () => {
    const { env } = scripted(() => execResult(0));
    expect(repositoryPath(env, 'linux-A1-v0.qcow2')).toBe('/srv/images/linux-A1-v0.qcow2');
    expect(await refusal(Promise.resolve().then(() => repositoryPath(env, '../etc/passwd')))).toMatchObject({
      code: 'COMMAND_FAILED',
      message: '../etc/passwd would leave the repository /srv/images',
    });
    // A repository path written with a trailing slash holds the same files.
    const slashed = { ...env, repository: { ...env.repository, path: '/srv/images/' } };
    expect(repositoryPath(slashed, 'linux-A1-v0.qcow2')).toBe('/srv/images/linux-A1-v0.qcow2');
    expect(
      await refusal(Promise.resolve().then(() => repositoryPath(slashed, '../images2/x'))),
    ).toMatchObject({
      code: 'COMMAND_FAILED',
      message: '../images2/x would leave the repository /srv/images/',
    });
  });

  it('tells the same SSH endpoint by address and port (22 when none is given)', () => {
    const a: SshHost = { name: 'a', host: '10.0.0.1', port: 22, username: 'root', privateKey: 'unused' };
    expect(sameHost(a, { ...a, name: 'b', port: undefined as unknown as number })).toBe(true);
    expect(sameHost(a, { ...a, port: 2222 })).toBe(false);
    expect(sameHost(a, { ...a, host: '10.0.0.2' })).toBe(false);
  });

  it("refuses a computer provisioned by another kind than the driver's", async () => {
    const { env } = scripted(() => execResult(0));
    expect(provisionerSettings(env, 'libvirt')).toMatchObject({ domain: 'pc1' });
    expect(await refusal(Promise.resolve().then(() => provisionerSettings(env, 'vmware')))).toMatchObject({
      code: 'COMMAND_FAILED',
      message: 'computer pc1 is provisioned by libvirt, not vmware',
    });
  });
});

describe('verifying a copy where it lies', () => {
  async function stored(bytes: Buffer) {
    const env = driverEnv(lab, pool, COMPUTER);
    const cap = captureOf(lab, COMPUTER, 'off');
    const path = `${env.repository.path}/${cap.name}.qcow2`;
    const real = await lab.realPath(env.repository.host.name, path);
    await mkdir(dirname(real), { recursive: true });
    await writeFile(real, bytes);
    const artifact = {
      path,
      sizeBytes: bytes.length,
      sha256: createHash('sha256').update(bytes).digest('hex'),
      format: 'qcow2',
    };
    const verify = (a: typeof artifact | undefined) =>
      verifyArtifact(
        env,
        stepRun<CaptureStepInput>({ ...cap.input('verify_image'), ...(a ? { artifact: a } : {}) }),
      );
    return { real, artifact, verify };
  }

  it('passes the copy as written and refuses one changed afterwards, saying how', async () => {
    const bytes = Buffer.alloc(64 * 1024, 3);
    const { real, artifact, verify } = await stored(bytes);
    expect(await verify(artifact)).toEqual({});
    // One byte changed, same size: only the hash can tell.
    const changed = Buffer.from(bytes);
    changed[100] = 4;
    await writeFile(real, changed);
    const sha = createHash('sha256').update(changed).digest('hex');
    const err = await refusal(verify(artifact));
    expect(err.code).toBe('VERIFY_MISMATCH');
    expect(err.message).toBe(
      `the copy at ${artifact.path} differs from what was written (size ${bytes.length} vs ${bytes.length}, sha256 ${sha.slice(0, 12)}… vs ${artifact.sha256.slice(0, 12)}…)`,
    );
    expect(err.details).toEqual({
      path: artifact.path,
      size: bytes.length,
      expectedSize: bytes.length,
      sha256: sha,
      expectedSha256: artifact.sha256,
    });
    // Same hash recorded but another size: the size alone tells.
    await writeFile(real, bytes);
    expect((await refusal(verify({ ...artifact, sizeBytes: bytes.length + 1 }))).code).toBe(
      'VERIFY_MISMATCH',
    );
  });

  it('a set of files: the manifest as recorded, every file as it lists, the sizes adding up', async () => {
    const env = driverEnv(lab, pool, COMPUTER);
    const cap = captureOf(lab, COMPUTER, 'off');
    const dir = env.repository.path;
    const host = env.repository.host.name;
    const put = async (name: string, bytes: Buffer | string) => {
      const real = await lab.realPath(host, `${dir}/${name}`);
      await mkdir(dirname(real), { recursive: true });
      await writeFile(real, bytes);
    };
    const sha = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');
    const files = { [`${cap.name}-s001.vmdk`]: Buffer.alloc(4096, 1), [`${cap.name}.vmdk`]: 'descriptor\n' };
    for (const [name, bytes] of Object.entries(files)) await put(name, bytes);
    const manifest = Object.entries(files)
      .map(([name, bytes]) => manifestLine(sha(bytes), name))
      .join('');
    await put(`${cap.name}.vmdk.sha256`, manifest);
    const artifact = {
      path: `${dir}/${cap.name}.vmdk`,
      sizeBytes: 4096 + 11,
      sha256: sha(manifest),
      format: 'vmdk',
    };
    const verify = (a: typeof artifact) =>
      verifyManifestArtifact(env, stepRun<CaptureStepInput>({ ...cap.input('verify_image'), artifact: a }));
    expect(await verify(artifact)).toEqual({ dir, files: Object.keys(files) });
    const differs = `the copy at ${artifact.path} differs from what was written`;
    // The manifest is not the one recorded: its hash (12 characters shown), both in the details.
    expect(await refusal(verify({ ...artifact, sha256: sha('other') }))).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: `${differs}: its manifest ${artifact.path}.sha256 has sha256 ${sha(manifest).slice(0, 12)}…`,
      details: { path: artifact.path, sha256: sha(manifest), expectedSha256: sha('other') },
    });
    // The sizes do not add up to what was recorded.
    expect(await refusal(verify({ ...artifact, sizeBytes: 1 }))).toMatchObject({
      code: 'VERIFY_MISMATCH',
      message: `${differs}: its files hold ${4096 + 11} bytes against 1`,
      details: { path: artifact.path, size: 4096 + 11, expectedSize: 1 },
    });
    // A file changed after it was listed: named, with both hashes.
    await put(`${cap.name}-s001.vmdk`, Buffer.alloc(4096, 2));
    const got = sha(Buffer.alloc(4096, 2));
    const listed = sha(Buffer.alloc(4096, 1));
    const err = await refusal(verify(artifact));
    expect(err.code).toBe('VERIFY_MISMATCH');
    expect(err.message).toBe(
      `${differs}: ${cap.name}-s001.vmdk has sha256 ${got.slice(0, 12)}… against ${listed.slice(0, 12)}… in the manifest`,
    );
    expect(err.details).toEqual({
      path: artifact.path,
      file: `${cap.name}-s001.vmdk`,
      sha256: got,
      expectedSha256: listed,
    });
    // A file listed but gone: the step fails (stat), it never passes.
    const real = await lab.realPath(host, `${dir}/${cap.name}-s001.vmdk`);
    await rm(real);
    await expect(verify(artifact)).rejects.toThrow();
  });

  it('refuses to verify when no copy was recorded, a single file or a set', async () => {
    const { verify } = await stored(Buffer.from('x'));
    expect(await refusal(verify(undefined))).toMatchObject({
      code: 'NOT_FOUND',
      message: 'nothing to verify: no copy was recorded',
    });
    const s = scripted(() => execResult(0));
    const cap = captureOf(lab, COMPUTER, 'off');
    expect(await refusal(verifyManifestArtifact(s.env, stepRun(cap.input('verify_image'))))).toMatchObject({
      code: 'NOT_FOUND',
      message: 'nothing to verify: no copy was recorded',
    });
    expect(s.sent).toEqual([]);
  });
});
