/**
 * The driver contract: what a step implementation is given (`StepRun`), what it is (`StepFn`), what it
 * reaches hosts through (`Remote`), and the two waits every driver uses (`sleep`, `pollUntil`). The
 * runner imports this module to run steps; drivers and provisioners import it, never `src/runner`.
 */
import { VclError } from '../errors.js';
import type { Logger } from '../log.js';
import type {
  CopyEndpoint,
  CopyOptions,
  CopyResult,
  ExecOptions,
  ExecResult,
  SshHost,
} from '../ssh/index.js';

export interface StepRun<TInput> {
  input: TInput;
  /** Aborted on cancellation or at the deadline. */
  signal: AbortSignal;
  /** Milliseconds left before the deadline (never below 1). */
  remainingMs(): number;
  log: Logger;
  /**
   * True when this step was in flight when the capture's process stopped (a crash, a kill) and runs again
   * after a resume: it may have done none, part or all of its work, and must converge either way.
   */
  resumed: boolean;
}

export type StepFn<TInput, TOutput> = (run: StepRun<TInput>) => Promise<TOutput>;

/**
 * What drivers need from the SSH transport: commands and copies. `SshPool` is the real one; tests of
 * fault handling may wrap it.
 */
export interface Remote {
  exec(host: SshHost, argv: readonly string[], options?: ExecOptions): Promise<ExecResult>;
  copy(from: CopyEndpoint, to: CopyEndpoint, options?: CopyOptions): Promise<CopyResult>;
  /**
   * Whether the host's sshd answers, without logging in (`SshPool.answers`). Optional: without it, waits
   * on a computer going down or coming up probe with a command.
   */
  answers?(host: SshHost, options: { timeoutMs: number; signal?: AbortSignal }): Promise<boolean>;
}

/** Sleeps, waking early (and throwing) on abort. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(new VclError('ABORTED', 'aborted'));
    const t = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(t);
      reject(new VclError('ABORTED', 'aborted'));
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * Polls `probe` every `intervalMs` until it returns a value, up to the step's deadline. A wait always
 * ends: with the value, or with TIMEOUT (the stepActor turns the deadline abort into it).
 */
export async function pollUntil<T>(
  run: Pick<StepRun<unknown>, 'signal'>,
  intervalMs: number,
  probe: () => Promise<T | undefined>,
): Promise<T> {
  for (;;) {
    const v = await probe();
    if (v !== undefined) return v;
    await sleep(intervalMs, run.signal);
  }
}
