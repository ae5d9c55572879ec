// The dashboard's sampler: once a second, on a timer aligned to the wall
// clock's seconds (so the points of several worker processes fall on the same
// seconds and add up when merged), it reads the counters the data path already
// keeps and appends one point to ctx.stats.history: per-second rates (tps,
// queries, errors in all and by SQLSTATE class, bytes in and out, client wait
// time), gauges (clients and servers by state) and the second's query latency
// histogram. Nothing is added to the data path: this reads totals only.

import type { Context } from '../context.ts';
import { LATENCY_BUCKETS } from '../stats/history.ts';

interface Mark {
  at: number;
  xacts: number;
  queries: number;
  received: number;
  sent: number;
  waitUs: number;
  assignments: number;
  errors: Map<string, number>;
  latency: number[];
}

export class HistorySampler {
  readonly #ctx: Context;
  #last: Mark | null = null;
  #timer: NodeJS.Timeout | null = null;

  constructor(ctx: Context) {
    this.#ctx = ctx;
  }

  start(): void {
    if (this.#timer !== null) return;
    this.#last = this.#mark(Date.now());
    this.#schedule();
  }

  stop(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
  }

  #schedule(): void {
    // 20 ms past the next whole second: every process samples "the same" second.
    const now = Date.now();
    this.#timer = setTimeout(
      () => {
        try {
          this.sample(Date.now());
        } catch (e) {
          this.#ctx.log.error({ err: (e as Error).message }, 'dashboard sampler failed');
        }
        this.#schedule();
      },
      1000 - (now % 1000) + 20,
    );
    this.#timer.unref();
  }

  #mark(at: number): Mark {
    const m: Mark = {
      at,
      xacts: 0,
      queries: 0,
      received: 0,
      sent: 0,
      waitUs: 0,
      assignments: 0,
      errors: new Map(this.#ctx.stats.errors),
      latency: new Array(LATENCY_BUCKETS).fill(0),
    };
    for (const t of this.#ctx.stats.allTraffic()) {
      m.xacts += t.xacts;
      m.queries += t.queries;
      m.received += t.received;
      m.sent += t.sent;
      m.waitUs += t.waitUs;
      m.assignments += t.assignments;
      const c = t.queryHist.counts();
      for (let b = 0; b < LATENCY_BUCKETS; b++) m.latency[b] = (m.latency[b] as number) + (c[b] ?? 0);
    }
    return m;
  }

  /** Appends the point for `now` (the janitor-free entry, also used by tests). */
  sample(now: number): void {
    const ctx = this.#ctx;
    const cur = this.#mark(now);
    const prev = this.#last ?? cur;
    this.#last = cur;
    const secs = Math.max((cur.at - prev.at) / 1000, 0.001);
    const rate = (a: number, b: number): number => Math.max(0, b - a) / secs;
    let errors = 0;
    const v: Record<string, number> = {
      tps: rate(prev.xacts, cur.xacts),
      qps: rate(prev.queries, cur.queries),
      bytes_in: rate(prev.received, cur.received),
      bytes_out: rate(prev.sent, cur.sent),
      wait_us: rate(prev.waitUs, cur.waitUs),
    };
    for (const [cls, n] of cur.errors) {
      const r = rate(prev.errors.get(cls) ?? 0, n);
      errors += r;
      if (r > 0) v[`errors_${cls}`] = r;
    }
    v.errors = errors;
    // Gauges: clients by state, servers by state.
    let clActive = 0;
    let clWaiting = 0;
    let clLogin = 0;
    for (const s of ctx.sessions) {
      const i = s.info();
      if (i.state === 'active') clActive++;
      else if (i.state === 'waiting') clWaiting++;
      else if (i.state === 'login') clLogin++;
    }
    v.cl_active = clActive;
    v.cl_waiting = clWaiting;
    v.cl_login = clLogin;
    let svActive = 0;
    let svIdle = 0;
    let svOther = 0;
    for (const p of ctx.pools.all()) {
      const c = p.counts(now);
      svActive += c.sv_active;
      svIdle += c.sv_idle + c.sv_used;
      svOther += c.sv_tested + c.sv_login + c.sv_being_canceled;
    }
    v.sv_active = svActive;
    v.sv_idle = svIdle;
    v.sv_other = svOther;
    const latency = cur.latency.map((n, b) => Math.max(0, n - (prev.latency[b] ?? 0)));
    ctx.stats.history.push(now, v, latency);
  }
}
