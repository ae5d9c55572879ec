// Faults from servers and hostile clients (issue 19): a dead server
// connection frees its pool slot, a malformed server message ends only its
// own session, settings are exact after a client leaves mid-work, nothing is
// buffered before authentication beyond PostgreSQL's small limits, bogus
// startup settings are refused, the clean-up after a client leaves knows
// exactly what is owed, fixed-size messages are checked on their header, a
// cancel does not cost the server connection.
//
// One real cluster for everything a real server does; a scripted fake server
// (test/helpers/fake-server.ts) for malformed server messages; a TCP fault
// injector (test/faults/proxy.ts) for connections that die.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { encodeParse, encodeQuery, SYNC } from '../../src/protocol/frontend.ts';
import { type FaultProxy, startFaultProxy } from '../faults/proxy.ts';
import { type FakeServer, startFakeServer } from '../helpers/fake-server.ts';
import { logsWith, pgEnv, type RunningPostern, run, startPostern, waitUntil } from '../helpers/postern.ts';
import { describeBytes, errorFields, messageHeader, onlyError, startupMessage, typedMessage, Wire } from '../helpers/wire.ts';

const PW = 'hard-pw';
let dir: string;
let cluster: PgCluster;
let fake: FakeServer;
let proxy: FaultProxy;
let px: RunningPostern;
/** Answer the fake server gives to the next Query (null: the standard one). */
let fakeAnswer: Buffer | null = null;

function client(database = 'appdb', extra: Partial<pg.ClientConfig> = {}): pg.Client {
  return new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', database, ...extra });
}

async function connected(database = 'appdb', extra: Partial<pg.ClientConfig> = {}): Promise<pg.Client> {
  const c = client(database, extra);
  c.on('error', () => {});
  await c.connect();
  return c;
}

function pool(database: string) {
  const p = px.postern.ctx.pools.all().find((x) => x.target.name === database);
  assert.ok(p !== undefined, `a pool for ${database}`);
  return p;
}

/** Logs in over a raw socket (trust) and reads up to the first ReadyForQuery. */
async function rawLogin(database = 'appdb', params: Record<string, string> = {}): Promise<Wire> {
  const w = await Wire.connect(px.port);
  w.write(startupMessage({ user: 'app', database, ...params }));
  const msgs = await w.readUntil('Z');
  assert.equal(msgs.at(-1)?.type, 'Z', 'logged in');
  return w;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-hard-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  await cluster.psql('create table words (v text); create table sink (x int)', { db: 'appdb', user: 'app', password: PW });
  fake = await startFakeServer((type) => {
    if (type !== 'Q' || fakeAnswer === null) return null;
    const a = fakeAnswer;
    fakeAnswer = null;
    return a;
  });
  proxy = await startFaultProxy(cluster.host, cluster.port);
  // An unknown user logging in with SCRAM, for the limits before authentication.
  writeFileSync(join(dir, 'hba.conf'), 'host all nosuchuser 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 trust\n');
  const db = (port: number) => ({ host: '127.0.0.1', port, dbname: 'appdb', server_password: PW, tls: { mode: 'disable' } });
  px = await startPostern({
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool: { pool_mode: 'transaction', default_pool_size: 2, client_idle_timeout: '2s', query_wait_timeout: '20s' },
    databases: {
      appdb: db(cluster.port),
      faultdb: db(proxy.port),
      fakedb: { host: '127.0.0.1', port: fake.port, server_password: 'x', tls: { mode: 'disable' } },
    },
    log: { level: 'info' },
  });
});

after(async () => {
  await px?.close();
  await fake?.close();
  await proxy?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

describe('a dead server connection frees its slot', () => {
  test('terminating lent connections more times than the pool has slots: every new client is still served', async () => {
    for (let i = 0; i < 5; i++) {
      const c = await connected();
      await c.query('begin');
      const pid = (await c.query('select pg_backend_pid() as p')).rows[0].p as number;
      await cluster.psql(`select pg_terminate_backend(${pid})`);
      await assert.rejects(c.query('select 1'));
    }
    const p = pool('appdb');
    await waitUntil(() => p.connections().every((conn) => !conn.closed), 5_000, 'no closed connection listed');
    assert.ok(p.total <= 2, `at most the pool size open: ${p.total}`);
    const fresh = await connected();
    assert.equal((await fresh.query('select 7 as v')).rows[0].v, 7);
    await fresh.end();
    assert.equal(logsWith(px.logs, 'query_wait_timeout').length, 0);
  });

  test('connections cut or reset under the pool (a dying server): the pool opens new ones', async () => {
    const a = await connected('faultdb');
    await a.query('begin');
    proxy.reset();
    await assert.rejects(a.query('select 1'), (e: Error & { code?: string }) => e.code === '08006' || /terminated|closed/.test(e.message));
    const b = await connected('faultdb');
    await b.query('begin');
    proxy.cut();
    await assert.rejects(b.query('select 1'));
    const p = pool('faultdb');
    await waitUntil(() => p.total === 0, 5_000, 'dead connections left the pool');
    const c = await connected('faultdb');
    assert.equal((await c.query('select 1 as v')).rows[0].v, 1);
    await c.end();
  });

  test('an empty password message after login ends only that client; the pool stays whole', async () => {
    const ws: Wire[] = [];
    for (let i = 0; i < 5; i++) {
      const w = await rawLogin();
      w.write(Buffer.from([0x70, 0, 0, 0, 4]));
      ws.push(w);
    }
    for (const w of ws) {
      const r = await w.readUntilClose();
      assert.match(r.data.toString('latin1'), /08P01/);
    }
    const c = await connected();
    assert.equal((await c.query('select 2 as v')).rows[0].v, 2);
    await c.end();
    assert.ok(pool('appdb').total <= 2);
  });

  test('a server restart under pgbench: the pool serves again without a restart of Postern', async () => {
    const load = run('pgbench', ['-n', '-c', '4', '-T', '6', '-h', '127.0.0.1', '-p', String(px.port), '-U', 'app', '-f', '-', 'appdb'], {
      env: pgEnv(),
      input: 'select 1;\n',
      timeoutMs: 60_000,
    });
    await new Promise((r) => setTimeout(r, 1500));
    await cluster.restart();
    await load;
    const c = await waitUntil(
      async () => {
        const t = client();
        t.on('error', () => {});
        try {
          await t.connect();
          await t.query('select 1');
          return t;
        } catch {
          await t.end().catch(() => {});
          return null;
        }
      },
      20_000,
      'a query succeeds after the restart',
    );
    await c.end();
    const p = pool('appdb');
    assert.ok(p.total <= 2 && p.connections().every((conn) => !conn.closed));
  });
});

describe('malformed server messages', () => {
  test('a ParameterStatus without a terminated value ends that session with 08P01; the process and other sessions carry on', async () => {
    const healthy = await connected();
    const w = await rawLogin('fakedb');
    fakeAnswer = Buffer.from([0x53, 0, 0, 0, 7, 0x61, 0x62, 0x63]);
    w.write(encodeQuery('select 1'));
    const r = await w.readUntilClose();
    assert.match(r.data.toString('latin1'), /08P01/);
    assert.match(r.data.toString('latin1'), /broken ParameterStatus packet/);
    assert.equal((await healthy.query('select 3 as v')).rows[0].v, 3);
    await healthy.end();
    assert.equal(pool('fakedb').total, 0, 'the broken connection is gone');
  });

  test('a message that answers nothing that was asked, or an unknown type, ends that connection only', async () => {
    for (const bad of [
      Buffer.from([0x31, 0, 0, 0, 4]), // ParseComplete for a Query
      Buffer.from([0x21, 0, 0, 0, 4]), // no such message type
      Buffer.from([0x45, 0, 0, 0, 5, 0x41]), // ErrorResponse without its terminator
    ]) {
      const w = await rawLogin('fakedb');
      fakeAnswer = bad;
      w.write(encodeQuery('select 1'));
      const r = await w.readUntilClose();
      assert.match(r.data.toString('latin1'), /08P01|XX000|server/, r.data.toString('latin1'));
    }
    const c = await connected();
    assert.equal((await c.query('select 4 as v')).rows[0].v, 4);
    await c.end();
  });

  test('a second ReadyForQuery for one Query: the client has its answer; that server connection is closed, the client goes on', async () => {
    const w = await rawLogin('fakedb');
    const before = fake.connections;
    fakeAnswer = Buffer.from([0x49, 0, 0, 0, 4, 0x5a, 0, 0, 0, 5, 0x49, 0x5a, 0, 0, 0, 5, 0x49]);
    w.write(encodeQuery(''));
    const first = await w.readUntil('Z');
    assert.deepEqual(
      first.map((m) => m.type),
      ['I', 'Z'],
    );
    await waitUntil(() => pool('fakedb').total === 0, 5_000, 'the confused connection is closed');
    w.write(encodeQuery(''));
    const second = await w.readUntil('Z');
    assert.deepEqual(
      second.map((m) => m.type),
      ['I', 'Z'],
    );
    assert.ok(fake.connections > before, 'served by a new server connection');
    w.close();
  });
});

describe('exact state after a client leaves mid-work', () => {
  test('a client that changes client_encoding and leaves mid-query: the next client stores exactly the bytes it sent', async () => {
    for (let i = 0; i < 5; i++) {
      const w = await rawLogin();
      w.write(encodeQuery(`set client_encoding = 'LATIN1'; set application_name = 'gone'; select pg_sleep(0.2)`));
      await new Promise((r) => setTimeout(r, 50));
      w.close();
      const b = await connected();
      const text = `café ü ${i}`;
      await b.query('insert into words values ($1)', [text]);
      const r = await b.query(
        `select v, encode(convert_to(v, 'UTF8'), 'hex') as hex, current_setting('application_name') as app from words where v = $1`,
        [text],
      );
      assert.equal(r.rows[0]?.v, text);
      assert.equal(r.rows[0]?.hex, Buffer.from(text, 'utf8').toString('hex'));
      assert.equal(r.rows[0]?.app, '');
      await b.end();
    }
  });

  test('answers owed in odd states are drained exactly: the server connection is reused at once', async () => {
    const cases: Buffer[][] = [
      // A failed Parse, then a Query without a Sync: the server skips the Query.
      [encodeParse('', 'selec 1'), encodeQuery('select 1')],
      // COPY FROM STDIN and a Sync the server ignores during copy-in.
      [encodeQuery('copy sink from stdin'), SYNC],
      // Extended-protocol work without a Sync.
      [
        encodeParse('', 'select pg_sleep(0.1)'),
        typedMessage('B', Buffer.from([0, 0, 0, 0, 0, 0, 0, 0])),
        typedMessage('E', Buffer.from([0, 0, 0, 0, 0])),
      ],
    ];
    const p = pool('appdb');
    for (const frames of cases) {
      const w = await rawLogin();
      w.write(...frames);
      await new Promise((r) => setTimeout(r, 150));
      const before = p.connections().map((c) => c.key?.pid);
      w.close();
      await waitUntil(() => p.counts().sv_tested === 0 && p.counts().sv_active === 0, 3_000, 'the connection is clean again');
      const after = p.connections().map((c) => c.key?.pid);
      assert.deepEqual(after.sort(), before.sort(), 'the same server connections, none closed');
    }
    assert.equal(logsWith(px.logs, 'could not clean the server connection; closing it').length, 0);
  });
});

describe('limits on what a client may send', () => {
  test('before authentication a message is capped on its header: no gigabyte is buffered', async () => {
    const rssBefore = process.memoryUsage().rss;
    const ws: Wire[] = [];
    for (let i = 0; i < 3; i++) {
      const w = await Wire.connect(px.port);
      w.write(startupMessage({ user: 'nosuchuser', database: 'appdb' }));
      const auth = await w.readMessage();
      assert.equal(auth.type, 'R');
      w.write(messageHeader('p', 1_000_000_000), Buffer.alloc(8 * 1024 * 1024));
      ws.push(w);
    }
    for (const w of ws) {
      const r = await w.readUntilClose();
      const e = errorFields({ type: 'E', frame: r.data, body: r.data.subarray(5) });
      assert.equal(e.code, '08P01');
      assert.match(e.message ?? '', /invalid message length/);
    }
    assert.ok(process.memoryUsage().rss - rssBefore < 64 * 1024 * 1024, 'memory did not follow the declared lengths');
  });

  test('a Sync, Flush or Terminate with a body is refused on its header; Execute is capped small', async () => {
    for (const [type, len] of [
      ['S', 1_000_000],
      ['H', 8],
      ['X', 100],
      ['E', 20_000_000],
    ] as const) {
      const w = await rawLogin();
      w.write(messageHeader(type, len));
      const r = await w.readUntilClose();
      assert.equal(onlyError(r.data).code, '08P01', `${type} ${len}: ${describeBytes(r.data)}`);
    }
  });

  test('a client that stops in the middle of a message is ended by client_idle_timeout', async () => {
    const w = await rawLogin();
    w.write(messageHeader('Q', 100), Buffer.from('select '));
    const r = await w.readUntilClose(10_000);
    const e = errorFields({ type: 'E', frame: r.data, body: r.data.subarray(5) });
    assert.equal(e.code, '57P05');
  });

  test('unknown startup settings are refused like the server refuses them; too many are refused at once', async () => {
    const w = await Wire.connect(px.port);
    w.write(startupMessage({ user: 'app', database: 'appdb', bogus_one: '1' }));
    const msgs = await w.readUntil('E');
    assert.equal(errorFields(msgs.at(-1) as never).code, '42704');
    w.close();
    const many: Record<string, string> = { user: 'app', database: 'appdb' };
    for (let i = 0; i < 500; i++) many[`x${i}`] = '1';
    const warnsBefore = px.logs.length;
    const w2 = await Wire.connect(px.port);
    w2.write(startupMessage(many));
    const m2 = await w2.readUntil('E');
    assert.equal(errorFields(m2.at(-1) as never).code, '53400');
    w2.close();
    assert.ok(px.logs.length - warnsBefore < 20, 'no flood of log lines');
  });

  test("a client's protocol violation is logged as the client's", async () => {
    const w = await rawLogin();
    w.write(Buffer.from([0x21, 0, 0, 0, 4]));
    await w.readUntilClose();
    assert.ok(logsWith(px.logs, 'protocol violation by client').length > 0);
  });
});

describe('cancel', () => {
  test('a cancelled query keeps its server connection: it is reused, not closed', async () => {
    const c = await connected();
    const pid = (await c.query('select pg_backend_pid() as p')).rows[0].p as number;
    await c.query('begin');
    const q = c.query('select pg_sleep(10)');
    await waitUntil(
      async () =>
        Number(
          await cluster.psql(`select count(*) from pg_stat_activity where query = 'select pg_sleep(10)' and wait_event = 'PgSleep'`),
        ) === 1,
    );
    await cancelQuery(c);
    await assert.rejects(q, (e: Error & { code?: string }) => e.code === '57014');
    await c.query('rollback');
    const p = pool('appdb');
    await waitUntil(() => p.counts().sv_being_canceled === 0 && p.counts().sv_tested === 0, 5_000);
    const pids = p.connections().map((x) => x.key?.pid);
    assert.ok(pids.includes(pid), 'the cancelled connection is still in the pool');
    assert.equal(logsWith(px.logs, 'could not clean the server connection; closing it').length, 0);
    await c.end();
  });

  test('the admin SET log line names the setting', async () => {
    const problems = px.postern.set('log.level', 'info');
    assert.deepEqual(problems, []);
    const line = logsWith(px.logs, 'setting changed from the admin console').at(-1);
    assert.equal(line?.setting, 'log.level');
  });
});

/** Sends a CancelRequest for a node-postgres client through Postern (its processID/secretKey are Postern's key). */
async function cancelQuery(c: pg.Client): Promise<void> {
  const k = c as unknown as { processID: number; secretKey: number };
  const w = await Wire.connect(px.port);
  const b = Buffer.alloc(16);
  b.writeInt32BE(16, 0);
  b.writeInt32BE(80877102, 4);
  b.writeInt32BE(k.processID, 8);
  b.writeInt32BE(k.secretKey, 12);
  w.write(b);
  await w.readUntilClose(2_000);
}
