// Transaction mode never leaks one client's session state to the next client
// of the same server connection (issue 11). A pool of one server connection
// makes every client share it, so each test forces the connection to change
// hands between the statements it checks; a second Postern with two
// connections checks settings that follow a client to another connection.
//
// Each test states the PostgreSQL behaviour it expects (what a client
// connected directly would see).

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { pgEnv, type RunningPostern, run, startPostern, waitUntil } from '../helpers/postern.ts';
import { errorFields, scramLogin, startupMessage, typedMessage, Wire } from '../helpers/wire.ts';

const PW = 'txs-pw';
let dir: string;
let cluster: PgCluster;
/** One server connection: every client shares it. */
let one: RunningPostern;
/** Two server connections. */
let two: RunningPostern;

function client(port: number, extra: Partial<pg.ClientConfig> = {}): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port, user: 'app', database: 'appdb', ...extra });
}

async function connected(port: number, extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const c = client(port, extra);
  await c.connect();
  return c;
}

async function value(c: pg.Client, sql: string): Promise<unknown> {
  const r = await c.query(sql);
  return r.rows[0] === undefined ? undefined : Object.values(r.rows[0])[0];
}

function config(size: number) {
  return {
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool: { pool_mode: 'transaction', default_pool_size: size },
    databases: { appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } } },
    log: { level: 'info' },
  };
}

/** The notices a pg client receives, as "SEVERITY: message". */
function notices(c: pg.Client): string[] {
  const out: string[] = [];
  c.on('notice', (n) => {
    out.push(`${n.severity}: ${n.message}`);
  });
  return out;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-txs-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  await cluster.psql('create table t (id serial primary key, v text); create sequence s; create table typed (x int)', {
    db: 'appdb',
    user: 'app',
    password: PW,
  });
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  one = await startPostern(config(1));
  two = await startPostern(config(2));
});

after(async () => {
  await one?.close();
  await two?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('reported settings set with SET', () => {
  test('a client that leaves does not pass default_transaction_read_only, standard_conforming_strings or application_name on', async () => {
    const a = await connected(one.port);
    const pidA = await value(a, 'select pg_backend_pid()');
    await a.query('set default_transaction_read_only = on');
    await a.query('set standard_conforming_strings = off');
    await a.query(`set application_name = 'leaker'`);
    await a.end();
    const b = await connected(one.port);
    assert.equal(await value(b, 'select pg_backend_pid()'), pidA, 'the same server connection');
    assert.equal(await value(b, 'show default_transaction_read_only'), 'off');
    assert.equal(await value(b, 'show standard_conforming_strings'), 'on');
    // A literal with a backslash means what it says with standard_conforming_strings on.
    assert.equal(await value(b, String.raw`select length('a\\b')`), 4);
    assert.equal(await value(b, 'show application_name'), '');
    await b.query(`insert into t (v) values ('written')`);
    await b.end();
  });

  test('a client that sends no application_name sees an empty one, here and in pg_stat_activity', async () => {
    const c = await connected(one.port);
    assert.equal(await value(c, 'show application_name'), '');
    assert.equal(await value(c, 'select application_name from pg_stat_activity where pid = pg_backend_pid()'), '');
    await c.end();
  });

  test('a client that asked for application_name keeps it on every server connection', async () => {
    const c = await connected(two.port, { application_name: 'mine' });
    const other = await connected(two.port, { application_name: 'other' });
    const pids = new Set<unknown>();
    for (let i = 0; i < 20; i++) {
      const [r] = await Promise.all([
        c.query('select current_setting($1) as v, pg_backend_pid() as p', ['application_name']),
        other.query('select 1'),
      ]);
      assert.equal(r.rows[0].v, 'mine');
      pids.add(r.rows[0].p);
    }
    assert.equal(pids.size >= 1, true);
    await c.end();
    await other.end();
  });
});

describe('setting names are case-insensitive', () => {
  test('datestyle asked at startup in lower case survives another client setting DateStyle', async () => {
    const a = await connected(one.port, { options: '-c datestyle=Postgres,MDY -c intervalstyle=postgres_verbose' });
    assert.equal(await value(a, 'show datestyle'), 'Postgres, MDY');
    const b = await connected(one.port);
    await b.query('SET DateStyle TO ISO');
    await b.query('SET IntervalStyle TO iso_8601');
    assert.equal(await value(b, 'show datestyle'), 'ISO, MDY');
    assert.equal(await value(a, 'show DateStyle'), 'Postgres, MDY');
    assert.equal(await value(a, 'show intervalstyle'), 'postgres_verbose');
    assert.equal(await value(a, `select '2024-01-02'::date::text`), '01-02-2024');
    await a.end();
    await b.end();
    // psql with PGDATESTYLE: libpq sends "datestyle" in the startup packet.
    const r = await run(
      'psql',
      ['-X', '-A', '-t', '-h', '127.0.0.1', '-p', String(one.port), '-U', 'app', '-d', 'appdb', '-c', `select '2024-01-02'::date`],
      {
        env: pgEnv({ PGDATESTYLE: 'German' }),
      },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), '02.01.2024');
  });
});

describe('a SET that did not commit is not carried', () => {
  test('ROLLBACK, ROLLBACK TO SAVEPOINT, a failed SET and SET LOCAL leave the setting as it was; a committed one is carried', async () => {
    const a = await connected(one.port);
    const b = await connected(one.port);
    const defaultWorkMem = await value(b, 'show work_mem');
    await a.query('begin');
    await a.query(`set work_mem = '77kB'`);
    await a.query('rollback');
    await b.query('select 1'); // the connection passes to b and back
    assert.equal(await value(a, 'show work_mem'), defaultWorkMem);

    await a.query('begin');
    await a.query('savepoint s1');
    await a.query(`set work_mem = '78kB'`);
    await a.query('rollback to savepoint s1');
    await a.query('commit');
    await b.query('select 1');
    assert.equal(await value(a, 'show work_mem'), defaultWorkMem);

    await a.query('begin');
    await assert.rejects(a.query(`set work_mem = 'lots'`), (e: Error & { code?: string }) => e.code === '22023');
    await a.query('rollback');
    await b.query('select 1');
    assert.equal(await value(a, 'show work_mem'), defaultWorkMem);

    await a.query('begin');
    await a.query(`set local work_mem = '79kB'`);
    assert.equal(await value(a, 'show work_mem'), '79kB');
    await a.query('commit');
    await b.query('select 1');
    assert.equal(await value(a, 'show work_mem'), defaultWorkMem);

    await a.query('begin');
    await a.query(`set work_mem = '80kB'`);
    await a.query('commit');
    assert.equal(await value(b, 'show work_mem'), defaultWorkMem, 'not seen by the next client');
    assert.equal(await value(a, 'show work_mem'), '80kB', 'carried to its next transaction');
    await a.query('reset work_mem');
    await b.query('select 1');
    assert.equal(await value(a, 'show work_mem'), defaultWorkMem);
    await a.end();
    await b.end();
  });
});

describe('startup settings', () => {
  test('custom settings with a dot, through options and as startup parameters, reach every server connection', async () => {
    const a = await connected(one.port, { options: '-c app.user=alice' });
    const b = await connected(one.port);
    assert.equal(await value(a, `select current_setting('app.user')`), 'alice');
    // Never another client's value. A placeholder that was RESET reads '' (PostgreSQL keeps it defined once
    // a session set it); only a brand-new session reads NULL (docs/transaction-mode.md).
    const seen = await value(b, `select current_setting('app.user', true)`);
    assert.ok(seen === null || seen === '', String(seen));
    assert.equal(await value(a, `select current_setting('app.user')`), 'alice');
    await a.end();
    await b.end();
    const w = await Wire.connect(one.port);
    w.write(startupMessage({ user: 'app', database: 'appdb', 'some.var': 'yay' }));
    const login = await w.readUntil('Z');
    assert.ok(login.some((m) => m.type === 'R'));
    w.write(Buffer.concat([simpleQuery("select current_setting('some.var')")]));
    const rows = await w.readUntil('Z');
    const dataRow = rows.find((m) => m.type === 'D');
    assert.ok(dataRow !== undefined);
    assert.match(dataRow.body.toString('latin1'), /yay/);
    w.close();
  });

  test('an unknown or invalid startup setting is refused with the server error, as PostgreSQL refuses it at login', async () => {
    const bad = client(one.port, { options: '-c no_such_setting=1' });
    await assert.rejects(bad.connect(), (e: Error & { code?: string }) => e.code === '42704' && /no_such_setting/.test(e.message));
    const invalid = client(one.port, { options: '-c work_mem=lots' });
    await assert.rejects(invalid.connect(), (e: Error & { code?: string }) => e.code === '22023');
    const fine = await connected(one.port, { options: '-c work_mem=5MB' });
    assert.equal(await value(fine, 'show work_mem'), '5MB');
    await fine.end();
  });

  test('settings are set as values, never as SQL: a quote in application_name with standard_conforming_strings off runs nothing', async () => {
    const evil = String.raw`\'; CREATE TABLE public.injected(who text); --`;
    const c = await connected(one.port, { application_name: evil, options: '-c standard_conforming_strings=off' });
    assert.equal(await value(c, 'show application_name'), evil);
    const other = await connected(one.port);
    await other.query('select 1');
    assert.equal(await value(c, 'show application_name'), evil);
    assert.equal(await value(other, `select to_regclass('public.injected') is null`), true);
    await c.end();
    await other.end();
  });
});

describe('per-session state of other kinds', () => {
  test('currval and lastval never show another client its value (55000, as PostgreSQL)', async () => {
    const a = await connected(one.port);
    assert.equal(Number(await value(a, `select nextval('s')`)) > 0, true);
    await a.query(`insert into t (v) values ('x')`);
    await a.end();
    const b = await connected(one.port);
    await assert.rejects(b.query(`select currval('s')`), (e: Error & { code?: string }) => e.code === '55000');
    await assert.rejects(b.query('select lastval()'), (e: Error & { code?: string }) => e.code === '55000');
    await assert.rejects(b.query(`select currval('t_id_seq')`), (e: Error & { code?: string }) => e.code === '55000');
    // Within one transaction currval is the client's own.
    await b.query('begin');
    const n = await value(b, `select nextval('s')`);
    assert.equal(await value(b, `select currval('s')`), n);
    await b.query('commit');
    await b.end();
  });

  test('settings a DO block changes are read back from the server: they go with the client, never to the next one', async () => {
    const a = await connected(one.port);
    await a.query(`do $$ begin set enable_bitmapscan = off; perform set_config('work_mem', '7MB', false); end $$`);
    const b = await connected(one.port);
    // b runs on the server connection a used: PostgreSQL's defaults, not a's values.
    assert.equal(await value(b, 'show enable_bitmapscan'), 'on');
    assert.equal(await value(b, 'show work_mem'), '4MB');
    assert.equal(await value(a, 'show enable_bitmapscan'), 'off');
    assert.equal(await value(a, 'show work_mem'), '7MB');
    await a.query(`do $$ begin reset enable_bitmapscan; end $$`);
    assert.equal(await value(b, 'show enable_bitmapscan'), 'on');
    assert.equal(await value(a, 'show enable_bitmapscan'), 'on');
    assert.equal(await value(a, 'show work_mem'), '7MB');
    await a.end();
    await b.end();
  });

  test('a placeholder whose prefix a module reserved later is removed with PostgreSQL warning, and never ends a session', async () => {
    // A Postern of its own: its one server connection has not loaded PL/pgSQL yet.
    const fresh = await startPostern(config(1));
    try {
      const a = await connected(fresh.port);
      const aSaw = notices(a);
      await a.query('set plpgsql.extra_foo_warnings = true');
      assert.equal(await value(a, `select current_setting('plpgsql.extra_foo_warnings')`), 'true');
      const b = await connected(fresh.port);
      // Loads PL/pgSQL on the shared connection (which then holds the reset placeholder Postern cannot undefine).
      await b.query('do $$ begin end $$');
      // a's next transaction: its placeholder cannot be set on a server where the prefix is reserved; as
      // PostgreSQL does when a module loads, the setting is dropped with a WARNING, and the query runs.
      assert.equal(await value(a, `select current_setting('plpgsql.extra_foo_warnings', true)`), null);
      assert.ok(
        aSaw.some((n) => /^WARNING: invalid configuration parameter name "plpgsql.extra_foo_warnings", removing it$/.test(n)),
        aSaw.join('\n'),
      );
      await a.end();
      await b.end();
    } finally {
      await fresh.close();
    }
    const again = await startPostern(config(1));
    try {
      const a = await connected(again.port);
      const aSaw = notices(a);
      await a.query('set plpgsql.extra_foo_warnings = true');
      // The same session loads the module: PostgreSQL's own WARNING, and the setting is gone from the session.
      await a.query('do $$ begin end $$');
      assert.ok(
        aSaw.some((n) => /removing it$/.test(n)),
        aSaw.join('\n'),
      );
      await a.end();
      // The next client of that connection is served (before: FATAL, Postern's reset of the lost placeholder failed).
      const c = await connected(again.port);
      assert.equal(await value(c, 'select 1'), 1);
      assert.equal(await value(c, `select current_setting('plpgsql.extra_foo_warnings', true)`), null);
      await c.end();
    } finally {
      await again.close();
    }
  });

  test('a replication startup is refused in a pooled mode, naming the setting', async () => {
    const w = await Wire.connect(one.port);
    w.write(startupMessage({ user: 'app', database: 'appdb', replication: 'database' }));
    const msgs = await w.readUntil('E');
    const e = errorFields(msgs.at(-1) as never);
    assert.equal(e.code, '0A000');
    assert.match(e.message ?? '', /replication/);
    w.close();
  });
});

describe('server-side prepared statements shared by text', () => {
  test('after DDL through Postern, a client that never prepared the statement gets the new result type', async () => {
    const a = await connected(one.port);
    await a.query({ name: 'q_typed', text: 'select x from typed' });
    await a.query('alter table typed alter column x type text');
    const b = await connected(one.port);
    const r = await b.query({ name: 'q_b', text: 'select x from typed' });
    assert.deepEqual(r.rows, []);
    await a.end();
    await b.end();
  });

  test('after DDL elsewhere, the stale plan is retired: a driver re-preparing under a new name succeeds', async () => {
    await cluster.psql('create table typed2 (x int); insert into typed2 values (1)', { db: 'appdb', user: 'app', password: PW });
    const a = await connected(one.port);
    assert.equal((await a.query({ name: 'q2', text: 'select x from typed2' })).rows[0].x, 1);
    await cluster.psql('alter table typed2 alter column x type text', { db: 'appdb', user: 'app', password: PW });
    const b = await connected(one.port);
    const first = await b.query({ name: 'q2b', text: 'select x from typed2' }).then(
      (r) => r.rows[0].x,
      (e: Error & { code?: string }) => e.code,
    );
    // PostgreSQL answers 0A000 to a client whose plan predates the change; Postern may answer it once for a shared plan.
    assert.ok(first === '1' || first === '0A000', String(first));
    const again = await b.query({ name: 'q2c', text: 'select x from typed2' });
    assert.equal(again.rows[0].x, '1');
    // postgres.js recovers from 0A000 on its own.
    const sql = postgres({ host: '127.0.0.1', port: one.port, user: 'app', database: 'appdb', max: 1 });
    const [row] = await sql`select x from typed2`;
    assert.equal(row?.x, '1');
    await sql.end();
    await a.end();
    await b.end();
  });
});

describe('a prepared statement keeps the result type it was described with', () => {
  test('postgres.js: a statement described before DDL, run on a server that must prepare it again, gets the new rows (after 0A000, as directly)', async () => {
    const sql = postgres({ host: '127.0.0.1', port: one.port, user: 'app', database: 'appdb', max: 1 });
    const other = await connected(one.port);
    try {
      await sql`create table reshaped (a int)`;
      await sql`insert into reshaped values (1)`;
      assert.deepEqual([...(await sql`select * from reshaped`.values())], [[1]]);
      await sql`drop table reshaped`;
      await sql`create table reshaped (a int, b bool, c text)`;
      await sql`insert into reshaped values (2, true, 'x')`;
      // The only server connection forgets Postern's statements: the next Bind needs a fresh Parse there.
      await other.query('discard all');
      assert.deepEqual([...(await sql`select * from reshaped`.values())], [[2, true, 'x']]);
      assert.deepEqual([...(await sql`select * from reshaped`.values())], [[2, true, 'x']]);
    } finally {
      await sql`drop table if exists reshaped`.catch(() => {});
      await sql.end();
      await other.end();
    }
  });

  test('raw protocol: Bind of a statement whose result type changed is refused with 0A000, as PostgreSQL refuses it, on any server connection', async () => {
    const z = (t: string) => Buffer.from(`${t}\0`);
    const i16 = (n: number) => Buffer.from([n >> 8, n & 255]);
    const parse = typedMessage('P', Buffer.concat([z('st'), z('select * from reshaped2'), i16(0)]));
    const describe = typedMessage('D', Buffer.concat([Buffer.from('S'), z('st')]));
    const bind = typedMessage('B', Buffer.concat([z(''), z('st'), i16(0), i16(0), i16(0)]));
    const execute = typedMessage('E', Buffer.concat([z(''), Buffer.alloc(4)]));
    const sync = typedMessage('S');
    const untilReady = async (w: Wire) => {
      const out = await w.readUntil('Z');
      while (out.at(-1)?.type !== 'Z') out.push(...(await w.readUntil('Z')));
      return out;
    };
    const runOn = async (port: number, between: (w: Wire) => Promise<void>) => {
      const w = await Wire.connect(port);
      w.write(startupMessage({ user: 'app', database: 'appdb' }));
      if (port === cluster.port) await scramLogin(w, PW);
      else await untilReady(w);
      w.write(simpleQuery('drop table if exists reshaped2; create table reshaped2 (a int)'));
      await untilReady(w);
      w.write(parse, describe, sync);
      const described = await untilReady(w);
      assert.ok(described.some((m) => m.type === 'T'));
      w.write(simpleQuery('drop table reshaped2; create table reshaped2 (a text, b int)'));
      await untilReady(w);
      await between(w);
      w.write(bind, execute, sync);
      const r = await untilReady(w);
      w.close();
      const err = r.find((m) => m.type === 'E');
      return {
        code: err === undefined ? null : errorFields(err).code,
        rows: r.filter((m) => m.type === 'D').length,
        status: r.at(-1)?.body[0],
      };
    };
    const begin = async (w: Wire) => {
      w.write(simpleQuery('begin'));
      await untilReady(w);
    };
    const direct = await runOn(cluster.port, async () => {});
    assert.equal(direct.code, '0A000');
    assert.equal(direct.status, 0x49);
    // Inside a transaction block the block is aborted, as by any error.
    const directInBlock = await runOn(cluster.port, begin);
    assert.deepEqual(directInBlock, { ...direct, status: 0x45 });
    const other = await connected(one.port);
    try {
      const through = await runOn(one.port, async () => {
        await other.query('discard all');
      });
      assert.deepEqual(through, direct);
      const throughInBlock = await runOn(one.port, async (w) => {
        await other.query('discard all');
        await begin(w);
      });
      assert.deepEqual(throughInBlock, directInBlock);
    } finally {
      await other.end();
    }
  });
});

describe('extended queries without a Sync', () => {
  const z = (t: string) => Buffer.from(`${t}\0`);
  const i16 = (n: number) => Buffer.from([n >> 8, n & 255]);
  const i32 = (n: number) => {
    const b = Buffer.alloc(4);
    b.writeInt32BE(n);
    return b;
  };
  const dataText = (m: { type: string; body: Buffer }) => m.body.toString('utf8', 6, 6 + m.body.readInt32BE(2));

  async function login(): Promise<Wire> {
    const w = await Wire.connect(one.port);
    w.write(startupMessage({ user: 'app', database: 'appdb' }));
    assert.equal((await w.readUntil('Z')).at(-1)?.type, 'Z');
    return w;
  }

  test('a portal suspended after Execute with a row limit and Flush keeps its server connection until Sync', async () => {
    // PostgreSQL: the unnamed portal lives in an implicit transaction until Sync; nobody else runs in it.
    const a = await login();
    const b = await login();
    try {
      a.write(
        typedMessage('P', Buffer.concat([z(''), z('select x from generate_series(1, 3) x'), i16(0)])),
        typedMessage('B', Buffer.concat([z(''), z(''), i16(0), i16(0), i16(0)])),
        typedMessage('E', Buffer.concat([z(''), i32(1)])),
        typedMessage('H'),
      );
      const first = await a.readUntil('s');
      assert.deepEqual(first.filter((m) => m.type === 'D').map(dataText), ['1']);
      // B's query needs the only server connection, which A still holds: B waits.
      b.write(simpleQuery("select 'b' as who"));
      const p = one.postern.ctx.pools.all().find((x) => x.target.name === 'appdb');
      assert.ok(p !== undefined);
      await waitUntil(() => p.counts().cl_waiting === 1, 5_000, 'B waiting for the server connection');
      a.write(typedMessage('E', Buffer.concat([z(''), i32(1)])), typedMessage('S'));
      const rest = await a.readUntil('Z');
      assert.deepEqual(
        rest.filter((m) => m.type === 'D' || m.type === 'E').map((m) => (m.type === 'D' ? dataText(m) : errorFields(m).message)),
        ['2'],
      );
      assert.equal(rest.at(-1)?.body[0], 0x49, 'idle after Sync');
      const bAnswer = await b.readUntil('Z');
      assert.deepEqual(bAnswer.filter((m) => m.type === 'D').map(dataText), ['b']);
      assert.equal(bAnswer.at(-1)?.body[0], 0x49);
    } finally {
      a.close();
      b.close();
    }
  });

  test('a Parse and Flush is not an end: the unnamed statement is still there for the Bind that follows', async () => {
    const a = await login();
    const b = await login();
    try {
      a.write(typedMessage('P', Buffer.concat([z(''), z("select 'mine'"), i16(0)])), typedMessage('H'));
      assert.equal((await a.readUntil('1')).at(-1)?.type, '1');
      b.write(simpleQuery("select 'other'"));
      const p = one.postern.ctx.pools.all().find((x) => x.target.name === 'appdb');
      assert.ok(p !== undefined);
      await waitUntil(() => p.counts().cl_waiting === 1, 5_000, 'B waiting');
      a.write(
        typedMessage('B', Buffer.concat([z(''), z(''), i16(0), i16(0), i16(0)])),
        typedMessage('E', Buffer.concat([z(''), i32(0)])),
        typedMessage('S'),
      );
      const r = await a.readUntil('Z');
      assert.deepEqual(r.filter((m) => m.type === 'D').map(dataText), ['mine']);
      assert.equal((await b.readUntil('Z')).filter((m) => m.type === 'D').map(dataText)[0], 'other');
    } finally {
      a.close();
      b.close();
    }
  });

  test('a client that leaves with a portal open leaves a clean server connection', async () => {
    const a = await login();
    a.write(
      typedMessage('P', Buffer.concat([z(''), z('select x from generate_series(1, 3) x'), i16(0)])),
      typedMessage('B', Buffer.concat([z(''), z(''), i16(0), i16(0), i16(0)])),
      typedMessage('E', Buffer.concat([z(''), i32(1)])),
      typedMessage('H'),
    );
    await a.readUntil('s');
    a.close();
    // The next client has the same settings (nothing for Postern to send first).
    const c = await login();
    try {
      // Not inside the old implicit transaction: its own transaction, no portal left over.
      c.write(simpleQuery('select (now() = statement_timestamp() and (select count(*) from pg_cursors) = 0)::text'));
      const r = await c.readUntil('Z');
      assert.deepEqual(r.filter((m) => m.type === 'D').map(dataText), ['true']);
    } finally {
      c.close();
    }
  });

  for (const [name, stray] of [
    ['Flush', typedMessage('H')],
    ['CopyFail', typedMessage('f', z('late'))],
    ['CopyDone', typedMessage('c')],
    ['CopyData', typedMessage('d', Buffer.from('x'))],
  ] as const) {
    test(`a lone ${name} between transactions (no answer owed) and then a query: the query is answered`, async () => {
      // PostgreSQL ignores COPY messages outside a COPY and answers nothing to a Flush.
      const w = await login();
      try {
        w.write(simpleQuery('select 1'));
        await w.readUntil('Z');
        // The stray alone, read by Postern before the query is sent (one chunk of its own).
        const me = [...one.postern.ctx.sessions].reduce((x, y) => (y.id > x.id ? y : x));
        const before = me.info().bytesIn;
        w.write(stray);
        await waitUntil(() => me.info().bytesIn >= before + stray.length, 5_000, 'the stray read');
        w.write(simpleQuery("select 'after' as v"));
        const r = await w.readUntil('Z');
        assert.deepEqual(r.filter((m) => m.type === 'D').map(dataText), ['after']);
        // And again, the stray in the same write as the query.
        w.write(Buffer.concat([stray, simpleQuery("select 'again' as v")]));
        assert.deepEqual((await w.readUntil('Z')).filter((m) => m.type === 'D').map(dataText), ['again']);
      } finally {
        w.close();
      }
    });
  }
});

describe('prepares never deadlock a small pool', () => {
  test('pgbench TPC-B -M prepared, 10 and 50 clients on 2 threads over a pool of 3', async () => {
    const p = await startPostern({
      tls: { mode: 'disable' },
      auth: { hba_file: join(dir, 'hba.conf') },
      pool: { pool_mode: 'transaction', default_pool_size: 3, query_wait_timeout: '20s' },
      databases: { appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } } },
      log: { level: 'warn' },
    });
    try {
      const init = await run('pgbench', ['-i', '-s', '1', '-q', '-h', cluster.host, '-p', String(cluster.port), '-U', 'app', 'appdb'], {
        env: pgEnv({ PGPASSWORD: PW }),
      });
      assert.equal(init.code, 0, init.stderr);
      for (const c of ['10', '50']) {
        const r = await run(
          'pgbench',
          ['-n', '-c', c, '-j', '2', '-T', '3', '-M', 'prepared', '-h', '127.0.0.1', '-p', String(p.port), '-U', 'app', 'appdb'],
          { env: pgEnv(), timeoutMs: 60_000 },
        );
        assert.equal(r.code, 0, r.stderr);
        assert.match(r.stdout, /number of failed transactions: 0/);
        const done = Number(/number of transactions actually processed: (\d+)/.exec(r.stdout)?.[1]);
        assert.ok(done > 0, r.stdout);
      }
    } finally {
      await p.close();
    }
  });
});

function simpleQuery(sql: string): Buffer {
  const body = Buffer.concat([Buffer.from(sql, 'utf8'), Buffer.from([0])]);
  const out = Buffer.alloc(5 + body.length);
  out[0] = 0x51;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}
