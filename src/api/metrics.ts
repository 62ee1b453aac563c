/**
 * Prometheus metrics of a runner, in a registry of their own (never prom-client's global one, so two
 * runners in one process, or a host application's own metrics, do not mix). What happens to captures is
 * counted from the runner's events as they come; what the runner keeps itself (slots, lease renewals,
 * take-overs, remote failures) and what the store knows (the queue) is read when Prometheus scrapes.
 * Labels are step names, provisioners, statuses, error codes and inventory host names: never addresses,
 * users or anything from a request.
 */
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { Logger } from '../log.js';
import type { Runner, RunnerEvent } from '../runner/runner.js';
import type { CaptureStore } from '../store/index.js';

export interface RunnerMetrics {
  registry: Registry;
  /** Prometheus text exposition format. */
  scrape(): Promise<string>;
  contentType: string;
  /** Stops listening to the runner. */
  close(): void;
}

/** Steps last from seconds (a check) to hours (a copy of a large disk, an xCAT upload). */
const STEP_BUCKETS = [0.05, 0.25, 1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 14400, 43200];

/** A counter that mirrors a monotonic count the runner keeps (set at each scrape). */
function mirroredCounter<L extends string>(
  registry: Registry,
  name: string,
  help: string,
  labelNames: readonly L[],
  read: () => { labels: Record<L, string>; value: number }[],
): Counter<L> {
  return new Counter<L>({
    name,
    help,
    labelNames,
    registers: [registry],
    collect() {
      this.reset();
      for (const { labels, value } of read()) if (value > 0) this.inc(labels, value);
    },
  });
}

export function runnerMetrics(o: { runner: Runner; store: CaptureStore; logger?: Logger }): RunnerMetrics {
  const { runner, store } = o;
  const registry = new Registry();
  const captures = new Counter({
    name: 'vcl_capture_captures_total',
    help: 'Captures this daemon ran to an end, by provisioner and final status (completed, failed, cancelled)',
    labelNames: ['provisioner', 'status'] as const,
    registers: [registry],
  });
  const stepSeconds = new Histogram({
    name: 'vcl_capture_step_duration_seconds',
    help: 'Time a capture spent in each step (machine state), observed when it leaves the step',
    labelNames: ['step'] as const,
    buckets: STEP_BUCKETS,
    registers: [registry],
  });
  const copiedBytes = new Counter({
    name: 'vcl_capture_copied_bytes_total',
    help: 'Bytes copied or uploaded by capture steps (copy, clone, upload) as their progress reports them (the last bytes of a copy may end before a report)',
    labelNames: ['step'] as const,
    registers: [registry],
  });
  const imageBytes = new Counter({
    name: 'vcl_capture_image_bytes_total',
    help: 'Size of the images of completed captures (what was copied, counted once the copy is verified)',
    labelNames: ['provisioner'] as const,
    registers: [registry],
  });
  // The latest reported rate of each copy running now; their sum is the gauge.
  const rates = new Map<string, number>();
  new Gauge({
    name: 'vcl_capture_copy_throughput_bytes_per_second',
    help: 'Sum of the current rates of the copies running now (0 when none)',
    registers: [registry],
    collect() {
      this.set([...rates.values()].reduce((a, b) => a + b, 0));
    },
  });
  new Gauge({
    name: 'vcl_capture_unfinished_captures',
    help: 'Captures in the store not finished yet, by status: queued (the queue depth) and running, of any runner',
    labelNames: ['status'] as const,
    registers: [registry],
    async collect() {
      const unfinished = await store.listResumableCaptures();
      this.set({ status: 'queued' }, unfinished.filter((c) => c.status === 'queued').length);
      this.set({ status: 'running' }, unfinished.filter((c) => c.status === 'running').length);
    },
  });
  new Gauge({
    name: 'vcl_capture_notifications',
    help: 'Notification deliveries in the store by status: pending (due or waiting for a retry), delivered, dead (given up)',
    labelNames: ['status'] as const,
    registers: [registry],
    async collect() {
      for (const [status, n] of Object.entries(await store.countNotifications())) this.set({ status }, n);
    },
  });
  new Gauge({
    name: 'vcl_capture_slots_in_use',
    help: "Capture and copy slots this daemon uses per provisioner host (limits: the host's maxCaptures and maxCopies)",
    labelNames: ['host', 'kind'] as const,
    registers: [registry],
    collect() {
      for (const [host, s] of Object.entries(runner.health().slots)) {
        this.set({ host, kind: 'capture' }, s.captures);
        this.set({ host, kind: 'copy' }, s.copies);
      }
    },
  });
  new Gauge({
    name: 'vcl_capture_slots_waiting',
    help: 'Captures and copies of this daemon waiting for a slot of a provisioner host',
    labelNames: ['host'] as const,
    registers: [registry],
    collect() {
      for (const [host, s] of Object.entries(runner.health().slots)) this.set({ host }, s.waiting);
    },
  });
  mirroredCounter(
    registry,
    'vcl_capture_lease_renewals_total',
    "Rounds of renewing the leases of this daemon's running captures, by result (ok, failed)",
    ['result'] as const,
    () => {
      const l = runner.health().leases;
      return [
        { labels: { result: 'ok' }, value: l.renewals },
        { labels: { result: 'failed' }, value: l.failures },
      ];
    },
  );
  mirroredCounter(
    registry,
    'vcl_capture_takeovers_total',
    'Captures this daemon claimed from another runner (gone, or its lease ran out) and resumed or started',
    [] as const,
    () => [{ labels: {}, value: runner.health().takeovers }],
  );
  mirroredCounter(
    registry,
    'vcl_capture_remote_failures_total',
    "Remote commands and copies that failed, by error code (expected ones included, e.g. a shutdown's SSH_DISCONNECTED)",
    ['code'] as const,
    () =>
      Object.entries(runner.health().remoteFailures).map(([code, value]) => ({ labels: { code }, value })),
  );

  // Per capture: the step it is in and since when; per copy: the bytes already counted.
  const current = new Map<string, { step: string; atMs: number }>();
  const counted = new Map<string, number>();
  const forgetCopies = (captureId: string) => {
    for (const key of [...counted.keys()]) if (key.startsWith(`${captureId}\u0000`)) counted.delete(key);
    for (const key of [...rates.keys()]) if (key.startsWith(`${captureId}\u0000`)) rates.delete(key);
  };
  const onEvent = (e: RunnerEvent) => {
    if (e.type === 'state') {
      const before = current.get(e.captureId);
      if (before) stepSeconds.observe({ step: before.step }, Math.max(0, e.atMs - before.atMs) / 1000);
      current.set(e.captureId, { step: e.step, atMs: e.atMs });
      forgetCopies(e.captureId);
    } else if (e.type === 'progress') {
      const key = `${e.captureId}\u0000${e.step}`;
      const seen = counted.get(key) ?? 0;
      // A copy that starts again (a retry, a resume) reports from 0: count its new bytes from there.
      const delta = e.bytes >= seen ? e.bytes - seen : e.bytes;
      if (delta > 0) copiedBytes.inc({ step: e.step }, delta);
      counted.set(key, e.bytes);
      rates.set(key, e.bytesPerSecond);
    } else if (e.type === 'finished') {
      current.delete(e.captureId);
      forgetCopies(e.captureId);
      const status = e.result.status;
      if (status === 'suspended') return;
      store.getCaptureRecord(e.captureId).then(
        (r) => {
          const provisioner = r?.provisioner ?? 'unknown';
          captures.inc({ provisioner, status });
          if (e.result.status === 'completed') imageBytes.inc({ provisioner }, e.result.artifact.sizeBytes);
        },
        (err: unknown) => o.logger?.warn({ err, captureId: e.captureId }, 'metrics: capture not found'),
      );
    }
  };
  const off = runner.on(onEvent);
  return {
    registry,
    contentType: registry.contentType,
    scrape: () => registry.metrics(),
    close: off,
  };
}
