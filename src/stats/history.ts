// Bounded history for the dashboard: one point a second per named series
// (rates and gauges) plus a per-second latency histogram, kept in fixed-size
// ring buffers (capacity = seconds of history), and a ring of recent events
// (failed logins, throttled addresses, protocol violations, server failures).
// Everything comes out as plain JSON data so the snapshots of several worker
// processes merge: points of the same second add up, series by name,
// histograms bucket by bucket; events interleave by time.

import { METRIC_BOUNDS_US } from './histogram.ts';

/** Buckets of a latency point: one per METRIC_BOUNDS_US bound, then +Inf; per-bucket (not cumulative) counts. */
export const LATENCY_BUCKETS = METRIC_BOUNDS_US.length + 1;
/** Named series kept at most (errors by SQLSTATE class are named on first sight). */
export const MAX_SERIES = 96;

/** History as plain data, oldest point first. */
export interface SeriesData {
  /** Seconds of history kept (the ring's capacity): a merge keeps that window. */
  capacity: number;
  /** One epoch-ms timestamp per point, whole seconds, increasing. */
  t: number[];
  /** Every series is as long as t. */
  values: Record<string, number[]>;
  /** One histogram per point, LATENCY_BUCKETS counts each. */
  latency: number[][];
}

export class History {
  #capacity: number;
  #t: Float64Array;
  #cols = new Map<string, Float64Array>();
  #lat: Float64Array;
  /** Index the next point goes to; #len points end just before it. */
  #head = 0;
  #len = 0;

  constructor(capacity: number) {
    this.#capacity = Math.max(1, Math.floor(capacity));
    this.#t = new Float64Array(this.#capacity);
    this.#lat = new Float64Array(this.#capacity * LATENCY_BUCKETS);
  }

  get capacity(): number {
    return this.#capacity;
  }

  get length(): number {
    return this.#len;
  }

  /**
   * Appends a point at `t` (rounded down to the second). A point for the same
   * second as the newest one replaces it. Unknown names start a series (zeros
   * before), up to MAX_SERIES; series missing from `values` get 0.
   */
  push(t: number, values: Readonly<Record<string, number>>, latency?: ArrayLike<number>): void {
    const sec = Math.floor(t / 1000) * 1000;
    const last = this.#len > 0 ? (this.#head - 1 + this.#capacity) % this.#capacity : -1;
    let i: number;
    if (last >= 0 && this.#t[last] === sec) i = last;
    else {
      i = this.#head;
      this.#head = (this.#head + 1) % this.#capacity;
      if (this.#len < this.#capacity) this.#len++;
    }
    this.#t[i] = sec;
    for (const [name, col] of this.#cols) col[i] = values[name] ?? 0;
    for (const name of Object.keys(values)) {
      if (this.#cols.has(name) || this.#cols.size >= MAX_SERIES) continue;
      const col = new Float64Array(this.#capacity);
      col[i] = values[name] ?? 0;
      this.#cols.set(name, col);
    }
    const base = i * LATENCY_BUCKETS;
    for (let b = 0; b < LATENCY_BUCKETS; b++) this.#lat[base + b] = latency?.[b] ?? 0;
  }

  /** A new capacity (reload): the newest points are kept. */
  resize(capacity: number): void {
    const c = Math.max(1, Math.floor(capacity));
    if (c === this.#capacity) return;
    const d = this.data();
    this.#capacity = c;
    this.#t = new Float64Array(c);
    this.#lat = new Float64Array(c * LATENCY_BUCKETS);
    this.#cols = new Map();
    this.#head = 0;
    this.#len = 0;
    const from = Math.max(0, d.t.length - c);
    for (let k = from; k < d.t.length; k++) {
      const v: Record<string, number> = {};
      for (const [name, col] of Object.entries(d.values)) v[name] = col[k] as number;
      this.push(d.t[k] as number, v, d.latency[k]);
    }
  }

  /** The points, oldest first. */
  data(): SeriesData {
    const n = this.#len;
    const start = (this.#head - n + this.#capacity) % this.#capacity;
    const idx = (k: number): number => (start + k) % this.#capacity;
    const t: number[] = new Array(n);
    const latency: number[][] = new Array(n);
    for (let k = 0; k < n; k++) {
      const i = idx(k);
      t[k] = this.#t[i] as number;
      latency[k] = Array.from(this.#lat.subarray(i * LATENCY_BUCKETS, (i + 1) * LATENCY_BUCKETS));
    }
    const values: Record<string, number[]> = {};
    for (const [name, col] of this.#cols) {
      const out: number[] = new Array(n);
      for (let k = 0; k < n; k++) out[k] = col[idx(k)] as number;
      values[name] = out;
    }
    return { capacity: this.#capacity, t, values, latency };
  }
}

/**
 * Several processes' histories as one: points of the same second add up
 * (rates and gauges alike are per process sums), a series missing in one
 * process counts 0 there. Bounded: only the newest `capacity` seconds (the
 * largest input's) are kept.
 */
export function mergeSeries(all: readonly SeriesData[]): SeriesData {
  if (all.length === 1) return all[0] as SeriesData;
  const capacity = Math.max(0, ...all.map((s) => s.capacity));
  const newest = Math.max(0, ...all.map((s) => s.t[s.t.length - 1] ?? 0));
  const t = [...new Set(all.flatMap((s) => s.t))].filter((sec) => sec > newest - capacity * 1000).sort((a, b) => a - b);
  const at = new Map<number, number>();
  for (let k = 0; k < t.length; k++) at.set(t[k] as number, k);
  const values: Record<string, number[]> = {};
  const latency: number[][] = t.map(() => new Array(LATENCY_BUCKETS).fill(0));
  for (const s of all) {
    for (const name of Object.keys(s.values)) values[name] ??= new Array(t.length).fill(0);
    s.t.forEach((sec, j) => {
      const k = at.get(sec);
      if (k === undefined) return;
      for (const [name, col] of Object.entries(s.values)) {
        const into = values[name] as number[];
        into[k] = (into[k] as number) + (col[j] ?? 0);
      }
      const lat = s.latency[j];
      const into = latency[k] as number[];
      if (lat !== undefined) for (let b = 0; b < LATENCY_BUCKETS; b++) into[b] = (into[b] as number) + (lat[b] ?? 0);
    });
  }
  return { capacity, t, values, latency };
}

/**
 * The latency (µs) under which fraction `q` of the counted queries finished,
 * read from per-bucket counts over METRIC_BOUNDS_US (upper bound of the
 * bucket that reaches q; the +Inf bucket reports the last bound). 0 without data.
 */
export function quantileOf(counts: ArrayLike<number>, q: number): number {
  let total = 0;
  for (let b = 0; b < counts.length; b++) total += counts[b] as number;
  if (total === 0) return 0;
  const want = q * total;
  let seen = 0;
  for (let b = 0; b < counts.length; b++) {
    seen += counts[b] as number;
    if (seen >= want) return METRIC_BOUNDS_US[Math.min(b, METRIC_BOUNDS_US.length - 1)] as number;
  }
  return METRIC_BOUNDS_US[METRIC_BOUNDS_US.length - 1] as number;
}

/** One recent event the dashboard lists. Fields hold names and addresses, never a secret. */
export interface EventRow {
  at: number;
  /** login_failed, throttled, violation, server_failure. */
  kind: string;
  detail: Record<string, string | number>;
  worker: number;
}

/** The newest `capacity` events, oldest first. */
export class EventRing {
  readonly #items: EventRow[] = [];
  #capacity: number;

  constructor(capacity: number) {
    this.#capacity = Math.max(1, capacity);
  }

  add(kind: string, detail: Record<string, string | number>, at = Date.now()): void {
    this.#items.push({ at, kind, detail, worker: 0 });
    if (this.#items.length > this.#capacity) this.#items.splice(0, this.#items.length - this.#capacity);
  }

  rows(worker = 0): EventRow[] {
    return this.#items.map((e) => ({ ...e, worker }));
  }
}

/** Several processes' events, newest `capacity` by time. */
export function mergeEvents(all: readonly EventRow[][], capacity: number): EventRow[] {
  const out = all.flat().sort((a, b) => a.at - b.at);
  return out.slice(Math.max(0, out.length - capacity));
}
