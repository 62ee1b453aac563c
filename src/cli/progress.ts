/**
 * Live progress of captures: one bar per capture on a terminal (state, bytes, rate, elapsed), plain
 * lines otherwise (state changes only, so logs and CI output stay readable).
 */
import cliProgress from 'cli-progress';
import type { RunnerEvent } from '../runner/runner.js';

export interface ProgressView {
  handle(event: RunnerEvent): void;
  stop(): void;
}

function stateName(state: unknown): string {
  if (typeof state === 'string') return state;
  const [k, v] = Object.entries(state as Record<string, unknown>)[0] ?? ['?', ''];
  return v ? `${k}.${stateName(v)}` : k;
}

function mib(bytes: number): string {
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

export function progressView(labels: Map<string, string>, tty = Boolean(process.stdout.isTTY)): ProgressView {
  const started = new Map<string, number>();
  if (!tty) {
    return {
      handle(e) {
        if (e.type === 'state') {
          if (!started.has(e.captureId)) started.set(e.captureId, e.atMs);
          const s = ((e.atMs - (started.get(e.captureId) ?? e.atMs)) / 1000).toFixed(1);
          console.log(
            `${(labels.get(e.captureId) ?? e.captureId).padEnd(28)} ${s.padStart(6)} s  ${stateName(e.state)}`,
          );
        }
      },
      stop() {},
    };
  }
  const multi = new cliProgress.MultiBar(
    {
      format: '{label} |{bar}| {state} {bytes} {rate} {wire} {eta_text} {elapsed}s',
      hideCursor: true,
      clearOnComplete: false,
      stopOnComplete: false,
      barsize: 20,
      noTTYOutput: false,
    },
    cliProgress.Presets.shades_grey,
  );
  const bars = new Map<string, cliProgress.SingleBar>();
  const bar = (id: string) => {
    let b = bars.get(id);
    if (!b) {
      started.set(id, Date.now());
      b = multi.create(1, 0, {
        label: (labels.get(id) ?? id).padEnd(28),
        state: 'queued',
        bytes: '',
        wire: '',
        eta_text: '',
        rate: '',
        elapsed: '0',
      });
      bars.set(id, b);
    }
    return b;
  };
  const elapsed = (id: string) => ((Date.now() - (started.get(id) ?? Date.now())) / 1000).toFixed(1);
  return {
    handle(e) {
      if (e.type === 'state')
        bar(e.captureId).update({ state: stateName(e.state).padEnd(34), elapsed: elapsed(e.captureId) });
      if (e.type === 'progress') {
        const b = bar(e.captureId);
        b.setTotal(e.total ?? Math.max(e.bytes, 1));
        const left =
          e.total !== undefined && e.bytesPerSecond > 0 ? (e.total - e.bytes) / e.bytesPerSecond : undefined;
        b.update(e.bytes, {
          bytes: mib(e.bytes),
          rate: `${mib(e.bytesPerSecond)}/s`,
          wire: e.wireBytes === undefined ? '' : `(${mib(e.wireBytes)} on the wire)`,
          eta_text: `${left === undefined ? '' : `ETA ${left.toFixed(0)} s`}${e.resumes ? ` resumed ${e.resumes}x` : ''}`,
          elapsed: elapsed(e.captureId),
        });
      }
      if (e.type === 'finished') {
        const b = bar(e.captureId);
        b.setTotal(1);
        b.update(1, { state: e.result.status.padEnd(34), elapsed: elapsed(e.captureId) });
      }
    },
    stop: () => multi.stop(),
  };
}
