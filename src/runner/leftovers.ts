/**
 * One runner execution's view of the remote side of a capture: every command and copy carries the
 * execution's tag (src/ssh/leftovers.ts), recorded in the store before the first command on each host,
 * and on a host where an earlier execution (a runner that died, or stopped) recorded other tags, every
 * process carrying those is killed, and its end confirmed, before this execution's first command there.
 * A step that re-runs after a crash can then never overlap with what its earlier attempt left running
 * (a `qemu-img convert` still writing, a `pre_capture` script in the guest).
 */
import { FAILURE_CODES } from '../../machines/types.js';
import type { Remote } from '../drivers/contract.js';
import { VclError } from '../errors.js';
import type { Logger } from '../log.js';
import {
  type CopyEndpoint,
  type ExecOptions,
  leftoverSweep,
  newRemoteTag,
  type SshHost,
  sweepOutcome,
} from '../ssh/index.js';
import type { CaptureStore, RemoteTagRecord } from '../store/index.js';

/** Budget of one sweep (the script itself gives up after about 5 s of survivors). */
const SWEEP_TIMEOUT_MS = 60_000;

export interface TaggedRemote extends Remote {
  /** This execution's tag. */
  readonly tag: string;
}

/**
 * Wraps `remote` for one execution of capture `captureId`; `earlier` are the tags the store holds for it
 * (from executions before this one).
 */
export function taggedRemote(
  remote: Remote,
  store: CaptureStore,
  captureId: string,
  earlier: readonly RemoteTagRecord[],
  log: Logger,
): TaggedRemote {
  const tag = newRemoteTag();
  /** Per host: done once its earlier tags are swept and this one is recorded; retried after a failure. */
  const ready = new Map<string, Promise<void>>();

  const prepare = async (host: SshHost, step: string | undefined): Promise<void> => {
    const old = earlier.filter((r) => r.host === host.name && r.tag !== tag);
    if (old.length > 0) {
      const tags = old.map((r) => r.tag);
      const started = Date.now();
      const r = await remote.exec(host, leftoverSweep(tags), {
        check: false,
        timeoutMs: SWEEP_TIMEOUT_MS,
        ...(step === undefined ? {} : { step }),
      });
      const outcome = sweepOutcome(r);
      if (outcome.kind === 'survivors' || outcome.kind === 'failed')
        throw new VclError(
          FAILURE_CODES.REMOTE_LEFTOVER,
          outcome.kind === 'survivors'
            ? `${host.name}: ${outcome.left} process(es) an earlier run of this capture left there did not end after SIGKILL; the step does not start beside them`
            : `${host.name}: could not look for processes an earlier run of this capture left there (exit ${r.code ?? r.signal}: ${r.stderr.trim().slice(-300)}); the step does not start beside them`,
          {
            ...(step === undefined ? {} : { step }),
            details: { host: host.name, tags, stderr: r.stderr.slice(-2000) },
          },
        );
      if (outcome.kind === 'unsupported')
        log.warn(
          { host: host.name, tags },
          'cannot look for commands an earlier run left on this host (no /proc/<pid>/environ); going on',
        );
      else
        log.info(
          { host: host.name, tags, killed: outcome.killed, durationMs: Date.now() - started },
          outcome.killed > 0
            ? 'stopped commands an earlier run left running'
            : 'no earlier command left running',
        );
      for (const t of tags) await store.forgetRemoteTags(captureId, { host: host.name, tag: t });
    }
    await store.recordRemoteTag(captureId, host.name, tag);
  };

  const readyFor = (host: SshHost, options: { step?: string; signal?: AbortSignal } | undefined) => {
    let p = ready.get(host.name);
    if (p === undefined) {
      p = prepare(host, options?.step);
      ready.set(host.name, p);
      // A host that could not be reached or swept is tried again by its next command.
      p.catch(() => ready.delete(host.name));
    }
    return untilAborted(p, options?.signal);
  };

  const hostsOf = (...endpoints: CopyEndpoint[]) =>
    endpoints.flatMap((e) => (e.host === undefined ? [] : [e.host]));

  return {
    tag,
    async exec(host, argv, options: ExecOptions = {}) {
      await readyFor(host, options);
      return await remote.exec(host, argv, { ...options, tag });
    },
    async copy(from, to, options = {}) {
      for (const h of hostsOf(from, to)) await readyFor(h, options);
      return await remote.copy(from, to, { ...options, tag });
    },
    ...(remote.answers === undefined ? {} : { answers: remote.answers.bind(remote) }),
  };
}

/** `p`, or an `ABORTED` error as soon as `signal` aborts (the shared preparation goes on for the others). */
function untilAborted(p: Promise<void>, signal: AbortSignal | undefined): Promise<void> {
  if (signal === undefined) return p;
  if (signal.aborted) return Promise.reject(new VclError('ABORTED', 'aborted'));
  return new Promise((resolve, reject) => {
    const onAbort = () => reject(new VclError('ABORTED', 'aborted'));
    signal.addEventListener('abort', onAbort, { once: true });
    p.then(resolve, reject).finally(() => signal.removeEventListener('abort', onAbort));
  });
}
