// Frames cut from one received chunk, written back out as runs. While a
// batch is open (around one chunk), a write that continues the previous one
// in memory (the next frame of the same chunk) extends it instead of becoming
// its own write, so the socket gets one buffer per run of forwarded frames
// where it got one per frame: fewer Writable entries, one write() instead of
// a writev of many. Merging is by address only: two views that touch in
// memory hold exactly those bytes in that order, whoever made them.
//
// A run is kept as (buffer, start, end) and cut once, when it is written:
// extending it allocates nothing. The socket is corked only when a batch
// writes a second buffer (or a run reaches the limit), so the usual batch of
// one run is one plain write() and still everything one batch writes leaves
// in one system call.
//
// Backpressure stays bounded: a run flushes once it reaches `limit` bytes,
// and what write() returns is the socket's own answer at the last flush
// (false from the start of a batch when the socket already needed a drain).

/** The part of a socket a batch writes to. */
export interface ByteSink {
  write(buf: Buffer): boolean;
  cork(): void;
  uncork(): void;
  readonly writableNeedDrain: boolean;
}

export class WriteBatch {
  readonly #sink: ByteSink;
  readonly #limit: number;
  /** The run joined so far: #buf[#start, #end); null when none. */
  #buf: Buffer | null = null;
  #start = 0;
  #end = 0;
  #open = false;
  /** This batch corked the sink (it wrote more than one buffer): uncorked when it ends. */
  #corked = false;
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
    return this.writeRange(buf, 0, buf.length);
  }

  /** write() of buf[start, end), without making a view of it unless it must be written on its own. */
  writeRange(buf: Buffer, start: number, end: number): boolean {
    if (!this.#open) return this.#sink.write(start === 0 && end === buf.length ? buf : buf.subarray(start, end));
    const p = this.#buf;
    if (p === null) {
      this.#buf = buf;
      this.#start = start;
      this.#end = end;
    } else if (p === buf && this.#end === start) this.#end = end;
    else if (p.buffer === buf.buffer && p.byteOffset + this.#end === buf.byteOffset + start) {
      // Another view of the same memory, right after the run: one view of both.
      this.#buf = Buffer.from(p.buffer, p.byteOffset + this.#start, this.#end - this.#start + end - start);
      this.#start = 0;
      this.#end = this.#buf.length;
    } else {
      this.#out();
      this.#buf = buf;
      this.#start = start;
      this.#end = end;
    }
    if (this.#end - this.#start >= this.#limit) this.#out();
    return this.#ok;
  }

  /** Writes what is joined and stops joining; the socket's answer to the last write. */
  end(): boolean {
    this.#open = false;
    this.#finish();
    return this.#ok;
  }

  /** Mid-batch: what is joined leaves now, and joining goes on. */
  flush(): void {
    if (this.#open) this.#finish();
  }

  /** Stops joining and forgets what is joined (the socket is being destroyed). */
  drop(): void {
    this.#open = false;
    this.#buf = null;
    this.#corked = false;
  }

  /** The run goes to the socket; a second buffer of this batch corks it first, so the batch still leaves in one write. */
  #out(): void {
    const p = this.#buf as Buffer;
    this.#buf = null;
    if (!this.#corked) {
      this.#corked = true;
      this.#sink.cork();
    }
    this.#ok = this.#sink.write(this.#start === 0 && this.#end === p.length ? p : p.subarray(this.#start, this.#end));
  }

  #finish(): void {
    const p = this.#buf;
    if (p !== null) {
      this.#buf = null;
      this.#ok = this.#sink.write(this.#start === 0 && this.#end === p.length ? p : p.subarray(this.#start, this.#end));
    }
    if (this.#corked) {
      this.#corked = false;
      this.#sink.uncork();
    }
  }
}
