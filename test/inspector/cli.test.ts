/**
 * The inspector from the command line (the installed bin, a child process): `demo --inspect`,
 * `capture --inspect` against the built-in lab, and `vcl-capture inspect` on the demo's store.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { stringify } from 'yaml';
import type { CaptureDetailResponse, CaptureSummary } from '../../src/inspector/index.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';

const BIN = new URL('../../src/cli/bin.mjs', import.meta.url).pathname;
let dir: string;
const children = new Set<ChildProcess>();

interface Run {
  child: ChildProcess;
  out: () => string;
  err: () => string;
  /** Resolves with the first match of `re` on stdout or stderr. */
  waitFor(re: RegExp, timeoutMs?: number): Promise<RegExpMatchArray>;
  exit: Promise<number | null>;
}

function run(args: string[]): Run {
  const child = spawn(process.execPath, [BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NO_COLOR: '1' },
  });
  children.add(child);
  let out = '';
  let err = '';
  const waiters = new Set<() => void>();
  child.stdout?.on('data', (d) => {
    out += String(d);
    for (const w of waiters) w();
  });
  child.stderr?.on('data', (d) => {
    err += String(d);
    for (const w of waiters) w();
  });
  const exit = new Promise<number | null>((resolve) =>
    child.on('close', (code) => {
      children.delete(child);
      for (const w of waiters) w();
      resolve(code);
    }),
  );
  return {
    child,
    out: () => out,
    err: () => err,
    exit,
    waitFor: (re, timeoutMs = 40_000) =>
      new Promise((resolve, reject) => {
        const check = () => {
          const m = re.exec(out) ?? re.exec(err);
          if (m) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(m);
          } else if (child.exitCode !== null) {
            waiters.delete(check);
            clearTimeout(timer);
            reject(new Error(`exited ${child.exitCode} before ${re}: ${out}\n${err}`));
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`timed out waiting for ${re}: ${out}\n${err}`));
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
  };
}

const getJson = async <T>(url: string): Promise<T> => {
  const r = await fetch(url);
  expect(r.status, url).toBe(200);
  return (await r.json()) as T;
};

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vcl-inspector-cli-'));
});

afterAll(() => {
  for (const c of children) c.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});

describe('vcl-capture with the inspector', () => {
  const db = () => join(dir, 'demo.sqlite');

  it('demo --inspect prints the URL, serves the captures live and after, and stops on Ctrl-C', async () => {
    const demo = run(['demo', '--json', '--db', db(), '--inspect', '0', '--step-delay', '30']);
    const url = (await demo.waitFor(/Inspector: (http:\/\/127\.0\.0\.1:\d+\/)/))[1] as string;
    expect((await fetch(url)).status).toBe(200);
    await demo.waitFor(/Inspector still serving at/);
    const { captures } = await getJson<{ captures: CaptureSummary[] }>(`${url}api/captures`);
    expect(captures.map((c) => [c.computer, c.status]).sort()).toEqual([
      ['lv-linux-1', 'completed'],
      ['px-linux-1', 'completed'],
      ['vm-windows-1', 'completed'],
      ['xc-linux-1', 'completed'],
    ]);
    const lv = captures.find((c) => c.computer === 'lv-linux-1') as CaptureSummary;
    const detail = await getJson<CaptureDetailResponse>(`${url}api/captures/${lv.id}`);
    expect(detail.machine).toBe('libvirt');
    expect(detail.live?.messages.some((m) => m.t === 'os')).toBe(true);
    expect(detail.transitions.at(-1)?.value).toBe('completed');
    // The fourth provisioner is followed the same way, with its own diagram.
    const px = captures.find((c) => c.computer === 'px-linux-1') as CaptureSummary;
    const pxDetail = await getJson<CaptureDetailResponse>(`${url}api/captures/${px.id}`);
    expect(pxDetail.machine).toBe('proxmox');
    expect(pxDetail.transitions.map((t) => JSON.stringify(t.value))).toContain('{"capturing":"copy_image"}');
    expect(pxDetail.transitions.at(-1)?.value).toBe('completed');
    const diagram = await fetch(`${url}diagrams/proxmox.svg`);
    expect(diagram.status).toBe(200);
    expect(await diagram.text()).toContain('inspect_vm');
    demo.child.kill('SIGINT');
    expect(await demo.exit).toBe(0);
    // stdout is still the summary alone.
    expect(JSON.parse(demo.out()).captures).toHaveLength(4);
  });

  it('inspect serves the store: its captures and their recorded transitions', async () => {
    const inspect = run(['inspect', '--db', db(), '--port', '0']);
    const url = (await inspect.waitFor(/(http:\/\/127\.0\.0\.1:\d+\/)/))[1] as string;
    const { captures } = await getJson<{ captures: CaptureSummary[] }>(`${url}api/captures`);
    expect(captures).toHaveLength(4);
    for (const c of captures) {
      expect(c.live).toBe(false);
      const d = await getJson<CaptureDetailResponse>(`${url}api/captures/${c.id}`);
      expect(d.live).toBeNull();
      expect(d.transitions[0]?.value).toEqual({ capturing: 'reserve' });
      expect(d.transitions.at(-1)?.value).toBe('completed');
    }
    inspect.child.kill('SIGINT');
    expect(await inspect.exit).toBe(0);
  });

  it('inspect refuses a database that does not exist', async () => {
    const r = run(['inspect', '--db', join(dir, 'nope.sqlite'), '--port', '0']);
    expect(await r.exit).toBe(2);
    expect(r.err()).toContain('no database');
  });

  describe('capture --inspect', () => {
    let lab: Lab;
    beforeAll(async () => {
      lab = await startLab({ powerDelayMs: 20 });
    });
    afterAll(async () => {
      await lab?.stop();
    });

    it('serves the inspector while the capture runs, prints its URL on stderr, and exits with the capture', async () => {
      const inventory = join(dir, 'lab.yaml');
      writeFileSync(inventory, stringify(lab.inventory));
      const r = run([
        'capture',
        'lv-linux-1',
        '--image',
        'Inspected',
        '--config',
        inventory,
        '--db',
        join(dir, 'capture.sqlite'),
        '--json',
        '--inspect',
        '0',
      ]);
      expect(await r.exit).toBe(0);
      expect(r.err()).toMatch(/Inspector: http:\/\/127\.0\.0\.1:\d+\//);
      expect(r.err()).toContain('vcl-capture inspect --db');
      expect(JSON.parse(r.out()).status).toBe('completed');
    });
  });
});
