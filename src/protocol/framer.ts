// Incremental framing for both phases of the protocol.
//
// Startup phase: untyped packets (Int32 length, then body), capped at 10,000
// bytes as Postgres does. `startupFrame` answers frame length / need-more /
// violation and never throws.
//
// Regular phase: typed messages (1 type byte, Int32 self-inclusive length).
// `MessageStream` walks the 5-byte headers of each chunk and reports
//   - runs of consecutive frames Postern does not inspect, as (buf, start, end)
//     slices of the input chunk, so they can be forwarded untouched in one
//     write, even when a frame is not complete yet (a 1 GB DataRow streams
//     through without being buffered);
//   - complete frames whose type is marked in the inspect table, buffered
//     (copied) only when they straddle chunks;
//   - complete frames whose type is marked in the peek table, shown to the
//     sink while they stay in their run (forwarded untouched): for
//     bookkeeping such as statistics. A peeked frame that straddles chunks
//     is assembled in a side copy and shown once whole, after its bytes went
//     on;
//   - a violation (unknown type byte, negative or oversize length), after
//     which it stops.
// The sink is an object with methods, not closures, so nothing is allocated
// per message on the hot path.

import { MAX_STARTUP_PACKET } from './codes.ts';
import { VIOLATION, type ViolationKind } from './violation.ts';

/** `startupFrame` result: not enough bytes yet. Positive results are frame lengths. */
export const NEED_MORE = 0;
/** `startupFrame` result: the length field is below the 8-byte minimum. */
export const BAD_LENGTH = -1;
/** `startupFrame` result: the length field exceeds the startup packet cap. */
export const TOO_LARGE = -2;

/** Length of the complete startup packet at buf[off..end), or NEED_MORE / BAD_LENGTH / TOO_LARGE. */
export function startupFrame(buf: Buffer, off: number, end: number): number {
  if (end - off < 4) return NEED_MORE;
  const len = buf.readInt32BE(off);
  // 8 = the length itself plus a protocol version or request code.
  if (len < 8) return BAD_LENGTH;
  if (len > MAX_STARTUP_PACKET) return TOO_LARGE;
  if (end - off < len) return NEED_MORE;
  return len;
}

export interface FrameSink {
  /** Bytes [start, end) of buf belong to frames that are not inspected: forward them as they are. */
  onRun(buf: Buffer, start: number, end: number): void;
  /** One complete inspected frame, header included, at buf[start, end). */
  onMessage(type: number, buf: Buffer, start: number, end: number): void;
  /**
   * A complete frame of a peeked type, header included, at buf[start, end).
   * It is forwarded in a run as well: the sink must only look, never forward.
   * Required when a peek table is set.
   */
  onPeek?(type: number, buf: Buffer, start: number, end: number): void;
  /** The peer broke framing; the stream ignores all further input. */
  onViolation(kind: ViolationKind, detail: string): void;
  /** A frame of a counted type (see setCount): its header just went by; its bytes are forwarded or inspected as usual. */
  onCount?(type: number): void;
}

/** Per message type: the smallest and largest length field accepted (both Int32Array(256)). */
export interface FrameLimits {
  readonly min: Int32Array;
  readonly max: Int32Array;
}

/** Every type: length 4 (the length itself) up to `max`. */
export function uniformLimits(max: number): FrameLimits {
  return { min: new Int32Array(256).fill(4), max: new Int32Array(256).fill(max) };
}

export class MessageStream {
  #sink: FrameSink;
  #valid: Uint8Array;
  #inspect: Uint8Array;
  #min: Int32Array;
  #max: Int32Array;
  /** Bytes of an uninspected frame still to pass through. */
  #pass = 0;
  /** A header split across chunks (made the first time one is: idle connections hold none). */
  #hdr: Buffer | null = null;
  #hdrLen = 0;
  /** An inspected frame split across chunks. */
  #msg: Buffer | null = null;
  #msgLen = 0;
  #dead = false;
  /** Types to count without inspecting (the frame stays in its run). */
  #count: Uint8Array | null = null;
  /** Types shown to onPeek while staying in their run; null: none. */
  #peek: Uint8Array | null = null;
  /** A peeked frame straddling chunks, assembled while its bytes pass through. */
  #peekBuf: Buffer | null = null;
  #peekLen = 0;
  /** Frames of counted types whose header has been seen. */
  counted = 0;
  /** Every frame header seen while counting is on. */
  frames = 0;
  /** `frames` when the last counted frame was seen: equal to `frames` when nothing uncounted came after it. */
  framesAtLastCounted = 0;

  /**
   * @param valid 256-entry table: 1 for legal type bytes
   * @param inspect 256-entry table: 1 for types the sink wants whole
   * @param limits cap on a message's length field, one for all types or per type
   */
  constructor(sink: FrameSink, valid: Uint8Array, inspect: Uint8Array, limits: number | FrameLimits) {
    this.#sink = sink;
    this.#valid = valid;
    this.#inspect = inspect;
    const l = typeof limits === 'number' ? uniformLimits(limits) : limits;
    this.#min = l.min;
    this.#max = l.max;
  }

  /** Swap the length limits (a session passing authentication) and the legal types, from the next header on. */
  setLimits(limits: FrameLimits, valid?: Uint8Array): void {
    this.#min = limits.min;
    this.#max = limits.max;
    if (valid !== undefined) this.#valid = valid;
  }

  /** Count frames of the types marked in `table` (null: stop counting) into `counted`, at their header. */
  setCount(table: Uint8Array | null): void {
    this.#count = table;
  }

  #tally(type: number): void {
    this.frames++;
    if ((this.#count as Uint8Array)[type] === 1) {
      this.counted++;
      this.framesAtLastCounted = this.frames;
      this.#sink.onCount?.(type);
    }
  }

  /** Show frames of the types marked in `table` to the sink's onPeek (null: stop peeking). Inspected types are not peeked. */
  setPeek(table: Uint8Array | null): void {
    if (table !== null && this.#sink.onPeek === undefined) throw new Error('a peek table needs a sink with onPeek');
    this.#peek = table;
  }

  /** Starts the side copy of a peeked frame of `total` bytes (filled by #peekAdd). */
  #peekStart(total: number): Buffer {
    const b = Buffer.allocUnsafe(total);
    this.#peekBuf = b;
    this.#peekLen = 0;
    return b;
  }

  #peekAdd(src: Buffer, from: number, to: number): void {
    const b = this.#peekBuf as Buffer;
    src.copy(b, this.#peekLen, from, to);
    this.#peekLen += to - from;
    if (this.#peekLen === b.length) {
      this.#peekBuf = null;
      (this.#sink.onPeek as NonNullable<FrameSink['onPeek']>)(b[0] as number, b, 0, b.length);
    }
  }

  /** Swap the inspect table (e.g. when a session leaves the startup phase). */
  setInspect(inspect: Uint8Array): void {
    this.#inspect = inspect;
  }

  /** True when the stream sits exactly between frames (nothing partial held or owed). */
  get atBoundary(): boolean {
    return this.#pass === 0 && this.#hdrLen === 0 && this.#msg === null;
  }

  get dead(): boolean {
    return this.#dead;
  }

  push(chunk: Buffer): void {
    if (this.#dead) return;
    const end = chunk.length;
    let off = 0;
    let runStart = 0;

    // 1. Finish what the previous chunk left open.
    if (this.#pass > 0) {
      const n = Math.min(this.#pass, end);
      this.#pass -= n;
      off = n;
      if (this.#pass > 0) {
        this.#sink.onRun(chunk, 0, end);
        if (this.#peekBuf !== null) this.#peekAdd(chunk, 0, end);
        return;
      }
      if (this.#peekBuf !== null) {
        // The frame's last bytes go on with the run below; show it once they have.
        this.#sink.onRun(chunk, 0, n);
        runStart = n;
        this.#peekAdd(chunk, 0, n);
        if (this.#dead) return;
      }
    } else if (this.#hdrLen > 0) {
      const hdr = this.#hdr as Buffer;
      const n = Math.min(5 - this.#hdrLen, end);
      chunk.copy(hdr, this.#hdrLen, 0, n);
      this.#hdrLen += n;
      off = n;
      if (this.#hdrLen < 5) return;
      this.#hdrLen = 0;
      const type = hdr[0] as number;
      const total = this.#check(type, hdr.readInt32BE(1));
      if (total < 0) return;
      if (this.#count !== null) this.#tally(type);
      if (this.#inspect[type] === 1) {
        this.#msg = Buffer.allocUnsafe(total);
        hdr.copy(this.#msg, 0);
        this.#msgLen = 5;
      } else {
        // The stashed header was never forwarded: send a copy (the stash is reused).
        this.#sink.onRun(Buffer.from(hdr), 0, 5);
        const rest = total - 5;
        const n2 = Math.min(rest, end - off);
        this.#pass = rest - n2;
        off += n2;
        runStart = n;
        const peeked = this.#peek !== null && this.#peek[type] === 1;
        if (this.#pass > 0) {
          if (off > runStart) this.#sink.onRun(chunk, runStart, off);
          if (peeked) {
            hdr.copy(this.#peekStart(total), 0, 0, 5);
            this.#peekLen = 5;
            this.#peekAdd(chunk, runStart, off);
          }
          return;
        }
        if (peeked) {
          if (off > runStart) this.#sink.onRun(chunk, runStart, off);
          hdr.copy(this.#peekStart(total), 0, 0, 5);
          this.#peekLen = 5;
          this.#peekAdd(chunk, runStart, off);
          if (this.#dead) return;
          runStart = off;
        }
      }
    }
    if (this.#msg !== null) {
      const msg = this.#msg;
      const n = Math.min(msg.length - this.#msgLen, end - off);
      chunk.copy(msg, this.#msgLen, off, off + n);
      this.#msgLen += n;
      off += n;
      if (this.#msgLen < msg.length) return;
      this.#msg = null;
      this.#sink.onMessage(msg[0] as number, msg, 0, msg.length);
      if (this.#dead) return;
      runStart = off;
    }

    // 2. Walk whole frames in this chunk.
    const valid = this.#valid;
    while (off < end) {
      if (end - off < 5) {
        if (off > runStart) this.#sink.onRun(chunk, runStart, off);
        this.#hdr ??= Buffer.alloc(5);
        chunk.copy(this.#hdr, 0, off, end);
        this.#hdrLen = end - off;
        return;
      }
      const type = chunk[off] as number;
      const len = chunk.readInt32BE(off + 1);
      if (valid[type] !== 1 || len < (this.#min[type] as number) || len > (this.#max[type] as number)) {
        if (off > runStart) this.#sink.onRun(chunk, runStart, off);
        this.#check(type, len);
        return;
      }
      const total = len + 1;
      if (this.#count !== null) this.#tally(type);
      // Read the table per frame, not once per chunk: a sink may call setInspect
      // from onMessage, and the change must apply to the very next frame.
      if (this.#inspect[type] === 1) {
        if (off > runStart) this.#sink.onRun(chunk, runStart, off);
        if (end - off >= total) {
          this.#sink.onMessage(type, chunk, off, off + total);
          if (this.#dead) return;
          off += total;
          runStart = off;
          continue;
        }
        const msg = Buffer.allocUnsafe(total);
        chunk.copy(msg, 0, off, end);
        this.#msg = msg;
        this.#msgLen = end - off;
        return;
      }
      const peek = this.#peek;
      if (end - off >= total) {
        if (peek !== null && peek[type] === 1) {
          (this.#sink.onPeek as NonNullable<FrameSink['onPeek']>)(type, chunk, off, off + total);
          if (this.#dead) return;
        }
        off += total;
        continue;
      }
      this.#pass = total - (end - off);
      if (peek !== null && peek[type] === 1) {
        this.#peekStart(total);
        this.#peekAdd(chunk, off, end);
      }
      off = end;
    }
    if (off > runStart) this.#sink.onRun(chunk, runStart, off);
  }

  /** Stop processing: later pushes are ignored. */
  kill(): void {
    this.#dead = true;
    this.#msg = null;
    this.#peekBuf = null;
  }

  /** Validates a header; returns the frame's total size or -1 after reporting a violation. */
  #check(type: number, len: number): number {
    if (this.#valid[type] !== 1) {
      this.#fail(VIOLATION.BadType, `invalid message type ${type}`);
      return -1;
    }
    if (len < (this.#min[type] as number)) {
      this.#fail(VIOLATION.BadLength, `invalid message length ${len}`);
      return -1;
    }
    const max = this.#max[type] as number;
    if (len > max) {
      this.#fail(
        VIOLATION.TooLarge,
        max === (this.#min[type] as number) ? `invalid message length ${len}` : `message length ${len} exceeds the limit of ${max}`,
      );
      return -1;
    }
    return len + 1;
  }

  #fail(kind: ViolationKind, detail: string): void {
    this.#dead = true;
    this.#msg = null;
    this.#peekBuf = null;
    this.#sink.onViolation(kind, detail);
  }
}
