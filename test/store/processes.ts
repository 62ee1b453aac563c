import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));

/**
 * A TypeScript fixture under test/store/fixtures run as a separate Node process (its own SQLite
 * connection), talking JSON lines over stdin/stdout. stderr is kept for failure messages.
 */
export class FixtureProcess {
  readonly child: ChildProcessWithoutNullStreams;
  private readonly queue: Record<string, unknown>[] = [];
  private waiting: ((message: Record<string, unknown>) => void) | undefined;
  private stderr = '';
  private exited: string | undefined;
  private readonly exitPromise: Promise<number | null>;

  constructor(fixture: string, args: string[]) {
    const script = fileURLToPath(new URL(`./fixtures/${fixture}`, import.meta.url));
    // `--import tsx` runs the TypeScript source directly, without npx's extra process in between, so the
    // pid we hold (and may kill) is the one that has the database open.
    this.child = spawn(process.execPath, ['--import', 'tsx', script, ...args], {
      cwd: REPO_ROOT,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.child.stderr.setEncoding('utf8').on('data', (chunk: string) => {
      this.stderr += chunk;
    });
    createInterface({ input: this.child.stdout }).on('line', (line) => {
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(line) as Record<string, unknown>;
      } catch {
        message = { type: 'garbage', line };
      }
      const waiter = this.waiting;
      this.waiting = undefined;
      if (waiter) waiter(message);
      else this.queue.push(message);
    });
    this.exitPromise = new Promise((resolve) => {
      this.child.on('exit', (code, signal) => {
        this.exited = `exited with ${signal ?? code}`;
        resolve(code);
      });
    });
  }

  get pid(): number {
    if (this.child.pid === undefined) throw new Error('fixture process did not start');
    return this.child.pid;
  }

  /** The next JSON line, failing with the process's stderr if it exits or stays silent. */
  next(timeoutMs = 15_000): Promise<Record<string, unknown>> {
    const queued = this.queue.shift();
    if (queued) return Promise.resolve(queued);
    return new Promise((resolve, reject) => {
      const fail = (why: string) => {
        this.waiting = undefined;
        reject(new Error(`fixture process ${this.child.pid}: ${why}\n${this.stderr}`));
      };
      const timer = setTimeout(() => fail(`no message within ${timeoutMs} ms`), timeoutMs);
      this.waiting = (message) => {
        clearTimeout(timer);
        resolve(message);
      };
      void this.exitPromise.then(() => {
        if (this.waiting) {
          clearTimeout(timer);
          fail(this.exited ?? 'exited');
        }
      });
    });
  }

  send(message: Record<string, unknown> | string): void {
    this.child.stdin.write(`${typeof message === 'string' ? message : JSON.stringify(message)}\n`);
  }

  /** Asks the process to exit (closing its store) and waits for it; kills it if it does not. */
  async stop(): Promise<number | null> {
    if (this.exited === undefined) {
      this.send('exit');
      this.child.stdin.end();
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 5_000);
      const code = await this.exitPromise;
      clearTimeout(timer);
      return code;
    }
    return this.exitPromise;
  }

  kill(signal: NodeJS.Signals = 'SIGKILL'): Promise<number | null> {
    this.child.kill(signal);
    return this.exitPromise;
  }

  get output(): string {
    return this.stderr;
  }
}
