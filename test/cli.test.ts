/** The `vcl-capture` command as a user runs it: a real child process, its output and exit code. */
import { spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';

const MAIN = new URL('../src/cli/main.ts', import.meta.url).pathname;

function cli(...args: string[]) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', MAIN, ...args], {
    encoding: 'utf8',
    timeout: 30_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

describe('vcl-capture simulate', () => {
  it('dry-runs a capture to completed, in the order the machine takes', () => {
    const r = cli('simulate', '-p', 'libvirt', '-o', 'linux', '--step-ms', '1');
    expect(r.code).toBe(0);
    const effects = [...r.stdout.matchAll(/effect (\w+) ok/g)].map((m) => m[1]);
    expect(effects[0]).toBe('reserve');
    expect(effects.indexOf('wait_power_off')).toBeLessThan(effects.indexOf('copy_image'));
    expect(effects.at(-1)).toBe('record_revision');
    expect(r.stdout).toContain('=> completed: image linux-Base1-v0');
  });

  it('shows the cleanup of an injected failure', () => {
    const r = cli(
      'simulate',
      '-p',
      'vmware',
      '-o',
      'windows',
      '--fail-at',
      'copy_to_repository',
      '--step-ms',
      '1',
    );
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(
      /effect remove_repository_copy ok[\s\S]*effect remove_clone ok[\s\S]*effect release_computer ok/,
    );
    expect(r.stdout).toContain('=> failed: STEP_FAILED in copy_to_repository');
  });

  it('refuses bad options with a message saying what is allowed', () => {
    const endState = cli('simulate', '-p', 'xcat', '-e', 'on');
    expect(endState.code).toBe(2);
    expect(endState.stderr).toContain('provisioner xcat cannot use end state on; it allows reboot, off');
    const provisioner = cli('simulate', '-p', 'hyperv');
    expect(provisioner.code).not.toBe(0);
    expect(provisioner.stderr).toMatch(/Allowed choices are libvirt, vmware, xcat/);
  });
});
