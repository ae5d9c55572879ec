// State shared by every session of one Postern instance: the loaded config,
// loggers, TLS material, the cancel-key registry and the live session set.
// Side channels (metrics, admin) read these same objects through a snapshot
// the composition root supplies (`snapshot`): this module imports nothing of
// the admin console, so the console and the sessions never import each other.

import { randomBytes, randomInt, timingSafeEqual } from 'node:crypto';
import type { StoredSecret } from './auth/secrets.ts';
import type { AuthState } from './auth/store.ts';
import { LoginThrottle } from './auth/throttle.ts';
import { PoolRegistry } from './backend/pool.ts';
import { StatementCache } from './backend/prepared.ts';
import type { ServerConn } from './backend/server-conn.ts';
import type { Config, PoolConfig } from './config/schema.ts';
import type { AuditLog } from './observability/audit.ts';
import type { Logger } from './observability/log.ts';
import type { PeerCancelPacket } from './protocol/startup.ts';
import { Stats } from './stats/registry.ts';
import type { ClientTls } from './tls/contexts.ts';
import { VERSION } from './version.ts';

/** A client as the admin console and metrics see it (PgBouncer's SHOW CLIENTS vocabulary). */
export interface ClientInfo {
  id: number;
  /** login (negotiating, authenticating), waiting (for a server), active (logged in), closed. */
  state: 'login' | 'waiting' | 'active' | 'closed';
  database: string;
  user: string;
  addr: string;
  port: number;
  localAddr: string;
  localPort: number;
  connectTime: number;
  requestTime: number;
  /** performance.now() when it began waiting for a server; 0 when not waiting. */
  waitingSince: number;
  /** Postern's cancel pid for this client. */
  pid: number | null;
  tls: string;
  applicationName: string;
  poolKey: string | null;
  admin: boolean;
  pinned: string | null;
  /** Named prepared statements the client has (tracked in transaction mode). */
  preparedStatements: number;
  /** Bytes queued for the client and not yet taken by its socket (backpressure holds the server back beyond a few chunks). */
  outBuffered: number;
  /** Bytes read from the client so far. */
  bytesIn: number;
  server: ServerConn | null;
  /** A passthrough session with its own server connection (no pool). */
  relayed: boolean;
  /** The tenant chosen by the TLS server name; null: the top-level databases. */
  tenant: string | null;
  /** The TLS server name (SNI) the client sent; null when none (or no TLS). */
  serverName: string | null;
  /** plain, terminated (Postern's TLS), or passthrough (the server's TLS, spliced unopened). */
  tlsRoute: 'plain' | 'terminated' | 'passthrough';
}

/** What the admin console may ask of the running instance. */
export interface Control {
  /** RELOAD: re-read the config file and auth files; the problems, empty on success. */
  reload(): Array<{ path: string; message: string }>;
  /** The settings changed in the config file that need a restart, as of the last successful reload. */
  unapplied(): string[];
  /** SET key = value for a reloadable setting; the problems, empty on success. */
  set(key: string, value: string): Array<{ path: string; message: string }>;
  /** SHUTDOWN. */
  shutdown(): void;
}

/** The other worker processes, when Postern runs several (workers: N; src/cluster). */
export interface Peers {
  /** This worker's index (0-based) and the number of workers. */
  readonly index: number;
  readonly count: number;
  /** Runs a control command (admin/control.ts) in every worker, this one included; resolves with every outcome. */
  everywhere(cmd: unknown, who: string, alive: () => boolean): Promise<unknown[]>;
  /** A cancel request no session of this worker owns: the worker that does checks the key. */
  cancel(pid: number, key: Buffer): void;
}

/** Bits of a pid below the instance number (cluster.instance_id sits above them). */
export const PID_BITS = 23;

/**
 * The other Postern instances behind the same load balancer (cluster.*): the
 * handshake hands them the cancel requests this instance does not own, and
 * asks them to check the signed ones other instances forward.
 */
export interface Instances {
  /** cluster.instance_id, or null: the pid bits of cancel keys say nothing then. */
  readonly id: number | null;
  /** Whether a cancel for this pid may belong to another instance. */
  remote(pid: number): boolean;
  /** Sends a cancel request this instance does not own to the instance(s) that may. */
  forward(pid: number, key: Buffer): void;
  /** Checks a forwarded cancel (MAC, clock, replay, instance); why it is refused, or null to act on it. */
  check(p: PeerCancelPacket): string | null;
}

/** What an admin console session needs from its client session (the console itself lives in admin/). */
export interface AdminHooks {
  write(b: Buffer): void;
  onTerminate(): void;
  onFatal(code: string, message: string): void;
  onInternalError(err: unknown): void;
  pause(): void;
  resume(): void;
}

/** One admin console session, as a client session drives it. */
export interface AdminSession {
  onFrame(type: number, buf: Buffer, start: number, end: number): void;
  close(): void;
}

/** Makes an admin console session; supplied by the composition root, so sessions never import the console. */
export type AdminFactory = (
  who: { readOnly: boolean; clientId: number; user: string; alive: () => boolean },
  hooks: AdminHooks,
) => AdminSession;

/** What a session exposes to the rest of Postern. */
export interface SessionHandle {
  readonly id: number;
  /** Postern's cancel key for this client. */
  readonly cancelKey: Buffer;
  /** Forward a cancel to whichever server currently runs this client's query. */
  cancel(): void;
  /** Ask the session to end now (shutdown), with an optional FATAL to the client. */
  terminate(code: string, message: string): void;
  /** Janitor tick: coarse per-session deadlines (idle timeouts). */
  tick(now: number): void;
  /** State for admin output and metrics. */
  info(): ClientInfo;
}

export class Context {
  config: Config;
  log: Logger;
  clientTls: ClientTls | null;
  readonly sessions = new Set<SessionHandle>();
  readonly #byPid = new Map<number, SessionHandle>();
  #nextId = 1;
  #shared: { from: PoolConfig; value: PoolConfig } | null = null;
  shuttingDown = false;
  auth: AuthState;
  readonly throttle: LoginThrottle;
  /** Secrets fetched by auth_query: user@database -> entry. */
  readonly lookupCache = new Map<string, { secret: StoredSecret | null; expires: number }>();
  readonly pools: PoolRegistry;
  /** Protocol-level prepared statements, shared by every transaction-mode session. */
  readonly statements = new StatementCache();
  /** Traffic, errors, query shapes: what metrics and the admin console report. */
  readonly stats = new Stats();
  /** The audit trail; null when audit.file is unset. */
  audit: AuditLog | null = null;
  /** The admin console's sessions; set by the Postern instance. */
  adminConsole: AdminFactory | null = null;
  /** RELOAD and SHUTDOWN for the admin console; set by the Postern instance. */
  control: Control | null = null;
  /**
   * The instance as the admin console and metrics show it: every worker's
   * state merged, or this process's. Set by the composition root (server.ts),
   * which knows how snapshots are collected and merged.
   */
  snapshot: () => Promise<unknown> = () => Promise.reject(new Error('no snapshot source'));

  /** The other worker processes; null when this process serves alone. */
  peers: Peers | null = null;
  /** The other instances of the cluster (cluster.*); null when none are configured. */
  instances: Instances | null = null;
  readonly version = VERSION;
  readonly startedAt = Date.now();

  constructor(config: Config, log: Logger, clientTls: ClientTls | null, auth: AuthState) {
    this.config = config;
    this.log = log;
    this.clientTls = clientTls;
    this.auth = auth;
    this.pools = new PoolRegistry(
      log,
      () => this.#poolShare(),
      () => this.config.limits.max_message_size,
    );
    const a = config.auth;
    this.throttle = new LoginThrottle({ windowMs: a.throttle_window, maxFailures: a.throttle_max_failures, delayMs: a.throttle_delay });
  }

  count(map: Map<string, number>, key: string): void {
    map.set(key, (map.get(key) ?? 0) + 1);
  }

  /** The pool settings with this process's share of the global connection limits (0 = unlimited stays 0). */
  #poolShare(): PoolConfig {
    const pool = this.config.pool;
    if (this.peers === null || this.peers.count <= 1) return pool;
    if (this.#shared?.from === pool) return this.#shared.value;
    const value: PoolConfig = {
      ...pool,
      min_pool_size: this.share(pool.min_pool_size),
      reserve_pool_size: this.share(pool.reserve_pool_size),
      max_db_connections: pool.max_db_connections === 0 ? 0 : this.share(pool.max_db_connections),
      max_user_connections: pool.max_user_connections === 0 ? 0 : this.share(pool.max_user_connections),
    };
    this.#shared = { from: pool, value };
    return value;
  }

  nextId(): number {
    // Ids stay unique over all worker processes: worker i of n hands out i+1, i+1+n, ...
    const id = this.#nextId;
    this.#nextId += this.peers?.count ?? 1;
    return id;
  }

  /** Starts the id sequence of worker `index` (see nextId). */
  setIdBase(index: number): void {
    this.#nextId = index + 1;
  }

  /**
   * This process's share of a limit that is global over all worker
   * processes (max_client_conn, pool sizes): split evenly, the first workers
   * taking the remainder, so the shares add up to the limit exactly.
   */
  share(total: number): number {
    const p = this.peers;
    if (p === null || p.count <= 1) return total;
    return Math.floor(total / p.count) + (p.index < total % p.count ? 1 : 0);
  }

  /** A CancelRequest: forwards it when a live session of this process has that key; false otherwise. */
  cancelByKey(pid: number, key: Buffer): boolean {
    const target = this.#byPid.get(pid);
    if (target === undefined || target.cancelKey.length !== key.length || !timingSafeEqual(target.cancelKey, key)) return false;
    this.count(this.stats.cancels, 'forwarded');
    target.cancel();
    return true;
  }

  /** A fresh (pid, key) pair unique among live sessions. Key length 4 for protocol 3.0, 32 for 3.2. */
  issueCancelKey(keyLength: number): { pid: number; key: Buffer } {
    const instance = this.instances?.id ?? null;
    for (;;) {
      // Positive Int32 like a real backend pid; random so keys cannot be guessed in sequence.
      // With cluster.instance_id, its top 8 bits name this instance (pid_bits of the rest).
      const pid = instance === null ? randomInt(1, 0x7fffffff) : (instance << PID_BITS) | randomInt(1, 1 << PID_BITS);
      if (!this.#byPid.has(pid)) return { pid, key: randomBytes(keyLength) };
    }
  }

  register(pid: number, s: SessionHandle): void {
    this.sessions.add(s);
    this.#byPid.set(pid, s);
  }

  track(s: SessionHandle): void {
    this.sessions.add(s);
  }

  unregister(pid: number | null, s: SessionHandle): void {
    this.sessions.delete(s);
    if (pid !== null && this.#byPid.get(pid) === s) this.#byPid.delete(pid);
  }

  byPid(pid: number): SessionHandle | undefined {
    return this.#byPid.get(pid);
  }
}
