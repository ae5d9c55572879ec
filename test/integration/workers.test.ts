// `workers: 2` through the built CLI: two worker processes on one port, with
// pgbench in transaction mode (zero failures, metrics of both workers added
// up to exactly what ran), cancel requests that land on the other worker,
// max_client_conn split rather than multiplied, PAUSE/RESUME and SHOW
// CLIENTS over both workers, a killed worker replaced, and SIGTERM draining
// everything. One cluster, one Postern for the file.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { freePort, type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { pgEnv, psql, run, startCli, waitUntil } from '../helpers/postern.ts';

const PW = { app: 'workers-app-pw-51', admin: 'workers-admin-pw-77' };
const MAX_CLIENTS = 10;
let dir: string;
let cluster: PgCluster;
let cli: ReturnType<typeof startCli>;
let port: number;
let adminPort: number;

function client(): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port, user: 'app', database: 'appdb', password: PW.app });
}

async function show(what: string): Promise<Array<Record<string, string>>> {
  const r = await psql(
    `host=127.0.0.1 port=${port} dbname=pgbouncer user=admin`,
    ['-F', '\t', '-P', 'tuples_only=off', '-P', 'footer=off', '-c', `SHOW ${what}`],
    {
      password: PW.admin,
    },
  );
  assert.equal(r.code, 0, r.stderr);
  const [head, ...rows] = r.stdout.split('\n').filter((l) => l !== '');
  const cols = (head ?? '').split('\t');
  return rows.map((l) => Object.fromEntries(l.split('\t').map((v, i) => [cols[i] as string, v])));
}

async function admin(sql: string): Promise<void> {
  const r = await psql(`host=127.0.0.1 port=${port} dbname=pgbouncer user=admin`, sql, { password: PW.admin });
  assert.equal(r.code, 0, r.stderr);
}

function workerPids(): number[] {
  try {
    return execFileSync('pgrep', ['-P', String(cli.child.pid)], { encoding: 'utf8' })
      .split('\n')
      .filter((l) => l !== '')
      .map(Number);
  } catch {
    return [];
  }
}

async function metric(name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{database="appdb",user="app"}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-workers-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW.app }], databases: [{ name: 'appdb', owner: 'app' }] });
  const init = await run('pgbench', ['-i', '-s', '1', '-q', 'appdb'], { env: cluster.env() });
  assert.equal(init.code, 0, init.stderr);
  await cluster.psql('grant select, insert, update, delete on all tables in schema public to app', { db: 'appdb' });
  const { makeVerifier, formatVerifier } = await import('../../src/auth/scram.ts');
  const line = async (u: string, p: string) => `"${u}" "${formatVerifier(await makeVerifier(p))}"`;
  writeFileSync(join(dir, 'users.txt'), `${await line('app', PW.app)}\n${await line('admin', PW.admin)}\n`);
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 scram-sha-256\n');
  port = await freePort();
  adminPort = await freePort();
  writeFileSync(
    join(dir, 'postern.yaml'),
    [
      `listen: { host: 127.0.0.1, port: ${port} }`,
      'workers: 2',
      'tls: { mode: disable }',
      'auth: { hba_file: hba.conf, users_file: users.txt }',
      `admin: { listen: "127.0.0.1:${adminPort}", users: [admin] }`,
      `pool: { pool_mode: transaction, default_pool_size: 4, max_client_conn: ${MAX_CLIENTS} }`,
      'log: { level: warn }',
      'limits: { shutdown_timeout: 5s }',
      'databases:',
      `  appdb: { host: ${cluster.host}, port: ${cluster.port}, server_password: ${PW.app}, tls: { mode: disable } }`,
      '',
    ].join('\n'),
  );
  cli = startCli(['--config', join(dir, 'postern.yaml')]);
  await waitUntil(
    async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`).catch(() => null))?.status === 200,
    30_000,
    'workers ready',
  );
});

after(async () => {
  cli?.child.kill('SIGKILL');
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('two worker processes serve one port', () => {
  assert.equal(workerPids().length, 2);
});

test('pgbench in transaction mode: zero failures, and /metrics adds both workers up to exactly what ran', async () => {
  const script = join(dir, 'select.sql');
  writeFileSync(script, '\\set aid random(1, 100000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n');
  const x0 = await metric('postern_xact_count_total');
  const r = await run(
    'pgbench',
    ['-n', '-f', script, '-M', 'extended', '-c', '4', '-t', '200', '-h', '127.0.0.1', '-p', String(port), '-U', 'app', 'appdb'],
    {
      env: pgEnv({ PGPASSWORD: PW.app }),
    },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /number of transactions actually processed: 800\/800/);
  assert.match(r.stdout, /number of failed transactions: 0 /);
  assert.equal((await metric('postern_xact_count_total')) - x0, 800);
  const pools = (await show('POOLS')).filter((p) => p.database === 'appdb');
  assert.equal(pools.length, 1, 'one row per pool, both workers added up');
  // The pool of 4 is split 2 + 2: never more than 4 server connections.
  assert.ok(Number(pools[0]?.sv_idle) + Number(pools[0]?.sv_active) <= 4, JSON.stringify(pools));
});

test('SHOW CLIENTS lists the clients of both workers; ids are unique', async () => {
  const clients = [client(), client(), client(), client()];
  await Promise.all(clients.map((c) => c.connect()));
  try {
    const rows = (await show('CLIENTS')).filter((c) => c.database === 'appdb');
    assert.equal(rows.length, 4);
    assert.deepEqual([...new Set(rows.map((c) => c.worker))].sort(), ['0', '1']);
    assert.equal(new Set(rows.map((c) => c.id)).size, 4);
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
});

test('the dashboard on the primary shows both workers; logins and actions run in a worker', async () => {
  const base = `http://127.0.0.1:${adminPort}/`;
  const basic = (u: string, p: string) => `Basic ${Buffer.from(`${u}:${p}`).toString('base64')}`;
  assert.equal((await fetch(base, { headers: { authorization: basic('admin', 'wrong') } })).status, 401);
  const page = await fetch(base, { headers: { authorization: basic('admin', PW.admin) } });
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type') ?? '', /text\/html/);
  const clients = [client(), client(), client(), client()];
  await Promise.all(clients.map((c) => c.connect()));
  try {
    const state = (await (await fetch(`${base}api/state`, { headers: { authorization: basic('admin', PW.admin) } })).json()) as {
      clients: Array<{ database: string; worker: number }>;
    };
    const mine = state.clients.filter((c) => c.database === 'appdb');
    assert.equal(mine.length, 4);
    assert.deepEqual([...new Set(mine.map((c) => c.worker))].sort(), [0, 1]);
    const act = (verb: string) =>
      fetch(`${base}api/action`, {
        method: 'POST',
        headers: { authorization: basic('admin', PW.admin), 'content-type': 'application/json', 'x-postern-action': '1' },
        body: JSON.stringify({ verb, database: 'appdb' }),
      });
    const paused = await act('PAUSE');
    assert.equal(paused.status, 200, await paused.text());
    assert.ok(
      (await show('DATABASES')).some((d) => d.name === 'appdb' && d.paused === '1'),
      'PAUSE from the dashboard reached the workers',
    );
    assert.equal((await act('RESUME')).status, 200);
    assert.ok((await show('DATABASES')).some((d) => d.name === 'appdb' && d.paused === '0'));
    assert.equal((await clients[0]?.query('select 1 as x'))?.rows[0].x, 1);
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
});

test('a cancel request reaches the query wherever its session lives', async () => {
  const sql = postgres({ host: '127.0.0.1', port, user: 'app', database: 'appdb', password: PW.app, max: 4, fetch_types: false });
  try {
    // Each cancel opens a new connection, handed to either worker: with six of
    // them, some must cross to the other worker.
    for (let i = 0; i < 6; i++) {
      const q = sql`select pg_sleep(30)`;
      const t = setTimeout(() => q.cancel(), 200);
      await assert.rejects(q, (e: { code?: string }) => e.code === '57014');
      clearTimeout(t);
    }
    const [row] = await sql`select 1 as one`;
    assert.equal(row?.one, 1);
  } finally {
    await sql.end();
  }
});

test('max_client_conn is split over the workers, never multiplied', async () => {
  await waitUntil(async () => (await show('CLIENTS')).filter((c) => c.database === 'appdb').length === 0, 10_000, 'earlier clients gone');
  const clients: pg.Client[] = [];
  let refused = 0;
  for (let i = 0; i < MAX_CLIENTS + 4; i++) {
    const c = client();
    try {
      await c.connect();
      clients.push(c);
    } catch (e) {
      assert.equal((e as { code?: string }).code, '53300');
      refused++;
    }
  }
  try {
    assert.ok(clients.length <= MAX_CLIENTS, `${clients.length} clients were admitted`);
    assert.ok(clients.length >= MAX_CLIENTS - 1, `only ${clients.length} clients were admitted`);
    assert.equal(clients.length + refused, MAX_CLIENTS + 4);
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
  // The next tests need the room back: wait until both workers have seen these clients leave.
  await waitUntil(async () => (await show('CLIENTS')).filter((c) => c.database === 'appdb').length === 0, 10_000, 'clients gone');
});

test('PAUSE and RESUME act on every worker', async () => {
  const clients = [client(), client(), client(), client()];
  await Promise.all(clients.map((c) => c.connect()));
  await admin('PAUSE appdb');
  assert.equal((await show('SERVERS')).filter((s) => s.database === 'appdb').length, 0);
  try {
    const answers = clients.map((c, i) => c.query('select $1::int as v', [i]));
    await waitUntil(
      async () => Number((await show('POOLS')).find((p) => p.database === 'appdb')?.cl_waiting) === 4,
      10_000,
      'four waiting clients',
    );
    await admin('RESUME appdb');
    const rows = await Promise.all(answers);
    assert.deepEqual(
      rows.map((r) => r.rows[0].v),
      [0, 1, 2, 3],
    );
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
});

test('a worker that dies is replaced, and the port keeps serving', async () => {
  const before = workerPids();
  process.kill(before[0] as number, 'SIGKILL');
  await waitUntil(
    () => {
      const now = workerPids();
      return now.length === 2 && !now.includes(before[0] as number);
    },
    20_000,
    'a replacement worker',
  );
  await waitUntil(async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200, 20_000, 'ready again');
  for (let i = 0; i < 4; i++) {
    const c = client();
    await c.connect();
    assert.equal((await c.query('select 7 as v')).rows[0].v, 7);
    await c.end();
  }
});

test('SIGTERM drains every worker and the primary exits 0', async () => {
  const c = client();
  await c.connect();
  const ended = new Promise<string | undefined>((resolve) => c.on('error', (e: Error & { code?: string }) => resolve(e.code)));
  cli.child.kill('SIGTERM');
  assert.equal(await cli.exited, 0);
  assert.equal(await ended, '57P01');
  assert.deepEqual(workerPids(), []);
});
