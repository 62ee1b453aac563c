/**
 * One run of a local command hook: the program from the inventory's argv (no shell), the event as JSON
 * on stdin, `VCL_CAPTURE_EVENT_TYPE` and `VCL_CAPTURE_EVENT_ID` in its environment. Exit 0 is delivered;
 * anything else (another exit code, a signal, the deadline) is a failed attempt, retried with back-off.
 * The command runs in its own process group, killed whole at the deadline or when the notifier stops.
 */
import { spawn } from 'node:child_process';
import type { NotificationEvent } from '../store/types.js';
import type { CommandReceiver } from './config.js';

/** Tail of the command's stderr kept in the error. */
const MAX_STDERR = 300;

export function runCommandHook(
  receiver: CommandReceiver,
  event: NotificationEvent,
  signal: AbortSignal,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const [program, ...args] = receiver.argv;
    if (program === undefined) {
      reject(new Error('the command has no program'));
      return;
    }
    const child = spawn(program, args, {
      stdio: ['pipe', 'ignore', 'pipe'],
      detached: true, // its own process group: a timeout kills what it started too
      env: { ...process.env, VCL_CAPTURE_EVENT_TYPE: event.type, VCL_CAPTURE_EVENT_ID: event.id },
    });
    let stderr = '';
    let why: string | undefined;
    const kill = (reason: string) => {
      why ??= reason;
      try {
        if (child.pid !== undefined) process.kill(-child.pid, 'SIGKILL');
      } catch {
        child.kill('SIGKILL'); // the group is gone already: the child alone, if still there
      }
    };
    const timer = setTimeout(
      () => kill(`still running after ${receiver.timeoutMs} ms: killed`),
      receiver.timeoutMs,
    );
    const onAbort = () => kill('stopped');
    signal.addEventListener('abort', onAbort, { once: true });
    child.stderr?.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString('utf8')).slice(-MAX_STDERR);
    });
    // A command that exits without reading stdin closes the pipe: that is its business, not an error.
    child.stdin?.on('error', () => undefined);
    child.stdin?.end(JSON.stringify(event));
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbort);
    };
    child.on('error', (err: NodeJS.ErrnoException) => {
      done();
      reject(new Error(`cannot run ${program}: ${err.code ?? err.message}`));
    });
    child.on('close', (code, sig) => {
      done();
      if (why === undefined && code === 0) {
        resolve();
        return;
      }
      const tail = stderr.replace(/\s+/g, ' ').trim();
      const how = why ?? (code === null ? `killed by ${sig}` : `exit code ${code}`);
      reject(new Error(`${program}: ${how}${tail ? `: ${tail}` : ''}`));
    });
  });
}
