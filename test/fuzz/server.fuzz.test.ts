// Mutated frames from a server (issue 19): a fake server answers each
// request with a valid answer mutated (bytes flipped, lengths changed,
// frames dropped, duplicated, swapped, truncated, garbage inserted). Through
// every batch Postern must not crash, must never pass a frame it could not
// frame, and after the fake server drops its connections the pool must hold
// none of them (no leaked slot, no "closed" connection left in a list), while
// a client of a real server is served the whole time.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import fc from 'fast-check';
import pg from 'pg';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { BE } from '../../src/protocol/codes.ts';
import { encodeBind, encodeExecute, encodeParse, encodeQuery, SYNC } from '../../src/protocol/frontend.ts';
import { Writer } from '../../src/protocol/writer.ts';
import { type FakeServer, startFakeServer } from '../helpers/fake-server.ts';
import { type RunningPostern, startPostern, waitUntil } from '../helpers/postern.ts';
import { startupMessage, Wire } from '../helpers/wire.ts';

const PW = 'sfz-pw';
let dir: string;
let cluster: PgCluster;
let fake: FakeServer;
let px: RunningPostern;
let healthy: pg.Client;
/** The answer the fake server sends next, whatever it is asked. */
let next: Buffer | null = null;
let mutated = 0;

const m = (type: number, body: Buffer = Buffer.alloc(0)): Buffer => new Writer().bytes(body).message(type);
const ROW_DESC = new Writer().int16(1).cstring('v').int32(0).int16(0).int32(25).int16(-1).int32(-1).int16(0).message(BE.RowDescription);
const DATA_ROW = new Writer().int16(1).int32(1).bytes(Buffer.from('1')).message(BE.DataRow);
const COMPLETE = new Writer().cstring('SELECT 1').message(BE.CommandComplete);
const READY = new Writer().byte(0x49).message(BE.ReadyForQuery);
const NOTICE = new Writer()
  .byte(0x53)
  .cstring('NOTICE')
  .byte(0x43)
  .cstring('00000')
  .byte(0x4d)
  .cstring('hi')
  .byte(0)
  .message(BE.NoticeResponse);
const PSTATUS = new Writer().cstring('TimeZone').cstring('UTC').message(BE.ParameterStatus);

/** The valid answers to the two request shapes the batches send. */
const SIMPLE_ANSWER = [ROW_DESC, DATA_ROW, COMPLETE, READY];
const EXTENDED_ANSWER = [m(BE.ParseComplete), m(BE.BindComplete), DATA_ROW, COMPLETE, READY];

type Mutation =
  | { kind: 'flip'; at: number; value: number }
  | { kind: 'length'; frame: number; value: number }
  | { kind: 'drop' | 'dup'; frame: number }
  | { kind: 'swap'; frame: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'insert'; frame: number; bytes: Uint8Array }
  | { kind: 'async'; frame: number; which: number };

const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(200), value: fc.integer({ min: 0, max: 255 }) }),
  fc.record({ kind: fc.constant('length' as const), frame: fc.nat(6), value: fc.integer({ min: -8, max: 1 << 20 }) }),
  fc.record({ kind: fc.constantFrom('drop' as const, 'dup' as const), frame: fc.nat(6) }),
  fc.record({ kind: fc.constant('swap' as const), frame: fc.nat(6) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat(200) }),
  fc.record({ kind: fc.constant('insert' as const), frame: fc.nat(6), bytes: fc.uint8Array({ maxLength: 12 }) }),
  fc.record({ kind: fc.constant('async' as const), frame: fc.nat(6), which: fc.nat(1) }),
);

function mutate(frames: Buffer[], muts: Mutation[]): Buffer {
  const fs: Buffer[] = frames.map((f) => Buffer.from(f));
  let tail: number | null = null;
  const flips: Array<{ at: number; value: number }> = [];
  for (const mu of muts) {
    const i = fs.length === 0 ? 0 : ('frame' in mu ? mu.frame : 0) % fs.length;
    switch (mu.kind) {
      case 'flip':
        flips.push(mu);
        break;
      case 'length':
        if (fs[i] !== undefined && fs[i].length >= 5) fs[i].writeInt32BE(mu.value | 0, 1);
        break;
      case 'drop':
        fs.splice(i, 1);
        break;
      case 'dup':
        if (fs[i] !== undefined) fs.splice(i, 0, Buffer.from(fs[i]));
        break;
      case 'swap':
        if (i + 1 < fs.length) [fs[i], fs[i + 1]] = [fs[i + 1] as Buffer, fs[i] as Buffer];
        break;
      case 'truncate':
        tail = mu.at;
        break;
      case 'insert':
        fs.splice(i, 0, Buffer.from(mu.bytes));
        break;
      case 'async':
        fs.splice(i, 0, mu.which === 0 ? NOTICE : PSTATUS);
        break;
    }
  }
  const out = Buffer.concat(fs);
  for (const f of flips) if (out.length > 0) out[f.at % out.length] = f.value;
  return tail === null ? out : out.subarray(0, Math.min(out.length, tail));
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-sfz-'));
  cluster = await startPostgres({ users: [{ name: 'app', password: PW }], databases: [{ name: 'appdb', owner: 'app' }] });
  fake = await startFakeServer((type) => {
    // The answer comes with the request that completes it: a Query, or the Sync of an extended batch.
    if ((type === 'Q' || type === 'S') && next !== null) {
      const a = next;
      next = null;
      return a;
    }
    return type === 'Q' || type === 'S' ? null : Buffer.alloc(0);
  });
  writeFileSync(join(dir, 'hba.conf'), 'host all all 127.0.0.1/32 trust\n');
  px = await startPostern({
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba.conf') },
    pool: { pool_mode: 'transaction', default_pool_size: 2 },
    databases: {
      appdb: { host: cluster.host, port: cluster.port, server_password: PW, tls: { mode: 'disable' } },
      fakedb: { host: '127.0.0.1', port: fake.port, server_password: 'x', tls: { mode: 'disable' } },
    },
    log: { level: 'silent' },
  });
  healthy = new pg.Client({ host: '127.0.0.1', port: px.port, user: 'app', database: 'appdb' });
  await healthy.connect();
});

after(async () => {
  await healthy?.end();
  await px?.close();
  await fake?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('mutated server answers: no crash, no leaked pool slot, other clients served', async () => {
  await fc.assert(
    fc.asyncProperty(fc.boolean(), fc.array(mutation, { minLength: 1, maxLength: 4 }), async (extended, muts) => {
      const w = await Wire.connect(px.port);
      w.write(startupMessage({ user: 'app', database: 'fakedb' }));
      await w.readUntil('Z', 2_000).catch(() => []);
      next = mutate(extended ? EXTENDED_ANSWER : SIMPLE_ANSWER, muts);
      mutated++;
      if (extended) w.write(encodeParse('', 'select 1'), encodeBind('', '', []), encodeExecute('', 0), SYNC);
      else w.write(encodeQuery('select 1'));
      // Whatever comes back, if anything: Postern may wait for the rest of a frame the server never finishes.
      await w.readUntil('Z', 150).catch(() => []);
      w.close();
      fake.dropAll();
      const pool = px.postern.ctx.pools.all().find((p) => p.target.name === 'fakedb');
      await waitUntil(() => pool === undefined || pool.total === 0, 5_000, 'the fake connections left the pool');
      assert.ok(pool === undefined || pool.connections().every((c) => !c.closed));
      assert.equal((await healthy.query('select 1 as v')).rows[0].v, 1);
    }),
    { numRuns: 120, seed: 0x5e7e, includeErrorInReport: true },
  );
  assert.equal(mutated, 120);
});
