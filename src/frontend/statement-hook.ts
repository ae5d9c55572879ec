// The statement hook: the one place where each client frame that carries or
// runs a statement (Query, Parse, Bind, Execute, Describe, Close, Sync,
// FunctionCall) is seen, once, and each server frame that ends one. Links
// call it for frames they read whole, before forwarding them; the session
// calls it for frames that are only peeked while they go by. What needs to
// see statements registers here: the statistics tracker (made at the first
// statement, so an idle client holds none) and the links' session features
// (pooled-link.ts); the policy engine's deciders come next.

import type { Ledger } from '../backend/expect.ts';
import type { Context } from '../context.ts';
import { FE } from '../protocol/codes.ts';
import type { TrafficStats } from '../stats/registry.ts';
import { QueryTracker, type TrackerSink } from '../stats/tracker.ts';

/** Something that looks at client statement frames (before they are forwarded when it can). */
export interface StatementObserver {
  onStatement(type: number, buf: Buffer, start: number, end: number): void;
}

export interface StatementHookHost {
  readonly ctx: Context;
  readonly id: number;
  readonly database: string;
  readonly user: string;
  readonly applicationName: string;
  traffic(): TrafficStats | null;
  /** A query cycle ended (admin request_time). */
  cycled(): void;
}

export class StatementHook {
  readonly #host: StatementHookHost;
  #tracker: QueryTracker | null = null;
  #observers: StatementObserver[] = [];

  constructor(host: StatementHookHost) {
    this.#host = host;
  }

  /** Statements reported so far (the audit record). */
  get statements(): number {
    return this.#tracker?.statements ?? 0;
  }

  add(o: StatementObserver): void {
    this.#observers.push(o);
  }

  /** A client frame of a statement type, whole, at buf[start, end). */
  client(type: number, buf: Buffer, start: number, end: number): void {
    const t = this.#host.traffic();
    if (t !== null) {
      if (type === FE.Parse) t.parses++;
      else if (type === FE.Bind) t.binds++;
    }
    for (const o of this.#observers) o.onStatement(type, buf, start, end);
    this.#tracker ??= new QueryTracker(this.#sink, this.#host.ctx.stats.wantsTextFn);
    this.#tracker.onClientFrame(type, buf, start, end);
  }

  /** A server frame the client gets (the tracker reads its ReadyForQuery for the query and transaction cycles). */
  server(type: number, buf: Buffer, start: number, end: number): void {
    this.#tracker?.onServerFrame(type, buf, start, end);
  }

  /** The server connection that serves the client now: its ledger tells the tracker how each statement ended. */
  watch(ledger: Ledger): void {
    this.#tracker ??= new QueryTracker(this.#sink, this.#host.ctx.stats.wantsTextFn);
    ledger.watcher = this.#tracker;
  }

  /** Where the tracker reports finished statements and query/transaction cycles. */
  #sink: TrackerSink = {
    onStatement: (text, durationUs, rows, sqlstate) => {
      const h = this.#host;
      h.ctx.stats.statement({
        text,
        database: h.database,
        user: h.user,
        application: h.applicationName,
        durationUs,
        rows,
        sqlstate,
        at: Date.now(),
        client: h.id,
      });
    },
    onCycle: (queryUs, xactUs) => {
      this.#host.cycled();
      const t = this.#host.traffic();
      if (t === null) return;
      t.queries++;
      t.queryUs += queryUs;
      t.queryHist.observe(queryUs);
      if (xactUs >= 0) {
        t.xacts++;
        t.xactUs += xactUs;
        t.xactHist.observe(xactUs);
      }
    },
  };
}
