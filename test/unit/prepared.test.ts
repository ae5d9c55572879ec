// Named prepared statements in pooled sessions (src/backend/prepared.ts).
//
// The bar: a client moved between server connections A and B (between its
// transactions) must see exactly the responses one real server would have
// sent it: same message types, in the same order, same SQLSTATEs.
//
// Three layers, all driven by one list of scenarios:
//   1. A small model of a PostgreSQL backend (FakePg: prepared statements,
//      portals, skip-until-Sync after errors, transaction blocks, COPY in)
//      runs every scenario through the rewriter under many delivery schedules
//      (responses delivered at once, after every frame, or at random points),
//      against a direct run on a single model server.
//   2. A real PostgreSQL checks the model: the direct run on the model and on
//      a real connection must agree, scenario by scenario.
//   3. The same scenarios through the rewriter over two real connections,
//      against a third real connection driven directly.
// Plus byte-level checks of the rewritten frames and of the cache's bookkeeping.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import net from 'node:net';
import { after, before, describe, it } from 'node:test';
import {
  CLOSE_COMPLETE,
  PARSE_COMPLETE,
  PREPARED_CLIENT_INSPECT,
  PREPARED_SERVER_INSPECT,
  PreparedRewriter,
  type PreparedSink,
  ServerStatements,
  StatementCache,
} from '../../src/backend/prepared.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { decodeNotice, encodeError, encodeReadyForQuery } from '../../src/protocol/backend.ts';
import { BE, FE, PROTOCOL_3_0 } from '../../src/protocol/codes.ts';
import { encodeBind, encodeExecute, encodeQuery, SYNC, TERMINATE } from '../../src/protocol/frontend.ts';
import { Reader } from '../../src/protocol/reader.ts';
import { encodeStartup } from '../../src/protocol/startup.ts';
import { ProtocolViolation } from '../../src/protocol/violation.ts';
import { Writer } from '../../src/protocol/writer.ts';

// ---------------------------------------------------------------- client frames

const INT4 = 23;

function parse(name: string, sql: string, types: readonly number[] = []): Buffer {
  const w = new Writer().cstring(name).cstring(sql).int16(types.length);
  for (const t of types) w.int32(t);
  return w.message(FE.Parse);
}
function bind(statement: string, params: readonly (string | null)[] = [], portal = ''): Buffer {
  return encodeBind(portal, statement, params);
}
function paramDesc(oids: number[]): Buffer {
  const w = new Writer().int16(oids.length);
  for (const o of oids) w.int32(o);
  return w.message(BE.ParameterDescription);
}

function rowDesc(fields: Array<[string, number, number]>, table = 16384): Buffer {
  const w = new Writer().int16(fields.length);
  fields.forEach(([name, oid, typmod], i) => {
    w.cstring(name)
      .int32(table)
      .int16(i + 1)
      .int32(oid)
      .int16(-1)
      .int32(typmod)
      .int16(0);
  });
  return w.message(BE.RowDescription);
}

function describeMsg(kind: 'S' | 'P', name: string): Buffer {
  return new Writer().byte(kind.charCodeAt(0)).cstring(name).message(FE.Describe);
}
function closeMsg(kind: 'S' | 'P', name: string): Buffer {
  return new Writer().byte(kind.charCodeAt(0)).cstring(name).message(FE.Close);
}
function execute(portal = '', maxRows = 0): Buffer {
  return encodeExecute(portal, maxRows);
}
const FLUSH = new Writer().message(FE.Flush);
function query(sql: string): Buffer {
  return encodeQuery(sql);
}
function copyData(text: string): Buffer {
  return new Writer().bytes(Buffer.from(text)).message(FE.CopyData);
}
const COPY_DONE = new Writer().message(FE.CopyDone);
function copyFail(reason: string): Buffer {
  return new Writer().cstring(reason).message(FE.CopyFail);
}

/** Complete frames of a byte run (a test helper: the session's framer does this for real). */
function splitFrames(buf: Buffer, start = 0, end = buf.length): Buffer[] {
  const out: Buffer[] = [];
  let off = start;
  while (off < end) {
    const len = buf.readInt32BE(off + 1);
    out.push(buf.subarray(off, off + 1 + len));
    off += 1 + len;
  }
  assert.equal(off, end, 'runs are whole frames');
  return out;
}

/** What the comparison looks at: the type, plus the status of ReadyForQuery and the SQLSTATE of errors. */
function label(frame: Buffer): string {
  const t = String.fromCharCode(frame[0] as number);
  if (frame[0] === BE.ReadyForQuery) return `Z${String.fromCharCode(frame[5] as number)}`;
  if (frame[0] === BE.ErrorResponse) return `E${decodeNotice(frame).code ?? '?'}`;
  return t;
}
/** Asynchronous or informational frames that a model does not produce (a WARNING, a ParameterStatus). */
function ignored(type: number): boolean {
  return type === BE.NoticeResponse || type === BE.ParameterStatus || type === BE.NotificationResponse;
}

// ---------------------------------------------------------------- SQL the scenarios use

const SQL = {
  sel: 'SELECT id, v FROM items WHERE id = $1',
  div: 'SELECT 10 / v AS r FROM items WHERE id = $1',
  upd: 'UPDATE items SET v = v WHERE id = $1',
  range: 'SELECT id FROM items WHERE id >= $1 ORDER BY id',
  bad: 'SELEC 1',
  copy: 'COPY sink FROM STDIN',
  failSimple: 'SELECT 10 / v AS r FROM items WHERE id = 2',
} as const;
/** Run once on the real server before the scenarios. */
const SETUP = 'CREATE TABLE items (id int PRIMARY KEY, v int); INSERT INTO items VALUES (1, 10), (2, 0); CREATE TABLE sink (x int);';

interface Behaviour {
  parseError?: string;
  returnsRows: boolean;
  /** Rows for the (single) parameter, or the SQLSTATE execution fails with. */
  rows?: (p: string | null) => number | string;
  copy?: boolean;
}
const MODEL: Record<string, Behaviour> = {
  [SQL.sel]: { returnsRows: true, rows: (p) => (p === '1' || p === '2' ? 1 : 0) },
  [SQL.div]: { returnsRows: true, rows: (p) => (p === '2' ? '22012' : p === '1' ? 1 : 0) },
  [SQL.upd]: { returnsRows: false, rows: () => 0 },
  [SQL.range]: { returnsRows: true, rows: (p) => [1, 2].filter((x) => x >= Number(p)).length },
  [SQL.bad]: { parseError: '42601', returnsRows: false },
  [SQL.copy]: { returnsRows: false, copy: true },
};

// ---------------------------------------------------------------- a model PostgreSQL backend

interface Portal {
  b: Behaviour;
  param: string | null;
  left: number | string | null;
}

/**
 * Answers frames as a PostgreSQL backend does, for the SQL above: statements
 * and portals by name, errors that make it discard input until Sync,
 * transaction blocks (aborted state refuses Parse/Bind/Execute with 25P02),
 * COPY FROM STDIN (ignoring Flush/Sync during copy-in).
 */
class FakePg {
  #stmts = new Map<string, Behaviour>();
  #portals = new Map<string, Portal>();
  #skipping = false;
  #tx: 'I' | 'T' | 'E' = 'I';
  #copy: null | 'simple' | 'extended' = null;
  /** Frames produced and not yet taken. */
  out: Buffer[] = [];
  /** Parse frames received (including ones it skipped). */
  parses = 0;

  statementNames(): string[] {
    return [...this.#stmts.keys()].filter((n) => n !== '');
  }

  receive(buf: Buffer, start: number, end: number): void {
    for (const f of splitFrames(buf, start, end)) this.#frame(Buffer.from(f));
  }

  #emit(type: number, body: Buffer = Buffer.alloc(0)): void {
    this.out.push(new Writer().bytes(body).message(type));
  }
  #error(code: string, message = 'model error'): void {
    this.out.push(encodeError({ severity: 'ERROR', code, message }));
    if (this.#tx === 'T') this.#tx = 'E';
  }
  /** An error in an extended-protocol message: discard until Sync. */
  #fail(code: string, message?: string): void {
    this.#error(code, message);
    this.#skipping = true;
  }
  #ready(): void {
    if (this.#tx === 'I') this.#portals.clear();
    this.out.push(encodeReadyForQuery(this.#tx.charCodeAt(0)));
  }

  #frame(f: Buffer): void {
    const t = f[0] as number;
    const r = new Reader(f, 5, f.length);
    if (t === FE.Parse) this.parses++;
    if (this.#copy !== null) {
      const simple = this.#copy === 'simple';
      if (t === FE.CopyData || t === FE.Flush || t === FE.Sync) return;
      this.#copy = null;
      if (t === FE.CopyDone) this.#emit(BE.CommandComplete);
      else if (t === FE.CopyFail) {
        if (simple) this.#error('57014');
        else this.#fail('57014');
      } else throw new Error(`model: message ${String.fromCharCode(t)} during copy-in`);
      if (simple) this.#ready();
      return;
    }
    if (this.#skipping) {
      if (t === FE.Sync) {
        this.#skipping = false;
        this.#ready();
      }
      return;
    }
    switch (t) {
      case FE.Parse: {
        const name = r.cstring();
        const sql = r.cstring();
        const b = MODEL[sql];
        if (b === undefined) throw new Error(`model: unknown SQL ${sql}`);
        // Postgres parses first, then refuses in an aborted block, and stores (duplicate check) last.
        if (b.parseError !== undefined) {
          this.#fail(b.parseError);
          return;
        }
        if (this.#tx === 'E') {
          this.#fail('25P02');
          return;
        }
        if (name !== '' && this.#stmts.has(name)) {
          this.#fail('42P05', `prepared statement "${name}" already exists`);
          return;
        }
        this.#stmts.set(name, b);
        this.#emit(BE.ParseComplete);
        return;
      }
      case FE.Bind: {
        const portal = r.cstring();
        const name = r.cstring();
        const nf = r.int16();
        for (let i = 0; i < nf; i++) r.int16();
        const np = r.int16();
        let param: string | null = null;
        for (let i = 0; i < np; i++) {
          const len = r.int32();
          const v = len < 0 ? null : r.bytes(len).toString();
          if (i === 0) param = v;
        }
        // The statement is looked up before the aborted-block check.
        const b = this.#stmts.get(name);
        if (b === undefined) {
          this.#fail('26000', `prepared statement "${name}" does not exist`);
          return;
        }
        if (this.#tx === 'E') {
          this.#fail('25P02');
          return;
        }
        if (portal !== '' && this.#portals.has(portal)) {
          this.#fail('42P03');
          return;
        }
        this.#portals.set(portal, { b, param, left: null });
        this.#emit(BE.BindComplete);
        return;
      }
      case FE.Describe: {
        const which = r.byte();
        const name = r.cstring();
        // An aborted transaction refuses to describe rows (that needs the catalogs), not parameters.
        if (which === 0x53) {
          const b = this.#stmts.get(name);
          if (b === undefined) {
            this.#fail('26000', `prepared statement "${name}" does not exist`);
            return;
          }
          if (this.#tx === 'E' && b.returnsRows) {
            this.#fail('25P02');
            return;
          }
          this.#emit(BE.ParameterDescription);
          this.#emit(b.returnsRows ? BE.RowDescription : BE.NoData);
          return;
        }
        const p = this.#portals.get(name);
        if (p === undefined) {
          this.#fail('34000');
          return;
        }
        if (this.#tx === 'E' && p.b.returnsRows) {
          this.#fail('25P02');
          return;
        }
        this.#emit(p.b.returnsRows ? BE.RowDescription : BE.NoData);
        return;
      }
      case FE.Execute: {
        const name = r.cstring();
        const maxRows = r.int32();
        const p = this.#portals.get(name);
        if (p === undefined) {
          this.#fail('34000');
          return;
        }
        if (this.#tx === 'E') {
          this.#fail('25P02');
          return;
        }
        if (p.b.copy) {
          this.#copy = 'extended';
          this.#emit(BE.CopyInResponse);
          return;
        }
        if (p.left === null) p.left = p.b.rows?.(p.param) ?? 0;
        if (typeof p.left === 'string') {
          this.#fail(p.left);
          return;
        }
        const n = maxRows > 0 ? Math.min(p.left, maxRows) : p.left;
        for (let i = 0; i < n; i++) this.#emit(BE.DataRow);
        p.left -= n;
        this.#emit(maxRows > 0 && n === maxRows ? BE.PortalSuspended : BE.CommandComplete);
        return;
      }
      case FE.Close: {
        const which = r.byte();
        const name = r.cstring();
        if (which === 0x53) this.#stmts.delete(name);
        else this.#portals.delete(name);
        this.#emit(BE.CloseComplete);
        return;
      }
      case FE.Sync:
        this.#ready();
        return;
      case FE.Flush:
      case FE.Terminate:
        return;
      case FE.Query:
        this.#simple(r.cstring());
        return;
      default:
        throw new Error(`model: unsupported message ${String.fromCharCode(t)}`);
    }
  }

  #simple(sql: string): void {
    // A simple Query runs in the unnamed statement and portal.
    this.#stmts.delete('');
    this.#portals.delete('');
    if (this.#tx === 'E' && sql !== 'ROLLBACK' && sql !== 'COMMIT') {
      this.#error('25P02');
      this.#ready();
      return;
    }
    switch (sql) {
      case 'BEGIN':
        this.#tx = 'T';
        this.#emit(BE.CommandComplete);
        break;
      case 'COMMIT':
      case 'ROLLBACK':
        this.#tx = 'I';
        this.#emit(BE.CommandComplete);
        break;
      case 'DEALLOCATE ALL':
        this.#stmts.clear();
        this.#emit(BE.CommandComplete);
        break;
      case 'SELECT 1':
        this.#emit(BE.RowDescription);
        this.#emit(BE.DataRow);
        this.#emit(BE.CommandComplete);
        break;
      case SQL.failSimple:
        this.#emit(BE.RowDescription);
        this.#error('22012');
        break;
      case SQL.copy:
        this.#copy = 'simple';
        this.#emit(BE.CopyInResponse);
        return;
      default:
        throw new Error(`model: unknown simple query ${sql}`);
    }
    this.#ready();
  }
}

// ---------------------------------------------------------------- scenarios

type ServerId = 'A' | 'B';
interface Step {
  client?: number;
  on: ServerId;
  frames: Buffer[];
  /** Done when this many ReadyForQuery arrived (default: one per Sync/Query), or when a frame of this type did. */
  wait?: { z: number } | { type: string; count?: number };
  /** Runs right after the frames are sent (what the session does when it sees DEALLOCATE ALL). */
  afterSend?: (rw: PreparedRewriter, server: ServerStatements) => void;
}
interface Scenario {
  name: string;
  max: number;
  steps: Step[];
  /** Extra checks on the rewritten run. */
  check?: (r: RunResult) => void;
}
interface RunResult {
  seen: string[][];
  parsesTo: Record<ServerId, number>;
  servers: Record<ServerId, ServerStatements>;
  cache: StatementCache;
  rewriters: PreparedRewriter[];
}

function defaultZ(frames: Buffer[]): number {
  return frames.filter((f) => f[0] === FE.Sync || f[0] === FE.Query).length;
}
function stepDone(step: Step, labels: string[]): boolean {
  const w = step.wait ?? { z: defaultZ(step.frames) };
  if ('z' in w) return labels.filter((l) => l[0] === 'Z').length >= w.z;
  return labels.filter((l) => l.startsWith(w.type)).length >= (w.count ?? 1);
}

const s = (name: string, steps: Step[], extra: Partial<Scenario> = {}): Scenario => ({ name, max: 100, steps, ...extra });

const SCENARIOS: Scenario[] = [
  s('pgbench-style P_n: parse once on A, bind on B and back', [
    { on: 'A', frames: [parse('P_0', SQL.sel, [INT4]), SYNC] },
    { on: 'A', frames: [bind('P_0', ['1']), describeMsg('P', ''), execute(), SYNC] },
    { on: 'B', frames: [bind('P_0', ['2']), describeMsg('P', ''), execute(), SYNC] },
    { on: 'A', frames: [bind('P_0', ['1']), execute(), SYNC] },
    { on: 'B', frames: [parse('P_1', SQL.upd, [INT4]), SYNC, bind('P_1', ['1']), execute(), SYNC] },
    { on: 'A', frames: [bind('P_1', ['1']), execute(), SYNC, bind('P_0', ['2']), execute(), SYNC] },
  ]),
  s(
    'pipelined Parse/Bind/Execute/Sync x N, with a skipped Parse mid-pipeline',
    [
      {
        on: 'A',
        frames: [
          parse('a', SQL.sel),
          bind('a', ['1']),
          execute(),
          SYNC,
          bind('a', ['2']),
          execute(),
          SYNC,
          bind('a', ['3']),
          execute(),
          SYNC,
        ],
      },
      {
        on: 'B',
        frames: [
          bind('a', ['1']),
          execute(),
          SYNC,
          parse('b', SQL.sel),
          bind('b', ['2']),
          execute(),
          SYNC,
          bind('a', ['2']),
          execute(),
          SYNC,
        ],
      },
      { on: 'A', frames: [parse('c', SQL.sel), bind('c', ['1']), execute(), parse('d', SQL.div), bind('d', ['1']), execute(), SYNC] },
    ],
    {
      check: (r) => {
        // 'b' and 'c' share 'a's statement: one Parse per server for it, plus 'd' on A.
        assert.equal(r.parsesTo.A, 2);
        assert.equal(r.parsesTo.B, 1);
      },
    },
  ),
  s('synthetic ParseComplete lands among real responses (and alone after a Flush)', [
    { on: 'A', frames: [parse('x', SQL.sel), SYNC] },
    { on: 'A', frames: [bind('x', ['1']), execute(), parse('y', SQL.sel), bind('y', ['2']), describeMsg('P', ''), execute(), SYNC] },
    { on: 'A', frames: [parse('z', SQL.sel), FLUSH], wait: { type: '1' } },
    { on: 'A', frames: [bind('z', ['1']), execute(), FLUSH], wait: { type: 'C' } },
    { on: 'A', frames: [closeMsg('S', 'x'), FLUSH], wait: { type: '3' } },
    { on: 'A', frames: [SYNC] },
  ]),
  s('error mid-pipeline: later synthetic answers dropped, skipped Parses undone, Sync recovers', [
    { on: 'A', frames: [parse('s1', SQL.sel), parse('d', SQL.div), SYNC] },
    {
      on: 'A',
      frames: [
        bind('d', ['2']),
        execute(),
        parse('s3', SQL.sel),
        bind('s1', ['1']),
        execute(),
        closeMsg('S', 's1'),
        SYNC,
        bind('s3', ['1']),
        execute(),
        SYNC,
        bind('s1', ['1']),
        execute(),
        SYNC,
      ],
    },
    // The error arrives before the rest of the segment is sent: the server is skipping while we send.
    { on: 'A', frames: [bind('d', ['2']), execute(), FLUSH], wait: { type: 'E' } },
    { on: 'A', frames: [parse('s4', SQL.sel), bind('s1', ['1']), execute(), closeMsg('S', 's1'), SYNC] },
    { on: 'A', frames: [bind('s4', ['1']), execute(), SYNC, bind('s1', ['2']), execute(), SYNC] },
    // On B the Parse injected for s1 sits after the error: skipped, so it must be injected again.
    { on: 'B', frames: [bind('d', ['2']), execute(), bind('s1', ['1']), execute(), SYNC] },
    { on: 'B', frames: [bind('s1', ['1']), execute(), SYNC, bind('d', ['1']), execute(), SYNC] },
  ]),
  s('Close of a named statement', [
    { on: 'A', frames: [parse('c', SQL.sel), SYNC, bind('c', ['1']), execute(), SYNC] },
    { on: 'A', frames: [closeMsg('S', 'c'), SYNC] },
    { on: 'B', frames: [bind('c', ['1']), execute(), SYNC] },
    { on: 'B', frames: [parse('c', SQL.sel), bind('c', ['2']), execute(), SYNC] },
    { on: 'A', frames: [closeMsg('S', 'nonexistent'), closeMsg('P', 'nonexistent'), SYNC] },
    { on: 'A', frames: [parse('c2', SQL.div), bind('c2', ['1']), execute(), closeMsg('S', 'c2'), bind('c2', ['1']), execute(), SYNC] },
  ]),
  s(
    'LRU eviction at max_prepared_statements, evicted statement re-prepared when used',
    [
      { on: 'A', frames: [parse('e1', SQL.sel), parse('e2', SQL.div), parse('e3', SQL.upd), SYNC] },
      { on: 'A', frames: [bind('e1', ['1']), execute(), SYNC] },
      { on: 'A', frames: [bind('e2', ['1']), execute(), bind('e3', ['1']), execute(), bind('e1', ['2']), execute(), SYNC] },
      { on: 'B', frames: [bind('e3', ['1']), execute(), SYNC, describeMsg('S', 'e2'), SYNC] },
    ],
    {
      max: 2,
      check: (r) => {
        assert.ok(r.servers.A.evictions >= 3, `evictions on A: ${r.servers.A.evictions}`);
        assert.ok(r.servers.A.size <= 2 && r.servers.B.size <= 2);
        // e1, e2, e3, then e1, e2, e3, e1 again after evictions.
        assert.equal(r.parsesTo.A, 7);
      },
    },
  ),
  s('Describe statement, also where it was never prepared', [
    { on: 'A', frames: [parse('ds', SQL.sel), parse('du', SQL.upd), SYNC] },
    { on: 'B', frames: [describeMsg('S', 'ds'), SYNC] },
    { on: 'B', frames: [describeMsg('S', 'du'), bind('du', ['1']), describeMsg('P', ''), execute(), SYNC] },
    { on: 'A', frames: [describeMsg('S', 'nope'), SYNC] },
  ]),
  s(
    'two clients share the cache entry on one server',
    [
      { client: 0, on: 'A', frames: [parse('P_0', SQL.sel, [INT4]), SYNC, bind('P_0', ['1']), execute(), SYNC] },
      { client: 1, on: 'A', frames: [parse('stmt_a', SQL.sel, [INT4]), SYNC, bind('stmt_a', ['2']), execute(), SYNC] },
      { client: 1, on: 'B', frames: [bind('stmt_a', ['1']), execute(), SYNC] },
      { client: 0, on: 'B', frames: [parse('P_1', SQL.sel, [INT4]), bind('P_1', ['2']), execute(), SYNC] },
      { client: 0, on: 'A', frames: [closeMsg('S', 'P_0'), SYNC] },
      { client: 1, on: 'A', frames: [bind('stmt_a', ['1']), execute(), SYNC] },
      // Same text without parameter types is another statement.
      { client: 1, on: 'A', frames: [parse('untyped', SQL.sel), bind('untyped', ['1']), execute(), SYNC] },
    ],
    {
      check: (r) => {
        assert.equal(r.parsesTo.A, 2);
        assert.equal(r.parsesTo.B, 1);
        assert.equal(r.cache.size, 2);
        assert.equal(r.rewriters[0]?.serverName('P_1'), r.rewriters[1]?.serverName('stmt_a'));
        assert.ok(r.rewriters[0]?.hits === 1 && r.rewriters[1]?.hits === 1);
      },
    },
  ),
  s('Parse of a name the client already has answers 42P05 like PostgreSQL', [
    { on: 'A', frames: [parse('dup', SQL.sel), SYNC] },
    { on: 'B', frames: [parse('dup', SQL.sel), bind('dup', ['1']), execute(), SYNC] },
    { on: 'B', frames: [bind('dup', ['1']), execute(), SYNC] },
    { on: 'A', frames: [bind('dup', ['2']), execute(), parse('dup', SQL.div), bind('dup', ['1']), execute(), SYNC] },
  ]),
  s('a failed Parse leaves no statement and can be retried', [
    { on: 'A', frames: [parse('f', SQL.bad), bind('f', ['1']), execute(), SYNC] },
    { on: 'A', frames: [parse('f', SQL.sel), SYNC, bind('f', ['1']), execute(), SYNC] },
    { on: 'B', frames: [parse('g', SQL.bad), SYNC] },
    { on: 'B', frames: [bind('g', ['1']), execute(), SYNC] },
  ]),
  s('aborted transaction block: Parse refused even where the server has the statement', [
    { on: 'A', frames: [parse('t1', SQL.sel), SYNC] },
    { on: 'B', frames: [query('BEGIN')] },
    { on: 'B', frames: [query(SQL.failSimple)] },
    // The Parse injected for t1 fails (25P02) in the Bind's place.
    { on: 'B', frames: [bind('t1', ['1']), execute(), SYNC] },
    { on: 'B', frames: [describeMsg('S', 't1'), SYNC, parse('t2', SQL.sel), SYNC] },
    { on: 'B', frames: [query('ROLLBACK')] },
    { on: 'B', frames: [bind('t1', ['1']), execute(), SYNC] },
    // A has the statement, but an aborted transaction refuses any Parse: it must reach the server.
    // Pipelined behind Queries, the Parse waits until their ReadyForQuery tells the status.
    { on: 'A', frames: [query('BEGIN'), query(SQL.failSimple), parse('t3', SQL.sel), SYNC, bind('t3', ['1']), execute(), SYNC] },
    { on: 'A', frames: [query('ROLLBACK'), parse('t3', SQL.sel), SYNC, bind('t3', ['1']), execute(), SYNC] },
  ]),
  s('COPY FROM STDIN: Syncs sent during copy-in are ignored by the server', [
    { on: 'A', frames: [parse('', SQL.copy), bind(''), execute(), SYNC], wait: { type: 'G' } },
    { on: 'A', frames: [copyData('1\n'), COPY_DONE, SYNC] },
    { on: 'A', frames: [parse('cp', SQL.copy), SYNC] },
    { on: 'B', frames: [bind('cp'), execute(), SYNC], wait: { type: 'G' } },
    { on: 'B', frames: [copyData('2\n'), COPY_DONE, SYNC] },
    { on: 'B', frames: [bind('cp'), execute(), SYNC, copyData('3\n'), COPY_DONE, SYNC], wait: { z: 1 } },
    {
      on: 'A',
      frames: [bind('cp'), execute(), SYNC, copyData('4\n'), copyFail('no thanks'), SYNC, bind('cp'), execute(), SYNC],
      wait: { type: 'G', count: 2 },
    },
    { on: 'A', frames: [copyData('5\n'), COPY_DONE, SYNC] },
    { on: 'A', frames: [query(SQL.copy)], wait: { type: 'G' } },
    { on: 'A', frames: [copyData('6\n'), COPY_DONE], wait: { z: 1 } },
  ]),
  s('DEALLOCATE ALL: forgetClient(null) and a cleared server', [
    { on: 'A', frames: [parse('q1', SQL.sel), SYNC] },
    {
      on: 'A',
      frames: [query('DEALLOCATE ALL')],
      afterSend: (rw, server) => {
        rw.forgetClient(null);
        server.clear();
      },
    },
    { on: 'A', frames: [bind('q1', ['1']), execute(), SYNC] },
    { on: 'A', frames: [parse('q1', SQL.sel), SYNC, bind('q1', ['1']), execute(), SYNC] },
  ]),
  s('unnamed statements and named portals pass through', [
    {
      on: 'A',
      frames: [
        parse('', SQL.range),
        bind('', ['1'], 'p1'),
        describeMsg('P', 'p1'),
        execute('p1', 1),
        execute('p1', 1),
        execute('p1', 0),
        closeMsg('P', 'p1'),
        SYNC,
      ],
    },
    { on: 'A', frames: [parse('nm', SQL.range), bind('nm', ['2'], 'p2'), execute('p2', 0), SYNC] },
    { on: 'B', frames: [bind('nm', ['1'], 'p3'), execute('p3', 1), execute('p3', 1), closeMsg('S', ''), SYNC] },
  ]),
];

// ---------------------------------------------------------------- the rewritten run, on models

/** mulberry32: a small seeded PRNG, so a failing schedule can be replayed. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** How many pending response frames to deliver after a client frame. */
type Schedule = (pending: number) => number;
const AT_END: Schedule = () => 0;
const EAGER: Schedule = (n) => n;
function randomSchedule(seed: number): Schedule {
  const r = prng(seed);
  return (n) => Math.floor(r() * (n + 1));
}

interface SimClient {
  rw: PreparedRewriter;
  seen: string[];
  on: ServerId | null;
}
interface SimServer {
  pg: FakePg;
  stmts: ServerStatements;
  owner: SimClient | null;
  parses: number;
}

/** Transaction pooling gives the server back after ReadyForQuery(I) with nothing owed. */
function releasable(c: SimClient): boolean {
  return c.rw.idle && c.seen.at(-1) === 'ZI';
}

/** Mirrors the session: inspected frames whole through the rewriter, other bytes through onClientBytes. */
function routeClientFrame(rw: PreparedRewriter, f: Buffer): void {
  const type = f[0] as number;
  if (PREPARED_CLIENT_INSPECT[type] === 1) rw.onClientFrame(type, f, 0, f.length);
  else rw.onClientBytes(f, 0, f.length);
}
function routeServerFrame(client: { rw: PreparedRewriter; seen: string[] }, f: Buffer): void {
  const type = f[0] as number;
  if (PREPARED_SERVER_INSPECT[type] === 1) client.rw.onServerFrame(type, f, 0, f.length);
  else if (!ignored(type)) client.seen.push(label(f));
}

export function simulate(sc: Scenario, schedule: Schedule): RunResult {
  const cache = new StatementCache();
  const servers: Record<ServerId, SimServer> = {
    A: { pg: new FakePg(), stmts: new ServerStatements(sc.max), owner: null, parses: 0 },
    B: { pg: new FakePg(), stmts: new ServerStatements(sc.max), owner: null, parses: 0 },
  };
  const clients: SimClient[] = [];
  const clientFor = (i: number): SimClient => {
    let c = clients[i];
    if (c === undefined) {
      const me: SimClient = { rw: null as unknown as PreparedRewriter, seen: [], on: null };
      const sink: PreparedSink = {
        toServer: (buf, start, end) => {
          assert.ok(me.on !== null, 'frame for the server while none is attached');
          const srv = servers[me.on];
          for (const f of splitFrames(buf, start, end)) if (f[0] === FE.Parse) srv.parses++;
          srv.pg.receive(buf, start, end);
        },
        toClient: (buf, start, end) => {
          for (const f of splitFrames(buf, start, end)) if (!ignored(f[0] as number)) me.seen.push(label(f));
        },
      };
      me.rw = new PreparedRewriter(cache, sink);
      clients[i] = me;
      c = me;
    }
    return c;
  };
  const deliver = (srv: SimServer, n: number): void => {
    for (let i = 0; i < n; i++) {
      const f = srv.pg.out.shift();
      if (f === undefined) return;
      assert.ok(srv.owner !== null, `server answered with nobody attached: ${label(f)}`);
      routeServerFrame(srv.owner, f);
    }
  };
  for (const step of sc.steps) {
    const i = step.client ?? 0;
    const c = clientFor(i);
    if (c.on !== step.on) {
      assert.equal(c.on, null, `step moves client ${i} off ${c.on} in the middle of a transaction`);
      const srv = servers[step.on];
      assert.equal(srv.owner, null, `server ${step.on} is busy`);
      c.rw.attach(srv.stmts);
      srv.owner = c;
      c.on = step.on;
    }
    const srv = servers[step.on];
    const from = c.seen.length;
    for (const f of step.frames) {
      routeClientFrame(c.rw, f);
      deliver(srv, schedule(srv.pg.out.length));
    }
    step.afterSend?.(c.rw, srv.stmts);
    deliver(srv, Number.POSITIVE_INFINITY);
    assert.ok(stepDone(step, c.seen.slice(from)), `step did not complete: ${c.seen.slice(from).join(' ')}`);
    // Transaction pooling: give the server back at an idle point outside a transaction block.
    if (releasable(c)) {
      c.rw.detach();
      srv.owner = null;
      c.on = null;
    }
  }
  return {
    seen: clients.map((c) => c.seen),
    parsesTo: { A: servers.A.parses, B: servers.B.parses },
    servers: { A: servers.A.stmts, B: servers.B.stmts },
    cache,
    rewriters: clients.filter((c) => c !== undefined).map((c) => c.rw),
  };
}

/** The same client frames, straight to one model server per client. */
export function simulateDirect(sc: Scenario): string[][] {
  const pgs: FakePg[] = [];
  const seen: string[][] = [];
  for (const step of sc.steps) {
    const i = step.client ?? 0;
    pgs[i] ??= new FakePg();
    seen[i] ??= [];
    const pg = pgs[i] as FakePg;
    for (const f of step.frames) pg.receive(f, 0, f.length);
    for (const f of pg.out.splice(0)) if (!ignored(f[0] as number)) (seen[i] as string[]).push(label(f));
  }
  return seen;
}

const SCHEDULES: Array<[string, Schedule]> = [
  ['responses after the whole step', AT_END],
  ['responses after every frame', EAGER],
  ...Array.from({ length: 24 }, (_, k): [string, Schedule] => [`random schedule seed ${k + 1}`, randomSchedule(k + 1)]),
];

describe('prepared statements over model servers', () => {
  for (const sc of SCENARIOS) {
    it(sc.name, () => {
      const expected = simulateDirect(sc);
      for (const [what, schedule] of SCHEDULES) {
        const r = simulate(sc, schedule);
        assert.deepEqual(r.seen, expected, `${what}`);
        sc.check?.(r);
        // Nothing may be left owed, and every reference must be accounted for.
        for (const rw of r.rewriters) {
          assert.ok(rw.idle, `${what}: rewriter not idle at the end`);
          rw.dispose();
        }
        r.servers.A.clear();
        r.servers.B.clear();
        assert.equal(r.cache.size, 0, `${what}: cache entries leaked`);
      }
    });
  }
});

/**
 * A random client program: batches of extended-protocol frames over a few
 * names and statements (some failing at Parse or at Execute), each batch
 * ending with Sync so the client may move to the other server after it.
 * Two clients share the cache and the servers.
 */
export function randomScenario(seed: number): Scenario {
  const r = prng(seed);
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)] as T;
  const names = ['s1', 's2', 's3', '', 'sbad'];
  const sqls = [SQL.sel, SQL.sel, SQL.div, SQL.upd];
  const steps: Step[] = [];
  const nSteps = 2 + Math.floor(r() * 8);
  for (let i = 0; i < nSteps; i++) {
    // The unnamed statement does not follow a client to another server (nor does it
    // in PgBouncer): each batch starts without one, so both runs agree on it.
    const frames: Buffer[] = [closeMsg('S', '')];
    const block = r() < 0.3;
    const n = 1 + Math.floor(r() * 9);
    for (let j = 0; j < n; j++) {
      const x = r();
      // Known limit (see prepared.ts): Describe('S') in an aborted block, on a server lacking the statement.
      if (block && x >= 0.6 && x < 0.68) continue;
      // Invalid SQL only under names that never exist: re-Parse of an existing name with
      // invalid SQL reports 42P05 where Postgres reports the syntax error (see prepared.ts).
      if (x < 0.04) frames.push(parse(pick(['sbad', '']), SQL.bad));
      else if (x < 0.25) frames.push(parse(pick(['s1', 's2', 's3', '']), pick(sqls)));
      else if (x < 0.45) frames.push(bind(pick(names), [pick(['1', '2'])]));
      else if (x < 0.6) frames.push(execute());
      else if (x < 0.68) frames.push(describeMsg('S', pick(names)));
      else if (x < 0.72) frames.push(describeMsg('P', ''));
      else if (x < 0.8) frames.push(closeMsg('S', pick(names)));
      else if (x < 0.9) frames.push(SYNC);
      else frames.push(FLUSH);
    }
    frames.push(SYNC);
    // Some batches run inside a transaction block (an error there aborts it: 25P02 until COMMIT).
    if (block) {
      frames.splice(1, 0, query('BEGIN'));
      frames.push(query('COMMIT'));
    }
    steps.push({ client: r() < 0.2 ? 1 : 0, on: r() < 0.5 ? 'A' : 'B', frames });
  }
  return { name: `random program ${seed}`, max: 1 + Math.floor(r() * 3), steps };
}

describe('random programs over model servers', () => {
  it('match a single server under every schedule', () => {
    for (let seed = 1; seed <= 400; seed++) {
      const sc = randomScenario(seed);
      const expected = simulateDirect(sc);
      for (const [what, schedule] of [
        ['at end', AT_END],
        ['eager', EAGER],
        ['random', randomSchedule(seed)],
      ] as const) {
        const res = simulate(sc, schedule);
        assert.deepEqual(res.seen, expected, `${sc.name}, ${what}`);
        for (const rw of res.rewriters) rw.dispose();
        res.servers.A.clear();
        res.servers.B.clear();
        assert.equal(res.cache.size, 0, `${sc.name}, ${what}: cache entries leaked`);
      }
    }
  });
});

// ---------------------------------------------------------------- byte-level and bookkeeping

/** A rewriter on one model server, recording what each side receives. */
function rig(max = 100, cache = new StatementCache()) {
  const toServer: Buffer[] = [];
  const toClient: Buffer[] = [];
  const rw = new PreparedRewriter(cache, {
    toServer: (b, st, en) => toServer.push(Buffer.from(b.subarray(st, en))),
    toClient: (b, st, en) => toClient.push(Buffer.from(b.subarray(st, en))),
  });
  const server = new ServerStatements(max);
  rw.attach(server);
  const send = (f: Buffer) => rw.onClientFrame(f[0] as number, f, 0, f.length);
  const reply = (f: Buffer) => rw.onServerFrame(f[0] as number, f, 0, f.length);
  return { rw, server, cache, toServer, toClient, send, reply };
}
const PC = new Writer().message(BE.ParseComplete);
const BC = new Writer().message(BE.BindComplete);
const Z_IDLE = encodeReadyForQuery(0x49);

describe('PreparedRewriter frames', () => {
  it('rewrites Parse and Bind to the server name, byte for byte, inside a larger buffer', () => {
    const t = rig();
    const p = parse('stmt', SQL.sel, [INT4]);
    const b = bind('stmt', ['1', null], 'portal');
    // Frames sit at an offset in a bigger chunk, as they do in a socket read.
    const chunk = Buffer.concat([Buffer.from('xxx'), p, b, Buffer.from('yy')]);
    t.rw.onClientFrame(FE.Parse, chunk, 3, 3 + p.length);
    t.rw.onClientFrame(FE.Bind, chunk, 3 + p.length, 3 + p.length + b.length);
    const name = t.rw.serverName('stmt');
    assert.match(name ?? '', /^postern_s\d+$/);
    assert.deepEqual(t.toServer, [parse(name as string, SQL.sel, [INT4]), bind(name as string, ['1', null], 'portal')]);
    assert.deepEqual(t.toClient, []);
  });

  it('passes unnamed statements, portals and unknown names through untouched', () => {
    const t = rig();
    const frames = [
      parse('', SQL.sel),
      bind('', ['1'], 'p'),
      describeMsg('P', 'p'),
      describeMsg('S', 'never'),
      bind('never'),
      execute('p'),
    ];
    for (const f of frames) t.send(f);
    assert.deepEqual(t.toServer, frames);
  });

  it('answers Parse of a statement the server has, and Close, without asking the server', () => {
    const t = rig();
    t.send(parse('one', SQL.sel));
    t.reply(PC);
    t.send(SYNC);
    t.reply(Z_IDLE);
    t.toServer.length = 0;
    t.toClient.length = 0;
    t.send(parse('two', SQL.sel));
    t.send(closeMsg('S', 'one'));
    assert.deepEqual(t.toServer, []);
    assert.deepEqual(t.toClient, [PARSE_COMPLETE, CLOSE_COMPLETE]);
    assert.ok(t.rw.idle);
  });

  it('renames the statement in the 42P05 of a duplicate Parse', () => {
    const t = rig();
    t.send(parse('mine', SQL.sel));
    t.reply(PC);
    const serverName = t.rw.serverName('mine') as string;
    t.send(parse('mine', SQL.div));
    t.send(SYNC);
    assert.deepEqual(t.toServer.at(-2), parse(serverName, SQL.sel), 'the existing statement is re-sent to make the server refuse it');
    t.reply(encodeError({ severity: 'ERROR', code: '42P05', message: `prepared statement "${serverName}" already exists` }));
    t.reply(Z_IDLE);
    const err = decodeNotice(t.toClient[1] as Buffer);
    assert.equal(err.code, '42P05');
    assert.equal(err.message, 'prepared statement "mine" already exists');
    assert.equal(t.rw.serverName('mine'), serverName, 'the original mapping stays');
  });

  it('a statement whose types clients know is described where it is prepared afresh; the Bind waits, then goes', () => {
    const cache = new StatementCache();
    const a = rig(100, cache);
    a.send(parse('s', SQL.sel));
    a.send(describeMsg('S', 's'));
    a.send(SYNC);
    a.reply(PC);
    a.reply(paramDesc([INT4]));
    a.reply(rowDesc([['v', INT4, -1]], 16384));
    a.reply(Z_IDLE);
    const entry = cache.entries()[0];
    assert.ok(entry?.shape !== null && entry?.shape !== undefined);
    a.rw.detach();
    // The same client on a server that lacks the statement.
    const other = new ServerStatements(100);
    a.rw.attach(other);
    a.toServer.length = 0;
    a.toClient.length = 0;
    a.send(bind('s', ['1']));
    a.send(execute());
    a.send(SYNC);
    const name = entry?.name as string;
    assert.deepEqual(
      a.toServer,
      [parse(name, SQL.sel), describeMsg('S', name), new Writer().message(FE.Flush)],
      'the Bind waits for the description',
    );
    a.reply(PC);
    a.reply(paramDesc([INT4]));
    // Same types; the table was recreated (another table OID): still the same statement.
    a.reply(rowDesc([['v', INT4, -1]], 99999));
    assert.deepEqual(a.toServer.slice(3), [bind(name, ['1']), execute(), SYNC]);
    assert.deepEqual(a.toClient, [], 'the injected Parse and Describe are not seen');
    assert.equal(entry?.stale, false);
  });

  it('prepared afresh with another result type: the Bind is refused with 0A000 by a request the server fails, and later Parses get a new statement', () => {
    const cache = new StatementCache();
    const a = rig(100, cache);
    a.send(parse('s', SQL.sel));
    a.send(describeMsg('S', 's'));
    a.send(SYNC);
    for (const f of [PC, paramDesc([INT4]), rowDesc([['v', INT4, -1]]), Z_IDLE]) a.reply(f);
    const entry = cache.entries()[0] as NonNullable<ReturnType<typeof cache.entries>[0]>;
    a.rw.detach();
    const other = new ServerStatements(100);
    a.rw.attach(other);
    a.toServer.length = 0;
    a.toClient.length = 0;
    a.send(bind('s', ['1']));
    a.send(execute());
    a.send(SYNC);
    a.reply(PC);
    a.reply(paramDesc([INT4]));
    a.reply(
      rowDesc([
        ['v', 25, -1],
        ['w', INT4, -1],
      ]),
    );
    assert.equal(entry.stale, true);
    assert.equal(cache.entries().includes(entry), false, 'retired');
    const failing = a.toServer[3] as Buffer;
    assert.equal(failing[0], FE.Bind);
    assert.match(failing.toString('latin1'), /postern_none/);
    assert.deepEqual(a.toServer.slice(4), [execute(), SYNC], 'the rest of the pipeline goes on for the server to skip');
    a.reply(encodeError({ severity: 'ERROR', code: '26000', message: 'prepared statement "postern_none" does not exist' }));
    a.reply(Z_IDLE);
    const err = decodeNotice(a.toClient[0] as Buffer);
    assert.equal(err.code, '0A000');
    assert.equal(err.message, 'cached plan must not change result type');
    assert.deepEqual(a.toClient.slice(1), [Z_IDLE]);
    assert.ok(a.rw.idle);
    // A new Parse of the same text is a new statement, prepared for real.
    a.toServer.length = 0;
    a.send(parse('t', SQL.sel));
    assert.notEqual(a.rw.serverName('t'), entry.name);
  });

  it('rejects frames whose names are not terminated inside the frame', () => {
    const t = rig();
    const bad = [
      new Writer().bytes(Buffer.from('portal-without-nul')).message(FE.Bind),
      new Writer().bytes(Buffer.from('name')).message(FE.Parse),
      new Writer().byte(0x53).message(FE.Describe),
      new Writer().byte(0x53).bytes(Buffer.from('x')).message(FE.Close),
    ];
    for (const f of bad) {
      // The NUL the reader would find belongs to the next frame in the chunk.
      const chunk = Buffer.concat([f, Buffer.from([0, 0, 0])]);
      assert.throws(() => t.rw.onClientFrame(f[0] as number, chunk, 0, f.length), ProtocolViolation);
    }
    assert.deepEqual(t.toServer, []);
  });

  it('evicts the least recently used statement with a Close whose answer is swallowed', () => {
    const t = rig(2);
    t.send(parse('a', SQL.sel));
    t.send(parse('b', SQL.div));
    t.send(bind('a', ['1'])); // a becomes most recently used
    t.send(parse('c', SQL.upd)); // evicts b
    const b = t.rw.serverName('b') as string;
    const close = closeMsg('S', b);
    assert.deepEqual(t.toServer.at(-2), close);
    assert.equal(t.server.evictions, 1);
    assert.deepEqual(t.server.names(), [t.rw.serverName('a'), t.rw.serverName('c')]);
    for (const f of [PC, PC, BC, new Writer().message(BE.CloseComplete), PC]) t.reply(f);
    assert.deepEqual(
      t.toClient.map((f) => String.fromCharCode(f[0] as number)),
      ['1', '1', '2', '1'],
    );
  });

  it('holds a frame that depends on an unanswered Parse of an earlier segment, with all input after it', () => {
    const t = rig();
    t.send(parse('a', SQL.sel));
    t.reply(PC);
    t.send(SYNC);
    t.reply(Z_IDLE);
    t.toServer.length = 0;
    t.toClient.length = 0;
    // 'b' is answered without the server (A has the text), but only once the Bind before it is: in the next segment it must wait.
    t.send(bind('unknown'));
    t.send(execute());
    t.send(parse('b', SQL.sel));
    t.send(SYNC);
    t.send(bind('b', ['1']));
    const data = copyData('after');
    t.rw.onClientBytes(data, 0, data.length);
    t.send(execute());
    t.send(SYNC);
    assert.ok(t.rw.holding);
    assert.equal(t.rw.holds, 1);
    assert.equal(t.rw.heldBytes, bind('b', ['1']).length + data.length + execute().length + SYNC.length);
    assert.deepEqual(t.toServer, [bind('unknown'), execute(), SYNC]);
    // The Bind fails: the server skips 'b's Parse, so 'b' does not exist and the held Bind goes out unchanged.
    t.reply(encodeError({ severity: 'ERROR', code: '26000', message: 'prepared statement "unknown" does not exist' }));
    assert.equal(t.rw.holding, false);
    assert.deepEqual(t.toServer.slice(3), [bind('b', ['1']), data, execute(), SYNC]);
    assert.equal(t.rw.serverName('b'), undefined);
    assert.deepEqual(
      t.toClient.map((f) => label(f)),
      ['E26000'],
    );
  });

  it('releases held input rewritten once the earlier Parse is answered', () => {
    const t = rig();
    t.send(parse('a', SQL.sel));
    t.reply(PC);
    t.send(SYNC);
    t.reply(Z_IDLE);
    t.toServer.length = 0;
    t.toClient.length = 0;
    t.send(parse('', SQL.div));
    t.send(parse('b', SQL.sel));
    t.send(SYNC);
    t.send(bind('b', ['1']));
    t.send(SYNC);
    assert.ok(t.rw.holding);
    t.reply(PC); // the unnamed Parse: now b's synthetic ParseComplete follows and the hold ends
    assert.equal(t.rw.holding, false);
    const name = t.rw.serverName('b') as string;
    assert.equal(name, t.rw.serverName('a'));
    assert.deepEqual(t.toServer, [parse('', SQL.div), SYNC, bind(name, ['1']), SYNC]);
    assert.deepEqual(t.toClient, [PC, PARSE_COMPLETE]);
    t.reply(Z_IDLE);
    t.reply(BC);
    t.reply(Z_IDLE);
    assert.ok(t.rw.idle);
  });

  it('passes asynchronous server frames through in order, whole', () => {
    const t = rig();
    t.send(parse('a', SQL.sel));
    const notice = encodeError({ severity: 'NOTICE', code: '00000', message: 'hello' });
    notice[0] = BE.NoticeResponse;
    for (const f of [notice, PC]) {
      assert.equal(PREPARED_SERVER_INSPECT[f[0] as number], 1);
      t.reply(f);
    }
    assert.deepEqual(t.toClient, [notice, PC]);
    // Nothing owed, but no Sync yet: the server holds an implicit transaction.
    assert.equal(t.rw.idle, false);
    t.send(SYNC);
    t.reply(Z_IDLE);
    assert.ok(t.rw.idle);
  });

  it('refuses to change servers while responses are owed', () => {
    const t = rig();
    t.send(parse('a', SQL.sel));
    assert.equal(t.rw.idle, false);
    assert.throws(() => t.rw.detach());
    assert.throws(() => t.rw.attach(new ServerStatements(5)));
    t.reply(PC);
    assert.equal(t.rw.idle, false, 'no Sync yet');
    assert.throws(() => t.rw.detach());
    t.send(SYNC);
    t.reply(Z_IDLE);
    assert.ok(t.rw.idle);
    t.rw.detach();
    assert.throws(() => t.send(SYNC), /no server attached/);
  });

  it('reset() after a lost server forgets unconfirmed statements', () => {
    const t = rig();
    t.send(parse('a', SQL.sel));
    t.rw.reset();
    assert.equal(t.rw.serverName('a'), undefined);
    assert.equal(t.server.size, 0);
    assert.equal(t.cache.size, 0);
  });

  it('forgetClient drops one name or all, and the cache follows the references', () => {
    const cache = new StatementCache();
    const t1 = rig(10, cache);
    const t2 = rig(10, cache);
    t1.send(parse('a', SQL.sel));
    t1.send(parse('b', SQL.div));
    t2.send(parse('z', SQL.sel));
    for (const t of [t1, t1, t2]) t.reply(PC);
    assert.equal(cache.size, 2);
    assert.equal(t1.rw.serverName('a'), t2.rw.serverName('z'));
    t1.rw.forgetClient('a');
    assert.equal(t1.rw.serverName('a'), undefined);
    assert.equal(t1.rw.statementCount, 1);
    t1.rw.forgetClient(null);
    assert.equal(t1.rw.usesNamedStatements, false);
    t1.server.clear();
    assert.equal(cache.size, 1, 'still held by the other client and its server');
    t2.rw.dispose();
    t2.server.clear();
    assert.equal(cache.size, 0);
  });
});

// ---------------------------------------------------------------- real PostgreSQL

const APP_USER = 'postern_app';
const APP_DB = 'appdb';
const WAIT_MS = 5_000;

/** A raw protocol connection logged in with trust auth. */
class RawConn {
  readonly socket: net.Socket;
  onFrame: (f: Buffer) => void = () => {};
  #buf: Buffer = Buffer.alloc(0);

  constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (chunk: Buffer) => {
      this.#buf = this.#buf.length === 0 ? chunk : Buffer.concat([this.#buf, chunk]);
      let off = 0;
      while (this.#buf.length - off >= 5) {
        const len = this.#buf.readInt32BE(off + 1);
        if (this.#buf.length - off < len + 1) break;
        const f = this.#buf.subarray(off, off + len + 1);
        off += len + 1;
        this.onFrame(f);
      }
      this.#buf = this.#buf.subarray(off);
    });
    socket.on('error', () => undefined);
  }

  static async open(port: number): Promise<RawConn> {
    const socket = net.connect(port, '127.0.0.1');
    await once(socket, 'connect');
    const c = new RawConn(socket);
    const ready = new Promise<void>((resolve, reject) => {
      c.onFrame = (f) => {
        if (f[0] === BE.ReadyForQuery) resolve();
        else if (f[0] === BE.ErrorResponse) reject(new Error(`login failed: ${decodeNotice(f).message}`));
        else if (f[0] === BE.Authentication && f.readInt32BE(5) !== 0) reject(new Error('server asked for a password'));
      };
    });
    socket.write(
      encodeStartup(PROTOCOL_3_0, [
        ['user', APP_USER],
        ['database', APP_DB],
      ]),
    );
    await ready;
    return c;
  }

  /** Terminate, and wait until the server has closed the connection. */
  async close(): Promise<void> {
    this.onFrame = () => {};
    if (this.socket.destroyed) return;
    const closed = once(this.socket, 'close');
    this.socket.end(TERMINATE);
    await closed;
  }
}

/** Resolves when `done()` holds; `poke()` re-checks. */
class Waiter {
  #pending: { done: () => boolean; resolve: () => void } | null = null;
  wait(done: () => boolean, what: () => string): Promise<void> {
    if (done()) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending = null;
        reject(new Error(`timed out waiting: ${what()}`));
      }, WAIT_MS);
      this.#pending = {
        done,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
    });
  }
  poke(): void {
    const p = this.#pending;
    if (p?.done()) {
      this.#pending = null;
      p.resolve();
    }
  }
}

/** Some frames arrive after the step's condition held (none should): let them land before comparing. */
function settle(): Promise<void> {
  return new Promise((r) => setTimeout(r, 20));
}

async function runReal(port: number, sc: Scenario): Promise<RunResult> {
  const cache = new StatementCache();
  const waiter = new Waiter();
  const servers: Record<ServerId, { conn: RawConn; stmts: ServerStatements; owner: SimClient | null; parses: number }> = {
    A: { conn: await RawConn.open(port), stmts: new ServerStatements(sc.max), owner: null, parses: 0 },
    B: { conn: await RawConn.open(port), stmts: new ServerStatements(sc.max), owner: null, parses: 0 },
  };
  for (const id of ['A', 'B'] as const) {
    const srv = servers[id];
    srv.conn.onFrame = (f) => {
      assert.ok(srv.owner !== null, `server ${id} answered with nobody attached: ${label(f)}`);
      routeServerFrame(srv.owner, f);
      waiter.poke();
    };
  }
  const clients: SimClient[] = [];
  try {
    for (const step of sc.steps) {
      const i = step.client ?? 0;
      let c = clients[i];
      if (c === undefined) {
        const me: SimClient = { rw: null as unknown as PreparedRewriter, seen: [], on: null };
        const sink: PreparedSink = {
          toServer: (buf, start, end) => {
            assert.ok(me.on !== null);
            const srv = servers[me.on];
            if (buf[start] === FE.Parse) srv.parses++;
            srv.conn.socket.write(Buffer.from(buf.subarray(start, end)));
          },
          toClient: (buf, start, end) => {
            if (!ignored(buf[start] as number)) me.seen.push(label(buf.subarray(start, end)));
          },
        };
        me.rw = new PreparedRewriter(cache, sink);
        clients[i] = me;
        c = me;
      }
      if (c.on !== step.on) {
        assert.equal(c.on, null, 'moved in the middle of a transaction');
        const srv = servers[step.on];
        assert.equal(srv.owner, null, `server ${step.on} is busy`);
        c.rw.attach(srv.stmts);
        srv.owner = c;
        c.on = step.on;
      }
      const srv = servers[step.on];
      const from = c.seen.length;
      for (const f of step.frames) routeClientFrame(c.rw, f);
      step.afterSend?.(c.rw, srv.stmts);
      const me = c;
      await waiter.wait(
        () => stepDone(step, me.seen.slice(from)),
        () => `${sc.name}: rewritten step got ${me.seen.slice(from).join(' ')}`,
      );
      await settle();
      if (releasable(c)) {
        c.rw.detach();
        srv.owner = null;
        c.on = null;
      }
    }
  } finally {
    await Promise.all([servers.A.conn.close(), servers.B.conn.close()]);
  }
  return {
    seen: clients.map((c) => c.seen),
    parsesTo: { A: servers.A.parses, B: servers.B.parses },
    servers: { A: servers.A.stmts, B: servers.B.stmts },
    cache,
    rewriters: clients.filter((c) => c !== undefined).map((c) => c.rw),
  };
}

/** The same client frames straight to one real connection per client. */
async function runRealDirect(port: number, sc: Scenario): Promise<string[][]> {
  const waiter = new Waiter();
  const conns: RawConn[] = [];
  const seen: string[][] = [];
  try {
    for (const step of sc.steps) {
      const i = step.client ?? 0;
      let conn = conns[i];
      if (conn === undefined) {
        conn = await RawConn.open(port);
        const mine: string[] = [];
        seen[i] = mine;
        conn.onFrame = (f) => {
          if (!ignored(f[0] as number)) mine.push(label(f));
          waiter.poke();
        };
        conns[i] = conn;
      }
      const mine = seen[i] as string[];
      const from = mine.length;
      conn.socket.write(Buffer.concat(step.frames));
      await waiter.wait(
        () => stepDone(step, mine.slice(from)),
        () => `${sc.name}: direct step got ${mine.slice(from).join(' ')}`,
      );
      await settle();
    }
  } finally {
    await Promise.all(conns.map((c) => c.close()));
  }
  return seen;
}

describe('prepared statements against a real PostgreSQL', () => {
  let cluster: PgCluster | undefined;
  before(async () => {
    cluster = await startPostgres({
      users: [{ name: APP_USER }],
      databases: [{ name: APP_DB, owner: APP_USER }],
      hba: ['host all all 127.0.0.1/32 trust'],
      settings: { max_connections: 50 },
    });
    await cluster.psql(SETUP, { db: APP_DB, user: APP_USER });
  });
  after(async () => {
    await cluster?.stop();
  });

  for (const sc of SCENARIOS) {
    it(sc.name, async () => {
      const port = (cluster as PgCluster).port;
      const direct = await runRealDirect(port, sc);
      // The model agrees with PostgreSQL, which is what makes the model runs above meaningful.
      assert.deepEqual(simulateDirect(sc), direct, 'model vs PostgreSQL');
      const r = await runReal(port, sc);
      assert.deepEqual(r.seen, direct, 'through the rewriter over two servers vs one server');
      sc.check?.(r);
      for (const rw of r.rewriters) assert.ok(rw.idle);
    });
  }
});
