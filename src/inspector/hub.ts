/**
 * The inspector's memory and fan-out: it listens to a runner (`runner.on`) and to its capture actors
 * (`inspect`), keeps a bounded history of each live and recently finished capture, and pushes every
 * sanitized message to the connected pages through their bounded queues.
 *
 * Everything the runner calls here is synchronous, constant-size work (sanitize, append, enqueue): no
 * I/O, no waiting on a page. A page that reads slowly loses its oldest messages, never the runner's time.
 */
import type { InspectionEvent } from 'xstate';
import type { RunnerEvent } from '../runner/runner.js';
import type { CaptureDetail, CaptureRecord, CaptureStore } from '../store/index.js';
import { ClientQueue, type ClientQueueOptions, type Sink } from './client-queue.js';
import type {
  CaptureDetailResponse,
  CaptureMessage,
  CaptureSummary,
  RecordedTransition,
  ServerMessage,
  StateValueJson,
} from './messages.js';
import { redactString } from './redact.js';
import { type Inspected, sanitizeInspection, statePath, stateValueOf } from './sanitize.js';

export interface HubOptions {
  /** Where recent captures and recorded transitions (replay) come from. */
  store?: CaptureStore;
  /** Strings cut out of everything shown (see `secretsOfInventory`). */
  secrets?: readonly string[];
  /** Messages kept per capture (default 2000; older ones are dropped and counted). */
  historyLimit?: number;
  /** Finished captures kept in memory (default 50; the store keeps them all). */
  recentLimit?: number;
  /** Copy progress is passed on at most this often per capture (default 250 ms). */
  progressIntervalMs?: number;
  /** Per page. */
  clientQueue?: ClientQueueOptions;
}

/** The part of a runner the hub listens to. */
export interface RunnerLike {
  on(listener: (event: RunnerEvent) => void): () => void;
}

/** Distributes `Omit<CaptureMessage, 'seq'>` over the union. */
type Unsequenced<T> = T extends unknown ? Omit<T, 'seq'> : never;

interface LiveCapture {
  summary: CaptureSummary;
  messages: CaptureMessage[];
  truncated: number;
  lastContext: { capture?: string; os?: string };
  /** The redacted context objects last compared (the same object: unchanged, no serialising). */
  lastContextRef: { capture?: unknown; os?: unknown };
  /** The latest context message of each actor, kept even when the history is cut. */
  contextMessages: { capture?: CaptureMessage; os?: CaptureMessage };
  lastOs?: string;
  progress?: { pending?: Unsequenced<CaptureMessage>; lastAt: number; timer?: NodeJS.Timeout };
  /** Seen through the store (run by another process), with the audit seq read so far. */
  followed?: { lastSeq: number };
}

const iso = (s: string | null): number | null => (s ? Date.parse(s) : null);

export function summaryOfRecord(r: CaptureRecord): CaptureSummary {
  return {
    id: r.id,
    computer: r.computer,
    provisioner: r.provisioner,
    os: r.os,
    image: r.image.name,
    status: r.status,
    state: statePath(stateValueOf(r.stateValue)),
    step: null,
    createdAt: iso(r.createdAt) ?? 0,
    finishedAt: iso(r.finishedAt),
    live: false,
  };
}

const FINAL_OF_EVENT: Record<string, string> = {
  'capture.completed': 'completed',
  'capture.failed': 'failed',
  'capture.cancelled': 'cancelled',
};

/** The transitions a capture's audit trail records, in order: what a replay steps through. */
export function transitionsOf(detail: CaptureDetail): RecordedTransition[] {
  const out: RecordedTransition[] = [];
  for (const e of detail.events) {
    const final = FINAL_OF_EVENT[e.type];
    // The diagram is the capture machine's: its own transitions, not the OS sub-machine's
    // (`os.state.entered`, which repeat the capture state they happen in).
    if (final === undefined && e.type !== 'state.entered') continue;
    const value = final ?? stateValueOf(e.stateValue);
    if (value === null || value === undefined) continue;
    out.push({ seq: e.seq, at: Date.parse(e.at), type: e.type, value, step: e.step });
  }
  return out;
}

export class InspectorHub {
  private seq = 0;
  private readonly captures = new Map<string, LiveCapture>();
  private readonly captureOfRoot = new Map<string, string>();
  /** Facts of actors whose capture is not known yet (a child may start before its root's first snapshot). */
  private readonly pendingOfRoot = new Map<string, Inspected[]>();
  private readonly clients = new Set<ClientQueue>();
  private readonly secrets: readonly string[];
  private readonly historyLimit: number;
  private readonly recentLimit: number;
  private readonly progressIntervalMs: number;
  private readonly detachers = new Set<() => void>();
  /** Inspection events that could not be handled (a bug here must never reach the runner). */
  errors = 0;

  constructor(private readonly options: HubOptions = {}) {
    this.secrets = options.secrets ?? [];
    this.historyLimit = options.historyLimit ?? 2000;
    this.recentLimit = options.recentLimit ?? 50;
    this.progressIntervalMs = options.progressIntervalMs ?? 250;
  }

  /** Give this to `createRunner({ inspect })`. */
  readonly inspect = (event: InspectionEvent): void => {
    try {
      this.onInspection(event);
    } catch {
      this.errors += 1;
    }
  };

  /** Listens to a runner's events; returns the function that stops listening. */
  attach(runner: RunnerLike): () => void {
    const off = runner.on((e) => {
      try {
        this.onRunnerEvent(e);
      } catch {
        this.errors += 1;
      }
    });
    this.detachers.add(off);
    return () => {
      off();
      this.detachers.delete(off);
    };
  }

  /** A page connected: it gets the capture list, then every message, through its own bounded queue. */
  addClient(sink: Sink): { queue: ClientQueue; remove: () => void } {
    const queue = new ClientQueue(sink, {
      ...this.options.clientQueue,
      droppedMessage: (count) => JSON.stringify({ t: 'dropped', seq: this.seq, count }),
    });
    this.clients.add(queue);
    queue.push(JSON.stringify({ t: 'hello', seq: this.seq, captures: this.liveSummaries() }));
    return {
      queue,
      remove: () => {
        queue.close();
        this.clients.delete(queue);
      },
    };
  }

  get clientCount(): number {
    return this.clients.size;
  }

  /** Messages dropped for slow pages, over all pages connected now. */
  get droppedCount(): number {
    let n = 0;
    for (const c of this.clients) n += c.dropped;
    return n;
  }

  liveSummaries(): CaptureSummary[] {
    return [...this.captures.values()].map((c) => ({ ...c.summary }));
  }

  /** Live captures and the store's recent ones, newest first. */
  async listCaptures(limit = 100): Promise<CaptureSummary[]> {
    const live = this.liveSummaries();
    const known = new Set(live.map((s) => s.id));
    const stored = this.options.store ? await this.options.store.listCaptures({ limit }) : [];
    const all = [...live, ...stored.filter((r) => !known.has(r.id)).map(summaryOfRecord)];
    return all.sort((a, b) => b.createdAt - a.createdAt).slice(0, Math.max(limit, live.length));
  }

  /** One capture: what was seen live (if anything) and its recorded transitions; undefined if unknown. */
  async captureDetail(id: string): Promise<CaptureDetailResponse | undefined> {
    const live = this.captures.get(id);
    const liveSnapshot = live
      ? {
          seq: this.seq,
          messages: [
            ...Object.values(live.contextMessages).filter((m) => m && !live.messages.includes(m)),
            ...live.messages,
          ] as CaptureMessage[],
          truncated: live.truncated,
          summary: { ...live.summary },
        }
      : undefined;
    const stored = this.options.store ? await this.options.store.getCapture(id) : undefined;
    if (!liveSnapshot && !stored) return undefined;
    const summary = liveSnapshot?.summary ?? summaryOfRecord(stored as CaptureDetail);
    if (liveSnapshot && stored) {
      summary.provisioner ??= stored.provisioner;
      summary.os ??= stored.os;
      summary.image ??= stored.image.name;
    }
    return {
      capture: summary,
      machine: summary.provisioner,
      osMachine: summary.os,
      live: liveSnapshot
        ? { seq: liveSnapshot.seq, messages: liveSnapshot.messages, truncated: liveSnapshot.truncated }
        : null,
      transitions: stored ? transitionsOf(stored) : [],
    };
  }

  /**
   * Follows the captures another process runs on the same store: their recorded states (no OS
   * sub-machine, context or progress: those only travel in memory) are polled every `intervalMs`.
   * Returns the function that stops following.
   */
  followStore(intervalMs = 1000): () => void {
    const store = this.options.store;
    if (!store) return () => undefined;
    let busy = false;
    const tick = async () => {
      if (busy) return;
      busy = true;
      try {
        const running = await store.listCaptures({ status: ['queued', 'running'] });
        const ids = new Set(running.map((r) => r.id));
        for (const c of this.captures.values()) if (c.followed && c.summary.live) ids.add(c.summary.id);
        for (const id of ids) {
          const known = this.captures.get(id);
          if (known && !known.followed) continue; // run by this process's runner
          const d = await store.getCapture(id);
          if (d) this.applyStored(d);
        }
      } catch {
        this.errors += 1;
      } finally {
        busy = false;
      }
    };
    void tick();
    const timer = setInterval(() => void tick(), intervalMs);
    timer.unref?.();
    const stop = () => clearInterval(timer);
    this.detachers.add(stop);
    return () => {
      stop();
      this.detachers.delete(stop);
    };
  }

  private applyStored(d: CaptureDetail): void {
    let c = this.captures.get(d.id);
    if (!c) {
      c = this.captureFor(d.id, d.computer);
      c.followed = { lastSeq: 0 };
      Object.assign(c.summary, summaryOfRecord(d), { live: true, state: null });
      this.broadcastSummary(c);
    }
    const followed = c.followed ?? { lastSeq: 0 };
    for (const e of d.events) {
      if (e.seq <= followed.lastSeq) continue;
      followed.lastSeq = e.seq;
      const value = stateValueOf(e.stateValue);
      if (e.type !== 'state.entered' || value === null) continue;
      c.summary.status = 'running';
      c.summary.state = statePath(value);
      c.summary.step = e.step;
      this.record(c, { t: 'state', id: d.id, at: Date.parse(e.at), value, step: e.step ?? '' });
    }
    if (d.status !== 'queued' && d.status !== 'running') {
      const at = iso(d.finishedAt) ?? Date.now();
      this.record(c, { t: 'state', id: d.id, at, value: d.status, step: c.summary.step ?? '' });
      this.record(c, {
        t: 'finished',
        id: d.id,
        at,
        status: d.status,
        error: d.lastError
          ? {
              code: String(d.lastError.code),
              step: String(d.lastError.step),
              message: redactString(String(d.lastError.message), this.secrets, 500),
            }
          : null,
      });
      Object.assign(c.summary, { status: d.status, finishedAt: at, live: false, state: d.status });
      this.broadcastSummary(c);
      this.evictFinished();
    }
  }

  /** Stops listening to runners and disconnects every page's queue. */
  close(): void {
    for (const off of this.detachers) off();
    this.detachers.clear();
    for (const c of this.captures.values()) if (c.progress?.timer) clearTimeout(c.progress.timer);
    for (const q of this.clients) q.close();
    this.clients.clear();
  }

  // --- runner events -------------------------------------------------------------------------------

  private onRunnerEvent(e: RunnerEvent): void {
    const now = Date.now();
    switch (e.type) {
      case 'queued': {
        const c = this.captureFor(e.captureId, e.computer);
        c.summary.image = e.image.slice(0, 200);
        this.broadcastSummary(c);
        void this.fillFromStore(c);
        return;
      }
      case 'state': {
        const c = this.captureFor(e.captureId);
        const value = stateValueOf(e.state);
        if (value === null) return;
        const wasQueued = c.summary.status === 'queued';
        c.summary.status = 'running';
        c.summary.state = statePath(value);
        c.summary.step = e.step.slice(0, 200);
        if (wasQueued) this.broadcastSummary(c);
        this.flushProgress(c);
        this.record(c, { t: 'state', id: c.summary.id, at: e.atMs, value, step: c.summary.step });
        return;
      }
      case 'progress': {
        const c = this.captureFor(e.captureId);
        const msg: Unsequenced<CaptureMessage> = {
          t: 'progress',
          id: c.summary.id,
          at: now,
          step: e.step.slice(0, 200),
          bytes: e.bytes,
          total: e.total ?? null,
          bytesPerSecond: e.bytesPerSecond,
        };
        if (!c.progress) c.progress = { lastAt: 0 };
        const p = c.progress;
        if (now - p.lastAt >= this.progressIntervalMs || (e.total !== undefined && e.bytes >= e.total)) {
          p.pending = undefined;
          p.lastAt = now;
          this.record(c, msg);
        } else {
          p.pending = msg;
          p.timer ??= setTimeout(() => {
            p.timer = undefined;
            this.flushProgress(c);
          }, this.progressIntervalMs);
          p.timer.unref?.();
        }
        return;
      }
      case 'finished': {
        const c = this.captureFor(e.captureId);
        this.flushProgress(c);
        const r = e.result;
        // A suspended capture is still unfinished: the next runner resumes it.
        c.summary.status = r.status === 'suspended' ? 'running' : r.status;
        c.summary.finishedAt = now;
        c.summary.live = false;
        const error =
          r.status === 'completed'
            ? null
            : {
                code: String(r.error.code).slice(0, 100),
                step: String(r.error.step).slice(0, 200),
                message: redactString(String(r.error.message), this.secrets, 500),
              };
        this.record(c, { t: 'finished', id: c.summary.id, at: now, status: r.status, error });
        this.broadcastSummary(c);
        this.evictFinished();
        return;
      }
    }
  }

  // --- inspection events ---------------------------------------------------------------------------

  private onInspection(event: InspectionEvent): void {
    const facts = sanitizeInspection(event, this.secrets);
    if (facts) this.onFacts(facts);
  }

  private onFacts(facts: Inspected): void {
    const now = Date.now();
    if (facts.kind === 'root') {
      let id = this.captureOfRoot.get(facts.rootId);
      if (!id && facts.captureId) {
        id = facts.captureId;
        this.captureOfRoot.set(facts.rootId, id);
        const pending = this.pendingOfRoot.get(facts.rootId);
        this.pendingOfRoot.delete(facts.rootId);
        for (const p of pending ?? []) this.onFacts(p);
      }
      if (!id) return;
      const c = this.captureFor(id);
      const ctx = facts.snapshot.context as {
        provisioner?: unknown;
        os?: unknown;
        computer?: unknown;
      } | null;
      if (c.summary.provisioner === null && typeof ctx?.provisioner === 'string') {
        c.summary.provisioner = ctx.provisioner;
        if (typeof ctx.os === 'string') c.summary.os = ctx.os;
        this.broadcastSummary(c);
      }
      this.recordContext(c, 'capture', facts.snapshot.context, now);
      return;
    }
    const id = this.captureOfRoot.get(facts.rootId);
    if (!id) {
      // Kept (bounded) until the root's first snapshot names the capture.
      let pending = this.pendingOfRoot.get(facts.rootId);
      if (!pending) {
        if (this.pendingOfRoot.size >= 100) {
          const oldest = this.pendingOfRoot.keys().next().value;
          if (oldest !== undefined) this.pendingOfRoot.delete(oldest);
        }
        pending = [];
        this.pendingOfRoot.set(facts.rootId, pending);
      }
      if (pending.length < 100) pending.push(facts);
      return;
    }
    const c = this.captures.get(id);
    if (!c) return;
    if (facts.kind === 'os') {
      const key = JSON.stringify([facts.snapshot.value, facts.snapshot.status]);
      if (key !== c.lastOs && facts.snapshot.value !== null) {
        c.lastOs = key;
        this.record(c, {
          t: 'os',
          id: c.summary.id,
          at: now,
          value: facts.snapshot.value,
          status: facts.snapshot.status,
        });
      }
      this.recordContext(c, 'os', facts.snapshot.context, now);
      return;
    }
    this.record(c, {
      t: 'event',
      id: c.summary.id,
      at: now,
      actor: facts.actor,
      type: facts.type,
      ...(facts.detail ? { detail: facts.detail } : {}),
    });
  }

  // --- helpers -------------------------------------------------------------------------------------

  private captureFor(id: string, computer?: string): LiveCapture {
    let c = this.captures.get(id);
    if (!c) {
      c = {
        summary: {
          id: id.slice(0, 200),
          computer: (computer ?? '').slice(0, 200),
          provisioner: null,
          os: null,
          image: null,
          status: 'queued',
          state: null,
          step: null,
          createdAt: Date.now(),
          finishedAt: null,
          live: true,
        },
        messages: [],
        truncated: 0,
        lastContext: {},
        lastContextRef: {},
        contextMessages: {},
      };
      this.captures.set(id, c);
    }
    return c;
  }

  private async fillFromStore(c: LiveCapture): Promise<void> {
    const store = this.options.store;
    if (!store) return;
    try {
      const r = await store.getCapture(c.summary.id);
      if (!r) return;
      c.summary.provisioner ??= r.provisioner;
      c.summary.os ??= r.os;
      c.summary.createdAt = iso(r.createdAt) ?? c.summary.createdAt;
      this.broadcastSummary(c);
    } catch {
      // The store may be closing; the summary keeps what the events told.
    }
  }

  private recordContext(c: LiveCapture, actor: 'capture' | 'os', context: unknown, at: number): void {
    if (context !== undefined && c.lastContextRef[actor] === context) return;
    c.lastContextRef[actor] = context;
    const json = JSON.stringify(context ?? null);
    if (c.lastContext[actor] === json) return;
    c.lastContext[actor] = json;
    this.record(c, { t: 'context', id: c.summary.id, at, actor, context: context ?? null });
  }

  private flushProgress(c: LiveCapture): void {
    const p = c.progress;
    if (!p?.pending) return;
    if (p.timer) clearTimeout(p.timer);
    p.timer = undefined;
    const msg = p.pending;
    p.pending = undefined;
    p.lastAt = Date.now();
    this.record(c, msg);
  }

  private record(c: LiveCapture, message: Unsequenced<CaptureMessage>): void {
    this.seq += 1;
    const full = { ...message, seq: this.seq } as CaptureMessage;
    c.messages.push(full);
    if (full.t === 'context') c.contextMessages[full.actor] = full;
    if (c.messages.length > this.historyLimit) {
      const over = c.messages.length - this.historyLimit;
      c.messages.splice(0, over);
      c.truncated += over;
    }
    this.broadcast(full);
  }

  private broadcastSummary(c: LiveCapture): void {
    this.seq += 1;
    this.broadcast({ t: 'capture', seq: this.seq, capture: { ...c.summary } });
  }

  private broadcast(message: ServerMessage): void {
    if (this.clients.size === 0) return;
    const data = JSON.stringify(message);
    for (const q of this.clients) q.push(data);
  }

  private evictFinished(): void {
    const finished = [...this.captures.values()].filter((c) => !c.summary.live);
    const evicted = new Set<string>();
    for (const c of finished.slice(0, Math.max(0, finished.length - this.recentLimit))) {
      if (c.progress?.timer) clearTimeout(c.progress.timer);
      this.captures.delete(c.summary.id);
      evicted.add(c.summary.id);
    }
    if (evicted.size)
      for (const [root, id] of this.captureOfRoot) if (evicted.has(id)) this.captureOfRoot.delete(root);
  }
}

export type { StateValueJson };
