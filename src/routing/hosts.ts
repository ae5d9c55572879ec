// The servers of each database and what the health checks know of them:
// role (primary or standby, discovered, never configured), up or down, WAL
// position and replay lag. A HostSet answers one question for the router:
// which server may serve this need now (target_session_attrs, a read a
// standby may take, a client that must see its own write), balanced as the
// database asks. It holds no connection; the pools (one per server) and the
// health checker (health.ts) act on what it says.

import type { ServerTarget } from '../backend/server-conn.ts';
import type { DatabaseConfig, LoadBalance, ReplicaLag, TargetSessionAttrs } from '../config/schema.ts';

export const ROLE = { Primary: 'primary', Standby: 'standby', Unknown: 'unknown' } as const;
export type Role = (typeof ROLE)[keyof typeof ROLE];

/** What a server connection is wanted for. */
export const NEED = {
  /** A session, or a transaction not proven read-only: target_session_attrs decides, a write prefers the primary. */
  Any: 'any',
  /** A transaction proven read-only (read_write_split): a usable standby, else the primary. */
  Read: 'read',
  /** A transaction that may write (read_write_split): the primary. */
  Write: 'write',
} as const;
export type Need = (typeof NEED)[keyof typeof NEED];

/** A WAL position ("16/B374D848") as a number of bytes; null when absent or malformed. */
export function parseLsn(text: string | null | undefined): bigint | null {
  if (text === null || text === undefined) return null;
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text);
  if (m === null) return null;
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

export class Host {
  readonly database: string;
  /** "host:port", the server's name in logs, SHOW HOSTS and metrics. */
  readonly addr: string;
  readonly target: ServerTarget;
  role: Role = ROLE.Unknown;
  /** transaction_read_only of a new session there (a primary can be read-only by default_transaction_read_only). */
  readOnly = false;
  /** False once failure_threshold checks in a row failed; true again at the next passing check. */
  up = true;
  /** A check has completed (passed or failed) since the server was listed. */
  checked = false;
  failures = 0;
  /** Primary: its current WAL position; standby: the position it has replayed. */
  lsn: bigint | null = null;
  /** When the check that read `lsn` was sent (Date.now()). */
  lsnAt = 0;
  /** A primary's timeline: of two primaries, the one on the higher timeline is the promoted one. */
  timeline = 0;
  /** Standby replay lag against the primary, in bytes and milliseconds; null when unknown. */
  lagBytes: number | null = null;
  lagMs: number | null = null;
  lastCheck = 0;
  lastError: string | null = null;

  /** The database name within its scope, and the scope (see router.ts). */
  readonly name: string;
  readonly tenant: string | null;

  constructor(database: string, target: ServerTarget, name = database, tenant: string | null = null) {
    this.database = database;
    this.name = name;
    this.tenant = tenant;
    this.target = target;
    this.addr = target.host.includes(':') ? `[${target.host}]:${target.port}` : `${target.host}:${target.port}`;
  }

  /** The state word SHOW HOSTS and the metrics use. */
  get state(): 'up' | 'down' | 'unchecked' {
    if (!this.up) return 'down';
    return this.checked ? 'up' : 'unchecked';
  }

  lagging(limit: ReplicaLag | undefined): boolean {
    if (limit === undefined || this.role !== ROLE.Standby) return false;
    if (limit.bytes !== undefined) return this.lagBytes === null || this.lagBytes > limit.bytes;
    return this.lagMs === null || this.lagMs > limit.ms;
  }
}

/** Why a server did not qualify, in libpq's words where libpq has them (the detail of the error a client gets). */
function refusal(h: Host, attrs: TargetSessionAttrs, need: Need): string {
  if (!h.up) return `${h.addr}: down (${h.lastError ?? 'health checks failed'})`;
  if (h.role === ROLE.Unknown) return `${h.addr}: role not known yet`;
  if (need === NEED.Write && h.role === ROLE.Standby) return `${h.addr}: server is in hot standby mode`;
  switch (attrs) {
    case 'read-write':
      return h.role === ROLE.Standby ? `${h.addr}: server is in hot standby mode` : `${h.addr}: session is read-only`;
    case 'read-only':
      return `${h.addr}: session is not read-only`;
    case 'primary':
      return `${h.addr}: server is in hot standby mode`;
    case 'standby':
      return `${h.addr}: server is not in hot standby mode`;
    default:
      return `${h.addr}: lags behind the primary`;
  }
}

/** A client's pending read-your-writes: its last write ended at `wroteAt`; `lsn` is the primary position it must see, once known. */
export interface WriteMark {
  wroteAt: number;
  lsn: bigint | null;
}

export class HostSet {
  readonly database: string;
  hosts: Host[];
  db: DatabaseConfig;
  #next = 0;

  /** The database name within its scope, and the scope (see router.ts); `database` is the label. */
  readonly name: string;
  readonly tenant: string | null;

  constructor(database: string, db: DatabaseConfig, hosts: Host[], name = database, tenant: string | null = null) {
    this.database = database;
    this.name = name;
    this.tenant = tenant;
    this.db = db;
    this.hosts = hosts;
  }

  /** More than one server, or a role that must be known: the health checker watches this set. */
  get watched(): boolean {
    return this.hosts.length > 1 || this.db.target_session_attrs !== 'any' || this.db.read_write_split;
  }

  /** The primary writes go to: of several, the one on the highest timeline (a promoted standby beats the old primary come back). */
  get primary(): Host | null {
    let best: Host | null = null;
    for (const h of this.hosts)
      if (
        h.up &&
        h.role === ROLE.Primary &&
        (best === null || h.timeline > best.timeline || (h.timeline === best.timeline && h.lsnAt > best.lsnAt))
      )
        best = h;
    return best;
  }

  /** Does the server match the database's target_session_attrs (as far as the checks know)? */
  #matches(h: Host, attrs: TargetSessionAttrs, primary: Host | null): boolean {
    if (!h.up) return false;
    // An unchecked server of a single-server database with attrs 'any' is simply used.
    if (attrs === 'any' || attrs === 'prefer-standby') return h.role !== ROLE.Primary || primary === null || h === primary;
    if (h.role === ROLE.Unknown) return false;
    switch (attrs) {
      case 'read-write':
        return h === primary && !h.readOnly;
      case 'primary':
        return h === primary;
      case 'read-only':
        return h.role === ROLE.Standby || h.readOnly;
      case 'standby':
        return h.role === ROLE.Standby;
      default:
        return attrs satisfies never;
    }
  }

  /**
   * The server for a need, or null when none qualifies now. `exclude`: a
   * server that just failed this client's connect. `mark`: the client's
   * last write, for read-your-writes.
   */
  pick(need: Need, counts: (h: Host) => number, exclude: Host | null = null, mark: WriteMark | null = null): Host | null {
    const db = this.db;
    const attrs = db.target_session_attrs;
    const primary = this.primary;
    const lag = db.max_replica_lag;
    const ok: Host[] = [];
    for (const h of this.hosts) if (h !== exclude && this.#matches(h, attrs, primary) && !h.lagging(lag)) ok.push(h);
    if (ok.length === 0) return null;
    let pool = ok;
    if (need === NEED.Write) {
      // A write never goes to a standby: without a primary it waits (a failover) or is refused.
      pool = ok.filter((h) => h === primary);
      if (pool.length === 0) return null;
    } else if (need === NEED.Read) {
      const mustSee = mark !== null && db.read_your_writes ? this.#mustSee(mark) : -1n;
      const standbys = ok.filter((h) => h.role === ROLE.Standby && (mustSee < 0n || (h.lsn !== null && h.lsn >= mustSee)));
      if (standbys.length > 0) pool = standbys;
      else {
        const p = ok.filter((h) => h === primary);
        if (p.length > 0) pool = p;
      }
    } else if (attrs === 'prefer-standby') {
      const standbys = ok.filter((h) => h.role === ROLE.Standby);
      if (standbys.length > 0) pool = standbys;
    }
    return this.#balance(pool, db.load_balance, counts);
  }

  /**
   * The primary position a client must see after its write: the primary's
   * WAL position read by a check sent after the write ended (it covers the
   * commit). Until such a check has come back: past any position (primary only).
   */
  #mustSee(mark: WriteMark): bigint {
    if (mark.lsn !== null) return mark.lsn;
    const p = this.primary;
    if (p !== null && p.lsn !== null && p.lsnAt > mark.wroteAt) {
      mark.lsn = p.lsn;
      return p.lsn;
    }
    return (1n << 64n) - 1n;
  }

  #balance(hosts: Host[], how: LoadBalance, counts: (h: Host) => number): Host {
    if (hosts.length === 1) return hosts[0] as Host;
    switch (how) {
      case 'random':
        return hosts[Math.floor(Math.random() * hosts.length)] as Host;
      case 'least-connections': {
        let best = hosts[0] as Host;
        let least = counts(best);
        for (let i = 1; i < hosts.length; i++) {
          const h = hosts[i] as Host;
          const n = counts(h);
          if (n < least) {
            best = h;
            least = n;
          }
        }
        return best;
      }
      case 'round-robin':
        return hosts[this.#next++ % hosts.length] as Host;
      default:
        return how satisfies never;
    }
  }

  /**
   * Nothing qualifies for `need`, but a check may change that soon: a server
   * not checked yet, failing but not yet down, or lagging; or a primary is
   * needed, there is none, and a server is down (a failover in progress).
   * Otherwise nothing will change by waiting: the client is refused at once,
   * as libpq would refuse it.
   */
  unsettled(need: Need): boolean {
    const lag = this.db.max_replica_lag;
    // A role not known yet becomes known once a check can log in (a client's login may bring the credentials).
    for (const h of this.hosts) if (!h.checked || (h.up && (h.failures > 0 || h.role === ROLE.Unknown)) || h.lagging(lag)) return true;
    const attrs = this.db.target_session_attrs;
    const needsPrimary = need === NEED.Write || attrs === 'read-write' || attrs === 'primary';
    return needsPrimary && this.primary === null && this.hosts.some((h) => !h.up);
  }

  /** The error detail when nothing qualifies: each server and why not. */
  refusals(need: Need = NEED.Any): string {
    return this.hosts.map((h) => refusal(h, this.db.target_session_attrs, need)).join('; ');
  }
}
