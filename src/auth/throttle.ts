// Failed-login throttling per client address: a sliding window of failure
// times per address. Past `maxFailures` within `windowMs`, further logins from
// that address are delayed and then refused until the window clears. Bounded:
// at most `maxTracked` addresses are kept (oldest evicted first).

export interface ThrottleOptions {
  windowMs: number;
  maxFailures: number;
  /** How long a throttled login is held before it is refused. */
  delayMs: number;
  maxTracked?: number;
}

export class LoginThrottle {
  #opts: Required<ThrottleOptions>;
  #failures = new Map<string, number[]>();
  /** Logins refused because of throttling, for metrics/admin. */
  throttledTotal = 0;

  constructor(opts: ThrottleOptions) {
    this.#opts = { maxTracked: 100_000, ...opts };
  }

  configure(opts: ThrottleOptions): void {
    this.#opts = { maxTracked: 100_000, ...opts };
  }

  get delayMs(): number {
    return this.#opts.delayMs;
  }

  #recent(addr: string, now: number): number[] {
    const list = this.#failures.get(addr);
    if (list === undefined) return [];
    const cutoff = now - this.#opts.windowMs;
    while (list.length > 0 && (list[0] as number) <= cutoff) list.shift();
    if (list.length === 0) this.#failures.delete(addr);
    return list;
  }

  /** True when this address has used up its failures for the window. */
  isThrottled(addr: string, now = Date.now()): boolean {
    if (this.#opts.maxFailures <= 0) return false;
    return this.#recent(addr, now).length >= this.#opts.maxFailures;
  }

  recordFailure(addr: string, now = Date.now()): void {
    let list = this.#failures.get(addr);
    if (list === undefined) {
      if (this.#failures.size >= this.#opts.maxTracked) {
        const oldest = this.#failures.keys().next().value;
        if (oldest !== undefined) this.#failures.delete(oldest);
      }
      list = [];
      this.#failures.set(addr, list);
    }
    list.push(now);
  }

  /** Addresses currently over the limit. */
  throttledAddresses(now = Date.now()): string[] {
    return [...this.#failures.keys()].filter((a) => this.isThrottled(a, now));
  }
}
