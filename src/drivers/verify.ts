/** Verification shared by every provisioner: re-hash the copy where it lies and compare. */
import { createHash } from 'node:crypto';
import { posix } from 'node:path';
import type { CaptureStepInput, CaptureStepOutput } from '../../machines/index.js';
import type { StepRun } from './contract.js';
import { type DriverEnv, execFor, sha256Of, sizeOf } from './env.js';
import { driverError } from './errors.js';

export async function verifyArtifact(
  env: DriverEnv,
  run: StepRun<CaptureStepInput>,
): Promise<CaptureStepOutput> {
  const artifact = run.input.artifact;
  if (!artifact) throw driverError('NOT_FOUND', 'nothing to verify: no copy was recorded');
  const exec = execFor(env, run);
  const [size, sha256] = [
    await sizeOf(exec, env.repository.host, artifact.path),
    await sha256Of(exec, env.repository.host, artifact.path),
  ];
  if (size !== artifact.sizeBytes || sha256 !== artifact.sha256) {
    throw driverError(
      'VERIFY_MISMATCH',
      `the copy at ${artifact.path} differs from what was written (size ${size} vs ${artifact.sizeBytes}, sha256 ${sha256.slice(0, 12)}… vs ${artifact.sha256.slice(0, 12)}…)`,
      {
        path: artifact.path,
        size,
        expectedSize: artifact.sizeBytes,
        sha256,
        expectedSha256: artifact.sha256,
      },
    );
  }
  run.log.info({ path: artifact.path, sizeBytes: size }, 'copy verified');
  return {};
}

/** One line of `sha256sum` output (text mode: two spaces) for a file named without a folder. */
export function manifestLine(sha256: string, file: string): string {
  return `${sha256}  ${file}\n`;
}

/**
 * A `sha256sum` manifest (`<hex>  <file>` per line) whose files are plain names in the manifest's folder:
 * a name with a slash, `..` or anything `sha256sum` would escape is refused, never resolved.
 */
export function parseManifest(text: string): { sha256: string; file: string }[] {
  const out: { sha256: string; file: string }[] = [];
  for (const line of text.split('\n')) {
    if (line === '') continue;
    const m = /^([0-9a-f]{64}) [ *]([A-Za-z0-9_][A-Za-z0-9._-]*)$/.exec(line);
    if (!m)
      throw driverError(
        'PARSE_FAILED',
        `not a sha256sum line of a file in its folder: ${JSON.stringify(line)}`,
      );
    out.push({ sha256: m[1] as string, file: m[2] as string });
  }
  if (out.length === 0) throw driverError('PARSE_FAILED', 'the manifest lists no file');
  return out;
}

/**
 * Verification of an artifact stored as several files (VMware's 2gbsparse set): the recorded sha256 is
 * that of a `sha256sum` manifest at `<path>.sha256` listing every file of the set. Checks the manifest's
 * own hash, then each listed file's hash and the set's total size (`sha256sum -c`'s check, one file per
 * command through the shared helpers), and returns the files it checked.
 */
export async function verifyManifestArtifact(
  env: DriverEnv,
  run: StepRun<CaptureStepInput>,
): Promise<{ dir: string; files: string[] }> {
  const artifact = run.input.artifact;
  if (!artifact) throw driverError('NOT_FOUND', 'nothing to verify: no copy was recorded');
  const exec = execFor(env, run);
  const host = env.repository.host;
  const manifestPath = `${artifact.path}.sha256`;
  const text = (await exec(host, ['cat', '--', manifestPath])).stdout;
  const manifestSha = createHash('sha256').update(text, 'utf8').digest('hex');
  const mismatch = (what: string, details: Record<string, unknown>) =>
    driverError('VERIFY_MISMATCH', `the copy at ${artifact.path} differs from what was written: ${what}`, {
      path: artifact.path,
      ...details,
    });
  if (manifestSha !== artifact.sha256)
    throw mismatch(`its manifest ${manifestPath} has sha256 ${manifestSha.slice(0, 12)}…`, {
      sha256: manifestSha,
      expectedSha256: artifact.sha256,
    });
  const dir = posix.dirname(artifact.path);
  let size = 0;
  const entries = parseManifest(text);
  for (const { sha256, file } of entries) {
    const path = posix.join(dir, file);
    size += await sizeOf(exec, host, path);
    const got = await sha256Of(exec, host, path);
    if (got !== sha256)
      throw mismatch(
        `${file} has sha256 ${got.slice(0, 12)}… against ${sha256.slice(0, 12)}… in the manifest`,
        {
          file,
          sha256: got,
          expectedSha256: sha256,
        },
      );
  }
  if (size !== artifact.sizeBytes)
    throw mismatch(`its files hold ${size} bytes against ${artifact.sizeBytes}`, {
      size,
      expectedSize: artifact.sizeBytes,
    });
  return { dir, files: entries.map((e) => e.file) };
}
