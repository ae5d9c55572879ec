// Frames cut from one received chunk, written back out as runs. While a
// batch is open (around one chunk), a write that continues the previous one
// in memory (the next frame of the same chunk) extends it instead of becoming
// its own write, so the socket gets one buffer per run of forwarded frames
// where it got one per frame: fewer Writable entries, one write() instead of
// a writev of many. Merging is by address only: two views that touch in
// memory hold exactly those bytes in that order, whoever made them.
//
// Backpressure stays bounded: a run flushes once it reaches `limit` bytes,
// and what write() returns is the socket's own answer at the last flush
// (false from the start of a batch when the socket already needed a drain).

/** The part of a socket a batch writes to. */
export interface ByteSink {
  write(buf: Buffer): boolean;
  readonly writableNeedDrain: boolean;
}

export class WriteBatch {
  readonly #sink: ByteSink;
  readonly #limit: number;
  #pending: Buffer | null = null;
  #open = false;
  #ok = true;

  constructor(sink: ByteSink, limit = 16 * 1024) {
    this.#sink = sink;
    this.#limit = limit;
  }

  /** True between begin() and end(). */
  get open(): boolean {
    return this.#open;
  }

  /** Starts joining writes (calls may nest only by a matching end()). */
  begin(): void {
    this.#open = true;
    this.#ok = !this.#sink.writableNeedDrain;
  }

  /** Writes now, or joins buf to the run; false when the socket asks the writer to wait. */
  write(buf: Buffer): boolean {
    if (!this.#open) return this.#sink.write(buf);
    const p = this.#pending;
    if (p === null) this.#pending = buf;
    else if (p.buffer === buf.buffer && p.byteOffset + p.length === buf.byteOffset)
      this.#pending = Buffer.from(p.buffer, p.byteOffset, p.length + buf.length);
    else {
      this.#ok = this.#sink.write(p);
      this.#pending = buf;
    }
    if ((this.#pending as Buffer).length >= this.#limit) this.#flush();
    return this.#ok;
  }

  /** Writes what is joined and stops joining; the socket's answer to the last write. */
  end(): boolean {
    this.#open = false;
    this.#flush();
    return this.#ok;
  }

  /** Stops joining and forgets what is joined (the socket is being destroyed). */
  drop(): void {
    this.#open = false;
    this.#pending = null;
  }

  #flush(): void {
    const p = this.#pending;
    if (p === null) return;
    this.#pending = null;
    this.#ok = this.#sink.write(p);
  }
}
