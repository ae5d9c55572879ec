// The routing pieces without sockets: the read-only proof on the real
// parser, the split scanner over client bytes cut at every offset, and the
// choice of a server from roles, health, lag and read-your-writes marks.

import assert from 'node:assert/strict';
import { before, describe, it } from 'node:test';
import type { ServerTarget } from '../../src/backend/server-conn.ts';
import type { DatabaseConfig } from '../../src/config/schema.ts';
import { encodeBind, encodeParse, encodeQuery, SYNC } from '../../src/protocol/frontend.ts';
import { Host, HostSet, NEED, parseLsn, ROLE } from '../../src/routing/hosts.ts';
import { SplitScanner } from '../../src/routing/split.ts';
import { ACCESS, loadReadOnlyParser, ReadOnlyClassifier } from '../../src/sql/readonly.ts';

before(async () => {
  await loadReadOnlyParser();
});

describe('ReadOnlyClassifier', () => {
  const c = new ReadOnlyClassifier(['my_report']);
  const cases: Array<[string, string]> = [
    ['select 1', ACCESS.Read],
    ['SELECT abalance FROM pgbench_accounts WHERE aid = 42', ACCESS.Read],
    ['select count(*), now(), lower(name) from t group by 3', ACCESS.Read],
    ['with x as (select 1) select * from x', ACCESS.Read],
    ['select 1; select 2', ACCESS.Read],
    ['show search_path', ACCESS.Read],
    ['values (1), (2)', ACCESS.Read],
    ['table t', ACCESS.Read],
    ['select my_report(1)', ACCESS.Read],
    ['select pg_catalog.count(*) from t', ACCESS.Read],
    ['begin read only', ACCESS.Block],
    ['start transaction isolation level serializable, read only', ACCESS.Block],
    ['begin read only; select 1; commit', ACCESS.Block],
    ['begin read only; commit; insert into t values (1)', ACCESS.Write],
    ['begin', ACCESS.Write],
    ['begin read write', ACCESS.Write],
    ['insert into t values (1)', ACCESS.Write],
    ['select * from t for update', ACCESS.Write],
    ['select * from (select * from t for share) s', ACCESS.Write],
    ['with d as (delete from t returning *) select * from d', ACCESS.Write],
    ['select * into t2 from t', ACCESS.Write],
    ["select nextval('s')", ACCESS.Write],
    ['select pg_advisory_lock(1)', ACCESS.Write],
    ["select set_config('a.b', '1', false)", ACCESS.Write],
    ['select other.count(*) from t', ACCESS.Write],
    ['select 1; update t set a = 1', ACCESS.Write],
    ['set search_path = x', ACCESS.Write],
    ['explain select 1', ACCESS.Write],
    ['selec 1', ACCESS.Write],
    ['', ACCESS.Write],
  ];
  for (const [sql, want] of cases) it(`${JSON.stringify(sql)} is ${want}`, () => assert.equal(c.classify(sql), want));

  it('caches by shape: other constants, same verdict', () => {
    assert.equal(c.classify('select * from t where id = 1'), ACCESS.Read);
    assert.equal(c.classify("select * from t where id = 2 and name = 'x'"), ACCESS.Read);
    assert.equal(c.classify("select nextval('other')"), ACCESS.Write);
  });
});

describe('SplitScanner', () => {
  const classifier = new ReadOnlyClassifier();
  const named = new Map([
    ['S_1', 'select 1'],
    ['S_2', 'delete from t'],
  ]);
  const textOf = (n: string): string | null => named.get(n) ?? null;

  function verdict(chunks: Buffer[]): string {
    const s = new SplitScanner(classifier, textOf);
    return s.scan(chunks);
  }

  const read = Buffer.concat([encodeQuery('select 1'), encodeParse('', 'select $1::int'), encodeBind('', '', ['1']), SYNC]);
  const write = Buffer.concat([encodeQuery('select 1'), encodeQuery('update t set a = 1')]);
  const namedRead = Buffer.concat([encodeBind('', 'S_1', []), SYNC]);
  const namedWrite = Buffer.concat([encodeBind('', 'S_2', []), SYNC]);
  const block = Buffer.concat([encodeQuery('begin read only'), encodeQuery('select 1')]);

  it('judges whole chunks', () => {
    assert.equal(verdict([read]), ACCESS.Read);
    assert.equal(verdict([write]), ACCESS.Write);
    assert.equal(verdict([namedRead]), ACCESS.Read);
    assert.equal(verdict([namedWrite]), ACCESS.Write);
    assert.equal(verdict([encodeBind('', 'S_9', [])]), ACCESS.Write, 'an unknown statement');
    assert.equal(verdict([block]), ACCESS.Block);
    assert.equal(verdict([Buffer.concat([encodeQuery('select 1'), encodeQuery('begin read only')])]), ACCESS.Write, 'a block after a read');
  });

  it('a statement frame cut by the chunk end is a write; a cut non-statement frame is carried over', () => {
    for (const buf of [read, write, namedRead, block]) {
      const whole = verdict([buf]);
      for (let cut = 1; cut < buf.length; cut++) {
        const v = verdict([buf.subarray(0, cut), buf.subarray(cut)]);
        // Both pieces seen in one scan (a new transaction's held chunks): the verdict of the whole.
        assert.equal(v, whole, `cut at ${cut}`);
        // The first piece alone: a cut statement frame makes it a write.
        const s = new SplitScanner(classifier, textOf);
        const first = s.scan([buf.subarray(0, cut)]);
        if (whole === ACCESS.Write) continue;
        assert.ok(first === whole || first === ACCESS.Write || (first === ACCESS.Read && whole === ACCESS.Block), `first piece at ${cut}`);
      }
    }
  });

  it('head: the bytes that end a frame begun in the previous chunk', () => {
    // Sync cut in two, then a write.
    const s = new SplitScanner(classifier, textOf);
    const sync = SYNC;
    const a = Buffer.concat([encodeQuery('select 1'), sync.subarray(0, 3)]);
    assert.equal(s.scan([a]), ACCESS.Read);
    const b = Buffer.concat([sync.subarray(3), encodeQuery('delete from t')]);
    assert.equal(s.scan([b]), ACCESS.Write);
    assert.equal(s.head, sync.length - 3);
    // Two header bytes carried.
    const s2 = new SplitScanner(classifier, textOf);
    assert.equal(s2.scan([Buffer.concat([encodeQuery('select 1'), sync.subarray(0, 2)])]), ACCESS.Read);
    assert.equal(s2.scan([Buffer.concat([sync.subarray(2), encodeQuery('select 2')])]), ACCESS.Read);
    assert.equal(s2.head, sync.length - 2);
  });
});

describe('HostSet.pick', () => {
  const db = (over: Partial<DatabaseConfig> = {}): DatabaseConfig => ({
    host: 'h',
    port: 5432,
    tls: { mode: 'disable', direct: false },
    target_session_attrs: 'any',
    load_balance: 'round-robin',
    read_write_split: false,
    read_your_writes: false,
    ...over,
  });
  const target = (port: number): ServerTarget => ({
    name: 'app',
    host: '10.0.0.1',
    port,
    dbname: 'app',
    tls: { mode: 'disable', direct: false, connect: {} },
    connectTimeout: 1000,
    server: `10.0.0.1:${port}`,
  });
  function hosts(): Host[] {
    const p = new Host('app', target(1));
    p.role = ROLE.Primary;
    p.checked = true;
    p.lsn = 1000n;
    p.lsnAt = 10;
    const a = new Host('app', target(2));
    a.role = ROLE.Standby;
    a.checked = true;
    a.lsn = 1000n;
    a.lagBytes = 0;
    a.lagMs = 0;
    const b = new Host('app', target(3));
    b.role = ROLE.Standby;
    b.checked = true;
    b.lsn = 900n;
    b.lagBytes = 100;
    b.lagMs = 50;
    return [p, a, b];
  }
  const none = (): number => 0;
  const ports = (set: HostSet, need: (typeof NEED)[keyof typeof NEED], n = 6): number[] =>
    Array.from({ length: n }, () => set.pick(need, none)?.target.port ?? -1);

  it('target_session_attrs filters by role', () => {
    assert.deepEqual(new Set(ports(new HostSet('app', db({ target_session_attrs: 'read-write' }), hosts()), NEED.Any)), new Set([1]));
    assert.deepEqual(new Set(ports(new HostSet('app', db({ target_session_attrs: 'standby' }), hosts()), NEED.Any)), new Set([2, 3]));
    assert.deepEqual(
      new Set(ports(new HostSet('app', db({ target_session_attrs: 'prefer-standby' }), hosts()), NEED.Any)),
      new Set([2, 3]),
    );
    assert.deepEqual(new Set(ports(new HostSet('app', db(), hosts()), NEED.Any)), new Set([1, 2, 3]));
    const hs = hosts();
    for (const h of hs) if (h.role === ROLE.Standby) h.up = false;
    assert.deepEqual(new Set(ports(new HostSet('app', db({ target_session_attrs: 'prefer-standby' }), hs), NEED.Any)), new Set([1]));
    const ro = new HostSet('app', db({ target_session_attrs: 'standby' }), hs);
    assert.equal(ro.pick(NEED.Any, none), null);
    assert.match(ro.refusals(), /10\.0\.0\.1:1: server is not in hot standby mode; 10\.0\.0\.1:2: down/);
  });

  it('reads go to standbys within max_replica_lag, writes to the primary', () => {
    const set = new HostSet('app', db({ read_write_split: true, max_replica_lag: { bytes: 50 } }), hosts());
    assert.deepEqual(new Set(ports(set, NEED.Read)), new Set([2]));
    assert.deepEqual(new Set(ports(set, NEED.Write)), new Set([1]));
    set.db = db({ read_write_split: true, max_replica_lag: { ms: 100 } });
    assert.deepEqual(new Set(ports(set, NEED.Read)), new Set([2, 3]));
  });

  it('read-your-writes: reads stay on the primary until a check after the write, then only standbys past that position', () => {
    const hs = hosts();
    const set = new HostSet('app', db({ read_write_split: true, read_your_writes: true }), hs);
    const mark = { wroteAt: 20, lsn: null };
    assert.equal(set.pick(NEED.Read, none, null, mark)?.target.port, 1, 'no check since the write');
    const p = hs[0] as Host;
    p.lsn = 950n;
    p.lsnAt = 30;
    assert.deepEqual(new Set(Array.from({ length: 4 }, () => set.pick(NEED.Read, none, null, mark)?.target.port)), new Set([2]));
    assert.equal(mark.lsn, 950n);
  });

  it('of two primaries, the one on the higher timeline takes writes', () => {
    const hs = hosts();
    (hs[1] as Host).role = ROLE.Primary;
    (hs[1] as Host).timeline = 2;
    (hs[0] as Host).timeline = 1;
    const set = new HostSet('app', db({ target_session_attrs: 'read-write' }), hs);
    assert.deepEqual(new Set(ports(set, NEED.Any)), new Set([2]));
  });

  it('least-connections picks the emptiest pool', () => {
    const set = new HostSet('app', db({ load_balance: 'least-connections' }), hosts());
    const counts = (h: Host): number => (h.target.port === 3 ? 0 : 5);
    assert.equal(set.pick(NEED.Any, counts)?.target.port, 3);
  });

  it('parses WAL positions', () => {
    assert.equal(parseLsn('0/16B3748'), 0x16b3748n);
    assert.equal(parseLsn('16/B374D848'), (0x16n << 32n) | 0xb374d848n);
    assert.equal(parseLsn('zz'), null);
    assert.equal(parseLsn(null), null);
  });
});
