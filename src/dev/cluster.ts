// Throwaway PostgreSQL clusters for tests, the benchmark and `postern demo`:
// initdb into a temp dir, start a postmaster on a free TCP port, bootstrap
// roles and databases, and tear everything down again (also when the process
// exits without calling stop()). Tuned for speed, never for durability.

import { type ChildProcess, execFile, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { appendFile, chmod, chown, copyFile, lstat, mkdtemp, open, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface PgCluster {
  host: string;
  port: number;
  dataDir: string;
  binDir: string;
  /** Major version, e.g. 15. */
  version: number;
  superuser: string;
  superuserPassword: string;
  /**
   * A clean process.env (inherited PG* variables removed) plus PGHOST, PGPORT,
   * PGUSER, PGPASSWORD and PGDATABASE=postgres for the superuser,
   * PGSSLMODE=disable and a PGPASSFILE that does not exist; `extra` overrides any of them.
   */
  env(extra?: Record<string, string>): NodeJS.ProcessEnv;
  /** `psql -X -A -t -v ON_ERROR_STOP=1 -c sql` straight at the cluster; trimmed stdout, rejects with stderr. */
  psql(sql: string, opts?: PsqlOptions): Promise<string>;
  /** Fast shutdown, then removes the temp dir. Idempotent and never throws. */
  stop(): Promise<void>;
  /** Fast shutdown and start again on the same port and data (as `pg_ctl restart -m fast`); resolves once it accepts connections. */
  restart(): Promise<void>;
}

export interface PsqlOptions {
  db?: string;
  user?: string;
  /** Defaults to the superuser's password when `user` is the superuser or absent. */
  password?: string;
}

export type ClusterAuth = 'trust' | 'scram-sha-256' | 'md5' | 'password' | 'cert';

export interface StartPostgresOptions {
  /** ssl=on with these files (copied into the data dir); `ca` becomes ssl_ca_file. */
  tls?: { cert: string; key: string; ca?: string };
  /** Method for the TCP lines of non-superuser roles; default 'scram-sha-256'. */
  auth?: ClusterAuth;
  /** Replaces the generated pg_hba.conf body; the superuser's lines (replication, then all databases) always come first. */
  hba?: string[];
  /** Extra postgresql.conf settings; they win over the defaults. */
  settings?: Record<string, string | number | boolean>;
  users?: Array<{ name: string; password?: string; superuser?: boolean }>;
  databases?: Array<{ name: string; owner?: string }>;
  /** Default: a free port. */
  port?: number;
}

const HOST = '127.0.0.1';
const SUPERUSER = 'postgres';
const START_TIMEOUT_MS = 60_000;
const STOP_TIMEOUT_MS = 30_000;
const RELOAD_TIMEOUT_MS = 10_000;
const PSQL_TIMEOUT_MS = 120_000;
const LOG_FILE = 'postmaster.log';

/** The OS identity the server runs as; undefined = the current user. */
interface RunAs {
  uid: number;
  gid: number;
}

/** Clusters whose postmaster may still be running, for the exit hook. */
const live = new Set<{ dataDir: string; tmpDir: string }>();
let exitHookInstalled = false;

export function findPgBinDir(): string {
  const fromEnv = process.env.POSTERN_PG_BIN;
  if (fromEnv) {
    if (!existsSync(join(fromEnv, 'initdb'))) throw new Error(`POSTERN_PG_BIN=${fromEnv} does not contain initdb`);
    return fromEnv;
  }
  try {
    const dir = execFileSync('pg_config', ['--bindir'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
    }).trim();
    // Debian's pg_config may come from libpq-dev and point at a dir with only client tools.
    if (dir && existsSync(join(dir, 'initdb'))) return dir;
  } catch {
    // No pg_config: fall through to the Debian layout.
  }
  const base = '/usr/lib/postgresql';
  let versions: string[] = [];
  try {
    versions = readdirSync(base).filter((v) => existsSync(join(base, v, 'bin', 'initdb')));
  } catch {
    // No Debian-style install.
  }
  versions.sort((a, b) => Number.parseFloat(b) - Number.parseFloat(a));
  const best = versions[0];
  if (best !== undefined) return join(base, best, 'bin');
  throw new Error(
    'PostgreSQL server binaries (initdb) not found: set POSTERN_PG_BIN, put pg_config on PATH, ' +
      'or install them (Debian: apt-get install postgresql)',
  );
}

export function freePort(host: string = HOST): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr ? addr.port : 0;
      srv.close(() => (port > 0 ? resolvePort(port) : reject(new Error('could not determine a free port'))));
    });
  });
}

export async function startPostgres(opts: StartPostgresOptions = {}): Promise<PgCluster> {
  const auth = opts.auth ?? 'scram-sha-256';
  if (auth === 'cert' && !opts.tls?.ca) {
    throw new Error("auth 'cert' needs tls with a ca (the CA that signs client certificates)");
  }
  const runAs = serverIdentity();
  const tmpDir = await mkdtemp(join(tmpdir(), 'postern-pg-'));
  const pm = new Postmaster({
    binDir: findPgBinDir(),
    runAs,
    tmpDir,
    port: opts.port ?? (await freePort()),
    superuserPassword: randomBytes(18).toString('base64url'),
  });
  const { binDir, dataDir } = pm;

  try {
    if (runAs) await chown(tmpDir, runAs.uid, runAs.gid);
    await run(join(binDir, 'initdb'), ['-D', dataDir, '-A', 'trust', '-U', SUPERUSER, '--encoding=UTF8', '--locale=C', '--no-sync'], {
      runAs,
      cwd: tmpDir,
      env: pm.baseEnv,
    });
    const version = Number.parseInt(await readFile(join(dataDir, 'PG_VERSION'), 'utf8'), 10);

    const conf: Record<string, string | number | boolean> = {
      listen_addresses: HOST,
      port: pm.port,
      // TCP only: no socket file to clash over or to leave behind in /tmp.
      unix_socket_directories: '',
      fsync: false,
      synchronous_commit: false,
      full_page_writes: false,
      max_connections: 200,
      shared_buffers: '128MB',
      logging_collector: false,
      password_encryption: auth === 'md5' ? 'md5' : 'scram-sha-256',
      // PG15 defaults (wal_level = replica too), spelled out because
      // startStandby() depends on them; a standby copies this file, and there
      // hot_standby is what lets it take read-only sessions.
      max_wal_senders: 10,
      hot_standby: true,
    };
    if (opts.tls) {
      await copyPrivate(opts.tls.cert, join(dataDir, 'server.crt'), 0o644, runAs);
      await copyPrivate(opts.tls.key, join(dataDir, 'server.key'), 0o600, runAs);
      conf.ssl = true;
      conf.ssl_cert_file = 'server.crt';
      conf.ssl_key_file = 'server.key';
      if (opts.tls.ca) {
        await copyPrivate(opts.tls.ca, join(dataDir, 'root.crt'), 0o644, runAs);
        conf.ssl_ca_file = 'root.crt';
      }
    }
    Object.assign(conf, opts.settings);
    // Appended, so these lines win over initdb's defaults earlier in the file.
    await appendFile(join(dataDir, 'postgresql.conf'), `\n# postern dev kit\n${renderConf(conf)}`);
    // Bootstrap with trust so the superuser can set its own password.
    await writeFile(join(dataDir, 'pg_hba.conf'), `host all all ${HOST}/32 trust\nhost all all ::1/128 trust\n`);
    await chownTree(tmpDir, runAs);

    await pm.start(opts.port !== undefined);

    const sql: string[] = [
      // The superuser's hba line is always scram, so its verifier must be scram
      // even when the cluster default is md5.
      "SET password_encryption = 'scram-sha-256';",
      `ALTER ROLE ${ident(SUPERUSER)} PASSWORD ${literal(pm.superuserPassword)};`,
      `SET password_encryption = ${literal(String(conf.password_encryption))};`,
    ];
    for (const u of opts.users ?? []) {
      const attrs = ['LOGIN', u.superuser ? 'SUPERUSER' : ''];
      if (u.password !== undefined) attrs.push(`PASSWORD ${literal(u.password)}`);
      sql.push(`CREATE ROLE ${ident(u.name)} ${attrs.filter(Boolean).join(' ')};`);
    }
    for (const d of opts.databases ?? []) {
      sql.push(`CREATE DATABASE ${ident(d.name)}${d.owner ? ` OWNER ${ident(d.owner)}` : ''};`);
    }
    // Through stdin, not -c: passwords stay off the command line (visible in
    // ps), and psql sends each statement on its own so CREATE DATABASE is not
    // inside an implicit transaction block.
    await pm.psql(['-f', '-'], { PGPASSWORD: '' }, `${sql.join('\n')}\n`);

    await writeFile(join(dataDir, 'pg_hba.conf'), renderHba(auth, opts.hba));
    // A reload keeps the old (trust!) rules when the new file has errors, so
    // check the file first and fail loudly instead of timing out below.
    const hbaErrors = await pm.psql(['-c', "select line_number || ': ' || error from pg_hba_file_rules where error is not null"], {
      PGPASSWORD: '',
    });
    if (hbaErrors) throw new Error(`invalid pg_hba.conf lines:\n${hbaErrors}\n${renderHba(auth, opts.hba)}`);
    await pm.psql(['-c', 'select pg_reload_conf()'], { PGPASSWORD: '' });
    // pg_reload_conf() only signals the postmaster; wait until a password-less
    // superuser login is refused, which proves the final hba is in force.
    await waitUntil(RELOAD_TIMEOUT_MS, async () => {
      try {
        await pm.psql(['-c', 'select 1'], { PGPASSWORD: '' });
        return false;
      } catch (err) {
        // "no password supplied" / "password authentication failed"; any
        // other failure (a crashed server) must not pass for success.
        return /password/i.test((err as Error).message);
      }
    }).catch(async () => {
      throw new Error(`pg_hba.conf reload not observed within ${RELOAD_TIMEOUT_MS}ms\n${await logTail(pm.logPath)}`);
    });

    return pm.cluster(version);
  } catch (err) {
    await pm.stop();
    throw err;
  }
}

export interface StartStandbyOptions {
  /** Default: a free port. */
  port?: number;
  /** Extra postgresql.conf settings for the standby; they win over what it copied from the primary. */
  settings?: Record<string, string | number | boolean>;
}

export interface PgStandby extends PgCluster {
  /**
   * Ends recovery (`pg_promote(true, 60)`); resolves once `pg_is_in_recovery()`
   * is false, so the next session may write. Rejects when it does not finish in time.
   */
  promote(): Promise<void>;
}

/**
 * A streaming standby of `primary` (one that startPostgres() made): a
 * `pg_basebackup -R -X stream` copy in its own temp dir, started on its own
 * port, resolving once it takes read-only sessions. It copies the primary's
 * postgresql.conf (the fast, non-durable settings included) and pg_hba.conf,
 * so the same superuser, password and roles work against it.
 */
export async function startStandby(primary: PgCluster, opts: StartStandbyOptions = {}): Promise<PgStandby> {
  const runAs = serverIdentity();
  const tmpDir = await mkdtemp(join(tmpdir(), 'postern-pg-standby-'));
  const pm = new Postmaster({
    binDir: primary.binDir,
    runAs,
    tmpDir,
    port: opts.port ?? (await freePort()),
    superuserPassword: primary.superuserPassword,
  });
  const { binDir, dataDir } = pm;

  try {
    if (runAs) await chown(tmpDir, runAs.uid, runAs.gid);
    // As the server's user, like initdb, so every copied file is the server's.
    // -R writes standby.signal and a primary_conninfo built from this
    // connection's parameters, PGPASSWORD included, so the walreceiver can log
    // in the same way. --checkpoint=fast: a spread checkpoint would make the
    // backup wait on checkpoint_completion_target for nothing.
    await run(
      join(binDir, 'pg_basebackup'),
      [
        '-D',
        dataDir,
        '-R',
        '-X',
        'stream',
        '--checkpoint=fast',
        '--no-sync',
        '-w',
        '-h',
        primary.host,
        '-p',
        String(primary.port),
        '-U',
        primary.superuser,
      ],
      {
        runAs,
        cwd: tmpDir,
        env: {
          ...pm.baseEnv,
          PGPASSWORD: primary.superuserPassword,
          PGSSLMODE: 'disable',
          PGPASSFILE: join(tmpDir, 'no-pgpass'),
          PGAPPNAME: 'postern-standby',
        },
        timeoutMs: START_TIMEOUT_MS,
      },
    );
    // pg_basebackup makes it 0700 already; the server refuses to start otherwise.
    await chmod(dataDir, 0o700);
    const version = Number.parseInt(await readFile(join(dataDir, 'PG_VERSION'), 'utf8'), 10);
    // The primary's log lives in its data dir, so the backup brought it along.
    await writeFile(pm.logPath, '');
    // Only what must differ from the primary: the copied conf already carries
    // its settings, and lowering max_connections and the like below the
    // primary's would stop a hot standby from starting.
    const conf = { port: pm.port, hot_standby: true, ...opts.settings };
    await appendFile(join(dataDir, 'postgresql.conf'), `\n# postern dev kit: standby\n${renderConf(conf)}`);
    await chownTree(tmpDir, runAs);

    await pm.start(opts.port !== undefined);
    // Ready means it takes sessions; make sure that is as a standby.
    const inRecovery = await pm.psql(['-c', 'select pg_is_in_recovery()'], {});
    if (inRecovery !== 't') {
      throw new Error(`the standby is not in recovery (pg_is_in_recovery() = ${inRecovery})\n${await logTail(pm.logPath)}`);
    }

    return {
      ...pm.cluster(version),
      async promote() {
        // wait = true: returns once recovery has ended, false if not within 60 s.
        const done = await pm.psql(['-c', 'select pg_promote(true, 60)'], {});
        if (done !== 't') throw new Error(`pg_promote() did not finish within 60s\n${await logTail(pm.logPath)}`);
        await waitUntil(RELOAD_TIMEOUT_MS, async () => (await pm.psql(['-c', 'select pg_is_in_recovery()'], {})) === 'f').catch(
          async () => {
            throw new Error(`still in recovery ${RELOAD_TIMEOUT_MS}ms after pg_promote()\n${await logTail(pm.logPath)}`);
          },
        );
      },
    };
  } catch (err) {
    await pm.stop();
    throw err;
  }
}

/**
 * One postmaster on `<tmpDir>/data`: the libpq environment that reaches it,
 * starting (with port retries) and probing it, fast shutdown, and removing the
 * temp dir. What goes into the data dir is the caller's business.
 */
class Postmaster {
  readonly binDir: string;
  readonly runAs: RunAs | undefined;
  readonly tmpDir: string;
  readonly dataDir: string;
  readonly logPath: string;
  readonly superuserPassword: string;
  /** process.env without PG* variables; what the server and its tools run with. */
  readonly baseEnv = cleanEnv();
  /** Changes only while start() retries on a taken port. */
  port: number;
  readonly #psqlBin: string;
  readonly #entry: { dataDir: string; tmpDir: string };
  #child: ChildProcess | undefined;
  #childExit: Promise<void> = Promise.resolve();
  #stopping: Promise<void> | undefined;

  constructor(o: { binDir: string; runAs: RunAs | undefined; tmpDir: string; port: number; superuserPassword: string }) {
    this.binDir = o.binDir;
    this.runAs = o.runAs;
    this.tmpDir = o.tmpDir;
    this.dataDir = join(o.tmpDir, 'data');
    this.logPath = join(this.dataDir, LOG_FILE);
    this.superuserPassword = o.superuserPassword;
    this.port = o.port;
    this.#psqlBin = existsSync(join(o.binDir, 'psql')) ? join(o.binDir, 'psql') : 'psql';
    this.#entry = { dataDir: this.dataDir, tmpDir: this.tmpDir };
  }

  env(extra: Record<string, string> = {}): NodeJS.ProcessEnv {
    return {
      ...this.baseEnv,
      PGHOST: HOST,
      PGPORT: String(this.port),
      PGUSER: SUPERUSER,
      PGPASSWORD: this.superuserPassword,
      // Without it libpq would pick a database named after the user, which a
      // freshly created role does not have.
      PGDATABASE: 'postgres',
      PGSSLMODE: 'disable',
      // A developer's ~/.pgpass must not answer for a role we expect to be refused.
      PGPASSFILE: join(this.tmpDir, 'no-pgpass'),
      ...extra,
    };
  }

  psql(args: string[], extraEnv: Record<string, string>, input?: string): Promise<string> {
    return run(this.#psqlBin, ['-X', '-A', '-t', '-w', '-v', 'ON_ERROR_STOP=1', ...args], {
      env: this.env(extraEnv),
      input,
      timeoutMs: PSQL_TIMEOUT_MS,
    });
  }

  /** Starts the postmaster; resolves once it accepts connections. */
  async launch(): Promise<void> {
    const log = await open(this.logPath, 'a');
    try {
      if (this.runAs) await log.chown(this.runAs.uid, this.runAs.gid);
      const proc = spawn(join(this.binDir, 'postgres'), ['-D', this.dataDir], {
        cwd: this.tmpDir,
        env: this.baseEnv,
        stdio: ['ignore', log.fd, log.fd],
        ...(this.runAs ?? {}),
      });
      this.#child = proc;
      this.#childExit = new Promise((done) => proc.once('exit', () => done()));
      proc.once('error', () => undefined);
      // The test process must be able to exit while the server runs; the
      // exit hook below still takes the server down with it.
      proc.unref();
    } finally {
      await log.close();
    }
    registerExitHook();
    live.add(this.#entry);
    // A short connect timeout: the probe must not hang on a port that a
    // stranger holds; the loop retries anyway.
    // A refused password also proves the server is up (a restart finds the final pg_hba.conf in force).
    const probe = () =>
      run(this.#psqlBin, ['-X', '-A', '-t', '-w', '-c', 'select 1'], {
        env: this.env({ PGPASSWORD: '', PGCONNECT_TIMEOUT: '2' }),
        timeoutMs: 5_000,
      }).catch((e: Error) => {
        if (/password/i.test(e.message)) return '';
        throw e;
      });
    await waitReady(probe, this.#childExit, this.logPath);
  }

  /** launch(), on a new free port when the chosen one turns out taken, unless the caller fixed the port. */
  async start(portFixed: boolean): Promise<void> {
    // freePort() closes its probe socket before the server binds, so another
    // process can win the port; retry with a new one unless the caller chose it.
    for (let attempt = 1; ; attempt++) {
      try {
        await this.launch();
        return;
      } catch (err) {
        const tail = await logTail(this.logPath);
        if (portFixed || attempt >= 3 || !/could not bind|already in use/i.test(tail)) throw err;
        await this.#childExit;
        this.port = await freePort();
        await appendFile(join(this.dataDir, 'postgresql.conf'), `port = ${this.port}\n`);
        await writeFile(this.logPath, '');
      }
    }
  }

  stop(): Promise<void> {
    this.#stopping ??= (async () => {
      await this.#shutdown();
      live.delete(this.#entry);
      await rm(this.tmpDir, { recursive: true, force: true }).catch(() => undefined);
    })();
    return this.#stopping;
  }

  async restart(): Promise<void> {
    await this.#shutdown();
    await this.launch();
  }

  /** Fast shutdown, immediate after STOP_TIMEOUT_MS. Never throws. */
  async #shutdown(): Promise<void> {
    const child = this.#child;
    try {
      if (child && child.exitCode === null && child.signalCode === null) {
        // SIGINT is "fast shutdown": abort sessions, checkpoint, exit.
        child.kill('SIGINT');
        // The child is unref()ed: only within()'s timer keeps a process that
        // has nothing else to do alive until the exit arrives (a bare
        // `await exit` ends it with "unsettled top-level await").
        if (!(await within(this.#childExit, STOP_TIMEOUT_MS))) {
          child.kill('SIGQUIT');
          await within(this.#childExit, 5_000);
        }
      }
    } catch {
      // The server is already gone; nothing to stop.
    }
  }

  /** The public face; call once the cluster is ready. */
  cluster(version: number): PgCluster {
    return {
      host: HOST,
      port: this.port,
      dataDir: this.dataDir,
      binDir: this.binDir,
      version,
      superuser: SUPERUSER,
      superuserPassword: this.superuserPassword,
      env: (extra) => this.env(extra),
      psql: (text, o = {}) => {
        const user = o.user ?? SUPERUSER;
        const password = o.password ?? (user === SUPERUSER ? this.superuserPassword : undefined);
        // An empty PGPASSWORD counts as none for libpq, so a trust/cert user sends no password.
        return this.psql(['-c', text], { PGUSER: user, PGDATABASE: o.db ?? 'postgres', PGPASSWORD: password ?? '' });
      },
      stop: () => this.stop(),
      restart: () => this.restart(),
    };
  }
}

/** The uid/gid to run the server as: PostgreSQL refuses to run as root. */
function serverIdentity(): RunAs | undefined {
  if (process.getuid?.() !== 0) return undefined;
  let passwd = '';
  try {
    passwd = readFileSync('/etc/passwd', 'utf8');
  } catch {
    // Handled below as "no such user".
  }
  const lookup = (name: string): RunAs | undefined => {
    for (const line of passwd.split('\n')) {
      const f = line.split(':');
      if (f[0] === name && f[2] !== undefined && f[3] !== undefined) {
        return { uid: Number.parseInt(f[2], 10), gid: Number.parseInt(f[3], 10) };
      }
    }
    return undefined;
  };
  const who = lookup('postgres') ?? lookup('nobody');
  if (!who) throw new Error("running as root but neither a 'postgres' nor a 'nobody' user exists to run PostgreSQL");
  return who;
}

async function copyPrivate(from: string, to: string, mode: number, runAs: RunAs | undefined): Promise<void> {
  await copyFile(from, to);
  // The server refuses a key readable by others; it must be 0600 and owned by the server user.
  await chmod(to, mode);
  if (runAs) await chown(to, runAs.uid, runAs.gid);
}

async function chownTree(path: string, runAs: RunAs | undefined): Promise<void> {
  if (!runAs) return;
  await chown(path, runAs.uid, runAs.gid);
  const st = await lstat(path);
  if (!st.isDirectory()) return;
  for (const name of await readdir(path)) await chownTree(join(path, name), runAs);
}

function renderConf(conf: Record<string, string | number | boolean>): string {
  let out = '';
  for (const [key, value] of Object.entries(conf)) out += `${key} = ${confValue(value)}\n`;
  return out;
}

function confValue(value: string | number | boolean): string {
  if (typeof value === 'boolean') return value ? 'on' : 'off';
  if (typeof value === 'number') return String(value);
  // postgresql.conf strings: single quotes doubled, backslashes escaped.
  return `'${value.replace(/\\/g, '\\\\').replace(/'/g, "''")}'`;
}

function renderHba(auth: ClusterAuth, custom: string[] | undefined): string {
  // `host` matches both SSL and plaintext connections. `all` never matches a
  // physical replication connection, so startStandby()'s pg_basebackup and
  // walreceiver need the `replication` keyword, with the superuser's method.
  const lines = [
    `host replication ${SUPERUSER} ${HOST}/32 scram-sha-256`,
    `host replication ${SUPERUSER} ::1/128 scram-sha-256`,
    `host all ${SUPERUSER} ${HOST}/32 scram-sha-256`,
    `host all ${SUPERUSER} ::1/128 scram-sha-256`,
  ];
  if (custom) lines.push(...custom);
  else if (auth === 'cert') lines.push(`hostssl all all ${HOST}/32 cert`, 'hostssl all all ::1/128 cert');
  else lines.push(`host all all ${HOST}/32 ${auth}`, `host all all ::1/128 ${auth}`);
  return `${lines.join('\n')}\n`;
}

function ident(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

function literal(value: string): string {
  // standard_conforming_strings is on by default, so only quotes need doubling.
  return `'${value.replace(/'/g, "''")}'`;
}

/** process.env without PG* variables, so a developer's own libpq settings cannot leak in. */
function cleanEnv(): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const [k, v] of Object.entries(process.env)) if (!k.startsWith('PG')) out[k] = v;
  return out;
}

interface RunOptions {
  runAs?: RunAs | undefined;
  cwd?: string;
  env: NodeJS.ProcessEnv;
  input?: string | undefined;
  timeoutMs?: number;
}

/** Runs a program to completion; resolves trimmed stdout, rejects with its stderr. */
function run(file: string, args: string[], o: RunOptions): Promise<string> {
  return new Promise((resolveRun, reject) => {
    const proc = execFile(
      file,
      args,
      {
        cwd: o.cwd,
        env: o.env,
        encoding: 'utf8',
        maxBuffer: 64 << 20,
        timeout: o.timeoutMs ?? START_TIMEOUT_MS,
        ...(o.runAs ?? {}),
      },
      (err, stdout, stderr) => {
        if (!err) return resolveRun(stdout.trim());
        const detail = stderr.trim() || stdout.trim() || err.message;
        reject(Object.assign(new Error(detail, { cause: err }), { stderr, stdout }));
      },
    );
    // Never leave a child waiting for input it will not get (e.g. a prompt).
    proc.stdin?.on('error', () => undefined);
    proc.stdin?.end(o.input ?? '');
  });
}

async function waitReady(probe: () => Promise<unknown>, childExit: Promise<void>, logPath: string): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let exited = false;
  const exit = childExit.then(() => {
    exited = true;
    return 'exited' as const;
  });
  for (;;) {
    // Raced with the exit: when the server dies (say, its port was taken), a
    // probe may be talking to whoever else holds the port and never finish.
    const outcome = await Promise.race([
      probe().then(
        () => 'ready' as const,
        () => 'not yet' as const,
      ),
      exit,
    ]);
    if (outcome === 'ready') return;
    if (outcome === 'exited' || exited) {
      throw new Error(`PostgreSQL exited during startup\n${await logTail(logPath)}`);
    }
    if (Date.now() > deadline) {
      throw new Error(`PostgreSQL did not accept connections within ${START_TIMEOUT_MS / 1000}s\n${await logTail(logPath)}`);
    }
    await delay(50);
  }
}

async function waitUntil(timeoutMs: number, check: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await delay(25);
  }
}

async function logTail(logPath: string, bytes = 4096): Promise<string> {
  try {
    const text = await readFile(logPath, 'utf8');
    return `--- ${logPath} (tail) ---\n${text.slice(-bytes)}`;
  } catch {
    return `(no log at ${logPath})`;
  }
}

function delay(ms: number): Promise<void> {
  return new Promise((done) => setTimeout(done, ms));
}

/** Resolves true when `p` settles within `ms`, else false; never leaves a timer behind. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<boolean>((done) => {
    timer = setTimeout(() => done(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true), timeout]);
  } finally {
    clearTimeout(timer);
  }
}

function registerExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // 'exit' handlers must be synchronous: SIGQUIT (immediate shutdown) needs no
  // waiting, and the postmaster takes its children down with it.
  process.on('exit', () => {
    for (const { dataDir, tmpDir } of live) {
      try {
        const pid = Number.parseInt(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0] ?? '', 10);
        if (pid > 0) process.kill(pid, 'SIGQUIT');
      } catch {
        // Already gone.
      }
      try {
        rmSync(tmpDir, { recursive: true, force: true });
      } catch {
        // Best effort: the dying server may still be writing into it.
      }
    }
    live.clear();
  });
}
