// Server connection pools, one per (database, server user). A pool owns its
// server connections in explicit lists (idle, active, tested, login), changed
// only by #move, and a FIFO of waiting clients; it opens connections with the latest credentials it was
// given, lends them to clients, takes them back, resets them (session mode),
// and closes them when a limit, a lifetime or an error says so.
// Names follow PgBouncer's vocabulary: sv_idle, sv_active, sv_used, sv_tested,
// sv_login, cl_waiting. A connection that ends, however it ends, leaves its
// list at once (ServerConn.onGone) and its slot wakes a waiting client.

import type { PoolConfig, PoolMode } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import { FE, TX, VALID_BACKEND } from '../protocol/codes.ts';
import { encodeCopyFail, SYNC } from '../protocol/frontend.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { REQ, WHO } from './expect.ts';
import { ServerConn, ServerLoginError, type ServerSecret, type ServerState, type ServerTarget, SV } from './server-conn.ts';

const COPY_FAIL = encodeCopyFail('client disconnected');

export interface PoolWaiter {
  readonly id: number;
  /** A server connection is lent to this client. */
  onServer(conn: ServerConn): void;
  /** No server connection will come (timeout, login failure): the client must be told and closed. */
  onPoolError(code: string, message: string, detail?: string): void;
}

export interface PoolCounts {
  cl_waiting: number;
  /** Lent to a client. */
  sv_active: number;
  /** Idle and usable at once. */
  sv_idle: number;
  /** Idle for longer than server_check_delay: server_check_query runs before it is lent. */
  sv_used: number;
  /** Running server_reset_query or server_check_query, or being cleaned after its client left. */
  sv_tested: number;
  /** Not lent again until the cancel requests sent for it have been delivered. */
  sv_being_canceled: number;
  sv_login: number;
  maxwait_ms: number;
}

/** What pools share: settings, totals for the global limits, and the logger. */
export interface PoolHost {
  readonly log: Logger;
  poolConfig(): PoolConfig;
  maxMessage(): number;
  /** Open connections of a database or server user, over all pools. */
  totals(): { byDatabase: Map<string, number>; byUser: Map<string, number> };
  /** PAUSE / KILL from the admin console: lend nothing, open nothing. */
  isPaused(database: string): boolean;
}

export class Pool {
  readonly key: string;
  readonly target: ServerTarget;
  readonly user: string;
  mode: PoolMode;
  size: number;
  /** Latest credentials from a client login or the config; used to open new connections. */
  secret: ServerSecret = {};
  /** ParameterStatus of the first login, in the server's spelling: what clients are greeted with. */
  welcome: Map<string, string> | null = null;
  #reportedFrom: Map<string, string> | null = null;
  #reported: ReadonlySet<string> = new Set();
  /** Lower-case names of the settings this pool's servers report (ParameterStatus). */
  get reportedKeys(): ReadonlySet<string> {
    if (this.welcome !== this.#reportedFrom) {
      this.#reportedFrom = this.welcome;
      this.#reported = new Set([...(this.welcome?.keys() ?? [])].map((k) => k.toLowerCase()));
    }
    return this.#reported;
  }
  /**
   * Startup settings already checked on a server of this pool (key: the
   * settings, sorted), with the values the server made of them: a client
   * asking for the same set logs in without waiting for a server.
   */
  readonly validated = new Map<string, ReadonlyMap<string, string>>();
  #host: PoolHost;
  /** Idle connections, most recently used last (lent LIFO, as PgBouncer does). */
  #idle: ServerConn[] = [];
  #active = new Set<ServerConn>();
  #tested = new Set<ServerConn>();
  #login = new Set<ServerConn>();
  #waiting: Array<{ w: PoolWaiter; since: number }> = [];
  /** Replaced after a reload (see retire). */
  retired = false;
  /** Date.now() when it last had a connection or a waiter (the janitor drops wildcard pools empty for long). */
  lastBusy = Date.now();
  /** Totals for SHOW STATS-style reporting. */
  servedTotal = 0;
  waitTotalMs = 0;

  constructor(host: PoolHost, target: ServerTarget, user: string, mode: PoolMode, size: number) {
    this.#host = host;
    this.target = target;
    this.user = user;
    this.key = poolKey(target, user);
    this.mode = mode;
    this.size = size;
  }

  /** Open connections (any state but closed). */
  get total(): number {
    return this.#idle.length + this.#active.size + this.#tested.size + this.#login.size;
  }

  /**
   * The one way a connection changes state: it leaves the list of its old
   * state and joins the list of the new one (closed: no list).
   */
  #move(conn: ServerConn, to: ServerState): void {
    this.#remove(conn);
    conn.state = to;
    if (to !== SV.Closed) conn.listedIn = to;
    switch (to) {
      case SV.Idle:
        conn.lastUsedAt = Date.now();
        this.#idle.push(conn);
        return;
      case SV.Active:
        conn.lastUsedAt = Date.now();
        this.#active.add(conn);
        return;
      case SV.Tested:
        this.#tested.add(conn);
        return;
      case SV.Login:
        this.#login.add(conn);
        return;
      case SV.Closed:
        return;
      default:
        to satisfies never;
    }
  }

  /** Leaves whichever list the pool put it in (the pool's record, not conn.state, which the connection also sets itself). */
  #remove(conn: ServerConn): void {
    const was = conn.listedIn;
    if (was === null) return;
    conn.listedIn = null;
    switch (was) {
      case SV.Idle: {
        // Lent LIFO: usually the last one.
        const idle = this.#idle;
        const i = idle.lastIndexOf(conn);
        if (i === idle.length - 1) idle.pop();
        else if (i >= 0) idle.splice(i, 1);
        return;
      }
      case SV.Active:
        this.#active.delete(conn);
        return;
      case SV.Tested:
        this.#tested.delete(conn);
        return;
      case SV.Login:
        this.#login.delete(conn);
        return;
      default:
        return;
    }
  }

  /** A connection ended, however it ended (its client's error, a dead server, a kill): its slot is free now. */
  #onGone = (conn: ServerConn): void => {
    this.#remove(conn);
    conn.owner = null;
    this.#grow();
  };

  /**
   * PgBouncer's pool columns. `checkDelay` is server_check_delay when a
   * server_check_query is set, else -1 (no idle connection needs a check).
   */
  counts(now = Date.now(), checkDelay = -1): PoolCounts {
    const first = this.#waiting[0];
    let stale = 0;
    if (checkDelay >= 0) for (const c of this.#idle) if (now - c.lastUsedAt > checkDelay) stale++;
    let canceling = 0;
    for (const c of this.#tested) if (c.cancelsInFlight > 0) canceling++;
    return {
      cl_waiting: this.#waiting.length,
      sv_active: this.#active.size,
      sv_idle: this.#idle.length - stale,
      sv_used: stale,
      sv_tested: this.#tested.size - canceling,
      sv_being_canceled: canceling,
      sv_login: this.#login.size,
      maxwait_ms: first ? now - first.since : 0,
    };
  }

  /** A connection now, or null: the waiter is queued and called back later. */
  acquire(w: PoolWaiter): ServerConn | null {
    const cfg = this.#host.poolConfig();
    const now = Date.now();
    if (this.paused) {
      this.#waiting.push({ w, since: now });
      return null;
    }
    while (this.#idle.length > 0) {
      const conn = this.#idle[this.#idle.length - 1] as ServerConn;
      if (conn.closed) {
        this.#remove(conn);
        continue;
      }
      if (cfg.server_check_query !== '' && now - conn.lastUsedAt > cfg.server_check_delay) {
        // Idle for a while: prove it is alive before lending it (server_check_query).
        this.#waiting.unshift({ w, since: now });
        this.#check(conn, cfg.server_check_query);
        return null;
      }
      this.#move(conn, SV.Active);
      this.servedTotal++;
      return conn;
    }
    this.#waiting.push({ w, since: now });
    this.#grow();
    return null;
  }

  #check(conn: ServerConn, sql: string): void {
    this.#move(conn, SV.Tested);
    conn.query(sql, []).then(
      () => this.#handOut(conn),
      (e: Error) => {
        this.#host.log.info({ server: conn.id, err: e.message }, 'server_check_query failed; closing the connection');
        conn.destroy();
      },
    );
  }

  /** A waiter gave up (disconnected). */
  removeWaiter(w: PoolWaiter): void {
    const i = this.#waiting.findIndex((x) => x.w === w);
    if (i >= 0) this.#waiting.splice(i, 1);
  }

  /**
   * A client gives its connection back with nothing owed. `reusable` false
   * (pinned state, a broken link) closes it instead.
   */
  release(conn: ServerConn, reusable: boolean): void {
    conn.owner = null;
    conn.detach();
    // Its client may have paused it (backpressure) and left before 'drain':
    // a pooled connection always reads, so what it sends while idle is seen.
    conn.resume();
    const cfg = this.#host.poolConfig();
    if (
      !reusable ||
      conn.closed ||
      conn.closeNeeded ||
      conn.txStatus !== TX.Idle ||
      !conn.ledger.idle ||
      Date.now() - conn.createdAt > cfg.server_lifetime
    ) {
      conn.close(reusable && conn.ledger.idle);
      return;
    }
    this.#clean(conn);
  }

  /**
   * Before a returned connection is lent again: cancel requests sent for it
   * must have landed (or the cancel could hit the next client's query), and
   * in session mode server_reset_query runs.
   */
  #clean(conn: ServerConn): void {
    const cfg = this.#host.poolConfig();
    const reset = this.mode === 'session' && cfg.server_reset_query !== '';
    if (conn.cancelsInFlight === 0 && !reset) {
      this.#handOut(conn);
      return;
    }
    this.#move(conn, SV.Tested);
    conn.whenCancelsDone(() => {
      if (conn.closed) return;
      if (!reset) {
        this.#handOut(conn);
        return;
      }
      conn.query(cfg.server_reset_query, []).then(
        () => {
          conn.resetApplied();
          this.#handOut(conn);
        },
        (e: Error) => {
          this.#host.log.warn({ server: conn.id, err: e.message }, 'server reset query failed; closing the connection');
          conn.close();
        },
      );
    });
  }

  /**
   * A client left with work in flight or a transaction open. Instead of
   * dropping the connection, Postern finishes what the client left (CopyFail
   * ends a COPY FROM STDIN, Sync ends an extended-protocol batch; a cancel
   * when `cancel` says a statement may still be running), reads every answer
   * still owed (the connection's ledger knows exactly which), rolls back an
   * open transaction, and lends it again only once it is idle and no cancel
   * for it is in flight. Anything unexpected, or no end within 10 s, closes it.
   */
  reclaim(conn: ServerConn, cancel: boolean, log: Logger): void {
    conn.owner = null;
    this.#move(conn, SV.Tested);
    // The drain below must read, whatever backpressure its client left it in.
    conn.resume();
    const ledger = conn.ledger;
    ledger.disown();
    let settled = false;
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      this.#host.log.info({ server: conn.id, why }, 'could not clean the server connection; closing it');
      conn.detach();
      conn.destroy();
      ledger.watcher = null;
    };
    const timer = setTimeout(() => fail('timed out draining'), 10_000);
    timer.unref();
    const finish = (): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      conn.detach();
      // The departed client's statements are all answered: its statistics stop here.
      ledger.watcher = null;
      const rollback = (): void => {
        if (conn.closed) return;
        if (conn.txStatus === TX.Idle) {
          this.#host.log.debug({ server: conn.id }, 'server connection cleaned after its client left');
          this.#clean(conn);
          return;
        }
        conn.query('ROLLBACK', []).then(
          () => this.#clean(conn),
          (e: Error) => {
            this.#host.log.info({ server: conn.id, why: e.message }, 'could not roll back after the client left; closing it');
            conn.destroy();
          },
        );
      };
      // The cancel must have landed before anyone else's query can run here.
      conn.whenCancelsDone(rollback);
    };
    if (ledger.idle) {
      finish();
      return;
    }
    conn.attach(
      {
        onServerRun() {},
        onServerMessage(type, buf, start, end) {
          ledger.onServerFrame(type, buf, start, end, false);
          if (ledger.idle) finish();
        },
        onServerViolation: () => fail('protocol violation'),
        onServerClosed: () => fail('closed'),
        onServerDrain() {},
        onServerError: (e) => fail(e.message),
      },
      VALID_BACKEND,
    );
    const out: Buffer[] = [];
    if (ledger.ignores(FE.CopyFail)) ledger.ignored(FE.CopyFail);
    else ledger.push(REQ.CopyEnd, WHO.Postern, null);
    out.push(COPY_FAIL);
    ledger.push(REQ.Sync, WHO.Postern, null);
    out.push(SYNC);
    conn.write(Buffer.concat(out));
    if (cancel) conn.sendCancel(log);
  }

  #handOut(conn: ServerConn): void {
    if (conn.closed) return;
    if (this.paused || conn.closeNeeded) {
      // PAUSE disconnects from the server as connections come back (PgBouncer does the same).
      conn.close();
      return;
    }
    const next = this.#waiting.shift();
    if (next !== undefined) {
      this.waitTotalMs += Date.now() - next.since;
      this.#move(conn, SV.Active);
      this.servedTotal++;
      next.w.onServer(conn);
      return;
    }
    this.#move(conn, SV.Idle);
  }

  /**
   * Opens connections while clients wait and the limits allow. The reserve
   * (reserve_pool_size) opens only for a client that has waited
   * reserve_pool_timeout.
   */
  #grow(now = Date.now()): void {
    if (this.paused) return;
    const cfg = this.#host.poolConfig();
    const first = this.#waiting[0];
    const reserve =
      first !== undefined && cfg.reserve_pool_size > 0 && now - first.since >= cfg.reserve_pool_timeout ? cfg.reserve_pool_size : 0;
    while (this.#waiting.length > this.#login.size && this.total < this.size + reserve && this.#globalRoom(cfg)) this.#open();
  }

  #globalRoom(cfg: PoolConfig): boolean {
    if (cfg.max_db_connections === 0 && cfg.max_user_connections === 0) return true;
    const t = this.#host.totals();
    if (cfg.max_db_connections > 0 && (t.byDatabase.get(this.target.name) ?? 0) >= cfg.max_db_connections) return false;
    if (cfg.max_user_connections > 0 && (t.byUser.get(this.user) ?? 0) >= cfg.max_user_connections) return false;
    return true;
  }

  #open(): void {
    const conn = new ServerConn(this.target, this.user, this.#host.log);
    conn.pool = this;
    this.#move(conn, SV.Login);
    // No application_name of Postern's own: a client that sets none sees the
    // server's default, as it would connected directly.
    conn.login(this.secret, [], this.#host.maxMessage()).then(
      () => {
        // Told from here on: a login that failed never held a slot but #login's.
        conn.onGone = this.#onGone;
        if (conn.closed) {
          this.#onGone(conn);
          return;
        }
        if (this.welcome === null) this.welcome = conn.reportedSettings();
        this.#handOut(conn);
      },
      (e: Error) => {
        this.#remove(conn);
        conn.destroy();
        this.#host.log.warn({ pool: `${this.target.name}/${this.user}`, err: e.message }, 'server login failed');
        // Every client waiting now would meet the same refusal. The server's
        // own error when it sent one (a role without LOGIN, a database that
        // does not accept connections ...); otherwise Postern could not log
        // in (no credentials it can use, the server is down): 08006, never
        // 28P01, which would blame the client's password.
        const waiting = this.#waiting.splice(0);
        const fields = e instanceof ServerLoginError ? e.fields : null;
        const code = fields !== null && e instanceof ServerLoginError ? e.sqlstate : SQLSTATE.ConnectionFailure;
        const message = fields?.message ?? `could not connect to the server for database "${this.target.name}"`;
        const detail = fields !== null ? fields.detail : e.message;
        for (const { w } of waiting) w.onPoolError(code, message, detail);
      },
    );
  }

  /** One janitor tick: wait timeouts, reserve pool, idle timeouts, lifetimes, min_pool_size. */
  tick(now: number): void {
    const cfg = this.#host.poolConfig();
    this.#grow(now);
    if (cfg.query_wait_timeout > 0) {
      while (this.#waiting.length > 0 && now - (this.#waiting[0] as { since: number }).since >= cfg.query_wait_timeout) {
        const { w } = this.#waiting.shift() as { w: PoolWaiter };
        w.onPoolError('08P01', 'query_wait_timeout', 'No server connection became free in time (pool.query_wait_timeout).');
      }
    }
    let kept = 0;
    // Oldest first: the least recently used go first.
    for (const conn of [...this.#idle]) {
      if (conn.closed) {
        this.#remove(conn);
        continue;
      }
      const idleFor = now - conn.lastUsedAt;
      const tooOld = now - conn.createdAt > cfg.server_lifetime;
      const extra = kept >= cfg.min_pool_size;
      if ((idleFor > cfg.server_idle_timeout || tooOld) && extra) conn.close();
      else kept++;
    }
    const haveSecret = this.secret.password !== undefined || this.secret.scramKeys !== undefined || this.secret.md5 !== undefined;
    if (haveSecret && !this.paused) {
      // min_pool_size: open spares without a waiter.
      while (this.total < Math.min(cfg.min_pool_size, this.size) && this.#globalRoom(cfg)) this.#open();
    }
  }

  get paused(): boolean {
    return this.#host.isPaused(this.target.name);
  }

  /** After RESUME: lend idle connections to the clients that waited, open more if needed. */
  kick(): void {
    for (const conn of [...this.#idle]) {
      if (this.#waiting.length === 0) break;
      this.#handOut(conn);
    }
    this.#grow();
  }

  /** Closes the idle connections now (PAUSE, KILL, RECONNECT). */
  closeIdle(): void {
    for (const conn of [...this.#idle]) conn.close();
  }

  /** RECONNECT: every connection is closed when it is next released; idle ones now. */
  reconnect(): void {
    for (const conn of this.connections()) conn.closeNeeded = true;
    this.closeIdle();
    this.#grow();
  }

  /** KILL: every server connection is closed now and every waiting client told so. */
  kill(): void {
    const waiting = this.#waiting.splice(0);
    for (const conn of this.connections()) conn.destroy();
    for (const { w } of waiting) w.onPoolError('57P01', 'terminating connection due to administrator command');
  }

  /** Connections not yet closed that RECONNECT marked (WAIT_CLOSE waits for none to be left). */
  get closeNeeded(): number {
    let n = 0;
    for (const c of this.connections()) if (c.closeNeeded && !c.closed) n++;
    return n;
  }

  /** Every open connection of this pool, for totals and admin output. */
  connections(): ServerConn[] {
    return [...this.#idle, ...this.#active, ...this.#tested, ...this.#login];
  }

  /** Replaced by a pool with new settings: no new lending, idle connections close now, lent ones when they come back. */
  retire(): void {
    this.retired = true;
    this.reconnect();
  }

  closeAll(): void {
    const waiting = this.#waiting.splice(0);
    for (const c of this.connections()) c.close();
    for (const { w } of waiting) w.onPoolError('57P01', 'terminating connection due to administrator command');
  }
}

/**
 * One pool per (tenant, database, user, server): NUL separates the parts, so
 * names that hold '/' or '@' cannot make two pools share a key.
 */
function poolKey(target: ServerTarget, user: string): string {
  return `${target.tenant ?? ''}\u0000${target.name}\u0000${user}\u0000${target.server ?? ''}`;
}

/** All pools of one Postern instance. */
export class PoolRegistry implements PoolHost {
  readonly log: Logger;
  #pools = new Map<string, Pool>();
  /** Paused databases; '*' pauses all. */
  #paused = new Set<string>();
  /** Databases that accept no new clients (DISABLE). */
  #disabled = new Set<string>();
  #config: () => PoolConfig;
  #maxMessage: () => number;

  constructor(log: Logger, config: () => PoolConfig, maxMessage: () => number) {
    this.log = log;
    this.#config = config;
    this.#maxMessage = maxMessage;
  }

  poolConfig(): PoolConfig {
    return this.#config();
  }

  maxMessage(): number {
    return this.#maxMessage();
  }

  get(target: ServerTarget, user: string, mode: PoolMode, size: number): Pool {
    const key = poolKey(target, user);
    let p = this.#pools.get(key);
    if (p !== undefined && p.target !== target) {
      // The server's settings changed (a reload): the old pool's connections close as they come back.
      p.retire();
      this.#pools.delete(key);
      p = undefined;
    }
    if (p === undefined) {
      p = new Pool(this, target, user, mode, size);
      this.#pools.set(key, p);
    }
    p.mode = mode;
    p.size = size;
    return p;
  }

  isPaused(database: string): boolean {
    return this.#paused.size > 0 && (this.#paused.has('*') || this.#paused.has(database));
  }

  /** PAUSE [db]: lend and open nothing more for that database (null: all); idle connections close now, the rest as they come back. */
  pause(database: string | null): void {
    this.#paused.add(database ?? '*');
    for (const p of this.#pools.values()) if (p.paused) p.closeIdle();
  }

  /** Open server connections of the paused pools: PAUSE completes when none is left. */
  pausedOpen(database: string | null): number {
    let n = 0;
    for (const p of this.#pools.values()) if (database === null || p.target.name === database) n += p.total;
    return n;
  }

  pausedNames(): string[] {
    return [...this.#paused];
  }

  disabledNames(): string[] {
    return [...this.#disabled];
  }

  /** RESUME [db]: clients that waited get their connections. */
  resume(database: string | null): void {
    if (database === null) this.#paused.clear();
    else this.#paused.delete(database);
    for (const p of this.#pools.values()) if (!p.paused) p.kick();
  }

  isDisabled(database: string): boolean {
    return this.#disabled.has(database);
  }

  /** DISABLE / ENABLE db: refuse or accept new client connections. */
  setDisabled(database: string, disabled: boolean): void {
    if (disabled) this.#disabled.add(database);
    else this.#disabled.delete(database);
  }

  all(): Pool[] {
    return [...this.#pools.values()];
  }

  /** A pool whose server left the config: nothing more is lent from it, its connections close (lent ones when they come back). */
  retire(p: Pool): void {
    if (this.#pools.get(p.key) === p) this.#pools.delete(p.key);
    p.retire();
  }

  /** Is this pool the registered one for its key (not dropped or replaced)? */
  has(p: Pool): boolean {
    return this.#pools.get(p.key) === p;
  }

  /** Forgets an empty pool (a wildcard database nobody uses any more); false when it still has connections or waiters. */
  drop(p: Pool): boolean {
    if (p.total > 0 || p.counts().cl_waiting > 0 || this.#pools.get(p.key) !== p) return false;
    this.#pools.delete(p.key);
    return true;
  }

  totals(): { byDatabase: Map<string, number>; byUser: Map<string, number> } {
    const byDatabase = new Map<string, number>();
    const byUser = new Map<string, number>();
    for (const p of this.#pools.values()) {
      byDatabase.set(p.target.name, (byDatabase.get(p.target.name) ?? 0) + p.total);
      byUser.set(p.user, (byUser.get(p.user) ?? 0) + p.total);
    }
    return { byDatabase, byUser };
  }

  tick(now = Date.now()): void {
    for (const p of this.#pools.values()) p.tick(now);
  }

  closeAll(): void {
    for (const p of this.#pools.values()) p.closeAll();
  }
}
