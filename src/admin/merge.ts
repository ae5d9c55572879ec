// One Snapshot out of several worker processes' snapshots (workers: N), so
// the admin console and /metrics show the instance as a whole: pools of the
// same (database, user) add up, clients and servers are listed side by side
// (their ids are unique over all workers), traffic and query shapes add up
// per key, histograms bucket by bucket; the dashboard's history adds up
// second by second and its events interleave by time.

import { mergeEvents, mergeSeries } from '../stats/history.ts';
import type { Averages, HistData, HostRow, PoolRow, ShapeRow, Snapshot, TrafficRow } from './snapshot.ts';

function addHist(a: HistData, b: HistData): HistData {
  return { buckets: a.buckets.map((v, i) => v + (b.buckets[i] ?? 0)), count: a.count + b.count, sum: a.sum + b.sum };
}

function addRecord(into: Record<string, number>, from: Record<string, number>): void {
  for (const [k, v] of Object.entries(from)) into[k] = (into[k] ?? 0) + v;
}

const POOL_SUMS = [
  'cl_active',
  'cl_waiting',
  'cl_active_cancel_req',
  'cl_waiting_cancel_req',
  'sv_active',
  'sv_active_cancel',
  'sv_being_canceled',
  'sv_idle',
  'sv_used',
  'sv_tested',
  'sv_login',
  'cl_pinned',
] as const;

const TRAFFIC_SUMS = [
  'xacts',
  'queries',
  'received',
  'sent',
  'xactUs',
  'queryUs',
  'waitUs',
  'assignments',
  'parses',
  'serverParses',
  'binds',
] as const;

/** Adds one pool row into another of the same (database, user): counts add up, the longest wait stays. */
export function addPoolRow(into: PoolRow, from: PoolRow): void {
  for (const k of POOL_SUMS) into[k] += from[k];
  into.maxwait_us = Math.max(into.maxwait_us, from.maxwait_us);
}

/**
 * Adds averages `a` into `into`: rates add up; times are per transaction,
 * query or assignment, so they are averaged weighted by those rates.
 */
export function addAverages(into: Averages, a: Averages): void {
  const weighted = (x: number, wx: number, y: number, wy: number): number => (wx + wy > 0 ? Math.round((x * wx + y * wy) / (wx + wy)) : 0);
  into.xactUs = weighted(into.xactUs, into.xacts, a.xactUs, a.xacts);
  into.queryUs = weighted(into.queryUs, into.queries, a.queryUs, a.queries);
  into.waitUs = weighted(into.waitUs, into.assignments, a.waitUs, a.assignments);
  into.xacts += a.xacts;
  into.queries += a.queries;
  into.received += a.received;
  into.sent += a.sent;
  into.assignments += a.assignments;
  into.parses += a.parses;
  into.serverParses += a.serverParses;
  into.binds += a.binds;
}

export function mergeSnapshots(snaps: readonly Snapshot[]): Snapshot {
  const first = snaps[0];
  if (first === undefined) throw new RangeError('mergeSnapshots: no snapshot');
  if (snaps.length === 1) return first;
  const pools = new Map<string, PoolRow>();
  const traffic = new Map<string, TrafficRow>();
  const shapes = new Map<string, ShapeRow>();
  const out: Snapshot = {
    at: Math.max(...snaps.map((s) => s.at)),
    startedAt: Math.min(...snaps.map((s) => s.startedAt)),
    pools: [],
    clients: [],
    servers: [],
    traffic: [],
    averages: {},
    counters: { logins: {}, loginFailures: {}, pins: {}, errors: {}, violations: {}, tlsHandshakes: {}, cancels: {}, passthrough: {} },
    shapes: [],
    paused: [],
    disabled: [],
    memory: { rss: 0, heapUsed: 0 },
    hosts: [],
    series: mergeSeries(snaps.map((s) => s.series)),
    events: mergeEvents(
      snaps.map((s) => s.events),
      Math.max(...snaps.map((s) => s.events.length), 200),
    ),
  };
  const hosts = new Map<string, HostRow>();
  for (const s of snaps) {
    // Each worker checks the servers itself: the newest check tells the state; connections add up.
    for (const h of s.hosts) {
      const key = `${h.database}\u0000${h.server}`;
      const have = hosts.get(key);
      if (have === undefined) hosts.set(key, { ...h });
      else {
        const sums = { a: have.sv_active + h.sv_active, i: have.sv_idle + h.sv_idle, o: have.sv_other + h.sv_other };
        if (h.last_check > have.last_check) Object.assign(have, h);
        have.sv_active = sums.a;
        have.sv_idle = sums.i;
        have.sv_other = sums.o;
      }
    }
    for (const p of s.pools) {
      const key = `${p.database}\u0000${p.user}`;
      const have = pools.get(key);
      if (have === undefined) pools.set(key, { ...p });
      else addPoolRow(have, p);
    }
    out.clients.push(...s.clients);
    out.servers.push(...s.servers);
    for (const t of s.traffic) {
      const key = `${t.database}\u0000${t.user}`;
      const have = traffic.get(key);
      if (have === undefined) traffic.set(key, { ...t });
      else {
        for (const k of TRAFFIC_SUMS) have[k] += t[k];
        have.queryHist = addHist(have.queryHist, t.queryHist);
        have.xactHist = addHist(have.xactHist, t.xactHist);
        have.waitHist = addHist(have.waitHist, t.waitHist);
      }
    }
    for (const [db, a] of Object.entries(s.averages)) {
      const have = out.averages[db];
      if (have === undefined) out.averages[db] = { ...a };
      else addAverages(have, a);
    }
    for (const k of Object.keys(out.counters) as Array<keyof Snapshot['counters']>) addRecord(out.counters[k], s.counters[k]);
    for (const sh of s.shapes) {
      const key = `${sh.fingerprint}\u0000${sh.database}\u0000${sh.user}\u0000${sh.application_name}`;
      const have = shapes.get(key);
      if (have === undefined) {
        shapes.set(key, { ...sh, hist: [...sh.hist] });
        continue;
      }
      have.calls += sh.calls;
      have.errors += sh.errors;
      have.rows += sh.rows;
      have.total_us += sh.total_us;
      for (let i = 0; i < have.hist.length; i++) have.hist[i] = (have.hist[i] as number) + (sh.hist[i] ?? 0);
      have.min_us = Math.min(have.min_us, sh.min_us);
      have.max_us = Math.max(have.max_us, sh.max_us);
      have.first_seen = Math.min(have.first_seen, sh.first_seen);
      have.last_seen = Math.max(have.last_seen, sh.last_seen);
    }
    out.paused.push(...s.paused.filter((d) => !out.paused.includes(d)));
    out.disabled.push(...s.disabled.filter((d) => !out.disabled.includes(d)));
    out.memory.rss += s.memory.rss;
    out.memory.heapUsed += s.memory.heapUsed;
  }
  out.pools = [...pools.values()];
  out.hosts = [...hosts.values()];
  out.traffic = [...traffic.values()];
  out.shapes = [...shapes.values()];
  return out;
}
