/**
 * A cheap "does this host's sshd answer?" check: a TCP connection that waits for the server's SSH
 * identification line (`SSH-2.0-...`, RFC 4253 4.2) and hangs up, with no key exchange. It costs a
 * connect and one read, where an SSH connection attempt costs a client, a parsed key, a key exchange and
 * its signatures (or, refused, the same set-up and an error). A refused or reset connection, a timeout
 * or a connection closed before the identification line all mean "not answering".
 */
import { connect as tcpConnect } from 'node:net';
import { DEFAULTS } from './connect.js';
import type { SshHost } from './types.js';

/** RFC 4253 lets a server send other lines before its identification; it must fit in this much. */
const MAX_PREAMBLE_BYTES = 8192;
/** What the probe sends before hanging up, so that sshd logs a client that left rather than a protocol error. */
const CLIENT_ID = 'SSH-2.0-vcl-capture-probe\r\n';

export interface ProbeOptions {
  /** Gives up (false) after this long. */
  timeoutMs: number;
  signal?: AbortSignal | undefined;
}

/** Resolves true once `host` sent an SSH identification line, false when it did not (never rejects). */
export function probeSshBanner(host: SshHost, options: ProbeOptions): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    if (options.signal?.aborted) {
      resolve(false);
      return;
    }
    const socket = tcpConnect({ host: host.host, port: host.port ?? DEFAULTS.port });
    let received: Buffer | undefined;
    let settled = false;
    const finish = (answered: boolean) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      if (answered && socket.writable) {
        // Hang up after our own identification has left (a write to a local socket buffer: at once).
        socket.end(CLIENT_ID, () => socket.destroy());
        setTimeout(() => socket.destroy(), 1000).unref();
      } else {
        socket.destroy();
      }
      resolve(answered);
    };
    const onAbort = () => finish(false);
    const timer = setTimeout(onAbort, Math.max(1, options.timeoutMs));
    options.signal?.addEventListener('abort', onAbort, { once: true });
    socket.on('error', () => finish(false));
    socket.on('close', () => finish(false));
    socket.on('data', (chunk: Buffer) => {
      received = received === undefined ? chunk : Buffer.concat([received, chunk]);
      // The identification starts a line: at the start of the stream or after a preamble line.
      if (received.subarray(0, 4).toString('latin1') === 'SSH-' || received.includes('\nSSH-')) {
        finish(true);
      } else if (received.length > MAX_PREAMBLE_BYTES) {
        finish(false);
      }
    });
  });
}
