// Builders for the messages Postern synthesizes. Not on the forwarding path:
// these run for startup, errors and the occasional injected message, so
// clarity wins over cleverness; constant frames are built once by callers.

export class Writer {
  #parts: Buffer[] = [];
  #size = 0;

  byte(v: number): this {
    const b = Buffer.allocUnsafe(1);
    b[0] = v;
    return this.#push(b);
  }

  int16(v: number): this {
    const b = Buffer.allocUnsafe(2);
    b.writeInt16BE(v);
    return this.#push(b);
  }

  int32(v: number): this {
    const b = Buffer.allocUnsafe(4);
    b.writeInt32BE(v | 0);
    return this.#push(b);
  }

  bytes(v: Buffer | Uint8Array): this {
    return this.#push(Buffer.from(v.buffer, v.byteOffset, v.byteLength));
  }

  cstring(s: string): this {
    const b = Buffer.from(`${s}\0`, 'utf8');
    return this.#push(b);
  }

  #push(b: Buffer): this {
    this.#parts.push(b);
    this.#size += b.length;
    return this;
  }

  get size(): number {
    return this.#size;
  }

  body(): Buffer {
    return Buffer.concat(this.#parts, this.#size);
  }

  /** A complete typed message: type byte, Int32 length (self-inclusive), body. */
  message(type: number): Buffer {
    const out = Buffer.allocUnsafe(5 + this.#size);
    out[0] = type;
    out.writeInt32BE(4 + this.#size, 1);
    let off = 5;
    for (const p of this.#parts) {
      p.copy(out, off);
      off += p.length;
    }
    return out;
  }

  /** An untyped startup-phase packet: Int32 length (self-inclusive), body. */
  packet(): Buffer {
    const out = Buffer.allocUnsafe(4 + this.#size);
    out.writeInt32BE(4 + this.#size, 0);
    let off = 4;
    for (const p of this.#parts) {
      p.copy(out, off);
      off += p.length;
    }
    return out;
  }
}
