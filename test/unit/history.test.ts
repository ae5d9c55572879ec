// The dashboard's ring buffers (stats/history.ts) and their merge across
// worker processes (admin/merge.ts): bounded capacity, wrap-around order,
// same-second replacement, lazily named series, resize keeping the newest
// points, merging by second, latency quantiles, and the event ring.

import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { mergeSnapshots } from '../../src/admin/merge.ts';
import type { Snapshot } from '../../src/admin/snapshot.ts';
import { METRIC_BOUNDS_US } from '../../src/stats/histogram.ts';
import { EventRing, History, LATENCY_BUCKETS, MAX_SERIES, mergeEvents, mergeSeries, quantileOf } from '../../src/stats/history.ts';

const lat = (bucket: number, n: number): number[] => {
  const a = new Array(LATENCY_BUCKETS).fill(0);
  a[bucket] = n;
  return a;
};

describe('History ring', () => {
  test('keeps the newest `capacity` points in order across wrap-around', () => {
    const h = new History(5);
    for (let s = 1; s <= 12; s++) h.push(s * 1000 + 17, { tps: s });
    const d = h.data();
    assert.equal(h.length, 5);
    assert.deepEqual(d.t, [8000, 9000, 10000, 11000, 12000]);
    assert.deepEqual(d.values.tps, [8, 9, 10, 11, 12]);
    assert.equal(d.latency.length, 5);
  });

  test('a second point in the same second replaces the newest one', () => {
    const h = new History(4);
    h.push(1000, { tps: 1 });
    h.push(1999, { tps: 2 }, lat(3, 7));
    assert.equal(h.length, 1);
    assert.deepEqual(h.data().values.tps, [2]);
    assert.equal(h.data().latency[0]?.[3], 7);
  });

  test('a series named later has zeros before; a missing one gets 0; the number of series is capped', () => {
    const h = new History(4);
    h.push(1000, { tps: 1 });
    h.push(2000, { tps: 2, errors_42: 3 });
    h.push(3000, { errors_42: 1 });
    assert.deepEqual(h.data().values, { tps: [1, 2, 0], errors_42: [0, 3, 1] });
    const many: Record<string, number> = {};
    for (let i = 0; i < MAX_SERIES + 20; i++) many[`s${i}`] = i;
    h.push(4000, many);
    assert.equal(Object.keys(h.data().values).length, MAX_SERIES);
  });

  test('resize keeps the newest points', () => {
    const h = new History(10);
    for (let s = 1; s <= 8; s++) h.push(s * 1000, { tps: s }, lat(0, s));
    h.resize(3);
    assert.equal(h.capacity, 3);
    assert.deepEqual(h.data().t, [6000, 7000, 8000]);
    assert.deepEqual(
      h.data().latency.map((l) => l[0]),
      [6, 7, 8],
    );
    h.resize(6);
    h.push(9000, { tps: 9 });
    assert.deepEqual(h.data().values.tps, [6, 7, 8, 9]);
  });
});

describe('merge across workers', () => {
  test('points of the same second add up, series by name, latency bucket by bucket', () => {
    const a = new History(5);
    const b = new History(5);
    a.push(1000, { tps: 1, cl_active: 2 }, lat(2, 1));
    a.push(2000, { tps: 3, cl_active: 2 }, lat(2, 2));
    b.push(2000, { tps: 10, errors_40: 1 }, lat(2, 5));
    b.push(3000, { tps: 20 }, lat(4, 1));
    const m = mergeSeries([a.data(), b.data()]);
    assert.deepEqual(m.t, [1000, 2000, 3000]);
    assert.deepEqual(m.values.tps, [1, 13, 20]);
    assert.deepEqual(m.values.cl_active, [2, 2, 0]);
    assert.deepEqual(m.values.errors_40, [0, 1, 0]);
    assert.deepEqual(
      m.latency.map((l) => [l[2], l[4]]),
      [
        [1, 0],
        [7, 0],
        [0, 1],
      ],
    );
  });

  test('the merge stays bounded: the newest seconds of the longest history', () => {
    const a = new History(3);
    const b = new History(3);
    for (let s = 1; s <= 3; s++) a.push(s * 1000, { tps: 1 });
    for (let s = 3; s <= 5; s++) b.push(s * 1000, { tps: 1 });
    const m = mergeSeries([a.data(), b.data()]);
    assert.deepEqual(m.t, [3000, 4000, 5000]);
    assert.deepEqual(m.values.tps, [2, 1, 1]);
  });

  test('mergeSnapshots merges the history and interleaves events by time', () => {
    const snap = (series: Snapshot['series'], events: Snapshot['events']): Snapshot =>
      ({
        at: 1,
        startedAt: 1,
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
        series,
        events,
      }) satisfies Snapshot;
    const a = new History(4);
    const b = new History(4);
    a.push(5000, { qps: 2 });
    b.push(5000, { qps: 5 });
    const ea = new EventRing(10);
    const eb = new EventRing(10);
    ea.add('login_failed', { user: 'x' }, 10);
    eb.add('violation', { kind: 'client/bad' }, 5);
    ea.add('throttled', { addr: '10.0.0.1' }, 20);
    const m = mergeSnapshots([snap(a.data(), ea.rows(0)), snap(b.data(), eb.rows(1))]);
    assert.deepEqual(m.series.values.qps, [7]);
    assert.deepEqual(
      m.events.map((e) => [e.kind, e.worker]),
      [
        ['violation', 1],
        ['login_failed', 0],
        ['throttled', 0],
      ],
    );
  });

  test('quantiles from per-bucket counts; event rings are bounded', () => {
    const counts = new Array(LATENCY_BUCKETS).fill(0);
    counts[0] = 50;
    counts[3] = 45;
    counts[LATENCY_BUCKETS - 1] = 5;
    assert.equal(quantileOf(counts, 0.5), METRIC_BOUNDS_US[0]);
    assert.equal(quantileOf(counts, 0.95), METRIC_BOUNDS_US[3]);
    assert.equal(quantileOf(counts, 0.99), METRIC_BOUNDS_US[METRIC_BOUNDS_US.length - 1]);
    assert.equal(quantileOf(new Array(LATENCY_BUCKETS).fill(0), 0.5), 0);
    const r = new EventRing(3);
    for (let i = 0; i < 10; i++) r.add('violation', { i }, i);
    assert.deepEqual(
      r.rows().map((e) => e.detail.i),
      [7, 8, 9],
    );
    assert.equal(mergeEvents([r.rows(), r.rows()], 4).length, 4);
  });
});
