/**
 * The inspector's HTTP and WebSocket server, on the loopback interface only. It serves
 * - the page and its script and style, from `public/` in the package (nothing from the internet);
 * - `/diagrams/<machine>.svg`: the machines' diagrams from the same generator as `visualizations/`;
 * - `/api/captures` (live and recent captures) and `/api/captures/<id>` (what was seen live, and the
 *   recorded transitions for replay);
 * - `/ws`: the hub's sanitized messages, one bounded queue per page.
 *
 * Requests must name this server as their Host (and pages their Origin): a web page elsewhere cannot
 * read it through DNS rebinding.
 */
import { readFile } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer } from 'ws';
import { packageFile } from '../package.js';
import { generateVisualizations } from '../visualize/generate.js';
import type { InspectorHub } from './hub.js';

export interface InspectorServerOptions {
  hub: InspectorHub;
  /** TCP port (default 0: any free port). */
  port?: number;
  /** Loopback address to bind (default 127.0.0.1). */
  host?: string;
}

export interface InspectorServer {
  /** `http://127.0.0.1:<port>/` */
  url: string;
  port: number;
  close(): Promise<void>;
}

const PUBLIC = packageFile('src/inspector/public/');
const ASSETS: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/index.html': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/app.js': { file: 'app.js', type: 'text/javascript; charset=utf-8' },
  '/app.css': { file: 'app.css', type: 'text/css; charset=utf-8' },
  '/favicon.svg': { file: 'favicon.svg', type: 'image/svg+xml' },
};

let diagrams: Promise<Map<string, string>> | undefined;

/** The machines' SVG diagrams by machine id (rendered once per process). */
export function machineDiagrams(): Promise<Map<string, string>> {
  diagrams ??= generateVisualizations().then(
    (files) =>
      new Map(
        [...files]
          .filter(([name]) => name.endsWith('.svg'))
          .map(([name, svg]) => [name.slice(0, -'.svg'.length), svg]),
      ),
  );
  return diagrams;
}

const LOOPBACK = new Set(['127.0.0.1', '::1', 'localhost']);

function allowedHost(header: string | undefined, port: number): boolean {
  if (!header) return false;
  const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(header);
  if (!m) return false;
  const host = (m[1] as string).replace(/^\[|\]$/g, '');
  return LOOPBACK.has(host) && Number(m[2] ?? 80) === port;
}

function allowedOrigin(origin: string | undefined, port: number): boolean {
  if (!origin) return true; // not a browser (tests, curl)
  try {
    const u = new URL(origin);
    return u.protocol === 'http:' && allowedHost(u.host, port);
  } catch {
    return false;
  }
}

export async function startInspectorServer(options: InspectorServerOptions): Promise<InspectorServer> {
  const { hub } = options;
  const host = options.host ?? '127.0.0.1';
  if (!LOOPBACK.has(host)) throw new RangeError(`the inspector listens on loopback only, not ${host}`);
  const svgs = await machineDiagrams();
  let port = 0;

  const send = (res: ServerResponse, status: number, type: string, body: string | Buffer) => {
    res.writeHead(status, {
      'content-type': type,
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'no-referrer',
      'content-security-policy': `default-src 'self'; connect-src 'self' ws://${host}:${port} ws://localhost:${port}; img-src 'self' data:; style-src 'self' 'unsafe-inline'; frame-ancestors 'none'`,
    });
    res.end(body);
  };
  const json = (res: ServerResponse, status: number, body: unknown) =>
    send(res, status, 'application/json; charset=utf-8', JSON.stringify(body));

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    if (!allowedHost(req.headers.host, port)) return send(res, 421, 'text/plain', 'wrong host\n');
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(res, 405, 'text/plain', 'GET only\n');
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    const asset = ASSETS[path];
    if (asset) return send(res, 200, asset.type, await readFile(new URL(asset.file, PUBLIC)));
    const diagram = /^\/diagrams\/([a-z0-9_-]+)\.svg$/.exec(path);
    if (diagram) {
      const svg = svgs.get(diagram[1] as string);
      return svg ? send(res, 200, 'image/svg+xml', svg) : send(res, 404, 'text/plain', 'no such machine\n');
    }
    if (path === '/api/machines') return json(res, 200, { machines: [...svgs.keys()] });
    if (path === '/api/captures') return json(res, 200, { captures: await hub.listCaptures() });
    const one = /^\/api\/captures\/([A-Za-z0-9_.-]{1,100})$/.exec(path);
    if (one) {
      const detail = await hub.captureDetail(one[1] as string);
      return detail ? json(res, 200, detail) : json(res, 404, { error: 'no such capture' });
    }
    return send(res, 404, 'text/plain', 'not found\n');
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch((err: unknown) => {
      if (!res.headersSent)
        json(res, 500, { error: err instanceof Error ? err.message.slice(0, 200) : 'error' });
      else res.destroy();
    });
  });
  const wss = new WebSocketServer({ noServer: true, maxPayload: 4096 });
  server.on('upgrade', (req, socket, head) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (path !== '/ws' || !allowedHost(req.headers.host, port) || !allowedOrigin(req.headers.origin, port)) {
      socket.end('HTTP/1.1 403 Forbidden\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const client = hub.addClient(ws);
      ws.on('close', client.remove);
      ws.on('error', client.remove);
      // The page only listens; anything it sends is ignored.
    });
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  port = (server.address() as AddressInfo).port;
  const url = `http://${host.includes(':') ? `[${host}]` : host}:${port}/`;
  return {
    url,
    port,
    async close() {
      for (const ws of wss.clients) ws.terminate();
      wss.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
