/**
 * One host's SSH server: ssh2's `Server` with the host's own ed25519 key, fed by a plain TCP listener on
 * the lab's `listenAddress` (127.0.0.1 by default; port 0) through `injectSocket`, so the lab holds every raw socket and can drop a connection
 * the way a network or a powered-off machine does (TCP reset, no SSH disconnect message). Public key
 * authentication with the lab's client key only. A guest whose OS is not running resets new connections
 * at once (the client sees ECONNRESET and retries, as with a port nobody listens on); its listening port
 * is kept meanwhile so that nothing else can take it.
 */
import { createServer, type Server as NetServer, type Socket } from 'node:net';
import ssh2 from 'ssh2';
import type { HostRuntime, LabCore } from './core.js';
import { type RunningExec, startExec } from './exec.js';
import { hostMatches } from './faults.js';
import { acceptsKey, type ClientKey, type HostKey } from './keys.js';

export class HostServer {
  private readonly ssh: ssh2.Server;
  private readonly tcp: NetServer;
  /** Open sockets by the client's port (ssh2 tells the connection's remote port, not its socket). */
  private readonly sockets = new Map<number, Socket>();
  port = 0;

  constructor(
    private readonly core: LabCore,
    private readonly host: HostRuntime,
    hostKey: HostKey,
    private readonly clientKey: ClientKey,
  ) {
    this.ssh = new ssh2.Server({ hostKeys: [hostKey.privateKey] }, (client, info) =>
      this.onClient(client, info),
    );
    this.ssh.on('error', () => {});
    this.tcp = createServer((socket) => this.onSocket(socket));
    this.tcp.on('error', () => {});
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve, reject) => {
      this.tcp.once('error', reject);
      this.tcp.listen(0, this.core.options.listenAddress, () => {
        this.tcp.off('error', reject);
        resolve();
      });
    });
    const address = this.tcp.address();
    if (address === null || typeof address === 'string') throw new Error('the lab listener has no port');
    this.port = address.port;
    return this.port;
  }

  /** Drops every connection: TCP reset, no SSH goodbye (a host that lost power or network). */
  dropAll(): void {
    for (const socket of this.sockets.values()) socket.resetAndDestroy();
    this.sockets.clear();
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.tcp.close(() => resolve()));
    this.dropAll();
    await closed;
  }

  private onSocket(socket: Socket): void {
    socket.on('error', () => {});
    const computer = this.host.computer;
    const unreachable = this.core.faults.peek('unreachable', (f) => hostMatches(f.host, this.host.name));
    // Each refused connection counts as a firing (the handle's `fired`).
    if (unreachable !== undefined) this.core.faults.fire(unreachable);
    if (
      this.core.stopping.aborted ||
      unreachable !== undefined ||
      (computer !== undefined && !computer.answersSsh)
    ) {
      socket.resetAndDestroy();
      return;
    }
    const port = socket.remotePort;
    if (port === undefined) {
      socket.destroy();
      return;
    }
    // Small packets (exit status, EOF, close) must not wait for Nagle and delayed ACKs: 40 ms each.
    socket.setNoDelay(true);
    this.sockets.set(port, socket);
    socket.once('close', () => {
      if (this.sockets.get(port) === socket) this.sockets.delete(port);
    });
    this.ssh.injectSocket(socket);
  }

  private onClient(client: ssh2.Connection, info: ssh2.ClientInfo): void {
    const socket = this.sockets.get(info.port);
    const drop = () => socket?.resetAndDestroy();
    client.on('error', () => {});
    // A channel whose unread input filled its buffer reports its close only once drained: the end of the
    // connection stops its commands directly.
    const execs = new Set<RunningExec>();
    client.on('close', () => {
      for (const e of execs) e.abandon();
      execs.clear();
    });
    client.on('authentication', (ctx) => {
      if (ctx.method !== 'publickey' || ctx.username !== this.host.user) {
        ctx.reject(['publickey']);
        return;
      }
      const signature =
        ctx.signature !== undefined && ctx.blob !== undefined
          ? { blob: ctx.blob, signature: ctx.signature, hashAlgo: ctx.hashAlgo }
          : undefined;
      if (acceptsKey(this.clientKey, ctx.key, signature)) ctx.accept();
      else ctx.reject(['publickey']);
    });
    client.on('ready', () => {
      client.on('session', (accept) => {
        const session = accept();
        let running: RunningExec | undefined;
        session.on('exec', (acceptExec, _reject, req) => {
          const channel = acceptExec();
          const exec = startExec(this.core, this.host, channel, req.command, drop, info.ip);
          running = exec;
          execs.add(exec);
          channel.once('close', () => execs.delete(exec));
        });
        session.on('signal', (acceptSignal, _reject, req) => {
          acceptSignal?.();
          running?.signal(req.name);
        });
        // Environment requests are ignored (OpenSSH's default AcceptEnv accepts few), the rest refused:
        // the lab runs commands, not shells, terminals or SFTP.
        session.on('env', (acceptEnv) => acceptEnv?.());
        session.on('pty', (_a, reject) => reject?.());
        session.on('shell', (_a, reject) => reject());
        session.on('subsystem', (_a, reject) => reject());
        session.on('sftp', (_a, reject) => reject());
      });
      client.on('request', (_accept, reject) => reject?.());
      client.on('tcpip', (_accept, reject) => reject());
    });
  }
}
