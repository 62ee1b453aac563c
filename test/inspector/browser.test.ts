/**
 * The inspector in a real browser (Debian's Chromium, driven by playwright-core; never a downloaded
 * browser): the demo's three captures run against the built-in lab over SSH with inspection on, and the
 * page must show them live, move the highlighted state in order, show the OS sub-machine's end, replay a
 * finished capture, and never carry a secret of the inventory, in the page or on its WebSocket.
 *
 * The inventory is made to hold secrets on purpose: every host's key is inline (`privateKey`, encrypted)
 * and its passphrase comes from an environment variable.
 */
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Browser, chromium, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DEMO_COMPUTERS } from '../../src/cli/commands/demo.js';
import { createInspector, type Inspector } from '../../src/inspector/index.js';
import type { InspectorServer } from '../../src/inspector/server.js';
import { startLab } from '../../src/lab/index.js';
import type { Lab } from '../../src/lab/types.js';
import { type CaptureRunResult, createRunner, type Runner } from '../../src/runner/runner.js';
import { openSqliteStore, type SqliteCaptureStore } from '../../src/store/index.js';

/** Debian's package `chromium`; `VCL_CHROMIUM` names another build of Chromium (never a download). */
const CHROMIUM = process.env.VCL_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = new URL('../../.tmp/inspector/', import.meta.url).pathname;
const PASSPHRASE_ENV = 'VCL_INSPECTOR_TEST_PASSPHRASE';

const haveChromium = existsSync(CHROMIUM);
if (!haveChromium) {
  const message = `the inspector's browser tests need Chromium at ${CHROMIUM}: apt-get install chromium (Debian package "chromium")`;
  if (process.env.CI === 'true') throw new Error(message);
  console.warn(`\n*** SKIPPING the inspector's browser tests: ${message} ***\n`);
}

let dir: string;
let lab: Lab;
let store: SqliteCaptureStore;
let inspector: Inspector;
let server: InspectorServer;
let runner: Runner;
let browser: Browser;
let page: Page;
let secrets: string[];
let fingerprints: string[];
/** Every WebSocket frame and every API body the page received or sent. */
const traffic: string[] = [];
const ids = new Map<string, string>();
const results = new Map<string, CaptureRunResult>();

/** The node ids a recorded trail should highlight: state.entered values, then the final state. */
async function recordedTrail(captureId: string): Promise<string[]> {
  const detail = await store.getCapture(captureId);
  const trail: string[] = [];
  for (const e of detail?.events ?? []) {
    if (e.type === 'state.entered' && e.stateValue) trail.push(nodeIdOf(e.stateValue));
    if (e.type === 'capture.completed') trail.push('completed');
  }
  return trail;
}

function nodeIdOf(value: unknown): string {
  if (typeof value === 'string') return value;
  const [k, v] = Object.entries(value as Record<string, unknown>)[0] ?? [];
  return v === undefined ? String(k) : `${k}__${nodeIdOf(v)}`;
}

/** Consecutive duplicates removed. */
const squeeze = (xs: string[]) => xs.filter((x, i) => x !== xs[i - 1]);

/** `expected` appear in `seen` in that order (others may come between). */
function inOrder(seen: string[], expected: string[]): boolean {
  let i = 0;
  for (const s of seen) if (s === expected[i]) i += 1;
  return i === expected.length;
}

/**
 * Runs in the page (plain JS: the project's TypeScript has no DOM types): records every node of the
 * capture diagram that becomes highlighted, in order, from DOM mutations. A batch may hold several changes
 * of one node: the class each change gave is the next change's old class, or the current one.
 */
const RECORD_HIGHLIGHTS = `
  window.__seen = [];
  new MutationObserver((records) => {
    records.forEach((r, i) => {
      const target = r.target;
      if (!target.closest || !target.closest('#diagram') || !target.matches('g.node')) return;
      const next = records.slice(i + 1).find((x) => x.target === target);
      const now = next ? next.oldValue : target.getAttribute('class');
      const was = (r.oldValue || '').split(' ').includes('active');
      if (!was && (now || '').split(' ').includes('active'))
        window.__seen.push(target.querySelector('title').textContent);
    });
  }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ['class'], attributeOldValue: true });
`;

const LIBVIRT_ORDER = [
  'capturing__reserve',
  'capturing__pre_capture',
  'capturing__wait_power_off',
  'capturing__copy_image',
  'capturing__verify_image',
  'completed',
];

describe.skipIf(!haveChromium)('the inspector in Chromium', () => {
  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), 'vcl-inspector-'));
    mkdirSync(ARTIFACTS, { recursive: true });
    lab = await startLab({
      powerDelayMs: 300,
      diskBytes: 32 * 1024 * 1024,
      captureChunkMs: 40,
      captureChunkBytes: 2 * 1024 * 1024,
    });
    // The lab's key, encrypted with a passphrase that only the environment knows, inline in the inventory.
    const passphrase = `inspector-secret-${Math.random().toString(36).slice(2)}`;
    process.env[PASSPHRASE_ENV] = passphrase;
    const keyFile = join(dir, 'id_ed25519');
    copyFileSync(lab.privateKeyPath, keyFile);
    execFileSync('ssh-keygen', ['-q', '-p', '-a', '2', '-P', '', '-N', passphrase, '-f', keyFile], {
      stdio: 'ignore',
    });
    const encryptedKey = readFileSync(keyFile, 'utf8');
    const plainKey = readFileSync(lab.privateKeyPath, 'utf8');
    const inventory = structuredClone(lab.inventory) as unknown as {
      hosts: Record<string, Record<string, unknown>>;
    };
    for (const host of Object.values(inventory.hosts)) {
      delete host.privateKeyPath;
      host.privateKey = encryptedKey;
      host.passphraseEnv = PASSPHRASE_ENV;
    }
    const bodyLines = (key: string) =>
      key.split('\n').filter((l) => l.length >= 20 && !l.startsWith('-----'));
    secrets = [
      passphrase,
      encryptedKey.trim(),
      plainKey.trim(),
      ...bodyLines(encryptedKey),
      ...bodyLines(plainKey),
    ];
    fingerprints = Object.values(lab.inventory.hosts).flatMap((h) => h.hostKey.fingerprints ?? []);
    expect(fingerprints.length).toBeGreaterThan(0);

    store = openSqliteStore(join(dir, 'captures.sqlite'));
    inspector = createInspector({ store, inventory });
    runner = createRunner({ inventory, store, inspect: inspector.inspect, pollMs: 50 });
    inspector.attach(runner);
    server = await inspector.listen({ port: 0 });

    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--no-first-run',
      ],
    });
    page = await browser.newPage({ viewport: { width: 1600, height: 1050 } });
    page.on('websocket', (ws) => {
      ws.on('framereceived', (f) => traffic.push(String(f.payload)));
      ws.on('framesent', (f) => traffic.push(String(f.payload)));
    });
    page.on('response', async (r) => {
      if (new URL(r.url()).pathname.startsWith('/api/')) traffic.push(await r.text().catch(() => ''));
    });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await runner?.close();
    await inspector?.close();
    await store?.close();
    await lab?.stop();
    delete process.env[PASSPHRASE_ENV];
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('shows the captures live: the highlighted state moves in order, the OS sub-machine ends', async () => {
    // Follow the libvirt computer: the page selects its capture as soon as it is queued.
    await page.goto(`${server.url}#computer=lv-linux-1`);
    await page.waitForSelector('#conn[data-state="open"]');
    // Record every node of the capture diagram that becomes highlighted, in order, from DOM mutations
    // (a batch may hold several changes of one node: the new class of each is the next one's old class).
    await page.evaluate(RECORD_HIGHLIGHTS);

    // Best effort (the copy is short): a picture of the capture in the middle of its copy.
    const midCopy = page
      .waitForSelector('#diagram[data-active="capturing__copy_image"]', { timeout: 30_000 })
      .then(() => page.waitForSelector('#progress:not([hidden])', { timeout: 2_000 }))
      .then(() => page.screenshot({ path: join(ARTIFACTS, 'inspector-copy.png'), fullPage: true }))
      .catch(() => undefined);
    const handles = await Promise.all(
      DEMO_COMPUTERS.map((computer) =>
        runner.capture({
          computer,
          image: { osName: lab.computer(computer).os, prettyName: 'Inspector base', owner: 'test' },
        }),
      ),
    );
    for (const h of handles) ids.set(h.computer, h.id);
    const lv = ids.get('lv-linux-1') as string;

    // The capture appears, live, with its computer and provisioner.
    const row = page.locator(`#captures tr[data-capture-id="${lv}"]`);
    await row.waitFor();
    await expect.poll(() => row.textContent()).toMatch(/lv-linux-1[\s\S]*libvirt/);

    for (const h of handles) results.set(h.computer, await h.result);
    await midCopy;
    for (const [computer, r] of results) expect(r.status, computer).toBe('completed');
    await page.waitForSelector(`#captures tr[data-capture-id="${lv}"][data-status="completed"]`);
    await expect.poll(() => page.locator('#captures tbody tr').count()).toBe(DEMO_COMPUTERS.length);
    for (const computer of DEMO_COMPUTERS)
      await expect(page.locator('#captures').textContent()).resolves.toContain(computer);

    // The highlight moved through exactly the recorded states, which include the libvirt milestones.
    const seen = squeeze((await page.evaluate('window.__seen')) as string[]);
    const trail = await recordedTrail(lv);
    expect(inOrder(seen, LIBVIRT_ORDER), `seen: ${seen.join(' ')}`).toBe(true);
    expect(seen).toEqual(trail);
    await expect(page.locator('#diagram').getAttribute('data-active')).resolves.toBe('completed');
    await expect(page.locator('#machine-state').textContent()).resolves.toBe('completed');

    // The OS sub-machine: its diagram ends highlighted on `done`, and the log says so.
    await expect(page.locator('#os-diagram').getAttribute('data-active')).resolves.toBe('done');
    await expect
      .poll(() => page.locator('#log li[data-source="os"]').last().textContent())
      .toMatch(/ended in done \(done\)/);
    await expect(page.locator('#log li[data-kind="finished"]').textContent()).resolves.toContain('completed');
    // Copy progress was shown, and the context (redacted) with the capture's facts.
    await expect(page.locator('#progress .text').textContent()).resolves.toMatch(
      /copy_image: 32\.0 MiB of 32\.0 MiB/,
    );
    await expect(page.locator('#context-capture').textContent()).resolves.toContain(
      '"computer": "lv-linux-1"',
    );
    await page.screenshot({ path: join(ARTIFACTS, 'inspector-live.png'), fullPage: true });
  });

  it('replays a finished capture through the same sequence', async () => {
    const lv = ids.get('lv-linux-1') as string;
    // A fresh page that opens the capture by its address, as a link would.
    await page.goto(`${server.url}#capture=${lv}`);
    await page.reload();
    await page.waitForSelector('#conn[data-state="open"]');
    await page.waitForSelector('#mode-replay:not([disabled])');
    await page.click('#mode-replay');
    await page.click('#replay-first');
    const trail = await recordedTrail(lv);
    const seen: string[] = [];
    for (let i = 0; i < trail.length; i++) {
      await expect(page.locator('#replay-position').getAttribute('data-index')).resolves.toBe(String(i));
      seen.push((await page.locator('#diagram').getAttribute('data-active')) ?? '');
      const active = await page.locator('#diagram g.node.active title').allTextContents();
      expect(active).toEqual([seen[i]]);
      await page.click('#replay-next');
    }
    expect(seen).toEqual(trail);
    expect(inOrder(seen, LIBVIRT_ORDER)).toBe(true);
    await expect(page.locator('#log li.current').textContent()).resolves.toContain('entered completed');
    await page.click('#replay-prev');
    await page.click('#replay-prev');
    await page.screenshot({ path: join(ARTIFACTS, 'inspector-replay.png'), fullPage: true });
  });

  it('never shows or sends a secret of the inventory, nor the inventory itself', async () => {
    // Open every capture, so each one's context and log went through the page.
    await page.click('#mode-live');
    for (const id of ids.values()) {
      await page.click(`#captures tr[data-capture-id="${id}"]`);
      await page.locator('#subtitle', { hasText: id }).waitFor();
      await page.waitForSelector('#log li[data-kind="finished"]');
      // Every provisioner's diagram ends on `completed`, every OS sub-machine's on `done`.
      await page.waitForSelector('#diagram[data-active="completed"] g.node.active');
      await page.waitForSelector('#os-diagram[data-active="done"] g.node.active');
    }
    const html = await page.content();
    const text = (await page.locator('body').textContent()) ?? '';
    expect(traffic.some((t) => t.includes('"t":"os"'))).toBe(true);
    expect(traffic.some((t) => t.includes('"t":"context"'))).toBe(true);
    for (const s of secrets) {
      const where = [html, text, ...traffic].findIndex((t) => t.includes(s));
      expect(where, `a secret (${s.slice(0, 12)}…) reached the page or its traffic`).toBe(-1);
    }
    for (const f of fingerprints) expect(traffic.join('\n').includes(f)).toBe(false);
    expect(traffic.join('\n')).not.toMatch(/PRIVATE KEY|passphraseEnv|privateKey/);
  });
});
