// Every row of the declared-behaviour table (docs/transaction-mode.md) in
// transaction mode, with a background load so consecutive transactions land
// on different server connections: session SET/RESET of unreported settings
// (emulated), SQL PREPARE/EXECUTE, LISTEN/NOTIFY, session advisory locks,
// temporary tables, WITH HOLD cursors, SET ROLE (pinned), and a pinned
// connection never lent to anyone else.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { type RunningPostern, startPostern, waitUntil } from '../helpers/postern.ts';

const PW = 'txm-pw';
let dir: string;
let cluster: PgCluster;
let px: RunningPostern;
let stopLoad = false;
let load: Promise<void> = Promise.resolve();

function client(): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', database: 'appdb' });
}

async function pid(c: pg.Client): Promise<number> {
  return (await c.query('select pg_backend_pid() as p')).rows[0].p as number;
}

/** Runs `n` transactions and returns the distinct server pids they used. */
async function pidsOver(c: pg.Client, n: number): Promise<Set<number>> {
  const pids = new Set<number>();
  for (let i = 0; i < n; i++) {
    pids.add(await pid(c));
    await new Promise((r) => setTimeout(r, 2));
  }
  return pids;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-txm-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  await cluster.psql('create role other_role; grant other_role to app');
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  px = await startPostern({
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool: { pool_mode: 'transaction', default_pool_size: 8 },
    databases: { appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } } },
    log: { level: 'info' },
  });
  const busy = [client(), client()];
  for (const c of busy) await c.connect();
  load = (async () => {
    while (!stopLoad) await Promise.all(busy.map((c) => c.query('select pg_sleep(0.002)')));
    for (const c of busy) await c.end();
  })();
});

after(async () => {
  stopLoad = true;
  await load;
  await px?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('an unpinned client really moves between server connections (control)', async () => {
  const c = client();
  await c.connect();
  assert.ok((await pidsOver(c, 30)).size >= 2);
  assert.equal((await c.query(`select current_setting('statement_timeout') as v`)).rows[0].v, '0');
  await c.end();
});

test('SET / RESET of a setting the server does not report is carried to every server connection (emulated)', async () => {
  const c = client();
  await c.connect();
  await c.query(`set statement_timeout = '4321ms'`);
  const seen = new Set<string>();
  const pids = new Set<number>();
  for (let i = 0; i < 30; i++) {
    const r = await c.query(`select current_setting('statement_timeout') as v, pg_backend_pid() as p`);
    seen.add(r.rows[0].v);
    pids.add(r.rows[0].p);
  }
  assert.deepEqual([...seen], ['4321ms']);
  assert.ok(pids.size >= 2, 'moved between servers');
  await c.query('reset statement_timeout');
  for (let i = 0; i < 10; i++) assert.equal((await c.query(`select current_setting('statement_timeout') as v`)).rows[0].v, '0');
  // Another client on the same connections never sees it either.
  const d = client();
  await d.connect();
  await c.query(`set work_mem = '9MB'`);
  for (let i = 0; i < 15; i++) assert.equal((await d.query(`select current_setting('work_mem') as v`)).rows[0].v, '4MB');
  assert.equal(px.postern.ctx.stats.pins.size, 0, 'nothing pinned by SET');
  await c.end();
  await d.end();
});

test('SQL PREPARE / EXECUTE: the client is pinned and its statement keeps working', async () => {
  const c = client();
  await c.connect();
  await c.query('prepare plus_one(int) as select $1 + 1 as v');
  const pids = new Set<number>();
  for (let i = 0; i < 15; i++) {
    const r = await c.query(`execute plus_one(${i})`);
    assert.equal(r.rows[0].v, i + 1);
    pids.add(await pid(c));
  }
  assert.equal(pids.size, 1, 'pinned to one server connection');
  assert.equal(px.postern.ctx.stats.pins.get('PREPARE'), 1);
  const [only] = pids;
  await c.end();
  // The pinned connection carried session state: it is closed, never lent on.
  await waitUntil(
    async () => Number(await cluster.psql(`select count(*) from pg_stat_activity where pid = ${only}`)) === 0,
    10_000,
    'pinned server closed',
  );
});

test('LISTEN / NOTIFY: the listener is pinned and hears notifications sent by others', async () => {
  const listener = client();
  await listener.connect();
  const heard: string[] = [];
  listener.on('notification', (n) => heard.push(`${n.channel}:${n.payload}`));
  await listener.query('listen jobs');
  const sender = client();
  await sender.connect();
  await sender.query(`notify jobs, 'one'`);
  await sender.query(`select pg_notify('jobs', 'two')`);
  await waitUntil(() => heard.length === 2, 10_000, 'two notifications');
  assert.deepEqual(heard, ['jobs:one', 'jobs:two']);
  assert.equal(px.postern.ctx.stats.pins.get('LISTEN'), 1);
  await listener.end();
  await sender.end();
});

test('session advisory lock, temporary table, WITH HOLD cursor, SET ROLE: pinned, and each keeps working', async () => {
  const lock = client();
  await lock.connect();
  await lock.query('select pg_advisory_lock(4242)');
  await pidsOver(lock, 5);
  assert.equal((await lock.query('select pg_advisory_unlock(4242) as ok')).rows[0].ok, true, 'unlocked by the session that holds it');

  const temp = client();
  await temp.connect();
  await temp.query('create temp table scratch (x int)');
  for (let i = 0; i < 5; i++) await temp.query('insert into scratch values ($1)', [i]);
  assert.equal((await temp.query('select count(*)::int as n from scratch')).rows[0].n, 5);

  const cur = client();
  await cur.connect();
  await cur.query('begin');
  await cur.query('declare c cursor with hold for select generate_series(1, 6) as n');
  await cur.query('commit');
  const a = await cur.query('fetch 2 from c');
  await pidsOver(cur, 3);
  const b = await cur.query('fetch 2 from c');
  assert.deepEqual(
    [...a.rows, ...b.rows].map((r) => r.n),
    [1, 2, 3, 4],
  );

  const role = client();
  await role.connect();
  await role.query('set role other_role');
  for (let i = 0; i < 5; i++) assert.equal((await role.query('select current_user as u')).rows[0].u, 'other_role');

  const pins = px.postern.ctx.stats.pins;
  assert.equal(pins.get('session advisory lock'), 1);
  assert.equal(pins.get('temporary table'), 1);
  assert.equal(pins.get('WITH HOLD cursor'), 1);
  assert.equal(pins.get('SET ROLE'), 1);
  for (const c of [lock, temp, cur, role]) await c.end();
  assert.ok(px.logs.some((l) => l.includes('client pinned to its server connection')));
});
