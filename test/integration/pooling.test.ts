// Pooling against a real PostgreSQL: transaction mode under pgbench (50
// clients over 5 server connections), 1,000 concurrent clients over 10,
// session state carried across servers (SET TIME ZONE), a client killed
// mid-transaction, a terminated pooled server, query_wait_timeout,
// max_client_conn, cancel while others share the pool, statement mode, and
// session-mode reuse after DISCARD ALL. One cluster; a Postern per setup.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { pgEnv, type RunningPostern, run, startPostern, waitUntil } from '../helpers/postern.ts';

const PW = 'pool-test-pw';
let dir: string;
let cluster: PgCluster;
const started: RunningPostern[] = [];

async function postern(pool: Record<string, unknown>): Promise<RunningPostern> {
  const p = await startPostern({
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool,
    databases: { appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } } },
    log: { level: 'warn' },
  });
  started.push(p);
  return p;
}

function client(port: number): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port, user: 'app', database: 'appdb', password: 'unused' });
}

async function serverBackends(): Promise<number> {
  return Number(await cluster.psql(`select count(*) from pg_stat_activity where usename = 'app' and backend_type = 'client backend'`));
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-pool-'));
  cluster = await startPostgres({
    users: [{ name: 'app', password: PW }],
    databases: [{ name: 'appdb', owner: 'app' }],
    settings: { max_connections: 60 },
  });
  // Clients are trusted at Postern; Postern logs into the server with the configured password.
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  const init = await run('pgbench', ['-i', '-s', '1', '-q', 'appdb'], { env: cluster.env() });
  assert.equal(init.code, 0, init.stderr);
  await cluster.psql(
    'grant select, insert, update, delete on all tables in schema public to app; create table if not exists t_kill (id int); grant all on t_kill to app',
    {
      db: 'appdb',
    },
  );
});

after(async () => {
  for (const p of started) await p.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('transaction mode', () => {
  let px: RunningPostern;
  before(async () => {
    px = await postern({ pool_mode: 'transaction', default_pool_size: 5 });
  });

  for (const mode of ['simple', 'extended', 'prepared'] as const) {
    test(`pgbench -c 50 over a pool of 5, -M ${mode}: zero failures, never more than 5 server connections`, async () => {
      let peak = 0;
      let sampling = true;
      const sampler = (async () => {
        while (sampling) {
          peak = Math.max(peak, await serverBackends());
          await new Promise((r) => setTimeout(r, 50));
        }
      })();
      const r = await run(
        'pgbench',
        ['-n', '-S', '-M', mode, '-c', '50', '-j', '2', '-t', '100', '-h', '127.0.0.1', '-p', String(px.port), '-U', 'app', 'appdb'],
        {
          env: pgEnv(),
        },
      );
      sampling = false;
      await sampler;
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /number of transactions actually processed: 5000\/5000/);
      assert.match(r.stdout, /number of failed transactions: 0 /);
      assert.ok(peak >= 1 && peak <= 5, `peak server connections ${peak}`);
      const counts = px.postern.ctx.pools.all()[0]?.counts();
      assert.ok(counts && counts.sv_active === 0 && counts.cl_waiting === 0, JSON.stringify(counts));
    });
  }

  test('1,000 concurrent clients over 10 server connections: every query answered, never more than 10 on the server', async () => {
    const p10 = await postern({ pool_mode: 'transaction', default_pool_size: 10 });
    const clients = Array.from({ length: 1000 }, () => client(p10.port));
    for (let i = 0; i < clients.length; i += 100) await Promise.all(clients.slice(i, i + 100).map((c) => c.connect()));
    const results = await Promise.all(clients.map((c, i) => c.query('select $1::int * 2 as v, pg_sleep(0.001)', [i])));
    results.forEach((r, i) => {
      assert.equal(r.rows[0].v, i * 2);
    });
    assert.ok((await serverBackends()) <= 10 + 5 /* the other pool's idle connections */);
    const counts = p10.postern.ctx.pools.all()[0]?.counts();
    assert.ok(counts && counts.sv_idle + counts.sv_active <= 10, JSON.stringify(counts));
    await Promise.all(clients.map((c) => c.end()));
  });

  test('SET TIME ZONE is seen by the next transaction on another server connection', async () => {
    const a = client(px.port);
    const b = client(px.port);
    await a.connect();
    await b.connect();
    await a.query(`set time zone 'Asia/Tokyo'`);
    const pidA = (await a.query('select pg_backend_pid() as p')).rows[0].p as number;
    // b takes the connection a just gave back (the pool lends the most recent idle one) and keeps it.
    await b.query('begin');
    const pidB = (await b.query('select pg_backend_pid() as p')).rows[0].p as number;
    const r = await a.query(`select pg_backend_pid() as p, current_setting('TimeZone') as tz`);
    assert.notEqual(r.rows[0].p, pidB, 'a landed on another server connection');
    assert.equal(r.rows[0].tz, 'Asia/Tokyo');
    assert.equal(pidA === pidB || pidA !== r.rows[0].p, true);
    await b.query('rollback');
    await a.end();
    await b.end();
  });

  test('a client killed mid-transaction does not poison the pool: the connection is rolled back and reused', async () => {
    const p1 = await postern({ pool_mode: 'transaction', default_pool_size: 1 });
    const victim = client(p1.port);
    victim.on('error', () => {});
    await victim.connect();
    await victim.query('begin');
    await victim.query('insert into t_kill values (1)');
    const pid = (await victim.query('select pg_backend_pid() as p')).rows[0].p as number;
    (victim as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    const next = client(p1.port);
    await next.connect();
    const r = await next.query(
      `select (select count(*)::int from t_kill) as n, now() = statement_timestamp() as fresh, pg_backend_pid() as p`,
    );
    assert.equal(r.rows[0].n, 0, 'the killed transaction was not committed');
    assert.equal(r.rows[0].fresh, true, 'the next client is not inside the old transaction');
    assert.equal(r.rows[0].p, pid, 'the same server connection, cleaned and reused');
    await next.end();
  });

  test('a client killed mid-query: the query is cancelled, the connection drained and reused', async () => {
    const p1 = await postern({ pool_mode: 'transaction', default_pool_size: 1 });
    const victim = client(p1.port);
    victim.on('error', () => {});
    await victim.connect();
    const pid = (await victim.query('select pg_backend_pid() as p')).rows[0].p as number;
    victim.query('select pg_sleep(60)').catch(() => {});
    await waitUntil(
      async () =>
        Number(
          await cluster.psql(
            `select count(*) from pg_stat_activity where pid = ${pid} and query like 'select pg_sleep(60)%' and state = 'active'`,
          ),
        ) === 1,
      10_000,
    );
    (victim as unknown as { connection: { stream: { destroy(): void } } }).connection.stream.destroy();
    const next = client(p1.port);
    await next.connect();
    const started = Date.now();
    const r = await next.query('select pg_backend_pid() as p, 1 as one');
    assert.equal(r.rows[0].one, 1);
    assert.equal(r.rows[0].p, pid, 'the same server connection');
    assert.ok(Date.now() - started < 30_000, 'the sleep was cancelled, not waited out');
    await next.end();
  });

  test('pg_terminate_backend on a pooled server: the pool replaces it and the client carries on', async () => {
    const c = client(px.port);
    await c.connect();
    const pid = (await c.query('select pg_backend_pid() as p')).rows[0].p as number;
    await cluster.psql(`select pg_terminate_backend(${pid})`);
    await waitUntil(async () => Number(await cluster.psql(`select count(*) from pg_stat_activity where pid = ${pid}`)) === 0, 10_000);
    const r = await c.query('select pg_backend_pid() as p, 7 as v');
    assert.equal(r.rows[0].v, 7);
    assert.notEqual(r.rows[0].p, pid);
    await c.end();
  });

  test('cancel of pg_sleep reaches only its own query while other clients share the pool', async () => {
    const p2 = await postern({ pool_mode: 'transaction', default_pool_size: 2 });
    const sql = postgres({ host: '127.0.0.1', port: p2.port, user: 'app', database: 'appdb', max: 1, onnotice: () => {} });
    const other = client(p2.port);
    await other.connect();
    const q = sql`select pg_sleep(30)`;
    const pending = q.then(
      () => null,
      (e: { code?: string }) => e,
    );
    await waitUntil(
      async () =>
        Number(
          await cluster.psql(`select count(*) from pg_stat_activity where query like 'select pg_sleep(30)%' and wait_event = 'PgSleep'`),
        ) === 1,
      10_000,
    );
    const busy = Array.from({ length: 20 }, (_, i) => other.query('select $1::int as i', [i]));
    q.cancel();
    assert.equal((await pending)?.code, '57014');
    const done = await Promise.all(busy);
    done.forEach((r, i) => {
      assert.equal(r.rows[0].i, i);
    });
    const [after] = await sql`select 'ok' as s`;
    assert.equal(after?.s, 'ok');
    await sql.end();
    await other.end();
  });
});

describe('limits', () => {
  test('query_wait_timeout: a client that cannot get a server in time gets an error and is disconnected', async () => {
    const p = await postern({ pool_mode: 'transaction', default_pool_size: 1, query_wait_timeout: '500ms' });
    const holder = client(p.port);
    await holder.connect();
    await holder.query('begin');
    const waiter = client(p.port);
    waiter.on('error', () => {});
    await waiter.connect();
    const err = await waiter.query('select 1').then(
      () => null,
      (e: { code?: string; message: string }) => e,
    );
    assert.equal(err?.code, '08P01');
    assert.match(err?.message ?? '', /query_wait_timeout/);
    await holder.query('rollback');
    assert.equal((await holder.query('select 1 as x')).rows[0].x, 1);
    await holder.end();
  });

  test('client_idle_timeout and idle_transaction_timeout end idle clients (checked by the janitor)', async () => {
    const p = await postern({ pool_mode: 'transaction', client_idle_timeout: '1s', idle_transaction_timeout: '1s' });
    const idle = client(p.port);
    const inTx = client(p.port);
    const errors = new Map<pg.Client, { code?: string; message: string }>();
    for (const c of [idle, inTx]) c.on('error', (e: Error & { code?: string }) => errors.has(c) || errors.set(c, e));
    await idle.connect();
    await inTx.connect();
    await inTx.query('begin');
    await inTx.query('insert into t_kill values (42)');
    await waitUntil(() => errors.size === 2, 10_000, 'both clients ended');
    assert.equal(errors.get(idle)?.code, '57P05', String(errors.get(idle)?.message));
    assert.equal(errors.get(inTx)?.code, '25P03');
    assert.equal(
      await cluster.psql('select count(*) from t_kill where id = 42', { db: 'appdb' }),
      '0',
      'the idle transaction was rolled back',
    );
  });

  test('reserve_pool_size opens extra connections for a client that waited reserve_pool_timeout; max_db_connections caps all pools', async () => {
    const p = await postern({ pool_mode: 'transaction', default_pool_size: 1, reserve_pool_size: 1, reserve_pool_timeout: '300ms' });
    const holder = client(p.port);
    await holder.connect();
    await holder.query('begin');
    const waiter = client(p.port);
    await waiter.connect();
    assert.equal((await waiter.query('select 3 as v')).rows[0].v, 3, 'served by the reserve connection');
    assert.equal(p.postern.ctx.pools.all()[0]?.total, 2);
    await holder.query('rollback');
    await holder.end();
    await waiter.end();

    const capped = await postern({ pool_mode: 'transaction', default_pool_size: 5, max_db_connections: 2 });
    const cs = Array.from({ length: 5 }, () => client(capped.port));
    for (const c of cs) await c.connect();
    const rs = await Promise.all(cs.map((c, i) => c.query('select pg_sleep(0.05), $1::int as i', [i])));
    rs.forEach((r, i) => {
      assert.equal(r.rows[0].i, i);
    });
    assert.equal(capped.postern.ctx.pools.all()[0]?.total, 2, 'never more than max_db_connections');
    for (const c of cs) await c.end();
  });

  test('server_check_query runs on a connection idle past server_check_delay; a failing check replaces it', async () => {
    const p = await postern({ pool_mode: 'transaction', default_pool_size: 1, server_check_query: 'select 1/0', server_check_delay: '0s' });
    const c = client(p.port);
    await c.connect();
    const first = (await c.query('select pg_backend_pid() as p')).rows[0].p as number;
    await new Promise((r) => setTimeout(r, 20));
    const second = (await c.query('select pg_backend_pid() as p')).rows[0].p as number;
    assert.notEqual(second, first, 'the checked connection failed its check and was replaced');
    await waitUntil(async () => Number(await cluster.psql(`select count(*) from pg_stat_activity where pid = ${first}`)) === 0, 10_000);
    await c.end();
  });

  test('server_idle_timeout and server_lifetime retire connections', async () => {
    const p = await postern({
      pool_mode: 'transaction',
      default_pool_size: 2,
      server_idle_timeout: '1s',
      server_lifetime: '1s',
      server_check_query: '',
    });
    const c = client(p.port);
    await c.connect();
    const pid = (await c.query('select pg_backend_pid() as p')).rows[0].p as number;
    await waitUntil(
      async () => Number(await cluster.psql(`select count(*) from pg_stat_activity where pid = ${pid}`)) === 0,
      10_000,
      'idle connection closed',
    );
    const again = (await c.query('select pg_backend_pid() as p')).rows[0].p as number;
    assert.notEqual(again, pid);
    await c.end();
  });

  test('max_client_conn: the client past the limit gets FATAL 53300', async () => {
    const p = await postern({ pool_mode: 'transaction', max_client_conn: 3 });
    const ok = [client(p.port), client(p.port), client(p.port)];
    for (const c of ok) await c.connect();
    const extra = client(p.port);
    const err = await extra.connect().then(
      () => null,
      (e: { code?: string; message: string }) => e,
    );
    assert.equal(err?.code, '53300');
    assert.match(err?.message ?? '', /too many clients/);
    for (const c of ok) await c.end();
  });
});

describe('statement and session modes', () => {
  test('statement mode refuses a transaction block with a clear error and keeps serving', async () => {
    const p = await postern({ pool_mode: 'statement', default_pool_size: 2 });
    const c = client(p.port);
    await c.connect();
    const err = await c.query('begin').then(
      () => null,
      (e: { code?: string; message: string; hint?: string }) => e,
    );
    assert.equal(err?.code, '0A000');
    assert.match(err?.message ?? '', /transaction blocks are not allowed in statement pooling mode/);
    const r = await c.query('select 5 as v');
    assert.equal(r.rows[0].v, 5);
    // Under load the next query can reach the server before Postern's own ROLLBACK is answered
    // (seen in CI as a hang); the connection must not be handed back with that answer still owed.
    for (let i = 0; i < 20; i++) {
      await assert.rejects(c.query('begin'), (e: { code?: string }) => e.code === '0A000');
      assert.equal((await c.query('select $1::int as i', [i])).rows[0].i, i);
    }
    // The refused BEGIN was rolled back on the server: nothing is left open there.
    assert.equal(
      await cluster.psql(`select count(*) from pg_stat_activity where usename = 'app' and state like 'idle in transaction%'`),
      '0',
    );
    await c.end();
  });

  test('session mode: the next client reuses the server connection, reset by DISCARD ALL', async () => {
    const p = await postern({ pool_mode: 'session', default_pool_size: 1 });
    const a = client(p.port);
    await a.connect();
    await a.query(`set work_mem = '7MB'`);
    await a.query('create temp table scratch (x int)');
    const pidA = (await a.query('select pg_backend_pid() as p')).rows[0].p as number;
    await a.end();
    const b = client(p.port);
    await b.connect();
    const r = await b.query(
      `select pg_backend_pid() as p, current_setting('work_mem') as wm, to_regclass('pg_temp.scratch') is null as gone`,
    );
    assert.equal(r.rows[0].p, pidA, 'same server connection');
    assert.equal(r.rows[0].wm, '4MB');
    assert.equal(r.rows[0].gone, true);
    await b.end();
  });
});
