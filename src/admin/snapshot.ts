// A plain-data picture of the running instance: pools, clients, servers,
// traffic per (database, user), counters and query shapes, in PgBouncer's
// vocabulary. The admin console and the metrics endpoint both render from a
// snapshot, never from live objects, so what they show is one consistent
// moment, and so snapshots of several worker processes can be merged (they
// are JSON-serializable: numbers, strings, arrays).

import type { ServerConn } from '../backend/server-conn.ts';
import type { PoolMode } from '../config/schema.ts';
import type { Context } from '../context.ts';
import { routingOf } from '../routing/router.ts';
import type { Histogram } from '../stats/histogram.ts';
import type { EventRow, SeriesData } from '../stats/history.ts';
import type { Totals } from '../stats/registry.ts';
import { addPoolRow } from './merge.ts';

/** One histogram as plain data: Prometheus-style cumulative counts per bound, plus count and sum. */
export interface HistData {
  /** Cumulative counts, one per bound of the histogram's bounds array (METRIC_BOUNDS_US). */
  buckets: number[];
  count: number;
  sum: number;
}

export interface PoolRow {
  database: string;
  user: string;
  cl_active: number;
  cl_waiting: number;
  cl_active_cancel_req: number;
  cl_waiting_cancel_req: number;
  sv_active: number;
  sv_active_cancel: number;
  sv_being_canceled: number;
  sv_idle: number;
  sv_used: number;
  sv_tested: number;
  sv_login: number;
  maxwait_us: number;
  pool_mode: PoolMode;
  /** Clients pinned to their server connection (transaction mode, docs/transaction-mode.md). */
  cl_pinned: number;
}

/** What SHOW CLIENTS and SHOW SERVERS have in common (PgBouncer's socket columns). */
interface ConnRow {
  id: number;
  user: string;
  database: string;
  state: string;
  addr: string;
  port: number;
  local_addr: string;
  local_port: number;
  connect_time: number;
  request_time: number;
  /** id of the connection on the other side (server for a client, client for a server); null when unlinked. */
  link: number | null;
  remote_pid: number;
  tls: string;
  application_name: string;
  prepared_statements: number;
  worker: number;
}

export interface ClientRow extends ConnRow {
  wait_us: number;
  pinned: string | null;
  /** The tenant chosen by the client's TLS server name; null: the top-level databases. */
  tenant: string | null;
  server_name: string | null;
  /** plain, terminated (Postern's TLS) or passthrough (the server's TLS, spliced). */
  tls_route: string;
}

export interface ServerRow extends ConnRow {
  close_needed: number;
}

/** One (database, user)'s traffic: the counters of stats/registry.ts's Totals, and its histograms. */
export interface TrafficRow extends Totals {
  database: string;
  user: string;
  queryHist: HistData;
  xactHist: HistData;
  waitHist: HistData;
}

export interface ShapeRow {
  fingerprint: string;
  query: string;
  database: string;
  user: string;
  application_name: string;
  calls: number;
  errors: number;
  rows: number;
  total_us: number;
  /** Log-scale buckets (SHAPE_BOUNDS_US), per-bucket (not cumulative) counts: mergeable. */
  hist: number[];
  min_us: number;
  max_us: number;
  first_seen: number;
  last_seen: number;
}

/** Per-second rates and per-query/transaction times over the last stats period (SHOW STATS avg_*), in Totals' fields. */
export type Averages = Totals;

export interface Snapshot {
  at: number;
  startedAt: number;
  pools: PoolRow[];
  clients: ClientRow[];
  servers: ServerRow[];
  traffic: TrafficRow[];
  /** Averages per database over the last complete stats period (SHOW STATS avg_* columns). */
  averages: Record<string, Averages>;
  counters: {
    logins: Record<string, number>;
    loginFailures: Record<string, number>;
    pins: Record<string, number>;
    errors: Record<string, number>;
    violations: Record<string, number>;
    tlsHandshakes: Record<string, number>;
    cancels: Record<string, number>;
    passthrough: Record<string, number>;
  };
  shapes: ShapeRow[];
  paused: string[];
  disabled: string[];
  memory: { rss: number; heapUsed: number };
  /** The servers of every database as the health checks see them (SHOW HOSTS). */
  hosts: HostRow[];
  /** The dashboard's per-second history (admin.history), oldest first. */
  series: SeriesData;
  /** Recent events (failed logins, throttling, protocol violations, server failures), oldest first. */
  events: EventRow[];
}

/** One server of a database (SHOW HOSTS, postern_server_* metrics). */
export interface HostRow {
  database: string;
  /** "host:port". */
  server: string;
  host: string;
  port: number;
  role: string;
  /** up, down, unchecked. */
  state: string;
  read_only: boolean;
  lag_bytes: number | null;
  lag_ms: number | null;
  failures: number;
  /** Open server connections of its pools: active, idle, other. */
  sv_active: number;
  sv_idle: number;
  sv_other: number;
  last_check: number;
  last_error: string | null;
}

export function histData(h: Histogram): HistData {
  return { buckets: h.cumulative(), count: h.count, sum: h.sum };
}

function record(m: ReadonlyMap<string, number>): Record<string, number> {
  const out: Record<string, number> = {};
  for (const [k, v] of m) out[k] = v;
  return out;
}

/** The instance as it is now (this process only). */
export function collect(ctx: Context, worker = 0): Snapshot {
  const now = Date.now();
  const perf = performance.now();
  const pools = new Map<string, PoolRow>();
  const poolsByKey = new Map<string, PoolRow>();
  const cfg = ctx.config.pool;
  for (const p of ctx.pools.all()) {
    const c = p.counts(now, cfg.server_check_query !== '' ? cfg.server_check_delay : -1);
    const row: PoolRow = {
      database: p.target.name,
      user: p.user,
      cl_active: 0,
      cl_waiting: c.cl_waiting,
      cl_active_cancel_req: 0,
      cl_waiting_cancel_req: 0,
      sv_active: c.sv_active,
      sv_active_cancel: 0,
      sv_being_canceled: c.sv_being_canceled,
      sv_idle: c.sv_idle,
      sv_used: c.sv_used,
      sv_tested: c.sv_tested,
      sv_login: c.sv_login,
      maxwait_us: c.maxwait_ms * 1000,
      pool_mode: p.mode,
      cl_pinned: 0,
    };
    const key = `${row.database}\u0000${row.user}`;
    const same = pools.get(key);
    // One row per (database, user), as in PgBouncer: the pools of a database's several servers add up (SHOW HOSTS has them apart).
    if (same !== undefined) addPoolRow(same, row);
    else pools.set(key, row);
    poolsByKey.set(p.key, same ?? row);
  }
  const clients: ClientRow[] = [];
  // Server connections of passthrough sessions belong to no pool: listed with their client.
  const relayed = new Map<ServerConn, number>();
  for (const s of ctx.sessions) {
    const i = s.info();
    if (i.state === 'closed') continue;
    const server = i.server;
    if (i.relayed && server !== null) relayed.set(server, i.id);
    clients.push({
      id: i.id,
      user: i.user,
      database: i.database,
      state: i.state,
      addr: i.addr,
      port: i.port,
      local_addr: i.localAddr,
      local_port: i.localPort,
      connect_time: i.connectTime,
      request_time: i.requestTime,
      wait_us: i.waitingSince > 0 ? Math.round((perf - i.waitingSince) * 1000) : 0,
      link: server?.id ?? null,
      remote_pid: i.pid ?? 0,
      tls: i.tls,
      application_name: i.applicationName,
      prepared_statements: i.preparedStatements,
      pinned: i.pinned,
      worker,
      tenant: i.tenant,
      server_name: i.serverName,
      tls_route: i.tlsRoute,
    });
    if (i.poolKey !== null && i.state !== 'login') {
      const row = poolsByKey.get(i.poolKey);
      if (row !== undefined) {
        // Waiting clients are counted by the pool's own queue.
        if (i.state !== 'waiting') row.cl_active++;
        if (i.pinned !== null) row.cl_pinned++;
      }
    }
  }
  const owners = new Map<number, ClientRow>();
  for (const c of clients) owners.set(c.id, c);
  const servers: ServerRow[] = [];
  const conns = [...ctx.pools.all().flatMap((p) => p.connections()), ...relayed.keys()];
  for (const conn of conns) {
    const sock = conn.socket;
    const owner = conn.owner ?? relayed.get(conn) ?? null;
    servers.push({
      id: conn.id,
      user: conn.user,
      database: conn.target.name,
      state: conn.state,
      addr: sock?.remoteAddress ?? conn.target.host,
      port: sock?.remotePort ?? conn.target.port,
      local_addr: sock?.localAddress ?? '',
      local_port: sock?.localPort ?? 0,
      connect_time: conn.createdAt,
      request_time: conn.lastUsedAt,
      close_needed: conn.closeNeeded ? 1 : 0,
      link: owner,
      remote_pid: conn.key?.pid ?? 0,
      tls: conn.tls === null ? '' : `${conn.tls.version}/${conn.tls.cipher}`,
      application_name: owner !== null ? (owners.get(owner)?.application_name ?? '') : '',
      prepared_statements: conn.statements?.size ?? 0,
      worker,
    });
  }
  const traffic: TrafficRow[] = ctx.stats.allTraffic().map((t) => ({
    database: t.database,
    user: t.user,
    xacts: t.xacts,
    queries: t.queries,
    received: t.received,
    sent: t.sent,
    xactUs: t.xactUs,
    queryUs: t.queryUs,
    waitUs: t.waitUs,
    assignments: t.assignments,
    parses: t.parses,
    serverParses: t.serverParses,
    binds: t.binds,
    queryHist: histData(t.queryHist),
    xactHist: histData(t.xactHist),
    waitHist: histData(t.waitHist),
  }));
  const averages: Snapshot['averages'] = {};
  for (const db of new Set(traffic.map((t) => t.database))) averages[db] = ctx.stats.averages(db);
  const shapes: ShapeRow[] = (ctx.stats.shapes?.entries() ?? []).map((e) => ({
    fingerprint: e.fingerprint,
    query: e.normalized,
    database: e.database,
    user: e.user,
    application_name: e.application,
    calls: e.calls,
    errors: e.errors,
    rows: e.rows,
    total_us: e.totalUs,
    hist: e.hist.counts(),
    min_us: e.hist.min,
    max_us: e.hist.max,
    first_seen: e.firstSeen,
    last_seen: e.lastSeen,
  }));
  const mem = process.memoryUsage();
  return {
    at: now,
    startedAt: ctx.startedAt,
    pools: [...pools.values()],
    clients,
    servers,
    traffic,
    averages,
    counters: {
      logins: record(ctx.stats.logins),
      loginFailures: record(ctx.stats.loginFailures),
      pins: record(ctx.stats.pins),
      errors: record(ctx.stats.errors),
      violations: record(ctx.stats.violations),
      tlsHandshakes: record(ctx.stats.tlsHandshakes),
      cancels: record(ctx.stats.cancels),
      passthrough: record(ctx.stats.passthrough),
    },
    shapes,
    paused: ctx.pools.pausedNames(),
    disabled: ctx.pools.disabledNames(),
    memory: { rss: mem.rss, heapUsed: mem.heapUsed },
    hosts: hostRows(ctx, now),
    series: ctx.stats.history.data(),
    events: ctx.stats.events.rows(worker),
  };
}

function hostRows(ctx: Context, now: number): HostRow[] {
  const routing = routingOf(ctx);
  const rows: HostRow[] = [];
  for (const set of routing.sets()) {
    for (const h of set.hosts) {
      let active = 0;
      let idle = 0;
      let other = 0;
      for (const p of routing.poolsOf(h)) {
        const c = p.counts(now);
        active += c.sv_active;
        idle += c.sv_idle + c.sv_used;
        other += c.sv_tested + c.sv_being_canceled + c.sv_login;
      }
      rows.push({
        database: set.database,
        server: h.addr,
        host: h.target.host,
        port: h.target.port,
        role: h.role,
        state: h.state,
        read_only: h.readOnly,
        lag_bytes: h.lagBytes,
        lag_ms: h.lagMs,
        failures: h.failures,
        sv_active: active,
        sv_idle: idle,
        sv_other: other,
        last_check: h.lastCheck,
        last_error: h.lastError,
      });
    }
  }
  return rows;
}

/** The instance's snapshot, as the composition root collects it (this process, or every worker merged). */
export function snapshotOf(ctx: Context): Promise<Snapshot> {
  return ctx.snapshot() as Promise<Snapshot>;
}
