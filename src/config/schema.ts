// The ONE table of settings. Each row gives a key path, its type, default,
// whether a reload may change it, whether it is a secret, and its doc. The
// table drives validation (zod, strict: unknown keys are errors), defaults,
// docs/configuration.md, SHOW CONFIG, reload decisions and log redaction.
// `*` in a key path stands for a name chosen by the operator (a database).

import { z } from 'zod';
import { duration, parseDuration, parseSize, size } from './units.ts';

export const TLS_CLIENT_MODES = ['disable', 'allow', 'require', 'verify-ca', 'verify-full'] as const;
export const TLS_SERVER_MODES = ['disable', 'prefer', 'require', 'verify-ca', 'verify-full'] as const;
export const POOL_MODES = ['session', 'transaction', 'statement'] as const;
export const TARGET_SESSION_ATTRS = ['any', 'read-write', 'read-only', 'primary', 'standby', 'prefer-standby'] as const;
export const LOAD_BALANCE = ['round-robin', 'least-connections', 'random'] as const;
export const LOG_LEVELS = ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'] as const;

export type SettingKind = 'string' | 'path' | 'int' | 'bool' | 'enum' | 'duration' | 'size' | 'list';

export interface Setting {
  key: string;
  kind: SettingKind;
  schema: z.ZodType;
  /** Default as written in a config file; undefined = optional, no default. */
  default?: unknown;
  /** May change on reload without restart. */
  reloadable: boolean;
  /** Never printed: redacted in logs, SHOW CONFIG and errors. */
  secret?: boolean;
  doc: string;
  /** A copy of a databases.* row under tenants.*.databases.* (documented once, as `tenants.*.databases`). */
  mirror?: boolean;
  /** Documents keys that other rows define (not a setting of its own). */
  docOnly?: boolean;
}

const port = z.number().int().min(0).max(65535);
/** A list of names: a YAML list, or one comma-separated string as in PgBouncer. */
const nameList = z
  .union([z.array(z.string().min(1)), z.string()])
  .transform((v) => (Array.isArray(v) ? v : v.split(',')).map((x) => x.trim()).filter((x) => x !== ''));
const path = z.string().min(1);

/** One server of a database: `{ host, port }` or "host:port". */
const serverEntry = z.union([
  z.strictObject({ host: z.string().min(1), port: port.prefault(5432) }),
  z
    .string()
    .regex(/^(\[[^\]]+\]|[^:\s]+)(:\d{1,5})?$/, 'use host or host:port, e.g. 10.0.0.5:5432')
    .transform((v) => {
      const m = /^(\[[^\]]+\]|[^:]+)(?::(\d+))?$/.exec(v) as RegExpExecArray;
      const host = (m[1] as string).replace(/^\[(.*)\]$/, '$1');
      return { host, port: m[2] === undefined ? 5432 : Number(m[2]) };
    })
    .pipe(z.object({ host: z.string(), port })),
]);
const serverList = z.array(serverEntry).min(1, 'list at least one server');

/** max_replica_lag: bytes of WAL ("16MB") or a duration ("5s"). */
const replicaLag = z.union([z.number(), z.string()]).transform((v, ctx): ReplicaLag => {
  const text = String(v).trim();
  const unit = (/[a-z]+$/i.exec(text)?.[0] ?? '').toLowerCase();
  if (['ms', 's', 'min', 'm', 'h', 'd'].includes(unit)) {
    const ms = parseDuration(text);
    if (ms !== undefined) return { ms };
  } else {
    const bytes = parseSize(typeof v === 'number' ? v : text);
    if (bytes !== undefined) return { bytes };
  }
  ctx.addIssue({ code: 'custom', message: `invalid max_replica_lag ${JSON.stringify(v)} (a size like 16MB or a duration like 5s)` });
  return z.NEVER;
});

/** A TLS server name pattern: an exact host name or `*.suffix`. */
const serverNamePattern = z
  .string()
  .regex(/^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$/, 'a host name, or *.suffix')
  .transform((v) => v.toLowerCase());
const serverNames = z
  .union([z.array(z.string()), z.string()])
  .transform((v) => (Array.isArray(v) ? v : v.split(',')).map((x) => x.trim()).filter((x) => x !== ''))
  .pipe(z.array(serverNamePattern));

/** One entry of tls.certificates / tenants.*.certificates. */
const certificateEntry = z.strictObject({ server_names: serverNames.optional(), cert: path, key: path });
const certificateList = z.array(certificateEntry);
function row(key: string, kind: SettingKind, schema: z.ZodType, def: unknown, reloadable: boolean, doc: string): Setting {
  return def === undefined ? { key, kind, schema, reloadable, doc } : { key, kind, schema, default: def, reloadable, doc };
}

function secret(key: string, doc: string): Setting {
  return { key, kind: 'string', schema: z.string(), reloadable: true, secret: true, doc };
}

const DEFAULT_AUTH_QUERY = 'SELECT username, secret, valid_until FROM postern.user_lookup($1)';

export const SETTINGS: readonly Setting[] = [
  row('listen.host', 'string', z.string().min(1), '127.0.0.1', false, 'Address the client listener binds to (`0.0.0.0` or `::` for all).'),
  row('listen.port', 'int', port, 6432, false, 'Port of the client listener. One port serves plaintext, SSLRequest and direct TLS.'),

  row(
    'tls.cert',
    'path',
    path,
    undefined,
    true,
    'Server certificate (PEM) shown to clients that send no TLS server name (SNI) or one no entry of `tls.certificates` (or of their tenant) matches; may hold a chain (leaf first, then intermediates). Reloaded (with every certificate, key and CA file) on SIGHUP and RELOAD: new handshakes use the new files, open sessions keep theirs; files that do not load, or a key that does not match its certificate, are refused and the old ones stay.',
  ),
  row('tls.key', 'path', path, undefined, true, 'Private key (PEM) of `tls.cert`.'),
  row(
    'tls.ca',
    'path',
    path,
    undefined,
    true,
    'CA bundle (PEM) that client certificates must chain to; required for `verify-ca` and `verify-full`.',
  ),
  row(
    'tls.mode',
    'enum',
    z.enum(TLS_CLIENT_MODES),
    'allow',
    false,
    '`disable`: answer `N` to SSLRequest, refuse direct TLS. `allow`: TLS when the client asks, plaintext otherwise. `require`: plaintext startup refused (FATAL 28000, as Postgres answers a missing `hostssl` line). `verify-ca` / `verify-full`: TLS and a client certificate signed by `tls.ca` are required (`verify-full` additionally requires the certificate CN to equal the user name).',
  ),
  row(
    'tls.direct_without_alpn',
    'bool',
    z.boolean(),
    false,
    false,
    'Accept TLS-first (direct) connections that send no ALPN. Direct TLS with ALPN `postgresql` is always accepted; a wrong ALPN is always refused.',
  ),
  row(
    'tls.certificates',
    'list',
    certificateList,
    [],
    true,
    'More certificates, picked by the TLS server name (SNI) the client sends: a list of `{ server_names, cert, key }`; `server_names` holds exact names and `*.suffix` wildcards (one label). An exact name wins over a wildcard, a wildcard over the default `tls.cert`. SCRAM channel binding uses the certificate actually presented. See docs/tls.md.',
  ),
  row(
    'tls.watch',
    'bool',
    z.boolean(),
    false,
    true,
    'Also reload the TLS files (client side, server side and admin) when they change on disk (checked every second, symlink swaps included), as SIGHUP would.',
  ),
  row('tls.min_version', 'enum', z.enum(['TLSv1.2', 'TLSv1.3']), 'TLSv1.2', false, 'Lowest TLS version accepted from clients.'),
  row(
    'tls.ciphers',
    'string',
    z.string().min(1),
    undefined,
    false,
    'OpenSSL cipher list for TLS 1.2 (TLS 1.3 suites are not affected). Default: Node.js defaults.',
  ),

  row(
    'auth.hba_file',
    'path',
    path,
    undefined,
    true,
    "Client authentication rules in pg_hba.conf syntax (first matching line wins). Methods: `trust`, `reject`, `md5`, `password`, `scram-sha-256`, `scram-sha-256-plus` (channel binding required), `cert`, `passthrough` (relay the server's own exchange). Unset: every client uses `passthrough`. Reloaded on SIGHUP.",
  ),
  row(
    'auth.ident_file',
    'path',
    path,
    undefined,
    true,
    'User name maps in pg_ident.conf syntax, for `map=` on `cert` lines. Reloaded on SIGHUP.',
  ),
  row(
    'auth.users_file',
    'path',
    path,
    undefined,
    true,
    'Client secrets, one `"user" "secret"` per line (PgBouncer userlist format): SCRAM-SHA-256 verifiers (`postern passwd` makes one) or MD5 hashes. Reloaded on SIGHUP; open sessions are untouched.',
  ),
  row(
    'auth.query',
    'string',
    z.string().min(1),
    DEFAULT_AUTH_QUERY,
    true,
    "Query that looks up a user's secret on the server when the users file has none: `$1` is the user name; columns: user name, secret (`rolpassword` format), and optionally the expiry (`rolvaliduntil`). Used when `auth.query_user` is set.",
  ),
  row(
    'auth.query_user',
    'string',
    z.string().min(1),
    undefined,
    true,
    'Server role Postern logs in as to run `auth.query`. Unset: no lookup.',
  ),
  secret('auth.query_password', 'Password of `auth.query_user` (or use a certificate: `databases.*.tls.cert`).'),
  row(
    'auth.query_database',
    'string',
    z.string().min(1),
    undefined,
    true,
    'Database (a key of `databases`) the lookup runs in. Default: the database the client asked for.',
  ),
  row(
    'auth.cache_ttl',
    'duration',
    duration,
    '60s',
    true,
    'How long a looked-up secret is reused. A failed login drops the cached entry: after a rotation the first login with the new password may fail once, the next one fetches the new secret (`0s`: look up on every login).',
  ),
  row('auth.throttle_window', 'duration', duration, '60s', true, 'Window for counting failed logins per client address.'),
  row(
    'auth.throttle_max_failures',
    'int',
    z.number().int().min(0),
    10,
    true,
    'Failed logins per address within the window before further logins are delayed and refused (0: never throttle).',
  ),
  row('auth.throttle_delay', 'duration', duration, '2s', true, 'How long a throttled login is held before it is refused.'),

  row('databases.*.host', 'string', z.string().min(1), '127.0.0.1', true, 'Host of the PostgreSQL server for this database.'),
  row('databases.*.port', 'int', port, 5432, true, 'Port of the PostgreSQL server.'),
  row(
    'databases.*.dbname',
    'string',
    z.string().min(1),
    undefined,
    true,
    'Database name on the server. Default: the name clients ask for.',
  ),
  row(
    'databases.*.tls.mode',
    'enum',
    z.enum(TLS_SERVER_MODES),
    'prefer',
    true,
    'TLS to the server, as libpq `sslmode`: `disable`, `prefer` (TLS if the server offers it, no certificate check), `require` (TLS, no certificate check), `verify-ca` (chain checked against `ca`), `verify-full` (chain and host name checked).',
  ),
  row(
    'databases.*.tls.ca',
    'path',
    path,
    undefined,
    true,
    'CA bundle (PEM) the server certificate must chain to (`verify-ca`, `verify-full`).',
  ),
  row('databases.*.tls.cert', 'path', path, undefined, true, 'Client certificate (PEM) Postern presents to the server (mutual TLS).'),
  row('databases.*.tls.key', 'path', path, undefined, true, 'Private key (PEM) of `databases.*.tls.cert`.'),
  row(
    'databases.*.tls.server_name',
    'string',
    z.string().min(1),
    undefined,
    true,
    'Name sent as SNI and checked by `verify-full`. Default: `host`.',
  ),
  row(
    'databases.*.tls.direct',
    'bool',
    z.boolean(),
    false,
    true,
    'Open TLS at once (PostgreSQL 17 direct TLS, ALPN `postgresql`) instead of sending an SSLRequest first: one round trip less per server connection. The server must accept direct TLS (PostgreSQL 17+, or another Postern); needs `tls.mode` `require`, `verify-ca` or `verify-full`.',
  ),

  row(
    'databases.*.servers',
    'list',
    serverList,
    undefined,
    true,
    'Several servers for this database (a primary and its standbys): a list of `{ host, port }` or `"host:port"` strings. Each server\'s role is found by the health checks (`pg_is_in_recovery()`), never configured. Given, it replaces `host` and `port`; `tls.*` applies to every one of them (`tls.server_name` defaults to each server\'s own host). See docs/routing.md.',
  ),
  row(
    'databases.*.target_session_attrs',
    'enum',
    z.enum(TARGET_SESSION_ATTRS),
    'any',
    true,
    "Which servers this database's clients get, with libpq's names and meanings: `any`, `read-write` (a primary whose `transaction_read_only` is off), `read-only` (a standby, or a server whose sessions are read-only by default), `primary`, `standby`, `prefer-standby` (a standby when one is usable, else any server).",
  ),
  row(
    'databases.*.load_balance',
    'enum',
    z.enum(LOAD_BALANCE),
    'round-robin',
    true,
    'How a server is chosen among the usable ones for each new server connection need (each transaction in transaction mode, each session in session mode): `round-robin`, `least-connections` (fewest open connections of the pool), `random`.',
  ),
  row(
    'databases.*.max_replica_lag',
    'string',
    replicaLag,
    undefined,
    true,
    "A standby that lags the primary by more than this is not used for reads until it catches up: a size of WAL (`16MB`, bytes against the primary's current WAL position) or a duration (`5s`, since the last replayed transaction while WAL is still to replay). Unset: lag is shown but not acted on.",
  ),
  row(
    'databases.*.read_write_split',
    'bool',
    z.boolean(),
    false,
    true,
    'Transaction mode: each transaction that Postern can prove only reads (a plain `SELECT` without locking clauses, data-modifying CTEs or calls of functions outside `routing.read_only_functions`, `SHOW`, a `BEGIN READ ONLY` block) goes to a standby, everything else to the primary. Session mode and pinned sessions follow `target_session_attrs` only.',
  ),
  row(
    'databases.*.read_your_writes',
    'bool',
    z.boolean(),
    false,
    true,
    "With `read_write_split`: after a client's write transaction ends, its reads go only to standbys that a health check has seen replay past the primary's WAL position read after that write; until then they go to the primary.",
  ),

  row('databases.*.pool_mode', 'enum', z.enum(POOL_MODES), undefined, true, 'Pool mode for this database (overrides `pool.pool_mode`).'),
  row(
    'databases.*.pool_size',
    'int',
    z.number().int().min(1),
    undefined,
    true,
    'Server connections per (database, server user) pool (overrides `pool.default_pool_size`).',
  ),
  row(
    'databases.*.server_user',
    'string',
    z.string().min(1),
    undefined,
    true,
    "Log into the server as this role for every client of this database (PgBouncer's `user=`). Default: the client's user (or `users.*.server_user`).",
  ),
  secret('databases.*.server_password', "Password for `server_user` (or for the client's own user when `server_user` is unset)."),

  row(
    'users.*.pool_mode',
    'enum',
    z.enum(POOL_MODES),
    undefined,
    true,
    'Pool mode for this client user (overrides the database and `pool.pool_mode`).',
  ),
  row(
    'users.*.server_user',
    'string',
    z.string().min(1),
    undefined,
    true,
    'User mapping: a client logged in as this user reaches the server as `server_user`.',
  ),
  secret('users.*.server_password', 'Password Postern uses for `users.*.server_user`.'),

  row(
    'pool.pool_mode',
    'enum',
    z.enum(POOL_MODES),
    'session',
    true,
    '`session`: a client keeps one server connection for its whole session. `transaction`: a server connection is lent per transaction and returned at ReadyForQuery (idle). `statement`: per statement; multi-statement transactions are refused. Pooling applies to clients Postern authenticates (hba methods other than `passthrough`).',
  ),
  row('pool.default_pool_size', 'int', z.number().int().min(1), 20, true, 'Server connections per (database, server user) pool.'),
  row(
    'pool.min_pool_size',
    'int',
    z.number().int().min(0),
    0,
    true,
    'Keep at least this many server connections open per pool (once Postern holds credentials for it).',
  ),
  row(
    'pool.reserve_pool_size',
    'int',
    z.number().int().min(0),
    0,
    true,
    'Extra connections a pool may open when a client has waited `reserve_pool_timeout`.',
  ),
  row('pool.reserve_pool_timeout', 'duration', duration, '5s', true, 'Wait after which the reserve pool may be used.'),
  row(
    'pool.max_client_conn',
    'int',
    z.number().int().min(1),
    10000,
    true,
    'Most client connections Postern accepts; beyond, new clients get FATAL 53300.',
  ),
  row(
    'pool.max_db_connections',
    'int',
    z.number().int().min(0),
    0,
    true,
    'Most server connections per database, all pools together (0: no limit).',
  ),
  row(
    'pool.max_user_connections',
    'int',
    z.number().int().min(0),
    0,
    true,
    'Most server connections per server user, all pools together (0: no limit).',
  ),
  row('pool.server_lifetime', 'duration', duration, '3600s', true, 'An idle server connection older than this is closed.'),
  row('pool.server_idle_timeout', 'duration', duration, '600s', true, 'A server connection idle this long is closed.'),
  row(
    'pool.query_wait_timeout',
    'duration',
    duration,
    '120s',
    true,
    'A client waiting this long for a server connection gets an error and is disconnected (0: wait forever).',
  ),
  row('pool.client_idle_timeout', 'duration', duration, '0s', true, 'Disconnect clients idle (no transaction) this long (0: never).'),
  row(
    'pool.idle_transaction_timeout',
    'duration',
    duration,
    '0s',
    true,
    'Disconnect clients that stay idle inside a transaction this long (0: never).',
  ),
  row(
    'pool.max_prepared_statements',
    'int',
    z.number().int().min(0),
    200,
    true,
    'Transaction mode: protocol-level named prepared statements are tracked and re-prepared on whichever server a client lands on; this caps how many each server connection keeps (least recently used closed first). 0 turns the feature off.',
  ),
  row(
    'pool.discard_sequences',
    'enum',
    z.enum(['auto', 'always', 'off']),
    'auto',
    true,
    "Transaction and statement mode: run `DISCARD SEQUENCES` before a server connection passes to another client, so `currval()`/`lastval()` never show one client another's value. `auto`: when a statement that may have used a sequence ran on it (a write, procedural code, or a call of a function that is not a known built-in); `always`: at every change of client (a statement's worth of server time per transaction); `off`: never (PgBouncer's behaviour).",
  ),
  row(
    'pool.server_reset_query',
    'string',
    z.string(),
    'DISCARD ALL',
    true,
    'Run when a session-mode client returns its server connection (empty: none).',
  ),
  row(
    'pool.server_check_query',
    'string',
    z.string(),
    'select 1',
    true,
    'Run on a server connection idle longer than `server_check_delay` before it is lent again (empty: no check).',
  ),
  row('pool.server_check_delay', 'duration', duration, '30s', true, 'Idle time after which a server connection is checked before use.'),

  row(
    'limits.max_message_size',
    'size',
    size,
    1073741824,
    true,
    'Largest message accepted from a client or a server, in bytes (units allowed: `64MB`). Startup packets are always capped at 10,000 bytes, as in Postgres.',
  ),
  row(
    'limits.client_login_timeout',
    'duration',
    duration,
    '15s',
    true,
    'A client that has not finished negotiation, TLS and authentication within this time is disconnected.',
  ),
  row('limits.server_connect_timeout', 'duration', duration, '15s', true, 'Time allowed to connect to a server, including TLS.'),
  row('limits.shutdown_timeout', 'duration', duration, '30s', false, 'On SIGTERM, how long open sessions may run before they are closed.'),

  row(
    'workers',
    'int',
    z.union([z.number().int().min(1).max(64), z.literal('auto')]),
    1,
    false,
    'Worker processes serving the one client port (`auto`: one per CPU core). Connections are handed out round-robin; global limits (`pool.max_client_conn`, pool sizes, `max_db_connections`, `max_user_connections`) are split evenly over the workers, so their sum is the configured value; cancel requests reach the worker that owns the session; the admin console and `/metrics` show all workers together.',
  ),

  row(
    'cluster.instance_id',
    'int',
    z.number().int().min(0).max(255),
    undefined,
    false,
    "This instance's number among several Postern instances behind one load balancer (0 to 255, unique). Every cancel key this instance hands out carries it in the top 8 bits of the pid, so a CancelRequest that reaches another instance is forwarded straight to this one (`cluster.peers`). Unset: pids are random over 31 bits and a cancel for a session this instance does not hold goes to every `cluster.peers_dns` address.",
  ),
  row(
    'cluster.peers',
    'list',
    z.array(z.strictObject({ id: z.number().int().min(0).max(255), host: z.string().min(1), port: port.prefault(6432) })),
    [],
    true,
    "The other instances, `[{ id, host, port }]`: their `cluster.instance_id` and the address of their client listener, reached directly (not through the load balancer). An entry with this instance's own id is skipped, so every instance may share one list. A cancel request for a key of instance `id` is forwarded to that entry, signed with `cluster.secret`.",
  ),
  row(
    'cluster.peers_dns',
    'string',
    z.string().regex(/^(\[[^\]]+\]|[^:\s]+):\d{1,5}$/, 'use name:port, e.g. postern-peers.db.svc.cluster.local:6432'),
    undefined,
    true,
    'A DNS name resolving to every instance (a Kubernetes headless Service), with the client port: `name:port`. A cancel request for a session no entry of `cluster.peers` names is forwarded to every address it resolves to (resolved at each forward); the instance that holds the session acts on it, the others drop it.',
  ),
  secret(
    'cluster.secret',
    'Shared by every instance: forwarded cancel requests carry an HMAC-SHA256 of their contents and the time under this key, and are refused without it, so nobody but a peer can send one. At least 16 characters. Required with `cluster.peers` or `cluster.peers_dns` (here or in `cluster.secret_file`).',
  ),
  row(
    'cluster.secret_file',
    'path',
    path,
    undefined,
    true,
    'A file holding `cluster.secret` (surrounding white space ignored), e.g. mounted from a Kubernetes Secret; read again on every reload. Not with `cluster.secret`.',
  ),

  row(
    'log.level',
    'enum',
    z.enum(LOG_LEVELS),
    'info',
    true,
    'Log level. Connection onboarding is logged at `debug`; steady state is quiet.',
  ),
  row(
    'log.queries',
    'bool',
    z.boolean(),
    false,
    true,
    'Log every executed statement at `info` (PgBouncer-style `log_queries`): normalized text (constants replaced by `$n`), fingerprint, duration, rows and SQLSTATE. Literal values are never logged.',
  ),

  row(
    'admin.listen',
    'string',
    z.string().regex(/^(\[[^\]]+\]|[^:]+):\d{1,5}$/, 'use host:port, e.g. 127.0.0.1:9187'),
    undefined,
    false,
    'Address (`host:port`) of the admin HTTP listener: `/metrics` (Prometheus), `/healthz` (process up), `/readyz` (listening and a configured server reachable). Unset: no HTTP listener.',
  ),
  row(
    'admin.users',
    'list',
    nameList,
    [],
    true,
    'Users allowed into the admin console (virtual database `postern`, alias `pgbouncer`), like PgBouncer `admin_users`. They authenticate per the hba rules for that database name (SCRAM or MD5 with the users file when no hba file is set).',
  ),
  row(
    'admin.stats_users',
    'list',
    nameList,
    [],
    true,
    'Users allowed into the admin console for `SHOW` commands only, like PgBouncer `stats_users`.',
  ),
  row(
    'admin.tls.cert',
    'path',
    path,
    undefined,
    true,
    'Certificate (PEM, chain allowed) of the admin HTTP listener: with `admin.tls.key` set, `admin.listen` serves HTTPS (dashboard, `/metrics`, `/healthz`, `/readyz`). Unset: plain HTTP, for a loopback or otherwise private address. The files are read again on reload (and by `tls.watch`); turning HTTPS on or off needs a restart.',
  ),
  row('admin.tls.key', 'path', path, undefined, true, 'Private key (PEM) of `admin.tls.cert`.'),
  row(
    'admin.dashboard',
    'bool',
    z.boolean(),
    true,
    false,
    'Serve the live web dashboard at `/` on `admin.listen` (docs/dashboard.md). Users of `admin.users` or `admin.stats_users` log in with HTTP basic auth against the same secrets clients authenticate with; only `admin.users` get actions.',
  ),
  row(
    'admin.history',
    'duration',
    duration,
    '15min',
    true,
    'How much per-second history the dashboard keeps in memory (ring buffers, one point a second per series, in every worker process).',
  ),
  row(
    'admin.max_streams',
    'int',
    z.number().int().min(1).max(1000),
    16,
    true,
    'Live dashboard connections (Server-Sent Events streams) served at once; one more is refused with 503.',
  ),
  row(
    'health.check_interval',
    'duration',
    duration,
    '2s',
    true,
    'How often each server of a database with several servers (or with `target_session_attrs` other than `any`, or `read_write_split`) is checked: connect, role (`pg_is_in_recovery()`), WAL position and replay lag.',
  ),
  row(
    'health.failure_threshold',
    'int',
    z.number().int().min(1),
    3,
    true,
    'Failed checks in a row (a failed connect of a pool counts as one) before a server is marked down: its idle connections are closed and no client is sent to it until a check passes again.',
  ),
  row('health.timeout', 'duration', duration, '3s', true, 'A check (connect and query) that takes longer than this has failed.'),
  row(
    'health.user',
    'string',
    z.string().min(1),
    undefined,
    true,
    "Role the health checks log in as. Default: the database's `server_user` when `server_password` is set too, else the server user of the newest client login of that database (with the credentials its pool uses).",
  ),
  secret('health.password', 'Password of `health.user`.'),
  row(
    'routing.read_only_functions',
    'list',
    nameList,
    [],
    true,
    'More functions `read_write_split` may send to a standby, besides the built-in list of read-only ones (docs/routing.md); names as written in queries, lower case, optionally schema-qualified.',
  ),

  row(
    'stats.queries',
    'bool',
    z.boolean(),
    true,
    true,
    'Per-query-shape statistics (`SHOW QUERIES`): each statement is normalized and fingerprinted by the real PostgreSQL parser (libpg-query), once per distinct shape, after its bytes were forwarded.',
  ),
  row(
    'stats.max_queries',
    'int',
    z.number().int().min(1),
    5000,
    true,
    'Most query shapes tracked, each per (fingerprint, database, user, application_name); beyond it the least used are evicted.',
  ),
  row(
    'tenants.*.server_names',
    'list',
    serverNames,
    undefined,
    true,
    'The TLS server names (SNI) of this tenant: exact host names and `*.suffix` wildcards (one label). A client whose SNI matches (an exact name before any wildcard, the longest wildcard first) is served from this tenant only; a client with no SNI or one that matches no tenant is served from the top-level `databases`. See docs/tls.md.',
  ),
  {
    ...row(
      'tenants.*.databases',
      'list',
      z.unknown(),
      undefined,
      true,
      "This tenant's databases: the same keys as the top-level `databases.*` (e.g. `tenants.acme.databases.app.host`). Two tenants may both have a database `app`; their pools, servers and credentials never mix.",
    ),
    docOnly: true,
  },
  row(
    'tenants.*.certificates',
    'list',
    certificateList,
    [],
    true,
    "Certificates of this tenant, as `tls.certificates`; `server_names` defaults to the tenant's. Picked by SNI together with `tls.certificates` (exact names first, then wildcards, then `tls.cert`).",
  ),
  row(
    'tenants.*.passthrough.host',
    'string',
    z.string().min(1),
    undefined,
    true,
    "Pass this tenant's TLS through, unopened, to this server: Postern reads only the server name of the ClientHello and splices the client to the server (after an SSLRequest of its own to it), so the client checks the server's certificate and SCRAM channel binding works end to end. Such sessions count in limits, metrics, the audit log and SHOW CLIENTS, but are never pooled, routed by database or inspected; `databases` of the tenant are then not used.",
  ),
  row('tenants.*.passthrough.port', 'int', port, 5432, true, 'Port of the passthrough server.'),
  row(
    'tenants.*.passthrough.direct',
    'bool',
    z.boolean(),
    false,
    true,
    'The passthrough server accepts direct TLS (PostgreSQL 17+): a direct-TLS client is spliced at once. Unset: Postern sends the server an SSLRequest first, for in-band and direct-TLS clients alike.',
  ),
  row(
    'audit.file',
    'path',
    path,
    undefined,
    false,
    'Audit log destination (JSON lines): a file path, or `stdout`. One record per session (who, from where, TLS, auth method and outcome, database, user, application_name, start, end, bytes, statements). Unset: no audit log.',
  ),
  row(
    'audit.statements',
    'bool',
    z.boolean(),
    false,
    true,
    'Also one audit record per executed statement (fingerprint, normalized text, duration, rows, SQLSTATE), never literal values.',
  ),
];

// tenants.*.databases.* takes every databases.* key: its rows are copies (the
// tenant's row above documents them once).
{
  const rows = SETTINGS as Setting[];
  const at = rows.findIndex((r) => r.key === 'tenants.*.databases');
  const copies = rows.filter((r) => r.key.startsWith('databases.*.')).map((r) => ({ ...r, key: `tenants.*.${r.key}`, mirror: true }));
  rows.splice(at + 1, 0, ...copies);
}

/** Settings whose key marks them secret, for redaction. */
export const SECRET_KEYS: ReadonlySet<string> = new Set(SETTINGS.filter((s) => s.secret).map((s) => s.key));

interface Node {
  setting?: Setting;
  children: Map<string, Node>;
}

function buildTree(): Node {
  const root: Node = { children: new Map() };
  for (const s of SETTINGS) {
    if (s.docOnly) continue;
    let n = root;
    for (const part of s.key.split('.')) {
      let c = n.children.get(part);
      if (!c) {
        c = { children: new Map() };
        n.children.set(part, c);
      }
      n = c;
    }
    n.setting = s;
  }
  return root;
}

function toZod(n: Node): z.ZodType {
  if (n.setting) {
    const s = n.setting;
    return s.default === undefined ? s.schema.optional() : s.schema.prefault(s.default as never);
  }
  const star = n.children.get('*');
  if (star) return z.record(z.string().min(1), toZod(star)).prefault({});
  const shape: Record<string, z.ZodType> = {};
  for (const [k, c] of n.children) shape[k] = toZod(c);
  // Sections default to {} so their leaves get their defaults.
  return z.strictObject(shape).prefault({} as never);
}

/** The zod schema assembled from SETTINGS. */
export const configSchema: z.ZodType = toZod(buildTree());

// The validated, defaulted shape. Durations are milliseconds, sizes bytes.
export type TlsClientMode = (typeof TLS_CLIENT_MODES)[number];
export type TlsServerMode = (typeof TLS_SERVER_MODES)[number];

export type PoolMode = (typeof POOL_MODES)[number];

/** cluster.*: several instances behind one load balancer. */
export interface ClusterConfig {
  instance_id?: number;
  peers: { id: number; host: string; port: number }[];
  peers_dns?: string;
  secret?: string;
  secret_file?: string;
}

export interface PoolConfig {
  pool_mode: PoolMode;
  default_pool_size: number;
  min_pool_size: number;
  reserve_pool_size: number;
  reserve_pool_timeout: number;
  max_client_conn: number;
  max_db_connections: number;
  max_user_connections: number;
  server_lifetime: number;
  server_idle_timeout: number;
  query_wait_timeout: number;
  client_idle_timeout: number;
  idle_transaction_timeout: number;
  server_reset_query: string;
  max_prepared_statements: number;
  discard_sequences: 'auto' | 'always' | 'off';
  server_check_query: string;
  server_check_delay: number;
}

/** A replica lag limit: WAL bytes or milliseconds. */
export type ReplicaLag = { bytes: number; ms?: undefined } | { ms: number; bytes?: undefined };
export type TargetSessionAttrs = (typeof TARGET_SESSION_ATTRS)[number];
export type LoadBalance = (typeof LOAD_BALANCE)[number];

export interface DatabaseConfig {
  host: string;
  port: number;
  servers?: Array<{ host: string; port: number }>;
  target_session_attrs: TargetSessionAttrs;
  load_balance: LoadBalance;
  max_replica_lag?: ReplicaLag;
  read_write_split: boolean;
  read_your_writes: boolean;
  pool_mode?: PoolMode;
  pool_size?: number;
  dbname?: string;
  server_user?: string;
  server_password?: string;
  tls: { mode: TlsServerMode; ca?: string; cert?: string; key?: string; server_name?: string; direct: boolean };
}

/** A certificate picked by SNI (tls.certificates, tenants.*.certificates). */
export interface CertificateEntry {
  server_names?: string[];
  cert: string;
  key: string;
}

export interface TenantConfig {
  server_names?: string[];
  databases: Record<string, DatabaseConfig>;
  certificates: CertificateEntry[];
  passthrough: { host?: string; port: number; direct: boolean };
}

export interface Config {
  listen: { host: string; port: number };
  tls: {
    cert?: string;
    key?: string;
    ca?: string;
    mode: TlsClientMode;
    direct_without_alpn: boolean;
    min_version: 'TLSv1.2' | 'TLSv1.3';
    ciphers?: string;
    certificates: CertificateEntry[];
    watch: boolean;
  };
  databases: Record<string, DatabaseConfig>;
  tenants: Record<string, TenantConfig>;
  users: Record<string, { server_user?: string; server_password?: string; pool_mode?: PoolMode }>;
  pool: PoolConfig;
  auth: {
    hba_file?: string;
    ident_file?: string;
    users_file?: string;
    query: string;
    query_user?: string;
    query_password?: string;
    query_database?: string;
    cache_ttl: number;
    throttle_window: number;
    throttle_max_failures: number;
    throttle_delay: number;
  };
  limits: { max_message_size: number; client_login_timeout: number; server_connect_timeout: number; shutdown_timeout: number };
  workers: number | 'auto';
  cluster: ClusterConfig;
  log: { level: (typeof LOG_LEVELS)[number]; queries: boolean };
  admin: {
    listen?: string;
    users: string[];
    stats_users: string[];
    tls: { cert?: string; key?: string };
    dashboard: boolean;
    history: number;
    max_streams: number;
  };
  stats: { queries: boolean; max_queries: number };
  health: { check_interval: number; failure_threshold: number; timeout: number; user?: string; password?: string };
  routing: { read_only_functions: string[] };
  audit: { file?: string; statements: boolean };
}
