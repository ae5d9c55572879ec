// One client session, from the first byte to the close: negotiation
// (SSLRequest, GSSENCRequest, direct TLS, CancelRequest), the TLS upgrade,
// the StartupMessage, authentication (by Postern per the hba rules, or relayed
// to the server: `passthrough`), the server connection, and then byte-exact
// forwarding in both directions with backpressure. Session mode: one server
// connection per client session.
//
// Every state change goes through #setState. Errors the client may see are
// sent as ErrorResponse with Postgres's SQLSTATE; anything unexpected is
// logged and the client gets a generic error.

import type net from 'node:net';
import type tls from 'node:tls';
import { AdminConsole } from '../admin/console.ts';
import { adminExecutor } from '../admin/executor.ts';
import { type AuthOutcome, ClientAuthExchange, type PasswordMethod } from '../auth/client-auth.ts';
import { type HbaMatchInput, type HbaRule, matchHba, noMatchMessage, rejectMessage } from '../auth/hba.ts';
import { certAllows } from '../auth/ident.ts';
import { classifySecret, type StoredSecret } from '../auth/secrets.ts';
import { connectServer, ServerConnectError } from '../backend/connect.ts';
import type { Pool, PoolWaiter } from '../backend/pool.ts';
import { PREPARED_CLIENT_INSPECT, PREPARED_SERVER_INSPECT, PreparedRewriter, ServerStatements } from '../backend/prepared.ts';
import { ServerConn, type ServerLink, type ServerSecret } from '../backend/server-conn.ts';
import { ADMIN_DATABASES } from '../config/load.ts';
import type { PoolMode } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import {
  AUTH_OK,
  decodeAuth,
  decodeBackendKeyData,
  decodeNegotiateProtocolVersion,
  decodeNotice,
  decodeParameterStatus,
  decodeSaslMechanisms,
  type ErrorSpec,
  encodeAuthSasl,
  encodeBackendKeyData,
  encodeError,
  encodeNegotiateProtocolVersion,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../protocol/backend.ts';
import { AUTH, BE, FE, LATEST_MINOR, typeTable, VALID_BACKEND, VALID_FRONTEND } from '../protocol/codes.ts';
import { BAD_LENGTH, type FrameSink, MessageStream, NEED_MORE, startupFrame } from '../protocol/framer.ts';
import { encodeCopyFail, encodeQuery, SYNC } from '../protocol/frontend.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { decodeStartup, encodeCancel, encodeStartup, type StartupPacket } from '../protocol/startup.ts';
import { ProtocolViolation, type ViolationKind } from '../protocol/violation.ts';
import type { TrafficStats } from '../stats/registry.ts';
import { QueryTracker, type TrackerSink } from '../stats/tracker.ts';
import { ALPN_POSTGRESQL } from '../tls/contexts.ts';
import type { ClientInfo, Context, SessionHandle } from './context.ts';
import { sessionEffects } from './session-features.ts';

export const STATE = {
  Negotiating: 'negotiating',
  TlsHandshake: 'tls_handshake',
  /** Postern is authenticating the client itself. */
  Authenticating: 'authenticating',
  Connecting: 'connecting',
  /** The server's own exchange is relayed (passthrough). */
  Relaying: 'relaying',
  Active: 'active',
  Closed: 'closed',
} as const;
export type SessionState = (typeof STATE)[keyof typeof STATE];

const BYTE_S = Buffer.from('S');
const BYTE_N = Buffer.from('N');
const TLS_HANDSHAKE_RECORD = 0x16;

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
const CLIENT_INSPECT = typeTable([FE.Terminate]);
/** While relaying auth: SASLInitialResponse too (to catch a channel-binding downgrade the server would refuse). */
const CLIENT_INSPECT_RELAY = typeTable([FE.Terminate, FE.Password]);
/** While Postern authenticates: every client message (only 'p' and 'X' are legal). */
const CLIENT_INSPECT_ALL = VALID_FRONTEND;
const GS2_CLIENT_SUPPORTS_CB = 0x79; // 'y'
/** Pooled sessions: errors, ReadyForQuery (release point) and ParameterStatus (session state to carry across servers). */
const SERVER_INSPECT_POOLED = typeTable([BE.ErrorResponse, BE.ReadyForQuery, BE.ParameterStatus]);
/** While Postern's own injected statements run: every type a server may send, to swallow their responses. */
const SERVER_INSPECT_ALL = VALID_BACKEND;
/** Client frames that each earn exactly one ReadyForQuery: counted, not inspected. */
const CLIENT_COUNT = typeTable([FE.Query, FE.Sync, FE.FunctionCall]);
/** Client frames shown to the statistics tracker while they are forwarded. */
const CLIENT_PEEK = typeTable([FE.Query, FE.Parse, FE.Bind, FE.Execute, FE.Sync, FE.FunctionCall, FE.Close, FE.Describe]);
/** Server frames shown to the statistics tracker (those not inspected anyway). */
const SERVER_PEEK = typeTable([BE.CommandComplete, BE.EmptyQueryResponse, BE.PortalSuspended, BE.ReadyForQuery, BE.ErrorResponse]);
/** Startup parameters that are not settings to carry to pooled servers. */
const NOT_SETTINGS: ReadonlySet<string> = new Set(['user', 'database', 'replication', 'options']);
const GUC_NAME = /^[A-Za-z_][A-Za-z0-9_.]*$/;

function union(a: Uint8Array, b: Uint8Array): Uint8Array {
  const t = new Uint8Array(256);
  for (let i = 0; i < 256; i++) t[i] = (a[i] as number) | (b[i] as number);
  return t;
}
/** Transaction mode with prepared-statement tracking: what the rewriter must see whole. */
const CLIENT_INSPECT_PREPARED = union(CLIENT_INSPECT, PREPARED_CLIENT_INSPECT);
const SERVER_INSPECT_PREPARED = union(SERVER_INSPECT_POOLED, PREPARED_SERVER_INSPECT);
/** Transaction/statement mode: statement texts are read for session features (docs/transaction-mode.md). */
const CLIENT_INSPECT_STATEMENTS = union(CLIENT_INSPECT, typeTable([FE.Query, FE.Parse]));

/** `-c name=value` / `--name=value` pairs of a startup `options` string. */
function parseOptions(options: string): Array<[string, string]> {
  const out: Array<[string, string]> = [];
  const words = options.match(/(?:\\.|\S)+/g) ?? [];
  for (let i = 0; i < words.length; i++) {
    let w = (words[i] as string).replace(/\\(.)/g, '$1');
    if (w === '-c') w = (words[++i] ?? '').replace(/\\(.)/g, '$1');
    else if (w.startsWith('-c')) w = w.slice(2);
    else if (w.startsWith('--')) w = w.slice(2);
    else continue;
    const eq = w.indexOf('=');
    if (eq > 0) out.push([w.slice(0, eq).replace(/-/g, '_'), w.slice(eq + 1)]);
  }
  return out;
}

function quoteLiteral(v: string): string {
  return `'${v.replace(/'/g, "''")}'`;
}
const PASSWORD_METHODS: ReadonlySet<string> = new Set(['scram-sha-256', 'scram-sha-256-plus', 'md5', 'password']);

/** The GS2 channel-binding flag byte of a SASLInitialResponse frame, or -1. */
function saslGs2Flag(buf: Buffer, start: number, end: number): number {
  const nul = buf.indexOf(0, start + 5);
  if (nul < 0 || nul + 5 >= end) return -1;
  const dataLen = buf.readInt32BE(nul + 1);
  return dataLen > 0 && nul + 5 < end ? (buf[nul + 5] as number) : -1;
}

/** Sessions waiting for their TLS handshake, found again from the raw socket. */
export const upgrading = new WeakMap<net.Socket, ClientSession>();

export class ClientSession implements SessionHandle, PoolWaiter {
  readonly id: number;
  #log: Logger | null = null;
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
  #params = new Map<string, string>();
  #server: ServerConn | null = null;
  #clientStream: MessageStream | null = null;
  #pid: number | null = null;
  #clientMinor = 0;
  #requestMinor = 0;
  #negotiatedMinor = 0;
  #sawFirstServerMessage = false;
  #serverSaidFatal = false;
  /** AuthenticationSASL was relayed and the client's SASLInitialResponse has not been seen yet. */
  #saslRequested = false;
  #exchange: ClientAuthExchange | null = null;
  #authBusy = false;
  /** How the client was authenticated: an hba method name, for logs and counters. */
  authMethod = '';
  /** Pooling: the pool this client draws from (null: dedicated/relayed server). */
  #pool: Pool | null = null;
  #poolMode: PoolMode = 'session';
  /** What the client is waiting for a server for. */
  #waitingFor: 'login' | 'txn' | null = null;
  /** Chunks received while no server was linked (transaction mode): at most what arrived before the pause. */
  #held: Buffer[] = [];
  /** Settings the client's session should have on whichever server it lands on. */
  #desired = new Map<string, string>();
  /** Responses of Postern's injected statements still to swallow (ReadyForQuery count). */
  #swallow = 0;
  /** Release the server once the swallowed statements are done (statement-mode rollback). */
  #releaseAfterSwallow = false;
  /** ReadyForQuery messages forwarded to the client (matches the client stream's counted frames). */
  #zSeen = 0;
  #overLimit: boolean;
  /** Transaction mode: named prepared statements made to work across server connections. */
  #rw: PreparedRewriter | null = null;
  /** The session uses a rewriter (transaction mode); it is made at the client's first message. */
  #rwWanted = false;
  /** Why this client keeps its server connection for the rest of its session (transaction mode); null: it does not. */
  pinned: string | null = null;
  /** Session-level SETs of unreported settings to carry across servers: name -> SQL value text. */
  #desiredSql = new Map<string, string>();
  /** Last time the client sent anything (coarse: for idle timeouts checked by the janitor). */
  #lastClientActivity = Date.now();
  /** Bytes went to the server since its last ReadyForQuery: it may be busy. */
  #sentSinceReady = false;
  bytesIn = 0;
  bytesOut = 0;
  readonly startedAt = Date.now();
  /** Statement and transaction bookkeeping for statistics; null until active. */
  #tracker: QueryTracker | null = null;
  /** This (database, user)'s traffic counters; null until authenticated. */
  #traffic: TrafficStats | null = null;
  /** When the client began waiting for a pooled server (performance.now()); 0: not waiting. */
  #waitSince = 0;
  /** The client asked for the admin console's virtual database. */
  #isAdmin = false;
  #admin: AdminConsole | null = null;
  /** Login outcome for the audit record: null while it is still open. */
  #loginOutcome: { ok: boolean; reason: string | null } | null = null;
  /** Last time a query started (admin request_time). */
  #requestAt = Date.now();
  /** The linked server's statement prepares when it was lent (server parse counting). */
  #serverParsesAtLend = 0;

  constructor(ctx: Context, socket: net.Socket) {
    this.#ctx = ctx;
    this.id = ctx.nextId();

    this.#raw = socket;
    this.#client = socket;
    socket.setNoDelay(true);
    socket.on('data', this.#onStartupData);
    socket.on('error', this.#onClientError);
    socket.on('close', this.#onClientClose);
    this.#loginTimer = setTimeout(this.#onLoginTimeout, ctx.config.limits.client_login_timeout);
    this.#loginTimer.unref();
    this.#overLimit = ctx.sessions.size >= ctx.share(ctx.config.pool.max_client_conn);
    ctx.track(this);
    this.#debug({ addr: socket.remoteAddress, port: socket.remotePort }, 'client connected');
  }

  /**
   * The session's logger: a child carrying `client`, made at the first line
   * logged (an idle client that never logs costs no logger).
   */
  get log(): Logger {
    this.#log ??= this.#ctx.log.child({ client: this.id });
    return this.#log;
  }

  /** Debug lines without making the child logger when debug is off. */
  #debug(obj: object | string, msg?: string): void {
    if (!this.#ctx.log.isLevelEnabled('debug')) return;
    if (typeof obj === 'string') this.log.debug(obj);
    else this.log.debug(obj, msg);
  }

  get state(): SessionState {
    return this.#state;
  }

  #setState(next: SessionState): void {
    this.#state = next;
  }

  /** A method, not a field read, so checks after an await are not narrowed away. */
  #isClosed(): boolean {
    return this.#state === STATE.Closed;
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
        const reason = n === BAD_LENGTH ? 'bad_length' : 'too_large';
        this.#ctx.count(this.#ctx.stats.violations, `client/startup_${reason}`);
        this.log.info({ reason }, 'invalid length of startup packet');
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
          this.#debug({ request: packet.kind }, 'answered N');
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
    this.#ctx.count(this.#ctx.stats.tlsHandshakes, `${info.version}/ok`);
    this.#client = sock;
    sock.on('error', this.#onClientError);
    this.#debug({ tls: info.version, cipher: info.cipher, direct: info.direct, alpn: info.alpn }, 'TLS established');
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
    this.#ctx.count(this.#ctx.stats.tlsHandshakes, 'none/fail');
    this.log.info({ err: (err as NodeJS.ErrnoException).code ?? err.message }, 'TLS handshake failed');
    this.#destroy();
  }

  #handleCancelRequest(pid: number, key: Buffer): void {
    if (this.#ctx.cancelByKey(pid, key)) this.#debug('cancel request');
    else if (this.#ctx.peers !== null) {
      // Another worker process may own that session: it checks the key itself.
      this.#ctx.peers.cancel(pid, key);
    } else {
      this.#ctx.count(this.#ctx.stats.cancels, 'unknown');
      // Unknown keys are ignored, as Postgres does; say nothing either way.
      this.#debug('cancel request with unknown key ignored');
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
    this.#params = params;
    if (this.#overLimit) {
      this.#fatal(
        SQLSTATE.TooManyConnections,
        'sorry, too many clients already',
        `Postern accepts at most ${cfg.pool.max_client_conn} client connections (pool.max_client_conn).`,
      );
      return;
    }
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
    this.#isAdmin = ADMIN_DATABASES.has(database);
    if (!this.#isAdmin && cfg.databases[database] === undefined) {
      this.#fatal(SQLSTATE.InvalidCatalogName, `database "${database}" does not exist`);
      return;
    }
    if (this.#ctx.pools.isDisabled(database)) {
      this.#fatal(
        SQLSTATE.ConnectionFailure,
        `database "${database}" does not allow connections`,
        'It was disabled from the admin console (DISABLE).',
      );
      return;
    }
    this.#clientMinor = minor;
    this.#requestMinor = Math.min(minor, LATEST_MINOR);
    this.#negotiatedMinor = this.#requestMinor;
    this.#client.removeListener('data', this.#onStartupData);
    this.#debug({ user, database, protocol: `3.${minor}`, tls: this.#tls?.version ?? null }, 'startup');
    // From here on the client speaks typed messages.
    this.#clientStream = new MessageStream(this.#clientSink, VALID_FRONTEND, CLIENT_INSPECT_ALL, cfg.limits.max_message_size);
    this.#client.on('drain', this.#onClientDrain);
    this.#client.on('data', this.#onClientData);
    const earlyCopy = early.length > 0 ? Buffer.from(early) : null;
    this.#authenticate().then(
      () => {
        if (earlyCopy !== null && this.#state !== STATE.Closed) this.#onClientData(earlyCopy);
      },
      (e: Error) => this.#internalError(e),
    );
  }

  #hbaInput(): HbaMatchInput {
    return {
      ssl: this.#tls !== null,
      database: this.#database,
      user: this.#user,
      address: this.#raw.remoteAddress ?? '',
      replication:
        this.#params.get('replication') === 'true' || this.#params.get('replication') === 'on' || this.#params.get('replication') === '1',
    };
  }

  async #authenticate(): Promise<void> {
    const rules = this.#ctx.auth.hba;
    if (this.#isAdmin && !this.#adminAllowed()) return;
    if (rules === null && !this.#isAdmin) {
      this.#startRelay();
      return;
    }
    const input = this.#hbaInput();
    const rule = rules === null ? null : matchHba(rules, input);
    if (rules !== null && rule === null) {
      this.#loginFailed('no_hba_match', 'none');
      this.#fatal(SQLSTATE.InvalidAuthorizationSpecification, noMatchMessage(input));
      return;
    }
    // The admin console has no server to relay to: without hba rules, or
    // with a passthrough line, it checks passwords itself (md5 semantics:
    // SCRAM when the stored secret is a SCRAM verifier).
    let ruleMethod = rule?.method ?? 'md5';
    if (this.#isAdmin && ruleMethod === 'passthrough') ruleMethod = 'md5';
    this.authMethod = ruleMethod;
    if (rule !== null) this.#debug({ line: rule.line, method: rule.method }, 'hba rule matched');
    if (ruleMethod === 'passthrough') {
      this.#startRelay();
      return;
    }
    if (ruleMethod === 'reject') {
      this.#loginFailed('hba_reject', ruleMethod);
      this.#fatal(SQLSTATE.InvalidAuthorizationSpecification, rejectMessage(input));
      return;
    }
    if (rule !== null && (rule.method === 'cert' || rule.options.clientcert !== undefined)) {
      if (!this.#checkClientCert(rule)) return;
    }
    this.#setState(STATE.Authenticating);
    this.#negotiateOwnProtocol();
    if (ruleMethod === 'trust' || ruleMethod === 'cert') {
      await this.#loginOk(ruleMethod, {});
      return;
    }
    if (!PASSWORD_METHODS.has(ruleMethod)) throw new Error(`unhandled hba method ${ruleMethod}`);
    const method = ruleMethod as PasswordMethod;
    if (method === 'password' && input.ssl === false && rule?.connType !== 'hostnossl') {
      this.#loginFailed('cleartext_over_plaintext', method);
      this.#fatal(
        SQLSTATE.InvalidAuthorizationSpecification,
        'cleartext password authentication over an unencrypted connection is refused',
        undefined,
        'Connect with TLS (sslmode=require), or allow it explicitly with a hostnossl line in auth.hba_file.',
      );
      return;
    }
    const addr = this.#raw.remoteAddress ?? '';
    if (this.#ctx.throttle.isThrottled(addr)) {
      this.#ctx.throttle.throttledTotal++;
      this.#ctx.count(this.#ctx.loginFailures, 'throttled');
      this.log.info({ addr }, 'login throttled after repeated failures');
      await new Promise((r) => setTimeout(r, this.#ctx.throttle.delayMs).unref());
      this.#fatal(SQLSTATE.InvalidAuthorizationSpecification, 'too many failed login attempts from this address; try again later');
      return;
    }
    const secret = await this.#lookupSecret();
    if (this.#isClosed()) return;
    const exchange = new ClientAuthExchange({
      method,
      user: this.#user,
      secret,
      channelBinding: input.ssl ? this.#ctx.channelBinding : null,
    });
    this.#exchange = exchange;
    const first = await exchange.start();
    if (this.#isClosed()) return;
    this.#send(first);
  }

  /** Admin console: only users listed in admin.users or admin.stats_users; sends the FATAL itself otherwise. */
  #adminAllowed(): boolean {
    const a = this.#ctx.config.admin;
    if (a.users.includes(this.#user) || a.stats_users.includes(this.#user)) return true;
    this.#loginFailed('not_admin_user', 'none');
    this.#fatal(
      SQLSTATE.InvalidAuthorizationSpecification,
      `user "${this.#user}" is not allowed to use the admin console`,
      undefined,
      'List the user in admin.users (or admin.stats_users for SHOW only).',
    );
    return false;
  }

  /** Client certificate checks for `cert` and `clientcert=`; sends the FATAL itself on failure. */
  #checkClientCert(rule: HbaRule): boolean {
    const sock = this.#tls !== null ? (this.#client as tls.TLSSocket) : null;
    if (sock === null || !sock.authorized) {
      this.#loginFailed('no_client_cert', rule.method);
      this.#fatal(SQLSTATE.InvalidAuthorizationSpecification, 'connection requires a valid client certificate');
      return false;
    }
    if (rule.method === 'cert' || rule.options.clientcert === 'verify-full') {
      const cert = sock.getPeerCertificate();
      if (!certAllows(this.#ctx.auth.ident, rule.options.map, cert, this.#user)) {
        this.#loginFailed('cert_name_mismatch', rule.method);
        const msg =
          rule.method === 'cert'
            ? `certificate authentication failed for user "${this.#user}"`
            : `certificate validation (clientcert=verify-full) failed for user "${this.#user}": CN mismatch`;
        this.#fatal(SQLSTATE.InvalidAuthorizationSpecification, msg);
        return false;
      }
    }
    return true;
  }

  /** Postern answers protocol negotiation itself when it authenticates: 3.0 to 3.2, no `_pq_` options. */
  #negotiateOwnProtocol(): void {
    const unsupported = [...this.#params.keys()].filter((k) => k.startsWith('_pq_.'));
    if (this.#clientMinor > LATEST_MINOR || unsupported.length > 0) {
      this.#send(encodeNegotiateProtocolVersion(this.#requestMinor, unsupported));
    }
    this.#negotiatedMinor = this.#requestMinor;
  }

  /** The user's stored secret: users file first, then auth_query (cached). null: unknown user. */
  async #lookupSecret(): Promise<StoredSecret | null> {
    const fromFile = this.#ctx.auth.users.get(this.#user);
    if (fromFile !== undefined) return fromFile;
    const a = this.#ctx.config.auth;
    if (a.query_user === undefined) return null;
    const key = `${this.#user}@${this.#database}`;
    const cached = this.#ctx.lookupCache.get(key);
    if (cached !== undefined && cached.expires > Date.now()) return cached.secret;
    const dbName = a.query_database ?? this.#database;
    const target = this.#ctx.target(dbName);
    if (target === undefined) return null;
    const conn = new ServerConn(target, a.query_user, this.log);
    try {
      const secret: ServerSecret = a.query_password !== undefined ? { password: a.query_password } : {};
      // DateStyle ISO: valid_until must parse whatever the role's or database's DateStyle is.
      await conn.login(
        secret,
        [
          ['application_name', 'postern auth_query'],
          ['DateStyle', 'ISO'],
        ],
        this.#ctx.config.limits.max_message_size,
      );
      const rows = await conn.query(a.query, [this.#user]);
      const row = rows[0];
      let found: StoredSecret | null = null;
      if (row !== undefined && typeof row[1] === 'string') {
        const validUntil = row[2] ?? null;
        // rolvaliduntil in the past: the password has expired; Postgres refuses the login.
        // Fails closed: '-infinity' and anything unparsable count as expired.
        const expired = validUntil !== null && validUntil !== 'infinity' && !(Date.parse(validUntil) >= Date.now());
        found = expired ? null : classifySecret(row[1]);
      }
      this.#ctx.lookupCache.set(key, { secret: found, expires: Date.now() + a.cache_ttl });
      return found;
    } catch (e) {
      this.log.warn({ err: (e as Error).message, database: dbName }, 'auth_query failed');
      return null;
    } finally {
      conn.close();
    }
  }

  async #onAuthMessage(buf: Buffer, start: number, end: number): Promise<void> {
    const exchange = this.#exchange;
    if (exchange === null || this.#authBusy) {
      this.#fatal(SQLSTATE.ProtocolViolation, 'unexpected password message');
      return;
    }
    this.#authBusy = true;
    let out: AuthOutcome;
    try {
      out = await exchange.onPassword(buf, start, end);
    } catch (e) {
      if (e instanceof ProtocolViolation) {
        this.#fatal(SQLSTATE.ProtocolViolation, 'malformed password packet');
        return;
      }
      throw e;
    } finally {
      this.#authBusy = false;
    }
    if (this.#state === STATE.Closed) return;
    const method = this.authMethod;
    switch (out.kind) {
      case 'continue':
        this.#send(out.send);
        return;
      case 'fail': {
        this.log.info({ user: this.#user, method, reason: out.reason }, 'password authentication failed');
        this.#loginFailed('bad_password', method);
        this.#ctx.throttle.recordFailure(this.#raw.remoteAddress ?? '');
        // A rotated password must be picked up at once: drop the cached lookup.
        this.#ctx.lookupCache.delete(`${this.#user}@${this.#database}`);
        // Same answer for a wrong password and an unknown user, as Postgres.
        this.#fatal(SQLSTATE.InvalidPassword, `password authentication failed for user "${this.#user}"`);
        return;
      }
      case 'ok': {
        this.#exchange = null;
        const creds: { password?: string; scramKeys?: { clientKey: Buffer; serverKey: Buffer } } = {};
        if (out.password !== undefined) creds.password = out.password;
        if (out.scramKeys !== undefined) creds.scramKeys = out.scramKeys;
        const final = exchange.finalMessage;
        if (final !== null) this.#send(final);
        await this.#loginOk(method, creds);
        return;
      }
      default:
        out satisfies never;
    }
  }

  #loginFailed(reason: string, method: string): void {
    this.#loginOutcome = { ok: false, reason };
    this.#ctx.count(this.#ctx.logins, `${method}/fail`);
    this.#ctx.count(this.#ctx.loginFailures, reason);
  }

  /** The client is authenticated: log into the server with Postern's credentials, then greet the client. */
  async #loginOk(method: string, creds: { password?: string; scramKeys?: { clientKey: Buffer; serverKey: Buffer } }): Promise<void> {
    const cfg = this.#ctx.config;
    this.#ctx.count(this.#ctx.logins, `${method}/ok`);
    this.#loginOutcome = { ok: true, reason: null };
    this.#debug({ user: this.#user, method }, 'client authenticated');
    if (this.#isAdmin) {
      this.#startAdmin();
      return;
    }
    const db = cfg.databases[this.#database];
    const target = this.#ctx.target(this.#database);
    if (db === undefined || target === undefined) {
      this.#fatal(SQLSTATE.InvalidCatalogName, `database "${this.#database}" does not exist`);
      return;
    }
    const mapping = cfg.users[this.#user];
    const serverUser = mapping?.server_user ?? db.server_user ?? this.#user;
    const secret: ServerSecret = {};
    const pw = mapping?.server_user !== undefined ? mapping.server_password : (mapping?.server_password ?? db.server_password);
    if (pw !== undefined) secret.password = pw;
    else if (serverUser === this.#user) {
      if (creds.password !== undefined) secret.password = creds.password;
      if (creds.scramKeys !== undefined) secret.scramKeys = creds.scramKeys;
      const stored = this.#ctx.auth.users.get(this.#user);
      if (stored?.kind === 'md5') secret.md5 = stored.hash;
    }
    for (const [k, v] of this.#params) {
      if (NOT_SETTINGS.has(k) || k.startsWith('_pq_.') || !GUC_NAME.test(k)) continue;
      this.#desired.set(k, v);
    }
    for (const [k, v] of parseOptions(this.#params.get('options') ?? '')) if (GUC_NAME.test(k)) this.#desired.set(k, v);
    const mode = mapping?.pool_mode ?? db.pool_mode ?? cfg.pool.pool_mode;
    const pool = this.#ctx.pools.get(target, serverUser, mode, this.#ctx.share(db.pool_size ?? cfg.pool.default_pool_size));
    // The newest credentials open the pool's next connections.
    if (secret.password !== undefined || secret.scramKeys !== undefined || secret.md5 !== undefined) pool.secret = secret;
    this.#pool = pool;
    this.#poolMode = mode;
    this.#traffic = this.#ctx.stats.traffic(this.#database, this.#user);
    this.#setState(STATE.Connecting);
    if (pool.welcome !== null) {
      // No server needed until the first query, in every mode (as in
      // PgBouncer): an idle client holds no server connection. In session
      // mode the one it gets then stays its own until it leaves.
      this.#greet(pool.welcome);
      return;
    }
    this.#waitingFor = 'login';
    this.#waitSince = performance.now();
    const conn = pool.acquire(this);
    if (conn !== null) this.onServer(conn);
  }

  /** The admin console: greet like a server, then every client frame goes to the console. */
  #startAdmin(): void {
    const cfg = this.#ctx.config.admin;
    const readOnly = !cfg.users.includes(this.#user);
    const exec = adminExecutor(this.#ctx, { readOnly, clientId: this.id, user: this.#user, alive: () => !this.#isClosed() });
    this.#admin = new AdminConsole({
      execute: exec.execute,
      describe: exec.describe,
      write: (b) => this.#toClient(b, 0, b.length),
      onTerminate: () => this.#close(),
      onFatal: (code, message) => this.#fatal(code, message),
      onInternalError: (e) => this.log.error({ err: e instanceof Error ? e.message : String(e) }, 'admin console error'),
      pause: () => this.#client.pause(),
      resume: () => this.#client.resume(),
    });
    this.#greet(
      new Map([
        ['server_version', `${this.#ctx.version} (postern)`],
        ['server_encoding', 'UTF8'],
        ['client_encoding', 'UTF8'],
        ['DateStyle', 'ISO, MDY'],
        ['integer_datetimes', 'on'],
        ['standard_conforming_strings', 'on'],
        ['application_name', this.#params.get('application_name') ?? ''],
      ]),
    );
    this.#clientStream?.setCount(null);
    this.#clientStream?.setInspect(VALID_FRONTEND);
  }

  /** PoolWaiter: a server connection is lent to this client. */
  onServer(conn: ServerConn): void {
    const why = this.#waitingFor;
    this.#waitingFor = null;
    if (this.#isClosed() || this.#pool === null) {
      this.#pool?.release(conn, true);
      return;
    }
    this.#server = conn;
    conn.owner = this.id;
    this.#serverParsesAtLend = conn.statements?.prepares ?? 0;
    if (this.#traffic !== null) this.#traffic.assignments++;
    if (this.#waitSince > 0) {
      const us = (performance.now() - this.#waitSince) * 1000;
      this.#waitSince = 0;
      const t = this.#traffic;
      if (t !== null) {
        t.waitUs += us;
        t.waitHist.observe(us);
      }
    }
    conn.attach(this.#serverLink, this.#serverInspect(), SERVER_PEEK);
    if (why === 'login') {
      const welcome = this.#pool.welcome ?? conn.params;
      if (this.#poolMode === 'session') this.#applySettings(conn);
      this.#greet(welcome);
      if (this.#poolMode !== 'session') this.#releaseServer(true);
      return;
    }
    // Transaction mode: carry the session's settings over, then what the client sent.
    if (this.#rw !== null) {
      conn.statements ??= new ServerStatements(this.#ctx.config.pool.max_prepared_statements);
      this.#rw.attach(conn.statements);
    }
    // The settings and what the client sent leave in one write.
    conn.cork();
    this.#applySettings(conn);
    const held = this.#held;
    this.#held = [];
    for (const chunk of held) this.#clientStream?.push(chunk);
    conn.uncork();
    if (this.#client.isPaused()) this.#client.resume();
  }

  /** PoolWaiter: no server will come. */
  onPoolError(code: string, message: string, detail?: string): void {
    this.#waitingFor = null;
    this.log.info({ code, message }, 'no server connection for the client');
    this.#fatal(code, message, detail);
  }

  /** AuthenticationOk, ParameterStatus (the client's own values where it asked for them), BackendKeyData, ReadyForQuery. */
  #greet(serverParams: ReadonlyMap<string, string>): void {
    const mine = this.#ctx.issueCancelKey(this.#negotiatedMinor >= 2 ? 32 : 4);
    this.#pid = mine.pid;
    this.cancelKey = mine.key;
    this.#ctx.register(mine.pid, this);
    const greet: Buffer[] = [AUTH_OK];
    for (const [k, v] of serverParams) greet.push(encodeParameterStatus(k, this.#desired.get(k) ?? v));
    greet.push(encodeBackendKeyData(mine.pid, mine.key), encodeReadyForQuery(0x49));
    this.#send(Buffer.concat(greet));
    this.#becomeActive();
    // Counted in every pooled mode: a hand-back is clean only with nothing in flight.
    this.#clientStream?.setCount(CLIENT_COUNT);
    if (this.#poolMode !== 'session') this.#clientStream?.setInspect(CLIENT_INSPECT_STATEMENTS);
    if (this.#poolMode === 'transaction' && this.#ctx.config.pool.max_prepared_statements > 0) {
      // The rewriter itself is made when the client first sends something
      // (see #onClientData): nothing can be owed before that, and an idle
      // client then holds none.
      this.#rwWanted = true;
      this.#clientStream?.setInspect(union(CLIENT_INSPECT_PREPARED, CLIENT_INSPECT_STATEMENTS));
    }
  }

  #makeRewriter(): PreparedRewriter {
    return new PreparedRewriter(this.#ctx.statements, {
      toServer: (b, st, e) => this.#toServer(b, st, e),
      toClient: (b, st, e) => this.#toClient(b, st, e),
    });
  }

  /**
   * Sends SET for every setting of this client that the server connection
   * does not have yet; their responses are swallowed. Each SET is its own
   * Query, so one refused value cannot void the others.
   */
  #applySettings(conn: ServerConn): void {
    // The common case, checked without building anything: nothing to carry over.
    if (this.#desiredSql.size === 0 && conn.appliedSql.size === 0 && conn.applied.size === 0 && this.#sameSettings(conn)) return;
    const sql: string[] = [];
    for (const [k, v] of this.#desired) {
      const current = conn.params.get(k) ?? conn.applied.get(k);
      if (current === v) continue;
      sql.push(`SET ${k} = ${quoteLiteral(v)}`);
      conn.applied.set(k, v);
    }
    for (const [k, v] of this.#desiredSql) {
      if (conn.params.has(k) || conn.appliedSql.get(k) === v) continue;
      sql.push(`SET ${k} = ${v}`);
      conn.appliedSql.set(k, v);
    }
    // What earlier clients set on this connection and this client did not: back to defaults.
    for (const k of [...conn.appliedSql.keys()]) {
      if (this.#desiredSql.has(k)) continue;
      sql.push(`SET ${k} = DEFAULT`);
      conn.appliedSql.delete(k);
    }
    for (const k of [...conn.applied.keys()]) {
      if (this.#desired.has(k) || conn.params.has(k)) continue;
      sql.push(`RESET ${k}`);
      conn.applied.delete(k);
    }
    if (sql.length === 0) return;
    this.#swallow += sql.length;
    conn.attach(this.#serverLink, SERVER_INSPECT_ALL);
    conn.write(Buffer.concat(sql.map((q) => encodeQuery(q))));
  }

  /** Every setting this client wants already has that value on conn (as reported or as applied). */
  #sameSettings(conn: ServerConn): boolean {
    for (const [k, v] of this.#desired) {
      if ((conn.params.get(k) ?? conn.applied.get(k)) !== v) return false;
    }
    return true;
  }

  #serverInspect(): Uint8Array {
    return this.#rw !== null ? SERVER_INSPECT_PREPARED : SERVER_INSPECT_POOLED;
  }

  /**
   * The client left mid-work: end any COPY, Sync, cancel what runs, and let
   * the pool drain and roll back before it lends the connection again.
   */
  #reclaimServer(conn: ServerConn, pending: number): void {
    const pool = this.#pool;
    if (pool === null) return;
    const busy = this.#sentSinceReady;
    this.#rw?.reset();
    this.#server = null;
    this.#countServerParses(conn);
    // CopyFail ends a COPY FROM STDIN (ignored otherwise); Sync ends any
    // extended-protocol batch and earns one more ReadyForQuery.
    conn.write(Buffer.concat([encodeCopyFail('client disconnected'), SYNC]));
    if (busy) this.#sendCancel(conn);
    pool.reclaim(conn, Math.max(pending, 0) + this.#swallow + 1);
  }

  /**
   * Everything the client sent has been answered: each counted frame
   * (Query, Sync, FunctionCall) got its ReadyForQuery, no frame came after
   * the last of them (an unsynced Parse/Bind/Execute would still be owed
   * responses), and the client sits between messages.
   */
  #clientSettled(): boolean {
    const stream = this.#clientStream;
    return stream !== null && stream.counted === this.#zSeen && stream.frames === stream.framesAtLastCounted && stream.atBoundary;
  }

  /** Parses Postern sent on this connection while this client held it (SHOW STATS total_server_parse_count). */
  #countServerParses(conn: ServerConn): void {
    const now = conn.statements?.prepares ?? 0;
    if (this.#traffic !== null && now > this.#serverParsesAtLend) this.#traffic.serverParses += now - this.#serverParsesAtLend;
    this.#serverParsesAtLend = now;
  }

  /** Gives the linked server back to its pool. */
  #releaseServer(reusable: boolean): void {
    const conn = this.#server;
    const pool = this.#pool;
    if (conn === null || pool === null) return;
    this.#server = null;
    this.#countServerParses(conn);
    const rw = this.#rw;
    if (rw !== null) {
      if (rw.idle) rw.detach();
      else {
        // Responses still owed: the connection cannot serve anyone else.
        rw.reset();
        reusable = false;
      }
    }
    pool.release(conn, reusable && conn.cancelsInFlight === 0 && this.#swallow === 0);
    // The server's 'drain' will not reach this session any more: a client
    // paused by that server's backpressure reads again now.
    if (this.#client.isPaused() && this.#waitingFor === null) this.#client.resume();
  }

  #becomeActive(): void {
    this.#clearLoginTimer();
    this.#setState(STATE.Active);
    this.#clientStream?.setInspect(CLIENT_INSPECT);
    if (!this.#isAdmin) {
      this.#traffic ??= this.#ctx.stats.traffic(this.#database, this.#user);
      this.#clientStream?.setPeek(CLIENT_PEEK);
    }
    this.#debug({ database: this.#database, user: this.#user, method: this.authMethod }, 'session active');
  }

  /** Auth passthrough: open a server connection with the client's own startup and relay its exchange. */
  #startRelay(): void {
    this.authMethod = 'passthrough';
    const cfg = this.#ctx.config;
    const db = cfg.databases[this.#database];
    const target = this.#ctx.target(this.#database);
    if (db === undefined || target === undefined) {
      this.#fatal(SQLSTATE.InvalidCatalogName, `database "${this.#database}" does not exist`);
      return;
    }
    this.#setState(STATE.Relaying);
    this.#clientStream?.setInspect(CLIENT_INSPECT_RELAY);
    // Hold the client until the server is there to receive what it sends.
    this.#client.pause();
    // Forward the client's parameters in order, with the database name mapped.
    const out: [string, string][] = [];
    for (const [k, v] of this.#params) out.push([k, k === 'database' ? target.dbname : v]);
    if (!this.#params.has('database')) out.push(['database', target.dbname]);
    const startup = encodeStartup((3 << 16) | this.#requestMinor, out);
    const server = new ServerConn(target, this.#user, this.log);
    this.#server = server;
    server.openRelay(startup, this.#serverLink, SERVER_INSPECT_STARTUP, cfg.limits.max_message_size).then(
      () => {
        if (this.#state !== STATE.Relaying) {
          server.destroy();
          return;
        }
        this.#debug({ server: `${target.host}:${target.port}`, tls: server.tls?.version ?? null }, 'server connected');
        this.#client.resume();
      },
      (err: Error) => {
        this.#server = null;
        this.#onServerConnectFailed(err);
      },
    );
  }

  #onServerConnectFailed(err: Error): void {
    const code = err instanceof ServerConnectError ? err.code : ((err as NodeJS.ErrnoException).code ?? 'ERR_SERVER_CONNECT');
    this.log.warn({ database: this.#database, err: code, detail: err.message }, 'cannot connect to server');
    if (this.#state === STATE.Closed) return;
    this.#fatal(SQLSTATE.ConnectionFailure, `could not connect to the server for database "${this.#database}"`);
  }

  #internalError(e: Error): void {
    this.#linkedLog().error({ err: e.message, stack: e.stack }, 'internal error');
    this.#fatal(SQLSTATE.InternalError, 'internal error in Postern');
  }

  // ---------------------------------------------------------------- forwarding

  #onClientData = (chunk: Buffer): void => {
    this.bytesIn += chunk.length;
    if (this.#traffic !== null) this.#traffic.received += chunk.length;
    this.#lastClientActivity = Date.now();
    if (this.#server === null && this.#pool !== null && this.#state === STATE.Active) {
      // Before the server is attached: it must be attached with the rewriter's inspect table.
      if (this.#rwWanted && this.#rw === null) this.#rw = this.#makeRewriter();
      // Transaction mode between transactions: a Terminate alone needs no server.
      if (this.#held.length === 0 && chunk.length === 5 && chunk[0] === FE.Terminate) {
        this.#close();
        return;
      }
      // Hold what arrived; when no server is free at once, stop reading until one is lent.
      this.#held.push(chunk);
      if (this.#waitingFor === null) {
        this.#waitingFor = 'txn';
        this.#waitSince = performance.now();
        const conn = this.#pool.acquire(this);
        if (conn !== null) {
          this.onServer(conn);
          return;
        }
      }
      this.#client.pause();
      return;
    }
    // Everything this chunk makes Postern send to the server leaves in one write.
    const server = this.#server;
    if (server === null) {
      this.#clientStream?.push(chunk);
      return;
    }
    server.cork();
    this.#clientStream?.push(chunk);
    server.uncork();
  };

  #onClientDrain = (): void => {
    this.#server?.resume();
  };

  #toServer(buf: Buffer, start: number, end: number): void {
    const server = this.#server;
    if (server === null) return;
    this.#sentSinceReady = true;
    const ok = server.write(start === 0 && end === buf.length ? buf : buf.subarray(start, end));
    if (!ok) this.#client.pause();
  }

  /** The session's logger, carrying the linked server connection's id too when there is one (made only when a line is logged). */
  #linkedLog(): Logger {
    const server = this.#server;
    return server === null ? this.log : this.log.child({ server: server.id });
  }

  /** A frame Postern made itself (greeting, auth, errors): counted like forwarded bytes. */
  #send(buf: Buffer): void {
    this.bytesOut += buf.length;
    if (this.#traffic !== null) this.#traffic.sent += buf.length;
    this.#client.write(buf);
  }

  #toClient(buf: Buffer, start: number, end: number): void {
    this.bytesOut += end - start;
    if (this.#traffic !== null) this.#traffic.sent += end - start;
    const ok = this.#client.write(start === 0 && end === buf.length ? buf : buf.subarray(start, end));
    if (!ok) this.#server?.pause();
  }

  #clientSink: FrameSink = {
    onPeek: (type, buf, start, end) => {
      if (this.#state === STATE.Active) this.#observeClient(type, buf, start, end);
    },
    onRun: (buf, start, end) => {
      if (this.#state === STATE.Active && this.#rw !== null) this.#rw.onClientBytes(buf, start, end);
      else if (this.#state === STATE.Active || this.#state === STATE.Relaying) this.#toServer(buf, start, end);
    },
    onMessage: (type, buf, start, end) => {
      if (type === FE.Terminate) {
        // A pooled server outlives its client: the goodbye is not passed on.
        if ((this.#state === STATE.Active || this.#state === STATE.Relaying) && this.#pool === null) this.#toServer(buf, start, end);
        this.#debug('client terminated');
        this.#clientStream?.kill();
        this.#close();
        return;
      }
      if (this.#state === STATE.Relaying) {
        this.#onRelayedPassword(buf, start, end);
        return;
      }
      if (this.#state === STATE.Authenticating && type === FE.Password) {
        this.#onAuthMessage(buf, start, end).catch((e: Error) => this.#internalError(e));
        return;
      }
      if (this.#state === STATE.Active) {
        if (this.#admin !== null) {
          this.#admin.onFrame(type, buf, start, end);
          return;
        }
        if ((type === FE.Query || type === FE.Parse) && this.#pool !== null && this.#poolMode !== 'session')
          this.#onStatementText(type, buf, start, end);
        const rw = this.#rw;
        if (rw !== null && PREPARED_CLIENT_INSPECT[type] === 1) {
          try {
            rw.onClientFrame(type, buf, start, end);
          } catch (e) {
            if (e instanceof ProtocolViolation) this.#fatal(SQLSTATE.ProtocolViolation, e.message);
            else throw e;
          }
        } else this.#toServer(buf, start, end);
        if (CLIENT_PEEK[type] === 1) this.#observeClient(type, buf, start, end);
        return;
      }
      // Postgres's answer to anything but a password message during authentication.
      this.#fatal(SQLSTATE.ProtocolViolation, `expected password response, got message type ${type}`);
    },
    onViolation: (kind, detail) => this.#clientViolation(kind, detail),
  };

  /**
   * Session features in a Query or Parse text (transaction/statement mode):
   * settings carried, statements forgotten, or the client pinned to its
   * server. Runs before the frame is passed on; cached by text.
   */
  #onStatementText(type: number, buf: Buffer, start: number, end: number): void {
    let from = start + 5;
    if (type === FE.Parse) {
      const nameEnd = buf.indexOf(0, from);
      if (nameEnd < 0 || nameEnd >= end) return;
      from = nameEnd + 1;
    }
    const textEnd = buf.indexOf(0, from);
    if (textEnd < 0 || textEnd >= end) return;
    const scs = this.#server?.params.get('standard_conforming_strings') !== 'off';
    const fx = sessionEffects(buf.toString('utf8', from, textEnd), scs);
    const server = this.#server;
    if (fx.resetAll) {
      for (const k of this.#desiredSql.keys()) this.#desiredSql.set(k, 'DEFAULT');
    }
    for (const [k, v] of fx.sets) {
      if (!GUC_NAME.test(k) || server?.params.has(k)) continue;
      this.#desiredSql.set(k, v);
      server?.appliedSql.set(k, v);
    }
    for (const name of fx.forget) {
      this.#rw?.forgetClient(name);
      if (name === null) server?.statements?.clear();
    }
    if (fx.pin !== null && this.pinned === null && this.#poolMode === 'transaction') {
      this.pinned = fx.pin;
      this.#ctx.count(this.#ctx.pins, fx.pin);
      this.#linkedLog().info({ feature: fx.pin }, 'client pinned to its server connection for the rest of its session');
    }
  }

  #onRelayedPassword(buf: Buffer, start: number, end: number): void {
    if (this.#saslRequested && this.#server?.tls && saslGs2Flag(buf, start, end) === GS2_CLIENT_SUPPORTS_CB) {
      // libpq on TLS sends "y": it supports channel binding but saw no -PLUS
      // offer. A server whose own link is TLS must then refuse (downgrade
      // protection), and a relayed exchange cannot be re-bound without the
      // user's verifier. Say so precisely instead of relaying a puzzle.
      this.#saslRequested = false;
      this.#fatal(
        SQLSTATE.InvalidAuthorizationSpecification,
        'SCRAM authentication cannot be relayed: the client supports channel binding and the server link uses TLS',
        `The server refuses a relayed SCRAM exchange from a client that supports channel binding. Connect with channel_binding=disable, set databases.${this.#database}.tls.mode to disable, or authenticate at Postern (auth.hba_file).`,
      );
      return;
    }
    this.#saslRequested = false;
    this.#toServer(buf, start, end);
  }

  #serverLink: ServerLink = {
    // What one server chunk makes Postern send to the client leaves in one write.
    onServerChunk: (start) => {
      const client = this.#client;
      if (start) {
        client.cork();
        return false;
      }
      client.uncork();
      // Anything still queued may be a view of the chunk's memory.
      return client.writableLength > 0;
    },
    onServerRun: (buf, start, end) => this.#toClient(buf, start, end),
    onServerPeek: (type, buf, start, end) => {
      if (this.#swallow === 0) this.#tracker?.onServerFrame(type, buf, start, end);
    },
    onServerMessage: (type, buf, start, end) => {
      try {
        this.#onServerMessage(type, buf, start, end);
      } catch (e) {
        if (e instanceof ProtocolViolation) this.#serverViolation(e.kind, e.message);
        else throw e;
      }
    },
    onServerViolation: (kind, detail) => this.#serverViolation(kind, detail),
    onServerClosed: () => this.#onServerClose(),
    onServerDrain: () => this.#client.resume(),
  };

  #onServerMessage(type: number, buf: Buffer, start: number, end: number): void {
    if (this.#state === STATE.Active || (this.#pool !== null && this.#swallow > 0)) {
      if (this.#swallow > 0) {
        this.#onSwallowed(type, buf, start, end);
        return;
      }
      // Frames the tracker peeks at elsewhere arrive here when they are inspected anyway.
      if (SERVER_PEEK[type] === 1) this.#tracker?.onServerFrame(type, buf, start, end);
      if (type === BE.ErrorResponse) {
        const e = decodeNotice(buf, start, end);
        if (e.severityV === 'FATAL' || e.severityV === 'PANIC' || e.severity === 'FATAL' || e.severity === 'PANIC')
          this.#serverSaidFatal = true;
        this.#countError(e.code);
      } else if (type === BE.ParameterStatus && this.#pool !== null) {
        // The client changed a reported setting (SET TIME ZONE ...): it follows the client to the next server.
        const [k, v] = decodeParameterStatus(buf, start, end);
        this.#desired.set(k, v);
        this.#server?.applied.delete(k);
      } else if (type === BE.ReadyForQuery && this.#pool !== null) {
        this.#onReadyForQuery(buf, start, end);
        return;
      }
      if (this.#rw !== null) this.#rw.onServerFrame(type, buf, start, end);
      else this.#toClient(buf, start, end);
      return;
    }
    if (!this.#sawFirstServerMessage) {
      this.#sawFirstServerMessage = true;
      if (type === BE.NegotiateProtocolVersion) {
        const npv = decodeNegotiateProtocolVersion(buf, start, end);
        this.#negotiatedMinor = Math.min(npv.minor, this.#requestMinor);
        this.#send(encodeNegotiateProtocolVersion(this.#negotiatedMinor, npv.unsupported));
        return;
      }
      if (this.#clientMinor > this.#requestMinor) {
        // The server took our (capped) version as is; the client asked for more.
        this.#send(encodeNegotiateProtocolVersion(this.#requestMinor, []));
      }
    }
    switch (type) {
      case BE.Authentication: {
        const auth = decodeAuth(buf, start, end);
        if (auth.code === AUTH.SASL) {
          // Channel binding ties SCRAM to the TLS channel the *server* sees;
          // the client's channel ends at Postern, so -PLUS cannot pass through.
          const mechs = decodeSaslMechanisms(auth.data).filter((m) => !m.endsWith('-PLUS'));
          this.#debug({ mechanisms: mechs }, 'server requests SASL');
          this.#saslRequested = true;
          this.#send(encodeAuthSasl(mechs));
          return;
        }
        if (auth.code === AUTH.Ok) {
          this.#debug('authenticated by server');
          this.#ctx.count(this.#ctx.logins, 'passthrough/ok');
          this.#loginOutcome = { ok: true, reason: null };
        }
        this.#toClient(buf, start, end);
        return;
      }
      case BE.BackendKeyData: {
        const server = this.#server;
        if (server !== null) server.key = decodeBackendKeyData(buf, start, end);
        const mine = this.#ctx.issueCancelKey(this.#negotiatedMinor >= 2 ? 32 : 4);
        this.#pid = mine.pid;
        this.cancelKey = mine.key;
        this.#ctx.register(mine.pid, this);
        this.#send(encodeBackendKeyData(mine.pid, mine.key));
        return;
      }
      case BE.ErrorResponse: {
        const e = decodeNotice(buf, start, end);
        this.#serverSaidFatal = true;
        this.#countError(e.code);
        if (e.code === SQLSTATE.InvalidPassword) this.#ctx.count(this.#ctx.logins, 'passthrough/fail');
        if (this.#loginOutcome === null) this.#loginOutcome = { ok: false, reason: `server_${e.code ?? 'error'}` };
        this.#linkedLog().info({ code: e.code ?? null, database: this.#database, user: this.#user }, 'server refused the session');
        this.#toClient(buf, start, end);
        return;
      }
      case BE.ReadyForQuery: {
        this.#toClient(buf, start, end);
        this.#server?.markLoggedIn();
        this.#server?.attach(this.#serverLink, SERVER_INSPECT_ACTIVE, SERVER_PEEK);
        this.#becomeActive();
        return;
      }
      case BE.NegotiateProtocolVersion:
        throw new ProtocolViolation('malformed', 'NegotiateProtocolVersion after the first message');
      default:
        this.#toClient(buf, start, end);
    }
  }

  /** A response to one of Postern's own statements: never shown to the client. */
  #onSwallowed(type: number, buf: Buffer, start: number, end: number): void {
    if (type === BE.ParameterStatus) {
      const [k, v] = decodeParameterStatus(buf, start, end);
      // The server's spelling of the value (e.g. "ISO, MDY") is what the client now has.
      if (this.#desired.has(k)) this.#desired.set(k, v);
      return;
    }
    if (type === BE.ErrorResponse) {
      const e = decodeNotice(buf, start, end);
      this.#linkedLog().warn(
        { code: e.code ?? null, detail: e.message ?? null },
        'a setting could not be applied on the server connection',
      );
      return;
    }
    if (type !== BE.ReadyForQuery) return;
    this.#swallow--;
    if (this.#swallow > 0) return;
    this.#server?.attach(this.#serverLink, this.#serverInspect(), SERVER_PEEK);
    if (this.#releaseAfterSwallow) {
      this.#releaseAfterSwallow = false;
      // The client may already have sent its next statement to this server.
      if (this.#clientSettled()) this.#releaseServer(true);
    }
  }

  /** ReadyForQuery in a pooled session: forward it, and in transaction/statement mode give the server back when idle. */
  #onReadyForQuery(buf: Buffer, start: number, end: number): void {
    const status = buf[start + 5] as number;
    this.#sentSinceReady = false;
    const stream = this.#clientStream;
    if (this.#poolMode === 'statement' && status !== 0x49 /* I */ && this.#server !== null) {
      // A transaction block began: refused in statement mode. Roll it back
      // quietly and answer the client with an error in its place.
      this.#zSeen++;
      this.#swallow++;
      this.#releaseAfterSwallow = true;
      this.#server.attach(this.#serverLink, SERVER_INSPECT_ALL);
      this.#server.write(encodeQuery('ROLLBACK'));
      this.#countError(SQLSTATE.FeatureNotSupported);
      this.#send(
        Buffer.concat([
          encodeError({
            severity: 'ERROR',
            code: SQLSTATE.FeatureNotSupported,
            message: 'transaction blocks are not allowed in statement pooling mode',
            hint: 'Use pool_mode transaction (or session) for this database or user.',
          }),
          encodeReadyForQuery(0x49),
        ]),
      );
      return;
    }
    this.#zSeen++;
    const rw = this.#rw;
    if (rw !== null) {
      rw.onServerFrame(BE.ReadyForQuery, buf, start, end);
      // The rewriter knows exactly what is still owed (it sees Syncs skipped in COPY, errors, held input).
      if (status === 0x49 && this.pinned === null && rw.idle && !rw.holding && stream?.atBoundary) this.#releaseServer(true);
      return;
    }
    this.#toClient(buf, start, end);
    if (this.#poolMode === 'session' || stream === null) return;
    if (status === 0x49 && this.pinned === null && this.#clientSettled()) this.#releaseServer(true);
  }

  /** A client frame of a CLIENT_PEEK type, for statistics (after it went on, or while it does). */
  #observeClient(type: number, buf: Buffer, start: number, end: number): void {
    const t = this.#traffic;
    if (t !== null) {
      if (type === FE.Parse) t.parses++;
      else if (type === FE.Bind) t.binds++;
    }
    // Made at the first statement: an idle client holds none.
    this.#tracker ??= new QueryTracker(this.#trackerSink, this.#ctx.stats.wantsTextFn);
    this.#tracker.onClientFrame(type, buf, start, end);
  }

  /** An ErrorResponse reaches the client: counted by SQLSTATE class. */
  #countError(code: string | undefined): void {
    this.#ctx.count(this.#ctx.stats.errors, (code ?? 'XX000').slice(0, 2));
  }

  /** Where the tracker reports finished statements and query/transaction cycles. */
  #trackerSink: TrackerSink = {
    onStatement: (text, durationUs, rows, sqlstate) => {
      this.#ctx.stats.statement({
        text,
        database: this.#database,
        user: this.#user,
        application: this.applicationName,
        durationUs,
        rows,
        sqlstate,
        at: Date.now(),
        client: this.id,
      });
    },
    onCycle: (queryUs, xactUs) => {
      const t = this.#traffic;
      this.#requestAt = Date.now();
      if (t === null) return;
      t.queries++;
      t.queryUs += queryUs;
      t.queryHist.observe(queryUs);
      if (xactUs >= 0) {
        t.xacts++;
        t.xactUs += xactUs;
        t.xactHist.observe(xactUs);
      }
    },
  };

  #clientViolation(kind: ViolationKind, detail: string): void {
    this.#ctx.count(this.#ctx.stats.violations, `client/${kind}`);
    this.#linkedLog().info({ kind, detail }, 'protocol violation by client');
    this.#fatal(
      SQLSTATE.ProtocolViolation,
      detail.startsWith('invalid message type') ? `invalid frontend message type ${detail.slice(21)}` : 'invalid message length',
    );
  }

  #serverViolation(kind: ViolationKind, detail: string): void {
    this.#ctx.count(this.#ctx.stats.violations, `server/${kind}`);
    this.#linkedLog().warn({ kind, detail, database: this.#database }, 'protocol violation by server');
    // The client may have part of a message already; only a clean boundary allows an error frame.
    this.#server?.destroy();
    this.#server = null;
    this.#fatal(SQLSTATE.ProtocolViolation, 'server sent an invalid message');
  }

  // ---------------------------------------------------------------- cancel / shutdown

  cancel(): void {
    const server = this.#server;
    if (server === null || this.#state === STATE.Closed) return;
    this.#sendCancel(server);
  }

  /** Delivers a CancelRequest for `server` with its own key; counted until delivered. */
  #sendCancel(server: ServerConn): void {
    const key = server.key;
    if (key === null) return;
    const t = server.target;
    // Until the cancel is delivered this server must not serve anyone else.
    server.cancelsInFlight++;
    connectServer(t.host, t.port, t.tls, t.connectTimeout).then(
      (c) => {
        c.socket.on('error', () => {});
        c.socket.on('close', () => {
          server.cancelsInFlight--;
        });
        c.socket.end(encodeCancel(key.pid, key.key));
        c.socket.resume();
      },
      (err: Error) => {
        server.cancelsInFlight--;
        this.#linkedLog().warn({ err: err.message }, 'cancel could not reach the server');
      },
    );
  }

  /** Janitor: client_idle_timeout (no transaction open) and idle_transaction_timeout (inside one). */
  tick(now: number): void {
    if (this.#state !== STATE.Active || this.#pool === null) return;
    const cfg = this.#ctx.config.pool;
    const idle = now - this.#lastClientActivity;
    const server = this.#server;
    const inTransaction = server !== null && server.txStatus !== 0x49 && this.#clientStream?.counted === this.#zSeen;
    if (inTransaction && cfg.idle_transaction_timeout > 0 && idle > cfg.idle_transaction_timeout) {
      this.#linkedLog().info({ idleMs: idle }, 'idle_transaction_timeout');
      this.terminate(SQLSTATE.IdleInTransactionSessionTimeout, 'terminating connection due to idle-in-transaction timeout');
    } else if (
      !inTransaction &&
      cfg.client_idle_timeout > 0 &&
      idle > cfg.client_idle_timeout &&
      this.#clientStream?.counted === this.#zSeen
    ) {
      this.#linkedLog().info({ idleMs: idle }, 'client_idle_timeout');
      this.terminate(SQLSTATE.IdleSessionTimeout, 'terminating connection due to idle-session timeout');
    }
  }

  terminate(code: string, message: string): void {
    if (this.#state === STATE.Closed) return;
    if (this.#server === null || this.#server.atBoundary) this.#fatal(code, message);
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
    this.#debug({ err: (err as NodeJS.ErrnoException).code ?? err.message }, 'client socket error');
  };

  #onClientClose = (): void => {
    if (this.#state !== STATE.Closed) this.#debug('client disconnected');
    this.#close();
  };

  #onServerClose(): void {
    const server = this.#server;
    if (this.#state === STATE.Closed || server === null) return;
    this.#server = null;
    if (this.#serverSaidFatal) {
      this.#close();
      return;
    }
    this.#linkedLog().warn({ database: this.#database }, 'server closed the connection unexpectedly');
    if (server.atBoundary) {
      this.#fatal(
        SQLSTATE.ConnectionFailure,
        'server closed the connection unexpectedly',
        'This probably means the server terminated abnormally before or while processing the request.',
      );
    } else {
      // Mid-message: an error frame would be read as the rest of that message.
      this.#destroy();
    }
  }

  /** FATAL ErrorResponse to the client, then close both sides. */
  #fatal(code: string, message: string, detail?: string, hint?: string): void {
    if (this.#state === STATE.Closed) return;
    this.#countError(code);
    const spec: ErrorSpec = { severity: 'FATAL', code, message };
    if (detail !== undefined) spec.detail = detail;
    if (hint !== undefined) spec.hint = hint;
    const client = this.#client;
    if (!client.destroyed && client.writable) this.#send(encodeError(spec));
    this.#close();
  }

  /** Graceful close: flush what is queued, tell the server goodbye. */
  #close(): void {
    if (this.#state === STATE.Closed) return;
    this.#setState(STATE.Closed);
    this.#clearLoginTimer();
    upgrading.delete(this.#raw);
    this.#ctx.unregister(this.#pid, this);
    const clientAtBoundary = this.#clientStream === null || this.#clientStream.atBoundary;
    const rwIdle = this.#rw === null || this.#rw.idle;
    this.#clientStream?.kill();
    const server = this.#server;
    if (this.#pool !== null) {
      if (this.#waitingFor !== null) this.#pool.removeWaiter(this);
      // Clean now: lend it on. Work in flight or a transaction open: cancel,
      // drain and roll back first (Pool.reclaim). Pinned, or cut inside a
      // message either way: close it.
      const pending = this.#clientStream !== null ? this.#clientStream.counted - this.#zSeen : 0;
      if (server !== null) {
        const clean = !this.#sentSinceReady && server.txStatus === 0x49 && this.#swallow === 0 && rwIdle;
        if (this.pinned !== null || !clientAtBoundary || !server.atBoundary) this.#releaseServer(false);
        else if (clean) this.#releaseServer(true);
        else this.#reclaimServer(server, pending);
      }
      this.#rw?.dispose();
    } else if (server !== null) {
      this.#server = null;
      // Terminate only between client messages: never inside one we were forwarding.
      server.close(clientAtBoundary);
    }
    const client = this.#client;
    if (!client.destroyed) {
      client.end();
      setTimeout(() => client.destroy(), 5000).unref();
    }
    if (client !== this.#raw && !this.#raw.destroyed) setTimeout(() => this.#raw.destroy(), 5000).unref();
    this.#admin?.close();
    this.#debug({ bytesIn: this.bytesIn, bytesOut: this.bytesOut, ms: Date.now() - this.startedAt }, 'session closed');
    if (this.#user !== '') this.#ctx.audit?.session(this.#auditRecord());
  }

  /** The audit trail's record of this session (docs/observability.md). Never a secret or a literal. */
  #auditRecord(): Record<string, unknown> {
    return {
      client: this.id,
      addr: this.#raw.remoteAddress ?? null,
      port: this.#raw.remotePort ?? null,
      tls: this.#tls === null ? null : { version: this.#tls.version, cipher: this.#tls.cipher, direct: this.#tls.direct },
      auth_method: this.authMethod || null,
      outcome: this.#loginOutcome === null ? 'incomplete' : this.#loginOutcome.ok ? 'ok' : 'fail',
      reason: this.#loginOutcome?.reason ?? null,
      database: this.#database,
      user: this.#user,
      application_name: this.applicationName,
      admin: this.#isAdmin,
      start: new Date(this.startedAt).toISOString(),
      end: new Date().toISOString(),
      bytes_in: this.bytesIn,
      bytes_out: this.bytesOut,
      statements: this.#tracker?.statements ?? 0,
    };
  }

  get applicationName(): string {
    return this.#desired.get('application_name') ?? this.#params.get('application_name') ?? '';
  }

  /** What SHOW CLIENTS, SHOW POOLS and metrics need to know about this client. */
  info(): ClientInfo {
    const state =
      this.#state === STATE.Active
        ? this.#waitingFor !== null
          ? 'waiting'
          : 'active'
        : this.#waitingFor !== null
          ? 'waiting'
          : this.#state === STATE.Closed
            ? 'closed'
            : 'login';
    return {
      id: this.id,
      state,
      database: this.#database,
      user: this.#user,
      addr: this.#raw.remoteAddress ?? '',
      port: this.#raw.remotePort ?? 0,
      localAddr: this.#raw.localAddress ?? '',
      localPort: this.#raw.localPort ?? 0,
      connectTime: this.startedAt,
      requestTime: this.#requestAt,
      waitingSince: this.#waitSince,
      pid: this.#pid,
      tls: this.#tls === null ? '' : `${this.#tls.version}/${this.#tls.cipher}`,
      applicationName: this.applicationName,
      poolKey: this.#pool?.key ?? null,
      admin: this.#isAdmin,
      pinned: this.pinned,
      preparedStatements: this.#rw?.statementCount ?? 0,
      outBuffered: this.#client.writableLength,
      server: this.#server,
      relayed: this.#pool === null && this.#server !== null,
    };
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
    return this.#server?.tls ?? null;
  }
}
