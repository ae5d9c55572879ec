// What the admin console's commands do: PgBouncer's console commands
// (https://www.pgbouncer.org/usage.html#admin-console) with PgBouncer's
// column names and order, so pgbouncer_exporter and existing dashboards read
// Postern unchanged, plus Postern's own SHOW QUERIES and SHOW PINS. Columns
// PgBouncer does not have are appended after its own.
//
// SHOW output is rendered from a Snapshot (plain data) rather than from live
// objects; control commands act on the pools and sessions of the Context.
// Users in admin.stats_users may only SHOW (PgBouncer's stats_users).

import { getPath } from '../config/load.ts';
import { type Config, type DatabaseConfig, SETTINGS } from '../config/schema.ts';
import { formatDuration } from '../config/units.ts';
import type { Context } from '../context.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { scopedLabel } from '../routing/router.ts';
import { Histogram, SHAPE_BOUNDS_US } from '../stats/histogram.ts';
import { addTotals, sumByDatabase, type Totals, zeroTotals } from '../stats/registry.ts';
import { type AdminCommand, AdminError, parseAdminCommand } from './commands.ts';
import type { AdminResult } from './console.ts';
import { type ControlOutcome, runControl } from './control.ts';
import type { Cell, Column, ColumnType } from './encode.ts';
import { addAverages } from './merge.ts';
import { type PoolRow, type Snapshot, snapshotOf } from './snapshot.ts';

export interface AdminExecutor {
  execute(sql: string): Promise<AdminResult>;
  describe(sql: string): Column[] | null;
}

export interface AdminSessionInfo {
  /** admin.stats_users: SHOW only. */
  readOnly: boolean;
  /** The console session's own client id (PAUSE waits stop when it is gone). */
  clientId: number;
  user: string;
  /** False once the console session has closed. */
  alive?: () => boolean;
}

function cols(spec: string): Column[] {
  // "name:type name:type ..." with text as the default type.
  return spec
    .trim()
    .split(/\s+/)
    .map((w) => {
      const [name, type] = w.split(':') as [string, ColumnType | undefined];
      return { name, type: type ?? 'text' };
    });
}

const CONN_COLS =
  'type user database replication state addr port:int4 local_addr local_port:int4 connect_time request_time wait:int4 wait_us:int4 close_needed:int4 ptr link remote_pid:int4 tls application_name prepared_statements:int4 id:int8';
/**
 * SHOW STATS columns in PgBouncer's order: the total_ name, the avg_ name and
 * the counter of stats/registry.ts's Totals behind both.
 */
const STAT_COLUMNS: ReadonlyArray<readonly [string, string, keyof Totals]> = [
  ['server_assignment_count', 'server_assignment_count', 'assignments'],
  ['xact_count', 'xact_count', 'xacts'],
  ['query_count', 'query_count', 'queries'],
  ['received', 'recv', 'received'],
  ['sent', 'sent', 'sent'],
  ['xact_time', 'xact_time', 'xactUs'],
  ['query_time', 'query_time', 'queryUs'],
  ['wait_time', 'wait_time', 'waitUs'],
  ['client_parse_count', 'client_parse_count', 'parses'],
  ['server_parse_count', 'server_parse_count', 'serverParses'],
  ['bind_count', 'bind_count', 'binds'],
];
const STAT_NAMES = STAT_COLUMNS.map((c) => c[0]);
const AVG_NAMES = STAT_COLUMNS.map((c) => c[1]);

/** Result columns of every SHOW, by its lower-case name. */
const SHOW_COLUMNS: Readonly<Record<string, Column[]>> = {
  pools: cols(
    'database user cl_active:int4 cl_waiting:int4 cl_active_cancel_req:int4 cl_waiting_cancel_req:int4 sv_active:int4 sv_active_cancel:int4 sv_being_canceled:int4 sv_idle:int4 sv_used:int4 sv_tested:int4 sv_login:int4 maxwait:int4 maxwait_us:int4 pool_mode cl_pinned:int4',
  ),
  clients: cols(`${CONN_COLS} pinned worker:int4 tenant server_name tls_route`),
  servers: cols(`${CONN_COLS} worker:int4`),
  stats: cols(`database ${STAT_NAMES.map((n) => `total_${n}:int8`).join(' ')} ${AVG_NAMES.map((n) => `avg_${n}:int8`).join(' ')}`),
  stats_totals: cols(`database ${STAT_NAMES.map((n) => `${n}:int8`).join(' ')}`),
  stats_averages: cols(`database ${AVG_NAMES.map((n) => `${n}:int8`).join(' ')}`),
  totals: cols('name value:int8'),
  databases: cols(
    'name host port:int4 database force_user pool_size:int4 min_pool_size:int4 reserve_pool_size:int4 server_lifetime:int4 pool_mode load_balance_hosts max_connections:int4 current_connections:int4 max_client_connections:int4 current_client_connections:int4 paused:int4 disabled:int4',
  ),
  users: cols(
    'name pool_size:int4 reserve_pool_size:int4 pool_mode max_user_connections:int4 current_connections:int4 max_user_client_connections:int4 current_client_connections:int4',
  ),
  lists: cols('list items:int4'),
  config: cols('key value default changeable'),
  version: cols('version'),
  state: cols('key value'),
  queries: cols(
    'fingerprint query database user application_name calls:int8 errors:int8 rows:int8 total_time_us:int8 mean_time_us:int8 p50_us:int8 p95_us:int8 p99_us:int8 first_seen last_seen',
  ),
  pins: cols('feature pinned_total:int8 pinned_now:int4'),
  hosts: cols(
    'database host port:int4 role state read_only lag_bytes:int8 lag_ms:int8 failures:int4 sv_active:int4 sv_idle:int4 sv_other:int4 last_check last_error',
  ),
};

const HELP = [
  'SHOW HELP|CONFIG|DATABASES|POOLS|CLIENTS|SERVERS|USERS|LISTS|STATS|STATS_TOTALS|STATS_AVERAGES|TOTALS|STATE|VERSION',
  'SHOW QUERIES   query shapes by total time (Postern)',
  'SHOW PINS      transaction-mode pins by feature (Postern)',
  'SHOW HOSTS     each server of each database: role, health, lag (Postern)',
  'SET key = arg',
  'RELOAD',
  'PAUSE [<db>]',
  'RESUME [<db>]',
  'DISABLE <db>',
  'ENABLE <db>',
  'RECONNECT [<db>]',
  'KILL [<db>]',
  'KILL_CLIENT <id>',
  'WAIT_CLOSE [<db>]',
  'SHUTDOWN',
];

/** Time as PgBouncer prints it: "2026-11-30 21:35:34 UTC". */
function timestamp(ms: number): string {
  return `${new Date(ms).toISOString().slice(0, 19).replace('T', ' ')} UTC`;
}

function tagFor(cmd: AdminCommand): string {
  return cmd.verb === 'SHOW' ? 'SHOW' : cmd.verb;
}

function connRow(type: 'C' | 'S', r: Snapshot['clients'][number] | Snapshot['servers'][number], state: string, waitUs: number): Cell[] {
  const wait = Math.floor(waitUs / 1e6);
  return [
    type,
    r.user,
    r.database,
    'none',
    state,
    r.addr,
    r.port,
    r.local_addr,
    r.local_port,
    timestamp(r.connect_time),
    timestamp(r.request_time),
    wait,
    Math.round(waitUs - wait * 1e6),
    'close_needed' in r ? r.close_needed : 0,
    `${type === 'C' ? 'c' : 's'}${r.id}`,
    r.link === null ? null : `${type === 'C' ? 's' : 'c'}${r.link}`,
    r.remote_pid,
    r.tls,
    r.application_name,
    r.prepared_statements,
    r.id,
  ];
}

function clientState(c: Snapshot['clients'][number]): string {
  if (c.state === 'active') return c.link === null ? 'idle' : 'active';
  return c.state;
}

function serverState(s: Snapshot['servers'][number], checkDelay: number, now: number): string {
  // Postern's internal names, in PgBouncer's words (docs/observability.md).
  switch (s.state) {
    case 'login':
      return 'login';
    case 'idle':
      return checkDelay >= 0 && now - s.request_time > checkDelay ? 'used' : 'idle';
    case 'active':
      return 'active';
    default:
      return s.state;
  }
}

/** The SHOW STATS values of some Totals, in STAT_COLUMNS order (times in whole microseconds). */
function statValues(t: Totals | undefined): number[] {
  return STAT_COLUMNS.map(([, , k]) => (t === undefined ? 0 : Math.round(t[k])));
}

/** Configured settings, one row per key (wildcard sections are shown by SHOW DATABASES / USERS). */
function configRows(ctx: Context): Cell[][] {
  const rows: Cell[][] = [];
  for (const s of SETTINGS) {
    if (s.key.includes('*')) continue;
    const v = getPath(ctx.config, s.key.split('.'));
    rows.push([
      s.key,
      s.secret ? (v === undefined ? '' : '********') : show(s.kind, v),
      show(s.kind, s.default, true),
      s.reloadable ? 'yes' : 'no',
    ]);
  }
  return rows;
}

function show(kind: string, v: unknown, asWritten = false): string {
  if (v === undefined || v === null) return '';
  if (kind === 'duration' && typeof v === 'number' && !asWritten) return formatDuration(v);
  if (Array.isArray(v)) return v.map((x) => (x !== null && typeof x === 'object' ? JSON.stringify(x) : String(x))).join(',');
  return String(v);
}

/** A query shape's latency quantile, as SHOW QUERIES reports it (the dashboard shows the same). */
export function percentile(row: Snapshot['shapes'][number], q: number): number {
  const h = Histogram.restore(SHAPE_BOUNDS_US, row.hist, row.total_us, row.min_us, row.max_us);
  return Math.round(h.quantile(q));
}

/** Every database by the name the console uses: the top-level ones, and each tenant's as "tenant/name". */
function allDatabases(config: Config): Record<string, DatabaseConfig> {
  const out: Record<string, DatabaseConfig> = { ...config.databases };
  for (const [t, tenant] of Object.entries(config.tenants))
    for (const [name, db] of Object.entries(tenant.databases)) out[scopedLabel(t, name)] = db;
  return out;
}

/** The executor of one console session. */
export function adminExecutor(ctx: Context, who: AdminSessionInfo): AdminExecutor {
  const needAdmin = (cmd: AdminCommand): void => {
    if (who.readOnly && cmd.verb !== 'SHOW') throw new AdminError(SQLSTATE.InsufficientPrivilege, 'admin access needed');
  };

  const knownDb = (db: string | null): void => {
    if (db !== null && !(db in allDatabases(ctx.config))) throw new AdminError(SQLSTATE.InvalidCatalogName, `no such database: ${db}`);
  };

  const showRows = async (what: string): Promise<Cell[][]> => {
    const snap = await snapshotOf(ctx);
    const now = snap.at;
    const checkDelay = ctx.config.pool.server_check_query !== '' ? ctx.config.pool.server_check_delay : -1;
    switch (what) {
      case 'pools':
        return snap.pools
          .sort((a, b) => a.database.localeCompare(b.database) || a.user.localeCompare(b.user))
          .map((p: PoolRow) => [
            p.database,
            p.user,
            p.cl_active,
            p.cl_waiting,
            p.cl_active_cancel_req,
            p.cl_waiting_cancel_req,
            p.sv_active,
            p.sv_active_cancel,
            p.sv_being_canceled,
            p.sv_idle,
            p.sv_used,
            p.sv_tested,
            p.sv_login,
            Math.floor(p.maxwait_us / 1e6),
            p.maxwait_us % 1e6,
            p.pool_mode,
            p.cl_pinned,
          ]);
      case 'clients':
        return snap.clients
          .sort((a, b) => a.id - b.id)
          .map((c) => [...connRow('C', c, clientState(c), c.wait_us), c.pinned, c.worker, c.tenant, c.server_name, c.tls_route]);
      case 'servers':
        return snap.servers.sort((a, b) => a.id - b.id).map((s) => [...connRow('S', s, serverState(s, checkDelay, now), 0), s.worker]);
      case 'stats': {
        const rows: Cell[][] = [];
        for (const [db, t] of [...sumByDatabase(snap.traffic)].sort((a, b) => a[0].localeCompare(b[0]))) {
          rows.push([db, ...statValues(t), ...statValues(snap.averages[db])]);
        }
        return rows;
      }
      case 'stats_totals':
        return [...sumByDatabase(snap.traffic)].sort((a, b) => a[0].localeCompare(b[0])).map(([db, t]) => [db, ...statValues(t)]);
      case 'stats_averages':
        return [...sumByDatabase(snap.traffic).keys()].sort().map((db) => [db, ...statValues(snap.averages[db])]);
      case 'totals': {
        const all = zeroTotals();
        for (const t of sumByDatabase(snap.traffic).values()) addTotals(all, t);
        const avg = zeroTotals();
        for (const a of Object.values(snap.averages)) addAverages(avg, a);
        const totals = statValues(all);
        const avgs = statValues(avg);
        return [
          ...STAT_NAMES.map((n, i) => [`total_${n}`, totals[i] as number]),
          ...AVG_NAMES.map((n, i) => [`avg_${n}`, avgs[i] as number]),
        ];
      }
      case 'hosts':
        return snap.hosts
          .sort((a, b) => a.database.localeCompare(b.database) || a.server.localeCompare(b.server))
          .map((h) => [
            h.database,
            h.host,
            h.port,
            h.role,
            h.state,
            h.read_only ? 'yes' : 'no',
            h.lag_bytes,
            h.lag_ms,
            h.failures,
            h.sv_active,
            h.sv_idle,
            h.sv_other,
            h.last_check > 0 ? timestamp(h.last_check) : null,
            h.last_error,
          ]);
      case 'databases': {
        const pool = ctx.config.pool;
        const rows: Cell[][] = [];
        for (const [name, db] of Object.entries(allDatabases(ctx.config)).sort((a, b) => a[0].localeCompare(b[0]))) {
          const servers = snap.servers.filter((s) => s.database === name).length;
          const clientsN = snap.clients.filter((c) => c.database === name).length;
          // Several servers: PgBouncer's multi-host spelling (hosts comma-separated) and the balancing in load_balance_hosts.
          const many = db.servers !== undefined && db.servers.length > 0;
          rows.push([
            name,
            many ? (db.servers ?? []).map((h) => h.host).join(',') : db.host,
            many ? (db.servers?.[0]?.port ?? db.port) : db.port,
            db.dbname ?? name,
            db.server_user ?? null,
            db.pool_size ?? pool.default_pool_size,
            pool.min_pool_size,
            pool.reserve_pool_size,
            Math.round(pool.server_lifetime / 1000),
            db.pool_mode ?? pool.pool_mode,
            many && (db.servers?.length ?? 0) > 1 ? db.load_balance : null,
            pool.max_db_connections,
            servers,
            pool.max_client_conn,
            clientsN,
            snap.paused.includes(name) || snap.paused.includes('*') ? 1 : 0,
            snap.disabled.includes(name) ? 1 : 0,
          ]);
        }
        for (const name of ['pgbouncer', 'postern']) {
          const clientsN = snap.clients.filter((c) => c.database === name).length;
          rows.push([name, null, ctx.config.listen.port, name, 'pgbouncer', 2, 0, 0, 0, 'statement', null, 0, 0, 0, clientsN, 0, 0]);
        }
        return rows;
      }
      case 'users': {
        const names = new Set<string>([...Object.keys(ctx.config.users), ...snap.pools.map((p) => p.user)]);
        for (const c of snap.clients) if (c.user !== '') names.add(c.user);
        const pool = ctx.config.pool;
        return [...names]
          .sort()
          .map((u) => [
            u,
            null,
            null,
            ctx.config.users[u]?.pool_mode ?? null,
            pool.max_user_connections,
            snap.servers.filter((s) => s.user === u).length,
            0,
            snap.clients.filter((c) => c.user === u).length,
          ]);
      }
      case 'lists': {
        const users = new Set(snap.clients.map((c) => c.user));
        return [
          ['databases', Object.keys(ctx.config.databases).length],
          ['users', users.size],
          ['pools', snap.pools.length],
          ['free_clients', 0],
          ['used_clients', snap.clients.length],
          ['login_clients', snap.clients.filter((c) => c.state === 'login').length],
          ['free_servers', 0],
          ['used_servers', snap.servers.length],
          ['dns_names', 0],
          ['dns_zones', 0],
          ['dns_queries', 0],
          ['dns_pending', 0],
        ];
      }
      case 'config':
        return configRows(ctx);
      case 'version':
        return [[`Postern ${ctx.version}`]];
      case 'state':
        return [
          ['active', snap.paused.length === 0 ? 'yes' : 'no'],
          ['paused', snap.paused.length > 0 ? 'yes' : 'no'],
          ['suspended', 'no'],
        ];
      case 'queries':
        return snap.shapes
          .sort((a, b) => b.total_us - a.total_us)
          .map((s) => [
            s.fingerprint,
            s.query,
            s.database,
            s.user,
            s.application_name,
            s.calls,
            s.errors,
            s.rows,
            Math.round(s.total_us),
            s.calls > 0 ? Math.round(s.total_us / s.calls) : 0,
            percentile(s, 0.5),
            percentile(s, 0.95),
            percentile(s, 0.99),
            timestamp(s.first_seen),
            timestamp(s.last_seen),
          ]);
      case 'pins': {
        const now2 = new Map<string, number>();
        for (const c of snap.clients) if (c.pinned !== null) now2.set(c.pinned, (now2.get(c.pinned) ?? 0) + 1);
        const features = new Set([...Object.keys(snap.counters.pins), ...now2.keys()]);
        return [...features].sort().map((f) => [f, snap.counters.pins[f] ?? 0, now2.get(f) ?? 0]);
      }
      default:
        throw new AdminError(SQLSTATE.SyntaxError, `invalid command 'SHOW ${what}', use SHOW HELP;`);
    }
  };

  const execute = async (sql: string): Promise<AdminResult> => {
    const cmd = parseAdminCommand(sql);
    needAdmin(cmd);
    const tag = tagFor(cmd);
    switch (cmd.verb) {
      case 'SHOW': {
        if (cmd.what === 'help') return { columns: null, rows: [], tag, notices: [`Console usage\n  ${HELP.join('\n  ')}`] };
        const columns = SHOW_COLUMNS[cmd.what];
        if (columns === undefined) throw new AdminError(SQLSTATE.SyntaxError, `invalid command 'SHOW ${cmd.what}', use SHOW HELP;`);
        return { columns, rows: await showRows(cmd.what), tag };
      }
      case 'SUSPEND':
        throw new AdminError(
          SQLSTATE.FeatureNotSupported,
          'SUSPEND is not supported',
          'PgBouncer uses SUSPEND for its online restart; restart Postern with SIGTERM (it drains sessions) instead.',
        );
      default: {
        if ('db' in cmd) knownDb(cmd.db);
        const alive = who.alive ?? (() => true);
        // Every worker process runs the command on its own pools and sessions.
        const outcomes =
          ctx.peers !== null
            ? ((await ctx.peers.everywhere(cmd, who.user, alive)) as ControlOutcome[])
            : [await runControl(ctx, cmd, who.user, alive)];
        if (cmd.verb === 'KILL_CLIENT' && !outcomes.some((o) => o.found)) {
          throw new AdminError(SQLSTATE.UndefinedObject, `client ${cmd.id} not found`);
        }
        const problems = outcomes.flatMap((o) => o.problems);
        if (problems.length > 0) {
          const text = [...new Set(problems.map((p) => `${p.path || '(file)'}: ${p.message}`))];
          if (cmd.verb === 'RELOAD')
            throw new AdminError(SQLSTATE.ConfigFileError, 'reload refused: the configuration is invalid', text.join('\n'));
          throw new AdminError(SQLSTATE.InvalidParameterValue, text.join('; '));
        }
        const unapplied = [...new Set(outcomes.flatMap((o) => o.unapplied ?? []))];
        if (unapplied.length > 0) {
          const notice = `changed settings that need a restart keep their running values: ${unapplied.join(', ')}`;
          return { columns: null, rows: [], tag, notices: [notice] };
        }
        return { columns: null, rows: [], tag };
      }
    }
  };
  const describe = (sql: string): Column[] | null => {
    const cmd = parseAdminCommand(sql);
    if (cmd.verb !== 'SHOW' || cmd.what === 'help') return null;
    const columns = SHOW_COLUMNS[cmd.what];
    if (columns === undefined) throw new AdminError(SQLSTATE.SyntaxError, `invalid command 'SHOW ${cmd.what}', use SHOW HELP;`);
    return columns;
  };

  return { execute, describe };
}

/** Column names of a SHOW command (docs and tests). */
export function showColumns(what: string): readonly Column[] | undefined {
  return SHOW_COLUMNS[what];
}

/** Every SHOW command's name, lower case (docs test). */
export const SHOW_NAMES: readonly string[] = ['help', ...Object.keys(SHOW_COLUMNS)];
