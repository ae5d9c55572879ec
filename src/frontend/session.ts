// One client session, from the first byte to the close: negotiation
// (SSLRequest, GSSENCRequest, direct TLS, CancelRequest), the TLS upgrade,
// the StartupMessage, the server connection, the relayed authentication
// exchange, and then byte-exact forwarding in both directions with
// backpressure. Session mode: one server connection per client session.
//
// Every state change goes through #setState. Errors the client may see are
// sent as ErrorResponse with Postgres's SQLSTATE; anything unexpected is
// logged and the client gets a generic error.

import { timingSafeEqual } from 'node:crypto';
import type net from 'node:net';
import type tls from 'node:tls';
import { connectServer, ServerConnectError } from '../backend/connect.ts';
import type { DatabaseConfig } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import {
  decodeAuth,
  decodeBackendKeyData,
  decodeNegotiateProtocolVersion,
  decodeNotice,
  decodeSaslMechanisms,
  type ErrorSpec,
  encodeAuthSasl,
  encodeBackendKeyData,
  encodeError,
  encodeNegotiateProtocolVersion,
} from '../protocol/backend.ts';
import { AUTH, BE, FE, LATEST_MINOR, VALID_BACKEND, VALID_FRONTEND } from '../protocol/codes.ts';
import { BAD_LENGTH, type FrameSink, MessageStream, NEED_MORE, startupFrame } from '../protocol/framer.ts';
import { TERMINATE } from '../protocol/frontend.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { decodeStartup, encodeCancel, encodeStartup, type StartupPacket } from '../protocol/startup.ts';
import { ProtocolViolation, type ViolationKind } from '../protocol/violation.ts';
import { ALPN_POSTGRESQL } from '../tls/contexts.ts';
import type { Context, SessionHandle } from './context.ts';

export const STATE = {
  Negotiating: 'negotiating',
  TlsHandshake: 'tls_handshake',
  Connecting: 'connecting',
  Authenticating: 'authenticating',
  Active: 'active',
  Closed: 'closed',
} as const;
export type SessionState = (typeof STATE)[keyof typeof STATE];

const BYTE_S = Buffer.from('S');
const BYTE_N = Buffer.from('N');
const TLS_HANDSHAKE_RECORD = 0x16;

function table(codes: number[]): Uint8Array {
  const t = new Uint8Array(256);
  for (const c of codes) t[c] = 1;
  return t;
}
/** Server messages Postern must act on while the session starts. */
const SERVER_INSPECT_STARTUP = table([
  BE.Authentication,
  BE.BackendKeyData,
  BE.NegotiateProtocolVersion,
  BE.ErrorResponse,
  BE.ReadyForQuery,
]);
/** Steady state: only errors, to know whether the server said goodbye before closing. */
const SERVER_INSPECT_ACTIVE = table([BE.ErrorResponse]);
const CLIENT_INSPECT = table([FE.Terminate]);
/** While authenticating: SASLInitialResponse too (to catch a channel-binding downgrade the server would refuse). */
const CLIENT_INSPECT_AUTH = table([FE.Terminate, FE.Password]);
const GS2_CLIENT_SUPPORTS_CB = 0x79; // 'y'

/** The GS2 channel-binding flag byte of a SASLInitialResponse frame, or -1. */
function saslGs2Flag(buf: Buffer, start: number, end: number): number {
  const nul = buf.indexOf(0, start + 5);
  if (nul < 0 || nul + 5 >= end) return -1;
  const dataLen = buf.readInt32BE(nul + 1);
  return dataLen > 0 && nul + 5 < end ? (buf[nul + 5] as number) : -1;
}

/** Sessions waiting for their TLS handshake, found again from the raw socket. */
export const upgrading = new WeakMap<net.Socket, ClientSession>();

export class ClientSession implements SessionHandle {
  readonly id: number;
  readonly log: Logger;
  cancelKey: Buffer = Buffer.alloc(0);
  #ctx: Context;
  #raw: net.Socket;
  #client: net.Socket;
  #state: SessionState = STATE.Negotiating;
  #startupBuf: Buffer | null = null;
  #sslTried = false;
  #gssTried = false;
  #tls: { version: string; cipher: string; direct: boolean; alpn: string | false } | null = null;
  #loginTimer: NodeJS.Timeout | null;
  #database = '';
  #user = '';
  #db: DatabaseConfig | null = null;
  #server: net.Socket | null = null;
  #serverTls: { version: string; cipher: string } | null = null;
  #clientStream: MessageStream | null = null;
  #serverStream: MessageStream | null = null;
  #pid: number | null = null;
  #serverKey: { pid: number; key: Buffer } | null = null;
  #clientMinor = 0;
  #requestMinor = 0;
  #negotiatedMinor = 0;
  #sawFirstServerMessage = false;
  #serverSaidFatal = false;
  /** AuthenticationSASL was relayed and the client's SASLInitialResponse has not been seen yet. */
  #saslRequested = false;
  #closing = false;
  bytesIn = 0;
  bytesOut = 0;
  readonly startedAt = Date.now();

  constructor(ctx: Context, socket: net.Socket) {
    this.#ctx = ctx;
    this.id = ctx.nextId();
    this.log = ctx.log.child({ client: this.id });
    this.#raw = socket;
    this.#client = socket;
    socket.setNoDelay(true);
    socket.on('data', this.#onStartupData);
    socket.on('error', this.#onClientError);
    socket.on('close', this.#onClientClose);
    this.#loginTimer = setTimeout(this.#onLoginTimeout, ctx.config.limits.client_login_timeout);
    this.#loginTimer.unref();
    ctx.track(this);
    this.log.debug({ addr: socket.remoteAddress, port: socket.remotePort }, 'client connected');
  }

  get state(): SessionState {
    return this.#state;
  }

  #setState(next: SessionState): void {
    this.#state = next;
  }

  // ---------------------------------------------------------------- negotiation

  #onStartupData = (chunk: Buffer): void => {
    if (this.#state !== STATE.Negotiating) return;
    if (this.#startupBuf === null && this.#tls === null && !this.#sslTried && !this.#gssTried && chunk[0] === TLS_HANDSHAKE_RECORD) {
      this.#beginTls(true, chunk);
      return;
    }
    const buf = this.#startupBuf === null ? chunk : Buffer.concat([this.#startupBuf, chunk]);
    this.#startupBuf = null;
    // Every request below either ends negotiation or must be the last bytes
    // received, so one packet per call is all there can be.
    {
      const n = startupFrame(buf, 0, buf.length);
      if (n === NEED_MORE) {
        if (buf.length > 0) this.#startupBuf = Buffer.from(buf);
        return;
      }
      if (n < 0) {
        // Postgres logs this and closes without a reply: the peer may not speak the protocol at all.
        this.log.info({ reason: n === BAD_LENGTH ? 'bad_length' : 'too_large' }, 'invalid length of startup packet');
        this.#destroy();
        return;
      }
      let packet: StartupPacket;
      try {
        packet = decodeStartup(buf.subarray(0, n));
      } catch (e) {
        if (e instanceof ProtocolViolation) {
          this.#fatal(SQLSTATE.ProtocolViolation, e.message);
          return;
        }
        throw e;
      }
      const rest = buf.subarray(n);
      switch (packet.kind) {
        case 'ssl':
        case 'gssenc': {
          const ssl = packet.kind === 'ssl';
          if (this.#tls !== null || (ssl ? this.#sslTried : this.#gssTried)) {
            this.#fatal(SQLSTATE.ProtocolViolation, `unexpected ${ssl ? 'SSL' : 'GSSAPI'} negotiation request`);
            return;
          }
          if (rest.length > 0) {
            // Bytes piggybacked on the request would be read as if they had
            // been encrypted (CVE-2021-23214): refuse them unread.
            this.#fatal(SQLSTATE.ProtocolViolation, `received unencrypted data after ${ssl ? 'SSL' : 'GSSAPI encryption'} request`);
            return;
          }
          if (ssl) {
            this.#sslTried = true;
            if (this.#ctx.clientTls !== null) {
              this.#raw.write(BYTE_S);
              this.#beginTls(false, null);
              return;
            }
          } else {
            this.#gssTried = true;
          }
          this.log.debug({ request: packet.kind }, 'answered N');
          this.#raw.write(BYTE_N);
          return;
        }
        case 'cancel':
          this.#handleCancelRequest(packet.pid, packet.key);
          return;
        case 'startup':
          this.#onStartupMessage(packet.major, packet.minor, packet.params, rest);
          return;
        default:
          packet satisfies never;
      }
    }
  };

  #beginTls(direct: boolean, pending: Buffer | null): void {
    const server = this.#ctx.clientTls;
    if (server === null) {
      // TLS-first client but no TLS configured: nothing sensible to say in plaintext.
      this.log.info('direct TLS connection refused: TLS is not configured');
      this.#destroy();
      return;
    }
    this.#setState(STATE.TlsHandshake);
    this.#tls = { version: '', cipher: '', direct, alpn: false };
    const raw = this.#raw;
    raw.removeListener('data', this.#onStartupData);
    raw.pause();
    if (pending !== null) raw.unshift(pending);
    upgrading.set(raw, this);
    server.emit('connection', raw);
  }

  /** Called by the listener when the TLS handshake completed. */
  onSecure(sock: tls.TLSSocket): void {
    upgrading.delete(this.#raw);
    if (this.#state !== STATE.TlsHandshake) {
      sock.destroy();
      return;
    }
    const cipher = sock.getCipher();
    const info = this.#tls ?? { version: '', cipher: '', direct: false, alpn: false };
    info.version = sock.getProtocol() ?? 'unknown';
    info.cipher = cipher.name;
    info.alpn = sock.alpnProtocol ?? false;
    this.#tls = info;
    this.#client = sock;
    sock.on('error', this.#onClientError);
    this.log.debug({ tls: info.version, cipher: info.cipher, direct: info.direct, alpn: info.alpn }, 'TLS established');
    this.#setState(STATE.Negotiating);
    if (info.direct && info.alpn !== ALPN_POSTGRESQL && !this.#ctx.config.tls.direct_without_alpn) {
      this.#fatal(SQLSTATE.ProtocolViolation, 'received direct SSL connection request without ALPN protocol negotiation extension');
      return;
    }
    sock.on('data', this.#onStartupData);
  }

  /** Called by the listener when the TLS handshake failed: close quietly. */
  onTlsError(err: Error): void {
    upgrading.delete(this.#raw);
    this.log.info({ err: (err as NodeJS.ErrnoException).code ?? err.message }, 'TLS handshake failed');
    this.#destroy();
  }

  #handleCancelRequest(pid: number, key: Buffer): void {
    const target = this.#ctx.byPid(pid);
    if (target !== undefined && target.cancelKey.length === key.length && timingSafeEqual(target.cancelKey, key)) {
      this.log.debug({ target: target.id }, 'cancel request');
      target.cancel();
    } else {
      // Unknown keys are ignored, as Postgres does; say nothing either way.
      this.log.debug('cancel request with unknown key ignored');
    }
    this.#destroy();
  }

  // ---------------------------------------------------------------- startup

  #onStartupMessage(major: number, minor: number, params: Map<string, string>, early: Buffer): void {
    const cfg = this.#ctx.config;
    if (major !== 3) {
      this.#fatal(
        SQLSTATE.FeatureNotSupported,
        `unsupported frontend protocol ${major}.${minor}: server supports 3.0 to 3.${LATEST_MINOR}`,
      );
      return;
    }
    const user = params.get('user');
    if (user === undefined || user === '') {
      this.#fatal(SQLSTATE.InvalidAuthorizationSpecification, 'no PostgreSQL user name specified in startup packet');
      return;
    }
    const database = params.get('database') || user;
    this.#user = user;
    this.#database = database;
    const addr = this.#raw.remoteAddress ?? 'unknown';
    const mode = cfg.tls.mode;
    if ((mode === 'require' || mode === 'verify-ca' || mode === 'verify-full') && this.#tls === null) {
      // Postgres's answer when only hostssl lines would match.
      this.#fatal(
        SQLSTATE.InvalidAuthorizationSpecification,
        `no pg_hba.conf entry for host "${addr}", user "${user}", database "${database}", no encryption`,
      );
      return;
    }
    if ((mode === 'verify-ca' || mode === 'verify-full') && this.#tls !== null) {
      const sock = this.#client as tls.TLSSocket;
      if (!sock.authorized) {
        this.#fatal(SQLSTATE.InvalidAuthorizationSpecification, 'connection requires a valid client certificate');
        return;
      }
      if (mode === 'verify-full') {
        const cn = sock.getPeerCertificate().subject?.CN;
        if (cn !== user) {
          this.#fatal(
            SQLSTATE.InvalidAuthorizationSpecification,
            `certificate validation (clientcert=verify-full) failed for user "${user}": CN mismatch`,
          );
          return;
        }
      }
    }
    const db = cfg.databases[database];
    if (db === undefined) {
      this.#fatal(SQLSTATE.InvalidCatalogName, `database "${database}" does not exist`);
      return;
    }
    this.#db = db;
    this.#clientMinor = minor;
    this.#requestMinor = Math.min(minor, LATEST_MINOR);
    this.#negotiatedMinor = this.#requestMinor;
    this.#setState(STATE.Connecting);
    this.#client.removeListener('data', this.#onStartupData);
    this.#client.pause();
    this.log.debug({ user, database, protocol: `3.${minor}`, tls: this.#tls?.version ?? null }, 'startup');

    // Forward the client's parameters in order, with the database name mapped.
    const out: [string, string][] = [];
    for (const [k, v] of params) out.push([k, k === 'database' ? (db.dbname ?? database) : v]);
    if (!params.has('database')) out.push(['database', db.dbname ?? database]);
    const startup = encodeStartup((3 << 16) | this.#requestMinor, out);
    const earlyCopy = early.length > 0 ? Buffer.from(early) : null;

    const tlsOpts = this.#ctx.serverTls(database);
    if (tlsOpts === undefined) {
      this.#fatal(SQLSTATE.InvalidCatalogName, `database "${database}" does not exist`);
      return;
    }
    connectServer(db.host, db.port, tlsOpts, cfg.limits.server_connect_timeout).then(
      (t) => this.#onServerConnected(t.socket, t.tls, startup, earlyCopy),
      (err: Error) => this.#onServerConnectFailed(err),
    );
  }

  #onServerConnectFailed(err: Error): void {
    const code = err instanceof ServerConnectError ? err.code : ((err as NodeJS.ErrnoException).code ?? 'ERR_SERVER_CONNECT');
    this.log.warn({ database: this.#database, err: code, detail: err.message }, 'cannot connect to server');
    if (this.#state === STATE.Closed) return;
    this.#fatal(SQLSTATE.ConnectionFailure, `could not connect to the server for database "${this.#database}"`);
  }

  #onServerConnected(
    server: net.Socket,
    serverTls: { version: string; cipher: string } | null,
    startup: Buffer,
    early: Buffer | null,
  ): void {
    if (this.#state !== STATE.Connecting) {
      server.destroy();
      return;
    }
    this.#server = server;
    this.#serverTls = serverTls;
    this.log.debug({ server: `${this.#db?.host}:${this.#db?.port}`, tls: serverTls?.version ?? null }, 'server connected');
    const max = this.#ctx.config.limits.max_message_size;
    this.#serverStream = new MessageStream(this.#serverSink, VALID_BACKEND, SERVER_INSPECT_STARTUP, max);
    this.#clientStream = new MessageStream(this.#clientSink, VALID_FRONTEND, CLIENT_INSPECT_AUTH, max);
    server.on('data', this.#onServerData);
    server.on('error', this.#onServerError);
    server.on('close', this.#onServerClose);
    server.on('drain', this.#onServerDrain);
    this.#client.on('drain', this.#onClientDrain);
    this.#setState(STATE.Authenticating);
    server.write(startup);
    server.resume();
    this.#client.on('data', this.#onClientData);
    if (early !== null) this.#onClientData(early);
    this.#client.resume();
  }

  // ---------------------------------------------------------------- forwarding

  #onClientData = (chunk: Buffer): void => {
    this.bytesIn += chunk.length;
    (this.#clientStream as MessageStream).push(chunk);
  };

  #onServerData = (chunk: Buffer): void => {
    this.bytesOut += chunk.length;
    (this.#serverStream as MessageStream).push(chunk);
  };

  #onServerDrain = (): void => {
    this.#client.resume();
  };

  #onClientDrain = (): void => {
    this.#server?.resume();
  };

  #toServer(buf: Buffer, start: number, end: number): void {
    const server = this.#server as net.Socket;
    const ok = server.write(start === 0 && end === buf.length ? buf : buf.subarray(start, end));
    if (!ok) this.#client.pause();
  }

  #toClient(buf: Buffer, start: number, end: number): void {
    const ok = this.#client.write(start === 0 && end === buf.length ? buf : buf.subarray(start, end));
    if (!ok) this.#server?.pause();
  }

  #clientSink: FrameSink = {
    onRun: (buf, start, end) => this.#toServer(buf, start, end),
    onMessage: (type, buf, start, end) => {
      if (type === FE.Password) {
        if (this.#saslRequested && this.#serverTls !== null && saslGs2Flag(buf, start, end) === GS2_CLIENT_SUPPORTS_CB) {
          // libpq on TLS sends "y": it supports channel binding but saw no -PLUS
          // offer. A server whose own link is TLS must then refuse (downgrade
          // protection), and a relayed exchange cannot be re-bound without the
          // user's verifier. Say so precisely instead of relaying a puzzle.
          this.#saslRequested = false;
          this.#fatal(
            SQLSTATE.InvalidAuthorizationSpecification,
            'SCRAM authentication cannot be relayed: the client supports channel binding and the server link uses TLS',
            `The server refuses a relayed SCRAM exchange from a client that supports channel binding. Connect with channel_binding=disable, set databases.${this.#database}.tls.mode to disable, or use a server password method that does not bind to the channel.`,
          );
          return;
        }
        this.#saslRequested = false;
        this.#toServer(buf, start, end);
        return;
      }
      if (type === FE.Terminate) {
        this.#toServer(buf, start, end);
        this.log.debug('client terminated');
        this.#close();
        (this.#clientStream as MessageStream).kill();
      }
    },
    onViolation: (kind, detail) => this.#clientViolation(kind, detail),
  };

  #serverSink: FrameSink = {
    onRun: (buf, start, end) => this.#toClient(buf, start, end),
    onMessage: (type, buf, start, end) => {
      try {
        this.#onServerMessage(type, buf, start, end);
      } catch (e) {
        if (e instanceof ProtocolViolation) this.#serverViolation(e.kind, e.message);
        else throw e;
      }
    },
    onViolation: (kind, detail) => this.#serverViolation(kind, detail),
  };

  #onServerMessage(type: number, buf: Buffer, start: number, end: number): void {
    if (this.#state === STATE.Active) {
      // Only ErrorResponse is inspected now.
      const e = decodeNotice(buf, start, end);
      if (e.severityV === 'FATAL' || e.severityV === 'PANIC' || e.severity === 'FATAL' || e.severity === 'PANIC')
        this.#serverSaidFatal = true;
      this.#toClient(buf, start, end);
      return;
    }
    if (!this.#sawFirstServerMessage) {
      this.#sawFirstServerMessage = true;
      if (type === BE.NegotiateProtocolVersion) {
        const npv = decodeNegotiateProtocolVersion(buf, start, end);
        this.#negotiatedMinor = Math.min(npv.minor, this.#requestMinor);
        this.#client.write(encodeNegotiateProtocolVersion(this.#negotiatedMinor, npv.unsupported));
        return;
      }
      if (this.#clientMinor > this.#requestMinor) {
        // The server took our (capped) version as is; the client asked for more.
        this.#client.write(encodeNegotiateProtocolVersion(this.#requestMinor, []));
      }
    }
    switch (type) {
      case BE.Authentication: {
        const auth = decodeAuth(buf, start, end);
        if (auth.code === AUTH.SASL) {
          // Channel binding ties SCRAM to the TLS channel the *server* sees;
          // the client's channel ends at Postern, so -PLUS cannot pass through.
          const mechs = decodeSaslMechanisms(auth.data).filter((m) => !m.endsWith('-PLUS'));
          this.log.debug({ mechanisms: mechs }, 'server requests SASL');
          this.#saslRequested = true;
          this.#client.write(encodeAuthSasl(mechs));
          return;
        }
        if (auth.code === AUTH.Ok) this.log.debug('authenticated by server');
        this.#toClient(buf, start, end);
        return;
      }
      case BE.BackendKeyData: {
        this.#serverKey = decodeBackendKeyData(buf, start, end);
        const mine = this.#ctx.issueCancelKey(this.#negotiatedMinor >= 2 ? 32 : 4);
        this.#pid = mine.pid;
        this.cancelKey = mine.key;
        this.#ctx.register(mine.pid, this);
        this.#client.write(encodeBackendKeyData(mine.pid, mine.key));
        return;
      }
      case BE.ErrorResponse: {
        const e = decodeNotice(buf, start, end);
        this.#serverSaidFatal = true;
        this.log.info({ code: e.code ?? null, database: this.#database, user: this.#user }, 'server refused the session');
        this.#toClient(buf, start, end);
        return;
      }
      case BE.ReadyForQuery: {
        this.#toClient(buf, start, end);
        this.#clearLoginTimer();
        this.#setState(STATE.Active);
        (this.#serverStream as MessageStream).setInspect(SERVER_INSPECT_ACTIVE);
        (this.#clientStream as MessageStream).setInspect(CLIENT_INSPECT);
        this.log.debug({ database: this.#database, user: this.#user }, 'session active');
        return;
      }
      case BE.NegotiateProtocolVersion:
        throw new ProtocolViolation('malformed', 'NegotiateProtocolVersion after the first message');
      default:
        this.#toClient(buf, start, end);
    }
  }

  #clientViolation(kind: ViolationKind, detail: string): void {
    this.log.info({ kind, detail }, 'protocol violation by client');
    this.#fatal(
      SQLSTATE.ProtocolViolation,
      detail.startsWith('invalid message type') ? `invalid frontend message type ${detail.slice(21)}` : 'invalid message length',
    );
  }

  #serverViolation(kind: ViolationKind, detail: string): void {
    this.log.warn({ kind, detail, database: this.#database }, 'protocol violation by server');
    // The client may have part of a message already; only a clean boundary allows an error frame.
    this.#server?.destroy();
    this.#server = null;
    this.#fatal(SQLSTATE.ProtocolViolation, 'server sent an invalid message');
  }

  // ---------------------------------------------------------------- cancel / shutdown

  cancel(): void {
    const db = this.#db;
    const key = this.#serverKey;
    const tlsOpts = this.#ctx.serverTls(this.#database);
    if (db === null || key === null || tlsOpts === undefined || this.#state === STATE.Closed) return;
    connectServer(db.host, db.port, tlsOpts, this.#ctx.config.limits.server_connect_timeout).then(
      (t) => {
        t.socket.on('error', () => {});
        t.socket.end(encodeCancel(key.pid, key.key));
        t.socket.resume();
      },
      (err: Error) => this.log.warn({ err: err.message }, 'cancel could not reach the server'),
    );
  }

  terminate(code: string, message: string): void {
    if (this.#state === STATE.Closed) return;
    if (this.#serverStream === null || this.#serverStream.atBoundary) this.#fatal(code, message);
    else this.#close();
  }

  // ---------------------------------------------------------------- closing

  #onLoginTimeout = (): void => {
    this.#loginTimer = null;
    if (this.#state === STATE.Active || this.#state === STATE.Closed) return;
    this.log.info({ state: this.#state }, 'login timeout');
    if (this.#state === STATE.Negotiating && this.#user === '') this.#destroy();
    else if (this.#state === STATE.TlsHandshake) this.#destroy();
    else this.#fatal(SQLSTATE.QueryCanceled, 'canceling authentication due to timeout');
  };

  #clearLoginTimer(): void {
    if (this.#loginTimer !== null) {
      clearTimeout(this.#loginTimer);
      this.#loginTimer = null;
    }
  }

  #onClientError = (err: Error): void => {
    this.log.debug({ err: (err as NodeJS.ErrnoException).code ?? err.message }, 'client socket error');
  };

  #onClientClose = (): void => {
    if (this.#state !== STATE.Closed) this.log.debug('client disconnected');
    this.#close();
  };

  #onServerError = (err: Error): void => {
    this.log.debug({ err: (err as NodeJS.ErrnoException).code ?? err.message }, 'server socket error');
  };

  #onServerClose = (): void => {
    if (this.#state === STATE.Closed || this.#closing) return;
    this.#server = null;
    if (this.#serverSaidFatal) {
      this.#close();
      return;
    }
    this.log.warn({ database: this.#database }, 'server closed the connection unexpectedly');
    if (this.#serverStream === null || this.#serverStream.atBoundary) {
      this.#fatal(
        SQLSTATE.ConnectionFailure,
        'server closed the connection unexpectedly',
        'This probably means the server terminated abnormally before or while processing the request.',
      );
    } else {
      // Mid-message: an error frame would be read as the rest of that message.
      this.#destroy();
    }
  };

  /** FATAL ErrorResponse to the client, then close both sides. */
  #fatal(code: string, message: string, detail?: string): void {
    if (this.#state === STATE.Closed) return;
    const spec: ErrorSpec = { severity: 'FATAL', code, message };
    if (detail !== undefined) spec.detail = detail;
    const client = this.#client;
    if (!client.destroyed && client.writable) client.write(encodeError(spec));
    this.#close();
  }

  /** Graceful close: flush what is queued, tell the server goodbye. */
  #close(): void {
    if (this.#state === STATE.Closed) return;
    this.#closing = true;
    this.#setState(STATE.Closed);
    this.#clearLoginTimer();
    upgrading.delete(this.#raw);
    this.#ctx.unregister(this.#pid, this);
    this.#clientStream?.kill();
    this.#serverStream?.kill();
    const server = this.#server;
    this.#server = null;
    if (server !== null && !server.destroyed) {
      if (this.#clientStream === null || this.#clientStream.atBoundary) server.write(TERMINATE);
      server.end();
      setTimeout(() => server.destroy(), 5000).unref();
    }
    const client = this.#client;
    if (!client.destroyed) {
      client.end();
      setTimeout(() => client.destroy(), 5000).unref();
    }
    if (client !== this.#raw && !this.#raw.destroyed) setTimeout(() => this.#raw.destroy(), 5000).unref();
    this.log.debug({ bytesIn: this.bytesIn, bytesOut: this.bytesOut, ms: Date.now() - this.startedAt }, 'session closed');
  }

  /** Immediate close without a goodbye. */
  #destroy(): void {
    this.#close();
    this.#client.destroy();
    this.#raw.destroy();
  }

  get database(): string {
    return this.#database;
  }
  get user(): string {
    return this.#user;
  }
  get tlsInfo(): { version: string; cipher: string } | null {
    return this.#tls;
  }
  get serverTlsInfo(): { version: string; cipher: string } | null {
    return this.#serverTls;
  }
}
