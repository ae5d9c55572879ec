// A tiny raw-socket Postgres client for negotiation and hostile-input tests:
// connect (plain or TLS-first), write arbitrary bytes, read exact byte counts,
// whole backend messages, or everything until the peer closes; upgrade the
// same socket to TLS after an 'S'; builders for startup-phase packets and
// typed messages (using the project's own encoders), a splitter for backend
// messages, an ErrorResponse field decoder, and a minimal SCRAM-SHA-256
// client so a raw connection can complete a real login.

import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';
import net from 'node:net';
import tls from 'node:tls';
import { decodeAuth, decodeNotice, decodeSaslMechanisms } from '../../src/protocol/backend.ts';
import { AUTH, BE, PROTOCOL_3_0 } from '../../src/protocol/codes.ts';
import { encodeQuery, encodeSaslInitial, encodeSaslResponse } from '../../src/protocol/frontend.ts';
import { encodeCancel, encodeStartup, GSSENC_REQUEST, SSL_REQUEST } from '../../src/protocol/startup.ts';
import { Writer } from '../../src/protocol/writer.ts';

export const DEFAULT_TIMEOUT = 5_000;

// ---------------------------------------------------------------- builders

export function sslRequest(): Buffer {
  return Buffer.from(SSL_REQUEST);
}

export function gssencRequest(): Buffer {
  return Buffer.from(GSSENC_REQUEST);
}

/** StartupMessage with the parameters in the given order (default protocol 3.0). */
export function startupMessage(params: Record<string, string>, version: number = PROTOCOL_3_0): Buffer {
  return encodeStartup(version, Object.entries(params));
}

export function cancelRequest(pid: number, key: Buffer): Buffer {
  return encodeCancel(pid, key);
}

/** A typed message with a correct length field. */
export function typedMessage(type: number | string, body: Buffer | string = Buffer.alloc(0)): Buffer {
  const code = typeof type === 'string' ? type.charCodeAt(0) : type;
  return new Writer().bytes(typeof body === 'string' ? Buffer.from(body) : body).message(code);
}

/** A typed-message header with any length field (the body is not included). */
export function messageHeader(type: number | string, length: number): Buffer {
  const b = Buffer.alloc(5);
  b[0] = typeof type === 'string' ? type.charCodeAt(0) : type;
  b.writeInt32BE(length, 1);
  return b;
}

export function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

// ---------------------------------------------------------------- parsing

export interface BackendMessage {
  /** The type byte as a character ('R', 'E', ...). */
  type: string;
  /** The whole frame, header included. */
  frame: Buffer;
  /** The body (after the 5-byte header). */
  body: Buffer;
}

/** Splits bytes into complete backend messages; `rest` is an incomplete tail (or garbage). */
export function parseMessages(buf: Buffer): { messages: BackendMessage[]; rest: Buffer } {
  const messages: BackendMessage[] = [];
  let off = 0;
  while (buf.length - off >= 5) {
    const len = buf.readInt32BE(off + 1);
    if (len < 4 || buf.length - off < len + 1) break;
    const frame = buf.subarray(off, off + 1 + len);
    messages.push({ type: String.fromCharCode(frame[0] as number), frame, body: frame.subarray(5) });
    off += 1 + len;
  }
  return { messages, rest: buf.subarray(off) };
}

export interface ErrorFields {
  severity: string | undefined;
  code: string | undefined;
  message: string | undefined;
  detail: string | undefined;
  hint: string | undefined;
  fields: Map<string, string>;
}

/** Fields of an ErrorResponse or NoticeResponse. */
export function errorFields(msg: BackendMessage): ErrorFields {
  const n = decodeNotice(msg.frame);
  return { severity: n.severityV ?? n.severity, code: n.code, message: n.message, detail: n.detail, hint: n.hint, fields: n.fields };
}

/** The Int32 request code of an Authentication message. */
export function authCode(msg: BackendMessage): number {
  if (msg.type !== 'R') throw new Error(`expected an Authentication message, got '${msg.type}'`);
  return decodeAuth(msg.frame).code;
}

/** Mechanisms offered by an AuthenticationSASL message. */
export function saslMechanisms(msg: BackendMessage): string[] {
  const a = decodeAuth(msg.frame);
  if (a.code !== AUTH.SASL) throw new Error(`expected AuthenticationSASL, got code ${a.code}`);
  return decodeSaslMechanisms(a.data);
}

/**
 * Parses bytes that must be exactly one ErrorResponse (what Postern sends
 * before closing a refused connection); throws with a readable dump otherwise.
 */
export function onlyError(data: Buffer): ErrorFields {
  const { messages, rest } = parseMessages(data);
  if (messages.length !== 1 || rest.length !== 0 || messages[0]?.type !== 'E') {
    throw new Error(`expected exactly one ErrorResponse, got ${describeBytes(data)}`);
  }
  return errorFields(messages[0]);
}

export function describeBytes(data: Buffer): string {
  const { messages, rest } = parseMessages(data);
  const parts = messages.map((m) =>
    m.type === 'E' || m.type === 'N' ? `${m.type}${JSON.stringify(Object.fromEntries(errorFields(m).fields))}` : m.type,
  );
  if (rest.length > 0) parts.push(`+${rest.length} raw bytes ${JSON.stringify(rest.subarray(0, 32).toString('latin1'))}`);
  return `${data.length} bytes [${parts.join(', ')}]`;
}

// ---------------------------------------------------------------- the client

export interface ReadResult {
  /** Every byte not consumed by an earlier read. */
  data: Buffer;
  /** The peer closed (FIN or reset) before the timeout. */
  closed: boolean;
  /** Socket error seen, if any (e.g. ECONNRESET). */
  error: string | null;
}

type AnySocket = net.Socket | tls.TLSSocket;

export class Wire {
  readonly socket: AnySocket;
  #buf: Buffer = Buffer.alloc(0);
  #ended = false;
  #error: string | null = null;
  #wake: (() => void) | null = null;
  #onData = (d: Buffer): void => {
    this.#buf = this.#buf.length === 0 ? d : Buffer.concat([this.#buf, d]);
    this.#notify();
  };
  #onEnd = (): void => {
    this.#ended = true;
    this.#notify();
  };
  #onError = (e: Error): void => {
    this.#error = (e as NodeJS.ErrnoException).code ?? e.message;
    this.#ended = true;
    this.#notify();
  };

  constructor(socket: AnySocket) {
    this.socket = socket;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('close', this.#onEnd);
    socket.on('error', this.#onError);
  }

  /** Plain TCP connection. */
  static connect(port: number, host = '127.0.0.1'): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ port, host, noDelay: true });
      s.once('error', reject);
      s.once('connect', () => {
        s.removeListener('error', reject);
        resolve(new Wire(s));
      });
    });
  }

  /** TLS-first ("direct") connection; rejects when the handshake fails. */
  static connectTls(port: number, opts: tls.ConnectionOptions, host = '127.0.0.1'): Promise<Wire> {
    return new Promise((resolve, reject) => {
      const s = tls.connect({ port, host, ...opts });
      s.once('error', reject);
      s.once('secureConnect', () => {
        s.removeListener('error', reject);
        resolve(new Wire(s));
      });
    });
  }

  get closed(): boolean {
    return this.#ended;
  }

  get error(): string | null {
    return this.#error;
  }

  /** Bytes received and not consumed yet. */
  get pending(): Buffer {
    return this.#buf;
  }

  write(...bufs: Buffer[]): void {
    this.socket.write(bufs.length === 1 ? (bufs[0] as Buffer) : Buffer.concat(bufs));
  }

  #notify(): void {
    const w = this.#wake;
    this.#wake = null;
    w?.();
  }

  /** Waits for more input, the end, or the deadline; false on the deadline. */
  #wait(deadline: number): Promise<boolean> {
    const ms = deadline - Date.now();
    if (ms <= 0) return Promise.resolve(false);
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        this.#wake = null;
        resolve(false);
      }, ms);
      this.#wake = () => {
        clearTimeout(t);
        resolve(true);
      };
    });
  }

  #take(n: number): Buffer {
    const out = this.#buf.subarray(0, n);
    this.#buf = this.#buf.subarray(n);
    return Buffer.from(out);
  }

  /** Exactly n bytes; rejects when the peer closes first or on timeout. */
  async readBytes(n: number, timeoutMs = DEFAULT_TIMEOUT): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.#buf.length < n) {
      if (this.#ended)
        throw new Error(`connection closed after ${describeBytes(this.#buf)} while waiting for ${n} bytes (${this.#error ?? 'eof'})`);
      if (!(await this.#wait(deadline))) throw new Error(`timeout waiting for ${n} bytes, have ${describeBytes(this.#buf)}`);
    }
    return this.#take(n);
  }

  /** The next complete backend message. */
  async readMessage(timeoutMs = DEFAULT_TIMEOUT): Promise<BackendMessage> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (this.#buf.length >= 5) {
        const len = this.#buf.readInt32BE(1);
        if (len < 4) throw new Error(`bad message length ${len} in ${describeBytes(this.#buf)}`);
        if (this.#buf.length >= len + 1) {
          const frame = this.#take(len + 1);
          return { type: String.fromCharCode(frame[0] as number), frame, body: frame.subarray(5) };
        }
      }
      if (this.#ended)
        throw new Error(`connection closed while waiting for a message; have ${describeBytes(this.#buf)} (${this.#error ?? 'eof'})`);
      if (!(await this.#wait(deadline))) throw new Error(`timeout waiting for a message; have ${describeBytes(this.#buf)}`);
    }
  }

  /** Messages until (and including) one whose type is in `types`. ErrorResponse stops too. */
  async readUntil(types: string, timeoutMs = DEFAULT_TIMEOUT): Promise<BackendMessage[]> {
    const out: BackendMessage[] = [];
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = await this.readMessage(Math.max(1, deadline - Date.now()));
      out.push(m);
      if (types.includes(m.type) || m.type === 'E') return out;
    }
  }

  /** Everything until the peer closes, or what arrived before the timeout (closed = false). */
  async readUntilClose(timeoutMs = DEFAULT_TIMEOUT): Promise<ReadResult> {
    const deadline = Date.now() + timeoutMs;
    while (!this.#ended) {
      if (!(await this.#wait(deadline))) break;
    }
    return { data: this.#take(this.#buf.length), closed: this.#ended, error: this.#error };
  }

  /**
   * After an 'S': hands the raw socket to tls.connect and returns a client on
   * the TLS socket. Nothing may be pending (bytes after 'S' would be an attack).
   */
  upgradeTls(opts: tls.ConnectionOptions): Promise<Wire> {
    if (this.#buf.length > 0) throw new Error(`unexpected bytes before TLS: ${describeBytes(this.#buf)}`);
    const raw = this.socket;
    raw.removeListener('data', this.#onData);
    raw.removeListener('end', this.#onEnd);
    raw.removeListener('close', this.#onEnd);
    raw.removeListener('error', this.#onError);
    // Keep an error listener: a reset while TLS owns the socket must not crash the test process.
    raw.on('error', () => {});
    return new Promise((resolve, reject) => {
      const s = tls.connect({ ...opts, socket: raw });
      s.once('error', reject);
      s.once('secureConnect', () => {
        s.removeListener('error', reject);
        resolve(new Wire(s));
      });
    });
  }

  /** Sends SSLRequest, expects 'S', upgrades. */
  async negotiateTls(opts: tls.ConnectionOptions): Promise<Wire> {
    this.write(sslRequest());
    const answer = await this.readBytes(1);
    if (answer.toString('latin1') !== 'S') throw new Error(`SSLRequest answered ${JSON.stringify(answer.toString('latin1'))}`);
    return this.upgradeTls(opts);
  }

  close(): void {
    this.socket.destroy();
  }
}

// ---------------------------------------------------------------- login

export interface LoginResult {
  /** Every message received from the AuthenticationSASL on (ReadyForQuery last). */
  messages: BackendMessage[];
  params: Map<string, string>;
  backendKey: { pid: number; key: Buffer } | null;
}

/**
 * Completes a SCRAM-SHA-256 login on a connection whose StartupMessage was
 * sent. `gs2Flag` 'n' = no channel binding support, 'y' = supported but not
 * offered (what libpq sends on TLS when the server offers no -PLUS).
 * Throws with the server's error when it refuses.
 */
export async function scramLogin(w: Wire, password: string, gs2Flag: 'n' | 'y' = 'n'): Promise<LoginResult> {
  const messages: BackendMessage[] = [];
  const expectAuth = async (code: number): Promise<Buffer> => {
    const m = await w.readMessage();
    messages.push(m);
    if (m.type === 'E')
      throw Object.assign(new Error(`server refused: ${JSON.stringify(Object.fromEntries(errorFields(m).fields))}`), {
        fields: errorFields(m),
      });
    const a = decodeAuth(m.frame);
    if (a.code !== code) throw new Error(`expected authentication code ${code}, got ${a.code}`);
    return Buffer.from(a.data);
  };
  const mechs = decodeSaslMechanisms(await expectAuth(AUTH.SASL));
  if (!mechs.includes('SCRAM-SHA-256')) throw new Error(`SCRAM-SHA-256 not offered: ${mechs.join(',')}`);

  const gs2 = `${gs2Flag},,`;
  const clientNonce = randomBytes(18).toString('base64');
  const clientFirstBare = `n=,r=${clientNonce}`;
  w.write(encodeSaslInitial('SCRAM-SHA-256', Buffer.from(gs2 + clientFirstBare)));

  const serverFirst = (await expectAuth(AUTH.SASLContinue)).toString('utf8');
  const attrs = new Map(serverFirst.split(',').map((kv) => [kv.slice(0, 1), kv.slice(2)] as [string, string]));
  const nonce = attrs.get('r') ?? '';
  const salt = Buffer.from(attrs.get('s') ?? '', 'base64');
  const iterations = Number(attrs.get('i'));
  if (!nonce.startsWith(clientNonce) || !(iterations > 0)) throw new Error(`bad server-first-message: ${serverFirst}`);

  const salted = pbkdf2Sync(password, salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', salted).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const withoutProof = `c=${Buffer.from(gs2).toString('base64')},r=${nonce}`;
  const authMessage = `${clientFirstBare},${serverFirst},${withoutProof}`;
  const signature = createHmac('sha256', storedKey).update(authMessage).digest();
  const proof = Buffer.alloc(32);
  for (let i = 0; i < 32; i++) proof[i] = (clientKey[i] as number) ^ (signature[i] as number);
  w.write(encodeSaslResponse(Buffer.from(`${withoutProof},p=${proof.toString('base64')}`)));

  const serverFinal = (await expectAuth(AUTH.SASLFinal)).toString('utf8');
  const serverKey = createHmac('sha256', salted).update('Server Key').digest();
  const expected = createHmac('sha256', serverKey).update(authMessage).digest('base64');
  if (serverFinal !== `v=${expected}`) throw new Error(`bad server signature: ${serverFinal}`);
  await expectAuth(AUTH.Ok);

  const params = new Map<string, string>();
  let backendKey: LoginResult['backendKey'] = null;
  for (;;) {
    const m = await w.readMessage();
    messages.push(m);
    if (m.type === 'E') throw new Error(`server refused: ${JSON.stringify(Object.fromEntries(errorFields(m).fields))}`);
    if (m.frame[0] === BE.ParameterStatus) {
      const [k, v] = m.body.toString('utf8').split('\0');
      params.set(k ?? '', v ?? '');
    } else if (m.frame[0] === BE.BackendKeyData) {
      backendKey = { pid: m.body.readInt32BE(0), key: Buffer.from(m.body.subarray(4)) };
    } else if (m.frame[0] === BE.ReadyForQuery) {
      return { messages, params, backendKey };
    }
  }
}

/** Runs one simple query; returns the text of each row's columns (null for NULL). */
export async function simpleQuery(w: Wire, sql: string): Promise<Array<Array<string | null>>> {
  w.write(encodeQuery(sql));
  const rows: Array<Array<string | null>> = [];
  let error: ErrorFields | null = null;
  for (;;) {
    const m = await w.readMessage();
    if (m.type === 'D') {
      const n = m.body.readInt16BE(0);
      const row: Array<string | null> = [];
      let off = 2;
      for (let i = 0; i < n; i++) {
        const len = m.body.readInt32BE(off);
        off += 4;
        if (len < 0) row.push(null);
        else {
          row.push(m.body.toString('utf8', off, off + len));
          off += len;
        }
      }
      rows.push(row);
    } else if (m.type === 'E') {
      error = errorFields(m);
    } else if (m.type === 'Z') {
      if (error !== null) throw new Error(`query failed: ${error.code} ${error.message}`);
      return rows;
    }
  }
}
