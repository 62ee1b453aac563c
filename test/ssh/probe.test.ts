import { createServer, type Server, type Socket } from 'node:net';
import { afterEach, describe, expect, it } from 'vitest';
import { probeSshBanner } from '../../src/ssh/probe.js';

const servers: Server[] = [];
const sockets = new Set<Socket>();
afterEach(async () => {
  for (const s of sockets) s.destroy();
  sockets.clear();
  await Promise.all(servers.splice(0).map((s) => new Promise((r) => s.close(r))));
});

async function serve(onSocket: (s: Socket) => void): Promise<number> {
  const server = createServer((s) => {
    sockets.add(s);
    s.on('error', () => {});
    onSocket(s);
  });
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return (server.address() as { port: number }).port;
}

const host = (port: number) => ({ name: 'p', host: '127.0.0.1', port, username: 'u', privateKey: 'x' });

describe('probeSshBanner', () => {
  it('is true once the server sends its SSH identification (after preamble lines too)', async () => {
    const plain = await serve((s) => s.write('SSH-2.0-OpenSSH_9.2\r\n'));
    expect(await probeSshBanner(host(plain), { timeoutMs: 2000 })).toBe(true);
    const split = await serve((s) => {
      s.write('Welcome\r\nSS');
      setTimeout(() => s.write('H-2.0-x\r\n'), 20);
    });
    expect(await probeSshBanner(host(split), { timeoutMs: 2000 })).toBe(true);
  });

  it('is false for a refused port, a reset, a close before the identification and a silent server', async () => {
    const closed = await serve(() => {});
    await new Promise((r) => servers.pop()?.close(r));
    expect(await probeSshBanner(host(closed), { timeoutMs: 2000 })).toBe(false);
    const reset = await serve((s) => s.resetAndDestroy());
    expect(await probeSshBanner(host(reset), { timeoutMs: 2000 })).toBe(false);
    const hangsUp = await serve((s) => s.end('not ssh\r\n'));
    expect(await probeSshBanner(host(hangsUp), { timeoutMs: 2000 })).toBe(false);
    const silent = await serve(() => {});
    const t0 = Date.now();
    expect(await probeSshBanner(host(silent), { timeoutMs: 200 })).toBe(false);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
  });

  it('is false at once when aborted', async () => {
    const silent = await serve(() => {});
    const ac = new AbortController();
    const p = probeSshBanner(host(silent), { timeoutMs: 10_000, signal: ac.signal });
    setTimeout(() => ac.abort(), 50);
    expect(await p).toBe(false);
  });
});
