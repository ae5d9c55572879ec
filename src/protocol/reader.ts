// Bounded reader over one complete message body. Every read is checked against
// the end of the message (never the end of the socket buffer), so a lying
// length inside a message cannot make Postern read a neighbour's bytes.

import { ProtocolViolation, VIOLATION } from './violation.ts';

export class Reader {
  #buf: Buffer;
  #pos: number;
  #end: number;

  constructor(buf: Buffer, start = 0, end = buf.length) {
    if (start < 0 || end > buf.length || start > end) {
      throw new ProtocolViolation(VIOLATION.BadLength, 'message bounds outside buffer');
    }
    this.#buf = buf;
    this.#pos = start;
    this.#end = end;
  }

  get remaining(): number {
    return this.#end - this.#pos;
  }

  get position(): number {
    return this.#pos;
  }

  #need(n: number): void {
    if (n < 0 || this.#pos + n > this.#end) {
      throw new ProtocolViolation(VIOLATION.Truncated, 'message is shorter than its fields');
    }
  }

  byte(): number {
    this.#need(1);
    return this.#buf[this.#pos++] as number;
  }

  int16(): number {
    this.#need(2);
    const v = this.#buf.readInt16BE(this.#pos);
    this.#pos += 2;
    return v;
  }

  int32(): number {
    this.#need(4);
    const v = this.#buf.readInt32BE(this.#pos);
    this.#pos += 4;
    return v;
  }

  /** A view of the next n bytes (no copy). */
  bytes(n: number): Buffer {
    this.#need(n);
    const v = this.#buf.subarray(this.#pos, this.#pos + n);
    this.#pos += n;
    return v;
  }

  /** The rest of the message (no copy). */
  rest(): Buffer {
    return this.bytes(this.#end - this.#pos);
  }

  /** A NUL-terminated string; the NUL must lie inside the message. */
  cstring(): string {
    const nul = this.#buf.indexOf(0, this.#pos);
    if (nul < 0 || nul >= this.#end) {
      throw new ProtocolViolation(VIOLATION.Malformed, 'string is not terminated inside its message');
    }
    const s = this.#buf.toString('utf8', this.#pos, nul);
    this.#pos = nul + 1;
    return s;
  }

  /** Fails unless the whole message was consumed. */
  end(): void {
    if (this.#pos !== this.#end) {
      throw new ProtocolViolation(VIOLATION.Malformed, 'message has trailing bytes');
    }
  }
}
