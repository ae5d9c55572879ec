// Routing and high availability against a real primary and two streaming
// standbys (pg_basebackup -R): roles found by the health checks,
// target_session_attrs, the read/write split (autocommit reads to standbys,
// writes and BEGIN blocks to the primary, BEGIN READ ONLY to a standby),
// replica lag and read-your-writes with replay paused, a server killed
// mid-transaction, the wildcard database, a reload that adds and removes
// databases, pgbench over the split, and last a failover: the primary
// stops, a standby is promoted, and writes find it with no restart.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { type PgCluster, type PgStandby, startPostgres, startStandby } from '../../src/dev/cluster.ts';
import { logsWith, pgEnv, psql, type RunningPostern, run, startPostern, waitUntil } from '../helpers/postern.ts';

const PW = 'route-pw-83';
let dir: string;
let primary: PgCluster;
let s1: PgStandby;
let s2: PgStandby;
let px: RunningPostern;
let raw: Record<string, unknown>;

function client(database: string): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', database });
}

async function port(c: pg.Client, sql = 'select inet_server_port() as p'): Promise<number> {
  return (await c.query(sql)).rows[0].p as number;
}

/** The ports `n` autocommit statements ran on. */
async function portsOver(c: pg.Client, n: number, sql?: string): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push(await port(c, sql));
  return out;
}

async function showHosts(): Promise<Array<Record<string, string>>> {
  const r = await psql(`host=127.0.0.1 port=${px.port} user=app dbname=postern`, ['-F', '|', '-c', 'SHOW HOSTS']);
  assert.equal(r.code, 0, r.stderr);
  const cols = ['database', 'host', 'port', 'role', 'state', 'read_only', 'lag_bytes', 'lag_ms', 'failures'];
  return r.stdout
    .trim()
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => Object.fromEntries(l.split('|').map((v, i) => [cols[i] ?? `c${i}`, v])));
}

const servers = (): Array<{ host: string; port: number }> => [primary, s1, s2].map((c) => ({ host: c.host, port: c.port }));

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-route-'));
  primary = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  await primary.psql('create table t (id int primary key, pad text)', { db: 'appdb' });
  await primary.psql('alter table t owner to app', { db: 'appdb' });
  await primary.psql('create database otherdb owner app');
  s1 = await startStandby(primary);
  s2 = await startStandby(primary);
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  const common = { dbname: 'appdb', server_password: PW, tls: { mode: 'disable' } };
  raw = {
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    admin: { users: ['app'] },
    pool: { pool_mode: 'transaction', default_pool_size: 4, query_wait_timeout: '20s' },
    health: { check_interval: '200ms', failure_threshold: 2, timeout: '2s', user: primary.superuser, password: primary.superuserPassword },
    databases: {
      rw: { ...common, servers: servers(), target_session_attrs: 'read-write' },
      ro: { ...common, servers: servers(), target_session_attrs: 'standby' },
      split: { ...common, servers: servers(), read_write_split: true, read_your_writes: true, max_replica_lag: '64kB' },
      '*': { host: primary.host, port: primary.port, server_password: PW, tls: { mode: 'disable' } },
    },
    log: { level: 'info' },
  };
  px = await startPostern(raw);
  // The first checks have found every role.
  await waitUntil(async () => (await showHosts()).filter((h) => h.role !== 'unknown' && h.state === 'up').length === 9, 15_000, 'roles');
});

after(async () => {
  await px?.close();
  await s2?.stop();
  await s1?.stop();
  await primary?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('SHOW HOSTS lists each server with the role its checks found', async () => {
  const rows = (await showHosts()).filter((h) => h.database === 'rw');
  const byPort = new Map(rows.map((r) => [Number(r.port), r]));
  assert.equal(byPort.get(primary.port)?.role, 'primary');
  assert.equal(byPort.get(s1.port)?.role, 'standby');
  assert.equal(byPort.get(s2.port)?.role, 'standby');
  for (const r of rows) assert.equal(r.state, 'up');
});

test('read-write lands on the primary; standby spreads over both standbys', async () => {
  const rw = client('rw');
  const ro = client('ro');
  await rw.connect();
  await ro.connect();
  try {
    assert.deepEqual(new Set(await portsOver(rw, 6)), new Set([primary.port]));
    assert.equal((await rw.query('select pg_is_in_recovery() as r')).rows[0].r, false);
    assert.deepEqual(new Set(await portsOver(ro, 8)), new Set([s1.port, s2.port]));
    assert.equal((await ro.query('select pg_is_in_recovery() as r')).rows[0].r, true);
  } finally {
    await rw.end();
    await ro.end();
  }
  // psql (libpq) alike.
  const r = await psql(`host=127.0.0.1 port=${px.port} user=app dbname=rw`, 'select inet_server_port()');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(Number(r.stdout.trim()), primary.port);
});

test('read_write_split: autocommit reads go to standbys, writes and BEGIN blocks to the primary, BEGIN READ ONLY to a standby', async () => {
  const c = client('split');
  await c.connect();
  try {
    const reads = await portsOver(c, 8);
    assert.deepEqual(new Set(reads), new Set([s1.port, s2.port]), 'simple-protocol reads');
    // Extended protocol (a parameter) alike.
    const ext = await portsOver(c, 6, { text: 'select inet_server_port() as p, $1::int as x', values: [1] } as unknown as string);
    assert.ok(
      ext.every((p) => p === s1.port || p === s2.port),
      `extended reads ${ext}`,
    );
    const both = (await c.query('select 1 as a; select inet_server_port() as p')) as unknown as pg.QueryResult[];
    const p2 = both[1]?.rows[0].p as number;
    assert.ok(p2 === s1.port || p2 === s2.port, 'two reads in one text');
    // (Before this client writes: after a write, read_your_writes keeps its reads on the primary for a while.)
    await c.query('begin read only');
    const inBlock = await port(c);
    assert.ok(inBlock === s1.port || inBlock === s2.port, 'a READ ONLY block');
    // A write in a READ ONLY block fails as it would on the primary.
    await assert.rejects(c.query("insert into t values (2, 'y')"), (e: Error & { code?: string }) => e.code === '25006');
    await c.query('rollback');
    const ins = await c.query("insert into t values (1, 'x') returning inet_server_port() as p");
    assert.equal(ins.rows[0].p, primary.port);
    // A function off the read-only list is not a proven read.
    assert.equal(await port(c, "select inet_server_port() as p, nextval(pg_get_serial_sequence('t','id')) is null as n"), primary.port);
    assert.equal(await port(c, 'select inet_server_port() as p from t for update'), primary.port);
    await c.query('begin');
    assert.equal(await port(c), primary.port, 'a BEGIN block');
    await c.query('commit');
    // A multi-statement text is read-only only if every statement is.
    const mixed = (await c.query(
      "select 1 as a; update t set pad = 'u' where id = 1 returning inet_server_port() as p",
    )) as unknown as pg.QueryResult[];
    assert.equal(mixed[1]?.rows[0].p, primary.port, 'a read and a write in one text');
  } finally {
    await c.end();
  }
});

test('pipelined reads and writes (postgres.js, named statements): every write lands on the primary', async () => {
  // One connection: postgres.js sends queued queries without waiting for the answers before them.
  const sql = postgres({ host: '127.0.0.1', port: px.port, user: 'app', database: 'split', max: 1 });
  try {
    for (let round = 0; round < 5; round++) {
      const out = await Promise.all([
        sql`select inet_server_port() as p`,
        sql`insert into t values (${10 + round}, 'z') on conflict (id) do update set pad = 'z' returning inet_server_port() as p`,
        sql`select inet_server_port() as p`,
        sql`update t set pad = 'w' where id = ${10 + round} returning inet_server_port() as p`,
      ]);
      const ports = out.map((r) => (r[0] as { p: number }).p);
      assert.equal(ports[1], primary.port, `insert ${ports}`);
      assert.equal(ports[3], primary.port, `update ${ports}`);
      for (const i of [0, 2]) assert.ok([primary.port, s1.port, s2.port].includes(ports[i] as number));
    }
  } finally {
    await sql.end();
  }
});

test('a standby past max_replica_lag gets no reads; read-your-writes sees its own insert with replay paused', async () => {
  await s1.psql('select pg_wal_replay_pause()');
  try {
    // More WAL than max_replica_lag (64kB) that s1 will not replay.
    await primary.psql("insert into t select g, repeat('p', 200) from generate_series(100, 2100) g", { db: 'appdb' });
    await waitUntil(
      async () => (await showHosts()).some((h) => h.database === 'split' && Number(h.port) === s1.port && Number(h.lag_bytes) > 65536),
      10_000,
      's1 lag seen',
    );
    const c = client('split');
    await c.connect();
    try {
      const reads = await portsOver(c, 8);
      assert.ok(!reads.includes(s1.port), `no read on the lagging standby: ${reads}`);
      // Read-your-writes: pause s2 as well; the client's own row must be visible at once.
      await s2.psql('select pg_wal_replay_pause()');
      await c.query("insert into t values (5000, 'mine')");
      const seen = await c.query('select count(*)::int as n, inet_server_port() as p from t where id = 5000');
      assert.equal(seen.rows[0].n, 1, 'the client sees its own write');
      assert.equal(seen.rows[0].p, primary.port, 'with both standbys behind, the read went to the primary');
    } finally {
      await c.end();
    }
  } finally {
    await s1.psql('select pg_wal_replay_resume()');
    await s2.psql('select pg_wal_replay_resume()');
  }
  // Caught up again: reads spread over both standbys.
  const c = client('split');
  await c.connect();
  try {
    await waitUntil(async () => new Set(await portsOver(c, 6)).size === 2, 10_000, 'both standbys used again');
  } finally {
    await c.end();
  }
});

test('pgbench over the split in transaction mode: 0 failed transactions', async () => {
  const env = pgEnv({ PGHOST: '127.0.0.1', PGPORT: String(primary.port), PGUSER: 'app', PGPASSWORD: PW, PGDATABASE: 'appdb' });
  const init = await run('pgbench', ['-i', '-s', '1', '-q'], { env });
  assert.equal(init.code, 0, init.stderr);
  const via = pgEnv({ PGHOST: '127.0.0.1', PGPORT: String(px.port), PGUSER: 'app', PGDATABASE: 'split' });
  for (const args of [
    ['-n', '-S', '-M', 'extended', '-c', '4', '-T', '2'],
    ['-n', '-M', 'simple', '-c', '4', '-T', '2'],
  ]) {
    const r = await run('pgbench', args, { env: via });
    assert.equal(r.code, 0, r.stderr + r.stdout);
    assert.match(r.stdout, /number of failed transactions: 0 /);
    assert.match(r.stdout, /number of transactions actually processed: [1-9]/);
  }
});

test('a server killed mid-transaction: its client gets an error, the others go on', async () => {
  const a = client('rw');
  const b = client('rw');
  a.on('error', () => {});
  await a.connect();
  await b.connect();
  try {
    await a.query('begin');
    const pid = (await a.query('select pg_backend_pid() as p')).rows[0].p as number;
    await primary.psql(`select pg_terminate_backend(${pid})`);
    await assert.rejects(a.query('select 1'));
    assert.equal((await b.query('select 41 + 1 as x')).rows[0].x, 42);
    assert.equal(await port(b), primary.port);
  } finally {
    await a.end().catch(() => {});
    await b.end();
  }
});

test('the wildcard entry serves a database that is not listed', async () => {
  const r = await psql(`host=127.0.0.1 port=${px.port} user=app dbname=otherdb`, 'select current_database()');
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), 'otherdb');
  const admin = `host=127.0.0.1 port=${px.port} user=app dbname=postern`;
  const pools = async (): Promise<string> => (await psql(admin, 'SHOW POOLS')).stdout;
  assert.match(await pools(), /^otherdb\|app\|/m, 'a pool made on demand');
  // Unused for server_idle_timeout: its connections close, then the janitor drops the pool.
  assert.equal((await psql(admin, 'SET pool.server_idle_timeout = 1')).code, 0);
  try {
    await waitUntil(async () => !/^otherdb\|/m.test(await pools()), 15_000, 'the unused wildcard pool dropped');
  } finally {
    assert.equal((await psql(admin, "SET pool.server_idle_timeout = '600s'")).code, 0);
  }
});

test('a reload adds a database while a session stays connected, and ends sessions of a removed one', async () => {
  const keep = client('rw');
  const gone = client('ro');
  let goneError: (Error & { code?: string }) | null = null;
  gone.on('error', (e) => {
    goneError ??= e;
  });
  await keep.connect();
  await gone.connect();
  await port(gone);
  const dbs = { ...(raw.databases as Record<string, unknown>) };
  delete dbs.ro;
  delete dbs['*'];
  dbs.added = { host: primary.host, port: primary.port, dbname: 'otherdb', server_password: PW, tls: { mode: 'disable' } };
  const file = join(dir, 'reloaded.json');
  writeFileSync(file, JSON.stringify({ ...raw, databases: dbs }));
  assert.deepEqual(px.postern.reload(file), []);
  try {
    const r = await psql(`host=127.0.0.1 port=${px.port} user=app dbname=added`, 'select current_database()');
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'otherdb');
    assert.equal(await port(keep), primary.port, 'the session on an unchanged database goes on');
    await waitUntil(() => goneError !== null, 5000, 'the removed database session ended');
    assert.equal((goneError as unknown as { code?: string }).code, '57P01');
    // The removed database's pools are retired: not listed, nothing reopened.
    const pools = (await psql(`host=127.0.0.1 port=${px.port} user=app dbname=postern`, 'SHOW POOLS')).stdout;
    assert.doesNotMatch(pools, /^ro\|/m);
    assert.match(pools, /^rw\|/m);
    const unknown = await psql(`host=127.0.0.1 port=${px.port} user=app dbname=ro`, 'select 1');
    assert.notEqual(unknown.code, 0);
    assert.match(unknown.stderr, /database "ro" does not exist/);
  } finally {
    await keep.end();
    await gone.end().catch(() => {});
    writeFileSync(file, JSON.stringify(raw));
    assert.deepEqual(px.postern.reload(file), []);
    // The re-added database's servers are new to the checks: wait for their roles.
    await waitUntil(
      async () => (await showHosts()).filter((h) => h.role !== 'unknown' && h.state === 'up').length === 9,
      15_000,
      'roles again',
    );
  }
});

test('a standby that stops: clients between transactions go on on the other one, unnoticed', async () => {
  const c = client('ro');
  await c.connect();
  try {
    assert.deepEqual(new Set(await portsOver(c, 6)), new Set([s1.port, s2.port]));
    await s2.stop();
    // No error for this client: each transaction goes to a standby that answers.
    const after = await portsOver(c, 8);
    assert.deepEqual(new Set(after), new Set([s1.port]));
    await waitUntil(
      async () => (await showHosts()).some((h) => h.database === 'ro' && Number(h.port) === s2.port && h.state === 'down'),
      10_000,
      'the stopped standby marked down',
    );
  } finally {
    await c.end();
  }
});

test('failover: the primary stops, a standby is promoted, writes find it with no restart', async () => {
  const c = client('rw');
  c.on('error', () => {});
  await c.connect();
  try {
    assert.equal(await port(c), primary.port);
    await primary.stop();
    await s1.promote();
    const t0 = Date.now();
    const landed = await waitUntil(
      async () => {
        try {
          const r = await c.query("insert into t values (9000, 'after') on conflict (id) do nothing returning 1");
          void r;
          return await port(c);
        } catch {
          return null;
        }
      },
      20_000,
      'a write through Postern after the failover',
    );
    assert.equal(landed, s1.port);
    // Found by the checks, not by a restart or a configuration change.
    assert.ok(Date.now() - t0 < 20_000);
    const hosts = await waitUntil(
      async () => {
        const rows = (await showHosts()).filter((h) => h.database === 'rw');
        return rows.find((h) => Number(h.port) === primary.port)?.state === 'down' ? rows : null;
      },
      10_000,
      'the old primary marked down',
    );
    assert.equal(hosts.find((h) => Number(h.port) === s1.port)?.role, 'primary');
    assert.ok(logsWith(px.logs, 'server marked down').length > 0);
    assert.ok(logsWith(px.logs, 'server role changed').some((l) => l.role === 'primary'));
  } finally {
    await c.end().catch(() => {});
  }
});

test('no server qualifies and none is on its way: the client is refused at once, naming the database and each server', async () => {
  // After the failover: the old primary and standby 2 are down, standby 1 is the primary now.
  const r = await psql(`host=127.0.0.1 port=${px.port} user=app dbname=ro`, 'select 1');
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /no server of database "ro" is usable for target_session_attrs=standby/);
  assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${s1.port}: server is not in hot standby mode`));
  assert.match(r.stderr, new RegExp(`127\\.0\\.0\\.1:${s2.port}: down`));
  // read-write still finds the promoted server.
  const w = await psql(`host=127.0.0.1 port=${px.port} user=app dbname=rw`, 'select inet_server_port()');
  assert.equal(w.code, 0, w.stderr);
  assert.equal(Number(w.stdout.trim()), s1.port);
});
