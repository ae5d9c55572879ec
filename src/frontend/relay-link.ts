// The relay link: a client whose authentication is the server's own
// (`passthrough`, or no hba file), on a server connection of its own for the
// whole session. Owns the relayed startup (the client's parameters in order,
// the database name mapped), the relayed authentication exchange (SCRAM's
// -PLUS mechanisms removed: channel binding cannot cross a TLS terminator;
// a client that supports channel binding toward a TLS server link is refused
// with the reason), protocol negotiation, the server's BackendKeyData
// (replaced by Postern's own key), and then byte-exact forwarding both ways.
// The server's end ends the session.

import { ServerConnectError } from '../backend/connect.ts';
import { CLIENT_REQUESTS, type Ledger, type Req, requestOf, WHO } from '../backend/expect.ts';
import { ServerConn, type ServerLink } from '../backend/server-conn.ts';
import type { Context } from '../context.ts';
import type { Logger } from '../observability/log.ts';
import {
  decodeAuth,
  decodeBackendKeyData,
  decodeNegotiateProtocolVersion,
  decodeNotice,
  decodeSaslMechanisms,
  encodeAuthSasl,
  encodeBackendKeyData,
  encodeNegotiateProtocolVersion,
} from '../protocol/backend.ts';
import { AUTH, BE, FE, typeTable } from '../protocol/codes.ts';
import type { MessageStream } from '../protocol/framer.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { encodeStartup } from '../protocol/startup.ts';
import { ProtocolViolation, type ViolationKind } from '../protocol/violation.ts';
import { routingOf } from '../routing/router.ts';
import type { Startup } from './handshake.ts';
import { serverLost } from './server-lost.ts';

/** Server messages Postern must act on while a relayed session starts. */
const SERVER_INSPECT_STARTUP = typeTable([
  BE.Authentication,
  BE.BackendKeyData,
  BE.NegotiateProtocolVersion,
  BE.ErrorResponse,
  BE.ReadyForQuery,
]);
/** Steady state: only errors, to know whether the server said goodbye before closing. */
const SERVER_INSPECT_ACTIVE = typeTable([BE.ErrorResponse]);
/**
 * Server frames looked at while they are forwarded, once active: those that
 * end a request (the connection's ledger, which tells the statistics tracker
 * how each statement ended) and ReadyForQuery (cycles).
 */
const SERVER_PEEK = typeTable([
  BE.ParseComplete,
  BE.BindComplete,
  BE.CloseComplete,
  BE.RowDescription,
  BE.NoData,
  BE.CommandComplete,
  BE.EmptyQueryResponse,
  BE.PortalSuspended,
  BE.CopyInResponse,
  BE.ReadyForQuery,
]);
/** While relaying auth: SASLInitialResponse too (to catch a channel-binding downgrade the server would refuse). */
const CLIENT_INSPECT_RELAY = typeTable([FE.Terminate, FE.Password]);
const CLIENT_INSPECT_ACTIVE = typeTable([FE.Terminate]);
const GS2_CLIENT_SUPPORTS_CB = 0x79; // 'y'

/** The GS2 channel-binding flag byte of a SASLInitialResponse frame, or -1. */
function saslGs2Flag(buf: Buffer, start: number, end: number): number {
  const nul = buf.indexOf(0, start + 5);
  if (nul < 0 || nul + 5 >= end) return -1;
  const dataLen = buf.readInt32BE(nul + 1);
  return dataLen > 0 && nul + 5 < end ? (buf[nul + 5] as number) : -1;
}

export interface RelayHost {
  readonly ctx: Context;
  readonly log: Logger;
  debug(obj: object | string, msg?: string): void;
  logFor(server: ServerConn | null): Logger;
  readonly stream: MessageStream;
  send(buf: Buffer): void;
  toClient(buf: Buffer, start: number, end: number): boolean;
  clientChunk(start: boolean): boolean;
  pauseClient(): void;
  resumeClient(): void;
  fatal(code: string, message: string, detail?: string, hint?: string): void;
  destroy(): void;
  close(): void;
  internalError(e: Error): void;
  /** Postern's own cancel key for the client (registered), for the protocol minor version negotiated. */
  cancelKey(minor: number): { pid: number; key: Buffer };
  /** The server's ReadyForQuery: the session is active. */
  active(): void;
  outcome(ok: boolean, reason: string | null): void;
  observeServer(type: number, buf: Buffer, start: number, end: number): void;
  /** The statistics tracker follows this connection's ledger. */
  watch(ledger: Ledger): void;
  countError(code: string | undefined): void;
  countViolation(who: 'client' | 'server', kind: string): void;
}

export class RelayLink implements ServerLink {
  readonly #host: RelayHost;
  readonly #ctx: Context;
  readonly #s: Startup;
  #server: ServerConn | null = null;
  #requestMinor: number;
  #negotiatedMinor: number;
  #sawFirst = false;
  #serverSaidFatal = false;
  /** AuthenticationSASL was relayed and the client's SASLInitialResponse has not been seen yet. */
  #saslRequested = false;
  #active = false;
  #closed = false;
  /**
   * The connection's ledger could not follow this session (a replication
   * session's CopyBoth, anything it cannot place): statistics stop for it.
   * The server is the authority on a relayed session; Postern only relays.
   */
  #ledgerOff = false;

  constructor(host: RelayHost, startup: Startup, requestMinor: number) {
    this.#host = host;
    this.#ctx = host.ctx;
    this.#s = startup;
    this.#requestMinor = requestMinor;
    this.#negotiatedMinor = requestMinor;
  }

  get server(): ServerConn | null {
    return this.#server;
  }

  /** Opens the server connection with the client's own startup; the client is held until the server is there. */
  start(): void {
    const routing = routingOf(this.#ctx);
    const target = routing.targetFor(this.#s.database, this.#s.tenant);
    if (target === null) {
      const set = routing.hostSet(this.#s.database, this.#s.tenant);
      if (set === null) this.#host.fatal(SQLSTATE.InvalidCatalogName, `database "${this.#s.database}" does not exist`);
      else
        this.#host.fatal(
          SQLSTATE.ConnectionFailure,
          `no server of database "${this.#s.database}" is usable for target_session_attrs=${set.db.target_session_attrs}`,
          set.refusals(),
        );
      return;
    }
    this.#host.stream.setInspect(CLIENT_INSPECT_RELAY);
    this.#host.pauseClient();
    // Forward the client's parameters in order, with the database name mapped.
    const out: [string, string][] = [];
    const params = this.#s.params;
    for (const [k, v] of params) out.push([k, k === 'database' ? target.dbname : v]);
    if (!params.has('database')) out.push(['database', target.dbname]);
    const startup = encodeStartup((3 << 16) | this.#requestMinor, out);
    const server = new ServerConn(target, this.#s.user, this.#host.log);
    this.#server = server;
    server
      .openRelay(startup, this, SERVER_INSPECT_STARTUP, this.#ctx.config.limits.max_message_size)
      .then(
        () => {
          if (this.#closed) {
            server.destroy();
            return;
          }
          this.#host.debug({ server: `${target.host}:${target.port}`, tls: server.tls?.version ?? null }, 'server connected');
          this.#host.resumeClient();
        },
        (err: Error) => {
          this.#server = null;
          const code = err instanceof ServerConnectError ? err.code : ((err as NodeJS.ErrnoException).code ?? 'ERR_SERVER_CONNECT');
          this.#host.log.warn({ database: this.#s.database, err: code, detail: err.message }, 'cannot connect to server');
          if (this.#closed) return;
          this.#host.fatal(SQLSTATE.ConnectionFailure, `could not connect to the server for database "${this.#s.database}"`);
        },
      )
      .catch((e: Error) => this.#host.internalError(e));
  }

  // ---------------------------------------------------------------- client side

  onClientFrame(type: number, buf: Buffer, start: number, end: number): void {
    if (!this.#active && type === FE.Password) this.#relayedPassword(buf, start, end);
    else this.#toServer(buf, start, end);
  }

  onClientRun(buf: Buffer, start: number, end: number): void {
    this.#toServer(buf, start, end);
  }

  /** A client request's header went by (active): the connection's ledger queues what it will earn. */
  onClientCount(type: number): void {
    const ledger = this.#server?.ledger;
    if (ledger === undefined || this.#ledgerOff || !this.#active) return;
    if (ledger.ignores(type)) ledger.ignored(type);
    else {
      const kind = requestOf(type);
      if (kind >= 0) ledger.push(kind as Req, WHO.Client, null);
    }
  }

  /** A server frame the ledger should place (it is forwarded here, not by the ledger). */
  #feed(type: number, buf: Buffer, start: number, end: number): void {
    const ledger = this.#server?.ledger;
    if (ledger === undefined || this.#ledgerOff) return;
    try {
      ledger.onServerFrame(type, buf, start, end, true);
    } catch (e) {
      if (!(e instanceof ProtocolViolation)) throw e;
      this.#ledgerOff = true;
      ledger.watcher = null;
      ledger.abandon();
      this.#host.debug({ detail: e.message }, 'statement statistics stop for this relayed session');
    }
  }

  onClientDrain(): void {
    this.#server?.resume();
  }

  #relayedPassword(buf: Buffer, start: number, end: number): void {
    if (this.#saslRequested && this.#server?.tls && saslGs2Flag(buf, start, end) === GS2_CLIENT_SUPPORTS_CB) {
      // libpq on TLS sends "y": it supports channel binding but saw no -PLUS
      // offer. A server whose own link is TLS must then refuse (downgrade
      // protection), and a relayed exchange cannot be re-bound without the
      // user's verifier. Say so precisely instead of relaying a puzzle.
      this.#saslRequested = false;
      this.#host.fatal(
        SQLSTATE.InvalidAuthorizationSpecification,
        'SCRAM authentication cannot be relayed: the client supports channel binding and the server link uses TLS',
        `The server refuses a relayed SCRAM exchange from a client that supports channel binding. Connect with channel_binding=disable, set databases.${this.#s.database}.tls.mode to disable, or authenticate at Postern (auth.hba_file).`,
      );
      return;
    }
    this.#saslRequested = false;
    this.#toServer(buf, start, end);
  }

  #toServer(buf: Buffer, start: number, end: number): void {
    const server = this.#server;
    if (server === null) return;
    if (!server.writeRange(buf, start, end)) this.#host.pauseClient();
  }

  #toClient(buf: Buffer, start: number, end: number): void {
    if (!this.#host.toClient(buf, start, end)) this.#server?.pause();
  }

  // ---------------------------------------------------------------- server side

  onServerChunk(start: boolean): boolean {
    return this.#host.clientChunk(start);
  }

  onServerRun(buf: Buffer, start: number, end: number): void {
    this.#toClient(buf, start, end);
  }

  onServerPeek(type: number, buf: Buffer, start: number, end: number): void {
    this.#host.observeServer(type, buf, start, end);
    this.#feed(type, buf, start, end);
  }

  onServerMessage(type: number, buf: Buffer, start: number, end: number): void {
    try {
      this.#serverMessage(type, buf, start, end);
    } catch (e) {
      if (e instanceof ProtocolViolation) this.onServerViolation(e.kind, e.message);
      else throw e;
    }
  }

  #serverMessage(type: number, buf: Buffer, start: number, end: number): void {
    if (this.#active) {
      if (type === BE.ErrorResponse) {
        const e = decodeNotice(buf, start, end);
        if (e.severityV === 'FATAL' || e.severityV === 'PANIC' || e.severity === 'FATAL' || e.severity === 'PANIC')
          this.#serverSaidFatal = true;
        this.#host.countError(e.code);
        this.#feed(type, buf, start, end);
      }
      this.#toClient(buf, start, end);
      return;
    }
    if (!this.#sawFirst) {
      this.#sawFirst = true;
      if (type === BE.NegotiateProtocolVersion) {
        const npv = decodeNegotiateProtocolVersion(buf, start, end);
        this.#negotiatedMinor = Math.min(npv.minor, this.#requestMinor);
        this.#host.send(encodeNegotiateProtocolVersion(this.#negotiatedMinor, npv.unsupported));
        return;
      }
      if (this.#s.minor > this.#requestMinor) {
        // The server took our (capped) version as is; the client asked for more.
        this.#host.send(encodeNegotiateProtocolVersion(this.#requestMinor, []));
      }
    }
    switch (type) {
      case BE.Authentication: {
        const auth = decodeAuth(buf, start, end);
        if (auth.code === AUTH.SASL) {
          // Channel binding ties SCRAM to the TLS channel the *server* sees;
          // the client's channel ends at Postern, so -PLUS cannot pass through.
          const mechs = decodeSaslMechanisms(auth.data).filter((m) => !m.endsWith('-PLUS'));
          this.#host.debug({ mechanisms: mechs }, 'server requests SASL');
          this.#saslRequested = true;
          this.#host.send(encodeAuthSasl(mechs));
          return;
        }
        if (auth.code === AUTH.Ok) {
          this.#host.debug('authenticated by server');
          this.#ctx.count(this.#ctx.stats.logins, 'passthrough/ok');
          this.#host.outcome(true, null);
        }
        this.#toClient(buf, start, end);
        return;
      }
      case BE.BackendKeyData: {
        const server = this.#server;
        if (server !== null) server.key = decodeBackendKeyData(buf, start, end);
        const mine = this.#host.cancelKey(this.#negotiatedMinor);
        this.#host.send(encodeBackendKeyData(mine.pid, mine.key));
        return;
      }
      case BE.ErrorResponse: {
        const e = decodeNotice(buf, start, end);
        this.#serverSaidFatal = true;
        this.#host.countError(e.code);
        if (e.code === SQLSTATE.InvalidPassword) this.#ctx.count(this.#ctx.stats.logins, 'passthrough/fail');
        this.#host.outcome(false, `server_${e.code ?? 'error'}`);
        this.#host
          .logFor(this.#server)
          .info({ code: e.code ?? null, database: this.#s.database, user: this.#s.user }, 'server refused the session');
        this.#toClient(buf, start, end);
        return;
      }
      case BE.ReadyForQuery: {
        this.#toClient(buf, start, end);
        this.#server?.markLoggedIn();
        this.#server?.attach(this, SERVER_INSPECT_ACTIVE, SERVER_PEEK);
        this.#active = true;
        this.#host.stream.setInspect(CLIENT_INSPECT_ACTIVE);
        this.#host.active();
        this.#host.stream.setCount(CLIENT_REQUESTS);
        if (this.#server !== null) this.#host.watch(this.#server.ledger);
        return;
      }
      case BE.NegotiateProtocolVersion:
        throw new ProtocolViolation('malformed', 'NegotiateProtocolVersion after the first message');
      default:
        this.#toClient(buf, start, end);
    }
  }

  onServerViolation(kind: ViolationKind, detail: string): void {
    this.#host.countViolation('server', kind);
    this.#host.logFor(this.#server).warn({ kind, detail, database: this.#s.database }, 'protocol violation by server');
    // The violation is found at a frame boundary: the client's stream is between messages.
    this.#server?.destroy();
    this.#server = null;
    this.#host.fatal(SQLSTATE.ProtocolViolation, `server sent an invalid message: ${detail}`);
  }

  onServerError(err: Error): void {
    this.#server = null;
    this.#host.internalError(err);
  }

  onServerClosed(): void {
    const server = this.#server;
    if (this.#closed || server === null) return;
    this.#server = null;
    serverLost(this.#host, server, this.#s.database, this.#serverSaidFatal);
  }

  onServerDrain(): void {
    this.#host.resumeClient();
  }

  /** Forward a cancel to this session's server. */
  cancel(): void {
    this.#server?.sendCancel(this.#host.logFor(this.#server));
  }

  /** The client's Terminate goes to the server (this connection ends with the session). */
  terminate(buf: Buffer, start: number, end: number): void {
    this.#toServer(buf, start, end);
  }

  /** The session ends: Terminate only between client messages, never inside one that was being forwarded. */
  close(clientAtBoundary: boolean): void {
    if (this.#closed) return;
    this.#closed = true;
    const server = this.#server;
    this.#server = null;
    server?.close(clientAtBoundary);
  }
}
