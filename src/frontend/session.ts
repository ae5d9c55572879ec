// The session shell: one client connection from its first byte to its close.
// Owns the client's sockets (raw, then TLS), the session's one state, the
// phase that reads the client now (handshake, login, then one link: relayed,
// pooled or admin), the client's frame stream, the statement hook, fatal /
// close, the login timer, the cancel-key registration, the janitor's tick,
// info() for the admin console and metrics, and the audit record. The rooms
// report back through their host interfaces; none of them imports this file.
//
// Every synchronous entry from the outside (socket data, timers, the
// janitor) has one catch: an unexpected error ends this session only, with a
// generic error to the client (XX000), never the process.

import type net from 'node:net';
import type tls from 'node:tls';
import type { ServerConn } from '../backend/server-conn.ts';
import { startupSettings } from '../backend/settings.ts';
import type { ClientInfo, Context, SessionHandle } from '../context.ts';
import type { Logger } from '../observability/log.ts';
import {
  AUTH_OK,
  type ErrorSpec,
  encodeBackendKeyData,
  encodeError,
  encodeParameterStatus,
  encodeReadyForQuery,
} from '../protocol/backend.ts';
import { WriteBatch } from '../protocol/coalesce.ts';
import { FE, frontendLimits, LATEST_MINOR, TX, typeTable, VALID_FRONTEND } from '../protocol/codes.ts';
import { type FrameSink, MessageStream } from '../protocol/framer.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import type { ViolationKind } from '../protocol/violation.ts';
import { databaseEntry, poolFor, route, routingOf, scopedLabel, serverSecret } from '../routing/router.ts';
import type { TrafficStats } from '../stats/registry.ts';
import { AdminLink } from './admin-link.ts';
import { Handshake, type HandshakeHost, type PassthroughStart, type Startup, type TlsInfo } from './handshake.ts';
import { Login, type LoginHost, type LoginResult } from './login.ts';
import { PassthroughLink } from './passthrough-link.ts';
import { type LinkShell, PooledLink } from './pooled-link.ts';
import { type RelayHost, RelayLink } from './relay-link.ts';
import { StatementHook } from './statement-hook.ts';

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

/** While Postern authenticates: every client message (only 'p' and 'X' are legal). */
const CLIENT_INSPECT_ALL = VALID_FRONTEND;
/** Every client message type but a password message: what a pooled or admin session accepts once logged in. */
const VALID_LOGGED_IN = (() => {
  const t = new Uint8Array(VALID_FRONTEND);
  t[FE.Password] = 0;
  return t;
})();
/** Client frames shown to the statement hook while they are forwarded (when a link does not read them whole). */
const CLIENT_PEEK = typeTable([FE.Query, FE.Parse, FE.Bind, FE.Execute, FE.Sync, FE.FunctionCall, FE.Close, FE.Describe]);

/** replication=true/database/on/1/yes: a walsender session, which a pool cannot serve. */
function isReplication(v: string | undefined): boolean {
  return v !== undefined && /^(true|on|yes|1|database)$/i.test(v);
}

export class ClientSession implements SessionHandle {
  readonly id: number;
  #log: Logger | null = null;
  cancelKey: Buffer = Buffer.alloc(0);
  readonly #ctx: Context;
  readonly #raw: net.Socket;
  /** The socket the client speaks on: the raw one, or the TLS one after an upgrade. */
  #client: net.Socket;
  /** Writes to #client, joined into runs around one server chunk. */
  #out: WriteBatch;
  #state: SessionState = STATE.Negotiating;
  #tls: TlsInfo | null = null;
  #handshake: Handshake | null;
  #login: Login | null = null;
  #relay: RelayLink | null = null;
  #pooled: PooledLink | null = null;
  #admin: AdminLink | null = null;
  #passthrough: PassthroughLink | null = null;
  /** The passthrough tenant's name (a passthrough session has no startup packet). */
  #passTenant: string | null = null;
  #loginTimer: NodeJS.Timeout | null;
  #startup: Startup | null = null;
  #stream: MessageStream | null = null;
  #pid: number | null = null;
  /** The protocol minor version the client gets (3.0 .. 3.2). */
  #minor = 0;
  #overLimit: boolean;
  /** How the client was authenticated: an hba method name, for logs and counters. */
  authMethod = '';
  /** Last time the client sent anything (coarse: for idle timeouts checked by the janitor). */
  #lastClientActivity = Date.now();
  bytesIn = 0;
  bytesOut = 0;
  readonly startedAt = Date.now();
  /** This (database, user)'s traffic counters; null until authenticated. */
  #traffic: TrafficStats | null = null;
  /** Login outcome for the audit record: null while it is still open. */
  #loginOutcome: { ok: boolean; reason: string | null } | null = null;
  /** Last time a query started (admin request_time). */
  #requestAt = Date.now();
  #statements: StatementHook;

  constructor(ctx: Context, socket: net.Socket) {
    this.#ctx = ctx;
    this.id = ctx.nextId();
    this.#raw = socket;
    this.#client = socket;
    this.#out = new WriteBatch(socket);
    socket.setNoDelay(true);
    socket.on('error', this.#onClientError);
    socket.on('close', this.#onClientClose);
    this.#loginTimer = setTimeout(this.#onLoginTimeout, ctx.config.limits.client_login_timeout);
    this.#loginTimer.unref();
    this.#overLimit = ctx.sessions.size >= ctx.share(ctx.config.pool.max_client_conn);
    const session = this;
    this.#statements = new StatementHook({
      ctx,
      id: this.id,
      get database() {
        return session.database;
      },
      get user() {
        return session.user;
      },
      get applicationName() {
        return session.applicationName;
      },
      traffic: () => this.#traffic,
      cycled: () => {
        this.#requestAt = Date.now();
      },
    });
    ctx.track(this);
    this.#handshake = new Handshake(this.#handshakeHost(), socket);
    this.#debug({ addr: socket.remoteAddress, port: socket.remotePort }, 'client connected');
  }

  /** The session's logger: a child carrying `client`, made at the first line logged (an idle client costs no logger). */
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

  #logFor(server: ServerConn | null): Logger {
    return server === null ? this.log : this.log.child({ server: server.id });
  }

  /** The session's logger, carrying the linked server connection's id too when there is one. */
  #linkedLog(): Logger {
    return this.#logFor(this.#server());
  }

  #server(): ServerConn | null {
    return this.#pooled?.server ?? this.#relay?.server ?? null;
  }

  get state(): SessionState {
    return this.#state;
  }

  /** A method, not a field read, so checks after an await are not narrowed away. */
  #isClosed(): boolean {
    return this.#state === STATE.Closed;
  }

  // ---------------------------------------------------------------- handshake

  #handshakeHost(): HandshakeHost {
    const session = this;
    return {
      ctx: this.#ctx,
      get log() {
        return session.log;
      },
      debug: (o, m) => this.#debug(o, m),
      fatal: (code, message, detail, hint) => this.#fatal(code, message, detail, hint),
      destroy: () => this.#destroy(),
      secured: (sock, info) => this.#onSecured(sock, info),
      startup: (s) => this.#onStartup(s),
      passthrough: (p) => this.#onPassthrough(p),
    };
  }

  /** A passthrough tenant's client: spliced to its server unopened, still counted and listed. */
  #onPassthrough(p: PassthroughStart): void {
    this.#handshake = null;
    this.#tls = p.tls;
    this.#passTenant = p.tenant;
    if (this.#overLimit) {
      // Inside its TLS handshake the client could read no ErrorResponse: refused by closing, and logged.
      this.log.info({ tenant: p.tenant, limit: 'max_client_conn' }, 'passthrough client refused: too many clients');
      this.#ctx.count(this.#ctx.stats.loginFailures, 'too_many_clients');
      this.#destroy();
      return;
    }
    this.#state = STATE.Connecting;
    const stats = this.#ctx.stats.passthrough;
    const add = (k: string, n: number) => stats.set(k, (stats.get(k) ?? 0) + n);
    const link = new PassthroughLink(
      {
        ctx: this.#ctx,
        log: this.log,
        debug: (o, m) => this.#debug(o, m),
        received: (n) => {
          this.bytesIn += n;
          this.#lastClientActivity = Date.now();
          add(`${p.tenant}/received_bytes`, n);
        },
        sent: (n) => {
          this.bytesOut += n;
          add(`${p.tenant}/sent_bytes`, n);
        },
        active: () => {
          this.#clearLoginTimer();
          this.#state = STATE.Active;
          this.#loginOutcome = { ok: true, reason: null };
          this.authMethod = 'tls-passthrough';
          add(`${p.tenant}/sessions`, 1);
        },
        destroy: () => this.#destroy(),
        close: () => this.#close(),
        internalError: (e) => this.#internalError(e),
      },
      this.#raw,
      p,
    );
    this.#passthrough = link;
    link.start();
  }

  #onSecured(sock: tls.TLSSocket, info: TlsInfo): void {
    this.#tls = info;
    this.#client = sock;
    this.#out = new WriteBatch(sock);
    sock.on('error', this.#onClientError);
    this.#state = STATE.Negotiating;
  }

  // ---------------------------------------------------------------- login

  #onStartup(s: Startup): void {
    this.#startup = s;
    this.#handshake = null;
    this.#minor = Math.min(s.minor, LATEST_MINOR);
    this.#debug({ user: s.user, database: s.database, protocol: `3.${s.minor}`, tls: this.#tls?.version ?? null }, 'startup');
    // From here on the client speaks typed messages. Until it is
    // authenticated every message is small (PostgreSQL's auth limits), checked on its header.
    this.#stream = new MessageStream(
      this.#clientSink,
      VALID_FRONTEND,
      CLIENT_INSPECT_ALL,
      frontendLimits(this.#ctx.config.limits.max_message_size, false),
    );
    this.#client.on('drain', this.#onClientDrain);
    this.#client.on('data', this.#onClientData);
    this.#state = STATE.Authenticating;
    const login = new Login(this.#loginHost(), s, this.#overLimit);
    this.#login = login;
    const early = s.early.length > 0 ? s.early : null;
    login.start().then(
      () => {
        if (early !== null && !this.#isClosed()) this.#onClientData(early);
      },
      (e: Error) => this.#internalError(e),
    );
  }

  #loginHost(): LoginHost {
    const session = this;
    return {
      ctx: this.#ctx,
      get log() {
        return session.log;
      },
      debug: (o, m) => this.#debug(o, m),
      send: (buf) => this.#send(buf),
      fatal: (code, message, detail, hint) => this.#fatal(code, message, detail, hint),
      closed: () => this.#isClosed(),
      outcome: (ok, reason) => {
        if (!ok || this.#loginOutcome === null || !this.#loginOutcome.ok) this.#loginOutcome = { ok, reason };
      },
      negotiated: (minor) => {
        this.#minor = minor;
      },
      done: (r) => this.#onLogin(r),
    };
  }

  /** The login decided what serves the client. */
  #onLogin(r: LoginResult): void {
    const s = this.#startup as Startup;
    const login = this.#login as Login;
    this.authMethod = login.method;
    this.#login = null;
    switch (r.kind) {
      case 'refused':
        return;
      case 'admin':
        this.#admin = new AdminLink(this.#adminHost(), r.readOnly);
        this.#stream?.setInspect(VALID_FRONTEND);
        return;
      case 'relay':
        this.authMethod = 'passthrough';
        this.#state = STATE.Relaying;
        this.#relay = new RelayLink(this.#relayHost(), s, this.#minor);
        this.#relay.start();
        return;
      case 'pooled': {
        const to = route(this.#ctx, s.database, s.user, s.tenant);
        if (to === null) {
          this.#fatal(SQLSTATE.InvalidCatalogName, `database "${s.database}" does not exist`);
          return;
        }
        if (isReplication(s.params.get('replication'))) {
          // A walsender session speaks another protocol and cannot be pooled.
          this.#fatal(
            SQLSTATE.FeatureNotSupported,
            `replication connections cannot be pooled (database "${s.database}" uses pool_mode ${to.mode})`,
            'The startup packet asked for replication.',
            'Relay replication clients to the server: a passthrough line for them in auth.hba_file.',
          );
          return;
        }
        const settings = startupSettings(s.params);
        if (!(settings instanceof Map)) {
          this.#fatal(settings.code, settings.message);
          return;
        }
        const pool = poolFor(this.#ctx, to, serverSecret(to, s.user, r.creds));
        this.#traffic = this.#ctx.stats.traffic(to.label, s.user);
        this.#state = STATE.Connecting;
        // No server is needed until the first query, in every mode (as in
        // PgBouncer), once this pool has checked the client's startup settings.
        const link = new PooledLink(
          this.#linkShell(),
          pool,
          to.mode,
          settings,
          to.db.read_write_split ? routingOf(this.#ctx).classifier : null,
        );
        this.#pooled = link;
        link.start();
        return;
      }
      default:
        r satisfies never;
    }
  }

  // ---------------------------------------------------------------- links

  #linkShell(): LinkShell {
    const session = this;
    return {
      id: this.id,
      ctx: this.#ctx,
      database: this.database,
      user: this.user,
      stream: this.#stream as MessageStream,
      statements: this.#statements,
      get traffic() {
        return session.#traffic as TrafficStats;
      },
      logFor: (server) => this.#logFor(server),
      send: (buf) => this.#send(buf),
      toClient: (buf, start, end) => this.#toClient(buf, start, end),
      clientChunk: (start) => this.#clientChunk(start),
      flushClient: () => this.#flushClient(),
      pauseClient: () => this.#client.pause(),
      resumeClient: () => this.#resumeClient(),
      greet: (params) => this.#greet(params),
      fatal: (code, message, detail, hint) => this.#fatal(code, message, detail, hint),
      terminate: (code, message) => this.terminate(code, message),
      destroy: () => this.#destroy(),
      close: () => this.#close(),
      internalError: (e) => this.#internalError(e),
      countError: (code) => this.#countError(code),
      countViolation: (who, kind) => this.#countViolation(`${who}/${kind}`),
    };
  }

  #relayHost(): RelayHost {
    const session = this;
    return {
      ctx: this.#ctx,
      get log() {
        return session.log;
      },
      debug: (o, m) => this.#debug(o, m),
      logFor: (server) => this.#logFor(server),
      stream: this.#stream as MessageStream,
      send: (buf) => this.#send(buf),
      toClient: (buf, start, end) => this.#toClient(buf, start, end),
      clientChunk: (start) => this.#clientChunk(start),
      pauseClient: () => this.#client.pause(),
      resumeClient: () => this.#client.resume(),
      fatal: (code, message, detail, hint) => this.#fatal(code, message, detail, hint),
      destroy: () => this.#destroy(),
      close: () => this.#close(),
      internalError: (e) => this.#internalError(e),
      cancelKey: (minor) => this.#issueCancelKey(minor),
      active: () => this.#becomeActive(),
      outcome: (ok, reason) => {
        this.#loginOutcome = { ok, reason };
      },
      observeServer: (type, buf, start, end) => this.#statements.server(type, buf, start, end),
      watch: (ledger) => this.#statements.watch(ledger),
      countError: (code) => this.#countError(code),
      countViolation: (who, kind) => this.#countViolation(`${who}/${kind}`),
    };
  }

  #adminHost() {
    const session = this;
    return {
      ctx: this.#ctx,
      id: this.id,
      user: this.user,
      get applicationName() {
        return session.#startup?.params.get('application_name') ?? '';
      },
      toClient: (buf: Buffer, start: number, end: number) => this.#toClient(buf, start, end),
      greet: (params: ReadonlyMap<string, string>) => this.#greet(params),
      fatal: (code: string, message: string) => this.#fatal(code, message),
      close: () => this.#close(),
      closed: () => this.#isClosed(),
      logError: (e: unknown) => this.log.error({ err: e instanceof Error ? e.message : String(e) }, 'admin console error'),
      pauseClient: () => this.#client.pause(),
      resumeClient: () => this.#client.resume(),
    };
  }

  /** Postern's own cancel key for this client, registered: 32 bytes under protocol 3.2, 4 under 3.0. */
  #issueCancelKey(minor: number): { pid: number; key: Buffer } {
    const mine = this.#ctx.issueCancelKey(minor >= 2 ? 32 : 4);
    this.#pid = mine.pid;
    this.cancelKey = mine.key;
    this.#ctx.register(mine.pid, this);
    return mine;
  }

  /** AuthenticationOk, ParameterStatus (the values this client's session has), BackendKeyData, ReadyForQuery. */
  #greet(serverParams: ReadonlyMap<string, string>): void {
    const mine = this.#issueCancelKey(this.#minor);
    const greet: Buffer[] = [AUTH_OK];
    for (const [k, v] of serverParams) greet.push(encodeParameterStatus(k, v));
    greet.push(encodeBackendKeyData(mine.pid, mine.key), encodeReadyForQuery(TX.Idle));
    this.#send(Buffer.concat(greet));
    this.#becomeActive();
  }

  #becomeActive(): void {
    this.#clearLoginTimer();
    this.#state = STATE.Active;
    const stream = this.#stream;
    if (stream !== null) {
      stream.setInspect(typeTable([FE.Terminate]));
      // Logged in: the real size limits, by type; a password message is no longer legal (a relayed server judges for itself).
      stream.setLimits(
        frontendLimits(this.#ctx.config.limits.max_message_size, true),
        this.#relay !== null ? VALID_FRONTEND : VALID_LOGGED_IN,
      );
      if (this.#admin === null) {
        this.#traffic ??= this.#ctx.stats.traffic(this.database, this.user);
        stream.setPeek(CLIENT_PEEK);
      }
    }
    this.#debug({ database: this.database, user: this.user, method: this.authMethod }, 'session active');
  }

  // ---------------------------------------------------------------- the client's bytes

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
    const pooled = this.#pooled;
    if (pooled !== null && (this.#state === STATE.Active || this.#state === STATE.Connecting)) {
      pooled.onClientChunk(chunk);
      return;
    }
    // Everything this chunk makes Postern send to the server leaves in one write.
    const server = this.#relay?.server ?? null;
    if (server === null) {
      this.#stream?.push(chunk);
      return;
    }
    server.cork();
    try {
      this.#stream?.push(chunk);
    } finally {
      server.uncork();
    }
  }

  #onClientDrain = (): void => {
    if (this.#pooled !== null) this.#pooled.onClientDrain();
    else this.#relay?.onClientDrain();
  };

  #resumeClient(): void {
    if (this.#client.isPaused()) this.#client.resume();
  }

  /** A frame Postern made itself (greeting, auth, errors): counted like forwarded bytes. */
  #send(buf: Buffer): void {
    this.bytesOut += buf.length;
    if (this.#traffic !== null) this.#traffic.sent += buf.length;
    this.#out.write(buf);
  }

  /** Forwarded bytes to the client; false when its socket is full (the caller pauses the server). */
  #toClient(buf: Buffer, start: number, end: number): boolean {
    this.bytesOut += end - start;
    if (this.#traffic !== null) this.#traffic.sent += end - start;
    return this.#out.writeRange(buf, start, end);
  }

  /** Around one server chunk: what it makes Postern send to the client leaves in one write; at the end, true when the socket still holds views of the chunk. */
  #clientChunk(start: boolean): boolean {
    if (start) {
      this.#out.begin();
      return false;
    }
    this.#out.end();
    return this.#client.writableLength > 0;
  }

  /** Mid-chunk: what is batched for the client leaves now (its answer is complete), and batching goes on. */
  #flushClient(): void {
    this.#out.flush();
  }

  /** The client's frames, to whichever room reads them now. */
  #clientSink: FrameSink = {
    onPeek: (type, buf, start, end) => {
      if (this.#state === STATE.Active) this.#statements.client(type, buf, start, end);
    },
    onRun: (buf, start, end) => {
      if (this.#state === STATE.Active && this.#pooled !== null) this.#pooled.onClientRun(buf, start, end);
      else if (this.#relay !== null && (this.#state === STATE.Active || this.#state === STATE.Relaying))
        this.#relay.onClientRun(buf, start, end);
    },
    onCount: (type) => {
      if (this.#state !== STATE.Active) return;
      if (this.#pooled !== null) this.#pooled.onClientCount(type);
      else this.#relay?.onClientCount(type);
    },
    onMessage: (type, buf, start, end) => {
      if (type === FE.Terminate) {
        // A pooled server outlives its client: the goodbye is not passed on.
        this.#relay?.terminate(buf, start, end);
        this.#debug('client terminated');
        this.#stream?.kill();
        this.#close();
        return;
      }
      if (this.#login !== null) this.#login.onFrame(type, buf, start, end);
      else if (this.#relay !== null) {
        this.#relay.onClientFrame(type, buf, start, end);
        if (this.#state === STATE.Active && CLIENT_PEEK[type] === 1) this.#statements.client(type, buf, start, end);
      } else if (this.#state !== STATE.Active) {
        // A pooled client before its greeting sends nothing but what the link holds.
        this.#fatal(SQLSTATE.ProtocolViolation, `expected password response, got message type ${type}`);
      } else if (this.#admin !== null) this.#admin.onClientFrame(type, buf, start, end);
      else this.#pooled?.onClientFrame(type, buf, start, end);
    },
    onViolation: (kind, detail) => this.#clientViolation(kind, detail),
  };

  #countError(code: string | undefined): void {
    this.#ctx.count(this.#ctx.stats.errors, (code ?? 'XX000').slice(0, 2));
  }

  /** A protocol violation (client or server side): counted, and listed among the dashboard's recent events. */
  #countViolation(key: string): void {
    this.#ctx.count(this.#ctx.stats.violations, key);
    this.#ctx.stats.events.add('violation', { kind: key, addr: this.#raw.remoteAddress ?? '', database: this.database, user: this.user });
  }

  #clientViolation(kind: ViolationKind, detail: string): void {
    this.#countViolation(`client/${kind}`);
    this.#linkedLog().info({ kind, detail }, 'protocol violation by client');
    this.#fatal(
      SQLSTATE.ProtocolViolation,
      detail.startsWith('invalid message type') ? `invalid frontend message type ${detail.slice(21)}` : 'invalid message length',
    );
  }

  #internalError(e: Error): void {
    this.#linkedLog().error({ err: e.message, stack: e.stack }, 'internal error');
    this.#fatal(SQLSTATE.InternalError, 'internal error in Postern');
  }

  // ---------------------------------------------------------------- cancel, janitor, shutdown

  cancel(): void {
    if (this.#state === STATE.Closed) return;
    if (this.#pooled !== null) this.#pooled.cancel();
    else this.#relay?.cancel();
  }

  /** Janitor: coarse per-session deadlines (pooled sessions: client_idle_timeout, idle_transaction_timeout). */
  tick(now: number): void {
    if (this.#state !== STATE.Active || this.#pooled === null) return;
    try {
      const s = this.#startup as Startup;
      if (this.#pooled.betweenTransactions && databaseEntry(this.#ctx, s.database, s.tenant) === null) {
        // Its database left the config (a reload): ended once its transaction is over.
        this.#logFor(null).info({ database: this.database }, 'database removed from the config; closing the session');
        this.terminate(SQLSTATE.AdminShutdown, 'terminating connection due to administrator command');
        return;
      }
      this.#pooled.tick(now - this.#lastClientActivity);
    } catch (e) {
      this.#internalError(e as Error);
    }
  }

  terminate(code: string, message: string): void {
    if (this.#state === STATE.Closed) return;
    const server = this.#server();
    if (server === null || server.atBoundary) this.#fatal(code, message);
    else this.#close();
  }

  // ---------------------------------------------------------------- closing

  #onLoginTimeout = (): void => {
    try {
      this.#loginTimer = null;
      if (this.#state === STATE.Active || this.#state === STATE.Closed) return;
      this.log.info({ state: this.#state }, 'login timeout');
      // Before a startup packet (or inside the TLS handshake) there is nothing to answer in.
      if (this.#startup === null) this.#destroy();
      else this.#fatal(SQLSTATE.QueryCanceled, 'canceling authentication due to timeout');
    } catch (e) {
      this.#internalError(e as Error);
    }
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

  /** FATAL ErrorResponse to the client, then close both sides. */
  #fatal(code: string, message: string, detail?: string, hint?: string): void {
    if (this.#state === STATE.Closed) return;
    this.#countError(code);
    const spec: ErrorSpec = { severity: 'FATAL', code, message };
    if (detail !== undefined) spec.detail = detail;
    if (hint !== undefined) spec.hint = hint;
    const client = this.#client;
    // A passthrough session's bytes are its server's TLS: nothing of Postern's can be written into them, it is closed.
    if (this.#passthrough === null && !client.destroyed && client.writable) this.#send(encodeError(spec));
    this.#close();
  }

  /** Graceful close: flush what is queued, tell the server goodbye (or give the pool its connection back). */
  #close(): void {
    if (this.#state === STATE.Closed) return;
    this.#state = STATE.Closed;
    this.#clearLoginTimer();
    this.#handshake?.stop();
    this.#ctx.unregister(this.#pid, this);
    const clientAtBoundary = this.#stream === null || this.#stream.atBoundary;
    // The link hands its server back (or to the pool's clean-up) while it can still tell where the client's stream stopped.
    this.#pooled?.close();
    this.#stream?.kill();
    this.#relay?.close(clientAtBoundary);
    this.#passthrough?.close();
    const client = this.#client;
    // What is joined goes out before the end; a write after it is the socket's error, as before.
    this.#out.end();
    if (!client.destroyed) {
      client.end();
      setTimeout(() => client.destroy(), 5000).unref();
    }
    if (client !== this.#raw && !this.#raw.destroyed) setTimeout(() => this.#raw.destroy(), 5000).unref();
    this.#admin?.close();
    this.#debug({ bytesIn: this.bytesIn, bytesOut: this.bytesOut, ms: Date.now() - this.startedAt }, 'session closed');
    if (this.#passTenant !== null && this.#passthrough?.spliced === true) {
      const k = `${this.#passTenant}/seconds`;
      const stats = this.#ctx.stats.passthrough;
      stats.set(k, (stats.get(k) ?? 0) + (Date.now() - this.startedAt) / 1000);
    }
    if (this.#startup !== null || this.#passthrough !== null) this.#ctx.audit?.session(this.#auditRecord());
  }

  /** Immediate close without a goodbye. */
  #destroy(): void {
    this.#close();
    this.#out.drop();
    this.#client.destroy();
    this.#raw.destroy();
  }

  /** The audit trail's record of this session (docs/observability.md). Never a secret or a literal. */
  #auditRecord(): Record<string, unknown> {
    return {
      client: this.id,
      addr: this.#raw.remoteAddress ?? null,
      port: this.#raw.remotePort ?? null,
      tls:
        this.#tls === null
          ? null
          : {
              version: this.#tls.version,
              cipher: this.#tls.cipher,
              direct: this.#tls.direct,
              server_name: this.#tls.serverName,
              passthrough: this.#tls.passthrough,
            },
      tenant: this.tenant,
      auth_method: this.authMethod || this.#login?.method || null,
      outcome: this.#loginOutcome === null ? 'incomplete' : this.#loginOutcome.ok ? 'ok' : 'fail',
      reason: this.#loginOutcome?.reason ?? null,
      database: this.database,
      user: this.user,
      application_name: this.applicationName,
      admin: this.#admin !== null || (this.#login?.admin ?? false),
      start: new Date(this.startedAt).toISOString(),
      end: new Date().toISOString(),
      bytes_in: this.bytesIn,
      bytes_out: this.bytesOut,
      statements: this.#statements.statements,
    };
  }

  get applicationName(): string {
    return this.#pooled?.settings.reported.get('application_name') ?? this.#startup?.params.get('application_name') ?? '';
  }

  /** What SHOW CLIENTS, SHOW POOLS and metrics need to know about this client. */
  info(): ClientInfo {
    const pooled = this.#pooled;
    const state =
      pooled?.waiting === true ? 'waiting' : this.#state === STATE.Active ? 'active' : this.#state === STATE.Closed ? 'closed' : 'login';
    return {
      id: this.id,
      state,
      database: this.database,
      user: this.user,
      addr: this.#raw.remoteAddress ?? '',
      port: this.#raw.remotePort ?? 0,
      localAddr: this.#raw.localAddress ?? '',
      localPort: this.#raw.localPort ?? 0,
      connectTime: this.startedAt,
      requestTime: this.#requestAt,
      waitingSince: pooled?.waitSince ?? 0,
      pid: this.#pid,
      tls: this.#tls === null ? '' : this.#tls.passthrough ? 'passthrough' : `${this.#tls.version}/${this.#tls.cipher}`,
      applicationName: this.applicationName,
      poolKey: pooled?.pool.key ?? null,
      admin: this.#admin !== null,
      pinned: pooled?.pinned ?? null,
      preparedStatements: pooled?.preparedStatements ?? 0,
      outBuffered: this.#client.writableLength,
      bytesIn: this.bytesIn,
      server: this.#server(),
      relayed: this.#relay !== null && this.#relay.server !== null,
      tenant: this.tenant,
      serverName: this.#tls?.serverName ?? null,
      tlsRoute: this.#tls === null ? 'plain' : this.#tls.passthrough ? 'passthrough' : 'terminated',
    };
  }

  /** The tenant chosen by the client's TLS server name; null: the top-level databases. */
  get tenant(): string | null {
    return this.#startup?.tenant ?? this.#passTenant;
  }

  /** The database as logs, stats and the admin console name it ("tenant/name" in a tenant). */
  get database(): string {
    const s = this.#startup;
    return s === null ? '' : scopedLabel(s.tenant, s.database);
  }
  get user(): string {
    return this.#startup?.user ?? '';
  }
  get tlsInfo(): { version: string; cipher: string } | null {
    return this.#tls;
  }
  get serverTlsInfo(): { version: string; cipher: string } | null {
    return this.#server()?.tls ?? null;
  }
}
