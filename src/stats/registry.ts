// Counters every side channel reads: per (database, user) traffic in
// PgBouncer's vocabulary (xact/query counts and times, bytes, wait time),
// errors by SQLSTATE class, protocol violations, TLS handshakes, cancels, and
// the query-shape table. The data path only bumps fields of an object it
// looked up once per session; labels, sorting and formatting happen when
// someone reads (metrics scrape, admin SHOW).
//
// Statement executions are queued and processed after the current I/O turn
// (setImmediate): normalizing and fingerprinting never delay forwarding.

import { Histogram, METRIC_BOUNDS_US } from './histogram.ts';
import { EventRing, History } from './history.ts';
import type { Normalizer, ShapeId } from './normalize.ts';
import { type Execution, QueryShapes, type ShapeEntry } from './shapes.ts';

/** Traffic of one (database, user): the columns of PgBouncer's SHOW STATS. Times in microseconds. */
export class TrafficStats {
  readonly database: string;
  readonly user: string;
  xacts = 0;
  queries = 0;
  received = 0;
  sent = 0;
  xactUs = 0;
  queryUs = 0;
  waitUs = 0;
  /** Times a server connection was lent to a client of this (database, user). */
  assignments = 0;
  /** Parse and Bind messages from clients; Parses Postern sent to servers (transaction-mode prepared statements). */
  parses = 0;
  binds = 0;
  serverParses = 0;
  readonly queryHist = new Histogram(METRIC_BOUNDS_US);
  readonly xactHist = new Histogram(METRIC_BOUNDS_US);
  readonly waitHist = new Histogram(METRIC_BOUNDS_US);
  constructor(database: string, user: string) {
    this.database = database;
    this.user = user;
  }
}

/** One finished statement, after normalization: what logs and the audit trail may show. */
export interface StatementRecord {
  shape: ShapeId;
  database: string;
  user: string;
  application: string;
  durationUs: number;
  rows: number;
  sqlstate: string | null;
  client: number;
}

export type StatementListener = (r: StatementRecord) => void;

/** Sums per database, the unit of SHOW STATS. */
export interface Totals {
  xacts: number;
  queries: number;
  received: number;
  sent: number;
  xactUs: number;
  queryUs: number;
  waitUs: number;
  assignments: number;
  parses: number;
  binds: number;
  serverParses: number;
}

export function zeroTotals(): Totals {
  return {
    xacts: 0,
    queries: 0,
    received: 0,
    sent: 0,
    xactUs: 0,
    queryUs: 0,
    waitUs: 0,
    assignments: 0,
    parses: 0,
    binds: 0,
    serverParses: 0,
  };
}

const TOTALS_KEYS = Object.keys(zeroTotals()) as Array<keyof Totals>;

/** Adds every counter of `t` into `into`. */
export function addTotals(into: Totals, t: Totals): void {
  for (const k of TOTALS_KEYS) into[k] += t[k];
}

/** Sums per database of per-(database, user) counters: live TrafficStats or snapshot rows. */
export function sumByDatabase(rows: Iterable<Totals & { readonly database: string }>): Map<string, Totals> {
  const out = new Map<string, Totals>();
  for (const t of rows) {
    let a = out.get(t.database);
    if (a === undefined) {
      a = zeroTotals();
      out.set(t.database, a);
    }
    addTotals(a, t);
  }
  return out;
}

/** Totals at the start of the current averaging period (SHOW STATS avg_* columns). */
interface PeriodMark {
  at: number;
  totals: Map<string, Totals>;
}

export class Stats {
  readonly #traffic = new Map<string, TrafficStats>();
  /** ErrorResponses sent to clients, by SQLSTATE class (first two characters). */
  readonly errors = new Map<string, number>();
  /** Protocol violations, by `side/kind` (side: client or server). */
  readonly violations = new Map<string, number>();
  /** Client TLS handshakes, by `version/outcome` (outcome ok or fail). */
  readonly tlsHandshakes = new Map<string, number>();
  /** Cancel requests, by outcome (forwarded, unknown). */
  readonly cancels = new Map<string, number>();
  /** Logins by method and outcome ("scram-sha-256/ok"). */
  readonly logins = new Map<string, number>();
  /** Failed logins by reason. */
  readonly loginFailures = new Map<string, number>();
  /** Passthrough tenants' sessions: `tenant/sessions`, `tenant/received_bytes`, `tenant/sent_bytes`, `tenant/seconds` (of ended sessions). */
  readonly passthrough = new Map<string, number>();
  /** Transaction-mode clients pinned to their server connection, by the feature that pinned them. */
  readonly pins = new Map<string, number>();
  /** Query shapes; null while statistics are off or the normalizer is not loaded yet. */
  shapes: QueryShapes | null = null;
  /** The dashboard's per-second history (admin.history seconds), sampled once a second off the data path. */
  readonly history = new History(900);
  /** Recent events for the dashboard: failed logins, throttling, protocol violations, server failures. */
  readonly events = new EventRing(200);
  normalizer: Normalizer | null = null;
  #queue: Array<Execution & { client: number }> = [];
  #flushScheduled = false;
  #listeners: StatementListener[] = [];
  /** log.queries or audit.statements is on: statement listeners get normalized statements. */
  textListeners = false;
  #period: PeriodMark = { at: Date.now(), totals: new Map() };
  #previous: PeriodMark | null = null;
  /** Length of the averaging period of SHOW STATS (PgBouncer's stats_period default). */
  static readonly PERIOD_MS = 60_000;

  /** The traffic record of a (database, user); sessions keep the object and bump its fields. */
  traffic(database: string, user: string): TrafficStats {
    const key = `${database}\u0000${user}`;
    let t = this.#traffic.get(key);
    if (t === undefined) {
      t = new TrafficStats(database, user);
      this.#traffic.set(key, t);
    }
    return t;
  }

  allTraffic(): TrafficStats[] {
    return [...this.#traffic.values()];
  }

  /** Query shapes on or off, and their cap (from the config; may change on reload). */
  configure(enabled: boolean, max: number): void {
    if (!enabled || this.normalizer === null) {
      this.shapes = null;
      return;
    }
    if (this.shapes === null) this.shapes = new QueryShapes(this.normalizer, max);
    else this.shapes.max = max;
  }

  /** Called for every finished statement that carries text; processed after the current I/O turn. */
  statement(e: Execution & { client: number }): void {
    this.#queue.push(e);
    if (!this.#flushScheduled) {
      this.#flushScheduled = true;
      setImmediate(this.#flush);
    }
  }

  /** Listeners of normalized statements (log.queries, audit.statements); they are called only while textListeners is true. */
  onStatement(fn: StatementListener): void {
    this.#listeners.push(fn);
  }

  /** True when someone needs statement texts: shapes on, or a listener enabled (textListeners). */
  get wantsText(): boolean {
    return this.shapes !== null || (this.textListeners && this.#listeners.length > 0);
  }

  /** A function for trackers, so a reload that turns texts on or off reaches open sessions. */
  readonly wantsTextFn = (): boolean => this.wantsText;

  #flush = (): void => {
    this.#flushScheduled = false;
    const batch = this.#queue;
    this.#queue = [];
    const shapes = this.shapes;
    const normalizer = this.normalizer;
    const notify = this.textListeners && this.#listeners.length > 0;
    for (const e of batch) {
      let shape: ShapeId | null = null;
      if (shapes !== null) {
        const entry: ShapeEntry = shapes.record(e);
        shape = { fingerprint: entry.fingerprint, normalized: entry.normalized, parsed: entry.parsed };
      }
      if (!notify) continue;
      if (shape === null) {
        if (normalizer === null) continue;
        shape = normalizer.describe(e.text);
      }
      const r: StatementRecord = {
        shape,
        database: e.database,
        user: e.user,
        application: e.application,
        durationUs: e.durationUs,
        rows: e.rows,
        sqlstate: e.sqlstate,
        client: e.client,
      };
      for (const fn of this.#listeners) fn(r);
    }
  };

  /** Janitor: rolls the averaging period of SHOW STATS. */
  tick(now: number): void {
    if (now - this.#period.at < Stats.PERIOD_MS) return;
    this.#previous = this.#period;
    this.#period = { at: now, totals: this.byDatabase() };
  }

  /** Totals per database (SHOW STATS rows). */
  byDatabase(): Map<string, Totals> {
    return sumByDatabase(this.#traffic.values());
  }

  /**
   * Averages of the last complete period (PERIOD_MS), per database, as
   * PgBouncer reports them: counts and bytes per second; transaction and
   * query times per transaction and query; wait time per server assignment.
   */
  averages(database: string): Totals {
    const prev = this.#previous;
    if (prev === null) return zeroTotals();
    const a = prev.totals.get(database) ?? zeroTotals();
    const b = this.#period.totals.get(database) ?? zeroTotals();
    const secs = Math.max((this.#period.at - prev.at) / 1000, 1);
    const dx = b.xacts - a.xacts;
    const dq = b.queries - a.queries;
    const da = b.assignments - a.assignments;
    const rate = (k: keyof Totals): number => Math.round((b[k] - a[k]) / secs);
    return {
      xacts: rate('xacts'),
      queries: rate('queries'),
      received: rate('received'),
      sent: rate('sent'),
      xactUs: dx > 0 ? Math.round((b.xactUs - a.xactUs) / dx) : 0,
      queryUs: dq > 0 ? Math.round((b.queryUs - a.queryUs) / dq) : 0,
      waitUs: da > 0 ? Math.round((b.waitUs - a.waitUs) / da) : 0,
      assignments: rate('assignments'),
      parses: rate('parses'),
      binds: rate('binds'),
      serverParses: rate('serverParses'),
    };
  }
}
