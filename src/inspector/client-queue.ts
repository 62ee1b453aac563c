/**
 * One page's outgoing messages: a bounded queue in front of its socket. The runner's side only ever
 * appends (constant time, never waits); the queue writes to the socket while the socket keeps up, and
 * past `limit` queued messages it drops the oldest and counts them. The page is told how many it missed
 * (a `dropped` message) before the next one, so it reloads what it shows instead of showing a gap.
 */

/** What the queue needs of a socket (`ws`'s WebSocket has it). */
export interface Sink {
  send(data: string, callback: (err?: Error) => void): void;
  readonly bufferedAmount: number;
}

export interface ClientQueueOptions {
  /** Messages kept waiting at most (default 2000). */
  limit?: number;
  /** Messages handed to the socket and not yet written (default 32). */
  maxInFlight?: number;
  /** Bytes the socket may buffer before the queue waits (default 1 MiB). */
  maxBuffered?: number;
  /** `{ t: 'dropped', count }` as the page receives it. */
  droppedMessage?: (count: number) => string;
}

export class ClientQueue {
  private readonly queue: string[] = [];
  private head = 0;
  private inFlight = 0;
  private unreported = 0;
  private closed = false;
  private scheduled = false;
  /** Messages dropped for this client since it connected. */
  dropped = 0;
  /** Messages written to the socket. */
  sent = 0;
  private readonly limit: number;
  private readonly maxInFlight: number;
  private readonly maxBuffered: number;
  private readonly droppedMessage: (count: number) => string;

  constructor(
    private readonly sink: Sink,
    options: ClientQueueOptions = {},
  ) {
    this.limit = options.limit ?? 2000;
    this.maxInFlight = options.maxInFlight ?? 32;
    this.maxBuffered = options.maxBuffered ?? 1024 * 1024;
    this.droppedMessage =
      options.droppedMessage ?? ((count) => JSON.stringify({ t: 'dropped', seq: 0, count }));
  }

  get length(): number {
    return this.queue.length - this.head;
  }

  push(data: string): void {
    if (this.closed) return;
    this.queue.push(data);
    const over = this.length - this.limit;
    if (over > 0) {
      this.head += over;
      this.dropped += over;
      this.unreported += over;
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue.splice(0, this.head);
      this.head = 0;
    }
    this.schedule();
  }

  /** Socket writes happen after the caller's turn (the runner's), batched. */
  private schedule(): void {
    if (this.scheduled || this.closed) return;
    this.scheduled = true;
    setImmediate(() => {
      this.scheduled = false;
      this.pump();
    });
  }

  close(): void {
    this.closed = true;
    this.queue.length = 0;
    this.head = 0;
  }

  private pump(): void {
    while (
      !this.closed &&
      this.length > 0 &&
      this.inFlight < this.maxInFlight &&
      this.sink.bufferedAmount < this.maxBuffered
    ) {
      let data: string;
      if (this.unreported > 0) {
        data = this.droppedMessage(this.unreported);
        this.unreported = 0;
      } else {
        data = this.queue[this.head] as string;
        this.head += 1;
      }
      this.inFlight += 1;
      try {
        this.sink.send(data, (err) => {
          this.inFlight -= 1;
          if (err) this.close();
          else {
            this.sent += 1;
            // Written: more may go now (later, not inside the socket's callback).
            if (this.length > 0) this.schedule();
          }
        });
      } catch {
        this.close();
      }
    }
  }
}
