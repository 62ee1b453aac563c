/** Verification shared by every provisioner: re-hash the copy where it lies and compare. */
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
