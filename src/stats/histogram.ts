// Fixed-bucket histograms for latencies (and anything else with a known
// range): what the per-shape statistics keep for quantiles, and what the
// metrics endpoint turns into Prometheus `le` buckets.
//
// A histogram owns counts only; its bounds are a sorted array shared by every
// histogram of the same kind (never copied per instance), so one per query
// shape stays small: bounds.length + 1 doubles. Bucket i counts the values v
// with bounds[i - 1] < v <= bounds[i] (Prometheus' "less or equal"); the last
// bucket is +Inf. Recording is a binary search and an add, with no allocation.

/**
 * Geometric bounds from min to max with perOctave bounds per doubling: each
 * bound is 2^(1/perOctave) times the previous one, so a value read back from
 * its bucket is off by at most that ratio. The last bound is max itself.
 */
export function logBounds(min: number, max: number, perOctave: number): number[] {
  if (!(min > 0) || !(max > min) || !Number.isFinite(max)) throw new RangeError(`logBounds: need 0 < min < max, got ${min}, ${max}`);
  if (!Number.isInteger(perOctave) || perOctave < 1)
    throw new RangeError(`logBounds: perOctave must be a positive integer, got ${perOctave}`);
  const out: number[] = [];
  // Computed from the exponent each time rather than by repeated
  // multiplication, so rounding errors do not accumulate along the array.
  for (let i = 0; ; i++) {
    const b = min * 2 ** (i / perOctave);
    if (b >= max * (1 - 1e-12)) break;
    out.push(b);
  }
  out.push(max);
  return out;
}

/** 1 µs to 100 s, 4 bounds per octave (108 bounds): about 19% resolution. For per-shape quantiles. */
export const SHAPE_BOUNDS_US: readonly number[] = Object.freeze(logBounds(1, 100e6, 4));

/** Prometheus-style latency buckets (100 µs to 30 s), in microseconds. For exported metrics. */
export const METRIC_BOUNDS_US: readonly number[] = Object.freeze([
  100, 250, 500, 1000, 2500, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1e6, 2.5e6, 5e6, 10e6, 30e6,
]);

function checkBounds(bounds: readonly number[]): void {
  for (let i = 0; i < bounds.length; i++) {
    const b = bounds[i]!;
    if (Number.isNaN(b) || (i > 0 && !(b > bounds[i - 1]!))) throw new RangeError('Histogram: bounds must be strictly increasing numbers');
  }
}

// Arrays already validated: each bounds array is checked once, not once per histogram.
const checked = new WeakSet<readonly number[]>();

export class Histogram {
  readonly #bounds: readonly number[];
  readonly #counts: Float64Array;
  #count = 0;
  #sum = 0;
  #min = 0;
  #max = 0;

  /** bounds: sorted upper bounds, kept by reference (share one array between histograms). */
  constructor(bounds: readonly number[]) {
    if (!checked.has(bounds)) {
      checkBounds(bounds);
      checked.add(bounds);
    }
    this.#bounds = bounds;
    this.#counts = new Float64Array(bounds.length + 1);
  }

  get bounds(): readonly number[] {
    return this.#bounds;
  }

  /** Number of values observed. */
  get count(): number {
    return this.#count;
  }

  get sum(): number {
    return this.#sum;
  }

  /** Smallest value observed; 0 when empty. */
  get min(): number {
    return this.#min;
  }

  /** Largest value observed; 0 when empty. */
  get max(): number {
    return this.#max;
  }

  /** Records one value. NaN is ignored (it belongs to no bucket). */
  observe(v: number): void {
    if (Number.isNaN(v)) return;
    const bounds = this.#bounds;
    // First bound >= v; bounds.length (the +Inf bucket) when none.
    let lo = 0;
    let hi = bounds.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (bounds[mid]! < v) lo = mid + 1;
      else hi = mid;
    }
    this.#counts[lo]!++;
    if (this.#count === 0) {
      this.#min = v;
      this.#max = v;
    } else {
      if (v < this.#min) this.#min = v;
      if (v > this.#max) this.#max = v;
    }
    this.#count++;
    this.#sum += v;
  }

  /**
   * The q-quantile (q in 0..1) estimated from the buckets: the bucket holding
   * the value of rank q * count is found, and the value is interpolated
   * linearly inside it, the bucket's edges narrowed to the observed min and
   * max (so the answer is never outside what was seen, and quantile(0) and
   * quantile(1) are exact). The error is at most the width of that bucket.
   * 0 when empty.
   */
  quantile(q: number): number {
    if (this.#count === 0) return 0;
    if (!(q > 0)) return this.#min;
    if (q >= 1) return this.#max;
    const target = q * this.#count;
    const counts = this.#counts;
    const bounds = this.#bounds;
    let cum = 0;
    for (let i = 0; i < counts.length; i++) {
      const c = counts[i]!;
      if (c === 0) continue;
      if (cum + c >= target) {
        let lower = i === 0 ? this.#min : bounds[i - 1]!;
        let upper = i === bounds.length ? this.#max : bounds[i]!;
        if (lower < this.#min) lower = this.#min;
        if (upper > this.#max) upper = this.#max;
        const frac = (target - cum) / c;
        return lower + (upper - lower) * frac;
      }
      cum += c;
    }
    return this.#max;
  }

  /** Adds other's observations to this one. Both must have the same bounds. */
  merge(other: Histogram): void {
    if (other.#bounds !== this.#bounds && !sameBounds(other.#bounds, this.#bounds)) {
      throw new RangeError('Histogram.merge: the histograms have different bounds');
    }
    if (other.#count === 0) return;
    const mine = this.#counts;
    const theirs = other.#counts;
    for (let i = 0; i < mine.length; i++) mine[i]! += theirs[i]!;
    if (this.#count === 0) {
      this.#min = other.#min;
      this.#max = other.#max;
    } else {
      if (other.#min < this.#min) this.#min = other.#min;
      if (other.#max > this.#max) this.#max = other.#max;
    }
    this.#count += other.#count;
    this.#sum += other.#sum;
  }

  reset(): void {
    this.#counts.fill(0);
    this.#count = 0;
    this.#sum = 0;
    this.#min = 0;
    this.#max = 0;
  }

  /**
   * A histogram rebuilt from plain data (per-bucket counts as counts()
   * returns them, and the sum, min and max): snapshots from other processes
   * are merged this way.
   */
  static restore(bounds: readonly number[], counts: readonly number[], sum: number, min: number, max: number): Histogram {
    const h = new Histogram(bounds);
    if (counts.length !== bounds.length + 1) throw new RangeError('Histogram.restore: counts do not match the bounds');
    let n = 0;
    for (let i = 0; i < counts.length; i++) {
      const c = counts[i]!;
      h.#counts[i] = c;
      n += c;
    }
    h.#count = n;
    h.#sum = n > 0 ? sum : 0;
    h.#min = n > 0 ? min : 0;
    h.#max = n > 0 ? max : 0;
    return h;
  }

  /** Per-bucket counts (bounds.length + 1 entries, the last one +Inf): the mergeable form. */
  counts(): number[] {
    return Array.from(this.#counts);
  }

  /**
   * Cumulative counts, one per bound: element i counts the values <= bounds[i]
   * (Prometheus `le` buckets; the +Inf bucket is `count`).
   */
  cumulative(): number[] {
    const out = new Array<number>(this.#bounds.length);
    let cum = 0;
    for (let i = 0; i < out.length; i++) {
      cum += this.#counts[i]!;
      out[i] = cum;
    }
    return out;
  }
}

function sameBounds(a: readonly number[], b: readonly number[]): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}
