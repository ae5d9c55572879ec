// The query-shape table behind SHOW QUERIES and the per-shape metrics: calls,
// errors, rows and a latency histogram per (fingerprint, database, user,
// application_name), in the spirit of pg_stat_statements but measured at the
// gateway (so the time includes the network between Postern and the server).
//
// Memory is bounded by `max` entries. When a new shape would exceed it, the
// least used entries (fewest calls, then least recently seen) are evicted in
// one batch down to 90% of max: one linear selection pays for the next 10% of
// max new shapes, so eviction costs O(1) per record amortized, and a table
// at its cap does not evict on every new shape.

import { Histogram, SHAPE_BOUNDS_US } from './histogram.ts';
import type { Normalizer } from './normalize.ts';

/** One finished statement, as the session reports it. */
export interface Execution {
  text: string;
  database: string;
  user: string;
  application: string;
  durationUs: number;
  rows: number;
  /** SQLSTATE of the statement's error; null when it succeeded. */
  sqlstate: string | null;
  /** When it finished (Date.now() milliseconds). */
  at: number;
}

/** What remains after eviction, as a fraction of max. */
const EVICT_TO = 0.9;

export class ShapeEntry {
  readonly fingerprint: string;
  readonly normalized: string;
  /** False when the PostgreSQL parser rejected the text and the shape comes from the lexer alone. */
  readonly parsed: boolean;
  readonly database: string;
  readonly user: string;
  readonly application: string;
  calls = 0;
  /** Calls that ended with an ErrorResponse. */
  errors = 0;
  rows = 0;
  totalUs = 0;
  readonly hist = new Histogram(SHAPE_BOUNDS_US);
  /** Date.now() milliseconds of the first and the latest call. */
  firstSeen: number;
  lastSeen: number;

  constructor(fingerprint: string, normalized: string, parsed: boolean, database: string, user: string, application: string, at: number) {
    this.fingerprint = fingerprint;
    this.normalized = normalized;
    this.parsed = parsed;
    this.database = database;
    this.user = user;
    this.application = application;
    this.firstSeen = at;
    this.lastSeen = at;
  }

  get meanUs(): number {
    return this.calls === 0 ? 0 : this.totalUs / this.calls;
  }

  /** Latency quantile in microseconds (q in 0..1, e.g. 0.99), estimated from the histogram; 0 before any call. */
  quantile(q: number): number {
    return this.hist.quantile(q);
  }
}

/** Eviction order: fewer calls first, then older lastSeen. */
function lessUsed(a: ShapeEntry, b: ShapeEntry): number {
  return a.calls - b.calls || a.lastSeen - b.lastSeen;
}

/**
 * Reorders a so that a[k] is the element a full sort would put there, every
 * element before it compares <= to it and every one after >= (Hoare's
 * quickselect, median-of-three pivot: linear on average).
 */
function selectKth(a: ShapeEntry[], k: number): void {
  let lo = 0;
  let hi = a.length - 1;
  while (hi > lo) {
    const mid = (lo + hi) >>> 1;
    // Median of three to the middle, a guard against sorted input.
    if (lessUsed(a[mid]!, a[lo]!) < 0) swap(a, mid, lo);
    if (lessUsed(a[hi]!, a[lo]!) < 0) swap(a, hi, lo);
    if (lessUsed(a[hi]!, a[mid]!) < 0) swap(a, hi, mid);
    const pivot = a[mid]!;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (lessUsed(a[i]!, pivot) < 0) i++;
      while (lessUsed(a[j]!, pivot) > 0) j--;
      if (i <= j) {
        swap(a, i, j);
        i++;
        j--;
      }
    }
    if (k <= j) hi = j;
    else if (k >= i) lo = i;
    else return;
  }
}

function swap(a: ShapeEntry[], i: number, j: number): void {
  const t = a[i]!;
  a[i] = a[j]!;
  a[j] = t;
}

export class QueryShapes {
  readonly #normalizer: Normalizer;
  readonly #entries = new Map<string, ShapeEntry>();
  #max: number;

  constructor(normalizer: Normalizer, max: number) {
    this.#normalizer = normalizer;
    this.#max = checkMax(max);
  }

  /** Most entries kept. Settable at any time (config reload); lowering it evicts at once. */
  get max(): number {
    return this.#max;
  }

  set max(max: number) {
    this.#max = checkMax(max);
    if (this.#entries.size > this.#max) this.#evict();
  }

  get size(): number {
    return this.#entries.size;
  }

  /** Counts one execution in its shape's entry (created when new) and returns the entry. */
  record(e: Execution): ShapeEntry {
    const shape = this.#normalizer.describe(e.text);
    const key = `${shape.fingerprint}\u0000${e.database}\u0000${e.user}\u0000${e.application}`;
    let entry = this.#entries.get(key);
    if (entry === undefined) {
      entry = new ShapeEntry(shape.fingerprint, shape.normalized, shape.parsed, e.database, e.user, e.application, e.at);
      this.#entries.set(key, entry);
    }
    entry.calls++;
    if (e.sqlstate !== null) entry.errors++;
    entry.rows += e.rows;
    entry.totalUs += e.durationUs;
    entry.hist.observe(e.durationUs);
    if (e.at > entry.lastSeen) entry.lastSeen = e.at;
    if (e.at < entry.firstSeen) entry.firstSeen = e.at;
    if (this.#entries.size > this.#max) this.#evict();
    return entry;
  }

  entries(): ShapeEntry[] {
    return [...this.#entries.values()];
  }

  /** The n entries with the most total time (default), calls, or mean time, highest first. */
  top(n: number, by: 'total' | 'calls' | 'mean' = 'total'): ShapeEntry[] {
    const all = this.entries();
    const score: (e: ShapeEntry) => number = by === 'calls' ? (e) => e.calls : by === 'mean' ? (e) => e.meanUs : (e) => e.totalUs;
    all.sort((a, b) => score(b) - score(a) || b.calls - a.calls || b.lastSeen - a.lastSeen);
    return n >= all.length ? all : all.slice(0, Math.max(0, Math.floor(n)));
  }

  clear(): void {
    this.#entries.clear();
  }

  /**
   * Drops the least used entries down to 90% of max. The entry just created
   * is not spared: when every other entry has more calls it goes at once
   * (record() still returns it). The 10% headroom a batch leaves is where new
   * shapes accumulate calls until the next batch judges them.
   */
  #evict(): void {
    const drop = this.#entries.size - Math.floor(this.#max * EVICT_TO);
    if (drop <= 0) return;
    const all = [...this.#entries.values()];
    if (drop < all.length) selectKth(all, drop - 1);
    const doomed = new Set<ShapeEntry>();
    for (let i = 0; i < drop && i < all.length; i++) doomed.add(all[i]!);
    for (const [key, e] of this.#entries) if (doomed.has(e)) this.#entries.delete(key);
  }
}

/** A negative or NaN max keeps nothing; Infinity means no cap. */
function checkMax(max: number): number {
  return max >= 0 ? Math.floor(max) : 0;
}
