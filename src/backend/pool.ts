// Server connection pools, one per (database, server user). A pool owns its
// server connections in explicit lists (idle, active, opening) and a FIFO of
// waiting clients; it opens connections with the latest credentials it was
// given, lends them to clients, takes them back, resets them (session mode),
// and closes them when a limit, a lifetime or an error says so.
// Names follow PgBouncer's vocabulary: sv_idle, sv_active, sv_used, sv_login,
// cl_waiting.

import type { PoolConfig, PoolMode } from '../config/schema.ts';
import type { Logger } from '../observability/log.ts';
import { BE, typeTable } from '../protocol/codes.ts';
import { ServerConn, ServerLoginError, type ServerSecret, type ServerTarget, SV } from './server-conn.ts';

const READY_ONLY = typeTable([BE.ReadyForQuery]);

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
  /** ParameterStatus of the first login: what clients are greeted with. */
  welcome: Map<string, string> | null = null;
  #host: PoolHost;
  #idle: ServerConn[] = [];
  #active = new Set<ServerConn>();
  #used = new Set<ServerConn>();
  #opening = 0;
  #waiting: Array<{ w: PoolWaiter; since: number }> = [];
  /** Totals for SHOW STATS-style reporting. */
  servedTotal = 0;
  waitTotalMs = 0;

  constructor(host: PoolHost, target: ServerTarget, user: string, mode: PoolMode, size: number) {
    this.#host = host;
    this.target = target;
    this.user = user;
    this.key = `${target.name}/${user}`;
    this.mode = mode;
    this.size = size;
  }

  /** Open connections (any state but closed). */
  get total(): number {
    return this.#idle.length + this.#active.size + this.#used.size + this.#opening;
  }

  /**
   * PgBouncer's pool columns. `checkDelay` is server_check_delay when a
   * server_check_query is set, else -1 (no idle connection needs a check).
   */
  counts(now = Date.now(), checkDelay = -1): PoolCounts {
    const first = this.#waiting[0];
    let stale = 0;
    if (checkDelay >= 0) for (const c of this.#idle) if (now - c.lastUsedAt > checkDelay) stale++;
    let canceling = 0;
    for (const c of this.#used) if (c.cancelsInFlight > 0) canceling++;
    return {
      cl_waiting: this.#waiting.length,
      sv_active: this.#active.size,
      sv_idle: this.#idle.length - stale,
      sv_used: stale,
      sv_tested: this.#used.size - canceling,
      sv_being_canceled: canceling,
      sv_login: this.#opening,
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
      const conn = this.#idle.pop() as ServerConn;
      if (conn.closed) continue;
      if (cfg.server_check_query !== '' && now - conn.lastUsedAt > cfg.server_check_delay) {
        // Idle for a while: prove it is alive before lending it (server_check_query).
        this.#waiting.unshift({ w, since: now });
        this.#check(conn, cfg.server_check_query);
        return null;
      }
      this.#lend(conn);
      this.servedTotal++;
      return conn;
    }
    this.#waiting.push({ w, since: now });
    this.#grow();
    return null;
  }

  #check(conn: ServerConn, sql: string): void {
    this.#used.add(conn);
    conn.state = SV.Used;
    conn.query(sql, []).then(
      () => {
        this.#used.delete(conn);
        this.#handOut(conn);
      },
      (e: Error) => {
        this.#used.delete(conn);
        this.#host.log.info({ server: conn.id, err: e.message }, 'server_check_query failed; closing the connection');
        conn.destroy();
        this.#grow();
      },
    );
  }

  /** A waiter gave up (disconnected). */
  removeWaiter(w: PoolWaiter): void {
    const i = this.#waiting.findIndex((x) => x.w === w);
    if (i >= 0) this.#waiting.splice(i, 1);
  }

  /**
   * A client gives its connection back. `reusable` false (mid-transaction,
   * mid-message, cancel in flight, error) closes it instead.
   */
  release(conn: ServerConn, reusable: boolean): void {
    this.#active.delete(conn);
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
      conn.txStatus !== 0x49 /* I */ ||
      Date.now() - conn.createdAt > cfg.server_lifetime
    ) {
      conn.close(reusable);
      this.#grow();
      return;
    }
    if (this.mode === 'session' && cfg.server_reset_query !== '') {
      this.#used.add(conn);
      conn.state = SV.Used;
      conn.query(cfg.server_reset_query, []).then(
        () => {
          this.#used.delete(conn);
          conn.resetApplied();
          this.#handOut(conn);
        },
        (e: Error) => {
          this.#used.delete(conn);
          this.#host.log.warn({ server: conn.id, err: e.message }, 'server reset query failed; closing the connection');
          conn.close();
          this.#grow();
        },
      );
      return;
    }
    this.#handOut(conn);
  }

  /**
   * A client left with work in flight or a transaction open. Instead of
   * dropping the connection: `owed` ReadyForQuery messages are drained
   * (the caller already ended any COPY, sent a Sync and, when work was
   * running, a cancel), an open transaction is rolled back, and the
   * connection is lent again only once it is idle and no cancel for it is
   * still in flight. Anything unexpected, or no ReadyForQuery within 10 s,
   * closes it.
   */
  reclaim(conn: ServerConn, owed: number): void {
    this.#active.delete(conn);
    conn.owner = null;
    // The drain below must read, whatever backpressure its client left it in.
    conn.resume();
    this.#used.add(conn);
    conn.state = SV.Used;
    let settled = false;
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      this.#used.delete(conn);
      this.#host.log.info({ server: conn.id, why }, 'could not clean the server connection; closing it');
      conn.detach();
      conn.destroy();
      this.#grow();
    };
    const timer = setTimeout(() => fail('timed out draining'), 10_000);
    timer.unref();
    const done = (): void => {
      if (settled) return;
      if (conn.cancelsInFlight > 0) {
        // The cancel must have landed before anyone else's query can run here.
        setTimeout(done, 20).unref();
        return;
      }
      settled = true;
      clearTimeout(timer);
      this.#used.delete(conn);
      conn.detach();
      this.#host.log.debug({ server: conn.id }, 'server connection cleaned after its client left');
      this.#handOut(conn);
    };
    const rollback = (): void => {
      if (conn.txStatus === 0x49) done();
      else conn.query('ROLLBACK', []).then(done, (e: Error) => fail(e.message));
    };
    if (owed <= 0) {
      rollback();
      return;
    }
    let left = owed;
    conn.attach(
      {
        onServerRun() {},
        onServerMessage(type) {
          if (type === BE.ReadyForQuery && --left === 0) {
            conn.detach();
            rollback();
          }
        },
        onServerViolation: () => fail('protocol violation'),
        onServerClosed: () => fail('closed'),
        onServerDrain() {},
      },
      READY_ONLY,
    );
  }

  #lend(conn: ServerConn): void {
    conn.state = SV.Active;
    conn.lastUsedAt = Date.now();
    this.#active.add(conn);
  }

  #handOut(conn: ServerConn): void {
    if (conn.closed) {
      this.#grow();
      return;
    }
    if (this.paused || conn.closeNeeded) {
      // PAUSE disconnects from the server as connections come back (PgBouncer does the same).
      conn.close();
      if (!this.paused) this.#grow();
      return;
    }
    const next = this.#waiting.shift();
    if (next !== undefined) {
      this.waitTotalMs += Date.now() - next.since;
      this.#lend(conn);
      this.servedTotal++;
      next.w.onServer(conn);
      return;
    }
    conn.state = SV.Idle;
    conn.lastUsedAt = Date.now();
    this.#idle.push(conn);
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
    while (this.#waiting.length > this.#opening && this.total < this.size + reserve && this.#globalRoom(cfg)) this.#open();
  }

  #globalRoom(cfg: PoolConfig): boolean {
    if (cfg.max_db_connections === 0 && cfg.max_user_connections === 0) return true;
    const t = this.#host.totals();
    if (cfg.max_db_connections > 0 && (t.byDatabase.get(this.target.name) ?? 0) >= cfg.max_db_connections) return false;
    if (cfg.max_user_connections > 0 && (t.byUser.get(this.user) ?? 0) >= cfg.max_user_connections) return false;
    return true;
  }

  #open(): void {
    this.#opening++;
    const conn = new ServerConn(this.target, this.user, this.#host.log);
    conn.pool = this;
    conn.login(this.secret, [['application_name', 'postern']], this.#host.maxMessage()).then(
      () => {
        this.#opening--;
        if (this.welcome === null) this.welcome = new Map(conn.params);
        this.#handOut(conn);
      },
      (e: Error) => {
        this.#opening--;
        conn.destroy();
        this.#host.log.warn({ pool: this.key, err: e.message }, 'server login failed');
        // Every client waiting now would meet the same refusal.
        const waiting = this.#waiting.splice(0);
        const code = e instanceof ServerLoginError ? e.code : '08006';
        const message =
          e instanceof ServerLoginError && e.fields?.message
            ? e.fields.message
            : `could not connect to the server for database "${this.target.name}"`;
        for (const { w } of waiting) w.onPoolError(code, message);
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
    const keep: ServerConn[] = [];
    for (const conn of this.#idle) {
      if (conn.closed) continue;
      const idleFor = now - conn.lastUsedAt;
      const tooOld = now - conn.createdAt > cfg.server_lifetime;
      const extra = keep.length >= cfg.min_pool_size;
      if ((idleFor > cfg.server_idle_timeout || tooOld) && extra) conn.close();
      else keep.push(conn);
    }
    this.#idle = keep;
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
    for (const conn of this.#idle.splice(0)) this.#handOut(conn);
    this.#grow();
  }

  /** Closes the idle connections now (PAUSE, KILL, RECONNECT). */
  closeIdle(): void {
    for (const conn of this.#idle.splice(0)) conn.close();
  }

  /** RECONNECT: every connection is closed when it is next released; idle ones now. */
  reconnect(): void {
    for (const conn of this.connections()) conn.closeNeeded = true;
    this.closeIdle();
    this.#grow();
  }

  /** KILL: every server connection is closed now and every waiting client told so. */
  kill(): void {
    for (const conn of this.connections()) conn.destroy();
    this.#idle = [];
    this.#active.clear();
    this.#used.clear();
    for (const { w } of this.#waiting.splice(0)) w.onPoolError('57P01', 'terminating connection due to administrator command');
  }

  /** Connections not yet closed that RECONNECT marked (WAIT_CLOSE waits for none to be left). */
  get closeNeeded(): number {
    let n = 0;
    for (const c of this.connections()) if (c.closeNeeded && !c.closed) n++;
    return n;
  }

  /** Every connection of this pool, for totals and admin output. */
  connections(): ServerConn[] {
    return [...this.#idle, ...this.#active, ...this.#used];
  }

  closeAll(): void {
    for (const c of this.connections()) c.close();
    this.#idle = [];
    for (const { w } of this.#waiting.splice(0)) w.onPoolError('57P01', 'terminating connection due to administrator command');
  }
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
    const key = `${target.name}/${user}`;
    let p = this.#pools.get(key);
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
