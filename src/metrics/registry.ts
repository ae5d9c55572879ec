// Prometheus metrics. Every Postern metric is computed at scrape time from
// one Snapshot (src/admin/snapshot.ts), the same data the admin console
// renders, so the two never disagree and the data path does no metric work
// beyond bumping plain counters. Names follow the admin console's columns
// (pool states are PgBouncer's: cl_active, sv_idle, ...); docs/observability.md
// lists them all. prom-client provides the exposition format and the
// process metrics (CPU, memory, event loop lag, GC).

import { collectDefaultMetrics, Registry } from 'prom-client';
import type { HistData, Snapshot } from '../admin/snapshot.ts';
import { METRIC_BOUNDS_US } from '../stats/histogram.ts';

type Labels = Record<string, string | number>;
interface Sample {
  labels: Labels;
  value: number;
  metricName?: string;
}
type MetricType = 'gauge' | 'counter' | 'histogram';

/** One metric: its name, help and type, and how to read its samples off a snapshot. */
export interface MetricDef {
  name: string;
  help: string;
  type: MetricType;
  samples(s: Snapshot): Sample[];
}

const POOL_COLUMNS = [
  ['cl_active', 'Clients linked to a server connection or idle between transactions.'],
  ['cl_waiting', 'Clients waiting for a server connection.'],
  ['cl_pinned', 'Clients pinned to their server connection for the rest of their session (transaction mode).'],
  ['sv_active', 'Server connections lent to a client.'],
  ['sv_idle', 'Server connections idle and usable at once.'],
  ['sv_used', 'Idle server connections that need server_check_query before they are lent.'],
  ['sv_tested', 'Server connections running server_reset_query or server_check_query, or being cleaned after their client left.'],
  ['sv_being_canceled', 'Server connections held back until the cancel requests sent for them are delivered.'],
  ['sv_login', 'Server connections logging in.'],
] as const;

/** Splits "a/b" counter keys into two labels. */
function split2(map: Record<string, number>, a: string, b: string): Sample[] {
  return Object.entries(map).map(([k, value]) => {
    const i = k.indexOf('/');
    return { labels: { [a]: i < 0 ? k : k.slice(0, i), [b]: i < 0 ? '' : k.slice(i + 1) }, value };
  });
}

/** One of the passthrough counters (`tenant/what`) by tenant. */
function passthroughSamples(s: Snapshot, what: string): Sample[] {
  const out: Sample[] = [];
  for (const [k, value] of Object.entries(s.counters.passthrough)) {
    const i = k.lastIndexOf('/');
    if (k.slice(i + 1) === what) out.push({ labels: { tenant: k.slice(0, i) }, value });
  }
  return out;
}

function byOne(map: Record<string, number>, label: string): Sample[] {
  return Object.entries(map).map(([k, value]) => ({ labels: { [label]: k }, value }));
}

/** Histogram samples in seconds from microsecond data over METRIC_BOUNDS_US. */
function histSamples(name: string, labels: Labels, h: HistData): Sample[] {
  const out: Sample[] = [];
  for (let i = 0; i < METRIC_BOUNDS_US.length; i++) {
    out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: (METRIC_BOUNDS_US[i] as number) / 1e6 }, value: h.buckets[i] ?? 0 });
  }
  out.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: h.count });
  out.push({ metricName: `${name}_sum`, labels, value: h.sum / 1e6 });
  out.push({ metricName: `${name}_count`, labels, value: h.count });
  return out;
}

function trafficCounter(name: string, help: string, read: (t: Snapshot['traffic'][number]) => number): MetricDef {
  return {
    name,
    help,
    type: 'counter',
    samples: (s) => s.traffic.map((t) => ({ labels: { database: t.database, user: t.user }, value: read(t) })),
  };
}

function trafficHistogram(name: string, help: string, read: (t: Snapshot['traffic'][number]) => HistData): MetricDef {
  return {
    name,
    help,
    type: 'histogram',
    samples: (s) => s.traffic.flatMap((t) => histSamples(name, { database: t.database, user: t.user }, read(t))),
  };
}

function countBy<T>(items: readonly T[], key: (x: T) => string): Map<string, number> {
  const m = new Map<string, number>();
  for (const x of items) m.set(key(x), (m.get(key(x)) ?? 0) + 1);
  return m;
}

/** Every Postern metric. */
export const METRICS: readonly MetricDef[] = [
  ...POOL_COLUMNS.map(
    ([col, help]): MetricDef => ({
      name: `postern_pool_${col}`,
      help: `${help} (SHOW POOLS ${col})`,
      type: 'gauge',
      samples: (s) => s.pools.map((p) => ({ labels: { database: p.database, user: p.user }, value: p[col] })),
    }),
  ),
  {
    name: 'postern_pool_maxwait_seconds',
    help: 'How long the oldest waiting client of the pool has waited (SHOW POOLS maxwait).',
    type: 'gauge',
    samples: (s) => s.pools.map((p) => ({ labels: { database: p.database, user: p.user }, value: p.maxwait_us / 1e6 })),
  },
  {
    name: 'postern_server_up',
    help: 'A server of a database passes its health checks (1) or is marked down (0) (SHOW HOSTS state); role: primary, standby, unknown.',
    type: 'gauge',
    samples: (s) =>
      s.hosts.map((h) => ({ labels: { database: h.database, server: h.server, role: h.role }, value: h.state === 'down' ? 0 : 1 })),
  },
  {
    name: 'postern_server_lag_bytes',
    help: "A standby's replay lag behind the primary's current WAL position, in bytes (SHOW HOSTS lag_bytes).",
    type: 'gauge',
    samples: (s) =>
      s.hosts
        .filter((h) => h.lag_bytes !== null)
        .map((h) => ({ labels: { database: h.database, server: h.server }, value: h.lag_bytes as number })),
  },
  {
    name: 'postern_server_lag_seconds',
    help: 'Time since the last transaction a lagging standby replayed (0 when caught up) (SHOW HOSTS lag_ms).',
    type: 'gauge',
    samples: (s) =>
      s.hosts
        .filter((h) => h.lag_ms !== null)
        .map((h) => ({ labels: { database: h.database, server: h.server }, value: (h.lag_ms as number) / 1000 })),
  },
  {
    name: 'postern_clients',
    help: 'Client connections by state (SHOW CLIENTS state: login, waiting, active, idle).',
    type: 'gauge',
    samples: (s) => {
      const m = countBy(s.clients, (c) => (c.state === 'active' ? (c.link === null ? 'idle' : 'active') : c.state));
      for (const st of ['login', 'waiting', 'active', 'idle']) if (!m.has(st)) m.set(st, 0);
      return [...m].map(([state, value]) => ({ labels: { state }, value }));
    },
  },
  {
    name: 'postern_tenant_clients',
    help: 'Client connections by tenant (chosen by TLS server name; "" for the top-level databases) and TLS route: plain, terminated (by Postern) or passthrough (spliced to the server unopened).',
    type: 'gauge',
    samples: (s) => split2(Object.fromEntries(countBy(s.clients, (c) => `${c.tenant ?? ''}/${c.tls_route}`)), 'tenant', 'tls'),
  },
  {
    name: 'postern_passthrough_sessions_total',
    help: 'Sessions of passthrough tenants spliced to their server.',
    type: 'counter',
    samples: (s) => passthroughSamples(s, 'sessions'),
  },
  {
    name: 'postern_passthrough_received_bytes_total',
    help: 'Bytes passthrough clients sent (forwarded to their server unopened).',
    type: 'counter',
    samples: (s) => passthroughSamples(s, 'received_bytes'),
  },
  {
    name: 'postern_passthrough_sent_bytes_total',
    help: 'Bytes sent to passthrough clients (from their server, unopened).',
    type: 'counter',
    samples: (s) => passthroughSamples(s, 'sent_bytes'),
  },
  {
    name: 'postern_passthrough_session_seconds_total',
    help: 'Total duration of ended passthrough sessions.',
    type: 'counter',
    samples: (s) => passthroughSamples(s, 'seconds'),
  },
  {
    name: 'postern_servers',
    help: 'Server connections by state (SHOW SERVERS state).',
    type: 'gauge',
    samples: (s) => [...countBy(s.servers, (x) => x.state)].map(([state, value]) => ({ labels: { state }, value })),
  },
  trafficCounter('postern_xact_count_total', 'Transactions pooled (SHOW STATS total_xact_count).', (t) => t.xacts),
  trafficCounter('postern_query_count_total', 'Queries pooled: one per ReadyForQuery (SHOW STATS total_query_count).', (t) => t.queries),
  trafficCounter('postern_received_bytes_total', 'Bytes received from clients (SHOW STATS total_received).', (t) => t.received),
  trafficCounter('postern_sent_bytes_total', 'Bytes sent to clients (SHOW STATS total_sent).', (t) => t.sent),
  trafficCounter(
    'postern_server_assignment_count_total',
    'Times a server connection was assigned to a client (SHOW STATS total_server_assignment_count).',
    (t) => t.assignments,
  ),
  trafficCounter('postern_client_parse_count_total', 'Parse messages from clients (SHOW STATS total_client_parse_count).', (t) => t.parses),
  trafficCounter('postern_bind_count_total', 'Bind messages from clients (SHOW STATS total_bind_count).', (t) => t.binds),
  trafficHistogram(
    'postern_query_duration_seconds',
    'Query duration: first message to ReadyForQuery (SHOW STATS total_query_time).',
    (t) => t.queryHist,
  ),
  trafficHistogram('postern_xact_duration_seconds', 'Transaction duration (SHOW STATS total_xact_time).', (t) => t.xactHist),
  trafficHistogram(
    'postern_wait_duration_seconds',
    'Time clients waited for a server connection (SHOW STATS total_wait_time).',
    (t) => t.waitHist,
  ),
  {
    name: 'postern_logins_total',
    help: 'Client logins by authentication method and outcome (ok, fail).',
    type: 'counter',
    samples: (s) => split2(s.counters.logins, 'method', 'outcome'),
  },
  {
    name: 'postern_login_failures_total',
    help: 'Failed client logins by reason.',
    type: 'counter',
    samples: (s) => byOne(s.counters.loginFailures, 'reason'),
  },
  {
    name: 'postern_tls_handshakes_total',
    help: 'Client TLS handshakes by protocol version and outcome.',
    type: 'counter',
    samples: (s) => split2(s.counters.tlsHandshakes, 'version', 'outcome'),
  },
  {
    name: 'postern_errors_total',
    help: 'ErrorResponses sent to clients, by SQLSTATE class (first two characters).',
    type: 'counter',
    samples: (s) => byOne(s.counters.errors, 'class'),
  },
  {
    name: 'postern_protocol_violations_total',
    help: 'Protocol violations by side (client, server) and kind.',
    type: 'counter',
    samples: (s) => split2(s.counters.violations, 'side', 'kind'),
  },
  {
    name: 'postern_cancels_total',
    help: 'Cancel requests by outcome (forwarded, unknown).',
    type: 'counter',
    samples: (s) => byOne(s.counters.cancels, 'outcome'),
  },
  {
    name: 'postern_pins_total',
    help: 'Clients pinned to their server connection in transaction mode, by the session feature that pinned them (SHOW PINS).',
    type: 'counter',
    samples: (s) => byOne(s.counters.pins, 'feature'),
  },
  {
    name: 'postern_query_shapes',
    help: 'Query shapes tracked for SHOW QUERIES (bounded by stats.max_queries).',
    type: 'gauge',
    samples: (s) => [{ labels: {}, value: s.shapes.length }],
  },
  {
    name: 'postern_paused',
    help: '1 while the database (or * for all) is paused from the admin console.',
    type: 'gauge',
    samples: (s) => s.paused.map((d) => ({ labels: { database: d }, value: 1 })),
  },
];

/**
 * A prom-client registry holding Postern's metrics and the process metrics.
 * `snapshot` is called once per scrape.
 */
export class MetricsRegistry {
  readonly registry = new Registry();
  #current: Snapshot | null = null;
  #queue: Promise<unknown> = Promise.resolve();
  readonly #snapshot: () => Promise<Snapshot>;

  constructor(snapshot: () => Promise<Snapshot>, withProcessMetrics = true) {
    this.#snapshot = snapshot;
    if (withProcessMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'postern_' });
    for (const def of METRICS) {
      // prom-client accepts any object with a name, a type and get(): the
      // samples are computed from the scrape's snapshot, not stored.
      const metric = {
        name: def.name,
        help: def.help,
        type: def.type,
        aggregator: 'sum',
        get: async () => ({
          name: def.name,
          help: def.help,
          type: def.type,
          aggregator: 'sum',
          values: this.#current === null ? [] : def.samples(this.#current),
        }),
      };
      this.registry.registerMetric(metric as unknown as Parameters<Registry['registerMetric']>[0]);
    }
  }

  /** The exposition text of one scrape. Scrapes run one at a time: they share #current. */
  scrape(): Promise<string> {
    const run = this.#queue.then(async () => {
      this.#current = await this.#snapshot();
      try {
        return await this.registry.metrics();
      } finally {
        this.#current = null;
      }
    });
    this.#queue = run.catch(() => undefined);
    return run;
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
