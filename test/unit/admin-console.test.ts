// The admin console's wire protocol, byte by byte: hand-built client frames go
// through AdminConsole.onFrame with a fake executor, and the exact sequence of
// server messages written back is asserted (simple query, extended query,
// result formats, row limits, error recovery at Sync, malformed frames).
// Frames are fed from inside larger buffers so that a read past `end` would
// show. Last, real drivers (node-postgres, postgres.js) talk to the console
// through a loopback socket.

import assert from 'node:assert/strict';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import fc from 'fast-check';
import pg from 'pg';
import postgres from 'postgres';
import { AdminError, parseAdminCommand } from '../../src/admin/commands.ts';
import { AdminConsole, type AdminConsoleHooks, type AdminResult } from '../../src/admin/console.ts';
import type { Cell, Column } from '../../src/admin/encode.ts';
import {
  AUTH_OK,
  decodeNotice,
  encodeBackendKeyData,
  encodeError,
  encodeParameterStatus,
  encodeReadyForQuery,
  type NoticeFields,
} from '../../src/protocol/backend.ts';
import { FE, REQUEST_CODE, TX } from '../../src/protocol/codes.ts';

// ---------------------------------------------------------------- fake executor

const POOLS_COLUMNS: Column[] = [
  { name: 'database', type: 'text' },
  { name: 'cl_active', type: 'int4' },
  { name: 'maxwait_us', type: 'int8' },
  { name: 'paused', type: 'bool' },
];
const POOLS_ROWS: Cell[][] = [
  ['app', 3, 12n, false],
  ['analytics', 0, 9007199254740993n, true],
  ['reports', -7, null, true],
];
const WEIRD_COLUMNS: Column[] = [{ name: 'n', type: 'int4' }];

/** Commands by parseAdminCommand's reading of the text: what they return, or what they throw. */
function run(sql: string): AdminResult {
  const cmd = parseAdminCommand(sql);
  switch (cmd.verb) {
    case 'SHOW':
      switch (cmd.what) {
        case 'pools':
          return { columns: POOLS_COLUMNS, rows: POOLS_ROWS, tag: 'SHOW' };
        case 'counted':
          return { columns: POOLS_COLUMNS, rows: POOLS_ROWS, tag: 'SELECT 3' };
        case 'weird':
          return { columns: WEIRD_COLUMNS, rows: [['abc']], tag: 'SHOW' };
        case 'empty':
          return { columns: POOLS_COLUMNS, rows: [], tag: 'SHOW' };
        case 'denied':
          throw new AdminError('42501', 'this console is read-only', 'ask an admin');
        case 'boom':
          throw new Error('secret internals');
        default:
          throw new AdminError('42601', `unknown SHOW ${cmd.what}`);
      }
    case 'PAUSE':
      return { columns: null, rows: [], tag: 'PAUSE', notices: [`pausing ${cmd.db ?? 'all databases'}`] };
    default:
      return { columns: null, rows: [], tag: cmd.verb };
  }
}

function describeSql(sql: string): Column[] | null {
  const cmd = parseAdminCommand(sql);
  if (cmd.verb !== 'SHOW') return null;
  switch (cmd.what) {
    case 'pools':
    case 'counted':
    case 'empty':
      return POOLS_COLUMNS;
    case 'weird':
      return WEIRD_COLUMNS;
    case 'denied':
      throw new AdminError('42501', 'this console is read-only', 'ask an admin');
    case 'boom':
      throw new Error('secret internals');
    default:
      throw new AdminError('42601', `unknown SHOW ${cmd.what}`);
  }
}

// ---------------------------------------------------------------- client frames

const i16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeInt16BE(v);
  return b;
};
const i32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(v);
  return b;
};
const cstr = (s: string) => Buffer.from(`${s}\0`, 'utf8');

function frame(type: string, ...body: Buffer[]): Buffer {
  const b = Buffer.concat(body);
  return Buffer.concat([Buffer.from(type, 'latin1'), i32(b.length + 4), b]);
}

const Q = (sql: string) => frame('Q', cstr(sql));
const P = (name: string, sql: string, oids: number[] = []) => frame('P', cstr(name), cstr(sql), i16(oids.length), ...oids.map(i32));
interface BindOpts {
  paramFormats?: number[];
  params?: (string | null)[];
  resultFormats?: number[];
}
function B(portal: string, stmt: string, o: BindOpts = {}): Buffer {
  const pf = o.paramFormats ?? [];
  const params = o.params ?? [];
  const rf = o.resultFormats ?? [];
  return frame(
    'B',
    cstr(portal),
    cstr(stmt),
    i16(pf.length),
    ...pf.map(i16),
    i16(params.length),
    ...params.map((p) => (p === null ? i32(-1) : Buffer.concat([i32(Buffer.byteLength(p)), Buffer.from(p)]))),
    i16(rf.length),
    ...rf.map(i16),
  );
}
const D = (kind: 'S' | 'P', name: string) => frame('D', Buffer.from(kind), cstr(name));
const E = (portal: string, maxRows = 0) => frame('E', cstr(portal), i32(maxRows));
const C = (kind: 'S' | 'P', name: string) => frame('C', Buffer.from(kind), cstr(name));
const S = () => frame('S');
const H = () => frame('H');
const X = () => frame('X');

// ---------------------------------------------------------------- harness

interface Msg {
  type: string;
  body: Buffer;
  frame: Buffer;
}

function split(data: Buffer): Msg[] {
  const out: Msg[] = [];
  let off = 0;
  while (off < data.length) {
    assert.ok(data.length - off >= 5, 'truncated server message header');
    const len = data.readInt32BE(off + 1);
    assert.ok(len >= 4 && off + 1 + len <= data.length, 'truncated server message');
    const f = data.subarray(off, off + 1 + len);
    out.push({ type: String.fromCharCode(f[0] as number), body: f.subarray(5), frame: f });
    off += 1 + len;
  }
  return out;
}

interface Harness {
  con: AdminConsole;
  writes: Buffer[];
  fatals: [string, string][];
  internals: unknown[];
  terminated: number;
  executed: string[];
  described: string[];
  /** Feeds frames one by one, each from inside a larger buffer (junk before, a NUL and more after). */
  send(...frames: Buffer[]): void;
  /** Messages written since the last take(), concatenated over writes. */
  take(): Msg[];
}

function harness(extra: Partial<AdminConsoleHooks> = {}): Harness {
  let taken = 0;
  const h: Harness = {
    con: undefined as unknown as AdminConsole,
    writes: [],
    fatals: [],
    internals: [],
    terminated: 0,
    executed: [],
    described: [],
    send(...frames) {
      for (const f of frames) {
        const buf = Buffer.concat([Buffer.from([0xee, 0x00, 0xee]), f, Buffer.from([0x00, 0x00, 0x00, 0x00, 0x00])]);
        h.con.onFrame(f[0] as number, buf, 3, 3 + f.length);
      }
    },
    take() {
      const data = Buffer.concat(h.writes.slice(taken));
      taken = h.writes.length;
      return split(data);
    },
  };
  h.con = new AdminConsole({
    execute: (sql) => {
      h.executed.push(sql);
      return run(sql);
    },
    describe: (sql) => {
      h.described.push(sql);
      return describeSql(sql);
    },
    write: (b) => {
      h.writes.push(Buffer.from(b));
    },
    onTerminate: () => {
      h.terminated++;
    },
    onFatal: (code, message) => {
      h.fatals.push([code, message]);
    },
    onInternalError: (e) => {
      h.internals.push(e);
    },
    ...extra,
  });
  return h;
}

const types = (msgs: Msg[]) => msgs.map((m) => m.type).join('');

function byType(msgs: Msg[], type: string): Msg[] {
  return msgs.filter((m) => m.type === type);
}

function errorOf(m: Msg): NoticeFields {
  return decodeNotice(m.frame);
}

function tagOf(m: Msg): string {
  assert.equal(m.type, 'C');
  assert.equal(m.body[m.body.length - 1], 0);
  return m.body.toString('utf8', 0, m.body.length - 1);
}

interface Field {
  name: string;
  oid: number;
  len: number;
  format: number;
}

function rowDescription(m: Msg): Field[] {
  assert.equal(m.type, 'T');
  const b = m.body;
  const n = b.readInt16BE(0);
  const out: Field[] = [];
  let off = 2;
  for (let i = 0; i < n; i++) {
    const nul = b.indexOf(0, off);
    const name = b.toString('utf8', off, nul);
    off = nul + 1;
    const oid = b.readInt32BE(off + 6);
    const len = b.readInt16BE(off + 10);
    const format = b.readInt16BE(off + 16);
    out.push({ name, oid, len, format });
    off += 18;
  }
  assert.equal(off, b.length);
  return out;
}

function dataRow(m: Msg): (Buffer | null)[] {
  assert.equal(m.type, 'D');
  const b = m.body;
  const n = b.readInt16BE(0);
  const out: (Buffer | null)[] = [];
  let off = 2;
  for (let i = 0; i < n; i++) {
    const len = b.readInt32BE(off);
    off += 4;
    if (len < 0) out.push(null);
    else {
      out.push(b.subarray(off, off + len));
      off += len;
    }
  }
  assert.equal(off, b.length);
  return out;
}

const textRow = (m: Msg) => dataRow(m).map((c) => (c === null ? null : c.toString('utf8')));

function paramOids(m: Msg): number[] {
  assert.equal(m.type, 't');
  const n = m.body.readInt16BE(0);
  return Array.from({ length: n }, (_, i) => m.body.readUInt32BE(2 + 4 * i));
}

function assertError(m: Msg | undefined, code: string, message?: string): NoticeFields {
  assert.ok(m !== undefined, 'an ErrorResponse expected');
  assert.equal(m.type, 'E');
  const e = errorOf(m);
  assert.equal(e.severity, 'ERROR');
  assert.equal(e.code, code, e.message);
  if (message !== undefined) assert.equal(e.message, message);
  return e;
}

function assertReady(m: Msg | undefined): void {
  assert.ok(m !== undefined);
  assert.equal(m.type, 'Z');
  assert.deepEqual([...m.body], [TX.Idle]);
}

const POOLS_TEXT = [
  ['app', '3', '12', 'f'],
  ['analytics', '0', '9007199254740993', 't'],
  ['reports', '-7', null, 't'],
];

// ---------------------------------------------------------------- simple query

describe('admin console: simple query', () => {
  it('answers one statement with RowDescription, DataRows, CommandComplete and ReadyForQuery in one write', () => {
    const h = harness();
    h.send(Q('SHOW POOLS;'));
    assert.equal(h.writes.length, 1);
    const m = h.take();
    assert.equal(types(m), 'TDDDCZ');
    assert.deepEqual(rowDescription(m[0] as Msg), [
      { name: 'database', oid: 25, len: -1, format: 0 },
      { name: 'cl_active', oid: 23, len: 4, format: 0 },
      { name: 'maxwait_us', oid: 20, len: 8, format: 0 },
      { name: 'paused', oid: 16, len: 1, format: 0 },
    ]);
    assert.deepEqual(m.slice(1, 4).map(textRow), POOLS_TEXT);
    assert.equal(tagOf(m[4] as Msg), 'SHOW');
    assertReady(m[5]);
    assert.deepEqual(h.executed, ['SHOW POOLS']);
  });

  it('runs several statements in order, notices before their result, a command without rows as CommandComplete only', () => {
    const h = harness();
    h.send(Q('show pools; PAUSE app; /* c */ RELOAD'));
    assert.equal(h.writes.length, 1);
    const m = h.take();
    assert.equal(types(m), 'TDDDCNCCZ');
    const notice = decodeNotice((m[5] as Msg).frame);
    assert.equal(notice.severity, 'NOTICE');
    assert.equal(notice.severityV, 'NOTICE');
    assert.equal(notice.code, '00000');
    assert.equal(notice.message, 'pausing app');
    assert.equal(tagOf(m[6] as Msg), 'PAUSE');
    assert.equal(tagOf(m[7] as Msg), 'RELOAD');
    assert.deepEqual(h.executed, ['show pools', 'PAUSE app', 'RELOAD']);
  });

  it('answers an empty query with EmptyQueryResponse', () => {
    for (const sql of ['', '   ', ';', ' ; ;', '-- only a comment', '/* c */ ;']) {
      const h = harness();
      h.send(Q(sql));
      assert.equal(types(h.take()), 'IZ', JSON.stringify(sql));
      assert.deepEqual(h.executed, []);
    }
  });

  it('stops at an AdminError: ErrorResponse with its fields, later statements not run', () => {
    const h = harness();
    h.send(Q('SHOW POOLS; SHOW DENIED; PAUSE'));
    const m = h.take();
    assert.equal(types(m), 'TDDDCEZ');
    const e = assertError(m[5], '42501', 'this console is read-only');
    assert.equal(e.detail, 'ask an admin');
    assert.deepEqual(h.executed, ['SHOW POOLS', 'SHOW DENIED']);
    assertReady(m[6]);
    // The console is usable after the error.
    h.send(Q('PAUSE'));
    assert.equal(types(h.take()), 'NCZ');
  });

  it('answers any other exception with a generic XX000 and hands it to onInternalError', () => {
    const h = harness();
    h.send(Q('SHOW BOOM; PAUSE'));
    const m = h.take();
    assert.equal(types(m), 'EZ');
    assertError(m[0], 'XX000', 'internal error in the admin console');
    assert.ok(!Buffer.concat(h.writes).includes('secret'));
    assert.equal(h.internals.length, 1);
    assert.equal((h.internals[0] as Error).message, 'secret internals');
    assert.deepEqual(h.fatals, []);
  });

  it('reports a syntax error from the executor', () => {
    const h = harness();
    h.send(Q('SELEKT 1'));
    const m = h.take();
    assert.equal(types(m), 'EZ');
    assertError(m[0], '42601');
  });

  it('drops the unnamed statement and all portals, as exec_simple_query does', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), P('named', 'SHOW POOLS'), B('p', 'named'), Q('PAUSE'));
    assert.equal(types(h.take()), '112NCZ');
    h.send(E('p'), S());
    let m = h.take();
    assert.equal(types(m), 'EZ');
    assertError(m[0], '34000', 'portal "p" does not exist');
    h.send(B('', ''), S());
    m = h.take();
    assertError(m[0], '26000', 'unnamed prepared statement does not exist');
    h.send(B('', 'named'), E(''), S());
    assert.equal(types(h.take()), '2DDDCZ');
  });
});

// ---------------------------------------------------------------- extended query

describe('admin console: extended query', () => {
  it('Parse, Bind, Describe P, Execute, Sync: one write at Sync', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), B('', ''), D('P', ''), E('', 0));
    assert.equal(h.writes.length, 0, 'nothing written before Sync');
    h.send(S());
    assert.equal(h.writes.length, 1);
    const m = h.take();
    assert.equal(types(m), '12TDDDCZ');
    assert.deepEqual(
      rowDescription(m[2] as Msg).map((f) => f.format),
      [0, 0, 0, 0],
    );
    assert.deepEqual(m.slice(3, 6).map(textRow), POOLS_TEXT);
    assert.equal(tagOf(m[6] as Msg), 'SHOW');
    // describe runs at Parse (PostgreSQL analyzes there); execute once, at Execute.
    assert.deepEqual(h.described, ['SHOW POOLS']);
    assert.deepEqual(h.executed, ['SHOW POOLS']);
  });

  it('Describe S: ParameterDescription (unspecified types as text) then RowDescription in text', () => {
    const h = harness();
    h.send(P('s1', 'SHOW POOLS', [0, 23]), D('S', 's1'), S());
    const m = h.take();
    assert.equal(types(m), '1tTZ');
    assert.deepEqual(paramOids(m[1] as Msg), [25, 23]);
    assert.deepEqual(
      rowDescription(m[2] as Msg).map((f) => [f.name, f.format]),
      [
        ['database', 0],
        ['cl_active', 0],
        ['maxwait_us', 0],
        ['paused', 0],
      ],
    );
    // Declared parameters must be supplied (values are accepted and ignored).
    h.send(B('', 's1', { params: ['x', null] }), E(''), S());
    assert.equal(types(h.take()), '2DDDCZ');
    h.send(B('', 's1'), S());
    const e = h.take();
    assertError(e[0], '08P01', 'bind message supplies 0 parameters, but prepared statement "s1" requires 2');
  });

  it('a command without rows: NoData on Describe, notices and CommandComplete on Execute, no second run', () => {
    const h = harness();
    h.send(P('p', 'PAUSE db1'), D('S', 'p'), B('', 'p'), D('P', ''), E(''), S());
    let m = h.take();
    assert.equal(types(m), '1tn2nNCZ');
    assert.deepEqual(paramOids(m[1] as Msg), []);
    assert.equal(errorOf(m[5] as Msg).message, 'pausing db1');
    assert.equal(tagOf(m[6] as Msg), 'PAUSE');
    h.send(B('', 'p'), E(''), E(''), S());
    m = h.take();
    assert.equal(types(m), '2NCEZ');
    assertError(m[3], '55000', 'portal "" cannot be run');
    assert.equal(h.executed.length, 2);
  });

  it('sends binary results: int4, int8, bool, text, NULL', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), B('', '', { resultFormats: [1] }), D('P', ''), E(''), S());
    const m = h.take();
    assert.equal(types(m), '12TDDDCZ');
    assert.deepEqual(
      rowDescription(m[2] as Msg).map((f) => f.format),
      [1, 1, 1, 1],
    );
    const rows = m.slice(3, 6).map(dataRow);
    const [r0, r1, r2] = rows as [(Buffer | null)[], (Buffer | null)[], (Buffer | null)[]];
    assert.equal(r0[0]?.toString(), 'app');
    assert.equal(r0[1]?.readInt32BE(0), 3);
    assert.equal(r0[1]?.length, 4);
    assert.equal(r0[2]?.readBigInt64BE(0), 12n);
    assert.equal(r0[2]?.length, 8);
    assert.deepEqual([...(r0[3] as Buffer)], [0]);
    assert.equal(r1[2]?.readBigInt64BE(0), 9007199254740993n);
    assert.deepEqual([...(r1[3] as Buffer)], [1]);
    assert.equal(r2[1]?.readInt32BE(0), -7);
    assert.equal(r2[2], null);
    assert.deepEqual([...(r2[3] as Buffer)], [1]);
  });

  it('applies per-column format codes', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), B('', '', { resultFormats: [0, 1, 0, 1] }), D('P', ''), E('', 1), S());
    const m = h.take();
    assert.equal(types(m), '12TDsZ');
    assert.deepEqual(
      rowDescription(m[2] as Msg).map((f) => f.format),
      [0, 1, 0, 1],
    );
    const row = dataRow(m[3] as Msg);
    assert.equal(row[0]?.toString(), 'app');
    assert.equal(row[1]?.readInt32BE(0), 3);
    assert.equal(row[2]?.toString(), '12');
    assert.deepEqual([...(row[3] as Buffer)], [0]);
  });

  it('rejects bad result format codes and counts', () => {
    let h = harness();
    h.send(P('', 'SHOW POOLS'), B('', '', { resultFormats: [1, 0] }), S());
    let m = h.take();
    assert.equal(types(m), '1EZ');
    assertError(m[1], '08P01', 'bind message has 2 result formats but query has 4 columns');
    h = harness();
    h.send(P('', 'SHOW POOLS'), B('', '', { resultFormats: [2] }), S());
    m = h.take();
    assertError(m[1], '22023', 'unsupported format code: 2');
    // A command without rows ignores the result formats, as PortalSetResultFormat does.
    h = harness();
    h.send(P('', 'PAUSE'), B('', '', { resultFormats: [1, 1, 1] }), E(''), S());
    assert.equal(types(h.take()), '12NCZ');
  });

  it('a cell without a binary form in its type is an ERROR, then messages are skipped until Sync', () => {
    const h = harness();
    h.send(P('', 'SHOW WEIRD'), B('', '', { resultFormats: [1] }), E(''), E(''), Q('SHOW POOLS'), S());
    const m = h.take();
    assert.equal(types(m), '12EZ');
    assertError(m[2], '22P03');
    // In text it is fine.
    h.send(P('', 'SHOW WEIRD'), B('', ''), E(''), S());
    const t = h.take();
    assert.equal(types(t), '12DCZ');
    assert.deepEqual(textRow(t[2] as Msg), ['abc']);
  });

  it('maxRows: PortalSuspended, the next Execute continues, the command runs once', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), B('cur', ''), E('cur', 2), E('cur', 2), E('cur', 2), S());
    const m = h.take();
    assert.equal(types(m), '12DDsDCCZ');
    assert.deepEqual(
      [m[2], m[3], m[5]].map((x) => textRow(x as Msg)),
      POOLS_TEXT,
    );
    assert.equal(tagOf(m[6] as Msg), 'SHOW');
    assert.equal(tagOf(m[7] as Msg), 'SHOW');
    assert.deepEqual(h.executed, ['SHOW POOLS']);
    // Sync ended the portal.
    h.send(E('cur'), S());
    const e = h.take();
    assert.equal(types(e), 'EZ');
    assertError(e[0], '34000', 'portal "cur" does not exist');
  });

  it('maxRows equal to the rows left suspends, and the next Execute completes with none (as PostgreSQL)', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), B('', ''), E('', 3), E('', 3), S());
    assert.equal(types(h.take()), '12DDDsCZ');
    h.send(B('', ''), E('', -1), S());
    assert.equal(types(h.take()), '2DDDCZ', 'a negative maxRows means all rows');
    h.send(P('', 'SHOW EMPTY'), B('', ''), E('', 5), S());
    assert.equal(types(h.take()), '12CZ');
  });

  it('a SELECT n tag counts the rows of each Execute', () => {
    const h = harness();
    h.send(P('', 'SHOW COUNTED'), B('', ''), E('', 2), E('', 2), S());
    let m = h.take();
    assert.equal(types(m), '12DDsDCZ');
    assert.equal(tagOf(m[6] as Msg), 'SELECT 1');
    h.send(B('', ''), E(''), S());
    m = h.take();
    assert.equal(tagOf(m[4] as Msg), 'SELECT 3');
  });

  it('after an error, discards everything until Sync; the error is flushed at once', () => {
    const h = harness();
    h.send(P('', 'SHOW DENIED'));
    assert.equal(h.writes.length, 1, 'the error is written without waiting for Sync');
    let m = h.take();
    assert.equal(types(m), 'E');
    assertError(m[0], '42501');
    h.send(B('', ''), D('P', ''), E(''), Q('SHOW POOLS'), H(), frame('F', i32(1)), P('x', 'SHOW POOLS'), C('S', 'x'));
    assert.equal(h.writes.length, 1);
    assert.deepEqual(h.executed, []);
    h.send(S());
    m = h.take();
    assert.equal(types(m), 'Z');
    assert.deepEqual(h.fatals, []);
    // Normal again, and the skipped Parse did not store anything.
    h.send(B('', 'x'), S());
    assertError(h.take()[0], '26000', 'prepared statement "x" does not exist');
    h.send(P('', 'SHOW POOLS'), B('', ''), E(''), S());
    assert.equal(types(h.take()), '12DDDCZ');
  });

  it('an internal error in describe is a generic XX000', () => {
    const h = harness();
    h.send(P('', 'SHOW BOOM'), S());
    const m = h.take();
    assert.equal(types(m), 'EZ');
    assertError(m[0], 'XX000', 'internal error in the admin console');
    assert.equal(h.internals.length, 1);
  });

  it('named statements: duplicate is 42P05, they survive Sync, the unnamed one is replaced', () => {
    const h = harness();
    h.send(P('s1', 'SHOW POOLS'), S(), P('s1', 'PAUSE'), S());
    let m = h.take();
    assert.equal(types(m), '1ZEZ');
    assertError(m[2], '42P05', 'prepared statement "s1" already exists');
    h.send(P('', 'PAUSE'), P('', 'SHOW POOLS'), B('', 's1'), E(''), B('', ''), E('', 1), S());
    m = h.take();
    assert.equal(types(m), '112DDDC2DsZ');
  });

  it('a failed unnamed Parse leaves no unnamed statement', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), S(), P('', 'NONSENSE'), S(), B('', ''), S());
    const m = h.take();
    assert.equal(types(m), '1ZEZEZ');
    assertError(m[2], '42601');
    assertError(m[4], '26000', 'unnamed prepared statement does not exist');
  });

  it('unknown statement and portal', () => {
    const h = harness();
    h.send(B('', 'nope'), S(), D('S', 'nope'), S(), D('S', ''), S(), D('P', 'pp'), S(), E('pp'), S(), E(''), S());
    const m = h.take();
    assert.equal(types(m), 'EZEZEZEZEZEZ');
    assertError(m[0], '26000', 'prepared statement "nope" does not exist');
    assertError(m[2], '26000', 'prepared statement "nope" does not exist');
    assertError(m[4], '26000', 'unnamed prepared statement does not exist');
    assertError(m[6], '34000', 'portal "pp" does not exist');
    assertError(m[8], '34000', 'portal "pp" does not exist');
    assertError(m[10], '34000', 'portal "" does not exist');
  });

  it('a named portal must be new; the unnamed one is replaced', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), B('c', ''), B('c', ''), S());
    let m = h.take();
    assert.equal(types(m), '12EZ');
    assertError(m[2], '42P03', 'cursor "c" already exists');
    h.send(P('', 'SHOW POOLS'), B('', ''), E('', 1), B('', ''), E('', 1), S());
    m = h.take();
    assert.equal(types(m), '12Ds2DsZ');
    assert.deepEqual(textRow(m[5] as Msg), textRow(m[2] as Msg), 'the new portal starts over');
  });

  it('Bind checks the parameter format count', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS', [25]), B('', '', { paramFormats: [0, 0], params: ['a'] }), S());
    const m = h.take();
    assertError(m[1], '08P01', 'bind message has 2 parameter formats but 1 parameters');
    h.send(P('', 'SHOW POOLS', [25]), B('', '', { paramFormats: [7], params: ['a'] }), S());
    assertError(h.take()[1], '22023', 'unsupported format code: 7');
    h.send(P('', 'SHOW POOLS', [25]), B('', '', { paramFormats: [7], params: [null] }), E('', 1), S());
    assert.equal(types(h.take()), '12DsZ', 'a NULL parameter has no format to check');
  });

  it('Close: CloseComplete, also for names that do not exist', () => {
    const h = harness();
    h.send(P('s1', 'SHOW POOLS'), B('c1', 's1'), C('P', 'c1'), C('S', 's1'), C('S', 'never'), C('P', 'never'), S());
    let m = h.take();
    assert.equal(types(m), '123333Z');
    h.send(B('', 's1'), S());
    m = h.take();
    assertError(m[0], '26000', 'prepared statement "s1" does not exist');
    // The name is free again.
    h.send(P('s1', 'PAUSE'), S());
    assert.equal(types(h.take()), '1Z');
    h.send(frame('C', Buffer.from('Z'), cstr('x')), S());
    m = h.take();
    assertError(m[0], '08P01', 'invalid CLOSE message subtype 90');
    h.send(frame('D', Buffer.from('Z'), cstr('x')), S());
    assertError(h.take()[0], '08P01', 'invalid DESCRIBE message subtype 90');
  });

  it('Flush writes what is pending', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), D('S', ''), H());
    assert.equal(h.writes.length, 1);
    assert.equal(types(h.take()), '1tT');
    h.send(H());
    assert.equal(h.writes.length, 1, 'nothing pending, nothing written');
    h.send(B('', ''), E(''), S());
    assert.equal(h.writes.length, 2);
    assert.equal(types(h.take()), '2DDDCZ');
  });

  it('Parse of several statements is 42601; an empty Parse describes as NoData and executes as EmptyQueryResponse', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS; PAUSE'), S());
    let m = h.take();
    assertError(m[0], '42601', 'cannot insert multiple commands into a prepared statement');
    h.send(P('e', ' ; -- nothing'), D('S', 'e'), B('', 'e'), D('P', ''), E(''), E(''), S());
    m = h.take();
    assert.equal(types(m), '1tn2nIIZ');
    assert.deepEqual(h.executed, []);
  });

  it('a long series without Sync is written out as it grows, not held whole', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'), B('', ''));
    for (let i = 0; i < 2000; i++) h.send(D('P', ''));
    assert.ok(h.writes.length >= 1, 'written before Sync');
    h.send(S());
    const m = h.take();
    assert.equal(m.length, 2 + 2000 + 1);
    assert.equal(byType(m, 'T').length, 2000);
  });

  it('caps prepared statements and portals', () => {
    const h = harness();
    for (let i = 0; i < 1000; i++) h.send(P(`s${i}`, 'PAUSE'));
    h.send(P('one-more', 'PAUSE'), S());
    let m = h.take();
    assert.equal(m.length, 1000 + 2);
    assertError(m[1000], '54000');
    for (let i = 0; i < 1000; i++) h.send(B(`p${i}`, 's1'));
    h.send(B('one-more', 's1'), S());
    m = h.take();
    assert.equal(m.length, 1000 + 2);
    assertError(m[1000], '54000');
    // Replacing a statement that is there is still possible, and Sync freed the portals.
    h.send(C('S', 's0'), P('s0', 'PAUSE'), B('x', 's0'), S());
    assert.equal(types(h.take()), '312Z');
  });
});

// ---------------------------------------------------------------- other messages

describe('admin console: other messages', () => {
  it('FunctionCall: ERROR 0A000 and ReadyForQuery in one write', () => {
    const h = harness();
    h.send(frame('F', i32(1234), i16(0), i16(0), i16(0)));
    assert.equal(h.writes.length, 1);
    const m = h.take();
    assert.equal(types(m), 'EZ');
    assertError(m[0], '0A000', 'function calls are not supported by the admin console');
    h.send(Q('PAUSE'));
    assert.equal(types(h.take()), 'NCZ');
  });

  it('CopyData, CopyDone and CopyFail outside COPY are dropped', () => {
    const h = harness();
    h.send(frame('d', Buffer.from('1\t2\n')), frame('c'), frame('f', cstr('nope')), frame('d'));
    assert.equal(h.writes.length, 0);
    assert.deepEqual(h.fatals, []);
    h.send(Q('PAUSE'));
    assert.equal(types(h.take()), 'NCZ');
  });

  it('Terminate: onTerminate, then the console is closed', () => {
    const h = harness();
    h.send(P('s', 'PAUSE'), X());
    assert.equal(h.terminated, 1);
    assert.equal(h.writes.length, 0, 'pending output of a terminated session is dropped');
    h.send(Q('PAUSE'), S());
    assert.equal(h.writes.length, 0);
  });

  it('Terminate is honoured while skipping to Sync', () => {
    const h = harness();
    h.send(B('', 'nope'), X());
    assert.equal(h.terminated, 1);
  });

  it('close(): later frames do nothing', () => {
    const h = harness();
    h.send(P('', 'SHOW POOLS'));
    h.con.close();
    h.send(B('', ''), E(''), S(), Q('SHOW POOLS'));
    assert.equal(h.writes.length, 0);
    assert.deepEqual(h.executed, []);
    h.con.close();
  });

  it('a PasswordMessage or an unknown type after login is FATAL 08P01, even while skipping', () => {
    for (const lead of [[], [B('', 'nope')]]) {
      for (const f of [frame('p', cstr('secret')), frame('Z'), frame('?', cstr('x'))]) {
        const h = harness();
        h.send(...lead, f);
        assert.deepEqual(h.fatals, [['08P01', `invalid frontend message type ${f[0]}`]]);
        h.send(Q('PAUSE'));
        assert.equal(types(h.take()), lead.length > 0 ? 'E' : '');
      }
    }
  });
});

// ---------------------------------------------------------------- malformed frames

describe('admin console: malformed frames', () => {
  /** Feeds one hand-made (buf, start, end) and expects exactly one FATAL 08P01, nothing else written, no execution. */
  function expectFatal(label: string, type: number, buf: Buffer, start: number, end: number): void {
    const h = harness();
    assert.doesNotThrow(() => h.con.onFrame(type, buf, start, end), label);
    assert.equal(h.fatals.length, 1, label);
    assert.equal(h.fatals[0]?.[0], '08P01', label);
    assert.deepEqual(h.executed, [], label);
    assert.equal(h.writes.length, 0, label);
    // Closed after the violation.
    h.send(Q('PAUSE'));
    assert.equal(h.writes.length, 0, label);
  }

  /** The frame sits in a buffer whose next bytes would complete it, so a read past `end` would be caught. */
  function inside(label: string, f: Buffer, after: number[] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]): void {
    const buf = Buffer.concat([Buffer.from([0x51]), f, Buffer.from(after)]);
    expectFatal(label, f[0] as number, buf, 1, 1 + f.length);
  }

  it('a string not terminated inside its frame', () => {
    inside('Query', frame('Q', Buffer.from('PAUSE')));
    inside('Parse name', frame('P', Buffer.from('s1')));
    inside('Parse text', frame('P', cstr('s1'), Buffer.from('PAUSE')));
    inside('Bind portal', frame('B', Buffer.from('p')));
    inside('Describe', frame('D', Buffer.from('Sname')));
    inside('Execute', frame('E', Buffer.from('portal')));
    inside('Close', frame('C', Buffer.from('P')));
  });

  it('counts and lengths that run past the end, negative lengths, missing fields', () => {
    inside('Parse param count', frame('P', cstr(''), cstr('PAUSE'), i16(3), i32(25)));
    inside('Parse count missing', frame('P', cstr(''), cstr('PAUSE')));
    inside('Bind param format count', frame('B', cstr(''), cstr(''), i16(2), i16(0)));
    inside('Bind value length', frame('B', cstr(''), cstr(''), i16(0), i16(1), i32(100), Buffer.from('ab')));
    inside('Bind negative length', frame('B', cstr(''), cstr(''), i16(0), i16(1), i32(-2), i16(0)));
    inside('Bind huge count', frame('B', cstr(''), cstr(''), i16(0), i16(-1)));
    inside('Bind result formats', frame('B', cstr(''), cstr(''), i16(0), i16(0), i16(1)));
    inside('Describe empty', frame('D'));
    inside('Execute maxRows', frame('E', cstr(''), i16(0)));
  });

  it('trailing bytes', () => {
    inside('Query', frame('Q', cstr('PAUSE'), Buffer.from('x')));
    inside('Sync', frame('S', Buffer.from([0])));
    inside('Flush', frame('H', Buffer.from([1, 2])));
    inside('Execute', frame('E', cstr(''), i32(0), Buffer.from([0])));
    inside('Parse', frame('P', cstr(''), cstr('PAUSE'), i16(0), Buffer.from([0])));
    inside('Close', frame('C', Buffer.from('S'), cstr('a'), Buffer.from([0])));
  });

  it('a frame whose header disagrees with its bounds', () => {
    const q = Q('PAUSE');
    const buf = Buffer.concat([q, Buffer.alloc(8)]);
    expectFatal('end past the length', FE.Query, buf, 0, q.length + 1);
    expectFatal('end before the length', FE.Query, buf, 0, q.length - 1);
    expectFatal('type byte differs', FE.Parse, buf, 0, q.length);
    expectFatal('end outside the buffer', FE.Query, q, 0, q.length + 10);
    expectFatal('negative start', FE.Query, q, -1, q.length);
    expectFatal('shorter than a header', FE.Sync, Buffer.from([0x53, 0, 0]), 0, 3);
    expectFatal('NaN bounds', FE.Query, q, Number.NaN, q.length);
    const neg = Buffer.from([0x51, 0xff, 0xff, 0xff, 0xff]);
    expectFatal('negative length', FE.Query, neg, 0, 5);
  });

  it('a throwing write hook ends in onFatal, not in an exception', () => {
    const h = harness({
      write: () => {
        throw new Error('socket gone');
      },
    });
    assert.doesNotThrow(() => h.send(Q('PAUSE')));
    assert.deepEqual(h.fatals, [['XX000', 'internal error in the admin console']]);
    assert.equal(h.internals.length, 1);
  });

  it('property: random frames never throw, and every write is whole server messages', () => {
    const NAMES = ['', 'a', 'b'];
    const SQLS = ['SHOW POOLS', 'PAUSE', '', 'SHOW DENIED', 'SHOW BOOM', 'SHOW WEIRD', 'x; y', 'SHOW COUNTED'];
    const name = fc.constantFrom(...NAMES);
    const fmt = fc.constantFrom(0, 1, 2);
    const valid = fc.oneof(
      fc.constantFrom(...SQLS).map((s) => Q(s)),
      fc.tuple(name, fc.constantFrom(...SQLS), fc.array(fc.constantFrom(0, 23), { maxLength: 2 })).map(([n, s, o]) => P(n, s, o)),
      fc
        .tuple(
          name,
          name,
          fc.array(fmt, { maxLength: 2 }),
          fc.array(fc.option(fc.string()), { maxLength: 2 }),
          fc.array(fmt, { maxLength: 5 }),
        )
        .map(([p, s, pf, params, rf]) => B(p, s, { paramFormats: pf, params, resultFormats: rf })),
      fc.tuple(fc.constantFrom<'S' | 'P'>('S', 'P'), name).map(([k, n]) => D(k, n)),
      fc.tuple(name, fc.integer({ min: -2, max: 4 })).map(([n, r]) => E(n, r)),
      fc.tuple(fc.constantFrom<'S' | 'P'>('S', 'P'), name).map(([k, n]) => C(k, n)),
      fc.constant(S()),
      fc.constant(H()),
      fc.constant(frame('F')),
      fc.constant(frame('d', Buffer.from('x'))),
    );
    const typeByte = fc.oneof(fc.constantFrom(...Object.values(FE).filter((t) => t !== FE.Terminate)), fc.integer({ min: 0, max: 255 }));
    const noise = fc
      .tuple(typeByte, fc.uint8Array({ maxLength: 40 }))
      .map(([t, body]) => Buffer.concat([Buffer.from([t]), i32(body.length + 4), body]));
    const raw = fc.tuple(
      fc.integer({ min: 0, max: 255 }),
      fc.uint8Array({ maxLength: 40 }),
      fc.integer({ min: -2, max: 45 }),
      fc.integer({ min: -2, max: 45 }),
    );
    fc.assert(
      fc.property(
        fc.array(fc.oneof({ weight: 6, arbitrary: valid }, { weight: 3, arbitrary: noise }, { weight: 1, arbitrary: raw }), {
          maxLength: 25,
        }),
        (items) => {
          const h = harness();
          for (const item of items) {
            if (Buffer.isBuffer(item)) h.send(item);
            else {
              const [t, bytes, s, e] = item;
              h.con.onFrame(t, Buffer.from(bytes), s, e);
            }
          }
          for (const w of h.writes) split(w);
          assert.ok(h.fatals.every(([code]) => code === '08P01'));
          assert.ok(!Buffer.concat(h.writes).includes('secret'));
        },
      ),
      { numRuns: 1500 },
    );
  });
});

// ---------------------------------------------------------------- real drivers

/** A loopback server doing the startup phase itself and framing every later message into an AdminConsole. */
function serveConsole(socket: net.Socket, seen: string[]): void {
  let buf = Buffer.alloc(0);
  let started = false;
  const con = new AdminConsole({
    execute: run,
    describe: describeSql,
    write: (b) => {
      socket.write(b);
    },
    onTerminate: () => {
      socket.end();
    },
    onFatal: (code, message) => {
      socket.end(encodeError({ severity: 'FATAL', code, message }));
    },
  });
  socket.on('error', () => {});
  socket.on('close', () => con.close());
  socket.on('data', (chunk: Buffer) => {
    buf = Buffer.concat([buf, chunk]);
    for (;;) {
      if (!started) {
        if (buf.length < 8) return;
        const len = buf.readInt32BE(0);
        if (buf.length < len) return;
        const code = buf.readInt32BE(4);
        buf = buf.subarray(len);
        if (code === REQUEST_CODE.SSL || code === REQUEST_CODE.GSSENC) {
          socket.write('N');
          continue;
        }
        started = true;
        socket.write(
          Buffer.concat([
            AUTH_OK,
            encodeParameterStatus('server_version', '17.0 (postern)'),
            encodeParameterStatus('server_encoding', 'UTF8'),
            encodeParameterStatus('client_encoding', 'UTF8'),
            encodeParameterStatus('standard_conforming_strings', 'on'),
            encodeParameterStatus('DateStyle', 'ISO, MDY'),
            encodeParameterStatus('integer_datetimes', 'on'),
            encodeBackendKeyData(4242, Buffer.from([1, 2, 3, 4])),
            encodeReadyForQuery(TX.Idle),
          ]),
        );
        continue;
      }
      if (buf.length < 5) return;
      const len = buf.readInt32BE(1);
      if (buf.length < 1 + len) return;
      seen.push(String.fromCharCode(buf[0] as number));
      con.onFrame(buf[0] as number, buf, 0, 1 + len);
      buf = buf.subarray(1 + len);
    }
  });
}

describe('admin console: real drivers over a socket', () => {
  let server: net.Server;
  let port = 0;
  const sockets = new Set<net.Socket>();
  /** Type bytes of the frames the drivers sent, to see which protocol they used. */
  const seen: string[] = [];

  before(async () => {
    server = net.createServer((s) => {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
      serveConsole(s, seen);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    port = (server.address() as net.AddressInfo).port;
  });

  after(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });

  const EXPECTED_PG = [
    { database: 'app', cl_active: 3, maxwait_us: '12', paused: false },
    { database: 'analytics', cl_active: 0, maxwait_us: '9007199254740993', paused: true },
    { database: 'reports', cl_active: -7, maxwait_us: null, paused: true },
  ];

  it('node-postgres: simple, extended, named, binary, row-limited, errors', async () => {
    const client = new pg.Client({ host: '127.0.0.1', port, user: 'admin', database: 'postern' });
    await client.connect();
    try {
      seen.length = 0;
      const simple = await client.query('SHOW POOLS');
      assert.deepEqual(seen, ['Q']);
      assert.equal(simple.command, 'SHOW');
      assert.deepEqual(simple.rows, EXPECTED_PG);
      assert.deepEqual(
        simple.fields.map((f) => [f.name, f.dataTypeID]),
        [
          ['database', 25],
          ['cl_active', 23],
          ['maxwait_us', 20],
          ['paused', 16],
        ],
      );

      seen.length = 0;
      const extended = await client.query({ text: 'SHOW POOLS', values: [], queryMode: 'extended' } as pg.QueryConfig);
      assert.deepEqual(extended.rows, EXPECTED_PG);
      assert.deepEqual(seen, ['P', 'B', 'D', 'E', 'S']);

      for (let i = 0; i < 2; i++) {
        const named = await client.query({ name: 'n1', text: 'SHOW POOLS' });
        assert.deepEqual(named.rows, EXPECTED_PG);
      }

      // node-postgres decodes binary fields only with a client-wide binary: true.
      const bin = new pg.Client({ host: '127.0.0.1', port, user: 'admin', database: 'postern', binary: true } as pg.ClientConfig);
      await bin.connect();
      try {
        const binary = await bin.query({ text: 'SHOW POOLS', values: [], queryMode: 'extended' } as pg.QueryConfig);
        // pg-protocol decodes every field as UTF-8, so only binary values whose
        // bytes are valid UTF-8 survive the trip: not -7 (ff ff ff f9).
        assert.deepEqual(binary.rows.slice(0, 2), EXPECTED_PG.slice(0, 2));
        assert.deepEqual(binary.rows[2].database, 'reports');
        assert.equal(binary.rows[2].maxwait_us, null);
        assert.equal(binary.rows[2].paused, true);
        assert.deepEqual(
          binary.fields.map((f) => f.format),
          ['binary', 'binary', 'binary', 'binary'],
        );
      } finally {
        await bin.end();
      }

      seen.length = 0;
      const limited = await client.query({ text: 'SHOW POOLS', rows: 1 } as pg.QueryConfig);
      assert.deepEqual(limited.rows, EXPECTED_PG);
      assert.equal(seen.filter((t) => t === 'E').length, 4, 'one Execute per row, and one more to complete');

      const paused = await client.query('PAUSE app');
      assert.equal(paused.command, 'PAUSE');
      assert.deepEqual(paused.rows, []);

      await assert.rejects(client.query('SHOW DENIED'), (e: Error & { code?: string; detail?: string }) => {
        assert.equal(e.code, '42501');
        assert.equal(e.detail, 'ask an admin');
        return true;
      });
      await assert.rejects(client.query({ text: 'SHOW NOPE', values: [], queryMode: 'extended' } as pg.QueryConfig), {
        code: '42601',
      });
      await assert.rejects(client.query({ name: 'n1', text: 'SHOW NOPE' }), /Prepared statements must be unique/);
      // The connection recovered from every error.
      assert.deepEqual((await client.query({ name: 'n1', text: 'SHOW POOLS' })).rows, EXPECTED_PG);
    } finally {
      await client.end();
    }
  });

  it('postgres.js (prepared statements by default)', async () => {
    const sql = postgres({
      host: '127.0.0.1',
      port,
      user: 'admin',
      database: 'postern',
      fetch_types: false,
      max: 1,
      idle_timeout: 1,
      connect_timeout: 5,
      onnotice: () => {},
    });
    try {
      seen.length = 0;
      for (let i = 0; i < 2; i++) {
        // A tagged query is a named prepared statement: Parse once, then Bind/Execute.
        const rows = await sql`SHOW POOLS`;
        assert.equal(rows.command, 'SHOW');
        assert.deepEqual(
          rows.map((r) => ({ ...r })),
          [
            { database: 'app', cl_active: 3, maxwait_us: '12', paused: false },
            { database: 'analytics', cl_active: 0, maxwait_us: '9007199254740993', paused: true },
            { database: 'reports', cl_active: -7, maxwait_us: null, paused: true },
          ],
        );
      }
      assert.equal(seen.filter((t) => t === 'P').length, 1, 'prepared once, executed twice');
      assert.equal(seen.filter((t) => t === 'E').length, 2);
      // unsafe() without arguments is a simple Query.
      seen.length = 0;
      const unsafe = await sql.unsafe('SHOW POOLS');
      assert.equal(unsafe.length, 3);
      assert.deepEqual(seen, ['Q']);
      const paused = await sql`PAUSE app`;
      assert.equal(paused.command, 'PAUSE');
      const simple = (await sql.unsafe('SHOW POOLS; SHOW POOLS').simple()) as unknown as unknown[][];
      assert.deepEqual(
        simple.map((r) => r.length),
        [3, 3],
      );
      await assert.rejects(sql`SHOW DENIED`, (e: Error & { code?: string }) => e.code === '42501');
      assert.equal((await sql`SHOW POOLS`).length, 3);
    } finally {
      await sql.end({ timeout: 1 });
    }
  });
});
