// Statement statistics: the per-session tracker fed hand-built protocol
// frames (simple and extended query, pipelines, errors, transactions), the
// normalizer on the real PostgreSQL parser and its fallback, and the
// query-shape table with its eviction. The clock is mocked so durations are
// exact; frames are fed inside buffers with junk around them, so a read
// outside [start, end) changes results and shows up.

import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, it, mock } from 'node:test';
import fc from 'fast-check';
import { Ledger, type Req, requestOf, WHO } from '../../src/backend/expect.ts';
import { BE, FE } from '../../src/protocol/codes.ts';
import { ProtocolViolation } from '../../src/protocol/violation.ts';
import { lexerNormalize, loadNormalizer, MAX_PARSE_CHARS, Normalizer } from '../../src/stats/normalize.ts';
import { type Execution, QueryShapes } from '../../src/stats/shapes.ts';
import { MAX_NAMES, QueryTracker, type TrackerSink } from '../../src/stats/tracker.ts';

// ---------------------------------------------------------------- frames

function cstr(s: string): Buffer {
  return Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]);
}

function frame(type: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  const out = Buffer.alloc(5 + body.length);
  out[0] = type;
  out.writeInt32BE(4 + body.length, 1);
  body.copy(out, 5);
  return out;
}

function int16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeInt16BE(n);
  return b;
}

function int32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeInt32BE(n);
  return b;
}

// Client frames.
const Q = (text: string) => frame(FE.Query, cstr(text));
const P = (name: string, text: string) => frame(FE.Parse, cstr(name), cstr(text), int16(0));
const B = (portal: string, statement: string) => frame(FE.Bind, cstr(portal), cstr(statement), int16(0), int16(0), int16(0));
const E = (portal = '', maxRows = 0) => frame(FE.Execute, cstr(portal), int32(maxRows));
const S = () => frame(FE.Sync);
const D = (what: 'S' | 'P', name: string) => frame(FE.Describe, Buffer.from(what), cstr(name));
const C = (what: 'S' | 'P', name: string) => frame(FE.Close, Buffer.from(what), cstr(name));
const F = () => frame(FE.FunctionCall, int32(1234), int16(0), int16(0), int16(0));

// Server frames.
const CC = (tag: string) => frame(BE.CommandComplete, cstr(tag));
const PC = () => frame(BE.ParseComplete);
const BC = () => frame(BE.BindComplete);
const ND = () => frame(BE.NoData);
const CLC = () => frame(BE.CloseComplete);
const EQ = () => frame(BE.EmptyQueryResponse);
const PS = () => frame(BE.PortalSuspended);
const Z = (status: 'I' | 'T' | 'E') => frame(BE.ReadyForQuery, Buffer.from(status));
function ERR(code: string | null, severity = 'ERROR'): Buffer {
  const fields = [Buffer.from('S'), cstr(severity), Buffer.from('V'), cstr(severity)];
  if (code !== null) fields.push(Buffer.from('C'), cstr(code));
  fields.push(Buffer.from('M'), cstr('something failed'), Buffer.alloc(1));
  return frame(BE.ErrorResponse, ...fields);
}

// ---------------------------------------------------------------- harness

interface Stmt {
  text: string;
  durationUs: number;
  rows: number;
  sqlstate: string | null;
}

class Recorder implements TrackerSink {
  statements: Stmt[] = [];
  cycles: [number, number][] = [];
  onStatement(text: string, durationUs: number, rows: number, sqlstate: string | null): void {
    this.statements.push({ text, durationUs: exact(durationUs), rows, sqlstate });
  }
  onCycle(queryUs: number, xactUs: number): void {
    this.cycles.push([exact(queryUs), exact(xactUs)]);
  }
}

/** Durations come from differences of millisecond floats: rounded to the nanosecond before comparing. */
function exact(us: number): number {
  return Math.round(us * 1000) / 1000;
}

// The mocked clock, in milliseconds (what performance.now() answers).
let clock = 0;
function advance(us: number): void {
  clock += us / 1000;
}

/** Junk before and after the frame, so that a read outside [start, end) shows. */
function embed(f: Buffer, fill: number): { buf: Buffer; start: number; end: number } {
  const pad = 7;
  const buf = Buffer.alloc(f.length + 2 * pad, fill);
  f.copy(buf, pad);
  return { buf, start: pad, end: pad + f.length };
}

/**
 * The server connection's ledger each tracker watches, as in a session: the
 * ledger places every answer, the tracker hears how each statement ended.
 */
const ledgers = new WeakMap<QueryTracker, Ledger>();

/** Client frames: seen by the tracker (the statement hook), then queued in the ledger as a link would. */
function client(t: QueryTracker, ...frames: Buffer[]): void {
  const ledger = ledgers.get(t);
  for (const f of frames) {
    const { buf, start, end } = embed(f, 0x41);
    t.onClientFrame(f[0]!, buf, start, end);
    if (ledger === undefined) continue;
    const kind = requestOf(f[0]!);
    if (ledger.ignores(f[0]!)) ledger.ignored(f[0]!);
    else if (kind >= 0) ledger.push(kind as Req, WHO.Client, null);
  }
}

/** Server frames: the tracker sees the client's (its cycles), then the ledger places them. */
function server(t: QueryTracker, ...frames: Buffer[]): void {
  const ledger = ledgers.get(t);
  for (const f of frames) {
    const { buf, start, end } = embed(f, 0x39);
    t.onServerFrame(f[0]!, buf, start, end);
    try {
      ledger?.onServerFrame(f[0]!, buf, start, end, true);
    } catch (e) {
      // A frame that answers nothing (a FATAL with nothing owed is fine; anything else the scenario means as junk).
      if (!(e instanceof ProtocolViolation)) throw e;
    }
  }
}

function tracker(wantsText: boolean | (() => boolean) = true): { t: QueryTracker; r: Recorder } {
  const r = new Recorder();
  const t = new QueryTracker(r, wantsText);
  const ledger = new Ledger();
  ledger.watcher = t;
  ledgers.set(t, ledger);
  return { t, r };
}

// ---------------------------------------------------------------- tracker

describe('QueryTracker', () => {
  beforeEach(() => {
    clock = 1000;
    mock.restoreAll();
    mock.method(performance, 'now', () => clock);
  });
  after(() => mock.restoreAll());

  it('simple query with several statements: one execution, rows summed, finished at ReadyForQuery', () => {
    const { t, r } = tracker();
    client(t, Q("insert into t values (1), (2), (3); select * from t; set x = 'y'"));
    advance(100);
    server(t, CC('INSERT 0 3'));
    advance(50);
    server(t, CC('SELECT 5'), CC('SET'));
    advance(10);
    server(t, Z('I'));
    assert.deepEqual(r.statements, [
      { text: "insert into t values (1), (2), (3); select * from t; set x = 'y'", durationUs: 160, rows: 8, sqlstate: null },
    ]);
    assert.deepEqual(r.cycles, [[160, 160]]);
    assert.equal(t.statements, 1);
  });

  it('simple query error: the first ErrorResponse gives the SQLSTATE', () => {
    const { t, r } = tracker();
    client(t, Q('select 1; select 1/0; select 2'));
    server(t, CC('SELECT 1'), ERR('22012'), ERR('XX001'));
    advance(20);
    server(t, Z('I'));
    assert.deepEqual(r.statements, [{ text: 'select 1; select 1/0; select 2', durationUs: 20, rows: 1, sqlstate: '22012' }]);
  });

  it('empty query: EmptyQueryResponse, 0 rows', () => {
    const { t, r } = tracker();
    client(t, Q(''));
    server(t, EQ(), Z('I'));
    assert.deepEqual(r.statements, [{ text: '', durationUs: 0, rows: 0, sqlstate: null }]);
  });

  it('extended pipeline: Parse/Bind/Execute x3 then Sync', () => {
    const { t, r } = tracker();
    client(t, P('', 'select $1'), B('', ''), D('P', ''), E());
    advance(5);
    client(t, P('', 'insert into t values ($1)'), B('', ''), E());
    advance(5);
    client(t, P('', 'update t set a = $1'), B('', ''), E(), S());
    advance(10);
    server(t, PC(), BC(), ND(), CC('SELECT 1'));
    advance(10);
    server(t, PC(), BC(), CC('INSERT 0 1'));
    advance(10);
    server(t, PC(), BC(), CC('UPDATE 7'), Z('I'));
    assert.deepEqual(r.statements, [
      { text: 'select $1', durationUs: 20, rows: 1, sqlstate: null },
      { text: 'insert into t values ($1)', durationUs: 25, rows: 1, sqlstate: null },
      { text: 'update t set a = $1', durationUs: 30, rows: 7, sqlstate: null },
    ]);
    assert.deepEqual(r.cycles, [[40, 40]]);
  });

  it('error in the middle of a pipeline: its SQLSTATE is reported, later executions dropped', () => {
    const { t, r } = tracker();
    client(t, P('', 'select 1'), B('', ''), E());
    client(t, P('', 'insert into u values (1)'), B('', ''), E());
    client(t, P('', 'select 3'), B('', ''), E(), S());
    server(t, PC(), BC(), CC('SELECT 1'), PC(), BC(), ERR('23505'), Z('I'));
    assert.deepEqual(
      r.statements.map((s) => [s.text, s.sqlstate]),
      [
        ['select 1', null],
        ['insert into u values (1)', '23505'],
      ],
    );
    // The queue is in step again: the next pipeline is reported normally.
    client(t, P('', 'select 4'), B('', ''), E(), S());
    server(t, PC(), BC(), CC('SELECT 1'), Z('I'));
    assert.equal(r.statements.length, 3);
    assert.equal(r.statements[2]!.text, 'select 4');
    assert.equal(r.cycles.length, 2);
    assert.equal(t.statements, 3);
  });

  it('a failed Parse with no Execute blames nothing; the next Sync segment is unaffected', () => {
    const { t, r } = tracker();
    client(t, P('bad', 'selec 1'), S(), P('', 'select 2'), B('', ''), E(), S());
    server(t, ERR('42601'), Z('I'), PC(), BC(), CC('SELECT 1'), Z('I'));
    assert.deepEqual(r.statements, [{ text: 'select 2', durationUs: 0, rows: 1, sqlstate: null }]);
    assert.equal(r.cycles.length, 2);
  });

  it('several Sync segments and a Query in one pipeline stay in step', () => {
    const { t, r } = tracker();
    client(t, P('', 'select 1'), B('', ''), E(), E(), S(), Q('select 2'), P('', 'select 3'), B('', ''), E(), S());
    // First segment: the first Execute fails, the second is skipped.
    server(t, PC(), BC(), ERR('57014'), Z('I'));
    server(t, CC('SELECT 1'), Z('I'));
    server(t, PC(), BC(), CC('SELECT 1'), Z('I'));
    assert.deepEqual(
      r.statements.map((s) => [s.text, s.rows, s.sqlstate]),
      [
        ['select 1', 0, '57014'],
        ['select 2', 1, null],
        ['select 3', 1, null],
      ],
    );
    assert.equal(r.cycles.length, 3);
  });

  it('named statements are reused across Binds, named portals too', () => {
    const { t, r } = tracker();
    client(t, P('s1', 'select a from t where id = $1'), P('s2', 'delete from t where id = $1'), S());
    server(t, PC(), PC(), Z('I'));
    client(t, B('', 's1'), E(), B('', 's2'), E(), B('p', 's1'), B('', 's2'), E('p'), E(''), S());
    server(t, BC(), CC('SELECT 1'), BC(), CC('DELETE 1'), BC(), BC(), CC('SELECT 2'), CC('DELETE 0'), Z('I'));
    assert.deepEqual(
      r.statements.map((s) => [s.text, s.rows]),
      [
        ['select a from t where id = $1', 1],
        ['delete from t where id = $1', 1],
        ['select a from t where id = $1', 2],
        ['delete from t where id = $1', 0],
      ],
    );
  });

  it('the unnamed statement is replaced by the next unnamed Parse', () => {
    const { t, r } = tracker();
    client(t, P('', 'select 1'), B('', ''), E(), P('', 'select 2'), B('', ''), E(), B('', ''), E(), S());
    server(t, PC(), BC(), CC('SELECT 1'), PC(), BC(), CC('SELECT 1'), BC(), CC('SELECT 1'), Z('I'));
    assert.deepEqual(
      r.statements.map((s) => s.text),
      ['select 1', 'select 2', 'select 2'],
    );
  });

  it('Close forgets statements and portals; unknown names give an empty text', () => {
    const { t, r } = tracker();
    // The portal bound before the Close keeps its text, as the server's portal does.
    client(t, P('s1', 'select 1'), B('p1', 's1'), C('S', 's1'), E('p1'), C('P', 'p1'), S());
    server(t, PC(), BC(), CLC(), CC('SELECT 1'), CLC(), Z('I'));
    // A portal it does not know (closed, or never bound): the server refuses the Execute.
    client(t, E('p1'), S());
    server(t, ERR('34000'), Z('I'));
    // A statement it does not know: the Bind fails, and with it the Execute that follows.
    client(t, B('', 's1'), E(''), S());
    server(t, ERR('26000'), Z('I'));
    assert.deepEqual(
      r.statements.map((s) => [s.text, s.sqlstate]),
      [
        ['select 1', null],
        ['', '34000'],
        ['', '26000'],
      ],
    );
  });

  it('remembers at most MAX_NAMES statement names, dropping the oldest', () => {
    const { t, r } = tracker();
    for (let i = 0; i <= MAX_NAMES; i++) client(t, P(`s${i}`, `select ${i}`));
    client(t, B('', 's0'), E(), B('', `s${MAX_NAMES}`), E(), B('', 's1'), E(), S());
    server(t, ...Array.from({ length: MAX_NAMES + 1 }, () => PC()));
    server(t, BC(), CC('SELECT 1'), BC(), CC('SELECT 1'), BC(), CC('SELECT 1'), Z('I'));
    assert.deepEqual(
      r.statements.map((s) => s.text),
      ['', `select ${MAX_NAMES}`, 'select 1'],
    );
  });

  it('PortalSuspended finishes an Execute; the next Execute of the portal is a new execution', () => {
    const { t, r } = tracker();
    client(t, P('', 'select * from big'), B('c', ''), E('c', 100), S());
    server(t, PC(), BC(), PS(), Z('T'));
    client(t, E('c', 100), S());
    server(t, CC('SELECT 42'), Z('T'));
    assert.deepEqual(
      r.statements.map((s) => [s.text, s.rows]),
      [
        ['select * from big', 0],
        ['select * from big', 42],
      ],
    );
  });

  it('rows come from the last integer of the CommandComplete tag', () => {
    const cases: [string, number][] = [
      ['SELECT 5', 5],
      ['INSERT 0 3', 3],
      ['UPDATE 2', 2],
      ['DELETE 0', 0],
      ['COPY 10', 10],
      ['FETCH 1', 1],
      ['MOVE 9', 9],
      ['MERGE 4', 4],
      ['SELECT 123456789012', 123456789012],
      ['BEGIN', 0],
      ['SET', 0],
      ['CREATE TABLE', 0],
      ['', 0],
      ['42', 0],
      ['SELECT x5', 0],
    ];
    for (const [tag, rows] of cases) {
      const { t, r } = tracker();
      client(t, P('', 'x'), B('', ''), E(), S());
      server(t, PC(), BC(), CC(tag), Z('I'));
      assert.equal(r.statements[0]!.rows, rows, tag);
    }
  });

  it('transaction cycles: xact time only at the idle ReadyForQuery, a query cycle at each one', () => {
    const { t, r } = tracker();
    client(t, Q('begin'));
    advance(10);
    server(t, CC('BEGIN'), Z('T'));
    advance(1000); // client think time: in the transaction, in no query
    client(t, Q('update t set a = 1'));
    advance(20);
    server(t, CC('UPDATE 1'), Z('T'));
    advance(500);
    client(t, Q('commit'));
    advance(30);
    server(t, CC('COMMIT'), Z('I'));
    assert.deepEqual(r.cycles, [
      [10, -1],
      [20, -1],
      [30, 1560],
    ]);
    // A new transaction starts at the next client frame.
    advance(5000);
    client(t, P('', 'select 1'), B('', ''));
    advance(3);
    client(t, E(), S());
    advance(4);
    server(t, PC(), BC(), CC('SELECT 1'), Z('I'));
    assert.deepEqual(r.cycles[3], [7, 7]);
    assert.deepEqual(r.statements[3], { text: 'select 1', durationUs: 4, rows: 1, sqlstate: null });
  });

  it('a failed transaction reports -1 until the idle ReadyForQuery', () => {
    const { t, r } = tracker();
    client(t, Q('begin'));
    server(t, Z('T'));
    advance(10);
    client(t, Q('select 1/0'));
    server(t, ERR('22012'), Z('E'));
    advance(10);
    client(t, Q('rollback'));
    server(t, CC('ROLLBACK'), Z('I'));
    assert.deepEqual(
      r.cycles.map((c) => c[1]),
      [-1, -1, 20],
    );
  });

  it('a ReadyForQuery with no client frame since the last still counts, with queryUs 0', () => {
    const { t, r } = tracker();
    advance(100);
    server(t, Z('I'));
    client(t, S());
    advance(7);
    server(t, Z('I'), Z('I'));
    assert.deepEqual(r.cycles, [
      [0, 0],
      [7, 7],
      [0, 0],
    ]);
    assert.equal(r.statements.length, 0);
  });

  it('FunctionCall earns one ReadyForQuery and is no statement', () => {
    const { t, r } = tracker();
    client(t, F());
    advance(2);
    server(t, ERR('42883'), Z('I'));
    assert.equal(r.statements.length, 0);
    assert.deepEqual(r.cycles, [[2, 2]]);
  });

  it('ErrorResponse without a code gives XX000; a FATAL outside any execution is ignored', () => {
    const { t, r } = tracker();
    client(t, Q('select 1'));
    server(t, ERR(null), Z('I'));
    assert.equal(r.statements[0]!.sqlstate, 'XX000');
    server(t, ERR('57P01', 'FATAL'));
    assert.equal(r.statements.length, 1);
  });

  it('wantsText false: texts are empty, counts, rows and durations are still reported', () => {
    const { t, r } = tracker(false);
    client(t, Q('select secret'));
    advance(5);
    server(t, CC('SELECT 3'), Z('I'));
    client(t, P('s', 'select 1'), B('', 's'), E(), S());
    server(t, PC(), BC(), CC('SELECT 1'), Z('I'));
    assert.deepEqual(r.statements, [
      { text: '', durationUs: 5, rows: 3, sqlstate: null },
      { text: '', durationUs: 0, rows: 1, sqlstate: null },
    ]);
    assert.equal(t.statements, 2);
  });

  it('wantsText as a function is read per message', () => {
    let wants = false;
    const { t, r } = tracker(() => wants);
    client(t, Q('select 1'));
    server(t, Z('I'));
    wants = true;
    client(t, Q('select 2'));
    server(t, Z('I'));
    assert.deepEqual(
      r.statements.map((s) => s.text),
      ['', 'select 2'],
    );
  });

  it('texts are decoded as UTF-8', () => {
    const { t, r } = tracker();
    client(t, Q("select 'héllo ☃'"), P('ñ', 'select ☃'), B('', 'ñ'), E(), S());
    server(t, Z('I'), PC(), BC(), CC('SELECT 1'), Z('I'));
    assert.deepEqual(
      r.statements.map((s) => s.text),
      ["select 'héllo ☃'", 'select ☃'],
    );
  });

  it('reset forgets pending executions and the cycle, keeps statement names', () => {
    const { t, r } = tracker();
    client(t, P('s', 'select 1'), B('', 's'), E());
    advance(50);
    t.reset();
    // The session's server is gone mid-work; whatever that ledger still reports is no statement any more.
    const old = ledgers.get(t) as Ledger;
    old.abandon();
    server(t, Z('I'));
    assert.equal(r.statements.length, 0);
    assert.deepEqual(r.cycles, [[0, 0]]);
    // The next server connection, with its own ledger.
    const next = new Ledger();
    next.watcher = t;
    ledgers.set(t, next);
    client(t, B('', 's'), E(), S());
    server(t, BC(), CC('SELECT 1'), Z('I'));
    assert.equal(r.statements[0]!.text, 'select 1');
  });

  it('deep pipelines grow the queue and stay in order', () => {
    const { t, r } = tracker();
    for (let i = 0; i < 1000; i++) client(t, P('', `select ${i}`), B('', ''), E());
    client(t, S());
    for (let i = 0; i < 1000; i++) server(t, PC(), BC(), CC(`SELECT ${i}`));
    server(t, Z('I'));
    assert.equal(r.statements.length, 1000);
    for (let i = 0; i < 1000; i++) assert.deepEqual([r.statements[i]!.text, r.statements[i]!.rows], [`select ${i}`, i]);
  });

  it('truncated frames are ignored', () => {
    const { t, r } = tracker();
    const q = Q('select 1');
    // No terminating NUL inside the frame: the query is not recorded.
    t.onClientFrame(FE.Query, Buffer.concat([q.subarray(0, q.length - 1), Buffer.from('x')]), 0, q.length - 1);
    t.onClientFrame(FE.Query, q, 0, 3);
    t.onClientFrame(FE.Query, q, 0, q.length + 10);
    t.onServerFrame(BE.ReadyForQuery, Z('I'), 0, 5);
    assert.equal(r.cycles.length, 0);
    server(t, Z('I'));
    assert.equal(r.statements.length, 0);
    assert.equal(r.cycles.length, 1);
  });

  it('fuzz: random frames never throw and never read outside [start, end)', () => {
    const clientTypes = [FE.Query, FE.Parse, FE.Bind, FE.Execute, FE.Sync, FE.FunctionCall, FE.Close, FE.Describe];
    const serverTypes = [BE.CommandComplete, BE.EmptyQueryResponse, BE.PortalSuspended, BE.ReadyForQuery, BE.ErrorResponse];
    // Bodies biased toward NULs and the letters the parsers look for.
    const byte = fc.oneof(fc.constantFrom(0, 0x20, 0x43, 0x50, 0x53, 0x49, 0x54, 0x31, 0x39), fc.integer({ min: 0, max: 255 }));
    const message = fc.record({
      fromClient: fc.boolean(),
      typeIndex: fc.nat(),
      body: fc.array(byte, { maxLength: 24 }),
    });
    fc.assert(
      fc.property(fc.array(message, { maxLength: 40 }), (messages) => {
        const runs: Recorder[] = [];
        for (const fill of [0x00, 0xff, 0x39]) {
          clock = 0;
          const r = new Recorder();
          const t = new QueryTracker(r, true);
          for (const m of messages) {
            const types = m.fromClient ? clientTypes : serverTypes;
            const type = types[m.typeIndex % types.length]!;
            const f = frame(type, Buffer.from(m.body));
            const { buf, start, end } = embed(f, fill);
            if (m.fromClient) t.onClientFrame(type, buf, start, end);
            else t.onServerFrame(type, buf, start, end);
            clock += 1;
          }
          runs.push(r);
        }
        // The junk around each frame differs between runs; the results must not.
        assert.deepEqual(runs[1], runs[0]);
        assert.deepEqual(runs[2], runs[0]);
      }),
      { numRuns: 3000 },
    );
  });

  it('fuzz: arbitrary buffers and bounds never throw', () => {
    fc.assert(
      fc.property(
        fc.uint8Array({ maxLength: 64 }),
        fc.integer({ min: -4, max: 70 }),
        fc.integer({ min: -4, max: 70 }),
        fc.nat(255),
        (bytes, start, end, type) => {
          const { t } = tracker();
          const buf = Buffer.from(bytes);
          t.onClientFrame(type, buf, start, end);
          t.onServerFrame(type, buf, start, end);
          t.onServerFrame(BE.ReadyForQuery, buf, start, end);
        },
      ),
      { numRuns: 3000 },
    );
  });
});

// ---------------------------------------------------------------- normalizer

describe('Normalizer', () => {
  let n: Normalizer;
  before(async () => {
    n = await loadNormalizer();
  });

  it('uses the real parser: constants become $n, same fingerprint across literals and case', () => {
    const a = n.describe('select * from t where a = 1');
    const b = n.describe('SELECT * FROM t WHERE a = 2');
    const c = n.describe('select * from u where a = 1');
    assert.equal(a.parsed, true);
    assert.equal(a.normalized, 'select * from t where a = $1');
    assert.match(a.fingerprint, /^[0-9a-f]{16}$/);
    assert.equal(a.fingerprint, b.fingerprint);
    assert.notEqual(a.fingerprint, c.fingerprint);
  });

  it('keeps existing parameters and numbers new ones after them', () => {
    const s = n.describe("select $1, 'x' from t where a = 5 and b = $2");
    assert.equal(s.parsed, true);
    assert.equal(s.normalized, 'select $1, $3 from t where a = $4 and b = $2');
  });

  it('collapses whitespace and drops comments', () => {
    const s = n.describe('select   a,\n\tb  -- trailing\nfrom /* why */ t\nwhere  a = 42');
    assert.equal(s.normalized, 'select a, b from t where a = $1');
    assert.equal(s.parsed, true);
  });

  it('handles several statements in one text', () => {
    const s = n.describe("insert into t values (1, 'a'); select count(*) from t;");
    assert.equal(s.parsed, true);
    assert.equal(s.normalized, 'insert into t values ($1, $2); select count(*) from t');
  });

  it('falls back to the lexer on a syntax error: parsed=false, stable fingerprint, no literal', () => {
    const s = n.describe("selec * frm t where a = 'hunter2' and b = 31337");
    assert.equal(s.parsed, false);
    assert.equal(s.normalized, 'selec * frm t where a = $1 and b = $2');
    assert.match(s.fingerprint, /^[0-9a-f]{16}$/);
    const fresh = new Normalizer();
    assert.equal(fresh.describe("selec * frm t where a = 'other' and b = 7").fingerprint, s.fingerprint);
    assert.notEqual(n.describe('selec * frm u').fingerprint, s.fingerprint);
  });

  it('an unterminated quote never leaks its contents', () => {
    const s = n.describe("select 'hunter2");
    assert.equal(s.parsed, false);
    assert.ok(!s.normalized.includes('hunter2'), s.normalized);
  });

  it('answers from the cache for texts differing only in literals', () => {
    const m = new Normalizer();
    const first = m.describe('SELECT abalance FROM pgbench_accounts WHERE aid = 48213;');
    assert.deepEqual([m.hits, m.misses], [0, 1]);
    const second = m.describe('SELECT abalance FROM pgbench_accounts WHERE aid = 7;');
    const third = m.describe("SELECT abalance  FROM pgbench_accounts WHERE aid = '7'; -- hi");
    assert.deepEqual([m.hits, m.misses], [2, 1]);
    assert.equal(second, first);
    assert.equal(third, first);
    // A $n parameter is not a constant: another key, same shape.
    const param = m.describe('SELECT abalance FROM pgbench_accounts WHERE aid = $1;');
    assert.equal(m.misses, 2);
    assert.equal(param.fingerprint, first.fingerprint);
  });

  it('an invalid text never shares a cache entry with a valid one', () => {
    const m = new Normalizer();
    assert.equal(m.describe('select 1').parsed, true);
    assert.equal(m.describe("select 'x").parsed, false);
  });

  it('the cache is bounded and the oldest shapes go first; the same text is answered without lexing', () => {
    const m = new Normalizer({ cacheSize: 3 });
    for (const tbl of ['a', 'b', 'c']) m.describe(`select 1 from ${tbl}`);
    m.describe('select 1 from d'); // evicts a, the oldest
    assert.equal(m.cached, 3);
    const misses = m.misses;
    m.describe('select 9 from b');
    assert.equal(m.misses, misses);
    m.describe('select 9 from a');
    assert.equal(m.misses, misses + 1);
    const text = 'select 5 from d';
    const first = m.describe(text);
    assert.equal(m.describe(text), first);
  });

  it('cacheSize 0 disables the cache', () => {
    const m = new Normalizer({ cacheSize: 0 });
    m.describe('select 1');
    m.describe('select 1');
    assert.deepEqual([m.cached, m.hits, m.misses], [0, 0, 2]);
  });

  it('literal values never appear in the normalized text', () => {
    const texts = [
      "select * from users where password = 'hunter2' and pin = 4242",
      "alter user bob password 'hunter2'",
      "create user x with password 'hunter2' valid until '4242-01-01'",
      "comment on table t is 'hunter2'",
      "create table t (a varchar(4242) default 'hunter2')",
      "copy t from '/hunter2/4242'",
      "prepare p as select 'hunter2', 4242",
      "execute p('hunter2', 4242)",
      "alter system set x = 'hunter2'",
      "create server s foreign data wrapper f options (host 'hunter2', port '4242')",
      "select E'hunter2\\'', $$hunter2$$, $tag$hunter2$tag$, x'4242', b'101', U&'hunter2', 4242.5e3",
      "select 1 -- 'hunter2' 4242\n",
      "select /* 'hunter2' 4242 */ 1",
      "do $$ begin perform 'hunter2'; end $$",
      "select interval '4242 hunter2'",
      "set password_encryption = 'hunter2'; select 4242",
      "insert into t values (4242, 'hunter2') on conflict do nothing",
      "selec 'hunter2', 4242 frm t",
      "select 'hunter2'\n'4242'",
    ];
    for (const text of texts) {
      for (const m of [n, new Normalizer()]) {
        const s = m.describe(text);
        assert.ok(!s.normalized.includes('hunter2') && !s.normalized.includes('4242'), `${text} -> ${s.normalized}`);
      }
    }
  });

  it('property: random string and number literals never appear', () => {
    const secret = fc.stringMatching(/^[A-Za-z0-9 _!@#%^&*'"\\-]{1,12}$/).map((s) => `Zq${s}`);
    const templates = [
      (s: string, k: number) => `select * from t where a = '${s.replaceAll("'", "''")}' and b = ${k}`,
      (s: string, k: number) => `insert into t (a, b) values (E'${s.replaceAll('\\', '\\\\').replaceAll("'", "\\'")}', ${k})`,
      (s: string, k: number) => `select $q$${s}$q$, ${k}.5`,
      (s: string, k: number) => `update t set a = '${s.replaceAll("'", "''")}' where id in (${k}, ${k + 1})`,
      (s: string, k: number) => `selectt '${s.replaceAll("'", "''")}' ${k}`,
    ];
    fc.assert(
      fc.property(secret, fc.integer({ min: 987_650_000, max: 987_659_999 }), fc.nat(templates.length - 1), (s, k, i) => {
        const text = templates[i]!(s, k);
        const out = n.describe(text).normalized;
        assert.ok(!out.includes('Zq') && !out.includes(String(k).slice(0, 6)), `${text} -> ${out}`);
      }),
      { numRuns: 500 },
    );
  });

  it('texts over MAX_PARSE_CHARS are not parsed nor cached', () => {
    const m = new Normalizer();
    const big = `select ${Array.from({ length: MAX_PARSE_CHARS / 4 }, (_, i) => i).join(', ')}`;
    const s = m.describe(big);
    assert.equal(s.parsed, false);
    assert.equal(m.cached, 0);
    assert.ok(s.normalized.startsWith('select $1, $2, $3'));
  });

  it('what the parser cannot take falls back: deep nesting, empty text, NUL', () => {
    const deep = `select ${'('.repeat(20000)}1${')'.repeat(20000)}`;
    const d = n.describe(deep);
    assert.equal(d.parsed, false);
    assert.ok(d.normalized.includes('($1)'));
    const empty = n.describe('');
    assert.deepEqual([empty.normalized, empty.parsed], ['', false]);
    assert.match(empty.fingerprint, /^[0-9a-f]{16}$/);
    assert.equal(n.describe('  -- nothing\n').normalized, '');
    assert.equal(n.describe('select 1\u0000 from t').parsed, false);
    // The parser still works after those.
    assert.equal(n.describe('select 1 from t').parsed, true);
  });

  it('describe never throws', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 80 }), (text) => {
        const s = n.describe(text);
        assert.match(s.fingerprint, /^[0-9a-f]{16}$/);
      }),
      { numRuns: 1000 },
    );
  });

  it('lexerNormalize numbers constants after existing parameters', () => {
    assert.equal(lexerNormalize("select $2, 'a', 3 from t"), 'select $2, $3, $4 from t');
  });
});

// ---------------------------------------------------------------- shapes

/**
 * A table name per number, in letters: libpg-query's fingerprint ignores a
 * trailing number in relation names (partitions such as events_2024 count as
 * one shape), so t10 and t11 would be the same shape.
 */
function tbl(i: number): string {
  return `t_${[...String(i)].map((d) => 'abcdefghij'[Number(d)]).join('')}`;
}

describe('QueryShapes', () => {
  let n: Normalizer;
  before(async () => {
    n = await loadNormalizer();
  });

  const exec = (text: string, over: Partial<Execution> = {}): Execution => ({
    text,
    database: 'db',
    user: 'alice',
    application: 'app',
    durationUs: 100,
    rows: 1,
    sqlstate: null,
    at: 1_000,
    ...over,
  });

  it('aggregates per (fingerprint, database, user, application)', () => {
    const q = new QueryShapes(n, 100);
    q.record(exec('select * from t where id = 1', { rows: 1, durationUs: 100, at: 10 }));
    q.record(exec('SELECT * FROM t WHERE id = 2', { rows: 3, durationUs: 300, at: 30 }));
    const e = q.record(exec('select * from t where id = 3', { rows: 0, durationUs: 200, at: 20 }));
    assert.equal(q.size, 1);
    assert.deepEqual([e.calls, e.rows, e.totalUs, e.meanUs, e.errors], [3, 4, 600, 200, 0]);
    assert.deepEqual([e.firstSeen, e.lastSeen], [10, 30]);
    assert.equal(e.normalized, 'select * from t where id = $1');
    assert.equal(e.hist.count, 3);
    q.record(exec('select * from t where id = 1', { user: 'bob' }));
    q.record(exec('select * from t where id = 1', { database: 'other' }));
    q.record(exec('select * from t where id = 1', { application: 'psql' }));
    q.record(exec('select * from u where id = 1'));
    assert.equal(q.size, 5);
    assert.deepEqual(
      q
        .entries()
        .map((x) => [x.database, x.user, x.application, x.calls])
        .sort(),
      [
        ['db', 'alice', 'app', 1],
        ['db', 'alice', 'app', 3],
        ['db', 'alice', 'psql', 1],
        ['db', 'bob', 'app', 1],
        ['other', 'alice', 'app', 1],
      ],
    );
  });

  it('counts errors', () => {
    const q = new QueryShapes(n, 100);
    q.record(exec('insert into t values (1)'));
    const e = q.record(exec('insert into t values (2)', { sqlstate: '23505' }));
    assert.deepEqual([e.calls, e.errors], [2, 1]);
  });

  it('keeps unparsable texts apart, without literals', () => {
    const q = new QueryShapes(n, 100);
    const e = q.record(exec("selec 'hunter2'"));
    assert.equal(e.parsed, false);
    assert.equal(e.normalized, 'selec $1');
  });

  it('quantiles are sane', () => {
    const q = new QueryShapes(n, 100);
    let e = q.record(exec('select 1', { durationUs: 1000 }));
    for (let i = 2; i <= 1000; i++) e = q.record(exec('select 1', { durationUs: i * 1000 }));
    const p50 = e.quantile(0.5);
    const p95 = e.quantile(0.95);
    const p99 = e.quantile(0.99);
    assert.ok(Math.abs(p50 - 500_000) / 500_000 < 0.2, `p50 ${p50}`);
    assert.ok(Math.abs(p95 - 950_000) / 950_000 < 0.2, `p95 ${p95}`);
    assert.ok(Math.abs(p99 - 990_000) / 990_000 < 0.2, `p99 ${p99}`);
    assert.ok(p50 <= p95 && p95 <= p99 && p99 <= e.quantile(1));
    assert.equal(e.quantile(1), 1_000_000);
    assert.equal(e.quantile(0), 1000);
    assert.equal(e.meanUs, 500_500);
  });

  it('top() orders by total, calls or mean', () => {
    const q = new QueryShapes(n, 100);
    for (let i = 0; i < 5; i++) q.record(exec('select 1 from many', { durationUs: 10 }));
    q.record(exec('select 1 from slow', { durationUs: 1000 }));
    for (let i = 0; i < 3; i++) q.record(exec('select 1 from mid', { durationUs: 100 }));
    const tables = (xs: { normalized: string }[]) => xs.map((x) => x.normalized.split(' ').pop());
    assert.deepEqual(tables(q.top(3)), ['slow', 'mid', 'many']);
    assert.deepEqual(tables(q.top(2, 'calls')), ['many', 'mid']);
    assert.deepEqual(tables(q.top(10, 'mean')), ['slow', 'mid', 'many']);
    assert.deepEqual(q.top(0), []);
  });

  it('eviction keeps size <= max and keeps the most-called entries', () => {
    const q = new QueryShapes(n, 10);
    for (let i = 1; i <= 10; i++) for (let k = 0; k < i + 1; k++) q.record(exec(`select 1 from ${tbl(i)}`, { at: k }));
    assert.equal(q.size, 10);
    for (let i = 0; i < 50; i++) {
      q.record(exec(`select 1 from new${tbl(i)}`, { at: 100 + i }));
      assert.ok(q.size <= 10, `size ${q.size}`);
    }
    const kept = new Set(q.entries().map((e) => e.normalized));
    for (let i = 2; i <= 10; i++) assert.ok(kept.has(`select $1 from ${tbl(i)}`), `${tbl(i)} kept`);
  });

  it('eviction matches a full sort (fewest calls, then oldest lastSeen)', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ calls: fc.integer({ min: 1, max: 5 }), at: fc.nat(20) }), { minLength: 2, maxLength: 60 }),
        (specs) => {
          const q = new QueryShapes(n, Number.POSITIVE_INFINITY);
          specs.forEach((s, i) => {
            for (let k = 0; k < s.calls; k++) q.record(exec(`select 1 from ${tbl(i)}`, { at: s.at }));
          });
          const max = Math.max(1, Math.floor(specs.length / 2));
          const expected = q
            .entries()
            .sort((a, b) => b.calls - a.calls || b.lastSeen - a.lastSeen)
            .slice(0, Math.floor(max * 0.9));
          q.max = max;
          const kept = q.entries();
          assert.equal(kept.length, Math.floor(max * 0.9));
          // Every kept entry ranks at least as high as the lowest expected one.
          const worst = expected[expected.length - 1];
          for (const e of kept) {
            if (worst === undefined) break;
            assert.ok(e.calls > worst.calls || (e.calls === worst.calls && e.lastSeen >= worst.lastSeen));
          }
        },
      ),
      { numRuns: 300 },
    );
  });

  it('a change of max takes effect at once and on later records', () => {
    const q = new QueryShapes(n, 100);
    for (let i = 0; i < 50; i++) for (let k = 0; k <= i % 5; k++) q.record(exec(`select 1 from ${tbl(i)}`));
    assert.equal(q.size, 50);
    q.max = 20;
    assert.ok(q.size <= 20);
    assert.ok(q.entries().every((e) => e.calls >= 4));
    q.max = 30;
    for (let i = 0; i < 100; i++) q.record(exec(`select 1 from u${tbl(i)}`));
    assert.ok(q.size <= 30);
    q.max = 0;
    assert.equal(q.size, 0);
    q.record(exec('select 1'));
    assert.equal(q.size, 0);
    q.clear();
    assert.equal(q.size, 0);
  });
});
