// Health checks: every health.check_interval each server of a watched
// database (several servers, or a role that must be known) is checked on
// Postern's own connection to it: connect and log in, then one query for
// its role (pg_is_in_recovery()), whether its sessions are read-only, its
// WAL position (current on a primary, replayed on a standby), its timeline
// and how old its last replayed transaction is. A server failing
// health.failure_threshold checks in a row is marked down (its idle pooled
// connections close); one passing check brings it back. A standby promoted
// to primary is seen at the next check. Every change of role or health is
// logged once, and parked clients try again after each check.

import type { ServerSecret } from '../backend/server-conn.ts';
import { ServerConn, ServerLoginError } from '../backend/server-conn.ts';
import type { Context } from '../context.ts';
import { type Host, type HostSet, parseLsn, ROLE } from './hosts.ts';
import type { Routing } from './router.ts';

/** One row: in recovery, WAL position, read-only by default, seconds since the last replayed transaction, timeline (hex) of a primary. */
const CHECK_SQL = `SELECT pg_is_in_recovery()::text,
  (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text,
  current_setting('transaction_read_only'),
  (extract(epoch FROM now() - pg_last_xact_replay_timestamp()) * 1000)::bigint::text,
  CASE WHEN pg_is_in_recovery() THEN NULL ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END`;

interface Probe {
  conn: ServerConn | null;
  busy: boolean;
  /** The last check could log in but not query (no credentials, a refused role): the server answers, its role stays unknown. */
  roleless: boolean;
}

export class HealthChecker {
  readonly #ctx: Context;
  readonly #routing: Routing;
  readonly #probes = new Map<Host, Probe>();
  #timer: NodeJS.Timeout | null = null;
  #interval = 0;
  /** Replay age of each standby at its last check (ms), for the lag in time. */
  readonly #replayAge = new Map<Host, number | null>();

  constructor(ctx: Context, routing: Routing) {
    this.#ctx = ctx;
    this.#routing = routing;
  }

  /** Starts the checks (one round now, then every check_interval; follows a changed interval). */
  start(): void {
    this.#schedule();
    this.round();
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    for (const p of this.#probes.values()) p.conn?.destroy();
    this.#probes.clear();
  }

  #schedule(): void {
    const every = this.#ctx.config.health.check_interval;
    if (this.#timer !== null && every === this.#interval) return;
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#interval = every;
    this.#timer = setInterval(() => this.round(), Math.max(50, every));
    this.#timer.unref();
  }

  /** One check of every server of every watched database. */
  round(): void {
    if (this.#timer === null) return;
    this.#schedule();
    this.#routing.refresh();
    for (const set of this.#routing.sets()) {
      if (!set.watched) continue;
      for (const h of set.hosts) this.#check(set, h);
    }
  }

  /** A set left the config: its probes close. */
  forget(set: HostSet): void {
    for (const h of set.hosts) this.forgetHost(h);
  }

  /** A server left the config: its probe closes. */
  forgetHost(h: Host): void {
    this.#probes.get(h)?.conn?.destroy();
    this.#probes.delete(h);
    this.#replayAge.delete(h);
  }

  /**
   * A pooled connect to the server failed: one failed check. The pool tells
   * every client that waited at once; that one failure counts once.
   */
  failed(h: Host, why: string): void {
    const now = Date.now();
    if (h.lastError === why && now - h.lastCheck < 100) return;
    this.#fail(h, why);
  }

  #credentials(h: Host): { user: string; secret: ServerSecret } | null {
    const cfg = this.#ctx.config;
    if (cfg.health.user !== undefined) {
      const secret: ServerSecret = {};
      if (cfg.health.password !== undefined) secret.password = cfg.health.password;
      return { user: cfg.health.user, secret };
    }
    const set = this.#routing.hostSet(h.name, h.tenant);
    const db = set?.db;
    if (db?.server_user !== undefined && db.server_password !== undefined)
      return { user: db.server_user, secret: { password: db.server_password } };
    return this.#routing.logins.get(h.database) ?? null;
  }

  #check(set: HostSet, h: Host): void {
    let probe = this.#probes.get(h);
    if (probe === undefined) {
      probe = { conn: null, busy: false, roleless: false };
      this.#probes.set(h, probe);
    }
    if (probe.busy) return;
    probe.busy = true;
    const sentAt = Date.now();
    const timeoutMs = this.#ctx.config.health.timeout;
    const p = probe;
    let done = false;
    const timer = setTimeout(() => finish(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    timer.unref();
    const finish = (err: Error | null, row?: Array<string | null>): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      p.busy = false;
      if (this.#probes.get(h) !== p) return;
      if (err !== null) {
        p.conn?.destroy();
        p.conn = null;
        // Reachable, but the role cannot be asked (a refused login): up, role unknown.
        if (err instanceof ServerLoginError && err.sqlstate.startsWith('28')) {
          p.roleless = true;
          this.#pass(set, h, null, sentAt, err.message);
        } else this.#fail(h, err.message);
      } else this.#pass(set, h, row ?? null, sentAt, null);
      this.#routing.changed(set);
    };
    const run = (conn: ServerConn): void => {
      conn.query(CHECK_SQL, []).then(
        (rows) => finish(null, rows[0] ?? []),
        (e: Error) => finish(e),
      );
    };
    if (p.conn !== null && !p.conn.closed) {
      run(p.conn);
      return;
    }
    const creds = this.#credentials(h);
    if (creds === null) {
      // Nothing to log in with yet: a login attempt still proves the server answers.
      p.roleless = true;
    }
    const conn = new ServerConn(h.target, creds?.user ?? 'postern_health', this.#ctx.log);
    p.conn = conn;
    conn.login(creds?.secret ?? {}, [['application_name', 'postern health check']], this.#ctx.config.limits.max_message_size).then(
      () => {
        if (done) {
          conn.destroy();
          return;
        }
        p.roleless = false;
        run(conn);
      },
      (e: Error) => finish(e),
    );
  }

  #pass(set: HostSet, h: Host, row: Array<string | null> | null, sentAt: number, note: string | null): void {
    const log = this.#ctx.log;
    h.failures = 0;
    h.checked = true;
    h.lastCheck = Date.now();
    h.lastError = note;
    if (!h.up) {
      h.up = true;
      log.info({ database: h.database, server: h.addr }, 'server is up again');
    }
    if (row === null) return;
    const role = row[0] === 'true' ? ROLE.Standby : ROLE.Primary;
    if (role !== h.role) {
      const was = h.role;
      h.role = role;
      log.info({ database: h.database, server: h.addr, role, was }, was === ROLE.Unknown ? 'server role found' : 'server role changed');
    }
    h.readOnly = row[2] === 'on';
    h.lsn = parseLsn(row[1]);
    h.lsnAt = sentAt;
    h.timeline = row[4] !== null && row[4] !== undefined ? Number.parseInt(row[4], 16) || 0 : 0;
    this.#replayAge.set(h, row[3] === null || row[3] === undefined ? null : Number(row[3]));
    this.#lags(set);
  }

  /** Standby lag against the primary's newest known position: bytes, and time since the last replayed transaction while behind. */
  #lags(set: HostSet): void {
    const primary = set.primary;
    for (const h of set.hosts) {
      if (h.role !== ROLE.Standby) {
        h.lagBytes = null;
        h.lagMs = null;
        continue;
      }
      if (primary === null || primary.lsn === null || h.lsn === null) {
        h.lagBytes = null;
        h.lagMs = null;
        continue;
      }
      const behind = primary.lsn > h.lsn ? Number(primary.lsn - h.lsn) : 0;
      h.lagBytes = behind;
      h.lagMs = behind === 0 ? 0 : (this.#replayAge.get(h) ?? null);
    }
  }

  #fail(h: Host, why: string): void {
    h.failures++;
    h.checked = true;
    h.lastCheck = Date.now();
    h.lastError = why;
    if (!h.up || h.failures < this.#ctx.config.health.failure_threshold) return;
    h.up = false;
    this.#ctx.log.warn({ database: h.database, server: h.addr, failures: h.failures, err: why }, 'server marked down');
    this.#ctx.stats.events.add('server_failure', { database: h.database, server: h.addr, failures: h.failures, error: why });
    for (const p of this.#routing.poolsOf(h)) p.closeIdle();
  }
}
