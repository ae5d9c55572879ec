// Starts and stops what the benchmark talks to: a throwaway PostgreSQL with
// pgbench data (through the dev kit in dist/dev), Postern (the built CLI), and
// PgBouncer (its own ini and userlist in a temp dir, on a free port, as an
// unprivileged user when we are root). Every start registers its own cleanup.

import { execFile, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { chmod, chown, copyFile, mkdir, mkdtemp, open, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { onCleanup, stopChild, trackChild, trackDir } from './cleanup.mjs';

export const BENCH_USER = 'bench';
export const BENCH_DB = 'bench';
export const PGBOUNCER_BIN = '/usr/sbin/pgbouncer';

const READY_TIMEOUT_MS = 30_000;

/**
 * [file, args] that run `cmd args` with its open-files limit raised first
 * (idle-clients needs 10,000+ sockets; a fresh machine's soft limit is
 * often 1024). `exec` keeps the pid, so the process is still measured by pid.
 */
export function withFileLimit(cmd, args) {
  return ['/bin/sh', ['-c', 'ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null; exec "$0" "$@"', cmd, ...args]];
}

export function delay(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Runs a program; resolves { code, stdout, stderr } (never rejects on exit status). */
export function exec(file, args, opts = {}) {
  return new Promise((resolve, reject) => {
    const child = execFile(file, args, { encoding: 'utf8', maxBuffer: 16 << 20, ...opts }, (err, stdout, stderr) => {
      if (err && typeof err.code !== 'number' && err.code !== undefined && !err.killed) return reject(err);
      resolve({ code: err ? (typeof err.code === 'number' ? err.code : 1) : 0, stdout, stderr });
    });
    trackChild(child);
    child.stdin?.end();
  });
}

/** Runs a program and resolves its stdout; rejects with its stderr when it exits non-zero. */
export async function execOk(file, args, opts = {}) {
  const r = await exec(file, args, opts);
  if (r.code !== 0) throw new Error(`${file} ${args.join(' ')}: exit ${r.code}\n${r.stderr}`);
  return r.stdout;
}

/** uid/gid of an unprivileged user for programs that refuse to run as root. */
export function unprivilegedIdentity() {
  if (process.getuid?.() !== 0) return undefined;
  const passwd = readFileSync('/etc/passwd', 'utf8');
  for (const name of ['postgres', 'nobody']) {
    for (const line of passwd.split('\n')) {
      const f = line.split(':');
      if (f[0] === name) return { uid: Number(f[2]), gid: Number(f[3]), name };
    }
  }
  throw new Error("running as root, but there is no 'postgres' or 'nobody' user to run PgBouncer as");
}

export async function makeTempDir(prefix) {
  const dir = await mkdtemp(join(tmpdir(), prefix));
  trackDir(dir);
  return dir;
}

/**
 * Starts the cluster, creates the pgbench role (SCRAM password) and database,
 * loads pgbench data at `scale` and pre-warms it with a short `pgbench -S`.
 */
export async function startCluster({ root, scale, maxConnections, certs, log }) {
  const { startPostgres } = await import(pathToFileURL(join(root, 'dist/dev/cluster.js')).href);
  const password = `bench-${Math.random().toString(36).slice(2)}`;
  const cluster = await startPostgres({
    auth: 'scram-sha-256',
    users: [{ name: BENCH_USER, password }],
    databases: [{ name: BENCH_DB, owner: BENCH_USER }],
    tls: { cert: certs.server.cert, key: certs.server.key },
    settings: {
      max_connections: maxConnections,
      // Scale 10 is ~160 MB: keep it all in shared buffers so -S never reads the disk.
      shared_buffers: '384MB',
      // pgbench -C opens thousands of sessions; logging each would cost time in the server.
      log_connections: false,
      log_disconnections: false,
    },
  });
  onCleanup('postgres', () => cluster.stop());
  const bin = (name) => (existsSync(join(cluster.binDir, name)) ? join(cluster.binDir, name) : name);
  const pgbenchBin = bin('pgbench');
  const psqlBin = bin('psql');
  const env = (extra = {}) =>
    cluster.env({ PGUSER: BENCH_USER, PGPASSWORD: password, PGDATABASE: BENCH_DB, PGSSLMODE: 'disable', PGAPPNAME: 'bench', ...extra });

  log(`initialising pgbench data, scale ${scale}...`);
  const init = await exec(pgbenchBin, ['-i', '-s', String(scale), '-q', '--unlogged-tables'], { env: env(), timeout: 900_000 });
  if (init.code !== 0) throw new Error(`pgbench -i failed:\n${init.stderr}`);
  const branches = Number(await cluster.psql('select count(*) from pgbench_branches', { db: BENCH_DB }));
  if (branches !== scale) throw new Error(`pgbench -i produced ${branches} branches, expected scale ${scale}`);
  await cluster.psql('VACUUM ANALYZE', { db: BENCH_DB });
  log('pre-warming (pgbench -S, 5 s)...');
  const warm = await exec(pgbenchBin, ['-S', '-T', '5', '-c', '4', '-j', '1', '--no-vacuum'], { env: env(), timeout: 60_000 });
  if (warm.code !== 0) throw new Error(`pre-warm pgbench -S failed:\n${warm.stderr}`);

  // PgBouncer authenticates clients against the same SCRAM verifier the server holds.
  const verifier = await cluster.psql(`select rolpassword from pg_authid where rolname = '${BENCH_USER}'`);
  const version = await cluster.psql('show server_version');
  const pgbenchVersion = (await exec(pgbenchBin, ['--version'])).stdout.trim();
  const postmasterPid = () => {
    try {
      return Number.parseInt(readFileSync(join(cluster.dataDir, 'postmaster.pid'), 'utf8').split('\n')[0], 10);
    } catch {
      return undefined;
    }
  };
  return { cluster, password, verifier, env, pgbenchBin, psqlBin, version, pgbenchVersion, postmasterPid };
}

/** `psql -c sql` with `env`; resolves trimmed stdout or rejects with stderr. */
export async function psqlAt(psqlBin, env, sql, timeout = 10_000) {
  const r = await exec(psqlBin, ['-X', '-A', '-t', '-w', '-v', 'ON_ERROR_STOP=1', '-c', sql], { env, timeout });
  if (r.code !== 0) throw new Error(r.stderr.trim() || `psql exited ${r.code}`);
  return r.stdout.trim();
}

async function waitForSql(psqlBin, env, child, what, logPath) {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let last;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${what} exited during startup (${child.exitCode ?? child.signalCode})\n${await tailOf(logPath)}`);
    }
    try {
      await psqlAt(psqlBin, { ...env, PGCONNECT_TIMEOUT: '2' }, 'select 1', 5000);
      return;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline)
      throw new Error(`${what} not ready within ${READY_TIMEOUT_MS / 1000}s: ${last?.message}\n${await tailOf(logPath)}`);
    await delay(100);
  }
}

async function tailOf(path) {
  try {
    return `--- ${path} ---\n${(await readFile(path, 'utf8')).slice(-3000)}`;
  } catch {
    return '';
  }
}

/**
 * What Postern's config table says about pooling, read from the compiled
 * SETTINGS: a key ending in `pool_mode` (and one ending in `pool_size`).
 * Postern currently has none: session mode only, one server connection per client.
 */
export async function posternPoolSupport(root) {
  try {
    const { SETTINGS } = await import(pathToFileURL(join(root, 'dist/config/schema.js')).href);
    const mode = SETTINGS.find((s) => s.key.endsWith('pool_mode'));
    if (!mode) return { modeKey: undefined, modes: ['session'] };
    const accepts = (v) => {
      try {
        return mode.schema.safeParse(v).success;
      } catch {
        return false;
      }
    };
    const modes = ['session', 'transaction'].filter(accepts);
    const size = SETTINGS.find((s) => /(^|\.)(default_)?pool_size$/.test(s.key));
    return { modeKey: mode.key, sizeKey: size?.key, modes: modes.length > 0 ? modes : ['session'] };
  } catch (err) {
    return { modeKey: undefined, modes: ['session'], error: String(err?.message ?? err) };
  }
}

function setPath(obj, path, value) {
  const parts = path.split('.');
  let o = obj;
  for (let i = 0; i < parts.length - 1; i++) {
    o[parts[i]] ??= {};
    o = o[parts[i]];
  }
  o[parts[parts.length - 1]] = value;
}

/**
 * Starts Postern from the built CLI. `mode` is only written to the config when
 * the config table has a pool_mode key (`support.modeKey`); a `databases.*`
 * key is set per database, any other key globally.
 */
export async function startPostern({
  root,
  dir,
  port,
  pg,
  certs,
  mode,
  support,
  verifier,
  sessionPoolSize,
  txPoolSize,
  freePort,
  psqlBin,
  benchEnv,
  variant,
  nodeArgs = [],
}) {
  const { stringify, parse } = await import('yaml');
  const listenPort = port ?? (await freePort());
  const db = { host: pg.host, port: pg.port, dbname: BENCH_DB, tls: { mode: 'disable' } };
  const name0 = `postern${mode ? `-${mode}` : ''}${variant ? `@${variant.name}` : ''}`;
  // Like PgBouncer's auth_file: Postern authenticates clients against the
  // server's own SCRAM verifier and logs in with SCRAM passthrough, so its
  // pools can reuse server connections across clients.
  const usersFile = join(dir, `${name0}-users.txt`);
  const hbaFile = join(dir, `${name0}-hba.conf`);
  await writeFile(usersFile, `"${BENCH_USER}" "${verifier}"\n`, { mode: 0o600 });
  await writeFile(hbaFile, 'hostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n');
  const config = {
    listen: { host: '127.0.0.1', port: listenPort },
    tls: { cert: certs.server.cert, key: certs.server.key, mode: 'allow' },
    auth: { hba_file: hbaFile, users_file: usersFile },
    // Session mode needs a server connection per client, as PgBouncer's session pool does.
    pool: { max_client_conn: 20000, default_pool_size: sessionPoolSize ?? 100 },
    databases: { [BENCH_DB]: db },
    log: { level: 'warn' },
  };
  if (support.modeKey && mode) {
    const key = support.modeKey.replace('*', BENCH_DB);
    setPath(config, key, mode);
    if (mode === 'transaction' && support.sizeKey) setPath(config, support.sizeKey.replace('*', BENCH_DB), txPoolSize);
  }
  for (const [key, value] of variant?.overrides ?? []) setPath(config, key.replace('*', BENCH_DB), parse(value));
  const name = name0;
  const configPath = join(dir, `${name}.yaml`);
  await writeFile(configPath, stringify(config));
  const logPath = join(dir, `${name}.log`);
  const logFile = await open(logPath, 'a');
  const child = trackChild(
    spawn(...withFileLimit(process.execPath, [...nodeArgs, join(root, 'dist/main.js'), '--config', configPath]), {
      cwd: root,
      stdio: ['ignore', logFile.fd, logFile.fd],
      env: { ...process.env, NODE_ENV: 'production' },
    }),
  );
  await logFile.close();
  child.once('error', () => undefined);
  onCleanup(name, () => stopChild(child, 10_000));
  await waitForSql(psqlBin, benchEnv({ PGHOST: '127.0.0.1', PGPORT: String(listenPort) }), child, 'Postern', logPath);
  return { name, pid: child.pid, child, host: '127.0.0.1', port: listenPort, db: BENCH_DB, configPath, logPath };
}

/** PgBouncer version string, or undefined when it is not installed. */
export async function pgbouncerVersion() {
  if (!existsSync(PGBOUNCER_BIN)) return undefined;
  const r = await exec(PGBOUNCER_BIN, ['--version']).catch(() => undefined);
  return r?.stdout.split('\n')[0]?.trim() || 'PgBouncer (unknown version)';
}

/**
 * Starts PgBouncer with two databases that point at the same server database:
 * `bench_session` (pool_mode session, pool large enough for every client) and
 * `bench_tx` (pool_mode transaction, pool_size `txPoolSize`).
 */
export async function startPgbouncer({ dir, pg, verifier, certs, freePort, maxClients, sessionPoolSize, txPoolSize, psqlBin, benchEnv }) {
  const who = unprivilegedIdentity();
  const own = async (p) => {
    if (who) await chown(p, who.uid, who.gid);
  };
  const bdir = join(dir, 'pgbouncer');
  await mkdir(bdir, { recursive: true });
  await own(dir);
  await own(bdir);
  // Copies of the TLS files the unprivileged user can read (the key must stay 0600).
  const cert = join(bdir, 'server.crt');
  const key = join(bdir, 'server.key');
  await copyFile(certs.server.cert, cert);
  await copyFile(certs.server.key, key);
  await chmod(key, 0o600);
  await own(cert);
  await own(key);
  const userlist = join(bdir, 'userlist.txt');
  await writeFile(userlist, `"${BENCH_USER}" "${verifier}"\n`, { mode: 0o600 });
  await own(userlist);
  const port = await freePort();
  const logPath = join(bdir, 'pgbouncer.log');
  const ini = [
    '[databases]',
    `bench_session = host=${pg.host} port=${pg.port} dbname=${BENCH_DB} pool_mode=session pool_size=${sessionPoolSize}`,
    `bench_tx = host=${pg.host} port=${pg.port} dbname=${BENCH_DB} pool_mode=transaction pool_size=${txPoolSize}`,
    '',
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    // No unix socket: nothing to clash with the system service in /var/run/postgresql.
    'unix_socket_dir =',
    `logfile = ${logPath}`,
    'auth_type = scram-sha-256',
    `auth_file = ${userlist}`,
    'pool_mode = session',
    `default_pool_size = ${sessionPoolSize}`,
    `max_client_conn = ${maxClients}`,
    'max_db_connections = 0',
    'log_connections = 0',
    'log_disconnections = 0',
    'log_pooler_errors = 1',
    'stats_period = 3600',
    'server_tls_sslmode = disable',
    'client_tls_sslmode = allow',
    `client_tls_cert_file = ${cert}`,
    `client_tls_key_file = ${key}`,
    'ignore_startup_parameters = extra_float_digits',
    '',
  ].join('\n');
  const iniPath = join(bdir, 'pgbouncer.ini');
  await writeFile(iniPath, ini);
  await own(iniPath);
  const out = await open(join(bdir, 'stdout.log'), 'a');
  if (who) await out.chown(who.uid, who.gid);
  const child = trackChild(
    spawn(...withFileLimit(PGBOUNCER_BIN, [iniPath]), {
      cwd: bdir,
      stdio: ['ignore', out.fd, out.fd],
      ...(who ? { uid: who.uid, gid: who.gid } : {}),
    }),
  );
  await out.close();
  child.once('error', () => undefined);
  onCleanup('pgbouncer', () => stopChild(child, 10_000));
  await waitForSql(
    psqlBin,
    benchEnv({ PGHOST: '127.0.0.1', PGPORT: String(port), PGDATABASE: 'bench_session' }),
    child,
    'PgBouncer',
    logPath,
  );
  return { pid: child.pid, child, host: '127.0.0.1', port, runAs: who?.name ?? 'current user', logPath, iniPath };
}
