// Reading a TLS ClientHello without decrypting anything: the server name
// (SNI, RFC 6066) and the ALPN protocols (RFC 7301) a client offers, so the
// handshake can choose a tenant, and pass a tenant's TLS through untouched,
// before any certificate is presented. Untrusted input: every length is
// checked against what is there, nothing is read past the buffer, and the
// hello may come in several TCP reads or TLS records (a large one, e.g. with
// post-quantum key shares, spans more than one segment).
// https://www.rfc-editor.org/rfc/rfc8446#section-4.1.2

const RECORD_HANDSHAKE = 0x16;
const HANDSHAKE_CLIENT_HELLO = 0x01;
const RECORD_HEADER = 5;
/** A TLS record's plaintext fragment is at most 2^14 bytes. */
const MAX_RECORD = 16_384;
/** Hellos longer than this are refused (real ones are a few hundred bytes to ~2 kB). */
export const MAX_HELLO = 65_536;
const EXT_SERVER_NAME = 0;
const EXT_ALPN = 16;
const SNI_HOST_NAME = 0;

export const HELLO_NEED_MORE = 'need_more' as const;
export const HELLO_INVALID = 'invalid' as const;

export interface ClientHello {
  /** The host name of the server_name extension, lower-cased; null when there is none. */
  serverName: string | null;
  /** The ALPN protocols offered; null when the extension is absent. */
  alpn: string[] | null;
  /** Bytes of the records that carry the hello (what must be forwarded first). */
  length: number;
}

export type HelloResult = ClientHello | typeof HELLO_NEED_MORE | typeof HELLO_INVALID;

/**
 * The ClientHello at the start of `buf` (the client's first bytes after 'S',
 * or of a direct-TLS connection): the hello, HELLO_NEED_MORE while it is
 * incomplete, or HELLO_INVALID when the bytes are not a well-formed hello.
 */
export function readClientHello(buf: Buffer): HelloResult {
  // The handshake message, joined from the fragments of its records.
  const parts: Buffer[] = [];
  let have = 0;
  let need = -1;
  let at = 0;
  while (need < 0 || have < need) {
    if (buf.length - at < RECORD_HEADER) return buf.length >= MAX_HELLO ? HELLO_INVALID : HELLO_NEED_MORE;
    if (buf[at] !== RECORD_HANDSHAKE || buf[at + 1] !== 0x03) return HELLO_INVALID;
    const len = buf.readUInt16BE(at + 3);
    if (len === 0 || len > MAX_RECORD) return HELLO_INVALID;
    if (at + RECORD_HEADER + len > MAX_HELLO + RECORD_HEADER * 8) return HELLO_INVALID;
    if (buf.length - at - RECORD_HEADER < len) return HELLO_NEED_MORE;
    parts.push(buf.subarray(at + RECORD_HEADER, at + RECORD_HEADER + len));
    have += len;
    at += RECORD_HEADER + len;
    if (need < 0) {
      const first = parts[0] as Buffer;
      if (first.length < 4) {
        // The handshake header itself is split over records: join and look again.
        const joined = Buffer.concat(parts);
        if (joined.length < 4) continue;
        need = headerLength(joined);
      } else need = headerLength(first);
      if (need < 0) return HELLO_INVALID;
    }
  }
  const msg = parts.length === 1 ? (parts[0] as Buffer) : Buffer.concat(parts);
  // Bytes of a later handshake message in the same records would be a protocol error.
  if (msg.length !== need) return HELLO_INVALID;
  const body = msg.subarray(4);
  const parsed = parseBody(body);
  if (parsed === null) return HELLO_INVALID;
  return { ...parsed, length: at };
}

/** Total length (header included) of a ClientHello handshake message, or -1. */
function headerLength(h: Buffer): number {
  if (h[0] !== HANDSHAKE_CLIENT_HELLO) return -1;
  const len = ((h[1] as number) << 16) | ((h[2] as number) << 8) | (h[3] as number);
  if (len < 38 || len + 4 > MAX_HELLO) return -1;
  return len + 4;
}

/** A bounds-checked reader over one buffer: every read past the end marks it bad. */
class Reader {
  readonly #b: Buffer;
  #at: number;
  readonly #end: number;
  bad = false;

  constructor(b: Buffer, at = 0, end = b.length) {
    this.#b = b;
    this.#at = at;
    this.#end = end;
  }

  get left(): number {
    return this.#end - this.#at;
  }

  u8(): number {
    if (this.left < 1) return this.#fail();
    return this.#b[this.#at++] as number;
  }

  u16(): number {
    if (this.left < 2) return this.#fail();
    const v = this.#b.readUInt16BE(this.#at);
    this.#at += 2;
    return v;
  }

  skip(n: number): void {
    if (this.left < n) this.#fail();
    else this.#at += n;
  }

  /** A sub-reader over the next n bytes, skipped here. */
  take(n: number): Reader {
    if (this.left < n) {
      this.#fail();
      return new Reader(this.#b, this.#end, this.#end);
    }
    const r = new Reader(this.#b, this.#at, this.#at + n);
    this.#at += n;
    return r;
  }

  bytes(n: number): Buffer {
    if (this.left < n) {
      this.#fail();
      return Buffer.alloc(0);
    }
    const v = this.#b.subarray(this.#at, this.#at + n);
    this.#at += n;
    return v;
  }

  #fail(): number {
    this.bad = true;
    this.#at = this.#end;
    return 0;
  }
}

function parseBody(body: Buffer): { serverName: string | null; alpn: string[] | null } | null {
  const r = new Reader(body);
  const major = r.u8();
  r.u8();
  if (major !== 3) return null;
  r.skip(32); // random
  r.skip(r.u8()); // legacy_session_id
  const suites = r.u16();
  if (suites === 0 || suites % 2 !== 0) return null;
  r.skip(suites);
  const compressions = r.u8();
  if (compressions === 0) return null;
  r.skip(compressions);
  if (r.bad) return null;
  let serverName: string | null = null;
  let alpn: string[] | null = null;
  if (r.left === 0) return { serverName, alpn }; // no extensions at all
  const exts = r.take(r.u16());
  if (r.bad || r.left !== 0) return null;
  const seen = new Set<number>();
  while (exts.left > 0) {
    const type = exts.u16();
    const data = exts.take(exts.u16());
    if (exts.bad) return null;
    // RFC 8446 4.2: at most one extension of each type.
    if (seen.has(type)) return null;
    seen.add(type);
    if (type === EXT_SERVER_NAME) {
      const list = data.take(data.u16());
      if (data.bad || data.left !== 0) return null;
      while (list.left > 0) {
        const kind = list.u8();
        const name = list.bytes(list.u16());
        if (list.bad) return null;
        if (kind !== SNI_HOST_NAME || serverName !== null) continue;
        const text = name.toString('latin1');
        // A host name: letters, digits, '-', '.' (RFC 6066 3: no trailing dot, ASCII).
        if (!/^[A-Za-z0-9.-]{1,253}$/.test(text) || text.endsWith('.')) return null;
        serverName = text.toLowerCase();
      }
    } else if (type === EXT_ALPN) {
      const list = data.take(data.u16());
      if (data.bad || data.left !== 0) return null;
      alpn = [];
      while (list.left > 0) {
        const p = list.bytes(list.u8());
        if (list.bad || p.length === 0) return null;
        alpn.push(p.toString('latin1'));
      }
      if (alpn.length === 0) return null;
    }
  }
  return { serverName, alpn };
}
