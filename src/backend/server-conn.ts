// A server connection Postern logged into itself: transport (TCP, SSLRequest,
// TLS), StartupMessage, the authentication exchange answered from Postern's
// own credentials (cleartext, MD5, SCRAM-SHA-256 with channel binding when the
// link is TLS and the server offers it, or SCRAM keys recovered from a client's
// proof), then ParameterStatus and BackendKeyData until ReadyForQuery.
// After login the connection is handed to pools and linked to one client at a
// time; its bytes go to whatever ServerLink is attached. It owns the ledger of
// what it still owes (expect.ts) and the settings its session has (reported
// ones from ParameterStatus, others as Postern set them), and tells its pool
// exactly once when it ends, however it ends.

import { createHash } from 'node:crypto';
import type net from 'node:net';
import type tls from 'node:tls';
import { md5Response } from '../auth/md5.ts';
import { ScramClient, type ScramKeys, tlsServerEndPoint } from '../auth/scram.ts';
import { PosternError } from '../errors.ts';
import type { Logger } from '../observability/log.ts';
import {
  decodeAuth,
  decodeBackendKeyData,
  decodeNotice,
  decodeParameterStatus,
  decodeReadyForQuery,
  decodeSaslMechanisms,
  type NoticeFields,
} from '../protocol/backend.ts';
import { WriteBatch } from '../protocol/coalesce.ts';
import { AUTH, BE, VALID_BACKEND } from '../protocol/codes.ts';
import { type FrameSink, MessageStream } from '../protocol/framer.ts';
import {
  encodeBind,
  encodeExecute,
  encodeParse,
  encodePassword,
  encodeSaslInitial,
  encodeSaslResponse,
  SYNC,
  TERMINATE,
} from '../protocol/frontend.ts';
import { Reader } from '../protocol/reader.ts';
import { encodeCancel, encodeStartup } from '../protocol/startup.ts';
import { ProtocolViolation, type ViolationKind } from '../protocol/violation.ts';
import type { ServerTlsOptions } from '../tls/contexts.ts';
import { connectServer, type ReadInto } from './connect.ts';
import { Ledger } from './expect.ts';
import type { ServerStatements } from './prepared.ts';

export const SV = {
  Login: 'login',
  Idle: 'idle',
  Active: 'active',
  /**
   * Not lendable yet: running server_reset_query or server_check_query, being
   * cleaned after its client left, or waiting for a cancel request to land
   * (PgBouncer's "tested").
   */
  Tested: 'tested',
  Closed: 'closed',
} as const;
export type ServerState = (typeof SV)[keyof typeof SV];

export interface ServerTarget {
  /** The database as the admin console names it: the config key, "tenant/key" in a tenant. */
  name: string;
  /** The tenant whose database it is (null: the top-level databases); part of the pool key. */
  tenant?: string | null;
  host: string;
  port: number;
  /** Database name on the server. */
  dbname: string;
  tls: ServerTlsOptions;
  connectTimeout: number;
  /** "host:port" when the database has several servers (its pools are told apart by it); null for a single server. */
  server?: string | null;
}

/** What Postern answers the server's authentication request with. */
export interface ServerSecret {
  password?: string;
  /** Stored MD5 hash ('md5' + 32 hex): enough to answer MD5 without the password. */
  md5?: string;
  /** SCRAM passthrough: ClientKey recovered from a client's proof, ServerKey from the verifier. */
  scramKeys?: { clientKey: Buffer; serverKey: Buffer };
}

/** A login the server refused: carries the server's own error fields for the client. */
/**
 * A server login (or Postern's own query) that failed: the SQLSTATE is the
 * server's when `fields` holds its ErrorResponse, else Postern's own reason.
 */
export class ServerLoginError extends PosternError {
  readonly fields: NoticeFields | null;
  readonly sqlstate: string;
  constructor(sqlstate: string, message: string, fields: NoticeFields | null = null) {
    super(message, 'ERR_SERVER_LOGIN');
    this.name = 'ServerLoginError';
    this.sqlstate = sqlstate;
    this.fields = fields;
  }
}

export interface ServerLink {
  /**
   * Called before (true) and after (false) the frames of one received chunk
   * are delivered, so the link can batch what it writes in between (cork).
   * The pair always goes to the same link, even when the chunk detaches it.
   * At the end (false), returns true when the link still refers to bytes of
   * the chunk (queued for a client that is not keeping up): the connection
   * then reads into fresh memory instead of reusing it.
   */
  onServerChunk?(start: boolean): boolean;
  onServerRun(buf: Buffer, start: number, end: number): void;
  onServerMessage(type: number, buf: Buffer, start: number, end: number): void;
  /** A frame of a peeked type (see attach): it is forwarded in a run as well; only look. */
  onServerPeek?(type: number, buf: Buffer, start: number, end: number): void;
  onServerViolation(kind: ViolationKind, detail: string): void;
  onServerClosed(conn: ServerConn): void;
  onServerDrain(): void;
  /** Something unexpected was thrown while this link handled the connection's bytes (a bug): end what the link serves. */
  onServerError?(err: Error): void;
}

/** A custom (unreported) setting whose value on the connection is not known: it must be set or reset before anyone relies on it. */
export const UNKNOWN_VALUE = '\u0000unknown';

const ALL_BACKEND = VALID_BACKEND;

/**
 * Derived SCRAM keys per (server, user, password): PBKDF2 runs once, off the
 * event loop, and later logins reuse its result. The password's hash is part
 * of the key, so a corrected password never meets keys derived from the old one.
 */
const scramKeyCaches = new Map<string, Map<string, ScramKeys>>();

function keyCacheFor(target: ServerTarget, user: string, password: string): Map<string, ScramKeys> {
  const id = `${target.host}:${target.port}/${user}/${createHash('sha256').update(password).digest('base64')}`;
  let c = scramKeyCaches.get(id);
  if (c === undefined) {
    if (scramKeyCaches.size > 10_000) scramKeyCaches.clear();
    c = new Map();
    scramKeyCaches.set(id, c);
  }
  return c;
}

interface LoginState {
  secret: ServerSecret;
  scram: ScramClient | null;
  resolve: () => void;
  reject: (e: Error) => void;
}
/** Size of a plaintext link's read buffer (libuv's default read size). */
const READ_BUFFER = 64 * 1024;

let nextServerId = 1;
let serverIdStride = 1;

/** Server connection ids of worker `index` of `count`: index+1, index+1+count, ... (unique over all workers). */
export function setServerIdSpace(index: number, count: number): void {
  nextServerId = index + 1;
  serverIdStride = count;
}

function takeServerId(): number {
  const id = nextServerId;
  nextServerId += serverIdStride;
  return id;
}

export class ServerConn implements FrameSink {
  readonly id = takeServerId();
  readonly target: ServerTarget;
  readonly user: string;
  /** Settings the server reports (ParameterStatus), by lower-case name (GUC names are case-insensitive). */
  readonly params = new Map<string, string>();
  /** The server's spelling of each reported name (DateStyle, TimeZone ...), by lower-case name. */
  readonly paramNames = new Map<string, string>();
  /** What this connection still owes, in order. */
  readonly ledger = new Ledger();
  readonly createdAt = Date.now();
  lastUsedAt = Date.now();
  key: { pid: number; key: Buffer } | null = null;
  tls: { version: string; cipher: string } | null = null;
  /** Transaction status of the last ReadyForQuery. */
  txStatus = 0x49;
  state: ServerState = SV.Login;
  /** The relayed login reached ReadyForQuery (set by the session in passthrough). */
  markLoggedIn(): void {
    this.state = SV.Active;
  }
  /** Free-form owner tag (the pool it belongs to). */
  pool: unknown = null;
  /** Which of its pool's lists holds it (written by the pool only; `state` the connection also sets itself). */
  listedIn: ServerState | null = null;
  /** The content key (ClientSettings.key) of the settings this connection's session has now; null: not known exactly. */
  settingsKey: string | null = null;
  /** Called once when the connection ends, however it ends (the pool frees its slot). */
  onGone: ((conn: ServerConn) => void) | null = null;
  /**
   * Unreported settings changed on this connection's session (by Postern or
   * by a client), by lower-case name: the value now, or UNKNOWN_VALUE. A name
   * absent here has the session's default.
   */
  readonly custom = new Map<string, string>();
  /** The settings object of the client whose settings this connection has as they were at `settingsVersion` (skip the comparison when it returns unchanged). */
  settingsOf: object | null = null;
  settingsVersion = -1;
  /** The client that used it last (sequences: see pool.discard_sequences). */
  lastClient = 0;
  /** A statement that may have used a sequence ran here since the last DISCARD SEQUENCES: currval/lastval could show it to another client. */
  sequencesUsed = false;
  /** Cancel requests sent for this connection and not yet delivered: it must not be lent to anyone else meanwhile. */
  cancelsInFlight = 0;
  #cancelWaiters: Array<() => void> = [];
  /** Id of the client session this connection serves now (admin output); null when idle. */
  owner: number | null = null;
  /** RECONNECT from the admin console: close it when its client gives it back instead of reusing it. */
  closeNeeded = false;
  /** Protocol-level statements Postern prepared here (transaction mode); created by the first session that needs it. */
  statements: ServerStatements | null = null;

  /** After a reset query (DISCARD ALL): nothing Postern or a client set or prepared survives. */
  resetApplied(): void {
    this.custom.clear();
    this.settingsOf = null;
    this.settingsKey = null;
    this.sequencesUsed = false;
    this.statements?.clear();
  }

  /** A reported setting, by any spelling of its name. */
  param(name: string): string | undefined {
    return this.params.get(name.toLowerCase());
  }

  #setParam(name: string, value: string): void {
    const key = name.toLowerCase();
    this.params.set(key, value);
    if (!this.paramNames.has(key)) this.paramNames.set(key, name);
  }

  /** Reported settings in the server's spelling (a greeting's ParameterStatus). */
  reportedSettings(): Map<string, string> {
    const out = new Map<string, string>();
    for (const [k, v] of this.params) out.set(this.paramNames.get(k) ?? k, v);
    return out;
  }

  /**
   * Sends a CancelRequest for this connection's backend on a new connection
   * to its server. Until the server has taken it (closed that connection),
   * cancelsInFlight counts it: a pool must not lend this connection to anyone
   * else meanwhile, or the cancel could hit their query.
   */
  sendCancel(log: Logger): void {
    const key = this.key;
    if (key === null) return;
    const t = this.target;
    this.cancelsInFlight++;
    connectServer(t.host, t.port, t.tls, t.connectTimeout).then(
      (c) => {
        c.socket.on('error', () => {});
        c.socket.on('close', () => this.#cancelDone());
        c.socket.end(encodeCancel(key.pid, key.key));
        c.socket.resume();
      },
      (err: Error) => {
        log.warn({ server: this.id, err: err.message }, 'cancel could not reach the server');
        this.#cancelDone();
      },
    );
  }

  #cancelDone(): void {
    if (--this.cancelsInFlight > 0) return;
    const w = this.#cancelWaiters;
    this.#cancelWaiters = [];
    for (const f of w) f();
  }

  /** Calls `f` once no cancel request for this connection is in flight (at once when none is). */
  whenCancelsDone(f: () => void): void {
    if (this.cancelsInFlight === 0) f();
    else this.#cancelWaiters.push(f);
  }
  readonly log: Logger;
  #socket: net.Socket | null = null;
  /** Writes to #socket, joined into runs while corked. */
  #batch: WriteBatch | null = null;
  #stream: MessageStream | null = null;
  #link: ServerLink | null = null;
  #closed = false;
  #login: LoginState | null = null;

  constructor(target: ServerTarget, user: string, log: Logger) {
    this.target = target;
    this.user = user;
    this.log = log.child({ server: this.id });
  }

  get socket(): net.Socket | null {
    return this.#socket;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /**
   * TCP (and TLS per the target), then the framer and socket handlers wired to
   * this connection. The socket stays paused: the caller writes its startup
   * and resumes, so nothing arrives before it is ready for it.
   */
  async #transport(inspect: Uint8Array, maxMessage: number): Promise<net.Socket> {
    const t = this.target;
    const transport = await connectServer(t.host, t.port, t.tls, t.connectTimeout, this.#readInto);
    const socket = transport.socket;
    this.#socket = socket;
    this.#batch = new WriteBatch(socket);
    this.tls = transport.tls;
    this.#stream = new MessageStream(this, ALL_BACKEND, inspect, maxMessage);
    if (!transport.onread) socket.on('data', (chunk: Buffer) => this.#onChunk(chunk));
    socket.on('error', (err: Error) => this.log.debug({ err: (err as NodeJS.ErrnoException).code ?? err.message }, 'server socket error'));
    socket.on('close', () => this.#onClose());
    socket.on('drain', () => this.#link?.onServerDrain());
    return socket;
  }

  /**
   * Reads on a plaintext link land in one reused buffer (no allocation per
   * read, nothing for the garbage collector while a large result streams).
   * The buffer is reused only when nothing refers to the last read's bytes:
   * not while logging in (authentication state may keep a view), and not
   * when the link still has some of them queued for its client.
   */
  #rbuf: Buffer = Buffer.allocUnsafe(READ_BUFFER);
  #readInto: ReadInto = {
    buffer: () => this.#rbuf,
    callback: (n: number, buf: Buffer): boolean => {
      const retained = this.#onChunk(buf.subarray(0, n));
      if (retained || this.#login !== null) this.#rbuf = Buffer.allocUnsafe(READ_BUFFER);
      return true;
    },
  };

  /** One received chunk through the framer; true when the link may still refer to its bytes. */
  #onChunk(chunk: Buffer): boolean {
    const link = this.#link;
    try {
      if (link?.onServerChunk === undefined) {
        this.#stream?.push(chunk);
        // No batching link (a pool's drain, a query of Postern's own): they copy what they keep.
        return false;
      }
      link.onServerChunk(true);
      let retained = true;
      try {
        this.#stream?.push(chunk);
      } finally {
        retained = link.onServerChunk(false);
      }
      return retained;
    } catch (e) {
      // The one catch of this connection's data path: a malformed server
      // message ends this connection (and what it serves), never the process.
      this.#stream?.kill();
      if (e instanceof ProtocolViolation) this.onViolation(e.kind, e.message);
      else {
        this.log.error({ err: (e as Error).message, stack: (e as Error).stack }, 'internal error on a server connection');
        const l = this.#link;
        this.destroy();
        l?.onServerError?.(e as Error);
      }
      return true;
    }
  }

  /** Connects and logs in; resolves at the first ReadyForQuery. */
  async login(secret: ServerSecret, params: Iterable<[string, string]>, maxMessage: number): Promise<void> {
    const startup: [string, string][] = [
      ['user', this.user],
      ['database', this.target.dbname],
    ];
    for (const [k, v] of params) if (k !== 'user' && k !== 'database') startup.push([k, v]);
    const socket = await this.#transport(ALL_BACKEND, maxMessage);
    await new Promise<void>((resolve, reject) => {
      this.#login = { secret, scram: null, resolve, reject };
      socket.write(encodeStartup(3 << 16, startup));
      socket.resume();
    });
  }

  /**
   * Connects and sends a client's own StartupMessage, with `link` attached
   * from the first byte: the session relays the server's authentication
   * exchange itself (auth passthrough). The session marks the login done.
   */
  async openRelay(startup: Buffer, link: ServerLink, inspect: Uint8Array, maxMessage: number): Promise<void> {
    const socket = await this.#transport(inspect, maxMessage);
    this.#link = link;
    socket.write(startup);
    socket.resume();
  }

  /**
   * Runs one statement with text parameters over the extended protocol on an
   * idle, unlinked connection and returns its rows as text (NULL as null).
   * For Postern's own lookups (auth_query); rejects with the server's error.
   */
  query(sql: string, params: readonly string[]): Promise<Array<Array<string | null>>> {
    return new Promise((resolve, reject) => {
      const rows: Array<Array<string | null>> = [];
      let error: ServerLoginError | null = null;
      const conn = this;
      const link: ServerLink = {
        onServerRun() {},
        onServerMessage(type, buf, start, end) {
          if (type === BE.DataRow) {
            const r = new Reader(buf, start + 5, end);
            const n = r.int16();
            const row: Array<string | null> = [];
            for (let i = 0; i < n; i++) {
              const len = r.int32();
              row.push(len < 0 ? null : r.bytes(len).toString('utf8'));
            }
            rows.push(row);
          } else if (type === BE.ErrorResponse) {
            const e = decodeNotice(buf, start, end);
            error = new ServerLoginError(e.code ?? 'XX000', e.message ?? 'query failed', e);
          } else if (type === BE.ReadyForQuery) {
            conn.detach();
            if (error !== null) reject(error);
            else resolve(rows);
          }
        },
        onServerViolation(_kind, detail) {
          reject(new ServerLoginError('08P01', `server sent an invalid message: ${detail}`));
        },
        onServerClosed() {
          reject(new ServerLoginError('08006', 'server closed the connection during a query'));
        },
        onServerDrain() {},
      };
      this.attach(link, ALL_BACKEND);
      const w = [encodeParse('', sql), encodeBind('', '', params), encodeExecute('', 0), SYNC];
      this.write(Buffer.concat(w));
    });
  }

  /**
   * Routes the server's bytes to `link`, inspecting the types marked in
   * `inspect` and showing those in `peek` to link.onServerPeek.
   */
  attach(link: ServerLink, inspect: Uint8Array, peek: Uint8Array | null = null): void {
    this.#link = link;
    this.#stream?.setInspect(inspect);
    this.#stream?.setPeek(peek);
    this.lastUsedAt = Date.now();
  }

  /** Changes what the attached link reads whole, from the next frame on. */
  setInspect(inspect: Uint8Array): void {
    this.#stream?.setInspect(inspect);
  }

  get link(): ServerLink | null {
    return this.#link;
  }

  detach(): void {
    this.#link = null;
    this.lastUsedAt = Date.now();
  }

  get atBoundary(): boolean {
    return this.#stream?.atBoundary ?? true;
  }

  write(buf: Buffer): boolean {
    return this.#batch?.write(buf) ?? false;
  }

  /** write() of buf[start, end) (joined to the run without a view of its own while corked). */
  writeRange(buf: Buffer, start: number, end: number): boolean {
    return this.#batch?.writeRange(buf, start, end) ?? false;
  }

  pause(): void {
    this.#socket?.pause();
  }

  /** Batch the writes until uncork() into one write (coalesce.ts: the socket is corked only when they are more than one run); frames of one chunk are joined back into runs. */
  cork(): void {
    this.#batch?.begin();
  }

  uncork(): void {
    this.#batch?.end();
  }

  /** Reads again after pause(); a no-op when not paused (resume() on a flowing socket still schedules work). */
  resume(): void {
    const s = this.#socket;
    if (s?.isPaused()) s.resume();
  }

  /**
   * Closes gracefully. `terminate`: send Terminate first; only valid when
   * Postern's writes to the server sit between messages.
   */
  close(terminate = true): void {
    if (this.#closed) return;
    this.#end();
    const s = this.#socket;
    // What a batch still joins goes first (its frames precede the Terminate).
    this.#batch?.end();
    if (s !== null && !s.destroyed) {
      if (terminate) s.write(TERMINATE);
      s.end();
      setTimeout(() => s.destroy(), 2000).unref();
    }
  }

  destroy(): void {
    if (!this.#closed) this.#end();
    this.#batch?.drop();
    this.#socket?.destroy();
  }

  /** The one place a connection ends: nothing it owes will come, its statements are gone, its pool hears it once. */
  #end(): void {
    this.#closed = true;
    this.statements?.clear();
    this.state = SV.Closed;
    this.#stream?.kill();
    this.ledger.abandon();
    const gone = this.onGone;
    this.onGone = null;
    gone?.(this);
  }

  #onClose(): void {
    const wasClosed = this.#closed;
    if (!wasClosed) this.#end();
    if (this.#login !== null) {
      const l = this.#login;
      this.#login = null;
      l.reject(new ServerLoginError('08006', 'server closed the connection during login'));
      return;
    }
    if (!wasClosed) this.#link?.onServerClosed(this);
  }

  // ---- FrameSink: during login everything is inspected; afterwards, per attach().

  onPeek(type: number, buf: Buffer, start: number, end: number): void {
    this.#link?.onServerPeek?.(type, buf, start, end);
  }

  onRun(buf: Buffer, start: number, end: number): void {
    if (this.#link === null) {
      this.#unsolicited();
      return;
    }
    this.#link.onServerRun(buf, start, end);
  }

  /**
   * An idle server owes nothing, so anything it sends while no one is linked
   * (a FATAL before it exits, a shutdown notice) means it is no longer clean:
   * close it now, before a pool lends it to someone.
   */
  #unsolicited(): void {
    if (this.#closed) return;
    this.log.info({ user: this.user, database: this.target.dbname }, 'server sent data while idle; closing it');
    this.destroy();
  }

  onMessage(type: number, buf: Buffer, start: number, end: number): void {
    if (this.#login !== null) {
      try {
        this.#onLoginMessage(type, buf, start, end);
      } catch (e) {
        const l = this.#login;
        this.#login = null;
        this.destroy();
        l?.reject(e instanceof ServerLoginError ? e : new ServerLoginError('08P01', `server login failed: ${(e as Error).message}`));
      }
      return;
    }
    if (this.#link === null) {
      this.#unsolicited();
      return;
    }
    if (type === BE.ReadyForQuery) this.txStatus = buf[start + 5] as number;
    else if (type === BE.ParameterStatus) {
      // Reported settings are tracked whoever is linked, so a pooled
      // connection always knows its own client_encoding, TimeZone, ...
      let kv: [string, string];
      try {
        kv = decodeParameterStatus(buf, start, end);
      } catch {
        throw new ProtocolViolation('malformed', 'broken ParameterStatus packet');
      }
      this.#setParam(kv[0], kv[1]);
    }
    this.#link?.onServerMessage(type, buf, start, end);
  }

  onViolation(kind: ViolationKind, detail: string): void {
    if (this.#login !== null) {
      const l = this.#login;
      this.#login = null;
      this.destroy();
      l.reject(new ServerLoginError('08P01', `server sent an invalid message: ${detail}`));
      return;
    }
    this.log.warn({ kind, detail }, 'protocol violation by server');
    const link = this.#link;
    this.destroy();
    link?.onServerViolation(kind, detail);
  }

  #onLoginMessage(type: number, buf: Buffer, start: number, end: number): void {
    const login = this.#login;
    const socket = this.#socket;
    if (login === null || socket === null) return;
    switch (type) {
      case BE.Authentication:
        this.#onAuth(login, socket, buf, start, end);
        return;
      case BE.ParameterStatus: {
        const [k, v] = decodeParameterStatus(buf, start, end);
        this.#setParam(k, v);
        return;
      }
      case BE.BackendKeyData:
        this.key = decodeBackendKeyData(buf, start, end);
        return;
      case BE.NoticeResponse:
      case BE.NegotiateProtocolVersion:
        return;
      case BE.ErrorResponse: {
        const e = decodeNotice(buf, start, end);
        throw new ServerLoginError(e.code ?? '08P01', e.message ?? 'server refused the login', e);
      }
      case BE.ReadyForQuery: {
        this.txStatus = decodeReadyForQuery(buf, start, end);
        this.#login = null;
        this.state = SV.Idle;
        this.log.debug({ user: this.user, database: this.target.dbname, tls: this.tls?.version ?? null }, 'server login ok');
        login.resolve();
        return;
      }
      default:
        throw new ProtocolViolation('malformed', `unexpected message ${String.fromCharCode(type)} during login`);
    }
  }

  #onAuth(login: LoginState, socket: net.Socket, buf: Buffer, start: number, end: number): void {
    const auth = decodeAuth(buf, start, end);
    const secret = login.secret;
    switch (auth.code) {
      case AUTH.Ok:
        // A server that skips SCRAM's final message never proved it knows the
        // verifier: do not accept the login.
        if (login.scram !== null && !login.scram.done) throw new ServerLoginError('28000', 'server ended SCRAM without its final message');
        return;
      case AUTH.CleartextPassword:
        if (secret.password === undefined)
          throw new ServerLoginError('28P01', 'server asks for a cleartext password, and Postern holds none for this user');
        socket.write(encodePassword(secret.password));
        return;
      case AUTH.MD5Password: {
        const hash = secret.md5 ?? null;
        if (hash === null && secret.password === undefined)
          throw new ServerLoginError('28P01', 'server asks for MD5, and Postern holds no password or MD5 hash for this user');
        socket.write(encodePassword(md5Response({ user: this.user, password: secret.password, md5: hash ?? undefined }, auth.data)));
        return;
      }
      case AUTH.SASL: {
        const mechs = decodeSaslMechanisms(auth.data);
        const peer = this.tls !== null ? (socket as tls.TLSSocket).getPeerCertificate(true) : null;
        const binding = peer?.raw ? tlsServerEndPoint(peer.raw) : undefined;
        let client: ScramClient;
        if (secret.scramKeys !== undefined)
          client = new ScramClient({ keys: secret.scramKeys, channelBinding: binding, tls: this.tls !== null });
        else if (secret.password !== undefined)
          client = new ScramClient({
            password: secret.password,
            cache: keyCacheFor(this.target, this.user, secret.password),
            channelBinding: binding,
            tls: this.tls !== null,
          });
        else throw new ServerLoginError('28P01', 'server asks for SCRAM, and Postern holds no password or SCRAM keys for this user');
        client.chooseMechanism(mechs);
        login.scram = client;
        const first = client.initial();
        socket.write(encodeSaslInitial(first.mechanism, first.data));
        return;
      }
      case AUTH.SASLContinue: {
        const scram = login.scram;
        if (scram === null) throw new ServerLoginError('08P01', 'SASLContinue without SASL');
        scram.handleContinue(Buffer.from(auth.data)).then(
          (final) => socket.write(encodeSaslResponse(final)),
          (e: Error) => {
            const l = this.#login;
            this.#login = null;
            this.destroy();
            l?.reject(new ServerLoginError('28P01', `SCRAM with the server failed: ${e.message}`));
          },
        );
        return;
      }
      case AUTH.SASLFinal: {
        const scram = login.scram;
        if (scram === null) throw new ServerLoginError('08P01', 'SASLFinal without SASL');
        scram.handleFinal(Buffer.from(auth.data));
        return;
      }
      default:
        throw new ServerLoginError('28000', `server requests an authentication method Postern does not support (${auth.code})`);
    }
  }
}
