/**
 * Faults OpenSSH cannot be made to show on cue, injected with a scripted server on ssh2's `Server`, and
 * connection failures from plain TCP listeners (a host that accepts but never speaks, one still booting).
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import ssh2 from 'ssh2';
import { afterAll, afterEach, beforeAll, describe, expect, it, vi } from 'vitest';
import { isSshError, type SshError, SshPool } from '../../src/ssh/index.js';
import { type ExecCall, type FakeSshServer, pidHeader, startFakeSsh } from '../helpers/fakessh.js';
import { ed25519KeyPair } from '../helpers/keys.js';
import { waitFor } from '../helpers/procs.js';

async function failure(p: Promise<unknown>): Promise<SshError> {
  try {
    await p;
  } catch (err) {
    if (isSshError(err)) return err;
    throw err;
  }
  throw new Error('expected the call to fail');
}

/** What the fake server does for each command: looked up by the program name after our `exec`. */
type Script = (call: ExecCall) => void;
let script: Script = () => {};

function programOf(command: string): string {
  return /exec (\S+)/.exec(command)?.[1] ?? command.split(' ')[0] ?? '';
}

/** The remote reader of a copy: one command that prints `size:kind` from `stat`, then runs `cat`. */
function isCopyReader(command: string): boolean {
  return programOf(command) === 'sh' && command.includes('stat -L') && command.includes('exec cat');
}

describe('fault injection with an ssh2 Server', () => {
  let fake: FakeSshServer;
  let pool: SshPool;
  let dir: string;

  beforeAll(async () => {
    fake = await startFakeSsh({ onExec: (call) => script(call) });
    dir = mkdtempSync(join(tmpdir(), 'vcl-faults-'));
  });
  afterEach(async () => {
    await pool?.close();
  });
  afterAll(async () => {
    await fake?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  const fresh = () => {
    pool = new SshPool();
    return pool;
  };

  it('a private key is parsed once per key material, whatever host uses it; a key file that changes is read anew', async () => {
    script = ({ stream }) => {
      stream.write(pidHeader(1));
      stream.exit(0);
      stream.end();
    };
    const shared = ed25519KeyPair().private;
    const other = ed25519KeyPair().private;
    const parse = vi.spyOn(ssh2.utils, 'parseKey');
    try {
      for (const [name, privateKey] of [
        ['guest-a', shared],
        ['guest-b', shared],
        ['guest-c', other],
        ['guest-a', shared],
      ] as const) {
        const p = new SshPool();
        await p.exec(fake.host({ name, privateKey }), ['true']);
        await p.close();
      }
      expect(parse).toHaveBeenCalledTimes(2);

      const keys = mkdtempSync(join(tmpdir(), 'vcl-keys-'));
      const file = join(keys, 'id_ed25519');
      writeFileSync(file, shared);
      await fresh().exec(fake.host({ name: 'from-file', privateKey: file }), ['true']);
      await pool.close();
      expect(parse).toHaveBeenCalledTimes(2);
      writeFileSync(file, 'not a key\n');
      const err = await failure(fresh().exec(fake.host({ name: 'from-file', privateKey: file }), ['true']));
      expect(err.code).toBe('SSH_CONFIG_INVALID');
      expect(parse).toHaveBeenCalledTimes(3);
      rmSync(keys, { recursive: true, force: true });
    } finally {
      parse.mockRestore();
    }
  });

  it('a session closed without exit status is SSH_DISCONNECTED, or success with expectDisconnect', async () => {
    script = ({ stream }) => {
      stream.write(pidHeader(4242));
      stream.write('going down\n');
      setTimeout(() => stream.close(), 20);
    };
    const p = fresh();
    const host = fake.host({ name: 'close-no-exit' });
    const err = await failure(p.exec(host, ['reboot']));
    expect(err.code).toBe('SSH_DISCONNECTED');
    expect(err.message).toContain('session closed');
    const before = fake.logins;
    const r = await p.exec(host, ['reboot'], { expectDisconnect: true });
    expect(r).toMatchObject({ disconnected: true, code: null, stdout: 'going down\n' });
    // The connection that carried the reboot is never reused.
    script = ({ stream }) => {
      stream.write(pidHeader(1));
      stream.exit(0);
      stream.end();
    };
    await p.exec(host, ['true']);
    expect(fake.logins).toBe(before + 1);
  });

  it('an exit status and EOF that came before the connection dropped are the result', async () => {
    script = ({ stream, client }) => {
      stream.write(`${pidHeader(7)}done\n`);
      stream.exit(0);
      stream.eof();
      setTimeout(() => client.end(), 10);
    };
    const r = await fresh().exec(fake.host({ name: 'exit-eof-drop' }), ['true']);
    expect(r).toMatchObject({ code: 0, stdout: 'done\n', disconnected: false });
  });

  it('an exit status without EOF before the drop may miss output: SSH_DISCONNECTED unless expected', async () => {
    script = ({ stream, client }) => {
      stream.write(`${pidHeader(7)}partial\n`);
      stream.exit(0);
      setTimeout(() => client.end(), 10);
    };
    const p = fresh();
    const err = await failure(p.exec(fake.host({ name: 'exit-drop' }), ['cat', 'big']));
    expect(err.code).toBe('SSH_DISCONNECTED');
    expect(err.message).toContain('before all output');
    const r = await p.exec(fake.host({ name: 'exit-drop-2' }), ['shutdown', '-h', 'now'], {
      expectDisconnect: true,
    });
    expect(r).toMatchObject({ disconnected: true, code: 0, stdout: 'partial\n' });
  });

  it('on timeout, a server that ignores signal requests still gets the process group killed by command', async () => {
    script = ({ command, stream }) => {
      if (command.startsWith('kill ')) {
        stream.exit(0);
        stream.end();
        return;
      }
      stream.write(pidHeader(31337));
      // Never ends by itself.
    };
    const started = Date.now();
    const err = await failure(
      fresh().exec(fake.host({ name: 'no-signal' }), ['sleep', '100'], { timeoutMs: 300 }),
    );
    expect(err.code).toBe('SSH_TIMEOUT');
    // The command never ends by itself: ending within the kill budget means the kill command stopped it.
    expect(Date.now() - started).toBeLessThan(15_000);
    expect(err.details).toMatchObject({ pid: 31337, remoteKilled: true });
    expect(fake.commands.at(-1)).toMatch(/^kill -KILL -- -31337 /);
  });

  it('passes output through untouched when no PID header comes (a shell that printed first)', async () => {
    script = ({ stream }) => {
      stream.write('banner from a login script\nreal output\n');
      stream.exit(0);
      stream.end();
    };
    const r = await fresh().exec(fake.host({ name: 'no-header' }), ['echo']);
    expect(r.stdout).toBe('banner from a login script\nreal output\n');
  });

  it('keeps the PID header out of stdout even when it arrives in pieces', async () => {
    script = ({ stream }) => {
      stream.write('VCLP');
      setTimeout(() => stream.write('ID=99'), 5);
      setTimeout(() => stream.write('\nab'), 10);
      setTimeout(() => {
        stream.write('c');
        stream.exit(0);
        stream.end();
      }, 15);
    };
    const r = await fresh().exec(fake.host({ name: 'pieces' }), ['x']);
    expect(r.stdout).toBe('abc');
  });

  it('a refused channel is SSH_CHANNEL_FAILED', async () => {
    const refusing = await startFakeSsh({ onExec: () => {}, refuseSessions: true });
    try {
      const err = await failure(fresh().exec(refusing.host(), ['true']));
      expect(err.code).toBe('SSH_CHANNEL_FAILED');
    } finally {
      await refusing.stop();
    }
  });

  it('a source shorter than its stat size fails COPY_SIZE_MISMATCH and leaves nothing', async () => {
    script = ({ command, stream }) => {
      stream.write(pidHeader(5));
      if (isCopyReader(command)) {
        // The size line in pieces, then the data.
        stream.write('10');
        stream.write('0:regular file\n');
        stream.write(Buffer.alloc(50, 1));
      }
      stream.exit(0);
      stream.end();
    };
    const target = join(dir, 'short');
    const err = await failure(
      fresh().copy({ host: fake.host({ name: 'short' }), path: '/img' }, { path: target }),
    );
    expect(err.code, err.message).toBe('COPY_SIZE_MISMATCH');
    expect(err.details).toMatchObject({ bytes: 50, expectedBytes: 100 });
    expect(readdirSync(dir)).toEqual([]);
  });

  it('a copy whose source stalls fails SSH_TIMEOUT after idleTimeoutMs and leaves nothing', async () => {
    script = ({ command, stream }) => {
      stream.write(pidHeader(6));
      if (isCopyReader(command)) {
        stream.write('1000:regular file\n');
        stream.write(Buffer.alloc(10, 2));
      } else {
        stream.exit(0);
        stream.end();
      }
    };
    const err = await failure(
      fresh().copy(
        { host: fake.host({ name: 'stall' }), path: '/img' },
        { path: join(dir, 'stall') },
        {
          idleTimeoutMs: 300,
        },
      ),
    );
    expect(err.code).toBe('SSH_TIMEOUT');
    expect(err.details?.idle).toBe(true);
    expect(readdirSync(dir)).toEqual([]);
  });

  it('an idle timeout while the source still waits for a channel is reported as the timeout', async () => {
    script = ({ command, stream }) => {
      stream.write(pidHeader(7));
      // The first command holds the host's only channel; the copy's reader waits behind it.
      if (!isCopyReader(command) && command.includes('hold')) return;
      stream.exit(0);
      stream.end();
    };
    const p = fresh();
    const host = fake.host({ name: 'one-channel', maxChannels: 1 });
    const holder = new AbortController();
    const held = p.exec(host, ['hold'], { signal: holder.signal }).catch((e: unknown) => e);
    await waitFor(() => p.channelsOf(host).inUse === 1, 10_000, 'the channel to be taken');
    const err = await failure(
      p.copy({ host, path: '/img' }, { path: join(dir, 'queued') }, { idleTimeoutMs: 300 }),
    );
    holder.abort();
    await held;
    expect(err.code).toBe('SSH_TIMEOUT');
    expect(err.details?.idle).toBe(true);
    expect(readdirSync(dir)).toEqual([]);
  });
});

describe('connecting to hosts that are not ready', () => {
  const servers: Server[] = [];
  const sockets = new Set<Socket>();
  let pool: SshPool;

  afterEach(async () => {
    await pool?.close();
    for (const s of sockets) s.destroy();
    await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
  });

  async function listen(onSocket: (s: Socket) => void): Promise<number> {
    const srv = createServer((s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      onSocket(s);
    });
    servers.push(srv);
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    return (srv.address() as { port: number }).port;
  }

  it('a host that accepts TCP but never speaks SSH is retried per readyTimeout, then SSH_UNREACHABLE', async () => {
    let accepted = 0;
    const port = await listen(() => {
      accepted++;
    });
    pool = new SshPool();
    const host = {
      name: 'mute',
      host: '127.0.0.1',
      port,
      username: 'x',
      privateKey: ed25519KeyPair().private,
      hostKey: { fingerprints: ['SHA256:unused'] },
      readyTimeoutMs: 300,
      connectDeadlineMs: 1500,
    };
    const started = Date.now();
    const err = await failure(pool.exec(host, ['true']));
    expect(err.code).toBe('SSH_UNREACHABLE');
    expect(err.message).toContain('handshake');
    expect(accepted).toBeGreaterThanOrEqual(2);
    // Bounded by connectDeadlineMs (1.5 s) plus one handshake, with room for a loaded machine.
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('a private key file that cannot be read is SSH_CONFIG_INVALID, without retries', async () => {
    pool = new SshPool();
    const started = Date.now();
    const err = await failure(
      pool.exec(
        {
          name: 'nokey',
          host: '127.0.0.1',
          username: 'x',
          privateKey: '/nonexistent/id_ed25519',
          connectDeadlineMs: 30_000,
        },
        ['true'],
      ),
    );
    expect(err.code).toBe('SSH_CONFIG_INVALID');
    // Retrying would last the whole 30 s deadline.
    expect(Date.now() - started).toBeLessThan(10_000);
  });

  it('a host still booting (connections reset at first) is retried until it answers', async () => {
    script = ({ stream }) => {
      stream.write(`${pidHeader(3)}up\n`);
      stream.exit(0);
      stream.end();
    };
    const fake = await startFakeSsh({ onExec: (call) => script(call) });
    let resets = 0;
    // A front that resets the first three connections, then forwards to the real (fake) server.
    const port = await listen((s) => {
      if (resets < 3) {
        resets++;
        s.resetAndDestroy();
        return;
      }
      const upstream = createConnection({ host: '127.0.0.1', port: fake.port });
      sockets.add(upstream);
      s.pipe(upstream).pipe(s);
      upstream.on('error', () => s.destroy());
      s.on('error', () => upstream.destroy());
    });
    try {
      pool = new SshPool();
      const r = await pool.exec(fake.host({ name: 'booting', port, connectDeadlineMs: 10_000 }), ['uptime']);
      expect(r.stdout).toBe('up\n');
      expect(resets).toBe(3);
    } finally {
      await pool.close();
      await fake.stop();
    }
  });
});
