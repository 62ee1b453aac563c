/**
 * What the crash-resume case of the end-to-end suite needs around `vcl-capture daemon`: the daemon as a
 * child process (started asynchronously, as a user starts it, so the test process keeps polling while it
 * runs), a direct reader of its SQLite store (the `captures`, `capture_events`, `computers` and
 * `image_revisions` tables), and a look at what a process has open (the leftover `qemu-img convert` of a
 * killed daemon).
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import Database from 'better-sqlite3';
import { type CommandResult, run } from './libvirt.js';

const BIN = new URL('../../src/cli/bin.mjs', import.meta.url).pathname;

/** `vcl-capture <args> --db <db>` as a user runs it, logging to `logFile` (debug). */
export function cliWithDb(db: string, args: string[], logFile: string): Promise<CommandResult> {
  return run(
    process.execPath,
    [BIN, '--log-level', 'debug', '--log-file', logFile, ...args, '--db', db],
    { ...process.env, NO_COLOR: '1' },
    60_000,
  );
}

export interface DaemonProcess {
  pid: number;
  /** Resolves when the process has exited (and was reaped: its pid is free). */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Whether it has not exited yet. */
  running(): boolean;
  /** The tail of its stdout and stderr, for failure messages. */
  output(): string;
  kill(signal: NodeJS.Signals): void;
}

/** `node src/cli/bin.mjs --log-level debug --log-file <log> daemon --config <inventory> --db <db>`. */
export function startDaemon(o: { inventory: string; db: string; logFile: string }): DaemonProcess {
  const child: ChildProcess = spawn(
    process.execPath,
    [BIN, '--log-level', 'debug', '--log-file', o.logFile, 'daemon', '--config', o.inventory, '--db', o.db],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, NO_COLOR: '1' } },
  );
  if (child.pid === undefined) throw new Error('vcl-capture daemon did not start');
  let out = '';
  const keep = (chunk: Buffer) => {
    out = (out + chunk.toString('utf8')).slice(-8000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  let done = false;
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.once('exit', (code, signal) => {
      done = true;
      resolve({ code, signal });
    });
  });
  return {
    pid: child.pid,
    exited,
    running: () => !done,
    output: () => out,
    kill: (signal) => {
      if (!done) child.kill(signal);
    },
  };
}

export interface StoredCapture {
  id: string;
  status: string;
  stateValue: string | null;
  owner: string | null;
  revisionId: number;
}

export interface StoredEvent {
  seq: number;
  type: string;
  step: string | null;
  details: Record<string, unknown> | null;
}

export interface StoredRevision {
  name: string;
  sizeBytes: number | null;
  sha256: string | null;
  /** The repository folder and the path inside it. */
  repository: string | null;
  path: string | null;
  deleted: number;
}

/** Reads a vcl-capture SQLite store directly (WAL: never blocks the daemon that writes it). */
export function storeReader(file: string) {
  const db = new Database(file, { fileMustExist: true });
  db.pragma('busy_timeout = 5000');
  return {
    capture(id: string): StoredCapture | undefined {
      return db
        .prepare<[string], StoredCapture>(
          'SELECT id, status, state_value AS stateValue, owner, revision_id AS revisionId FROM captures WHERE id = ?',
        )
        .get(id);
    },
    events(id: string): StoredEvent[] {
      return db
        .prepare<[string], { seq: number; type: string; step: string | null; details: string | null }>(
          'SELECT seq, type, step, details FROM capture_events WHERE capture_id = ? ORDER BY seq',
        )
        .all(id)
        .map((e) => ({ ...e, details: e.details === null ? null : (JSON.parse(e.details) as never) }));
    },
    computerState(name: string): string | undefined {
      return db.prepare<[string], { state: string }>('SELECT state FROM computers WHERE name = ?').get(name)
        ?.state;
    },
    revision(id: number): StoredRevision | undefined {
      return db
        .prepare<[number], StoredRevision>(
          'SELECT name, size_bytes AS sizeBytes, sha256, repository, path, deleted FROM image_revisions WHERE id = ?',
        )
        .get(id);
    },
    close: () => db.close(),
  };
}

/** Size of a file, or undefined when it does not exist. */
export function sizeOf(path: string): number | undefined {
  try {
    return statSync(path).size;
  } catch {
    return undefined;
  }
}
