// One client session, from the first byte to the close: negotiation
// (SSLRequest, GSSENCRequest, direct TLS, CancelRequest), the TLS upgrade,
// the StartupMessage, authentication (by Postern per the hba rules, or relayed
// to the server: `passthrough`), the server connection, and then byte-exact
// forwarding in both directions with backpressure. Pooled sessions hand their
// steady state to the pooled link (pooled-link.ts); relayed and admin sessions
// stay here.
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
import { ServerConnectError } from '../backend/connect.ts';
import { ServerConn, type ServerLink, type ServerSecret } from '../backend/server-conn.ts';
import { startupSettings } from '../backend/settings.ts';
import { ADMIN_DATABASES } from '../config/load.ts';
import type { Logger } from '../observability/log.ts';
import {
  AUTH_OK,
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
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../protocol/backend.ts';
import { AUTH, BE, FE, frontendLimits, LATEST_MINOR, TX, typeTable, VALID_FRONTEND } from '../protocol/codes.ts';
import { BAD_LENGTH, type FrameSink, MessageStream, NEED_MORE, startupFrame } from '../protocol/framer.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { decodeStartup, encodeStartup, type StartupPacket } from '../protocol/startup.ts';
import { ProtocolViolation, type ViolationKind } from '../protocol/violation.ts';
import type { TrafficStats } from '../stats/registry.ts';
import { QueryTracker, type TrackerSink } from '../stats/tracker.ts';
import { ALPN_POSTGRESQL } from '../tls/contexts.ts';
import type { ClientInfo, Context, SessionHandle } from './context.ts';
import { type LinkShell, PooledLink } from './pooled-link.ts';

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
/** Every client message type but a password message: what a pooled or admin session accepts once logged in. */
const VALID_LOGGED_IN = (() => {
  const t = new Uint8Array(VALID_FRONTEND);
  t[FE.Password] = 0;
  return t;
})();
/** Client frames shown to the statistics tracker while they are forwarded. */
const CLIENT_PEEK = typeTable([FE.Query, FE.Parse, FE.Bind, FE.Execute, FE.Sync, FE.FunctionCall, FE.Close, FE.Describe]);
/** Server frames shown to the statistics tracker (those not inspected anyway). */
const SERVER_PEEK = typeTable([BE.CommandComplete, BE.EmptyQueryResponse, BE.PortalSuspended, BE.ReadyForQuery, BE.ErrorResponse]);
/** A failed auth_query lookup (server down, lookup role refused): not the same as an unknown user. */
const LOOKUP_FAILED = Symbol('lookup failed');

/** replication=true/database/on/1/yes: a walsender session, which a pool cannot serve. */
function isReplication(v: string | undefined): boolean {
  return v !== undefined && /^(true|on|yes|1|database)$/i.test(v);
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

export class ClientSession implements SessionHandle {
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
  /** Pooled sessions: the link that owns the steady state (null: relayed or admin). */
  #link: PooledLink | null = null;
  #overLimit: boolean;
  /** The secret the client was authenticated against (users file or auth_query): an MD5 hash also answers a server's MD5 challenge. */
  #stored: StoredSecret | null = null;
  /** Last time the client sent anything (coarse: for idle timeouts checked by the janitor). */
  #lastClientActivity = Date.now();
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
    // Until authenticated, every message is small (PostgreSQL's auth limits), checked on its header.
    this.#clientStream = new MessageStream(
      this.#clientSink,
      VALID_FRONTEND,
      CLIENT_INSPECT_ALL,
      frontendLimits(cfg.limits.max_message_size, false),
    );
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
    if (secret === LOOKUP_FAILED) {
      // Postern could not ask: not the client's fault, not a password failure, not throttled.
      this.#loginOutcome = { ok: false, reason: 'auth_query_failed' };
      this.#ctx.count(this.#ctx.loginFailures, 'auth_query_failed');
      this.#fatal(
        SQLSTATE.ConnectionFailure,
        `could not connect to the server for database "${this.#database}"`,
        'Postern could not look up the credentials of this user (auth_query).',
      );
      return;
    }
    this.#stored = secret;
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

  /** The user's stored secret: users file first, then auth_query (cached). null: unknown user; LOOKUP_FAILED: the lookup itself failed. */
  async #lookupSecret(): Promise<StoredSecret | null | typeof LOOKUP_FAILED> {
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
      return LOOKUP_FAILED;
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
    const mode = mapping?.pool_mode ?? db.pool_mode ?? cfg.pool.pool_mode;
    if (isReplication(this.#params.get('replication'))) {
      // A walsender session speaks another protocol and cannot be pooled.
      this.#fatal(
        SQLSTATE.FeatureNotSupported,
        `replication connections cannot be pooled (database "${this.#database}" uses pool_mode ${mode})`,
        'The startup packet asked for replication.',
        'Relay replication clients to the server: a passthrough line for them in auth.hba_file.',
      );
      return;
    }
    const startup = startupSettings(this.#params);
    if (!(startup instanceof Map)) {
      this.#fatal(startup.code, startup.message);
      return;
    }
    const secret: ServerSecret = {};
    const pw = mapping?.server_user !== undefined ? mapping.server_password : (mapping?.server_password ?? db.server_password);
    if (pw !== undefined) secret.password = pw;
    else if (serverUser === this.#user) {
      if (creds.password !== undefined) secret.password = creds.password;
      if (creds.scramKeys !== undefined) secret.scramKeys = creds.scramKeys;
      // An MD5 hash from the users file or auth_query answers the server's MD5 challenge.
      const stored = this.#stored ?? this.#ctx.auth.users.get(this.#user) ?? null;
      if (stored?.kind === 'md5') secret.md5 = stored.hash;
    }
    const pool = this.#ctx.pools.get(target, serverUser, mode, this.#ctx.share(db.pool_size ?? cfg.pool.default_pool_size));
    // The newest credentials open the pool's next connections.
    if (secret.password !== undefined || secret.scramKeys !== undefined || secret.md5 !== undefined) pool.secret = secret;
    this.#traffic = this.#ctx.stats.traffic(this.#database, this.#user);
    this.#setState(STATE.Connecting);
    // No server is needed until the first query, in every mode (as in
    // PgBouncer), once this pool has checked the client's startup settings.
    const link = new PooledLink(this.#shell(), pool, mode, startup);
    this.#link = link;
    link.start();
  }

  /** What the pooled link may ask of this session. */
  #shell(): LinkShell {
    const session = this;
    const stream = this.#clientStream as MessageStream;
    return {
      id: this.id,
      ctx: this.#ctx,
      database: this.#database,
      user: this.#user,
      stream,
      get traffic() {
        return session.#traffic as TrafficStats;
      },
      logFor: (server) => (server === null ? this.log : this.log.child({ server: server.id })),
      send: (buf) => this.#send(buf),
      toClient: (buf, start, end) => this.#toClient(buf, start, end),
      clientChunk: (start) => this.#clientChunk(start),
      pauseClient: () => this.#client.pause(),
      resumeClient: () => {
        if (this.#client.isPaused()) this.#client.resume();
      },
      greet: (params) => this.#greet(params),
      fatal: (code, message, detail, hint) => this.#fatal(code, message, detail, hint),
      terminate: (code, message) => this.terminate(code, message),
      destroy: () => this.#destroy(),
      close: () => this.#close(),
      internalError: (e) => this.#internalError(e),
      observeServer: (type, buf, start, end) => this.#tracker?.onServerFrame(type, buf, start, end),
      observeClient: (type, buf, start, end) => this.#observeClient(type, buf, start, end),
      countError: (code) => this.#countError(code),
      countViolation: (who, kind) => this.#ctx.count(this.#ctx.stats.violations, `${who}/${kind}`),
    };
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
    this.#clientStream?.setInspect(VALID_FRONTEND);
  }

  /** AuthenticationOk, ParameterStatus (the values this client's session has), BackendKeyData, ReadyForQuery. */
  #greet(serverParams: ReadonlyMap<string, string>): void {
    const mine = this.#ctx.issueCancelKey(this.#negotiatedMinor >= 2 ? 32 : 4);
    this.#pid = mine.pid;
    this.cancelKey = mine.key;
    this.#ctx.register(mine.pid, this);
    const greet: Buffer[] = [AUTH_OK];
    for (const [k, v] of serverParams) greet.push(encodeParameterStatus(k, v));
    greet.push(encodeBackendKeyData(mine.pid, mine.key), encodeReadyForQuery(TX.Idle));
    this.#send(Buffer.concat(greet));
    this.#becomeActive();
  }

  #becomeActive(): void {
    this.#clearLoginTimer();
    this.#setState(STATE.Active);
    this.#clientStream?.setInspect(CLIENT_INSPECT);
    // Logged in: the real size limits, by type; a password message is no longer legal (a relayed server judges for itself).
    const relayed = this.#link === null && !this.#isAdmin;
    this.#clientStream?.setLimits(
      frontendLimits(this.#ctx.config.limits.max_message_size, true),
      relayed ? VALID_FRONTEND : VALID_LOGGED_IN,
    );
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

  /** The one catch of the client's data path: a bug while handling this client's bytes ends this session only. */
  #onClientData = (chunk: Buffer): void => {
    try {
      this.#clientData(chunk);
    } catch (e) {
      this.#internalError(e as Error);
    }
  };

  #clientData(chunk: Buffer): void {
    this.bytesIn += chunk.length;
    if (this.#traffic !== null) this.#traffic.received += chunk.length;
    this.#lastClientActivity = Date.now();
    if (this.#state === STATE.Closed) return;
    const link = this.#link;
    if (link !== null && (this.#state === STATE.Active || this.#state === STATE.Connecting)) {
      link.onClientChunk(chunk);
      return;
    }
    // Everything this chunk makes Postern send to the server leaves in one write.
    const server = this.#server;
    if (server === null) {
      this.#clientStream?.push(chunk);
      return;
    }
    server.cork();
    try {
      this.#clientStream?.push(chunk);
    } finally {
      server.uncork();
    }
  }

  #onClientDrain = (): void => {
    if (this.#link !== null) this.#link.onClientDrain();
    else this.#server?.resume();
  };

  #toServer(buf: Buffer, start: number, end: number): void {
    const server = this.#server;
    if (server === null) return;
    const ok = server.write(start === 0 && end === buf.length ? buf : buf.subarray(start, end));
    if (!ok) this.#client.pause();
  }

  /** The session's logger, carrying the linked server connection's id too when there is one (made only when a line is logged). */
  #linkedLog(): Logger {
    const server = this.#link?.server ?? this.#server;
    return server === null ? this.log : this.log.child({ server: server.id });
  }

  /** A frame Postern made itself (greeting, auth, errors): counted like forwarded bytes. */
  #send(buf: Buffer): void {
    this.bytesOut += buf.length;
    if (this.#traffic !== null) this.#traffic.sent += buf.length;
    this.#client.write(buf);
  }

  /** Forwarded bytes to the client; false when its socket is full (the caller pauses the server). */
  #toClient(buf: Buffer, start: number, end: number): boolean {
    this.bytesOut += end - start;
    if (this.#traffic !== null) this.#traffic.sent += end - start;
    const ok = this.#client.write(start === 0 && end === buf.length ? buf : buf.subarray(start, end));
    if (!ok && this.#link === null) this.#server?.pause();
    return ok;
  }

  /** Around one server chunk: cork the client so what it makes Postern send leaves in one write; at the end, true when the socket still holds views of the chunk. */
  #clientChunk(start: boolean): boolean {
    const client = this.#client;
    if (start) {
      client.cork();
      return false;
    }
    client.uncork();
    return client.writableLength > 0;
  }

  #clientSink: FrameSink = {
    onPeek: (type, buf, start, end) => {
      if (this.#state === STATE.Active) this.#observeClient(type, buf, start, end);
    },
    onRun: (buf, start, end) => {
      if (this.#state === STATE.Active && this.#link !== null) this.#link.onClientRun(buf, start, end);
      else if (this.#state === STATE.Active || this.#state === STATE.Relaying) this.#toServer(buf, start, end);
    },
    onCount: (type) => {
      if (this.#state === STATE.Active) this.#link?.onClientCount(type);
    },
    onMessage: (type, buf, start, end) => {
      if (type === FE.Terminate) {
        // A pooled server outlives its client: the goodbye is not passed on.
        if ((this.#state === STATE.Active || this.#state === STATE.Relaying) && this.#link === null) this.#toServer(buf, start, end);
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
        if (this.#link !== null) {
          this.#link.onClientFrame(type, buf, start, end);
          return;
        }
        this.#toServer(buf, start, end);
        if (CLIENT_PEEK[type] === 1) this.#observeClient(type, buf, start, end);
        return;
      }
      // Postgres's answer to anything but a password message during authentication.
      this.#fatal(SQLSTATE.ProtocolViolation, `expected password response, got message type ${type}`);
    },
    onViolation: (kind, detail) => this.#clientViolation(kind, detail),
  };

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

  /** A relayed session's own server connection (pooled sessions: PooledLink). */
  #serverLink: ServerLink = {
    // What one server chunk makes Postern send to the client leaves in one write.
    onServerChunk: (start) => this.#clientChunk(start),
    onServerRun: (buf, start, end) => {
      this.#toClient(buf, start, end);
    },
    onServerPeek: (type, buf, start, end) => {
      this.#tracker?.onServerFrame(type, buf, start, end);
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
    onServerError: (e) => {
      this.#server = null;
      this.#internalError(e);
    },
  };

  #onServerMessage(type: number, buf: Buffer, start: number, end: number): void {
    if (this.#state === STATE.Active) {
      // Frames the tracker peeks at elsewhere arrive here when they are inspected anyway.
      if (SERVER_PEEK[type] === 1) this.#tracker?.onServerFrame(type, buf, start, end);
      if (type === BE.ErrorResponse) {
        const e = decodeNotice(buf, start, end);
        if (e.severityV === 'FATAL' || e.severityV === 'PANIC' || e.severity === 'FATAL' || e.severity === 'PANIC')
          this.#serverSaidFatal = true;
        this.#countError(e.code);
      }
      this.#toClient(buf, start, end);
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
    // The violation is found at a frame boundary: the client's stream is between messages.
    this.#server?.destroy();
    this.#server = null;
    this.#fatal(SQLSTATE.ProtocolViolation, `server sent an invalid message: ${detail}`);
  }

  // ---------------------------------------------------------------- cancel / shutdown

  cancel(): void {
    if (this.#state === STATE.Closed) return;
    if (this.#link !== null) this.#link.cancel();
    else this.#server?.sendCancel(this.#linkedLog());
  }

  /** Janitor: coarse per-session deadlines (pooled sessions: client_idle_timeout, idle_transaction_timeout). */
  tick(now: number): void {
    if (this.#state !== STATE.Active || this.#link === null) return;
    try {
      this.#link.tick(now - this.#lastClientActivity);
    } catch (e) {
      this.#internalError(e as Error);
    }
  }

  terminate(code: string, message: string): void {
    if (this.#state === STATE.Closed) return;
    const server = this.#link?.server ?? this.#server;
    if (server === null || server.atBoundary) this.#fatal(code, message);
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
    // The link hands its server back (or to the pool's clean-up) while it can still tell where the client's stream stopped.
    this.#link?.close();
    this.#clientStream?.kill();
    const server = this.#server;
    if (server !== null) {
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
    return this.#link?.settings.reported.get('application_name') ?? this.#params.get('application_name') ?? '';
  }

  /** What SHOW CLIENTS, SHOW POOLS and metrics need to know about this client. */
  info(): ClientInfo {
    const link = this.#link;
    const state =
      link?.waiting === true ? 'waiting' : this.#state === STATE.Active ? 'active' : this.#state === STATE.Closed ? 'closed' : 'login';
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
      waitingSince: link?.waitSince ?? 0,
      pid: this.#pid,
      tls: this.#tls === null ? '' : `${this.#tls.version}/${this.#tls.cipher}`,
      applicationName: this.applicationName,
      poolKey: link?.pool.key ?? null,
      admin: this.#isAdmin,
      pinned: link?.pinned ?? null,
      preparedStatements: link?.preparedStatements ?? 0,
      outBuffered: this.#client.writableLength,
      server: link !== null ? link.server : this.#server,
      relayed: link === null && this.#server !== null,
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
    return (this.#link?.server ?? this.#server)?.tls ?? null;
  }
}
