// Seeing inside, against a real PostgreSQL and real clients: Prometheus
// counters equal to what pgbench ran, SHOW QUERIES with pgbench's normalized
// statement and exact call counts, SHOW POOLS/CLIENTS/SERVERS for a known set
// of connections, PAUSE/RESUME, RELOAD and SET, stats_users, the admin console
// through psql (simple protocol) and through pg and postgres.js (extended),
// /healthz and /readyz, the audit log (a failed login with its reason, session
// and statement records), log_queries, and no password anywhere in logs,
// metrics, admin output or the audit file. One cluster for the file.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { loadConfigFile } from '../../src/config/load.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { createLogger } from '../../src/observability/log.ts';
import { Postern } from '../../src/server.ts';
import { pgEnv, psql, run, waitUntil } from '../helpers/postern.ts';

const PW = { app: 'app-secret-Zq81', admin: 'admin-secret-Vb42', watcher: 'watcher-secret-Hn07', server: 'server-secret-Lp33' };
let dir: string;
let cluster: PgCluster;
let postern: Postern;
let port: number;
let adminPort: number;
const logs: string[] = [];
let configFile: string;
/** Everything the admin console printed in this file, for the secrecy check. */
const adminOutput: string[] = [];

function configYaml(extra = ''): string {
  return [
    'listen: { host: 127.0.0.1, port: 0 }',
    'tls: { mode: disable }',
    `auth: { hba_file: ${join(dir, 'hba.conf')}, users_file: ${join(dir, 'users.txt')} }`,
    'admin: { listen: "127.0.0.1:0", users: [admin], stats_users: [watcher] }',
    `audit: { file: ${join(dir, 'audit.jsonl')}, statements: true }`,
    'log: { level: debug, queries: true }',
    'pool: { pool_mode: transaction, default_pool_size: 3, query_wait_timeout: 30s }',
    'databases:',
    `  appdb: { host: ${cluster.host}, port: ${cluster.port}, server_user: app, server_password: ${PW.server}, tls: { mode: disable } }`,
    extra,
    '',
  ].join('\n');
}

async function metrics(): Promise<string> {
  const r = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
  assert.equal(r.status, 200);
  return r.text();
}

/** The value of one sample line, e.g. postern_xact_count_total{database="appdb",user="app"}; 0 when absent. */
function sample(text: string, name: string, labels: Record<string, string>): number {
  const want = Object.entries(labels)
    .map(([k, v]) => `${k}="${v}"`)
    .join(',');
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`)) continue;
    const close = line.indexOf('}');
    const got = line.slice(name.length + 1, close);
    if (got === want) return Number(line.slice(close + 2));
  }
  return 0;
}

/** An admin console query through psql (simple protocol); rows as arrays of strings. */
async function admin(sql: string, user = 'admin', password = PW.admin): Promise<string[][]> {
  const r = await psql(`host=127.0.0.1 port=${port} dbname=pgbouncer user=${user}`, ['-F', '\t', '-c', sql], { password });
  adminOutput.push(r.stdout, r.stderr);
  if (r.code !== 0) throw new Error(`admin ${sql}: ${r.stderr}`);
  return r.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split('\t'));
}

/** SHOW output as objects keyed by column name (psql without -t for the header). */
async function show(what: string): Promise<Array<Record<string, string>>> {
  const r = await psql(
    `host=127.0.0.1 port=${port} dbname=postern user=admin`,
    ['-t', '-F', '\t', '--no-align', '-P', 'tuples_only=off', '-P', 'footer=off', '-c', `SHOW ${what}`],
    {
      password: PW.admin,
    },
  );
  adminOutput.push(r.stdout, r.stderr);
  assert.equal(r.code, 0, r.stderr);
  const [head, ...rows] = r.stdout.split('\n').filter((l) => l !== '');
  const cols = (head ?? '').split('\t');
  return rows.map((l) => Object.fromEntries(l.split('\t').map((v, i) => [cols[i] as string, v])));
}

function appClient(): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port, user: 'app', database: 'appdb', password: PW.app });
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-obs-'));
  cluster = await startPostgres({
    users: [{ name: 'app', password: PW.server }],
    databases: [{ name: 'appdb', owner: 'app' }],
  });
  const init = await run('pgbench', ['-i', '-s', '1', '-q', 'appdb'], { env: cluster.env() });
  assert.equal(init.code, 0, init.stderr);
  await cluster.psql('grant select, insert, update, delete on all tables in schema public to app', { db: 'appdb' });
  const { makeVerifier, formatVerifier } = await import('../../src/auth/scram.ts');
  const line = async (u: string, p: string) => `"${u}" "${formatVerifier(await makeVerifier(p))}"`;
  writeFileSync(
    join(dir, 'users.txt'),
    `${await line('app', PW.app)}\n${await line('admin', PW.admin)}\n${await line('watcher', PW.watcher)}\n`,
  );
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 scram-sha-256\n');
  configFile = join(dir, 'postern.yaml');
  writeFileSync(configFile, configYaml());
  const loaded = loadConfigFile(configFile);
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.problems));
  const sink = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const l of chunk.toString('utf8').split('\n')) if (l !== '') logs.push(l);
      cb();
    },
  });
  postern = new Postern(loaded.config, { configFile, logger: createLogger('debug', sink) });
  port = (await postern.listen()).port;
  adminPort = postern.adminPort as number;
});

after(async () => {
  await postern?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('statistics match what ran', () => {
  test('after pgbench: /metrics, SHOW STATS and SHOW QUERIES count exactly its transactions and statements', async () => {
    // A custom script: pgbench then sends nothing but these transactions (no
    // scale lookup, no vacuum with -n), so the expected counts are exact.
    const script = join(dir, 'select.sql');
    writeFileSync(script, '\\set aid random(1, 100000)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n');
    const before = await metrics();
    const x0 = sample(before, 'postern_xact_count_total', { database: 'appdb', user: 'app' });
    const q0 = sample(before, 'postern_query_count_total', { database: 'appdb', user: 'app' });
    const clients = 4;
    const perClient = 150;
    const r = await run(
      'pgbench',
      [
        '-n',
        '-f',
        script,
        '-M',
        'extended',
        '-c',
        String(clients),
        '-t',
        String(perClient),
        '-h',
        '127.0.0.1',
        '-p',
        String(port),
        '-U',
        'app',
        'appdb',
      ],
      { env: pgEnv({ PGPASSWORD: PW.app }) },
    );
    assert.equal(r.code, 0, r.stderr);
    const done = Number(/number of transactions actually processed: (\d+)/.exec(r.stdout)?.[1]);
    assert.equal(done, clients * perClient);
    // Statement statistics are processed right after the forwarding turn.
    await new Promise((res) => setTimeout(res, 100));
    const after = await metrics();
    assert.equal(sample(after, 'postern_xact_count_total', { database: 'appdb', user: 'app' }) - x0, done);
    assert.equal(sample(after, 'postern_query_count_total', { database: 'appdb', user: 'app' }) - q0, done);
    assert.ok(sample(after, 'postern_query_duration_seconds_count', { database: 'appdb', user: 'app' }) >= done);
    assert.ok(sample(after, 'postern_received_bytes_total', { database: 'appdb', user: 'app' }) > 0);
    const logins = sample(after, 'postern_logins_total', { method: 'scram-sha-256', outcome: 'ok' });
    assert.ok(logins >= clients, `logins ${logins}`);

    const stats = (await show('STATS')).find((row) => row.database === 'appdb');
    assert.ok(stats);
    assert.equal(Number(stats.total_xact_count), sample(after, 'postern_xact_count_total', { database: 'appdb', user: 'app' }));
    assert.equal(Number(stats.total_query_count), sample(after, 'postern_query_count_total', { database: 'appdb', user: 'app' }));

    const queries = await show('QUERIES');
    const shape = queries.find((q) => q.query === 'SELECT abalance FROM pgbench_accounts WHERE aid = $1' && q.user === 'app');
    assert.ok(shape, JSON.stringify(queries.map((q) => q.query)));
    assert.equal(Number(shape.calls), done);
    assert.equal(Number(shape.errors), 0);
    assert.equal(Number(shape.rows), done);
    assert.match(shape.fingerprint as string, /^[0-9a-f]{16}$/);
    assert.ok(Number(shape.p99_us) >= Number(shape.p50_us) && Number(shape.p50_us) > 0);
  });

  test('simple-protocol literals are normalized: one shape for many values, no literal in SHOW QUERIES, logs or the audit file', async () => {
    const c = appClient();
    await c.connect();
    for (const v of [11, 22, 33]) await c.query(`select bid, 'literal-${v}-xyz' as s from pgbench_branches where bid = ${v}`);
    await c.query('select 1/0').catch(() => undefined);
    await c.end();
    await new Promise((res) => setTimeout(res, 100));
    const queries = await show('QUERIES');
    const shape = queries.find((q) => q.query === 'select bid, $1 as s from pgbench_branches where bid = $2');
    assert.ok(shape, JSON.stringify(queries.map((q) => q.query)));
    assert.equal(Number(shape.calls), 3);
    const failed = queries.find((q) => q.query === 'select $1/$2');
    assert.ok(failed, JSON.stringify(queries.map((q) => q.query)));
    assert.equal(Number(failed.errors), 1);
    const everything = [...logs, readFileSync(join(dir, 'audit.jsonl'), 'utf8'), JSON.stringify(queries)].join('\n');
    assert.doesNotMatch(everything, /literal-\d\d-xyz/);
    const logged = logs.map((l) => JSON.parse(l) as Record<string, unknown>).filter((o) => o.msg === 'query' && o.sqlstate === '22012');
    assert.ok(logged.length >= 1, 'log.queries logs the failed statement with its SQLSTATE');
  });

  test('a statement whose client leaves before its answer still counts, with its error', async () => {
    const c = appClient();
    await c.connect();
    c.on('error', () => undefined);
    // Inside a transaction the client holds its server. The Query and the
    // Terminate leave together: Postern sees the client go before the server
    // answers, and the pool drains the connection and rolls it back.
    await c.query('begin');
    const left = c.query('select 7/0 from pgbench_tellers').catch((e: Error) => e);
    c.connection.end();
    await left;
    const shape = await waitUntil(
      async () => (await show('QUERIES')).find((q) => q.query === 'select $1/$2 from pgbench_tellers' && Number(q.errors) === 1),
      10_000,
      'the left-behind statement in SHOW QUERIES',
    );
    assert.equal(Number(shape.calls), 1);
    // The connection came back clean: the pool still serves.
    const d = appClient();
    await d.connect();
    assert.equal((await d.query('select 1 as one')).rows[0].one, 1);
    await d.end();
  });
});

describe('admin console', () => {
  test('SHOW POOLS, CLIENTS and SERVERS reflect a known set of connections in known states', async () => {
    const busy = appClient();
    const idle1 = appClient();
    const idle2 = appClient();
    await Promise.all([busy.connect(), idle1.connect(), idle2.connect()]);
    await Promise.all([idle1.query('select 1'), idle2.query('select 1')]);
    await busy.query('begin');
    await busy.query('select 1');
    try {
      const pools = (await show('POOLS')).filter((p) => p.database === 'appdb');
      assert.equal(pools.length, 1);
      const p = pools[0] as Record<string, string>;
      assert.equal(p.user, 'app');
      assert.equal(p.cl_active, '3');
      assert.equal(p.cl_waiting, '0');
      assert.equal(p.sv_active, '1');
      assert.equal(p.pool_mode, 'transaction');
      assert.ok(Number(p.sv_idle) >= 1 && Number(p.sv_idle) + 1 <= 3, JSON.stringify(p));
      const clients = (await show('CLIENTS')).filter((c) => c.database === 'appdb');
      assert.equal(clients.length, 3);
      assert.deepEqual(clients.map((c) => c.state).sort(), ['active', 'idle', 'idle']);
      const active = clients.find((c) => c.state === 'active') as Record<string, string>;
      const servers = (await show('SERVERS')).filter((s) => s.database === 'appdb');
      const linked = servers.filter((s) => s.state === 'active');
      assert.equal(linked.length, 1);
      assert.equal(linked[0]?.link, active.ptr);
      assert.equal(active.link, linked[0]?.ptr);
      assert.ok(servers.every((s) => s.user === 'app' && Number(s.remote_pid) > 0));
      // The console's own connection is a client too, as in PgBouncer.
      assert.ok((await show('CLIENTS')).some((c) => c.database === 'postern' && c.user === 'admin'));
      const m = await metrics();
      assert.equal(sample(m, 'postern_pool_sv_active', { database: 'appdb', user: 'app' }), 1);
      assert.equal(sample(m, 'postern_pool_cl_active', { database: 'appdb', user: 'app' }), 3);
    } finally {
      await busy.query('commit');
      await Promise.all([busy.end(), idle1.end(), idle2.end()]);
    }
  });

  test('PAUSE holds new queries, RESUME releases them with no error', async () => {
    await admin('PAUSE appdb');
    const states = await show('DATABASES');
    assert.equal(states.find((d) => d.name === 'appdb')?.paused, '1');
    // PAUSE returned: no server connection of appdb is left.
    assert.equal((await show('SERVERS')).filter((s) => s.database === 'appdb').length, 0);
    const c = appClient();
    await c.connect();
    let answered = false;
    const q = c.query('select 42 as v').then((r) => {
      answered = true;
      return r;
    });
    await waitUntil(async () => (await show('POOLS')).find((p) => p.database === 'appdb')?.cl_waiting === '1', 10_000, 'a waiting client');
    assert.equal(answered, false);
    await admin('RESUME appdb');
    const r = await q;
    assert.equal(r.rows[0].v, 42);
    await c.end();
  });

  test('RELOAD applies a changed setting; SET changes a reloadable one and refuses the others', async () => {
    const key = (rows: Array<Record<string, string>>, k: string) => rows.find((r) => r.key === k);
    assert.equal(key(await show('CONFIG'), 'stats.max_queries')?.value, '5000');
    writeFileSync(
      configFile,
      configYaml().replace('log: { level: debug, queries: true }', 'log: { level: debug, queries: true }\nstats: { max_queries: 1234 }'),
    );
    await admin('RELOAD');
    assert.equal(key(await show('CONFIG'), 'stats.max_queries')?.value, '1234');
    await admin("SET pool.query_wait_timeout = '45s'");
    assert.equal(key(await show('CONFIG'), 'pool.query_wait_timeout')?.value, '45s');
    await assert.rejects(admin('SET listen.port = 7777'), /cannot be changed while running/);
    await assert.rejects(admin('SET pool.default_pool_size = -3'), /pool.default_pool_size/);
    writeFileSync(configFile, configYaml());
    await admin('RELOAD');
  });

  test('stats_users may SHOW but not control; other users are refused', async () => {
    const rows = await admin('SHOW VERSION', 'watcher', PW.watcher);
    assert.match(rows[0]?.[0] ?? '', /^Postern \d+\.\d+\.\d+/);
    await assert.rejects(admin('PAUSE', 'watcher', PW.watcher), /admin access needed/);
    await assert.rejects(admin('SHOW POOLS', 'app', PW.app), /not allowed to use the admin console/);
  });

  test('drivers with the extended protocol: pg (named statement) and postgres.js', async () => {
    const c = new pg.Client({ host: '127.0.0.1', port, user: 'admin', database: 'pgbouncer', password: PW.admin });
    await c.connect();
    const r = await c.query({ name: 'pools', text: 'SHOW POOLS' });
    assert.ok(r.fields.some((f) => f.name === 'cl_waiting'));
    assert.ok(r.rows.some((row) => row.database === 'appdb'));
    const again = await c.query({ name: 'pools', text: 'SHOW POOLS' });
    assert.equal(again.rows.length, r.rows.length);
    await assert.rejects(c.query({ text: 'SHOW NOTHING', values: [] }), /invalid command/);
    const v = await c.query('SHOW VERSION');
    assert.match(v.rows[0].version, /^Postern/);
    await c.end();

    const sql = postgres({ host: '127.0.0.1', port, user: 'admin', database: 'postern', password: PW.admin, max: 1, fetch_types: false });
    try {
      const stats = await sql`SHOW STATS`;
      assert.ok(stats.some((row) => row.database === 'appdb' && Number(row.total_xact_count) > 0));
      const help = await sql`SHOW LISTS`;
      assert.ok(help.some((row) => row.list === 'pools'));
    } finally {
      await sql.end();
    }
  });
});

describe('health endpoints', () => {
  test('/healthz answers ok; /readyz is ready while the server is reachable', async () => {
    const h = await fetch(`http://127.0.0.1:${adminPort}/healthz`);
    assert.equal(h.status, 200);
    const r = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
    assert.equal(r.status, 200);
    const body = (await r.json()) as { ready: boolean; servers: Record<string, boolean> };
    assert.equal(body.ready, true);
    assert.equal(body.servers.appdb, true);
    assert.equal((await fetch(`http://127.0.0.1:${adminPort}/nope`)).status, 404);
  });

  test('/readyz is 503 when no configured server is reachable', async () => {
    const { freePort } = await import('../../src/dev/cluster.ts');
    const dead = await freePort();
    const file = join(dir, 'dead.yaml');
    writeFileSync(
      file,
      [
        'listen: { host: 127.0.0.1, port: 0 }',
        'admin: { listen: "127.0.0.1:0" }',
        'stats: { queries: false }',
        'databases:',
        `  gone: { host: 127.0.0.1, port: ${dead}, tls: { mode: disable } }`,
        '',
      ].join('\n'),
    );
    const loaded = loadConfigFile(file);
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.problems));
    const p = new Postern(loaded.config, { logger: createLogger('silent') });
    await p.listen();
    try {
      const r = await fetch(`http://127.0.0.1:${p.adminPort}/readyz`);
      assert.equal(r.status, 503);
      const body = (await r.json()) as { ready: boolean; listening: boolean };
      assert.equal(body.ready, false);
      assert.equal(body.listening, true);
    } finally {
      await p.close();
    }
  });
});

describe('audit log and secrecy', () => {
  test('the audit log records a failed login with its reason, and sessions with their statements', async () => {
    const bad = await psql(`host=127.0.0.1 port=${port} dbname=appdb user=app`, 'select 1', { password: 'wrong-password-Qq' });
    assert.notEqual(bad.code, 0);
    const ok = appClient();
    await ok.connect();
    await ok.query({ text: 'select $1::int + 1 as v', values: [41] });
    await ok.end();
    const records = await waitUntil(
      () => {
        const lines = readFileSync(join(dir, 'audit.jsonl'), 'utf8')
          .split('\n')
          .filter((l) => l !== '')
          .map((l) => JSON.parse(l) as Record<string, unknown>);
        return lines.some((r) => r.kind === 'statement' && r.query === 'select $1::int + $2 as v') ? lines : null;
      },
      10_000,
      'audit records',
    );
    const denied = records.find((r) => r.kind === 'session' && r.outcome === 'fail' && r.database === 'pgbouncer');
    assert.equal(denied?.reason, 'not_admin_user');
    const failed = records.find((r) => r.kind === 'session' && r.outcome === 'fail' && r.database === 'appdb');
    assert.ok(failed, 'a failed login record');
    assert.equal(failed.user, 'app');
    assert.equal(failed.database, 'appdb');
    assert.equal(failed.auth_method, 'scram-sha-256');
    assert.equal(typeof failed.reason, 'string');
    assert.match(failed.reason as string, /password|scram/i);
    const okRec = records.find((r) => r.kind === 'session' && r.outcome === 'ok' && r.user === 'app');
    assert.ok(okRec && Number(okRec.bytes_in) > 0 && Number(okRec.bytes_out) > 0 && okRec.addr === '127.0.0.1', JSON.stringify(okRec));
    const stmt = records.find((r) => r.kind === 'statement' && r.query === 'select $1::int + $2 as v');
    assert.ok(stmt, 'a statement record with the normalized text');
    assert.match(stmt.fingerprint as string, /^[0-9a-f]{16}$/);
  });

  test('no password appears in any log line, metric, admin output or audit record', async () => {
    adminOutput.push(JSON.stringify(await show('CONFIG')), JSON.stringify(await show('DATABASES')), JSON.stringify(await show('USERS')));
    const everything = [...logs, await metrics(), ...adminOutput, readFileSync(join(dir, 'audit.jsonl'), 'utf8')].join('\n');
    assert.ok(everything.length > 10_000, 'there is output to search');
    for (const [who, secret] of Object.entries(PW)) assert.ok(!everything.includes(secret), `${who}'s password leaked`);
    assert.match(everything, /auth\.query_password|databases/);
  });
});
