// Real clients through Postern in session mode with auth passthrough:
// psql (sslmode disable/require/verify-full, \conninfo, COPY both ways with
// checksums), pgbench (simple/extended/prepared), node-postgres and
// postgres.js (parameters, errors then recovery, NULLs, 10 MB values), cancel,
// a client vanishing mid-COPY, a terminated backend. One cluster, one Postern.

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { type CertSet, generateCerts } from '../../src/dev/certs.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { pgEnv, psql, type RunningPostern, run, startPostern, waitUntil } from '../helpers/postern.ts';

const PASSWORD = 'app-secret-pw';
let dir: string;
let certs: CertSet;
let cluster: PgCluster;
let px: RunningPostern;

function conninfo(extra = ''): string {
  return `host=localhost port=${px.port} dbname=appdb user=app ${extra}`;
}

async function appBackends(): Promise<number> {
  return Number(await cluster.psql(`select count(*) from pg_stat_activity where usename = 'app'`));
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-clients-'));
  certs = await generateCerts(dir);
  cluster = await startPostgres({
    users: [{ name: 'app', password: PASSWORD }],
    databases: [{ name: 'appdb', owner: 'app' }],
  });
  px = await startPostern({
    tls: { cert: certs.server.cert, key: certs.server.key, mode: 'allow' },
    databases: { appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'disable' } } },
  });
});

after(async () => {
  await px?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('psql', () => {
  for (const sslmode of ['disable', 'require', 'verify-full'] as const) {
    test(`sslmode=${sslmode}: query and \\conninfo`, async () => {
      const r = await psql(
        conninfo(`sslmode=${sslmode} sslrootcert=${certs.ca.cert}`),
        ['-c', 'select current_user, current_database()', '-c', '\\conninfo'],
        {
          password: PASSWORD,
        },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /^app\|appdb$/m);
      if (sslmode === 'disable') assert.doesNotMatch(r.stdout, /SSL connection/);
      else assert.match(r.stdout, /SSL connection \(protocol: TLSv1\.3/);
    });
  }

  test('wrong password is refused with the server error 28P01, and nothing leaks', async () => {
    const r = await psql(conninfo('sslmode=require'), 'select 1', { password: 'wrong' });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /password authentication failed for user "app"/);
    await waitUntil(async () => (await appBackends()) === 0, 10_000, 'no app backends');
  });

  test('COPY FROM STDIN and COPY TO STDOUT of 100,000 rows keep every byte', async () => {
    await cluster.psql('create table if not exists copy_t (id int primary key, v text, b bytea)', { db: 'appdb' });
    await cluster.psql('alter table copy_t owner to app', { db: 'appdb' });
    const lines: string[] = [];
    for (let i = 1; i <= 100_000; i++) {
      lines.push(`${i}\tvalue-${i}-${randomBytes(6).toString('hex')}\t\\\\x${randomBytes(8).toString('hex')}`);
    }
    const input = `${lines.join('\n')}\n`;
    const load = await psql(conninfo('sslmode=require'), ['-c', '\\copy copy_t from stdin'], { password: PASSWORD, input });
    assert.equal(load.code, 0, load.stderr);
    // Checksum on the server side, directly, of what arrived.
    const serverSum = await cluster.psql(`select md5(string_agg(id || E'\\t' || v || E'\\t' || b::text, E'\\n' order by id)) from copy_t`, {
      db: 'appdb',
    });
    const expected = createHash('md5')
      .update(lines.map((l) => l.replace('\\\\x', '\\x')).join('\n'))
      .digest('hex');
    assert.equal(serverSum, expected);
    // COPY out through Postern equals COPY out directly.
    const through = await psql(conninfo('sslmode=require'), ['-c', 'copy (select * from copy_t order by id) to stdout'], {
      password: PASSWORD,
    });
    assert.equal(through.code, 0, through.stderr);
    const direct = await run('psql', ['-X', '-A', '-t', '-c', 'copy (select * from copy_t order by id) to stdout'], {
      env: cluster.env({ PGDATABASE: 'appdb' }),
    });
    assert.equal(direct.code, 0, direct.stderr);
    assert.equal(through.stdout.split('\n').length, 100_001);
    assert.equal(createHash('md5').update(through.stdout).digest('hex'), createHash('md5').update(direct.stdout).digest('hex'));
  });

  test('a client vanishing mid-COPY: the server session ends, nothing is committed, others are untouched', async () => {
    await cluster.psql('create table if not exists vanish_t (id int)', { db: 'appdb' });
    await cluster.psql('alter table vanish_t owner to app', { db: 'appdb' });
    const healthy = new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', password: PASSWORD, database: 'appdb' });
    await healthy.connect();
    const child = spawn('psql', ['-X', '-d', conninfo('sslmode=disable'), '-c', '\\copy vanish_t from stdin'], {
      env: pgEnv({ PGPASSWORD: PASSWORD }),
      stdio: ['pipe', 'ignore', 'ignore'],
    });
    child.stdin.on('error', () => {});
    child.stdin.write('1\n2\n3\n');
    await waitUntil(
      async () => Number(await cluster.psql(`select count(*) from pg_stat_activity where usename = 'app' and query like 'COPY%'`)) === 1,
      10_000,
      'COPY running',
    );
    child.kill('SIGKILL');
    await waitUntil(async () => (await appBackends()) === 1, 10_000, 'COPY backend gone');
    assert.equal(await cluster.psql('select count(*) from vanish_t', { db: 'appdb' }), '0');
    const r = await healthy.query('select 41 + 1 as n');
    assert.equal(r.rows[0].n, 42);
    await healthy.end();
  });
});

describe('pgbench', () => {
  before(async () => {
    const init = await run('pgbench', ['-i', '-s', '1', '-q', 'appdb'], { env: cluster.env() });
    assert.equal(init.code, 0, init.stderr);
    await cluster.psql('grant select, update, insert on all tables in schema public to app', { db: 'appdb' });
  });
  for (const mode of ['simple', 'extended', 'prepared'] as const) {
    test(`-M ${mode}: zero failed transactions`, async () => {
      const r = await run(
        'pgbench',
        ['-n', '-S', '-M', mode, '-c', '4', '-j', '2', '-t', '250', '-h', 'localhost', '-p', String(px.port), '-U', 'app', 'appdb'],
        {
          env: pgEnv({ PGPASSWORD: PASSWORD, PGSSLMODE: 'require' }),
        },
      );
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /number of transactions actually processed: 1000\/1000/);
      const failed = /number of failed transactions: (\d+)/.exec(r.stdout);
      if (failed) assert.equal(failed[1], '0');
    });
  }
});

describe('node-postgres (pg)', () => {
  test('parameters, NULLs, error then recovery, 10 MB values both ways, over TLS', async () => {
    const client = new pg.Client({
      host: 'localhost',
      port: px.port,
      user: 'app',
      password: PASSWORD,
      database: 'appdb',
      ssl: { ca: await import('node:fs').then((fs) => fs.readFileSync(certs.ca.cert)), servername: 'localhost' },
    });
    await client.connect();
    const p = await client.query('select $1::int + $2::int as sum, $3::text as t, $4::text as n', [40, 2, 'hé', null]);
    assert.deepEqual(p.rows[0], { sum: 42, t: 'hé', n: null });
    await assert.rejects(client.query('select * from no_such_table'), (e: { code?: string }) => e.code === '42P01');
    const again = await client.query('select 1 as one');
    assert.equal(again.rows[0].one, 1);
    const big = randomBytes(5 * 1024 * 1024).toString('hex'); // 10 MB of text
    const echoed = await client.query('select $1::text as v, length($1::text) as n', [big]);
    assert.equal(echoed.rows[0].n, big.length);
    assert.equal(echoed.rows[0].v, big);
    const bin = randomBytes(10 * 1024 * 1024);
    const b = await client.query('select $1::bytea as v', [bin]);
    assert.ok(Buffer.compare(b.rows[0].v, bin) === 0);
    // Named (prepared) query twice on the same session.
    for (let i = 0; i < 2; i++) {
      const r = await client.query({ name: 'sq', text: 'select $1::int * 2 as d', values: [i + 1] });
      assert.equal(r.rows[0].d, (i + 1) * 2);
    }
    await client.end();
  });

  test('pg_terminate_backend: the client gets 57P01 and Postern keeps serving', async () => {
    const client = new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', password: PASSWORD, database: 'appdb' });
    await client.connect();
    const pid = (await client.query('select pg_backend_pid() as pid')).rows[0].pid as number;
    const errors: Array<{ code?: string; message: string }> = [];
    client.on('error', (e: { code?: string; message: string }) => errors.push(e));
    await cluster.psql(`select pg_terminate_backend(${pid})`);
    await waitUntil(() => errors.length > 0, 10_000, 'client error');
    // The server's own FATAL reached the client, with its SQLSTATE.
    assert.equal(errors[0]?.code, '57P01', JSON.stringify(errors));
    assert.match(errors[0]?.message ?? '', /terminating connection due to administrator command/);
    const other = new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', password: PASSWORD, database: 'appdb' });
    await other.connect();
    assert.equal((await other.query('select 1 as x')).rows[0].x, 1);
    await other.end();
    await client.end().catch(() => {});
  });
});

describe('postgres.js', () => {
  test('parameters, NULLs, error then recovery, large value, and cancel of pg_sleep', async () => {
    const sql = postgres({
      host: '127.0.0.1',
      port: px.port,
      user: 'app',
      password: PASSWORD,
      database: 'appdb',
      max: 1,
      ssl: 'require',
      onnotice: () => {},
    });
    const [row] = await sql`select ${7}::int * 6 as v, ${null}::text as n, ${'ünïcode'}::text as u`;
    assert.deepEqual({ ...row }, { v: 42, n: null, u: 'ünïcode' });
    await assert.rejects(sql`select 1/0`, (e: { code?: string }) => e.code === '22012');
    const big = 'x'.repeat(10 * 1024 * 1024);
    const [b] = await sql`select length(${big}::text) as n`;
    assert.equal(b?.n, big.length);
    const started = Date.now();
    const q = sql`select pg_sleep(30)`;
    const pending = q.then(
      () => null,
      (e: { code?: string }) => e,
    );
    await waitUntil(
      async () =>
        Number(
          await cluster.psql(
            `select count(*) from pg_stat_activity where query like 'select pg_sleep%' and usename = 'app' and wait_event = 'PgSleep'`,
          ),
        ) === 1,
      10_000,
      'sleep running',
    );
    q.cancel();
    const err = await pending;
    assert.equal(err?.code, '57014');
    assert.ok(Date.now() - started < 25_000, 'the cancel ended the query early');
    const [after] = await sql`select 'still alive' as s`;
    assert.equal(after?.s, 'still alive');
    await sql.end();
  });
});
