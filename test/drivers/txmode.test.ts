// Named prepared statements through Postern in transaction mode, across
// forced server changes: pgjdbc with prepareThreshold=1, node-postgres named
// queries, postgres.js (which prepares every query by default). A background
// load holds server connections so each driver's transactions land on
// different ones; the backend pids in the results prove they did.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { type RunningPostern, run, startPostern } from '../helpers/postern.ts';

const JAR = process.env.POSTERN_PGJDBC_JAR ?? '/usr/share/java/postgresql.jar';
const PW = 'txmode-pw';
let dir: string;
let cluster: PgCluster;
let px: RunningPostern;
let stopLoad = false;
let load: Promise<void> = Promise.resolve();

/** Keeps the pool's connections busy in short transactions until stopped. */
async function backgroundLoad(port: number): Promise<void> {
  const clients = [0, 1].map(() => new pg.Client({ host: '127.0.0.1', port, user: 'app', database: 'appdb' }));
  for (const c of clients) await c.connect();
  while (!stopLoad) {
    await Promise.all(clients.map((c) => c.query('select pg_sleep(0.003)')));
  }
  for (const c of clients) await c.end();
}

before(async () => {
  assert.ok(existsSync(JAR), `pgjdbc jar missing at ${JAR}: apt-get install -y libpostgresql-jdbc-java (scripts/install-deps.sh does)`);
  dir = mkdtempSync(join(tmpdir(), 'postern-txmode-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  px = await startPostern({
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool: { pool_mode: 'transaction', default_pool_size: 3 },
    databases: { appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } } },
    log: { level: 'warn' },
  });
  load = backgroundLoad(px.port);
});

after(async () => {
  stopLoad = true;
  await load;
  await px?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('pgjdbc, prepareThreshold=1: named statements keep working on every server connection', async () => {
  const classes = join(dir, 'classes');
  const javac = await run('javac', ['-cp', JAR, '-d', classes, join(process.cwd(), 'test', 'drivers', 'java', 'TxPrepared.java')], {
    timeoutMs: 60_000,
  });
  assert.equal(javac.code, 0, javac.stderr);
  const url = `jdbc:postgresql://127.0.0.1:${px.port}/appdb?sslmode=disable`;
  const r = await run('java', [`-Duser.home=${dir}`, '-cp', `${classes}:${JAR}`, 'TxPrepared', url, 'app', 'x', '60'], {
    timeoutMs: 120_000,
  });
  assert.equal(r.code, 0, r.stdout + r.stderr);
  const rows = r.stdout.split('\n').filter((l) => l.startsWith('row '));
  assert.equal(rows.length, 60);
  const pids = new Set<string>();
  rows.forEach((l, idx) => {
    const [, i, v, pid] = l.split(' ');
    assert.equal(Number(i), idx + 1);
    assert.equal(Number(v), (idx + 1) * 3 + 1);
    pids.add(pid as string);
  });
  assert.ok(pids.size >= 2, `the statements ran on ${pids.size} server connection(s)`);
  assert.match(r.stdout, /done\n?$/);
});

test('node-postgres named queries and postgres.js prepared queries across server connections', async () => {
  const client = new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', database: 'appdb' });
  await client.connect();
  const sql = postgres({ host: '127.0.0.1', port: px.port, user: 'app', database: 'appdb', max: 2, onnotice: () => {} });
  const pgPids = new Set<number>();
  const jsPids = new Set<number>();
  for (let i = 0; i < 40; i++) {
    const r = await client.query({ name: 'double', text: 'select $1::int * 2 as d, pg_backend_pid() as p', values: [i] });
    assert.equal(r.rows[0].d, i * 2);
    pgPids.add(r.rows[0].p);
    const [row] = await sql`select ${i}::int + 100 as v, pg_backend_pid() as p`;
    assert.equal(row?.v, i + 100);
    jsPids.add(row?.p as number);
  }
  assert.ok(pgPids.size >= 2 && jsPids.size >= 2, `pids: pg ${pgPids.size}, postgres.js ${jsPids.size}`);
  // An error inside a pipeline does not leave anything behind.
  await assert.rejects(
    client.query({ name: 'bad', text: 'select 1/$1::int as x', values: [0] }),
    (e: { code?: string }) => e.code === '22012',
  );
  assert.equal(
    (await client.query({ name: 'double', text: 'select $1::int * 2 as d, pg_backend_pid() as p', values: [21] })).rows[0].d,
    42,
  );
  await client.end();
  await sql.end();
});
