/**
 * Exec channel semantics with a plain ssh2 client: exit status before EOF before close, the transport's
 * PID header, exit-signal for killed commands (signal request or the transport's kill script), and a
 * command that stops when its channel closes.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { toCommandLine } from '../../src/ssh/index.js';
import { eventually, type LabHarness, openLab, RawClient } from './helpers.js';

let h: LabHarness;
let raw: RawClient;
beforeAll(async () => {
  h = await openLab({ computers: { 'libvirt-linux': 1 } });
  raw = await RawClient.connect(h.lab, 'repo-host');
});
afterAll(async () => {
  raw?.end();
  await h?.close();
});

const wrapped = (argv: string[]) => `echo VCLPID=$$; exec ${toCommandLine(argv)}`;

describe('an exec channel', () => {
  it('answers exit status, then EOF, then close, with stdout and stderr apart', async () => {
    const ok = await raw.run('echo hello');
    expect(ok).toEqual({
      code: 0,
      signal: null,
      stdout: 'hello\n',
      stderr: '',
      events: ['exit', 'eof', 'close'],
    });
    const bad = await raw.run("stat -c %s -- '/no such'");
    expect(bad).toEqual({
      code: 1,
      signal: null,
      stdout: '',
      stderr: "stat: cannot statx '/no such': No such file or directory\n",
      events: ['exit', 'eof', 'close'],
    });
  });

  it('reads stdin until EOF', async () => {
    const r = await raw.run('tee /srv/vcl/images/stdin.txt', 'piped\ndata\n');
    expect(r.stdout).toBe('piped\ndata\n');
    expect((await h.lab.readFile('repo-host', '/srv/vcl/images/stdin.txt')).toString()).toBe('piped\ndata\n');
  });

  it('prints the transport’s PID header first, a fresh PID each time', async () => {
    const a = await raw.run(wrapped(['echo', 'x']));
    const b = await raw.run(wrapped(['echo', 'x']));
    expect(a.stdout).toMatch(/^VCLPID=\d+\nx\n$/);
    expect(b.stdout).toMatch(/^VCLPID=\d+\nx\n$/);
    expect(a.stdout).not.toBe(b.stdout);
  });

  it('a signal request kills the command: exit-signal, then EOF and close', async () => {
    const { channel, result } = await raw.start('sleep 30');
    await eventually(() => h.lab.runningCommands('repo-host') === 1);
    channel.signal('KILL');
    const r = await result;
    expect(r.code).toBeNull();
    expect(r.signal).toMatch(/KILL/);
    expect(r.events).toEqual(['exit', 'eof', 'close']);
    expect(h.lab.runningCommands('repo-host')).toBe(0);
  });

  it('the transport’s kill script kills the process group it names', async () => {
    const { result, stdoutSoFar } = await raw.start(wrapped(['sleep', '30']));
    await eventually(() => stdoutSoFar().includes('\n'));
    const pid = Number(/^VCLPID=(\d+)\n$/.exec(stdoutSoFar())?.[1]);
    const kill = await raw.run(
      `kill -KILL -- -${pid} 2>/dev/null || kill -KILL ${pid} 2>/dev/null || ! kill -0 -- -${pid} 2>/dev/null`,
    );
    expect(kill.code).toBe(0);
    const r = await result;
    expect(r.signal).toMatch(/KILL/);
    expect(h.lab.commandLog.at(-1)).toMatchObject({ kind: 'kill', argv: null });
    // Killing a group that is gone succeeds too (`! kill -0` is true).
    expect(
      (
        await raw.run(
          `kill -KILL -- -${pid} 2>/dev/null || kill -KILL ${pid} 2>/dev/null || ! kill -0 -- -${pid} 2>/dev/null`,
        )
      ).code,
    ).toBe(0);
  });

  it('a command stops when the client closes its channel', async () => {
    const { channel, result } = await raw.start('sleep 30');
    await eventually(() => h.lab.runningCommands('repo-host') === 1);
    channel.close();
    const r = await result;
    expect(r.code).toBeNull();
    await eventually(() => h.lab.runningCommands('repo-host') === 0);
  });

  it('refuses shells, terminals and SFTP', async () => {
    await expect(
      new Promise((resolve, reject) => raw.client.shell((err, ch) => (err ? reject(err) : resolve(ch)))),
    ).rejects.toThrow();
    await expect(
      new Promise((resolve, reject) => raw.client.sftp((err, s) => (err ? reject(err) : resolve(s)))),
    ).rejects.toThrow();
  });

  it('a timed-out transport command is killed and no longer runs', async () => {
    const err = await h.pool
      .exec(h.host('repo-host'), ['sleep', '30'], { timeoutMs: 200 })
      .catch((e: unknown) => e as { code: string; details: { remoteKilled: boolean } });
    expect(err).toMatchObject({ code: 'SSH_TIMEOUT', details: { remoteKilled: true } });
    await eventually(() => h.lab.runningCommands('repo-host') === 0);
    expect(h.lab.internalErrors).toEqual([]);
  });
});
