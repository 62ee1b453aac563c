/**
 * Scale benchmark (issue 5): N concurrent captures through `createRunner` against the built-in lab, with
 * short simulated durations, under two sets of concurrency limits:
 *
 * - `default`: the inventory's defaults (per hypervisor host `maxCaptures` 5 and `maxCopies` 2,
 *   `defaults.maxConcurrentCaptures` 100): 3 hypervisor hosts run at most 15 captures at once.
 * - `raised`: every host's `maxCaptures` and `maxCopies` and `defaults.maxConcurrentCaptures` set to
 *   N + the number of kinds (the baseline's computers), so all N run at once. The SSH transport's
 *   `maxChannels` stays at its default (8 per host) in both.
 *
 * Each (limits, N) runs in a fresh child process (`--child`), so that CPU time and resident memory of one
 * run do not leak into the next. The child spawns the lab in its own process (`spawnLab`), so the lab's
 * CPU and memory are not the runner's; opens a SQLite store in a temp dir; creates one runner; then
 *
 * 1. baseline: one capture of each computer kind, one at a time: its wall time T_k and the time it spent
 *    in copy steps C_k (a copy waits for the per-host copy limit);
 * 2. the batch: N captures on N distinct computers (the lab has the kinds in equal numbers), all requested
 *    at once in the lab's order, kind by kind (so host by host). Measured over the batch: wall time,
 *    `process.cpuUsage()` of this process (runner, transport, store, GC), the lab process's CPU, RSS and
 *    the in-flight count (`runner.active()`, queued + running) every `--sample-ms`. Memory per in-flight
 *    capture: (largest RSS while the in-flight count is at its peak - RSS before the batch) / that count.
 *
 * Ideal wall time of the batch (the longest single capture's critical path under the limits), with T_k,
 * C_k the baseline wall time and copy time of kind k, per hypervisor host h with n_h captures, capture
 * slots s_h = min(maxCaptures_h, G), copy slots K_h = maxCopies_h, and G = maxConcurrentCaptures:
 *
 *   waves_h  = max( ceil(n_h / s_h) * mean_h(T), max_h(T) )
 *   copies_h = min_h(T - C) + ceil(n_h / K_h) * mean_h(C)
 *   ideal    = max( max_k T_k,  max_h max(waves_h, copies_h),  ceil(N / G) * mean(T) )
 *
 * (mean_h, max_h, min_h over the host's captures). With one kind per host, waves_h is ceil(n_h / s_h) * T:
 * the captures pass through the host's slots in waves, each as long as one capture alone. copies_h is the
 * host's copies through its copy slots; the last term, waves through the global limit. With limits that
 * let every capture run at once, the ideal is the longest single capture.
 *
 * Usage: npm run bench:scale [-- --n 10,100,500 --limits default,raised --kinds all --power-delay-ms 400
 *        --sysprep-ms <power delay> --capture-chunk-ms 50 --capture-chunk-bytes 65536 --disk-bytes 262144
 *        --poll-ms 100 --sample-ms 50 --cpu-prof <dir> --gc-at-peak --node-flags="<node flags>" --json]
 * `--cpu-prof` writes a CPU profile of each batch (not of the setup) into <dir>; `--gc-at-peak` forces a
 * full GC halfway through the shortest capture and prints the live heap per in-flight capture (a
 * diagnostic: it pauses the runner); `--node-flags` runs the measured process with those node/V8 flags
 * (`--node-flags=--optimize-for-size`). Results: docs/performance-scale.md.
 * Exit code 1 when a target at the largest N misses (or a capture does not complete).
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { availableParallelism, cpus, loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { getHeapStatistics } from 'node:v8';
import ssh2 from 'ssh2';
import type { Inventory } from '../src/inventory/schema.js';
import { COMPUTER_KINDS, type ComputerKind, spawnLab } from '../src/lab/index.js';
import { createRunner, type Runner } from '../src/runner/runner.js';
import { SshPool } from '../src/ssh/index.js';
import { openSqliteStore } from '../src/store/index.js';

const KiB = 1024;
const TARGETS = { wallRatio: 1.2, cpuMsPerCapture: 5, kibPerInFlight: 200 } as const;
/** Steps that run under the per-host copy limit (as in src/runner/runner.ts). */
const COPY_STEPS = new Set(['copy_image', 'clone_disk', 'copy_to_repository', 'watch_upload']);

const { values: args } = parseArgs({
  options: {
    n: { type: 'string', default: '10,100,500' },
    limits: { type: 'string', default: 'default,raised' },
    kinds: { type: 'string', default: 'all' },
    'power-delay-ms': { type: 'string', default: '400' },
    'sysprep-ms': { type: 'string' },
    'capture-chunk-ms': { type: 'string', default: '50' },
    'capture-chunk-bytes': { type: 'string', default: String(64 * KiB) },
    'disk-bytes': { type: 'string', default: String(256 * KiB) },
    'poll-ms': { type: 'string', default: '100' },
    'sample-ms': { type: 'string', default: '50' },
    'cpu-prof': { type: 'string' },
    json: { type: 'boolean', default: false },
    'gc-at-peak': { type: 'boolean', default: false },
    'node-flags': { type: 'string', default: '' },
    child: { type: 'boolean', default: false },
    settings: { type: 'string' },
  },
});

function positive(name: string, text: string | undefined): number {
  const n = Number(text);
  if (!Number.isFinite(n) || n <= 0) throw new Error(`--${name} must be a positive number, got ${text}`);
  return n;
}

type Limits = 'default' | 'raised';

interface Settings {
  limits: Limits;
  n: number;
  kinds: ComputerKind[];
  powerDelayMs: number;
  sysprepMs: number;
  captureChunkMs: number;
  captureChunkBytes: number;
  diskBytes: number;
  pollMs: number;
  sampleMs: number;
  cpuProfDir: string | undefined;
  gcAtPeak: boolean;
}

interface Baseline {
  kind: ComputerKind;
  host: string;
  wallMs: number;
  copyMs: number;
}

interface HostPlan {
  host: string;
  captures: number;
  captureSlots: number;
  copySlots: number;
  wavesMs: number;
  copiesMs: number;
}

interface RunResult {
  settings: Settings;
  limitsUsed: { maxCaptures: number; maxCopies: number; maxConcurrentCaptures: number; maxChannels: number };
  baseline: Baseline[];
  hosts: HostPlan[];
  idealMs: number;
  wallMs: number;
  completed: number;
  /** Commands and copies the drivers asked of the transport during the batch. */
  execs: number;
  copies: number;
  /** "Does sshd answer?" probes (`SshPool.answers`: TCP and the server's identification, no handshake). */
  probes: number;
  /** SSH connections opened during the batch: attempts (refused ones included) and completed handshakes. */
  connectionsAttempted: number;
  connectionsReady: number;
  failed: { computer: string; status: string; code: string; step: string; message: string }[];
  cpuUserMs: number;
  cpuSystemMs: number;
  labCpuMs: number | undefined;
  rssBeforeBytes: number;
  heapBeforeBytes: number;
  peakInFlight: number;
  peakRunning: number;
  /** Largest RSS while the in-flight count was at its peak. */
  rssAtPeakBytes: number;
  /** Largest RSS over the whole batch. */
  rssMaxBytes: number;
  heapAtPeakBytes: number;
  /** V8 heap reserved (committed), external memory (Buffers) and V8's own malloc, at the peak. */
  heapCommittedAtPeakBytes: number;
  externalAtPeakBytes: number;
  mallocedAtPeakBytes: number;
  eventLoopDelayP99Ms: number;
  eventLoopDelayMaxMs: number;
  /** RSS samples taken and the time they took (part of the runner CPU figure). */
  samples: number;
  samplingMs: number;
  liveHeapAtPeak?: { bytes: number; inFlight: number };
}

/** SSH connections the runner's transport attempted and completed (handshake done). */
const connections = { attempted: 0, ready: 0 };
function countConnections(): void {
  const proto = ssh2.Client.prototype;
  const connect = proto.connect;
  proto.connect = function (this: ssh2.Client, config: ssh2.ConnectConfig) {
    connections.attempted++;
    this.once('ready', () => {
      connections.ready++;
    });
    return connect.call(this, config);
  };
}

/**
 * Resident set size of this process. `process.memoryUsage.rss()` reads /proc/self/stat, which under load
 * (V8's GC threads mapping and unmapping) took 0.2-1.5 ms per call here; /proc/self/statm read through
 * a kept-open descriptor costs a fraction of that. Elsewhere than Linux, the former.
 */
function rssReader(): () => number {
  let fd: number;
  try {
    fd = openSync('/proc/self/statm', 'r');
  } catch {
    return () => process.memoryUsage.rss();
  }
  const buf = Buffer.alloc(128);
  const pages = () => Number(buf.toString('latin1', 0, readSync(fd, buf, 0, buf.length, 0)).split(' ')[1]);
  const pageBytes = 2 ** Math.round(Math.log2(process.memoryUsage.rss() / pages()));
  return () => pages() * pageBytes;
}

/** CPU time (user + system) of another process, from /proc (Linux); undefined elsewhere. */
function procCpuMs(pid: number | undefined): number | undefined {
  if (pid === undefined) return undefined;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[11]) + Number(fields[12]);
    return (ticks * 1000) / 100; // USER_HZ is 100 on Linux
  } catch {
    return undefined;
  }
}

function gc(): void {
  const g = (globalThis as { gc?: () => void }).gc;
  if (g) {
    g();
    g();
  }
}

function kindOf(inventory: Inventory, computer: string): ComputerKind {
  const c = inventory.computers[computer];
  if (!c) throw new Error(`no computer ${computer}`);
  return `${c.provisioner.type}-${c.os}` as ComputerKind;
}

/** The computers of each kind, in the lab's numbering order. */
function computersByKind(inventory: Inventory): Map<ComputerKind, string[]> {
  const out = new Map<ComputerKind, string[]>();
  for (const name of Object.keys(inventory.computers)) {
    const kind = kindOf(inventory, name);
    const list = out.get(kind) ?? [];
    list.push(name);
    out.set(kind, list);
  }
  const num = (s: string) => Number(s.slice(s.lastIndexOf('-') + 1));
  for (const list of out.values()) list.sort((a, b) => num(a) - num(b));
  return out;
}

/**
 * The ideal wall time of a batch: per hypervisor host h, its captures in waves through its capture slots
 * s_h = min(maxCaptures_h, G), each wave as long as the mean of the host's captures (homogeneous: exactly
 * ceil(n_h / s_h) * T), and its copies through its copy slots; globally, waves through G; never shorter
 * than the longest single capture.
 */
function idealOf(
  batch: { host: string; kind: ComputerKind; maxCaptures: number; maxCopies: number }[],
  baseline: Baseline[],
  G: number,
): { hosts: HostPlan[]; idealMs: number } {
  const T = (k: ComputerKind) => baseline.find((b) => b.kind === k)?.wallMs ?? Number.NaN;
  const C = (k: ComputerKind) => baseline.find((b) => b.kind === k)?.copyMs ?? Number.NaN;
  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  const longest = Math.max(...batch.map((c) => T(c.kind)));
  const hosts = [...new Set(batch.map((c) => c.host))].map((host): HostPlan => {
    const on = batch.filter((c) => c.host === host);
    const captureSlots = Math.min(on[0]?.maxCaptures ?? 5, G);
    const copySlots = on[0]?.maxCopies ?? 2;
    const kinds = [...new Set(on.map((c) => c.kind))];
    return {
      host,
      captures: on.length,
      captureSlots,
      copySlots,
      wavesMs: Math.max(
        Math.ceil(on.length / captureSlots) * mean(on.map((c) => T(c.kind))),
        ...kinds.map(T),
      ),
      copiesMs:
        Math.min(...kinds.map((k) => T(k) - C(k))) +
        Math.ceil(on.length / copySlots) * mean(on.map((c) => C(c.kind))),
    };
  });
  const idealMs = Math.max(
    longest,
    ...hosts.map((h) => Math.max(h.wavesMs, h.copiesMs)),
    Math.ceil(batch.length / G) * mean(batch.map((c) => T(c.kind))),
  );
  return { hosts, idealMs };
}

/** One capture, resolved with its wall time and the time it spent in copy steps. */
async function timedCapture(
  runner: Runner,
  computer: string,
  label: string,
): Promise<{ wallMs: number; copyMs: number }> {
  let copyMs = 0;
  let copyStarted: number | undefined;
  let id = '';
  const off = runner.on((e) => {
    if (e.type !== 'state' || e.captureId !== id) return;
    const inCopy = COPY_STEPS.has(e.step);
    if (inCopy && copyStarted === undefined) copyStarted = e.atMs;
    else if (!inCopy && copyStarted !== undefined) {
      copyMs += e.atMs - copyStarted;
      copyStarted = undefined;
    }
  });
  const started = performance.now();
  try {
    const handle = await runner.capture({
      computer,
      image: { osName: 'linux', prettyName: `Scale ${label} ${computer}`, owner: 'bench' },
    });
    id = handle.id;
    const result = await handle.result;
    if (result.status !== 'completed')
      throw new Error(`baseline capture of ${computer} ${result.status}: ${JSON.stringify(result.error)}`);
    return { wallMs: performance.now() - started, copyMs };
  } finally {
    off();
  }
}

async function runChild(s: Settings): Promise<RunResult> {
  countConnections();
  // Computers: N for the batch plus one per kind for the baseline, the kinds round-robin.
  const perKind = new Map<ComputerKind, number>(s.kinds.map((k) => [k, 1]));
  for (let i = 0; i < s.n; i++) {
    const k = s.kinds[i % s.kinds.length] as ComputerKind;
    perKind.set(k, (perKind.get(k) ?? 0) + 1);
  }
  const lab = await spawnLab({
    computers: Object.fromEntries(perKind),
    powerDelayMs: s.powerDelayMs,
    sysprepMs: s.sysprepMs,
    captureChunkMs: s.captureChunkMs,
    captureChunkBytes: s.captureChunkBytes,
    diskBytes: s.diskBytes,
  });
  const dir = mkdtempSync(join(tmpdir(), 'vcl-bench-scale-'));
  const store = openSqliteStore(join(dir, 'store.sqlite'));
  let runner: Runner | undefined;
  let closeRemote: (() => Promise<void>) | undefined;
  try {
    const inventory: Inventory = structuredClone(lab.inventory);
    const limit = s.n + s.kinds.length;
    if (s.limits === 'raised') {
      for (const h of Object.values(inventory.hosts)) {
        h.maxCaptures = limit;
        h.maxCopies = limit;
      }
      inventory.defaults.maxConcurrentCaptures = limit;
    }
    // The runner's own transport, wrapped to count what the drivers ask of it.
    const pool = new SshPool();
    const counts = { exec: 0, copy: 0, probe: 0 };
    const remote = {
      exec: (...a: Parameters<SshPool['exec']>) => {
        counts.exec++;
        return pool.exec(...a);
      },
      copy: (...a: Parameters<SshPool['copy']>) => {
        counts.copy++;
        return pool.copy(...a);
      },
      answers: (...a: Parameters<SshPool['answers']>) => {
        counts.probe++;
        return pool.answers(...a);
      },
      close: () => pool.close(),
    };
    runner = createRunner({ inventory, store, pollMs: s.pollMs, remote });
    closeRemote = () => pool.close();
    const byKind = computersByKind(inventory);

    // 1. Baseline: the last computer of each kind, one capture at a time.
    const baseline: Baseline[] = [];
    for (const kind of s.kinds) {
      const computer = byKind.get(kind)?.pop();
      if (!computer) throw new Error(`the lab has no ${kind} computer`);
      const t = await timedCapture(runner, computer, 'baseline');
      const host = inventory.computers[computer]?.provisioner.host ?? '';
      baseline.push({ kind, host, ...t });
    }

    // The ideal, from the baseline and the limits.
    const batch = [...byKind.values()].flat();
    const G = inventory.defaults.maxConcurrentCaptures;
    const { hosts, idealMs } = idealOf(
      batch.map((c) => {
        const computer = inventory.computers[c];
        if (!computer) throw new Error(`no computer ${c}`);
        const h = inventory.hosts[computer.provisioner.host];
        return {
          host: computer.provisioner.host,
          kind: kindOf(inventory, c),
          maxCaptures: h?.maxCaptures ?? 5,
          maxCopies: h?.maxCopies ?? 2,
        };
      }),
      baseline,
      G,
    );

    // 2. The batch.
    gc();
    await new Promise((r) => setTimeout(r, 200));
    gc();
    const rssNow = rssReader();
    const rssBeforeBytes = rssNow();
    const heapBeforeBytes = getHeapStatistics().used_heap_size;
    let peakInFlight = 0;
    let peakRunning = 0;
    let rssAtPeakBytes = 0;
    let heapAtPeakBytes = 0;
    let heapAtPeak = getHeapStatistics();
    let rssMaxBytes = rssBeforeBytes;
    const r = runner;
    let samplingNs = 0n;
    let samples = 0;
    const sample = () => {
      const started = process.hrtime.bigint();
      samples++;
      const active = r.active();
      const inFlight = active.length;
      const running = active.filter((h) => h.actor !== undefined).length;
      const rss = rssNow();
      rssMaxBytes = Math.max(rssMaxBytes, rss);
      peakRunning = Math.max(peakRunning, running);
      if (inFlight > peakInFlight) {
        peakInFlight = inFlight;
        rssAtPeakBytes = rss;
        heapAtPeak = getHeapStatistics();
        heapAtPeakBytes = heapAtPeak.used_heap_size;
      } else if (inFlight === peakInFlight && rss > rssAtPeakBytes) {
        rssAtPeakBytes = rss;
        heapAtPeak = getHeapStatistics();
        heapAtPeakBytes = heapAtPeak.used_heap_size;
      }
      samplingNs += process.hrtime.bigint() - started;
    };
    const sampler = setInterval(sample, s.sampleMs);
    const loop = monitorEventLoopDelay({ resolution: 10 });
    loop.enable();
    let profiler: Session | undefined;
    if (s.cpuProfDir) {
      profiler = new Session();
      profiler.connect();
      await profiler.post('Profiler.enable');
      await profiler.post('Profiler.setSamplingInterval', { interval: 500 });
      await profiler.post('Profiler.start');
    }
    const counts0 = { ...counts };
    const connections0 = { ...connections };
    const labCpu0 = procCpuMs(lab.process.pid);
    const cpu0 = process.cpuUsage();
    const t0 = performance.now();
    const handles = await Promise.all(
      batch.map(async (computer) => ({
        computer,
        handle: await r.capture({
          computer,
          image: { osName: 'linux', prettyName: `Scale ${computer}`, owner: 'bench' },
        }),
      })),
    );
    // Diagnostic (--gc-at-peak): live heap after a full collection, with every capture requested and
    // under way (half the shortest baseline capture after the start), before the first one ends.
    let liveHeapAtPeak: { bytes: number; inFlight: number } | undefined;
    if (s.gcAtPeak) {
      const at = t0 + Math.min(...baseline.map((b) => b.wallMs)) / 2;
      await new Promise((resolve) => setTimeout(resolve, Math.max(0, at - performance.now())));
      gc();
      liveHeapAtPeak = { bytes: getHeapStatistics().used_heap_size, inFlight: r.active().length };
    }
    const results = await Promise.all(
      handles.map(async ({ computer, handle }) => ({ computer, result: await handle.result })),
    );
    const wallMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    const labCpu1 = procCpuMs(lab.process.pid);
    clearInterval(sampler);
    loop.disable();
    if (profiler && s.cpuProfDir) {
      const { profile } = await profiler.post('Profiler.stop');
      writeFileSync(join(s.cpuProfDir, `scale-${s.limits}-${s.n}.cpuprofile`), JSON.stringify(profile));
      profiler.disconnect();
    }

    const failed = results
      .filter((x) => x.result.status !== 'completed')
      .map((x) => {
        const e = x.result.status === 'completed' ? undefined : x.result.error;
        return {
          computer: x.computer,
          status: x.result.status,
          code: e?.code ?? '',
          step: e?.step ?? '',
          message: e?.message ?? '',
        };
      });
    const anyHost = Object.values(inventory.hosts)[0];
    return {
      settings: s,
      limitsUsed: {
        maxCaptures: anyHost?.maxCaptures ?? 5,
        maxCopies: anyHost?.maxCopies ?? 2,
        maxConcurrentCaptures: G,
        maxChannels: anyHost?.maxChannels ?? 8,
      },
      baseline,
      hosts,
      idealMs,
      wallMs,
      completed: results.length - failed.length,
      execs: counts.exec - counts0.exec,
      copies: counts.copy - counts0.copy,
      probes: counts.probe - counts0.probe,
      connectionsAttempted: connections.attempted - connections0.attempted,
      connectionsReady: connections.ready - connections0.ready,
      failed,
      cpuUserMs: cpu.user / 1000,
      cpuSystemMs: cpu.system / 1000,
      labCpuMs: labCpu0 === undefined || labCpu1 === undefined ? undefined : labCpu1 - labCpu0,
      rssBeforeBytes,
      heapBeforeBytes,
      peakInFlight,
      peakRunning,
      rssAtPeakBytes,
      rssMaxBytes,
      heapAtPeakBytes,
      heapCommittedAtPeakBytes: heapAtPeak.total_heap_size,
      externalAtPeakBytes: heapAtPeak.external_memory,
      mallocedAtPeakBytes: heapAtPeak.malloced_memory,
      eventLoopDelayP99Ms: loop.percentile(99) / 1e6,
      eventLoopDelayMaxMs: loop.max / 1e6,
      samples,
      samplingMs: Number(samplingNs) / 1e6,
      ...(liveHeapAtPeak ? { liveHeapAtPeak } : {}),
    };
  } finally {
    await runner?.close();
    await closeRemote?.();
    await store.close();
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Runs one (limits, N) in a fresh node process and returns what it printed. */
function runInChild(s: Settings): Promise<RunResult> {
  const self = fileURLToPath(import.meta.url);
  const extra = (args['node-flags'] ?? '').split(' ').filter((f) => f !== '');
  const nodeArgs = ['--expose-gc', ...extra, '--import', 'tsx'];
  const child = spawn(process.execPath, [...nodeArgs, self, '--child', '--settings', JSON.stringify(s)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => {
    out += d;
  });
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('exit', (code) => {
      const line = out.trim().split('\n').pop() ?? '';
      if (code !== 0 || !line.startsWith('{'))
        reject(new Error(`the ${s.limits} N=${s.n} run exited ${code}`));
      else resolve(JSON.parse(line) as RunResult);
    });
  });
}

const ms = (x: number) => (x >= 10_000 ? `${(x / 1000).toFixed(1)} s` : `${Math.round(x)} ms`);
const verdict = (ok: boolean) => (ok ? 'PASS' : 'FAIL');

function report(r: RunResult, largest: boolean): boolean {
  const n = r.settings.n;
  const ratio = r.wallMs / r.idealMs;
  const cpuPer = (r.cpuUserMs + r.cpuSystemMs) / n;
  const kibAtPeak = (r.rssAtPeakBytes - r.rssBeforeBytes) / KiB / r.peakInFlight;
  const kibMax = (r.rssMaxBytes - r.rssBeforeBytes) / KiB / r.peakInFlight;
  const l = r.limitsUsed;
  console.log(
    `\n== ${r.settings.limits} limits, N = ${n} (per host maxCaptures ${l.maxCaptures}, maxCopies ${l.maxCopies}; ` +
      `maxConcurrentCaptures ${l.maxConcurrentCaptures}; SSH maxChannels ${l.maxChannels})`,
  );
  console.log(
    `  baseline (one at a time): ${r.baseline.map((b) => `${b.kind} ${ms(b.wallMs)} (copy ${ms(b.copyMs)})`).join(', ')}`,
  );
  for (const h of r.hosts)
    console.log(
      `  ${h.host}: ${h.captures} captures, ${h.captureSlots} capture / ${h.copySlots} copy slots: ` +
        `waves ${ms(h.wavesMs)}, copies ${ms(h.copiesMs)}`,
    );
  console.log(
    `  completed ${r.completed}/${n}; ${(r.execs / n).toFixed(1)} commands and ${(r.copies / n).toFixed(1)} streamed copies per capture; ${(r.probes / n).toFixed(1)} sshd probes per capture; ` +
      `${(r.connectionsReady / n).toFixed(1)} SSH handshakes (${(r.connectionsAttempted / n).toFixed(1)} attempts) per capture`,
  );
  for (const f of r.failed.slice(0, 5))
    console.log(`    ${f.computer}: ${f.status} ${f.code} at ${f.step}: ${f.message.slice(0, 200)}`);
  console.log(
    `  wall ${ms(r.wallMs)}, ideal ${ms(r.idealMs)}, wall/ideal ${ratio.toFixed(2)}` +
      (largest ? `  [target <= ${TARGETS.wallRatio}: ${verdict(ratio <= TARGETS.wallRatio)}]` : ''),
  );
  console.log(
    `  runner CPU ${ms(r.cpuUserMs + r.cpuSystemMs)} (user ${ms(r.cpuUserMs)}, sys ${ms(r.cpuSystemMs)}) = ` +
      `${cpuPer.toFixed(2)} ms per capture` +
      (largest
        ? `  [target < ${TARGETS.cpuMsPerCapture}: ${verdict(cpuPer < TARGETS.cpuMsPerCapture)}]`
        : '') +
      `; runner busy ${(((r.cpuUserMs + r.cpuSystemMs) / r.wallMs) * 100).toFixed(0)} % of wall` +
      (r.labCpuMs === undefined ? '' : `; lab process CPU ${ms(r.labCpuMs)}`),
  );
  console.log(
    `  in flight at peak ${r.peakInFlight} (running ${r.peakRunning}); RSS ${(r.rssBeforeBytes / KiB / KiB).toFixed(0)} MiB before, ` +
      `+${((r.rssAtPeakBytes - r.rssBeforeBytes) / KiB / KiB).toFixed(1)} MiB at peak = ${kibAtPeak.toFixed(0)} KiB per in-flight capture` +
      (largest
        ? `  [target < ${TARGETS.kibPerInFlight}: ${verdict(kibAtPeak < TARGETS.kibPerInFlight)}]`
        : ''),
  );
  console.log(
    `  (max RSS over the batch +${((r.rssMaxBytes - r.rssBeforeBytes) / KiB / KiB).toFixed(1)} MiB = ${kibMax.toFixed(0)} KiB per peak in-flight; ` +
      `heap used ${(r.heapBeforeBytes / KiB / KiB).toFixed(1)} MiB before, ${(r.heapAtPeakBytes / KiB / KiB).toFixed(1)} MiB at peak ` +
      `(V8 heap committed ${(r.heapCommittedAtPeakBytes / KiB / KiB).toFixed(1)} MiB, external ${(r.externalAtPeakBytes / KiB / KiB).toFixed(1)} MiB); event loop delay p99 ${r.eventLoopDelayP99Ms.toFixed(1)} ms, max ${r.eventLoopDelayMaxMs.toFixed(0)} ms; ` +
      `${r.samples} samples took ${r.samplingMs.toFixed(0)} ms)`,
  );
  if (r.liveHeapAtPeak) {
    const live = r.liveHeapAtPeak;
    console.log(
      `  live heap after a full GC with ${live.inFlight} in flight: +${((live.bytes - r.heapBeforeBytes) / KiB / KiB).toFixed(1)} MiB = ` +
        `${((live.bytes - r.heapBeforeBytes) / KiB / live.inFlight).toFixed(0)} KiB per in-flight capture`,
    );
  }
  const ok =
    r.failed.length === 0 &&
    (!largest ||
      (ratio <= TARGETS.wallRatio && cpuPer < TARGETS.cpuMsPerCapture && kibAtPeak < TARGETS.kibPerInFlight));
  return ok;
}

async function main(): Promise<void> {
  if (args.child) {
    const s = JSON.parse(args.settings ?? '{}') as Settings;
    process.stdout.write(`${JSON.stringify(await runChild(s))}\n`);
    return;
  }
  const ns = (args.n ?? '').split(',').map((x) => Math.round(positive('n', x)));
  const limits = (args.limits ?? '').split(',').map((x) => {
    if (x !== 'default' && x !== 'raised') throw new Error(`--limits takes default and/or raised, got ${x}`);
    return x as Limits;
  });
  const kinds =
    args.kinds === 'all'
      ? [...COMPUTER_KINDS]
      : (args.kinds ?? '').split(',').map((k) => {
          if (!COMPUTER_KINDS.includes(k as ComputerKind))
            throw new Error(`--kinds: unknown kind ${k}; kinds: ${COMPUTER_KINDS.join(', ')}`);
          return k as ComputerKind;
        });
  const powerDelayMs = positive('power-delay-ms', args['power-delay-ms']);
  const base = {
    kinds,
    powerDelayMs,
    sysprepMs: args['sysprep-ms'] === undefined ? powerDelayMs : positive('sysprep-ms', args['sysprep-ms']),
    captureChunkMs: positive('capture-chunk-ms', args['capture-chunk-ms']),
    captureChunkBytes: Math.round(positive('capture-chunk-bytes', args['capture-chunk-bytes'])),
    diskBytes: Math.round(positive('disk-bytes', args['disk-bytes'])),
    pollMs: positive('poll-ms', args['poll-ms']),
    sampleMs: positive('sample-ms', args['sample-ms']),
    cpuProfDir: args['cpu-prof'],
    gcAtPeak: args['gc-at-peak'] === true,
  };
  console.log(
    `scale benchmark: node ${process.version}, ${availableParallelism()} cores (${cpus()[0]?.model ?? '?'}), ` +
      `load average ${loadavg()
        .map((x) => x.toFixed(2))
        .join(' ')}`,
  );
  console.log(
    `lab: kinds ${kinds.join(', ')}; powerDelayMs ${base.powerDelayMs}, sysprepMs ${base.sysprepMs}, ` +
      `disk ${base.diskBytes / KiB} KiB, capture env ${base.captureChunkBytes / KiB} KiB every ${base.captureChunkMs} ms; runner pollMs ${base.pollMs}`,
  );
  console.log(
    'ideal = max( max_k T_k, max_h max(waves_h, copies_h), ceil(N / G) * mean T ), ' +
      'waves_h = max(ceil(n_h / min(maxCaptures_h, G)) * mean_h T, max_h T), copies_h = min_h(T - C) + ceil(n_h / maxCopies_h) * mean_h C;\n' +
      '  T_k, C_k: one capture of kind k alone (wall, time in copy steps), measured first in the same process; G = maxConcurrentCaptures',
  );
  const largestN = Math.max(...ns);
  const all: RunResult[] = [];
  let ok = true;
  for (const l of limits) {
    for (const n of ns) {
      const r = await runInChild({ ...base, limits: l, n });
      all.push(r);
      if (!report(r, n === largestN)) ok = false;
    }
  }
  if (args.json) console.log(JSON.stringify(all));
  process.exitCode = ok ? 0 : 1;
}

await main();
