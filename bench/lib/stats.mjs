// Small statistics helpers. Latencies are collected as integer microseconds in
// a growable Uint32Array: 4 bytes per transaction, sorted numerically in place.

export function median(values) {
  const v = values.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (v.length === 0) return undefined;
  const mid = v.length >> 1;
  return v.length % 2 === 1 ? v[mid] : (v[mid - 1] + v[mid]) / 2;
}

/** Ratio a/b, undefined when either side is missing or b is 0. */
export function ratio(a, b) {
  if (typeof a !== 'number' || typeof b !== 'number' || !Number.isFinite(a) || !Number.isFinite(b) || b === 0) return undefined;
  return a / b;
}

export class LatencyCollector {
  #buf = new Uint32Array(1 << 16);
  #n = 0;
  #sum = 0;

  add(us) {
    if (this.#n === this.#buf.length) {
      const next = new Uint32Array(this.#buf.length * 2);
      next.set(this.#buf);
      this.#buf = next;
    }
    this.#buf[this.#n++] = us;
    this.#sum += us;
  }

  get count() {
    return this.#n;
  }

  /** Summary in milliseconds: mean, p50, p99, p99.9, max. */
  summary() {
    const n = this.#n;
    if (n === 0) return undefined;
    const sorted = this.#buf.subarray(0, n).sort();
    // Nearest-rank percentile: the smallest value with at least p% of samples at or below it.
    const at = (p) => sorted[Math.min(n - 1, Math.max(0, Math.ceil((p / 100) * n) - 1))] / 1000;
    return { count: n, meanMs: this.#sum / n / 1000, p50Ms: at(50), p99Ms: at(99), p999Ms: at(99.9), maxMs: sorted[n - 1] / 1000 };
  }
}
