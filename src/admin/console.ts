// The wire-protocol side of the admin console: a tiny PostgreSQL server that
// answers the simple and the extended query protocol (prepared statements,
// portals, row limits, error recovery at Sync) for admin commands. This module
// owns the message flow after login; what a command does is the executor's
// business (hooks.execute / hooks.describe).
// https://www.postgresql.org/docs/current/protocol-flow.html
// https://www.postgresql.org/docs/current/protocol-message-formats.html
//
// Where the protocol pages are silent, the behaviour follows PostgreSQL's
// src/backend/tcop/postgres.c, so that drivers see what they see from a server.

import { type ErrorSpec, encodeError, encodeNotice, encodeReadyForQuery } from '../protocol/backend.ts';
import { FE, TX } from '../protocol/codes.ts';
import { Reader } from '../protocol/reader.ts';
import { SQLSTATE } from '../protocol/sqlstate.ts';
import { ProtocolViolation, VIOLATION } from '../protocol/violation.ts';
import { AdminError, SYNTAX_ERROR, splitAdminStatements } from './commands.ts';
import {
  BIND_COMPLETE,
  type Cell,
  CLOSE_COMPLETE,
  type Column,
  EMPTY_QUERY_RESPONSE,
  encodeCommandComplete,
  encodeDataRow,
  encodeParameterDescription,
  encodeRowDescription,
  FORMAT,
  NO_DATA,
  PARSE_COMPLETE,
  PORTAL_SUSPENDED,
  UNSPECIFIED_PARAM_OID,
} from './encode.ts';

/** What the executor returns for one command. */
export interface AdminResult {
  /** The result set's columns; null for a command without one (only CommandComplete is sent). */
  columns: Column[] | null;
  rows: Cell[][];
  /** The CommandComplete tag, e.g. 'SHOW' or 'PAUSE'. */
  tag: string;
  /** Sent as NoticeResponse (severity NOTICE) before the result. */
  notices?: string[];
}

export interface AdminConsoleHooks {
  /**
   * Runs one statement. May throw (or reject with) AdminError, sent to the
   * client; any other failure is an internal error. A command that waits
   * (PAUSE, a snapshot gathered from other processes) returns a Promise:
   * the console then holds later frames until it settles.
   */
  execute: (sql: string) => AdminResult | Promise<AdminResult>;
  /** The columns one statement will return, null when it returns no rows. May throw AdminError. */
  describe: (sql: string) => Column[] | null;
  /** Sends bytes to the client. */
  write: (b: Buffer) => void;
  /** The client sent Terminate. */
  onTerminate: () => void;
  /** The client broke the protocol: the session sends FATAL and closes. */
  onFatal: (code: string, message: string) => void;
  /** An executor or console failure the client only sees as a generic XX000; for the log. */
  onInternalError?: (err: unknown) => void;
  /** Stop / restart reading from the client while a command is pending (backpressure). */
  pause?: () => void;
  resume?: () => void;
}

/** Thrown through the synchronous frame handlers when execute returned a Promise. */
class Suspend {
  readonly pending: Promise<AdminResult>;
  constructor(pending: Promise<AdminResult>) {
    this.pending = pending;
  }
}

/** A settled execute, kept while its frame is handled again (see #run). */
type Settled = { ok: true; value: AdminResult } | { ok: false; error: unknown };

// Caps on what one client can make the console hold. PostgreSQL has none,
// but a console client should not be able to grow the gateway's heap.
const MAX_STATEMENTS = 1_000;
const MAX_PORTALS = 1_000;
/** Total text of the stored prepared statements. */
const MAX_STATEMENT_TEXT = 1024 * 1024;
/** Extended-protocol output is written out once this much is pending, as PostgreSQL flushes a full send buffer. */
const FLUSH_AT = 64 * 1024;

/** 54000 program_limit_exceeded, for the caps above. */
const PROGRAM_LIMIT_EXCEEDED = '54000';
const INTERNAL_MESSAGE = 'internal error in the admin console';

const READY: Buffer = encodeReadyForQuery(TX.Idle);
const INTERNAL_ERROR: Buffer = encodeError({ severity: 'ERROR', code: SQLSTATE.InternalError, message: INTERNAL_MESSAGE });
const FUNCTION_CALL_ERROR: Buffer = encodeError({
  severity: 'ERROR',
  code: SQLSTATE.FeatureNotSupported,
  message: 'function calls are not supported by the admin console',
});

/** Describe and Close name a prepared statement or a portal with one byte. */
const TARGET = { Statement: 0x53, Portal: 0x50 } as const; // 'S', 'P'

const SELECT_TAG = /^SELECT \d+$/;

interface Statement {
  /** The one statement of the Parse text, without ';'; '' for an empty query. */
  sql: string;
  /** Parameter type OIDs as declared by Parse (0 = unspecified). */
  paramOids: number[];
  /** From hooks.describe at Parse time, as PostgreSQL analyzes a statement when it is parsed. */
  columns: Column[] | null;
}

interface Portal {
  stmt: Statement;
  /** Result-column format codes resolved by Bind; [] = all text. */
  formats: number[];
  /** The command's result, cached at the first Execute so it runs once per portal. */
  result: AdminResult | null;
  /** Next row to send. */
  next: number;
  /** A command without rows has run: PostgreSQL refuses to run such a portal again. */
  done: boolean;
}

function errorFrame(e: AdminError): Buffer {
  const spec: ErrorSpec = { severity: 'ERROR', code: e.sqlstate, message: e.message };
  if (e.detail !== undefined) spec.detail = e.detail;
  return encodeError(spec);
}

function noticeFrame(message: string): Buffer {
  // 00000 successful_completion: PostgreSQL's code for a NOTICE raised without one.
  return encodeNotice({ severity: 'NOTICE', code: '00000', message });
}

function malformed(message: string): ProtocolViolation {
  return new ProtocolViolation(VIOLATION.Malformed, message);
}

/** Fails unless the body was consumed exactly (PostgreSQL's pq_getmsgend). */
function done(r: Reader): void {
  if (r.remaining !== 0) throw malformed('invalid message format');
}

/** Counts on the wire are Int16 that PostgreSQL reads unsigned (pq_getmsgint(msg, 2)). */
function count(r: Reader): number {
  return r.int16() & 0xffff;
}

/** The format codes a Bind carries (PostgreSQL checks them when it sends, we check them at Bind). */
function checkFormat(f: number): void {
  if (f !== FORMAT.Text && f !== FORMAT.Binary) throw new AdminError('22023', `unsupported format code: ${f}`);
}

export class AdminConsole {
  #hooks: AdminConsoleHooks;
  #statements = new Map<string, Statement>();
  #statementText = 0;
  #portals = new Map<string, Portal>();
  /** After an error in an extended-protocol message: discard messages until Sync. */
  #skipping = false;
  #out: Buffer[] = [];
  #outBytes = 0;
  #closed = false;
  /**
   * Asynchronous commands: the frame that started one is handled again once
   * it settled, with the settled results of that frame's executes replayed in
   * order (#run), and the frames that arrived meanwhile wait in #queue. The
   * handlers stay synchronous and run every step of a frame exactly once in
   * its effect: output queued before the suspension is discarded.
   */
  #settled: Settled[] = [];
  #settledNext = 0;
  #queue: Array<{ type: number; frame: Buffer }> | null = null;

  constructor(hooks: AdminConsoleHooks) {
    this.#hooks = hooks;
  }

  /**
   * One client frame, whole: type byte and length included, buf[start..end).
   * Never throws; a malformed frame ends in hooks.onFatal.
   */
  onFrame(type: number, buf: Buffer, start: number, end: number): void {
    if (this.#closed) return;
    if (this.#queue !== null) {
      // A command is pending: keep a copy (the caller's buffer is reused).
      this.#queue.push({ type, frame: Buffer.from(buf.subarray(start, end)) });
      return;
    }
    this.#handle(type, buf, start, end);
  }

  /** Handles one frame; false when it suspended on a pending command. */
  #handle(type: number, buf: Buffer, start: number, end: number): boolean {
    const outMark = this.#out.length;
    const bytesMark = this.#outBytes;
    this.#settledNext = 0;
    try {
      this.#frame(type, buf, start, end);
    } catch (e) {
      if (!(e instanceof Suspend)) throw e;
      // Drop what this attempt queued; the replay queues it again.
      this.#out.length = outMark;
      this.#outBytes = bytesMark;
      this.#suspend(e.pending, type, Buffer.from(buf.subarray(start, end)));
      return false;
    }
    this.#settled = [];
    return true;
  }

  #suspend(pending: Promise<AdminResult>, type: number, frame: Buffer): void {
    this.#queue ??= [];
    this.#hooks.pause?.();
    pending
      .then(
        (value): Settled => ({ ok: true, value }),
        (error: unknown): Settled => ({ ok: false, error }),
      )
      .then((s) => {
        if (this.#closed) return;
        this.#settled.push(s);
        if (!this.#handle(type, frame, 0, frame.length)) return;
        // Frames that waited, in order, until one suspends again.
        const queue = this.#queue ?? [];
        this.#queue = null;
        while (queue.length > 0 && !this.#closed) {
          const next = queue.shift() as { type: number; frame: Buffer };
          if (!this.#handle(next.type, next.frame, 0, next.frame.length)) {
            this.#queue = [...queue, ...(this.#queue ?? [])];
            return;
          }
        }
        this.#hooks.resume?.();
      })
      .catch((e: unknown) => {
        this.#report(e);
        this.#fatal(SQLSTATE.InternalError, INTERNAL_MESSAGE);
      });
  }

  /** hooks.execute, with the results of an earlier attempt at this frame replayed in order. */
  #run(sql: string): AdminResult {
    const i = this.#settledNext++;
    const s = this.#settled[i];
    if (s !== undefined) {
      if (s.ok) return s.value;
      throw s.error;
    }
    const r = this.#hooks.execute(sql);
    if (r instanceof Promise) throw new Suspend(r);
    this.#settled.push({ ok: true, value: r });
    return r;
  }

  #frame(type: number, buf: Buffer, start: number, end: number): void {
    try {
      if (
        !Number.isInteger(start) ||
        !Number.isInteger(end) ||
        start < 0 ||
        end > buf.length ||
        end - start < 5 ||
        buf[start] !== type ||
        buf.readInt32BE(start + 1) !== end - start - 1
      ) {
        throw malformed('invalid message format');
      }
      this.#dispatch(type, new Reader(buf, start + 5, end));
    } catch (e) {
      if (e instanceof Suspend) throw e;
      if (this.#closed) return;
      if (e instanceof ProtocolViolation) this.#fatal(SQLSTATE.ProtocolViolation, e.message);
      else {
        this.#report(e);
        this.#fatal(SQLSTATE.InternalError, INTERNAL_MESSAGE);
      }
    }
  }

  /** Drops every statement, portal and pending byte; later frames are ignored. */
  close(): void {
    this.#closed = true;
    this.#queue = null;
    this.#settled = [];
    this.#statements.clear();
    this.#statementText = 0;
    this.#portals.clear();
    this.#out = [];
    this.#outBytes = 0;
  }

  #dispatch(type: number, r: Reader): void {
    if (this.#skipping) {
      // postgres.c reads and drops every message until Sync; Sync and
      // Terminate end the skipping, and a bad type byte is still fatal.
      if (type === FE.Sync) this.#sync(r);
      else if (type === FE.Terminate) this.#terminate();
      else if (!isKnownAfterLogin(type)) throw malformed(`invalid frontend message type ${type}`);
      return;
    }
    switch (type) {
      case FE.Query:
        this.#query(r);
        return;
      case FE.Parse:
      case FE.Bind:
      case FE.Describe:
      case FE.Execute:
      case FE.Close:
        this.#extended(type, r);
        return;
      case FE.Sync:
        this.#sync(r);
        return;
      case FE.Flush:
        done(r);
        this.#flush();
        return;
      case FE.FunctionCall:
        // Function calls end their implicit transaction like a Query does.
        this.#portals.clear();
        this.#push(FUNCTION_CALL_ERROR);
        this.#push(READY);
        this.#flush();
        return;
      case FE.CopyData:
      case FE.CopyDone:
      case FE.CopyFail:
        // Outside COPY these are dropped: "any subsequent CopyData, CopyDone,
        // or CopyFail messages issued by the frontend will simply be dropped"
        // (https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-COPY).
        return;
      case FE.Terminate:
        this.#terminate();
        return;
      default:
        // PasswordMessage after login included: postgres.c treats any other
        // type as lost message sync and ends the session.
        throw malformed(`invalid frontend message type ${type}`);
    }
  }

  // ------------------------------------------------------------ simple query

  // https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-SIMPLE-QUERY
  #query(r: Reader): void {
    const text = r.cstring();
    done(r);
    // exec_simple_query drops the unnamed statement, and the end of its
    // implicit transaction drops every portal.
    this.#dropStatement('');
    this.#portals.clear();
    let sqls: string[] | null;
    try {
      sqls = splitAdminStatements(text);
    } catch (e) {
      this.#push(this.#errorOf(e));
      sqls = null;
    }
    if (sqls !== null && sqls.length === 0) this.#push(EMPTY_QUERY_RESPONSE);
    for (const sql of sqls ?? []) {
      const ok = this.#runSimple(sql);
      if (this.#closed) return;
      // An error ends the Query: the statements after it are not run.
      if (!ok) break;
    }
    this.#push(READY);
    this.#flush();
  }

  /** Queues one statement's whole answer in text format, or its ErrorResponse; false on error. */
  #runSimple(sql: string): boolean {
    const frames: Buffer[] = [];
    let ok = true;
    try {
      const res = this.#run(sql);
      for (const n of res.notices ?? []) frames.push(noticeFrame(n));
      if (res.columns !== null) {
        frames.push(encodeRowDescription(res.columns));
        for (const row of res.rows) frames.push(encodeDataRow(row, res.columns));
      }
      frames.push(encodeCommandComplete(res.tag));
    } catch (e) {
      if (e instanceof Suspend) throw e;
      // Nothing of a failed statement is sent but its error.
      frames.length = 0;
      frames.push(this.#errorOf(e));
      ok = false;
    }
    for (const f of frames) this.#push(f);
    return ok;
  }

  // ------------------------------------------------------------ extended query

  // https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY
  #extended(type: number, r: Reader): void {
    try {
      switch (type) {
        case FE.Parse:
          this.#parse(r);
          break;
        case FE.Bind:
          this.#bind(r);
          break;
        case FE.Describe:
          this.#describe(r);
          break;
        case FE.Execute:
          this.#execute(r);
          break;
        default:
          this.#close(r);
      }
    } catch (e) {
      if (e instanceof ProtocolViolation || e instanceof Suspend || this.#closed) throw e;
      // "When an error is detected while processing any extended-query
      // message, the backend issues ErrorResponse, then reads and discards
      // messages until a Sync is reached." PostgreSQL flushes an error at
      // once (elog.c), so a client waiting without Sync or Flush still sees it.
      this.#push(this.#errorOf(e));
      this.#skipping = true;
      this.#flush();
      return;
    }
    if (this.#outBytes >= FLUSH_AT) this.#flush();
  }

  #parse(r: Reader): void {
    const name = r.cstring();
    const text = r.cstring();
    const n = count(r);
    const paramOids: number[] = new Array(n);
    for (let i = 0; i < n; i++) paramOids[i] = r.int32() >>> 0;
    done(r);
    // exec_parse_message forgets the unnamed statement before parsing, so a
    // failed Parse leaves none behind.
    if (name === '') this.#dropStatement('');
    const sqls = splitAdminStatements(text);
    if (sqls.length > 1) throw new AdminError(SYNTAX_ERROR, 'cannot insert multiple commands into a prepared statement');
    const sql = sqls[0] ?? '';
    const columns = sql === '' ? null : this.#hooks.describe(sql);
    if (this.#closed) return;
    if (this.#statements.has(name)) throw new AdminError('42P05', `prepared statement "${name}" already exists`);
    if (this.#statements.size >= MAX_STATEMENTS) {
      throw new AdminError(PROGRAM_LIMIT_EXCEEDED, `too many prepared statements in the admin console (limit ${MAX_STATEMENTS})`);
    }
    if (this.#statementText + sql.length > MAX_STATEMENT_TEXT) {
      throw new AdminError(PROGRAM_LIMIT_EXCEEDED, 'too much prepared statement text in the admin console');
    }
    this.#statements.set(name, { sql, paramOids, columns });
    this.#statementText += sql.length;
    this.#push(PARSE_COMPLETE);
  }

  #bind(r: Reader): void {
    const portalName = r.cstring();
    const stmtName = r.cstring();
    const nParamFormats = count(r);
    const paramFormats: number[] = new Array(nParamFormats);
    for (let i = 0; i < nParamFormats; i++) paramFormats[i] = r.int16();
    const nParams = count(r);
    const nulls: boolean[] = new Array(nParams);
    for (let i = 0; i < nParams; i++) {
      const len = r.int32();
      if (len < -1) throw new ProtocolViolation(VIOLATION.BadLength, 'invalid parameter length in Bind message');
      nulls[i] = len === -1;
      // Admin commands take no parameters: the values are read past, not kept.
      if (len > 0) r.bytes(len);
    }
    const nResultFormats = count(r);
    const resultFormats: number[] = new Array(nResultFormats);
    for (let i = 0; i < nResultFormats; i++) resultFormats[i] = r.int16();
    done(r);

    const stmt = this.#statement(stmtName);
    if (nParamFormats > 1 && nParamFormats !== nParams) {
      throw new AdminError(SQLSTATE.ProtocolViolation, `bind message has ${nParamFormats} parameter formats but ${nParams} parameters`);
    }
    if (nParams !== stmt.paramOids.length) {
      throw new AdminError(
        SQLSTATE.ProtocolViolation,
        `bind message supplies ${nParams} parameters, but prepared statement "${stmtName}" requires ${stmt.paramOids.length}`,
      );
    }
    for (let i = 0; i < nParams; i++) if (!nulls[i]) checkFormat(paramFormats[nParamFormats === 1 ? 0 : i] ?? FORMAT.Text);
    const formats = resolveFormats(resultFormats, stmt.columns);

    // The unnamed portal is replaced silently; a named one must be new.
    if (portalName !== '' && this.#portals.has(portalName)) throw new AdminError('42P03', `cursor "${portalName}" already exists`);
    if (!this.#portals.has(portalName) && this.#portals.size >= MAX_PORTALS) {
      throw new AdminError(PROGRAM_LIMIT_EXCEEDED, `too many portals in the admin console (limit ${MAX_PORTALS})`);
    }
    this.#portals.set(portalName, { stmt, formats, result: null, next: 0, done: false });
    this.#push(BIND_COMPLETE);
  }

  #describe(r: Reader): void {
    const target = r.byte();
    const name = r.cstring();
    done(r);
    if (target === TARGET.Statement) {
      const stmt = this.#statement(name);
      this.#push(encodeParameterDescription(stmt.paramOids.map((oid) => (oid === 0 ? UNSPECIFIED_PARAM_OID : oid))));
      this.#push(stmt.columns === null ? NO_DATA : encodeRowDescription(stmt.columns));
    } else if (target === TARGET.Portal) {
      const portal = this.#portal(name);
      const columns = portal.stmt.columns;
      this.#push(columns === null ? NO_DATA : encodeRowDescription(columns, portal.formats));
    } else {
      throw new AdminError(SQLSTATE.ProtocolViolation, `invalid DESCRIBE message subtype ${target}`);
    }
  }

  #execute(r: Reader): void {
    const name = r.cstring();
    const maxRows = r.int32();
    done(r);
    const portal = this.#portal(name);
    // exec_execute_message: "If the original query was a null string, just
    // return EmptyQueryResponse", every time.
    if (portal.stmt.sql === '') {
      this.#push(EMPTY_QUERY_RESPONSE);
      return;
    }
    let res = portal.result;
    if (res === null) {
      if (portal.done) throw new AdminError('55000', `portal "${name}" cannot be run`);
      res = this.#run(portal.stmt.sql);
      if (this.#closed) return;
      portal.result = res;
      for (const n of res.notices ?? []) this.#push(noticeFrame(n));
    }
    if (res.columns === null) {
      // PostgreSQL marks such a portal done; a second Execute is an error.
      portal.result = null;
      portal.done = true;
      this.#push(encodeCommandComplete(res.tag));
      return;
    }
    const from = portal.next;
    const to = maxRows > 0 ? Math.min(res.rows.length, from + maxRows) : res.rows.length;
    const frames: Buffer[] = [];
    for (let i = from; i < to; i++) {
      try {
        frames.push(encodeDataRow(res.rows[i] as Cell[], res.columns, portal.formats));
      } catch (e) {
        if (!(e instanceof RangeError)) throw e;
        // 22P03 invalid_binary_representation: the value has no binary form in its column type.
        throw new AdminError('22P03', e.message);
      }
    }
    for (const f of frames) this.#push(f);
    portal.next = to;
    const sent = to - from;
    // As from a tuplestore in PostgreSQL: a fetch that filled maxRows suspends
    // even when nothing is left, and the next Execute completes with 0 rows.
    if (maxRows > 0 && sent === maxRows) {
      this.#push(PORTAL_SUSPENDED);
      return;
    }
    // A SELECT tag counts the rows of this Execute, not of the whole result.
    const whole = from === 0 && to === res.rows.length;
    this.#push(encodeCommandComplete(!whole && SELECT_TAG.test(res.tag) ? `SELECT ${sent}` : res.tag));
  }

  #close(r: Reader): void {
    const target = r.byte();
    const name = r.cstring();
    done(r);
    // "It is not an error to issue Close against a nonexistent statement or
    // portal name" (protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY).
    if (target === TARGET.Statement) this.#dropStatement(name);
    else if (target === TARGET.Portal) this.#portals.delete(name);
    else throw new AdminError(SQLSTATE.ProtocolViolation, `invalid CLOSE message subtype ${target}`);
    this.#push(CLOSE_COMPLETE);
  }

  #sync(r: Reader): void {
    done(r);
    this.#skipping = false;
    // Sync ends the implicit transaction, and with it every portal; named
    // statements live on.
    this.#portals.clear();
    this.#push(READY);
    this.#flush();
  }

  #terminate(): void {
    this.close();
    this.#hooks.onTerminate();
  }

  // ------------------------------------------------------------ helpers

  #statement(name: string): Statement {
    const stmt = this.#statements.get(name);
    if (stmt !== undefined) return stmt;
    // 26000 invalid_sql_statement_name; postgres.c words the unnamed case apart.
    throw new AdminError(
      '26000',
      name === '' ? 'unnamed prepared statement does not exist' : `prepared statement "${name}" does not exist`,
    );
  }

  #portal(name: string): Portal {
    const portal = this.#portals.get(name);
    if (portal !== undefined) return portal;
    // 34000 invalid_cursor_name
    throw new AdminError('34000', `portal "${name}" does not exist`);
  }

  #dropStatement(name: string): void {
    const stmt = this.#statements.get(name);
    if (stmt === undefined) return;
    this.#statements.delete(name);
    this.#statementText -= stmt.sql.length;
  }

  /** The ErrorResponse for a failure: AdminError as it is, anything else generic (its text may hold internals). */
  #errorOf(e: unknown): Buffer {
    if (e instanceof AdminError) return errorFrame(e);
    this.#report(e);
    return INTERNAL_ERROR;
  }

  #report(e: unknown): void {
    try {
      this.#hooks.onInternalError?.(e);
    } catch {
      // A failing logger must not take the console down with it.
    }
  }

  #fatal(code: string, message: string): void {
    this.close();
    try {
      this.#hooks.onFatal(code, message);
    } catch (e) {
      this.#report(e);
    }
  }

  #push(b: Buffer): void {
    this.#out.push(b);
    this.#outBytes += b.length;
  }

  /** Writes everything pending with one write(): small frames are corked together (DESIGN rule 9). */
  #flush(): void {
    if (this.#outBytes === 0 || this.#closed) return;
    const out = this.#out.length === 1 ? (this.#out[0] as Buffer) : Buffer.concat(this.#out, this.#outBytes);
    this.#out = [];
    this.#outBytes = 0;
    this.#hooks.write(out);
  }
}

/**
 * Bind's result-column format codes against the statement's columns: none
 * means all text, one applies to every column, otherwise one per column.
 */
function resolveFormats(codes: readonly number[], columns: readonly Column[] | null): number[] {
  for (const f of codes) checkFormat(f);
  // PortalSetResultFormat ignores the codes of a portal that returns no rows.
  if (columns === null || codes.length === 0) return [];
  if (codes.length === 1) return new Array<number>(columns.length).fill(codes[0] as number);
  if (codes.length !== columns.length) {
    throw new AdminError(
      SQLSTATE.ProtocolViolation,
      `bind message has ${codes.length} result formats but query has ${columns.length} columns`,
    );
  }
  return [...codes];
}

/** The frontend types postgres.c accepts after login ('p' is not one of them). */
function isKnownAfterLogin(type: number): boolean {
  switch (type) {
    case FE.Query:
    case FE.Parse:
    case FE.Bind:
    case FE.Describe:
    case FE.Execute:
    case FE.Close:
    case FE.Sync:
    case FE.Flush:
    case FE.FunctionCall:
    case FE.CopyData:
    case FE.CopyDone:
    case FE.CopyFail:
    case FE.Terminate:
      return true;
    default:
      return false;
  }
}
