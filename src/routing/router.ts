// The router: from what a client asked for (database, user; later the TLS
// server name's tenant) to where its sessions go: the database entry (or the
// wildcard "*" entry), the server user and credentials, the pool mode and
// size, and, for each server connection the client needs, the pool of the
// server that may serve it now (hosts.ts decides from roles, health, lag and
// the need: any, a proven read, a write). One pool per (database, server
// user, server); a PoolGroup holds the pools of one (database, server user).
// Tenants and passthrough plug in here and nowhere else.

import type { StoredSecret } from '../auth/secrets.ts';
import type { Pool } from '../backend/pool.ts';
import type { ServerSecret, ServerTarget } from '../backend/server-conn.ts';
import type { DatabaseConfig, PoolMode } from '../config/schema.ts';
import type { Context } from '../context.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { ReadOnlyClassifier } from '../sql/readonly.ts';
import { serverTlsOptions } from '../tls/contexts.ts';
import { HealthChecker } from './health.ts';
import { Host, HostSet, NEED, type Need, type WriteMark } from './hosts.ts';

/** The entry that serves any database name not listed (PgBouncer's `*`). */
export const WILDCARD = '*';

/** Where a client's database names are looked up: a tenant's databases (chosen by TLS server name), or the top-level ones (null). */
export type Scope = string | null;

/** A database as logs, the admin console and metrics name it: "tenant/database" in a tenant, the bare name at the top level. */
export function scopedLabel(tenant: Scope, database: string): string {
  return tenant === null ? database : `${tenant}/${database}`;
}

/** The key of a database within its scope (tenant names have no NUL, so no two scopes share one). */
function scopedKey(tenant: Scope, database: string): string {
  return tenant === null ? database : `${tenant}\u0000${database}`;
}

export interface Route {
  /** The database name the client asked for. */
  database: string;
  /** Its tenant (null: the top-level databases). */
  tenant: Scope;
  /** scopedLabel(tenant, database). */
  label: string;
  db: DatabaseConfig;
  /** The servers of that database. */
  hosts: HostSet;
  /** The role Postern logs into the server as. */
  serverUser: string;
  mode: PoolMode;
  /** This process's share of the pool size. */
  poolSize: number;
  /** A password from the config for the server user (users.*.server_password or databases.*.server_password). */
  password?: string;
}

/** The databases of a scope: a tenant's (none when the tenant left the config), or the top-level ones. */
export function scopeDatabases(ctx: Context, tenant: Scope): Record<string, DatabaseConfig> {
  return tenant === null ? ctx.config.databases : (ctx.config.tenants[tenant]?.databases ?? {});
}

/** The database entry for a name in a scope: its own, else the wildcard's; null when neither exists. */
export function databaseEntry(ctx: Context, database: string, tenant: Scope = null): DatabaseConfig | null {
  const dbs = scopeDatabases(ctx, tenant);
  return dbs[database] ?? (database !== WILDCARD ? dbs[WILDCARD] : undefined) ?? null;
}

/** Where a client of `database` (in `tenant`) as `user` goes; null when no such database is configured. */
export function route(ctx: Context, database: string, user: string, tenant: Scope = null): Route | null {
  const cfg = ctx.config;
  const routing = routingOf(ctx);
  const hosts = routing.hostSet(database, tenant);
  if (hosts === null) return null;
  const db = hosts.db;
  const mapping = cfg.users[user];
  const serverUser = mapping?.server_user ?? db.server_user ?? user;
  const r: Route = {
    database,
    tenant,
    label: hosts.database,
    db,
    hosts,
    serverUser,
    mode: mapping?.pool_mode ?? db.pool_mode ?? cfg.pool.pool_mode,
    poolSize: ctx.share(db.pool_size ?? cfg.pool.default_pool_size),
  };
  // A mapped server user takes only its own password; otherwise the user's, then the database's.
  const pw = mapping?.server_user !== undefined ? mapping.server_password : (mapping?.server_password ?? db.server_password);
  if (pw !== undefined) r.password = pw;
  return r;
}

/** What a client proved at login, usable to log into the server as the same user. */
export interface LoginCredentials {
  password?: string;
  scramKeys?: { clientKey: Buffer; serverKey: Buffer };
  /** The secret the client was checked against (users file or auth_query). */
  stored?: StoredSecret | null;
}

/**
 * The credentials for the server login: the configured password, or (the
 * server user being the client's own) what the client proved: its password,
 * the SCRAM keys recovered from its proof, or a stored MD5 hash that answers
 * the server's MD5 challenge.
 */
export function serverSecret(r: Route, user: string, creds: LoginCredentials): ServerSecret {
  const secret: ServerSecret = {};
  if (r.password !== undefined) secret.password = r.password;
  else if (r.serverUser === user) {
    if (creds.password !== undefined) secret.password = creds.password;
    if (creds.scramKeys !== undefined) secret.scramKeys = creds.scramKeys;
    if (creds.stored?.kind === 'md5') secret.md5 = creds.stored.hash;
  }
  return secret;
}

function usable(s: ServerSecret): boolean {
  return s.password !== undefined || s.scramKeys !== undefined || s.md5 !== undefined;
}

/** The pools of a route; the newest usable credentials open their next connections. */
export function poolFor(ctx: Context, r: Route, secret: ServerSecret): PoolGroup {
  return routingOf(ctx).group(r, secret);
}

/** Someone waiting for a server of a group while none qualifies (a failover in progress). */
export interface ParkedWaiter {
  readonly since: number;
  /** A server may qualify now: try again. */
  retry(): void;
  /** None came in time (pool.query_wait_timeout). */
  giveUp(code: string, message: string, detail: string): void;
}

/** The pools of one (database, server user): one per server of the database. */
export class PoolGroup {
  readonly key: string;
  readonly hosts: HostSet;
  readonly user: string;
  mode: PoolMode;
  size: number;
  secret: ServerSecret = {};
  readonly #ctx: Context;
  readonly #pools = new Map<Host, Pool>();
  readonly #parked = new Map<ParkedWaiter, Need>();

  constructor(ctx: Context, hosts: HostSet, user: string, mode: PoolMode, size: number) {
    this.#ctx = ctx;
    this.hosts = hosts;
    this.user = user;
    this.mode = mode;
    this.size = size;
    this.key = `${hosts.database}/${user}`;
  }

  /** The pool of one server (made on first use). */
  poolOf(h: Host): Pool {
    let p = this.#pools.get(h);
    if (p === undefined || p.target !== h.target || !this.#ctx.pools.has(p)) {
      p = this.#ctx.pools.get(h.target, this.user, this.mode, this.size);
      this.#pools.set(h, p);
    } else {
      p.mode = this.mode;
      p.size = this.size;
    }
    if (usable(this.secret)) p.secret = this.secret;
    return p;
  }

  /** The server a pool belongs to. */
  hostOf(pool: Pool): Host | null {
    for (const [h, p] of this.#pools) if (p === pool) return h;
    return null;
  }

  /** The pool for a need now, or null when no server qualifies. */
  choose(need: Need, mark: WriteMark | null = null, exclude: Host | null = null): Pool | null {
    const hosts = this.hosts.hosts;
    if (hosts.length === 1 && !this.hosts.watched) {
      const only = hosts[0] as Host;
      return only === exclude ? null : this.poolOf(only);
    }
    const h = this.hosts.pick(need, (x) => this.#pools.get(x)?.total ?? 0, exclude, mark);
    return h === null ? null : this.poolOf(h);
  }

  /** A connect to this pool's server failed: it counts as a failed check. */
  connectFailed(pool: Pool, why: string): Host | null {
    const h = this.hostOf(pool);
    if (h !== null) routingOf(this.#ctx).checker.failed(h, why);
    return h;
  }

  /** Nothing qualifies now but a check may change that: wait (true), or nothing will (false: refuse now). */
  park(w: ParkedWaiter, need: Need): boolean {
    if (!this.hosts.unsettled(need)) return false;
    this.#parked.set(w, need);
    return true;
  }

  unpark(w: ParkedWaiter): void {
    this.#parked.delete(w);
  }

  /** The error a client gets when no server of the database qualifies. */
  refusal(need: Need = NEED.Any): { code: string; message: string; detail: string } {
    const attrs = this.hosts.db.target_session_attrs;
    return {
      code: SQLSTATE.ConnectionFailure,
      message:
        need === NEED.Write && attrs !== 'read-write' && attrs !== 'primary'
          ? `no primary of database "${this.hosts.database}" is up for a transaction that may write`
          : `no server of database "${this.hosts.database}" is usable for target_session_attrs=${attrs}`,
      detail: this.hosts.refusals(need),
    };
  }

  /** After a health check: parked waiters try again. */
  retryParked(): void {
    if (this.#parked.size === 0) return;
    const parked = [...this.#parked.keys()];
    this.#parked.clear();
    for (const w of parked) w.retry();
  }

  /** Janitor: parked waiters past pool.query_wait_timeout are refused. */
  tick(now: number, timeout: number): void {
    if (timeout <= 0) return;
    for (const [w, need] of [...this.#parked]) {
      if (now - w.since < timeout) continue;
      this.#parked.delete(w);
      const r = this.refusal(need);
      w.giveUp(r.code, r.message, r.detail);
    }
  }
}

/** Routing state of one Postern instance: the server sets, the pool groups and the health checker. */
export class Routing {
  readonly #ctx: Context;
  readonly #sets = new Map<string, HostSet>();
  readonly #groups = new Map<string, PoolGroup>();
  readonly checker: HealthChecker;
  /** Per database: the newest server user and credentials a client login gave (health checks without health.user use them). */
  readonly logins = new Map<string, { user: string; secret: ServerSecret }>();

  #classifier: { from: readonly string[]; value: ReadOnlyClassifier } | null = null;

  constructor(ctx: Context) {
    this.#ctx = ctx;
    this.checker = new HealthChecker(ctx, this);
  }

  /** The read-only proof of read_write_split, with routing.read_only_functions (remade when that list changes). */
  get classifier(): ReadOnlyClassifier {
    const list = this.#ctx.config.routing.read_only_functions;
    if (this.#classifier?.from !== list) this.#classifier = { from: list, value: new ReadOnlyClassifier(list) };
    return this.#classifier.value;
  }

  /** The servers of a database of a scope (or of the wildcard entry, under the client's database name); null when neither is configured. */
  hostSet(database: string, tenant: Scope = null): HostSet | null {
    const db = databaseEntry(this.#ctx, database, tenant);
    if (db === null) return null;
    const key = scopedKey(tenant, database);
    const have = this.#sets.get(key);
    if (have !== undefined && have.db === db) return have;
    if (have !== undefined && serversKey(have.db, database) === serversKey(db, database)) {
      // A reload that left this database's servers as they were: same servers, same pools.
      have.db = db;
      return have;
    }
    const set = this.#build(database, tenant, db, have);
    this.#sets.set(key, set);
    return set;
  }

  /** A server for a connection of Postern's own or a relayed session: one that qualifies now; null when the database is unknown or none qualifies. */
  targetFor(database: string, tenant: Scope = null): ServerTarget | null {
    const set = this.hostSet(database, tenant);
    if (set === null) return null;
    const h = set.hosts.length === 1 && !set.watched ? set.hosts[0] : set.pick(NEED.Any, () => 0);
    return h === null || h === undefined ? null : h.target;
  }

  /** Every set made so far (the checker watches them, SHOW HOSTS lists them). */
  sets(): HostSet[] {
    return [...this.#sets.values()];
  }

  /** The sets of the config's databases now (top level and tenants'): made for every listed entry, dropped for removed ones. */
  refresh(): void {
    const cfg = this.#ctx.config;
    const scopes: Array<[Scope, Record<string, DatabaseConfig>]> = [[null, cfg.databases]];
    for (const [name, t] of Object.entries(cfg.tenants)) if (t.passthrough.host === undefined) scopes.push([name, t.databases]);
    for (const [tenant, dbs] of scopes) for (const name of Object.keys(dbs)) if (name !== WILDCARD) this.hostSet(name, tenant);
    for (const [key, set] of this.#sets) {
      const db = databaseEntry(this.#ctx, set.name, set.tenant);
      if (db === null) {
        this.#sets.delete(key);
        for (const h of set.hosts) this.#dropHost(h);
      } else if (db !== set.db) this.hostSet(set.name, set.tenant);
    }
  }

  /**
   * The server-side TLS files read again (a reload): new connections use the
   * new ones, open connections keep theirs. Call after checkServerTls passed.
   */
  reloadServerTls(): void {
    for (const set of this.#sets.values()) for (const h of set.hosts) h.target.tls = serverTlsOptions(set.db, h.target.host);
  }

  /** A set for a (new or changed) entry; servers that stay keep what the checks know of them. */
  #build(database: string, tenant: Scope, db: DatabaseConfig, old: HostSet | undefined): HostSet {
    const label = scopedLabel(tenant, database);
    const list = db.servers ?? [{ host: db.host, port: db.port }];
    const many = list.length > 1;
    const dbname = db.dbname ?? database;
    const hosts: Host[] = [];
    for (const s of list) {
      const prev = old?.hosts.find((h) => h.target.host === s.host && h.target.port === s.port && h.target.dbname === dbname);
      if (
        prev !== undefined &&
        old !== undefined &&
        JSON.stringify(old.db.tls) === JSON.stringify(db.tls) &&
        (prev.target.server !== null) === many
      ) {
        hosts.push(prev);
        continue;
      }
      const target: ServerTarget = {
        name: label,
        tenant,
        host: s.host,
        port: s.port,
        dbname,
        tls: serverTlsOptions(db, s.host),
        connectTimeout: this.#ctx.config.limits.server_connect_timeout,
        server: many ? `${s.host}:${s.port}` : null,
      };
      hosts.push(new Host(label, target, database, tenant));
    }
    if (old !== undefined) {
      for (const h of old.hosts) if (!hosts.includes(h)) this.#dropHost(h);
      old.db = db;
      old.hosts = hosts;
      return old;
    }
    return new HostSet(label, db, hosts, database, tenant);
  }

  /** A server left the config: its pools retire (lent connections close when they come back) and its health probe closes. */
  #dropHost(h: Host): void {
    for (const p of this.poolsOf(h)) this.#ctx.pools.retire(p);
    this.checker.forgetHost(h);
  }

  group(r: Route, secret: ServerSecret): PoolGroup {
    const key = `${scopedKey(r.tenant, r.database)}\u0000${r.serverUser}`;
    let g = this.#groups.get(key);
    if (g === undefined || g.hosts !== r.hosts) {
      g = new PoolGroup(this.#ctx, r.hosts, r.serverUser, r.mode, r.poolSize);
      this.#groups.set(key, g);
    }
    g.mode = r.mode;
    g.size = r.poolSize;
    if (usable(secret)) {
      g.secret = secret;
      this.logins.set(r.label, { user: r.serverUser, secret });
    }
    return g;
  }

  groups(): PoolGroup[] {
    return [...this.#groups.values()];
  }

  /** A check changed what qualifies: parked clients try again. */
  changed(set: HostSet): void {
    for (const g of this.#groups.values()) if (g.hosts === set) g.retryParked();
  }

  /** Janitor tick: parked waiters past their wait timeout; pools and sets of wildcard databases unused for server_idle_timeout go. */
  tick(now: number): void {
    const cfg = this.#ctx.config;
    for (const g of this.#groups.values()) g.tick(now, cfg.pool.query_wait_timeout);
    for (const [key, set] of this.#sets) {
      const dbs = scopeDatabases(this.#ctx, set.tenant);
      if (dbs[WILDCARD] === undefined || dbs[set.name] !== undefined) continue;
      let busy = false;
      for (const h of set.hosts)
        for (const p of this.poolsOf(h)) {
          if (p.total > 0 || p.counts(now).cl_waiting > 0) p.lastBusy = now;
          if (now - p.lastBusy < cfg.pool.server_idle_timeout) busy = true;
        }
      if (busy) continue;
      for (const h of set.hosts) for (const p of this.poolsOf(h)) this.#ctx.pools.drop(p);
      this.#sets.delete(key);
      this.checker.forget(set);
      for (const [key, g] of this.#groups) if (g.hosts === set) this.#groups.delete(key);
    }
  }

  /** The pools of one server, over every server user. */
  poolsOf(h: Host): Pool[] {
    const out: Pool[] = [];
    for (const p of this.#ctx.pools.all()) if (p.target === h.target) out.push(p);
    return out;
  }
}

/** What makes a database's servers the same ones: addresses, database name, TLS. */
function serversKey(db: DatabaseConfig, database: string): string {
  return JSON.stringify([db.servers ?? [{ host: db.host, port: db.port }], db.dbname ?? database, db.tls]);
}

const instances = new WeakMap<Context, Routing>();

/** The routing state of an instance (made at first use). */
export function routingOf(ctx: Context): Routing {
  let r = instances.get(ctx);
  if (r === undefined) {
    r = new Routing(ctx);
    instances.set(ctx, r);
  }
  return r;
}

export { NEED };
