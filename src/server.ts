// Composition root: builds the shared context from a validated config, opens
// the client listener, supplies the admin console and snapshots, and owns start/close and
// the graceful shutdown (stop accepting, let sessions finish, then end them).

import net from 'node:net';
import { AdminConsole } from './admin/console.ts';
import { Dashboard, dashboardHostOf } from './admin/dashboard.ts';
import { adminExecutor } from './admin/executor.ts';
import { HistorySampler } from './admin/sampler.ts';
import { collect, snapshotOf } from './admin/snapshot.ts';
import { loadAuthState } from './auth/store.ts';
import { InstancePeers } from './cluster/instances.ts';
import { keepRestartSettings, loadConfigFile } from './config/load.ts';
import { type Config, type DatabaseConfig, SETTINGS } from './config/schema.ts';
import { Context, type Peers } from './context.ts';
import { ClientSession } from './frontend/session.ts';
import { AdminHttp } from './metrics/http.ts';
import { AuditLog, statementFields } from './observability/audit.ts';
import { createLogger, type Logger } from './observability/log.ts';
import { SQLSTATE } from './protocol/sqlstate.ts';
import { routingOf } from './routing/router.ts';
import { loadReadOnlyParser } from './sql/readonly.ts';
import { loadNormalizer } from './stats/normalize.ts';
import type { StatementRecord } from './stats/registry.ts';
import { type CertificateTable, ClientTls, checkServerTls, clientTlsConfigured, loadCertificates, TlsFilesError } from './tls/contexts.ts';
import { TlsWatcher, tlsFiles } from './tls/watch.ts';

export interface PosternOptions {
  logger?: Logger;
  /** The config file, for RELOAD from the admin console (SIGHUP passes it itself). */
  configFile?: string;
  /** The other worker processes (workers: N); absent when this process serves alone. */
  peers?: Peers;
  /** Serve admin.listen from this process (default true; workers leave it to the primary). */
  adminHttp?: boolean;
}

export interface Address {
  host: string;
  port: number;
}

export class Postern {
  readonly ctx: Context;
  #listener: net.Server | null = null;
  #closed = false;
  /** Every accepted socket, so a shutdown can end stragglers instead of waiting on them forever. */
  #sockets = new Set<net.Socket>();
  /** The janitor: one coarse tick for every pool (wait timeouts, idle and lifetime limits, min_pool_size). */
  #janitor: NodeJS.Timeout;
  #configFile: string | undefined;
  /** Settings changed in the config file that need a restart (as of the last reload). */
  #unapplied: string[] = [];
  #adminHttp: boolean;
  #http: AdminHttp | null = null;
  /** tls.watch: reloads the TLS files when they change on disk. */
  #watcher: TlsWatcher | null = null;
  /** The dashboard's once-a-second history points (every process keeps its own; the primary merges them). */
  readonly #sampler: HistorySampler;
  /** Bound port of the admin HTTP listener (admin.listen); null when there is none. */
  adminPort: number | null = null;
  #stopped!: () => void;
  /** Resolves once shutdown() has finished (SIGTERM, or SHUTDOWN from the admin console). */
  readonly stopped = new Promise<void>((r) => {
    this.#stopped = r;
  });

  constructor(config: Config, opts: PosternOptions = {}) {
    const log = opts.logger ?? createLogger(config.log.level);
    const clientTls = clientTlsConfigured(config) ? new ClientTls(config) : null;
    const auth = loadAuthState(config);
    if (auth.problems.length > 0) {
      throw new Error(`invalid authentication files:\n${auth.problems.map((p) => `  ${p.path}: ${p.message}`).join('\n')}`);
    }
    this.ctx = new Context(config, log, clientTls, auth.state);
    this.ctx.adminConsole = (who, hooks) => {
      const exec = adminExecutor(this.ctx, who);
      return new AdminConsole({ execute: exec.execute, describe: exec.describe, ...hooks });
    };
    // This process's snapshot; a worker replaces it with every worker's, merged.
    this.ctx.snapshot = () => Promise.resolve(collect(this.ctx, this.ctx.peers?.index ?? 0));
    this.#configFile = opts.configFile;
    this.#adminHttp = opts.adminHttp !== false;
    if (opts.peers !== undefined) {
      this.ctx.peers = opts.peers;
      this.ctx.setIdBase(opts.peers.index);
    }
    const cl = config.cluster;
    if (cl.instance_id !== undefined || cl.peers.length > 0 || cl.peers_dns !== undefined) {
      this.ctx.instances = new InstancePeers(cl.instance_id ?? null, () => this.ctx.config.cluster, log);
    }
    this.ctx.control = {
      reload: () => this.reload(this.#configFile),
      unapplied: () => this.#unapplied,
      set: (key, value) => this.set(key, value),
      // PgBouncer's SHUTDOWN is immediate: sessions get FATAL 57P01 at once.
      shutdown: () => void this.shutdown(0),
    };
    if (config.audit.file !== undefined) this.ctx.audit = new AuditLog(config.audit.file, config.audit.statements);
    this.ctx.stats.onStatement(this.#onStatement);
    this.ctx.stats.history.resize(config.admin.history / 1000);
    this.#sampler = new HistorySampler(this.ctx);
    this.#janitor = setInterval(() => {
      const now = Date.now();
      this.ctx.pools.tick(now);
      routingOf(this.ctx).tick(now);
      for (const s of this.ctx.sessions) s.tick(now);
      this.ctx.stats.tick(now);
    }, 1000);
    this.#janitor.unref();
  }

  get configFile(): string | undefined {
    return this.#configFile;
  }

  get log(): Logger {
    return this.ctx.log;
  }

  /** Normalized statements for log.queries and audit.statements; never literal values. */
  #onStatement = (r: StatementRecord): void => {
    const cfg = this.ctx.config;
    if (cfg.log.queries) this.log.info(statementFields(r), 'query');
    this.ctx.audit?.statement(r);
  };

  /** Statement texts are decoded only when something uses them. */
  #applyStats(config: Config): void {
    const stats = this.ctx.stats;
    stats.configure(config.stats.queries, config.stats.max_queries);
    stats.textListeners = config.log.queries || (this.ctx.audit !== null && config.audit.statements);
    if (this.ctx.audit !== null) this.ctx.audit.statements = config.audit.statements;
  }

  /** The read/write split needs the PostgreSQL parser: loaded once a database asks for it. */
  #applyRouting(config: Config): Promise<void> {
    routingOf(this.ctx).refresh();
    const dbs = [...Object.values(config.databases), ...Object.values(config.tenants).flatMap((t) => Object.values(t.databases))];
    if (!dbs.some((d) => d.read_write_split)) return Promise.resolve();
    return loadReadOnlyParser().catch((e: Error) => {
      this.log.error({ err: e.message }, 'cannot load the PostgreSQL parser; read_write_split sends everything to the primary');
    });
  }

  /** Starts listening; resolves with the bound address (port 0 picks a free port). */
  async listen(): Promise<Address> {
    const cfg = this.ctx.config;
    if (cfg.stats.queries || cfg.log.queries || cfg.audit.statements) {
      // The real PostgreSQL parser (WASM) loads once, before the first client.
      this.ctx.stats.normalizer = await loadNormalizer();
    }
    this.#applyStats(cfg);
    await this.#applyRouting(cfg);
    this.#watch(cfg);
    routingOf(this.ctx).checker.start();
    this.#sampler.start();
    if (cfg.admin.listen !== undefined && this.#adminHttp) {
      const { http, port } = await AdminHttp.start(
        cfg.admin.listen,
        () => snapshotOf(this.ctx),
        () => this.#listener?.listening === true && !this.ctx.shuttingDown,
        () => this.ctx.config.databases,
        this.log,
        { tls: cfg.admin.tls, dashboard: cfg.admin.dashboard ? new Dashboard(dashboardHostOf(this.ctx), this.log) : null },
      );
      this.#http = http;
      this.adminPort = port;
    }
    return this.#listenClients();
  }

  #listenClients(): Promise<Address> {
    const { host, port } = this.ctx.config.listen;
    const server = net.createServer({ noDelay: true }, (socket) => {
      if (this.ctx.shuttingDown) {
        socket.destroy();
        return;
      }
      this.#sockets.add(socket);
      socket.once('close', () => this.#sockets.delete(socket));
      new ClientSession(this.ctx, socket);
    });
    this.#listener = server;
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host, port, backlog: 1024 }, () => {
        server.removeListener('error', reject);
        const a = server.address() as net.AddressInfo;
        this.log.info({ host: a.address, port: a.port, tls: this.ctx.clientTls !== null, mode: this.ctx.config.tls.mode }, 'listening');
        resolve({ host: a.address, port: a.port });
      });
    });
  }

  get address(): Address | null {
    const a = this.#listener?.address();
    return a && typeof a === 'object' ? { host: a.address, port: a.port } : null;
  }

  /**
   * Re-reads the authentication files (hba, ident, users) and, when given,
   * the config file's reloadable settings. Builds a complete new snapshot and
   * swaps it in only if everything is valid; open sessions keep what they
   * logged in with. Returns the problems (empty on success).
   */
  reload(configFile?: string): Array<{ path: string; message: string }> {
    let config = this.ctx.config;
    let unapplied = this.#unapplied;
    if (configFile !== undefined) {
      const loaded = loadConfigFile(configFile);
      if (!loaded.ok) return loaded.problems;
      // Settings that need a restart keep their running values (and are reported); the TLS files are reloadable.
      const kept = keepRestartSettings(this.ctx.config, loaded.config);
      config = { ...kept.config, databases: mergeDatabases(kept.config) };
      unapplied = kept.unapplied;
    }
    const auth = loadAuthState(config);
    if (auth.problems.length > 0) {
      this.log.warn({ problems: auth.problems }, 'reload refused: authentication files are invalid');
      return auth.problems;
    }
    // Every TLS file is read again (a certificate replaced under the same name too), and checked before anything changes.
    const tls = this.#loadTls(config);
    if (!Array.isArray(tls)) {
      this.log.warn({ problems: tls.problems }, 'reload refused: TLS files do not load; the running certificates stay');
      return tls.problems;
    }
    this.ctx.auth = auth.state;
    this.ctx.lookupCache.clear();
    this.#apply(config);
    this.#applyTls(config, tls);
    this.#unapplied = unapplied;
    if (unapplied.length > 0)
      this.log.warn({ settings: unapplied }, 'reloaded; changed settings that need a restart keep their running values');
    this.log.info({ users: auth.state.users.size, hbaRules: auth.state.hba?.length ?? null }, 'reloaded');
    return [];
  }

  /**
   * The TLS files of a config, loaded and checked: the client-side
   * certificate table (null without TLS toward clients), or the problems.
   * Server-side files are checked here and read again by the router.
   */
  #loadTls(config: Config): [CertificateTable | null] | TlsFilesError {
    const problems: Array<{ path: string; message: string }> = [];
    let table: CertificateTable | null = null;
    if (clientTlsConfigured(config)) {
      try {
        table = loadCertificates(config);
      } catch (e) {
        if (!(e instanceof TlsFilesError)) throw e;
        problems.push(...e.problems);
      }
    }
    for (const [name, db] of Object.entries(config.databases)) problems.push(...checkServerTls(db, `databases.${name}`));
    for (const [t, tenant] of Object.entries(config.tenants))
      for (const [name, db] of Object.entries(tenant.databases)) problems.push(...checkServerTls(db, `tenants.${t}.databases.${name}`));
    if (config.admin.tls.cert !== undefined && config.admin.tls.key !== undefined && this.#http !== null) {
      const p = this.#http.checkTls(config.admin.tls);
      if (p !== null) problems.push(p);
    }
    return problems.length > 0 ? new TlsFilesError(problems) : [table];
  }

  /** Checked TLS files take effect for new handshakes and connections; open ones keep theirs. */
  #applyTls(config: Config, [table]: [CertificateTable | null]): void {
    if (table === null) this.ctx.clientTls = null;
    else if (this.ctx.clientTls === null) this.ctx.clientTls = new ClientTls(config, table);
    else this.ctx.clientTls.replace(table);
    routingOf(this.ctx).reloadServerTls();
    if (config.admin.tls.cert !== undefined && config.admin.tls.key !== undefined) this.#http?.replaceTls(config.admin.tls);
    this.#watch(config);
  }

  /** tls.watch: the TLS files of this config are watched (or no longer). */
  #watch(config: Config): void {
    this.#watcher?.stop();
    this.#watcher = null;
    if (!config.tls.watch || this.#closed) return;
    this.#watcher = new TlsWatcher(tlsFiles(config), () => this.reloadTls());
  }

  /** The TLS files read again with the running config (tls.watch saw a change); the problems, empty on success. */
  reloadTls(): Array<{ path: string; message: string }> {
    const config = this.ctx.config;
    const tls = this.#loadTls(config);
    if (!Array.isArray(tls)) {
      this.log.warn({ problems: tls.problems }, 'TLS files changed but do not load; the running certificates stay');
      return tls.problems;
    }
    this.#applyTls(config, tls);
    this.log.info('TLS files reloaded');
    return [];
  }

  /** Makes `config` the running configuration: every reloadable setting takes effect. */
  #apply(config: Config): void {
    this.ctx.config = config;
    const a = config.auth;
    this.ctx.throttle.configure({ windowMs: a.throttle_window, maxFailures: a.throttle_max_failures, delayMs: a.throttle_delay });
    this.log.level = config.log.level;
    this.ctx.stats.history.resize(config.admin.history / 1000);
    if (this.ctx.stats.normalizer === null && (config.stats.queries || config.log.queries || config.audit.statements)) {
      // Turned on at run time: statistics start once the parser has loaded.
      loadNormalizer().then(
        (n) => {
          this.ctx.stats.normalizer = n;
          this.#applyStats(this.ctx.config);
        },
        (e: Error) => this.log.error({ err: e.message }, 'cannot load the PostgreSQL parser; query statistics stay off'),
      );
    }
    this.#applyStats(config);
    void this.#applyRouting(config);
  }

  /**
   * SET key = value from the admin console: one reloadable setting, checked
   * by its row of the settings table. Returns the problems (empty on success).
   */
  set(key: string, value: string): Array<{ path: string; message: string }> {
    const row = SETTINGS.find((s) => s.key === key);
    if (row === undefined || key.includes('*')) return [{ path: key, message: 'unknown setting' }];
    if (!row.reloadable) return [{ path: key, message: 'cannot be changed while running: edit the config file and restart' }];
    let raw: unknown = value;
    if (row.kind === 'int') raw = /^-?\d+$/.test(value) ? Number(value) : value;
    else if (row.kind === 'bool') {
      const v = value.toLowerCase();
      raw = ['on', 'true', 'yes', '1'].includes(v) ? true : ['off', 'false', 'no', '0'].includes(v) ? false : value;
    }
    const parsed = row.schema.safeParse(raw);
    if (!parsed.success) return [{ path: key, message: parsed.error.issues.map((i) => i.message).join('; ') }];
    const config = structuredClone(this.ctx.config);
    const parts = key.split('.');
    let obj = config as unknown as Record<string, unknown>;
    for (const p of parts.slice(0, -1)) {
      obj[p] ??= {};
      obj = obj[p] as Record<string, unknown>;
    }
    obj[parts[parts.length - 1] as string] = parsed.data;
    this.#apply(config);
    // The value is not logged: the settings table decides what is secret.
    this.log.info({ setting: key, isSecret: row.secret === true }, 'setting changed from the admin console');
    return [];
  }

  /**
   * Graceful shutdown: stop accepting, wait up to `timeoutMs` for sessions to
   * end on their own, then end the rest with FATAL 57P01 as Postgres does on a
   * fast shutdown.
   */
  async shutdown(timeoutMs = this.ctx.config.limits.shutdown_timeout): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.ctx.shuttingDown = true;
    const listener = this.#listener;
    const closed = listener ? new Promise<void>((r) => listener.close(() => r())) : Promise.resolve();
    const deadline = Date.now() + timeoutMs;
    while (this.ctx.sessions.size > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const s of [...this.ctx.sessions]) s.terminate(SQLSTATE.AdminShutdown, 'terminating connection due to administrator command');
    clearInterval(this.#janitor);
    this.#watcher?.stop();
    this.#sampler.stop();
    routingOf(this.ctx).checker.stop();
    this.ctx.pools.closeAll();
    await this.#http?.close();
    this.ctx.audit?.close();
    // Sessions were told goodbye; a peer that never closes its end must not hold the process.
    const grace = new Promise<void>((r) => setTimeout(r, 2000).unref());
    await Promise.race([closed, grace]);
    for (const sock of this.#sockets) sock.destroy();
    await closed;
    this.log.info('shut down');
    this.#stopped();
  }

  /** Immediate close (tests): every session ends now. */
  async close(): Promise<void> {
    await this.shutdown(0);
  }
}

/**
 * The databases of a reloaded config, all of them: added ones are served at
 * once, changed ones get new pools (the old ones' connections close as they
 * come back), removed ones end their sessions between transactions.
 */
function mergeDatabases(next: Config): Record<string, DatabaseConfig> {
  return next.databases;
}
