// Mutated client traffic through a real Postern to a real PostgreSQL in
// transaction mode (issue 19): random sequences of extended-protocol and
// simple messages, COPY, Flush and Sync in any order, some with broken
// lengths or types, cut off at a random point. After every batch the pool
// must be whole again at once: nothing left lent or being cleaned, no
// connection closed for want of knowing what it owed, at most the pool size
// open, and a healthy client served throughout.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import pg from 'pg';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { FE } from '../../src/protocol/codes.ts';
import { encodeBind, encodeExecute, encodeParse, encodeQuery, SYNC } from '../../src/protocol/frontend.ts';
import { Writer } from '../../src/protocol/writer.ts';
import { logsWith, type RunningPostern, startPostern, waitUntil } from '../helpers/postern.ts';
import { startupMessage, Wire } from '../helpers/wire.ts';

const PW = 'cfz-pw';
let dir: string;
let cluster: PgCluster;
let px: RunningPostern;
let healthy: pg.Client;

const m = (type: number, body: Buffer = Buffer.alloc(0)) => new Writer().bytes(body).message(type);
const MESSAGES: Array<() => Buffer> = [
  () => encodeParse('', 'select 1'),
  () => encodeParse('', 'selec 1'),
  () => encodeParse('', 'select pg_sleep(0.05)'),
  () => encodeParse('n1', 'select $1::int'),
  () => encodeBind('', '', []),
  () => encodeBind('', 'n1', ['7']),
  () => encodeBind('', 'nosuch', []),
  () => encodeExecute('', 0),
  () => encodeExecute('', 1),
  () => new Writer().byte(0x53).cstring('').message(FE.Describe),
  () => new Writer().byte(0x50).cstring('').message(FE.Describe),
  () => new Writer().byte(0x53).cstring('n1').message(FE.Close),
  () => SYNC,
  () => m(FE.Flush),
  () => encodeQuery('select 1'),
  () => encodeQuery('begin'),
  () => encodeQuery('commit'),
  () => encodeQuery('select 1/0'),
  () => encodeQuery('copy sink from stdin'),
  () => encodeQuery(`set application_name = 'fuzz'`),
  () => new Writer().bytes(Buffer.from('5\n')).message(FE.CopyData),
  () => m(FE.CopyDone),
  () => new Writer().cstring('stop').message(FE.CopyFail),
];

const step = fc.oneof(
  { weight: 8, arbitrary: fc.nat(MESSAGES.length - 1).map((i) => ({ kind: 'msg' as const, i })) },
  {
    weight: 1,
    arbitrary: fc.record({ kind: fc.constant('badlen' as const), i: fc.nat(MESSAGES.length - 1), len: fc.integer({ min: -5, max: 100 }) }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('badtype' as const), type: fc.integer({ min: 0, max: 255 }) }) },
);

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-cfz-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  await cluster.psql('create table sink (x int)', { db: 'appdb', user: 'app', password: PW });
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  px = await startPostern({
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool: { pool_mode: 'transaction', default_pool_size: 3 },
    databases: { appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } } },
    log: { level: 'info' },
  });
  healthy = new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', database: 'appdb' });
  await healthy.connect();
});

after(async () => {
  await healthy?.end();
  await px?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('mutated client traffic, cut anywhere: the pool is whole again at once after every batch', async () => {
  let batches = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(step, { minLength: 1, maxLength: 14 }), fc.nat(200), fc.boolean(), async (steps, cutAt, waitFirst) => {
      const w = await Wire.connect(px.port);
      w.write(startupMessage({ user: 'app', database: 'appdb' }));
      await w.readUntil('Z', 3_000);
      const parts: Buffer[] = steps.map((s) => {
        if (s.kind === 'msg') return (MESSAGES[s.i] as () => Buffer)();
        if (s.kind === 'badtype') return Buffer.from([s.type, 0, 0, 0, 4]);
        const f = Buffer.from((MESSAGES[s.i] as () => Buffer)());
        f.writeInt32BE(s.len, 1);
        return f;
      });
      const bytes = Buffer.concat(parts);
      w.write(bytes.subarray(0, Math.min(bytes.length, cutAt + 5)));
      // Sometimes leave while answers are still coming, sometimes after reading some of them.
      if (waitFirst) await w.readUntil('Z', 100).catch(() => []);
      w.close();
      batches++;
      const pool = px.postern.ctx.pools.all()[0];
      assert.ok(pool !== undefined);
      await waitUntil(
        () => {
          const c = pool.counts();
          return c.sv_active === 0 && c.sv_tested === 0 && c.sv_being_canceled === 0 && c.sv_login === 0 && c.cl_waiting === 0;
        },
        5_000,
        'every server connection back in the pool',
      );
      assert.ok(pool.total <= 3);
      assert.ok(pool.connections().every((c) => !c.closed));
      assert.equal((await healthy.query('select 1 as v')).rows[0].v, 1);
    }),
    { numRuns: 150, seed: 0x0c11 },
  );
  assert.equal(batches, 150);
  // No clean-up ever gave up on a connection for want of knowing what it owed.
  assert.equal(
    logsWith(px.logs, 'could not clean the server connection; closing it').filter((l) => l.why === 'timed out draining').length,
    0,
  );
});
