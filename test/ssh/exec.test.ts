/**
 * Commands against a real OpenSSH sshd on loopback: exit statuses, signals, output, concurrency, deadlines
 * with remote kill, disconnects and keep-alives.
 */
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isSshError, type SshError, SshExitError, SshPool } from '../../src/ssh/index.js';
import { pidsWithArg, waitFor } from '../helpers/procs.js';
import { type SshdServer, sshdAvailable, startSshd } from '../helpers/sshd.js';

const available = sshdAvailable('test/ssh/exec.test.ts');

/** A `sleep` argument unique to one test, so its process can be found (and found gone) in /proc. */
function uniqueSleep(): string {
  return `${1000 + Math.floor(Math.random() * 8000)}.${Date.now() % 100000}`;
}

/** Ends frozen sshd session processes (SIGKILL takes effect once they run again). */
function thaw(pids: number[]): void {
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGKILL');
      process.kill(pid, 'SIGCONT');
    } catch {
      // Gone.
    }
  }
}

async function failure(p: Promise<unknown>): Promise<SshError> {
  try {
    await p;
  } catch (err) {
    if (isSshError(err)) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
}

describe.skipIf(!available)('exec against OpenSSH sshd', () => {
  let server: SshdServer;
  let pool: SshPool;

  beforeAll(async () => {
    server = await startSshd();
    pool = new SshPool();
  });
  afterAll(async () => {
    await pool?.close();
    await server?.stop();
  });

  it('returns stdout, stderr and exit status 0', async () => {
    const r = await pool.exec(server.sshHost(), ['sh', '-c', 'echo out; echo err >&2']);
    expect(r).toMatchObject({ code: 0, signal: null, stdout: 'out\n', stderr: 'err\n', disconnected: false });
    expect(r.durationMs).toBeGreaterThan(0);
  });

  it('fails a non-zero exit with SSH_EXIT_NONZERO carrying status and stderr', async () => {
    const err = await failure(
      pool.exec(server.sshHost(), ['sh', '-c', 'echo partial; echo "disk full" >&2; exit 3']),
    );
    expect(err).toBeInstanceOf(SshExitError);
    expect(err.code).toBe('SSH_EXIT_NONZERO');
    expect(err.message).toContain('disk full');
    const { result } = err as SshExitError;
    expect(result).toMatchObject({ code: 3, signal: null, stdout: 'partial\n', stderr: 'disk full\n' });
    // check: false hands the same result back instead.
    const r = await pool.exec(server.sshHost(), ['sh', '-c', 'exit 7'], { check: false });
    expect(r.code).toBe(7);
  });

  it('reports a command killed by a signal as SSH_EXIT_SIGNAL', async () => {
    const err = await failure(pool.exec(server.sshHost(), ['sh', '-c', 'kill -TERM $$']));
    expect(err.code).toBe('SSH_EXIT_SIGNAL');
    expect((err as SshExitError).result).toMatchObject({ code: null, signal: 'SIGTERM' });
  });

  it('passes every argument through the remote shell unchanged', async () => {
    const nasty = [
      "it's",
      '$HOME',
      '`id`',
      'a b\tc',
      'new\nline',
      '*',
      '\\',
      '"q"',
      '',
      '-n',
      'ünï',
      '!x',
      ';rm',
    ];
    const r = await pool.exec(server.sshHost(), ['printf', '%s\\0', ...nasty]);
    expect(r.stdout.split('\0').slice(0, -1)).toEqual(nasty);
  });

  it('sends stdin and collects more than 1 MiB of stdout and stderr at once', async () => {
    const input = Buffer.alloc(3 * 1024 * 1024, 'x');
    const r = await pool.exec(
      server.sshHost(),
      ['sh', '-c', 'cat; head -c 2500000 /dev/zero | tr "\\0" e >&2; head -c 1500000 /dev/zero | tr "\\0" o'],
      { stdin: input },
    );
    expect(r.stdout.length).toBe(input.length + 1_500_000);
    expect(r.stdout.startsWith('xxxx')).toBe(true);
    expect(r.stdout.endsWith('oooo')).toBe(true);
    expect(r.stderr.length).toBe(2_500_000);
  });

  it('stops a command past maxOutputBytes with SSH_OUTPUT_LIMIT and kills it', async () => {
    const err = await failure(pool.exec(server.sshHost(), ['yes'], { maxOutputBytes: 100_000 }));
    expect(err.code).toBe('SSH_OUTPUT_LIMIT');
    expect(err.details?.remoteKilled).toBe(true);
  });

  it('runs 30 concurrent commands on one connection, at most 8 channels at a time', async () => {
    const host = server.sshHost({ name: 'concurrent' });
    let peak = 0;
    const watch = setInterval(() => {
      peak = Math.max(peak, pool.channelsOf(host).inUse);
    }, 5);
    try {
      const results = await Promise.all(
        Array.from({ length: 30 }, (_, i) =>
          pool.exec(host, ['sh', '-c', 'sleep 0.3; echo "$1 $PPID"', 'sh', String(i)]),
        ),
      );
      expect(results.map((r) => Number(r.stdout.split(' ')[0]))).toEqual(
        Array.from({ length: 30 }, (_, i) => i),
      );
    } finally {
      clearInterval(watch);
    }
    expect(peak).toBe(8);
    // One connection: OpenSSH forks one session process per connection, parent of every command's shell.
    const r = await pool.exec(host, ['sh', '-c', 'echo $PPID']);
    expect(server.sessionPids()).toContain(Number(r.stdout.trim()));
  });

  it('kills a command past its deadline on the remote side (whole process group)', async () => {
    const arg = uniqueSleep();
    const child = uniqueSleep();
    const started = Date.now();
    const run = failure(
      pool.exec(server.sshHost(), ['sh', '-c', `sleep ${child} & sleep ${arg}; wait`], { timeoutMs: 700 }),
    );
    await waitFor(
      () => pidsWithArg(arg).length > 0 && pidsWithArg(child).length > 0,
      5000,
      'the commands to start',
    );
    const err = await run;
    expect(err.code).toBe('SSH_TIMEOUT');
    expect(err.details?.remoteKilled).toBe(true);
    // The sleeps would run for over 1000 s: ending within the kill budgets means the deadline stopped them.
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(pidsWithArg(arg)).toEqual([]);
    expect(pidsWithArg(child)).toEqual([]);
  });

  it('kills the process group of a command whose PID arrives only after its deadline (slow host)', async () => {
    const arg = uniqueSleep();
    const child = uniqueSleep();
    const proc = await pool.spawn(
      server.sshHost({ name: 'slow-pid' }),
      ['sh', '-c', `sleep ${child} & sleep ${arg}; wait`],
      { timeoutMs: 100 },
    );
    proc.stdout.resume();
    // Hold this event loop past the deadline until the commands run: the deadline then fires before the
    // PID header is read, as it does when a loaded client reads its socket late.
    const pastDeadline = Date.now() + 300;
    const until = Date.now() + 10_000;
    const running = () => pidsWithArg(arg).length > 0 && pidsWithArg(child).length > 0;
    while (Date.now() < until && (Date.now() < pastDeadline || !running())) {
      // Busy on purpose: no timer or socket callback may run here.
    }
    expect(proc.pid).toBeUndefined();
    const err = await failure(proc.done);
    expect(err.code).toBe('SSH_TIMEOUT');
    expect(err.details?.remoteKilled).toBe(true);
    expect(err.details?.pid).toBeGreaterThan(1);
    await waitFor(
      () => pidsWithArg(arg).length === 0 && pidsWithArg(child).length === 0,
      5000,
      'the group to die',
    );
  });

  it('aborts a running command through its AbortSignal and kills it', async () => {
    const arg = uniqueSleep();
    const ac = new AbortController();
    const run = failure(
      pool.exec(server.sshHost(), ['sleep', arg], { signal: ac.signal, timeoutMs: 30_000 }),
    );
    await waitFor(() => pidsWithArg(arg).length > 0, 5000, 'sleep to start');
    ac.abort();
    const err = await run;
    expect(err.code).toBe('SSH_ABORTED');
    expect(err.details?.remoteKilled).toBe(true);
    expect(pidsWithArg(arg)).toEqual([]);
  });

  it('aborts a command still queued for a channel without running it', async () => {
    const host = server.sshHost({ name: 'queued', maxChannels: 1 });
    const stopBlocker = new AbortController();
    const blocker = failure(pool.exec(host, ['sleep', '60'], { signal: stopBlocker.signal }));
    const ac = new AbortController();
    const marker = `${server.dir}/should-not-exist-${randomUUID()}`;
    const queued = failure(pool.exec(host, ['touch', marker], { signal: ac.signal }));
    await waitFor(() => pool.channelsOf(host).queued === 1, 10_000, 'the second command to queue');
    ac.abort();
    const err = await queued;
    expect(err.code).toBe('SSH_ABORTED');
    expect(err.details?.started).toBe(false);
    stopBlocker.abort();
    expect((await blocker).code).toBe('SSH_ABORTED');
    const r = await pool.exec(host, ['sh', '-c', `test -e "$1" && echo yes || echo no`, 'sh', marker]);
    expect(r.stdout).toBe('no\n');
  });

  it('treats the session dying under a command as success with expectDisconnect, and reconnects', async () => {
    const host = server.sshHost({ name: 'reboot' });
    const before = await pool.exec(host, ['sh', '-c', 'echo $PPID']);
    // Killing the session's sshd drops the connection before any exit status: what a reboot looks like.
    const r = await pool.exec(host, ['sh', '-c', 'kill -KILL $PPID; sleep 5'], { expectDisconnect: true });
    expect(r).toMatchObject({ disconnected: true, code: null, signal: null });
    const after = await pool.exec(host, ['sh', '-c', 'echo $PPID']);
    expect(after.stdout).not.toBe(before.stdout);
  });

  it('reports the same without expectDisconnect as SSH_DISCONNECTED', async () => {
    const err = await failure(
      pool.exec(server.sshHost({ name: 'no-expect' }), ['sh', '-c', 'kill -KILL $PPID; sleep 5']),
    );
    expect(err.code).toBe('SSH_DISCONNECTED');
  });
});

describe.skipIf(!available)('connection loss against OpenSSH sshd', () => {
  let server: SshdServer;
  let pool: SshPool;

  beforeAll(async () => {
    server = await startSshd();
    pool = new SshPool();
  });
  afterAll(async () => {
    await pool?.close();
    await server?.stop();
  });

  it('reports the server dying mid-command as SSH_DISCONNECTED; the next command reconnects', async () => {
    const host = server.sshHost({ connectDeadlineMs: 10_000 });
    const arg = uniqueSleep();
    const run = failure(pool.exec(host, ['sleep', arg], { timeoutMs: 30_000 }));
    await waitFor(() => pidsWithArg(arg).length > 0, 5000, 'sleep to start');
    const oldPid = server.pid;
    await server.halt();
    const err = await run;
    expect(err.code).toBe('SSH_DISCONNECTED');
    // The host comes back a little later (a reboot): the next command retries until it answers.
    const restart = sleep(600).then(() => server.start());
    const r = await pool.exec(host, ['echo', 'back']);
    await restart;
    expect(r.stdout).toBe('back\n');
    expect(server.pid).not.toBe(oldPid);
  });

  it('resets a connection on which an aborted command start stays unanswered for the stop budget (7 s)', async () => {
    // Keep-alives far apart: only the reset can end this connection within the test.
    const host = server.sshHost({ name: 'unanswered', keepaliveIntervalMs: 60_000 });
    await pool.exec(host, ['true']);
    const frozen = server.signalSessions('SIGSTOP');
    expect(frozen.length).toBeGreaterThan(0);
    const ac = new AbortController();
    try {
      // The channel open goes out and is never answered: a partition or a frozen host look alike here.
      const run = failure(pool.exec(host, ['true'], { signal: ac.signal }));
      await sleep(100);
      const abortedAt = Date.now();
      ac.abort();
      const err = await run;
      const afterMs = Date.now() - abortedAt;
      expect(err.code).toBe('SSH_DISCONNECTED');
      expect(err.message).toContain('reset: a stop the host did not answer');
      // 5 s kill budget + 2 s for the close; the upper bound leaves room for a loaded machine.
      expect(afterMs).toBeGreaterThanOrEqual(6900);
      expect(afterMs).toBeLessThan(12_000);
    } finally {
      thaw(frozen);
    }
    // The reset connection is not reused: the next command opens a new one.
    expect((await pool.exec(host, ['echo', 'again'])).stdout).toBe('again\n');
  });

  it('notices a frozen server through keep-alives within interval x (count + 1)', async () => {
    const host = server.sshHost({ name: 'frozen', keepaliveIntervalMs: 400, keepaliveCountMax: 2 });
    await pool.exec(host, ['true']);
    const arg = uniqueSleep();
    const run = failure(pool.exec(host, ['sleep', arg], { timeoutMs: 30_000 }));
    await waitFor(() => pidsWithArg(arg).length > 0, 5000, 'sleep to start');
    const frozen = server.signalSessions('SIGSTOP');
    expect(frozen.length).toBeGreaterThan(0);
    const started = Date.now();
    try {
      const err = await run;
      const noticedMs = Date.now() - started;
      expect(err.code).toBe('SSH_DISCONNECTED');
      expect(err.message).toContain('keep-alive');
      // interval x (count + 1), plus room for a loaded machine; the command's own deadline is 30 s.
      expect(noticedMs).toBeLessThan(400 * 3 + 5000);
    } finally {
      thaw(frozen);
    }
  });
});
