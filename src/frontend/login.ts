// The login room: from a startup packet to the decision of what serves the
// client. Owns the checks PostgreSQL makes before it authenticates (the
// client limit, TLS policy, client certificates under verify-*, the database
// existing and enabled), the hba match, Postern's own authentication exchange
// (SCRAM, MD5, cleartext, certificates, trust) with secret lookups (users
// file, auth_query) and throttling of failed attempts, and protocol
// negotiation when Postern answers the startup itself. It reads the client's
// password messages and ends with one outcome: relayed (passthrough: the
// server authenticates), pooled (with what the client proved), admin, or
// refused (the FATAL already sent).

import type tls from 'node:tls';
import { type AuthOutcome, ClientAuthExchange, type PasswordMethod } from '../auth/client-auth.ts';
import { type HbaMatchInput, type HbaRule, matchHba, noMatchMessage, rejectMessage } from '../auth/hba.ts';
import { certAllows } from '../auth/ident.ts';
import { tlsServerEndPoint } from '../auth/scram.ts';
import type { StoredSecret } from '../auth/secrets.ts';
import { ADMIN_DATABASES } from '../config/load.ts';
import type { Context } from '../context.ts';
import type { Logger } from '../observability/log.ts';
import { encodeNegotiateProtocolVersion } from '../protocol/backend.ts';
import { FE, LATEST_MINOR } from '../protocol/codes.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { ProtocolViolation } from '../protocol/violation.ts';
import { LOOKUP_FAILED, lookupSecret } from '../routing/lookup.ts';
import { databaseEntry, type LoginCredentials, scopedLabel } from '../routing/router.ts';
import { presentedLeaf } from '../tls/contexts.ts';
import type { Startup } from './handshake.ts';

export type LoginResult =
  | { kind: 'relay' }
  | { kind: 'pooled'; method: string; creds: LoginCredentials }
  | { kind: 'admin'; readOnly: boolean }
  | { kind: 'refused' };

export interface LoginHost {
  readonly ctx: Context;
  readonly log: Logger;
  debug(obj: object | string, msg?: string): void;
  /** A frame Postern made, to the client. */
  send(buf: Buffer): void;
  fatal(code: string, message: string, detail?: string, hint?: string): void;
  closed(): boolean;
  /** The login's outcome for the audit record and counters: ok, or the reason it failed. */
  outcome(ok: boolean, reason: string | null): void;
  /** Postern authenticates and answers the startup itself: the protocol minor version the client gets. */
  negotiated(minor: number): void;
  done(r: LoginResult): void;
}

const PASSWORD_METHODS: ReadonlySet<string> = new Set(['scram-sha-256', 'scram-sha-256-plus', 'md5', 'password']);

export class Login {
  readonly #host: LoginHost;
  readonly #ctx: Context;
  readonly #s: Startup;
  readonly #overLimit: boolean;
  #exchange: ClientAuthExchange | null = null;
  #busy = false;
  #stored: StoredSecret | null = null;
  /** How the client was authenticated: an hba method name, for logs and counters. */
  method = '';
  /** The client asked for the admin console's virtual database. */
  readonly admin: boolean;

  constructor(host: LoginHost, startup: Startup, overLimit: boolean) {
    this.#host = host;
    this.#ctx = host.ctx;
    this.#s = startup;
    this.#overLimit = overLimit;
    this.admin = ADMIN_DATABASES.has(startup.database);
  }

  /** Runs the checks and the first step of authentication; the rest follows the client's password messages. */
  async start(): Promise<void> {
    if (!this.#preAuthChecks()) return;
    await this.#authenticate();
  }

  #preAuthChecks(): boolean {
    const cfg = this.#ctx.config;
    const { user, database } = this.#s;
    if (this.#overLimit) {
      this.#host.fatal(
        SQLSTATE.TooManyConnections,
        'sorry, too many clients already',
        `Postern accepts at most ${cfg.pool.max_client_conn} client connections (pool.max_client_conn).`,
      );
      return false;
    }
    const addr = this.#s.socket.remoteAddress ?? 'unknown';
    const mode = cfg.tls.mode;
    if ((mode === 'require' || mode === 'verify-ca' || mode === 'verify-full') && this.#s.tls === null) {
      // Postgres's answer when only hostssl lines would match.
      this.#host.fatal(
        SQLSTATE.InvalidAuthorizationSpecification,
        `no pg_hba.conf entry for host "${addr}", user "${user}", database "${database}", no encryption`,
      );
      return false;
    }
    if ((mode === 'verify-ca' || mode === 'verify-full') && this.#s.tls !== null) {
      const sock = this.#s.socket as tls.TLSSocket;
      if (!sock.authorized) {
        this.#host.fatal(SQLSTATE.InvalidAuthorizationSpecification, 'connection requires a valid client certificate');
        return false;
      }
      if (mode === 'verify-full' && sock.getPeerCertificate().subject?.CN !== user) {
        this.#host.fatal(
          SQLSTATE.InvalidAuthorizationSpecification,
          `certificate validation (clientcert=verify-full) failed for user "${user}": CN mismatch`,
        );
        return false;
      }
    }
    const tenant = this.#s.tenant;
    if (!this.admin && databaseEntry(this.#ctx, database, tenant) === null) {
      this.#host.fatal(SQLSTATE.InvalidCatalogName, `database "${database}" does not exist`);
      return false;
    }
    if (this.#ctx.pools.isDisabled(scopedLabel(tenant, database))) {
      this.#host.fatal(
        SQLSTATE.ConnectionFailure,
        `database "${database}" does not allow connections`,
        'It was disabled from the admin console (DISABLE).',
      );
      return false;
    }
    return true;
  }

  #hbaInput(): HbaMatchInput {
    const r = this.#s.params.get('replication');
    return {
      ssl: this.#s.tls !== null,
      database: this.#s.database,
      user: this.#s.user,
      address: this.#s.socket.remoteAddress ?? '',
      replication: r === 'true' || r === 'on' || r === '1',
    };
  }

  async #authenticate(): Promise<void> {
    const rules = this.#ctx.auth.hba;
    if (this.admin && !this.#adminAllowed()) return;
    if (rules === null && !this.admin) {
      this.method = 'passthrough';
      this.#host.done({ kind: 'relay' });
      return;
    }
    const input = this.#hbaInput();
    const rule = rules === null ? null : matchHba(rules, input);
    if (rules !== null && rule === null) {
      this.#failed('no_hba_match', 'none');
      this.#host.fatal(SQLSTATE.InvalidAuthorizationSpecification, noMatchMessage(input));
      return;
    }
    // The admin console has no server to relay to: without hba rules, or
    // with a passthrough line, it checks passwords itself (md5 semantics:
    // SCRAM when the stored secret is a SCRAM verifier).
    let ruleMethod = rule?.method ?? 'md5';
    if (this.admin && ruleMethod === 'passthrough') ruleMethod = 'md5';
    this.method = ruleMethod;
    if (rule !== null) this.#host.debug({ line: rule.line, method: rule.method }, 'hba rule matched');
    if (ruleMethod === 'passthrough') {
      this.#host.done({ kind: 'relay' });
      return;
    }
    if (ruleMethod === 'reject') {
      this.#failed('hba_reject', ruleMethod);
      this.#host.fatal(SQLSTATE.InvalidAuthorizationSpecification, rejectMessage(input));
      return;
    }
    if (rule !== null && (rule.method === 'cert' || rule.options.clientcert !== undefined)) {
      if (!this.#checkClientCert(rule)) return;
    }
    this.#negotiateOwnProtocol();
    if (ruleMethod === 'trust' || ruleMethod === 'cert') {
      this.#ok(ruleMethod, {});
      return;
    }
    if (!PASSWORD_METHODS.has(ruleMethod)) throw new Error(`unhandled hba method ${ruleMethod}`);
    const method = ruleMethod as PasswordMethod;
    if (method === 'password' && input.ssl === false && rule?.connType !== 'hostnossl') {
      this.#failed('cleartext_over_plaintext', method);
      this.#host.fatal(
        SQLSTATE.InvalidAuthorizationSpecification,
        'cleartext password authentication over an unencrypted connection is refused',
        undefined,
        'Connect with TLS (sslmode=require), or allow it explicitly with a hostnossl line in auth.hba_file.',
      );
      return;
    }
    const addr = this.#s.socket.remoteAddress ?? '';
    if (this.#ctx.throttle.isThrottled(addr)) {
      this.#ctx.throttle.throttledTotal++;
      this.#ctx.count(this.#ctx.stats.loginFailures, 'throttled');
      this.#host.log.info({ addr }, 'login throttled after repeated failures');
      this.#ctx.stats.events.add('throttled', { addr, user: this.#s.user });
      await new Promise((r) => setTimeout(r, this.#ctx.throttle.delayMs).unref());
      this.#host.fatal(SQLSTATE.InvalidAuthorizationSpecification, 'too many failed login attempts from this address; try again later');
      return;
    }
    const secret = await this.#lookupSecret();
    if (this.#host.closed()) return;
    if (secret === LOOKUP_FAILED) {
      // Postern could not ask: not the client's fault, not a password failure, not throttled.
      this.#host.outcome(false, 'auth_query_failed');
      this.#ctx.count(this.#ctx.stats.loginFailures, 'auth_query_failed');
      this.#host.fatal(
        SQLSTATE.ConnectionFailure,
        `could not connect to the server for database "${this.#s.database}"`,
        'Postern could not look up the credentials of this user (auth_query).',
      );
      return;
    }
    this.#stored = secret;
    const exchange = new ClientAuthExchange({
      method,
      user: this.#s.user,
      secret,
      channelBinding: this.#channelBinding(),
    });
    this.#exchange = exchange;
    const first = await exchange.start();
    if (this.#host.closed()) return;
    this.#host.send(first);
  }

  /** tls-server-end-point data of the certificate this client was shown (SCRAM-SHA-256-PLUS); null without TLS. */
  #channelBinding(): Buffer | null {
    if (this.#s.tls === null) return null;
    const leaf = presentedLeaf(this.#s.socket as tls.TLSSocket);
    return leaf === null ? null : tlsServerEndPoint(leaf);
  }

  /** Admin console: only users listed in admin.users or admin.stats_users; sends the FATAL itself otherwise. */
  #adminAllowed(): boolean {
    const a = this.#ctx.config.admin;
    const user = this.#s.user;
    if (a.users.includes(user) || a.stats_users.includes(user)) return true;
    this.#failed('not_admin_user', 'none');
    this.#host.fatal(
      SQLSTATE.InvalidAuthorizationSpecification,
      `user "${user}" is not allowed to use the admin console`,
      undefined,
      'List the user in admin.users (or admin.stats_users for SHOW only).',
    );
    return false;
  }

  /** Client certificate checks for `cert` and `clientcert=`; sends the FATAL itself on failure. */
  #checkClientCert(rule: HbaRule): boolean {
    const sock = this.#s.tls !== null ? (this.#s.socket as tls.TLSSocket) : null;
    const user = this.#s.user;
    if (sock === null || !sock.authorized) {
      this.#failed('no_client_cert', rule.method);
      this.#host.fatal(SQLSTATE.InvalidAuthorizationSpecification, 'connection requires a valid client certificate');
      return false;
    }
    if (rule.method === 'cert' || rule.options.clientcert === 'verify-full') {
      if (!certAllows(this.#ctx.auth.ident, rule.options.map, sock.getPeerCertificate(), user)) {
        this.#failed('cert_name_mismatch', rule.method);
        const msg =
          rule.method === 'cert'
            ? `certificate authentication failed for user "${user}"`
            : `certificate validation (clientcert=verify-full) failed for user "${user}": CN mismatch`;
        this.#host.fatal(SQLSTATE.InvalidAuthorizationSpecification, msg);
        return false;
      }
    }
    return true;
  }

  /** Postern answers protocol negotiation itself when it authenticates: 3.0 to 3.2, no `_pq_` options. */
  #negotiateOwnProtocol(): void {
    const unsupported = [...this.#s.params.keys()].filter((k) => k.startsWith('_pq_.'));
    const minor = Math.min(this.#s.minor, LATEST_MINOR);
    if (this.#s.minor > LATEST_MINOR || unsupported.length > 0) this.#host.send(encodeNegotiateProtocolVersion(minor, unsupported));
    this.#host.negotiated(minor);
  }

  /** The user's stored secret: users file first, then auth_query (cached). null: unknown user; LOOKUP_FAILED: the lookup itself failed. */
  #lookupSecret(): Promise<StoredSecret | null | typeof LOOKUP_FAILED> {
    return lookupSecret(this.#ctx, this.#s.user, this.#s.database, this.#host.log);
  }

  /** A client frame during login: only password messages (and Terminate, which the session handles) are legal. */
  onFrame(type: number, buf: Buffer, start: number, end: number): void {
    if (type !== FE.Password) {
      // Postgres's answer to anything but a password message during authentication.
      this.#host.fatal(SQLSTATE.ProtocolViolation, `expected password response, got message type ${type}`);
      return;
    }
    this.#onPassword(buf, start, end).catch((e: Error) => {
      this.#host.log.error({ err: e.message, stack: e.stack }, 'internal error');
      this.#host.fatal(SQLSTATE.InternalError, 'internal error in Postern');
    });
  }

  async #onPassword(buf: Buffer, start: number, end: number): Promise<void> {
    const exchange = this.#exchange;
    if (exchange === null || this.#busy) {
      this.#host.fatal(SQLSTATE.ProtocolViolation, 'unexpected password message');
      return;
    }
    this.#busy = true;
    let out: AuthOutcome;
    try {
      out = await exchange.onPassword(buf, start, end);
    } catch (e) {
      if (e instanceof ProtocolViolation) {
        this.#host.fatal(SQLSTATE.ProtocolViolation, 'malformed password packet');
        return;
      }
      throw e;
    } finally {
      this.#busy = false;
    }
    if (this.#host.closed()) return;
    const method = this.method;
    const user = this.#s.user;
    switch (out.kind) {
      case 'continue':
        this.#host.send(out.send);
        return;
      case 'fail': {
        this.#host.log.info({ user, method, reason: out.reason }, 'password authentication failed');
        this.#failed('bad_password', method);
        this.#ctx.throttle.recordFailure(this.#s.socket.remoteAddress ?? '');
        // A rotated password must be picked up at once: drop the cached lookup.
        this.#ctx.lookupCache.delete(`${user}@${this.#s.database}`);
        // Same answer for a wrong password and an unknown user, as Postgres.
        this.#host.fatal(SQLSTATE.InvalidPassword, `password authentication failed for user "${user}"`);
        return;
      }
      case 'ok': {
        this.#exchange = null;
        const creds: LoginCredentials = {};
        if (out.password !== undefined) creds.password = out.password;
        if (out.scramKeys !== undefined) creds.scramKeys = out.scramKeys;
        const final = exchange.finalMessage;
        if (final !== null) this.#host.send(final);
        this.#ok(method, creds);
        return;
      }
      default:
        out satisfies never;
    }
  }

  #failed(reason: string, method: string): void {
    this.#host.outcome(false, reason);
    this.#ctx.stats.events.add('login_failed', {
      user: this.#s.user,
      database: this.#s.database,
      addr: this.#s.socket.remoteAddress ?? '',
      reason,
    });
    this.#ctx.count(this.#ctx.stats.logins, `${method}/fail`);
    this.#ctx.count(this.#ctx.stats.loginFailures, reason);
  }

  /** The client is authenticated: what serves it next. */
  #ok(method: string, creds: LoginCredentials): void {
    this.#ctx.count(this.#ctx.stats.logins, `${method}/ok`);
    this.#host.outcome(true, null);
    this.#host.debug({ user: this.#s.user, method }, 'client authenticated');
    if (this.admin) {
      this.#host.done({ kind: 'admin', readOnly: !this.#ctx.config.admin.users.includes(this.#s.user) });
      return;
    }
    creds.stored = this.#stored ?? this.#ctx.auth.users.get(this.#s.user) ?? null;
    this.#host.done({ kind: 'pooled', method, creds });
  }
}
