/**
 * A scriptable SSH server on ssh2's own `Server`, on 127.0.0.1 and a free port, for the faults OpenSSH
 * cannot be made to show on cue (a session closed without exit status, a refused channel, a server that
 * ignores signal requests (ssh2's Server drops them once exec started), a lying `stat`). Any public key is
 * accepted; each exec goes to the test's handler. Beside the OpenSSH tests, not instead of them.
 */
import type { AddressInfo } from 'node:net';
import ssh2 from 'ssh2';
import { fingerprintSha256 } from '../../src/ssh/hostkeys.js';
import type { SshHost } from '../../src/ssh/types.js';
import { ed25519KeyPair } from './keys.js';

export interface ExecCall {
  command: string;
  stream: ssh2.ServerChannel;
  /** The connection the command came on: `end()` it to drop the connection. */
  client: ssh2.Connection;
  connection: number;
}

export interface FakeSshServer {
  readonly port: number;
  /** Every exec command received, in order. */
  readonly commands: string[];
  /** Connections that completed login. */
  readonly logins: number;
  host(overrides?: Partial<SshHost>): SshHost;
  stop(): Promise<void>;
}

export interface FakeSshOptions {
  onExec: (call: ExecCall) => void;
  /** Refuse every session channel (as a server at its MaxSessions does). */
  refuseSessions?: boolean;
}

export async function startFakeSsh(options: FakeSshOptions): Promise<FakeSshServer> {
  const hostKey = ed25519KeyPair();
  const userKey = ed25519KeyPair();
  const parsed = ssh2.utils.parseKey(hostKey.public);
  if (parsed instanceof Error) throw parsed;
  const fingerprint = fingerprintSha256(parsed.getPublicSSH());
  const commands: string[] = [];
  const clients = new Set<ssh2.Connection>();
  let logins = 0;

  const server = new ssh2.Server({ hostKeys: [hostKey.private] }, (client) => {
    clients.add(client);
    client.on('close', () => clients.delete(client));
    client.on('error', () => {});
    client.on('authentication', (ctx) => {
      if (ctx.method === 'publickey') ctx.accept();
      else ctx.reject(['publickey']);
    });
    client.on('ready', () => {
      const connection = ++logins;
      client.on('session', (accept, reject) => {
        if (options.refuseSessions) {
          reject();
          return;
        }
        const session = accept();
        session.on('exec', (acceptExec, _rejectExec, info) => {
          const stream = acceptExec();
          commands.push(info.command);
          options.onExec({ command: info.command, stream, client, connection });
        });
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;

  return {
    port,
    commands,
    get logins() {
      return logins;
    },
    host(overrides = {}) {
      return {
        name: `fake-${port}`,
        host: '127.0.0.1',
        port,
        username: 'test',
        privateKey: userKey.private,
        hostKey: { fingerprints: [fingerprint] },
        connectDeadlineMs: 3000,
        ...overrides,
      };
    },
    async stop() {
      for (const c of clients) c.end();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** The PID header line our transport expects first on stdout (`echo VCLPID=$$`). */
export function pidHeader(pid: number): string {
  return `VCLPID=${pid}\n`;
}
