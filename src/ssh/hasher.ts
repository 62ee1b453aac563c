/**
 * sha256 over regions of a shared buffer, computed in a worker thread so that hashing overlaps the
 * decryption on the main thread (the copy's busiest thread: measured 0.6 s of CPU per 256 MiB with both on
 * it, of which ~0.17 s is hashing). The worker reads the same memory the file is written from, so the hash
 * covers exactly the bytes written; a region must not change until its `update()` settled.
 *
 * Without worker threads (or when one cannot start) the same interface hashes inline.
 */
import { createHash } from 'node:crypto';
import { Worker } from 'node:worker_threads';

export interface RegionHasher {
  /** Adds `memory[offset, offset + length)` to the hash; resolves once that region has been read. */
  update(offset: number, length: number): Promise<void>;
  /** Adds `length` zero bytes (what a hole reads as), without a buffer of them crossing threads. */
  zeros(length: number): Promise<void>;
  /** The hex digest, after every update so far. The hasher cannot be used afterwards. */
  digest(): Promise<string>;
  /** Stops the worker (if any); pending and later calls reject. */
  close(): void;
  readonly inWorker: boolean;
}

/** The zero buffer a hole is hashed from, in either thread. */
const ZERO_CHUNK = 4 * 1024 * 1024;

/** Plain CommonJS run with `eval`, so that it needs no loader or build step in any runner. */
const WORKER_SOURCE = `
const { parentPort, workerData } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const memory = workerData.memory;
const hash = createHash('sha256');
const ZEROS = new Uint8Array(${ZERO_CHUNK});
parentPort.on('message', (m) => {
  if (m.op === 'update') {
    hash.update(new Uint8Array(memory, m.offset, m.length));
    parentPort.postMessage({ op: 'updated' });
  } else if (m.op === 'zeros') {
    for (let n = m.length; n > 0; n -= ZEROS.length) hash.update(n >= ZEROS.length ? ZEROS : ZEROS.subarray(0, n));
    parentPort.postMessage({ op: 'updated' });
  } else if (m.op === 'digest') {
    parentPort.postMessage({ op: 'digest', hex: hash.digest('hex') });
  }
});
`;

type WorkerReply = { op: 'updated' } | { op: 'digest'; hex: string };

class InlineHasher implements RegionHasher {
  readonly inWorker = false;
  private readonly hash = createHash('sha256');
  private closed = false;
  private zeroChunk: Uint8Array | undefined;

  constructor(private readonly memory: SharedArrayBuffer) {}

  update(offset: number, length: number): Promise<void> {
    if (this.closed) return Promise.reject(new Error('hasher closed'));
    this.hash.update(new Uint8Array(this.memory, offset, length));
    return Promise.resolve();
  }

  zeros(length: number): Promise<void> {
    if (this.closed) return Promise.reject(new Error('hasher closed'));
    this.zeroChunk ??= new Uint8Array(ZERO_CHUNK);
    const z = this.zeroChunk;
    for (let n = length; n > 0; n -= z.length) this.hash.update(n >= z.length ? z : z.subarray(0, n));
    return Promise.resolve();
  }

  digest(): Promise<string> {
    if (this.closed) return Promise.reject(new Error('hasher closed'));
    this.closed = true;
    return Promise.resolve(this.hash.digest('hex'));
  }

  close(): void {
    this.closed = true;
  }
}

class WorkerHasher implements RegionHasher {
  readonly inWorker = true;
  /** Replies come in the order of the requests: one FIFO of waiters serves both kinds. */
  private readonly waiting: Array<{ resolve: (r: WorkerReply) => void; reject: (e: Error) => void }> = [];
  private failure: Error | undefined;

  constructor(private readonly worker: Worker) {
    worker.on('message', (r: WorkerReply) => this.waiting.shift()?.resolve(r));
    worker.on('error', (err) => this.fail(err));
    worker.on('exit', (code) => this.fail(new Error(`hash worker exited (code ${code})`)));
  }

  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiting.splice(0)) w.reject(this.failure);
  }

  private request(message: object): Promise<WorkerReply> {
    if (this.failure !== undefined) return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.worker.postMessage(message);
    });
  }

  async update(offset: number, length: number): Promise<void> {
    await this.request({ op: 'update', offset, length });
  }

  async zeros(length: number): Promise<void> {
    await this.request({ op: 'zeros', length });
  }

  async digest(): Promise<string> {
    const r = await this.request({ op: 'digest' });
    this.close();
    if (r.op !== 'digest') throw new Error('hash worker answered out of order');
    return r.hex;
  }

  close(): void {
    this.fail(new Error('hasher closed'));
    void this.worker.terminate();
  }
}

/** A hasher over `memory`: in a worker thread when `worker` is true and one starts, inline otherwise. */
export function createRegionHasher(memory: SharedArrayBuffer, worker: boolean): RegionHasher {
  if (worker) {
    try {
      return new WorkerHasher(new Worker(WORKER_SOURCE, { eval: true, workerData: { memory } }));
    } catch {
      // No worker threads here (or at their limit): hashing on this thread is correct, just slower.
    }
  }
  return new InlineHasher(memory);
}
