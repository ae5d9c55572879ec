// Named prepared statements across pooled server connections (transaction and
// statement pooling), done at the protocol level. Owns:
//   - StatementCache: one per process. (query text + parameter type OIDs) ->
//     one server-side statement name (`postern_s<n>`), refcounted so the cache
//     forgets statements nobody holds any more.
//   - ServerStatements: one per server connection. The statements prepared
//     there, least recently used first, capped by max_prepared_statements.
//   - PreparedRewriter: one per client session. Client statement name ->
//     cache entry, the rewriting of Parse/Bind/Describe/Close, Parses injected
//     where the client lands on a server that lacks its statement, and the
//     queue of responses still owed, so that synthetic ParseComplete /
//     CloseComplete frames reach the client exactly where a single real server
//     would have put them, and injected Parses' answers never reach it.
//
// Extended query flow and error recovery ("discard until Sync"):
// https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY
// Message layouts: https://www.postgresql.org/docs/current/protocol-message-formats.html
//
// Choices worth knowing:
//   - Bind / Describe('S') naming a statement the client never prepared (or
//     whose Parse failed) go to the server with the client's name unchanged, so
//     the server itself answers 26000 "prepared statement ... does not exist"
//     at the right position, with the right transaction effects. Postern never
//     creates server statements under client names, so nothing can match.
//   - Close('S') never reaches the server (others may share the statement); it
//     is answered with a synthetic CloseComplete, also for unknown names (Postgres
//     does not treat closing a nonexistent statement as an error).
//   - Parse of a name the client already has: Postgres answers 42P05 and skips
//     to Sync. Postern makes the server do exactly that (so the implicit
//     transaction is rolled back as it would be) by re-sending the existing
//     server statement's own Parse, and renames the statement in the message.
//   - State is tracked optimistically (a forwarded Parse counts as prepared at
//     once, so later frames of the same pipeline rely on it) and rolled back
//     when the server skips or rejects the request. Within one Sync segment
//     that is exact: whatever depends on a skipped request is skipped too. A
//     frame in a later segment that depends on a Parse/Close not yet answered
//     is held back (with all client input after it) until that answer arrives,
//     since an error could still make the server skip the earlier request.
//     Likewise a Parse answered without the server needs the transaction status
//     (an aborted block refuses every Parse with 25P02; then the Parse is sent
//     so the server refuses it): with a ReadyForQuery still owed it waits for it.
//     Pipelining clients rarely hit this; when they do it costs one round trip.
//   - Known differences from a single server, both about requests that fail
//     anyway: a re-Parse of an existing name whose new SQL is itself invalid
//     reports 42P05, not the syntax error (sending the new SQL under the shared
//     server name is the alternative, and would replace the shared statement if
//     the bookkeeping were ever wrong); and Describe('S') of a statement that
//     returns no rows, inside an aborted block, on a server that lacks it,
//     answers 25P02 (the injected Parse is refused) where Postgres describes it.
//   - Unnamed statements and portals pass through: they do not outlive a
//     transaction on another server, as with any transaction pooler.

import { decodeNotice } from '../protocol/backend.ts';
import { BE, FE, TX, typeTable } from '../protocol/codes.ts';
import { ProtocolViolation, VIOLATION } from '../protocol/violation.ts';
import { Writer } from '../protocol/writer.ts';

/** Synthetic answers, built once. */
export const PARSE_COMPLETE: Buffer = new Writer().message(BE.ParseComplete);
export const CLOSE_COMPLETE: Buffer = new Writer().message(BE.CloseComplete);

/**
 * Client frames the rewriter must see whole, in order, from the moment a
 * pooled session starts (everything that earns a response, and the ends of
 * COPY). The bytes of all other frames go through onClientBytes, which passes
 * them straight on unless input is being held back.
 */
export const PREPARED_CLIENT_INSPECT: Uint8Array = typeTable([
  FE.Parse,
  FE.Bind,
  FE.Describe,
  FE.Execute,
  FE.Close,
  FE.Sync,
  FE.Query,
  FE.FunctionCall,
  FE.CopyDone,
  FE.CopyFail,
]);

/**
 * Server frames the rewriter must see whole: the ones that complete a request,
 * errors and CopyInResponse; and the asynchronous ones (notices, notifications,
 * parameter changes). A synthetic answer may be written while nothing is owed
 * (a Parse the server has, after a Flush): receiving those whole guarantees it
 * can never land inside a frame that was half forwarded. Every other frame
 * arrives only while a request is owed, when no synthetic answer is written.
 */
export const PREPARED_SERVER_INSPECT: Uint8Array = typeTable([
  BE.NoticeResponse,
  BE.NotificationResponse,
  BE.ParameterStatus,
  BE.ParseComplete,
  BE.BindComplete,
  BE.CloseComplete,
  BE.CommandComplete,
  BE.EmptyQueryResponse,
  BE.PortalSuspended,
  BE.ErrorResponse,
  BE.ReadyForQuery,
  BE.NoData,
  BE.RowDescription,
  BE.CopyInResponse,
]);

const STATEMENT_PREFIX = 'postern_s';
/** Process-wide, so two caches (tests) can never hand out the same server name. */
let nextStatementId = 1;
const BYTE_S = 0x53; // 'S': Describe/Close target is a statement

/** Index of the NUL ending the string that starts at `from`; the NUL must lie inside the frame. */
function nulAt(buf: Buffer, from: number, end: number): number {
  const i = from < end ? buf.indexOf(0, from) : -1;
  if (i < 0 || i >= end) throw new ProtocolViolation(VIOLATION.Malformed, 'string is not terminated inside its message');
  return i;
}

/** One server-side statement, shared by every client that prepares the same text and types. */
export class CachedStatement {
  /** Server-side name. */
  readonly name: string;
  /** Query text + parameter types, exactly as sent (latin1, so byte-exact). */
  readonly key: string;
  /** Parse under the server-side name: forwarded for the first client, injected elsewhere. */
  readonly parse: Buffer;
  /** Describe('S') under the server-side name. */
  readonly describe: Buffer;
  /** Close('S') under the server-side name, for evictions. */
  readonly close: Buffer;
  /** The server-side name with its NUL, spliced into Bind frames. */
  readonly nameZ: Buffer;
  #refs = 0;
  #owner: Map<string, CachedStatement>;

  constructor(owner: Map<string, CachedStatement>, key: string, body: Buffer) {
    this.#owner = owner;
    this.key = key;
    this.name = `${STATEMENT_PREFIX}${nextStatementId++}`;
    this.parse = new Writer().cstring(this.name).bytes(body).message(FE.Parse);
    this.describe = new Writer().byte(BYTE_S).cstring(this.name).message(FE.Describe);
    this.close = new Writer().byte(BYTE_S).cstring(this.name).message(FE.Close);
    this.nameZ = Buffer.from(`${this.name}\0`, 'latin1');
  }

  /** Holders: client mappings, server connections that have it prepared, queued requests. */
  get refs(): number {
    return this.#refs;
  }

  ref(): void {
    this.#refs++;
  }

  unref(): void {
    // Nobody can reach it through a name any more: a later Parse of the same
    // text gets a fresh entry (and name), so the cache cannot grow without bound.
    if (--this.#refs === 0 && this.#owner.get(this.key) === this) this.#owner.delete(this.key);
  }
}

/** The process-wide statement cache. */
export class StatementCache {
  #byKey = new Map<string, CachedStatement>();

  get size(): number {
    return this.#byKey.size;
  }

  /** The entry for the Parse body bytes [from, end) after the statement name. The caller must ref() it. */
  intern(buf: Buffer, from: number, end: number): CachedStatement {
    const key = buf.toString('latin1', from, end);
    let e = this.#byKey.get(key);
    if (e === undefined) {
      e = new CachedStatement(this.#byKey, key, buf.subarray(from, end));
      this.#byKey.set(key, e);
    }
    return e;
  }

  /** Snapshot for admin views and tests. */
  entries(): CachedStatement[] {
    return [...this.#byKey.values()];
  }
}

/**
 * Statements prepared on one server connection, least recently used first.
 * Holds a ref on each, so call clear() when the connection closes, and when
 * its statements are gone (DISCARD ALL / DEALLOCATE ALL ran on it).
 */
export class ServerStatements {
  /** Insertion order is recency: first = least recently used. Value: the token of the add. */
  #lru = new Map<CachedStatement, number>();
  #max: number;
  #nextToken = 1;
  /** Parses sent to this server (forwarded or injected). */
  prepares = 0;
  /** Close('S') sent to make room. */
  evictions = 0;

  constructor(max: number) {
    this.#max = ServerStatements.#clamp(max);
  }

  static #clamp(max: number): number {
    // 0 means "feature off" to the session; here at least one must fit.
    return Number.isFinite(max) && max >= 1 ? Math.floor(max) : 1;
  }

  get max(): number {
    return this.#max;
  }

  /** A lower cap takes effect at the next prepare (excess is evicted then). */
  set max(v: number) {
    this.#max = ServerStatements.#clamp(v);
  }

  get size(): number {
    return this.#lru.size;
  }

  has(e: CachedStatement): boolean {
    return this.#lru.has(e);
  }

  /** Marks e most recently used; false when it is not prepared here. */
  use(e: CachedStatement): boolean {
    const t = this.#lru.get(e);
    if (t === undefined) return false;
    this.#lru.delete(e);
    this.#lru.set(e, t);
    return true;
  }

  /** Statements from least to most recently used. */
  leastRecentlyUsed(): IterableIterator<CachedStatement> {
    return this.#lru.keys();
  }

  /** Records e as prepared; the token lets a rollback remove exactly this addition. */
  add(e: CachedStatement): number {
    const t = this.#nextToken++;
    this.#lru.set(e, t);
    e.ref();
    return t;
  }

  /** Forgets e; returns the token it was added with (0 when absent). */
  remove(e: CachedStatement): number {
    const t = this.#lru.get(e);
    if (t === undefined) return 0;
    this.#lru.delete(e);
    e.unref();
    return t;
  }

  /** Rollback of add(): the Parse never ran. */
  undoAdd(e: CachedStatement, token: number): void {
    if (this.#lru.get(e) === token) {
      this.#lru.delete(e);
      e.unref();
    }
  }

  /** Rollback of remove(): the Close never ran, the statement is still there. */
  restore(e: CachedStatement, token: number): void {
    if (token !== 0 && !this.#lru.has(e)) {
      this.#lru.set(e, token);
      e.ref();
    }
  }

  /** The server has none of Postern's statements any more (or is going away). */
  clear(): void {
    for (const e of this.#lru.keys()) e.unref();
    this.#lru.clear();
  }

  /** Server-side names, least recently used first (admin views, tests). */
  names(): string[] {
    return [...this.#lru.keys()].map((e) => e.name);
  }
}

/** Where the rewriter's output goes; both calls keep the order they are made in. */
export interface PreparedSink {
  /** Bytes [start, end) of buf to the server: a view of the client's frame or a frame Postern built (never mutate either). */
  toServer(buf: Buffer, start: number, end: number): void;
  /** Bytes [start, end) of buf to the client: a view of the server's frame or a constant synthetic frame. */
  toClient(buf: Buffer, start: number, end: number): void;
}

/** What each queued request expects back. */
const K = {
  /** Expects nothing (a Sync the server ignores during copy-in, a used COPY end marker). */
  Free: 0,
  /** The client's CopyDone/CopyFail: where a copy-in ends, to know which Syncs the server ignored. */
  CopyEnd: 1,
  /** Client's unnamed Parse, forwarded: ParseComplete to the client. */
  Parse: 2,
  /** Client's named Parse, forwarded under the server name: ParseComplete to the client. */
  ParseNamed: 3,
  /** Postern's Parse: its ParseComplete is swallowed. */
  ParseInjected: 4,
  /** Client's named Parse the server already has: synthetic ParseComplete in its turn. */
  ParseSynthetic: 5,
  /** Client re-Parsed a name it has: the server is made to answer 42P05. */
  ParseDuplicate: 6,
  Bind: 7,
  /** Describe('S' or 'P'): ends with RowDescription or NoData. */
  Describe: 8,
  /** Execute: ends with CommandComplete, EmptyQueryResponse or PortalSuspended. */
  Execute: 9,
  /** Client's Close of a portal or of the unnamed statement, forwarded. */
  Close: 10,
  /** Postern's Close making room: its CloseComplete is swallowed. */
  CloseEvict: 11,
  /** Client's Close('S', name): synthetic CloseComplete in its turn. */
  CloseSynthetic: 12,
  /** Sync, Query, FunctionCall: end with ReadyForQuery. */
  Sync: 13,
  Query: 14,
  FunctionCall: 15,
  /**
   * Client's named Parse the server already has, sent anyway because the
   * transaction is aborted: Postgres refuses any Parse there (25P02), and only
   * the server can refuse it at the right position with the right effects.
   */
  ParseAborted: 16,
} as const;
type Kind = (typeof K)[keyof typeof K];

/** Kinds that end with ReadyForQuery (an error inside them does not skip to Sync). */
function endsWithReady(k: number): boolean {
  return k === K.Sync || k === K.Query || k === K.FunctionCall;
}

/** A Parse or Close whose outcome the server has not reported yet. */
interface Pending {
  /** Its position in the queue's history (see #pushed / #popped). */
  seq: number;
  /** The Sync-delimited segment it belongs to. */
  segment: number;
}

/** A client frame (type >= 0) or a run of bytes (-1) held back, copied. */
interface Held {
  type: number;
  buf: Buffer;
}

export class PreparedRewriter {
  #cache: StatementCache;
  #sink: PreparedSink;
  #server: ServerStatements | null = null;
  /** Client statement name (latin1 of its bytes) -> entry. Predicted state: includes requests still in flight. */
  #names = new Map<string, CachedStatement>();

  // Queue of owed responses: a ring of parallel arrays, so queuing allocates nothing.
  #kind = new Uint8Array(16);
  #entry: (CachedStatement | null)[] = new Array(16).fill(null);
  #name: (string | null)[] = new Array(16).fill(null);
  #token = new Float64Array(16);
  #head = 0;
  #count = 0;
  /** Requests ever queued / ever answered (or dropped): the head's sequence number is #popped. */
  #pushed = 0;
  #popped = 0;
  /** Syncs queued so far: the server's error recovery never crosses one. */
  #segment = 0;
  /** Queued requests that end with ReadyForQuery, and the newest one's sequence number. */
  #boundaries = 0;
  #lastBoundary = -1;
  /** Transaction status of the last ReadyForQuery: exact while #boundaries is 0. */
  #txStatus: number = TX.Idle;

  /**
   * Unresolved Parse/Close per client name, and unresolved Parse/evicting Close
   * per statement on the server. A frame in a later segment that depends on one
   * of them cannot be rewritten yet: if an error makes the server skip the
   * earlier request, Postgres would treat the later frame differently.
   */
  #pendingNames = new Map<string, Pending>();
  #pendingServer = new Map<CachedStatement, Pending>();
  /** Client input held back until the request with sequence #holdSeq is resolved. */
  #held: Held[] | null = null;
  #holdSeq = 0;
  heldBytes = 0;

  /** An error arrived and the client has not sent the Sync that ends the server's skipping yet. */
  #skipping = false;
  /** The server is in copy-in and no CopyDone/CopyFail has been seen: it ignores Syncs until then. */
  #copyIn = false;

  /** Parses answered without asking the server (the statement was already there). */
  hits = 0;
  /** Times client input was held back behind an unresolved request of an earlier segment. */
  holds = 0;

  constructor(cache: StatementCache, sink: PreparedSink) {
    this.#cache = cache;
    this.#sink = sink;
  }

  /** No response is owed and nothing is held: the server may be given back (check after onServerFrame returns). */
  get idle(): boolean {
    return this.#count === 0 && !this.#skipping && !this.#copyIn && this.#held === null;
  }

  /** Client input is being held back: the session should pause reading from the client once heldBytes grows. */
  get holding(): boolean {
    return this.#held !== null;
  }

  /** The client has named statements (for views; the rewriter must see every frame regardless). */
  get usesNamedStatements(): boolean {
    return this.#names.size > 0;
  }

  get statementCount(): number {
    return this.#names.size;
  }

  /** The server-side name a client statement maps to (tests, admin). */
  serverName(clientName: string): string | undefined {
    return this.#names.get(clientName)?.name;
  }

  /** The session got a server connection. Nothing may be owed to a previous one. */
  attach(server: ServerStatements): void {
    if (!this.idle) throw new Error('PreparedRewriter.attach: responses still owed by the previous server');
    this.#server = server;
    // Servers are lent between transactions.
    this.#txStatus = TX.Idle;
  }

  /** The session gives its server back; only at an idle point. */
  detach(): void {
    if (!this.idle) throw new Error('PreparedRewriter.detach: responses still owed');
    this.#server = null;
  }

  /** The server connection was lost mid-flight: whatever it still owed never happened, held input is discarded. */
  reset(): void {
    this.#dropRange(this.#count);
    this.#held = null;
    this.heldBytes = 0;
    this.#skipping = false;
    this.#copyIn = false;
    this.#server = null;
  }

  /** The session ends: give the cache back its references. */
  dispose(): void {
    this.reset();
    this.forgetClient(null);
  }

  /**
   * The client ran DEALLOCATE name (a name) or DEALLOCATE ALL / DISCARD ALL
   * (null). Only the client's mappings; for ALL the session must also clear()
   * the ServerStatements of the server that ran it, whose statements are gone.
   */
  forgetClient(name: string | null): void {
    if (name === null) {
      for (const e of this.#names.values()) e.unref();
      this.#names.clear();
      return;
    }
    const e = this.#names.get(name);
    if (e !== undefined) {
      this.#names.delete(name);
      e.unref();
    }
  }

  // ---------------------------------------------------------------- client side

  /**
   * Client bytes the session does not inspect (runs of CopyData, Flush, ...):
   * straight to the server, unless input is held back, where order must be kept.
   */
  onClientBytes(buf: Buffer, start: number, end: number): void {
    if (this.#held !== null) {
      this.#held.push({ type: -1, buf: Buffer.from(buf.subarray(start, end)) });
      this.heldBytes += end - start;
      return;
    }
    this.#sink.toServer(buf, start, end);
  }

  /** One complete client frame [start, end) of buf, header included. Output goes to the sink, in order. */
  onClientFrame(type: number, buf: Buffer, start: number, end: number): void {
    if (this.#held !== null) {
      this.#held.push({ type, buf: Buffer.from(buf.subarray(start, end)) });
      this.heldBytes += end - start;
      return;
    }
    this.#clientFrame(type, buf, start, end);
  }

  #clientFrame(type: number, buf: Buffer, start: number, end: number): void {
    const server = this.#server;
    if (server === null) throw new Error('PreparedRewriter.onClientFrame: no server attached');
    const sink = this.#sink;
    if (this.#skipping) {
      // The server discards everything until Sync, and answers nothing for it.
      if (type === FE.Sync) {
        this.#skipping = false;
        this.#pushSync();
      }
      sink.toServer(buf, start, end);
      return;
    }
    switch (type) {
      case FE.Parse:
        this.#onParse(server, buf, start, end);
        break;
      case FE.Bind:
        this.#onBind(server, buf, start, end);
        break;
      case FE.Describe:
        this.#onDescribe(server, buf, start, end);
        break;
      case FE.Close:
        this.#onClose(buf, start, end);
        break;
      case FE.Execute:
        this.#push(K.Execute, null, null, 0);
        sink.toServer(buf, start, end);
        break;
      case FE.Sync:
        // During copy-in the server ignores Sync (protocol-flow, COPY Operations).
        if (!this.#copyIn) this.#pushSync();
        sink.toServer(buf, start, end);
        break;
      case FE.Query:
        this.#pushBoundary(K.Query);
        sink.toServer(buf, start, end);
        break;
      case FE.FunctionCall:
        this.#pushBoundary(K.FunctionCall);
        sink.toServer(buf, start, end);
        break;
      case FE.CopyDone:
      case FE.CopyFail:
        if (this.#copyIn) this.#copyIn = false;
        else this.#push(K.CopyEnd, null, null, 0);
        sink.toServer(buf, start, end);
        break;
      default:
        sink.toServer(buf, start, end);
    }
    this.#drain();
  }

  #onParse(server: ServerStatements, buf: Buffer, start: number, end: number): void {
    const nameStart = start + 5;
    const nameEnd = nulAt(buf, nameStart, end);
    if (nameEnd === nameStart) {
      this.#push(K.Parse, null, null, 0);
      this.#sink.toServer(buf, start, end);
      return;
    }
    const name = buf.toString('latin1', nameStart, nameEnd);
    const waitName = this.#waitForName(name);
    const existing = this.#names.get(name);
    if (existing !== undefined) {
      const wait = Math.max(waitName, this.#waitForServer(existing));
      if (wait >= 0) {
        this.#hold(wait, buf, start, end);
        return;
      }
      // Let the server refuse a duplicate of its own statement, in this position.
      this.#ensure(server, existing);
      this.#push(K.ParseDuplicate, existing, name, 0);
      this.#sink.toServer(existing.parse, 0, existing.parse.length);
      return;
    }
    const entry = this.#cache.intern(buf, nameEnd + 1, end);
    entry.ref();
    const onServer = server.has(entry);
    // Answering for the server needs the transaction status at this point:
    // known only once everything that ends with ReadyForQuery is answered.
    const wait = Math.max(waitName, this.#waitForServer(entry), onServer && this.#boundaries > 0 ? this.#lastBoundary : -1);
    if (wait >= 0) {
      entry.unref();
      this.#hold(wait, buf, start, end);
      return;
    }
    this.#names.set(name, entry);
    if (onServer) {
      server.use(entry);
      if (this.#txStatus === TX.Failed) {
        this.#pendName(name, this.#push(K.ParseAborted, entry, name, 0));
        this.#sink.toServer(entry.parse, 0, entry.parse.length);
        return;
      }
      this.hits++;
      this.#pendName(name, this.#push(K.ParseSynthetic, entry, name, 0));
      return;
    }
    this.#makeRoom(server);
    const token = server.add(entry);
    server.prepares++;
    const seq = this.#push(K.ParseNamed, entry, name, token);
    this.#pendName(name, seq);
    this.#pendServer(entry, seq);
    this.#sink.toServer(entry.parse, 0, entry.parse.length);
  }

  #onBind(server: ServerStatements, buf: Buffer, start: number, end: number): void {
    const portalEnd = nulAt(buf, start + 5, end);
    const nameStart = portalEnd + 1;
    const nameEnd = nulAt(buf, nameStart, end);
    let entry: CachedStatement | undefined;
    if (nameEnd > nameStart) {
      const name = buf.toString('latin1', nameStart, nameEnd);
      entry = this.#names.get(name);
      const wait = Math.max(this.#waitForName(name), entry === undefined ? -1 : this.#waitForServer(entry));
      if (wait >= 0) {
        this.#hold(wait, buf, start, end);
        return;
      }
    }
    if (entry === undefined) {
      // Unnamed, or unknown: the server answers for itself (26000 for unknown).
      this.#push(K.Bind, null, null, 0);
      this.#sink.toServer(buf, start, end);
      return;
    }
    this.#ensure(server, entry);
    const nameZ = entry.nameZ;
    const len = end - start - (nameEnd + 1 - nameStart) + nameZ.length;
    const out = Buffer.allocUnsafe(len);
    out[0] = FE.Bind;
    out.writeInt32BE(len - 1, 1);
    let off = 5 + buf.copy(out, 5, start + 5, nameStart);
    off += nameZ.copy(out, off);
    buf.copy(out, off, nameEnd + 1, end);
    this.#push(K.Bind, null, null, 0);
    this.#sink.toServer(out, 0, len);
  }

  #onDescribe(server: ServerStatements, buf: Buffer, start: number, end: number): void {
    if (end - start < 7) throw new ProtocolViolation(VIOLATION.Malformed, 'Describe is shorter than its fields');
    const nameStart = start + 6;
    const nameEnd = nulAt(buf, nameStart, end);
    if (buf[start + 5] === BYTE_S && nameEnd > nameStart) {
      const name = buf.toString('latin1', nameStart, nameEnd);
      const entry = this.#names.get(name);
      const wait = Math.max(this.#waitForName(name), entry === undefined ? -1 : this.#waitForServer(entry));
      if (wait >= 0) {
        this.#hold(wait, buf, start, end);
        return;
      }
      if (entry !== undefined) {
        this.#ensure(server, entry);
        this.#push(K.Describe, null, null, 0);
        this.#sink.toServer(entry.describe, 0, entry.describe.length);
        return;
      }
    }
    this.#push(K.Describe, null, null, 0);
    this.#sink.toServer(buf, start, end);
  }

  #onClose(buf: Buffer, start: number, end: number): void {
    if (end - start < 7) throw new ProtocolViolation(VIOLATION.Malformed, 'Close is shorter than its fields');
    const nameStart = start + 6;
    const nameEnd = nulAt(buf, nameStart, end);
    if (buf[start + 5] === BYTE_S && nameEnd > nameStart) {
      // Other clients may share the server statement: only the mapping goes.
      const name = buf.toString('latin1', nameStart, nameEnd);
      const wait = this.#waitForName(name);
      if (wait >= 0) {
        this.#hold(wait, buf, start, end);
        return;
      }
      const prev = this.#names.get(name) ?? null;
      // Queued first: the queue's ref keeps prev alive should the Close be skipped and undone.
      this.#pendName(name, this.#push(K.CloseSynthetic, prev, name, 0));
      if (prev !== null) {
        this.#names.delete(name);
        prev.unref();
      }
      return;
    }
    this.#push(K.Close, null, null, 0);
    this.#sink.toServer(buf, start, end);
  }

  /** Makes sure the statement exists on the server before the frame that needs it (a Parse injected in front). */
  #ensure(server: ServerStatements, entry: CachedStatement): void {
    if (server.use(entry)) return;
    this.#makeRoom(server);
    const token = server.add(entry);
    server.prepares++;
    this.#pendServer(entry, this.#push(K.ParseInjected, entry, null, token));
    this.#sink.toServer(entry.parse, 0, entry.parse.length);
  }

  /**
   * Evicts least recently used statements until one more fits. A statement
   * whose Parse is unresolved in an earlier segment is passed over (the cap
   * may be exceeded for the length of a pipeline): were both segments skipped,
   * undoing the Close would resurrect a statement that was never prepared.
   * Within one segment both are undone together, newest first.
   */
  #makeRoom(server: ServerStatements): void {
    while (server.size >= server.max) {
      let victim: CachedStatement | undefined;
      for (const e of server.leastRecentlyUsed()) {
        if (this.#waitForServer(e) < 0) {
          victim = e;
          break;
        }
      }
      if (victim === undefined) return;
      const token = server.remove(victim);
      server.evictions++;
      this.#pendServer(victim, this.#push(K.CloseEvict, victim, null, token));
      this.#sink.toServer(victim.close, 0, victim.close.length);
    }
  }

  /** Sequence number of an unresolved Parse/Close of this name in an earlier segment, or -1. */
  #waitForName(name: string): number {
    if (this.#pendingNames.size === 0) return -1;
    const p = this.#pendingNames.get(name);
    return p !== undefined && p.segment < this.#segment ? p.seq : -1;
  }

  /** Sequence number of an unresolved Parse/Close of this statement on the server in an earlier segment, or -1. */
  #waitForServer(e: CachedStatement): number {
    if (this.#pendingServer.size === 0) return -1;
    const p = this.#pendingServer.get(e);
    return p !== undefined && p.segment < this.#segment ? p.seq : -1;
  }

  #pendName(name: string, seq: number): void {
    this.#pendingNames.set(name, { seq, segment: this.#segment });
  }

  #pendServer(e: CachedStatement, seq: number): void {
    this.#pendingServer.set(e, { seq, segment: this.#segment });
  }

  /**
   * Holds this frame and all later client input until request `seq` is
   * resolved. That request lies before a Sync already sent, so the server
   * flushes its answer without anything more from the client: no deadlock.
   */
  #hold(seq: number, buf: Buffer, start: number, end: number): void {
    this.holds++;
    this.#holdSeq = seq;
    this.#held = [{ type: buf[start] as number, buf: Buffer.from(buf.subarray(start, end)) }];
    this.heldBytes = end - start;
  }

  /** Replays held input once what it waited for is resolved; it may be held again behind something else. */
  #release(): void {
    const held = this.#held;
    if (held === null || this.#popped <= this.#holdSeq) return;
    this.#held = null;
    this.heldBytes = 0;
    for (let i = 0; i < held.length; i++) {
      const h = held[i] as Held;
      if (h.type < 0) this.#sink.toServer(h.buf, 0, h.buf.length);
      else this.#clientFrame(h.type, h.buf, 0, h.buf.length);
      // Replaying may have started a new hold (TS cannot see #clientFrame change it).
      const again = this.#held as Held[] | null;
      if (again !== null) {
        for (let j = i + 1; j < held.length; j++) {
          const rest = held[j] as Held;
          again.push(rest);
          this.heldBytes += rest.buf.length;
        }
        return;
      }
    }
  }

  // ---------------------------------------------------------------- server side

  /** One complete server frame [start, end) of buf. Whatever the client should see goes to the sink, in order. */
  onServerFrame(type: number, buf: Buffer, start: number, end: number): void {
    this.#serverFrame(type, buf, start, end);
    if (this.#held !== null) this.#release();
  }

  #serverFrame(type: number, buf: Buffer, start: number, end: number): void {
    if (this.#count > 0) {
      const kind = this.#kind[this.#head] as number;
      switch (type) {
        case BE.ParseComplete:
          if (kind === K.ParseInjected) {
            this.#pop();
            this.#drain();
            return;
          }
          if (kind === K.Parse || kind === K.ParseNamed || kind === K.ParseDuplicate || kind === K.ParseAborted) this.#pop();
          break;
        case BE.BindComplete:
          if (kind === K.Bind) this.#pop();
          break;
        case BE.CloseComplete:
          if (kind === K.CloseEvict) {
            this.#pop();
            this.#drain();
            return;
          }
          if (kind === K.Close) this.#pop();
          break;
        case BE.RowDescription:
        case BE.NoData:
          if (kind === K.Describe) this.#pop();
          break;
        case BE.CommandComplete:
        case BE.EmptyQueryResponse:
        case BE.PortalSuspended:
          if (kind === K.Execute) this.#pop();
          break;
        case BE.ReadyForQuery:
          this.#copyIn = false;
          if (end - start > 5) this.#txStatus = buf[start + 5] as number;
          this.#onReady();
          break;
        case BE.CopyInResponse:
          if (kind === K.Execute || kind === K.Query) this.#onCopyIn();
          break;
        case BE.ErrorResponse:
          this.#onError(kind, buf, start, end);
          return;
      }
    } else if (type === BE.ErrorResponse || type === BE.ReadyForQuery) {
      this.#copyIn = false;
      if (type === BE.ReadyForQuery && end - start > 5) this.#txStatus = buf[start + 5] as number;
    }
    this.#sink.toClient(buf, start, end);
    this.#drain();
  }

  #onReady(): void {
    // Normally the head is the Sync/Query/FunctionCall this answers; anything
    // before it was never answered, so it never happened.
    const mask = this.#kind.length - 1;
    let i = 0;
    while (i < this.#count && !endsWithReady(this.#kind[(this.#head + i) & mask] as number)) i++;
    if (i === this.#count) return;
    this.#dropRange(i);
    this.#pop();
  }

  /** The server entered copy-in: Syncs it reads before the client's CopyDone/CopyFail are ignored. */
  #onCopyIn(): void {
    const mask = this.#kind.length - 1;
    for (let i = 1; i < this.#count; i++) {
      const at = (this.#head + i) & mask;
      const k = this.#kind[at];
      if (k === K.Sync) {
        this.#kind[at] = K.Free;
        this.#boundaries--;
      } else if (k === K.CopyEnd) {
        this.#kind[at] = K.Free;
        return;
      }
    }
    this.#copyIn = true;
  }

  #onError(kind: number, buf: Buffer, start: number, end: number): void {
    this.#copyIn = false;
    if (kind === K.ParseDuplicate) {
      const e = this.#entry[this.#head] as CachedStatement;
      this.#sendRenamedError(buf, start, end, e.name, this.#name[this.#head] as string);
    } else {
      this.#sink.toClient(buf, start, end);
    }
    if (endsWithReady(kind)) return; // simple flow: ReadyForQuery follows
    // Extended flow: the server now discards everything until Sync, answering none of it.
    const mask = this.#kind.length - 1;
    let i = 0;
    while (i < this.#count && this.#kind[(this.#head + i) & mask] !== K.Sync) i++;
    const sawSync = i < this.#count;
    this.#dropRange(i);
    if (!sawSync) this.#skipping = true;
  }

  /** The 42P05 of a duplicate Parse, naming the client's statement rather than Postern's. */
  #sendRenamedError(buf: Buffer, start: number, end: number, serverName: string, clientName: string): void {
    let n: ReturnType<typeof decodeNotice>;
    try {
      n = decodeNotice(buf, start, end);
    } catch {
      this.#sink.toClient(buf, start, end);
      return;
    }
    const from = `"${serverName}"`;
    const to = `"${Buffer.from(clientName, 'latin1').toString('utf8')}"`;
    const w = new Writer();
    for (const [code, value] of n.fields) w.byte(code.charCodeAt(0)).cstring(code === 'M' ? value.replace(from, to) : value);
    const out = w.byte(0).message(BE.ErrorResponse);
    this.#sink.toClient(out, 0, out.length);
  }

  /** Emits synthetic answers (and drops no-answer markers) that have reached the head of the queue. */
  #drain(): void {
    while (this.#count > 0) {
      const k = this.#kind[this.#head];
      if (k === K.ParseSynthetic) this.#sink.toClient(PARSE_COMPLETE, 0, PARSE_COMPLETE.length);
      else if (k === K.CloseSynthetic) this.#sink.toClient(CLOSE_COMPLETE, 0, CLOSE_COMPLETE.length);
      else if (k !== K.Free && k !== K.CopyEnd) return;
      this.#pop();
    }
  }

  // ---------------------------------------------------------------- queue

  /** Queues a request; returns its sequence number. */
  #push(kind: Kind, entry: CachedStatement | null, name: string | null, token: number): number {
    if (this.#count === this.#kind.length) this.#grow();
    const at = (this.#head + this.#count) & (this.#kind.length - 1);
    this.#kind[at] = kind;
    this.#entry[at] = entry;
    this.#name[at] = name;
    this.#token[at] = token;
    if (entry !== null) entry.ref();
    this.#count++;
    return this.#pushed++;
  }

  #pushSync(): void {
    this.#pushBoundary(K.Sync);
    this.#segment++;
  }

  #pushBoundary(kind: Kind): void {
    this.#lastBoundary = this.#push(kind, null, null, 0);
    this.#boundaries++;
  }

  /** The head request was answered (or dropped, after #undo). */
  #pop(): void {
    const at = this.#head;
    const seq = this.#popped++;
    if (endsWithReady(this.#kind[at] as number)) this.#boundaries--;
    const name = this.#name[at];
    if (name != null) {
      if (this.#pendingNames.get(name)?.seq === seq) this.#pendingNames.delete(name);
      this.#name[at] = null;
    }
    const e = this.#entry[at];
    if (e != null) {
      if (this.#pendingServer.get(e)?.seq === seq) this.#pendingServer.delete(e);
      this.#entry[at] = null;
      e.unref();
    }
    this.#head = (at + 1) & (this.#kind.length - 1);
    this.#count--;
  }

  /** The first n queued requests were skipped by the server: undo their effects, newest first, and drop them. */
  #dropRange(n: number): void {
    const mask = this.#kind.length - 1;
    for (let i = n - 1; i >= 0; i--) this.#undo((this.#head + i) & mask);
    for (let i = 0; i < n; i++) this.#pop();
  }

  #undo(at: number): void {
    const e = this.#entry[at];
    if (e == null) return;
    const server = this.#server;
    const name = this.#name[at] ?? null;
    const token = this.#token[at] as number;
    switch (this.#kind[at]) {
      case K.ParseNamed:
        server?.undoAdd(e, token);
        this.#unmap(name, e);
        break;
      case K.ParseSynthetic:
      case K.ParseAborted:
        this.#unmap(name, e);
        break;
      case K.ParseInjected:
        server?.undoAdd(e, token);
        break;
      case K.CloseEvict:
        server?.restore(e, token);
        break;
      case K.CloseSynthetic:
        if (name !== null && !this.#names.has(name)) {
          e.ref();
          this.#names.set(name, e);
        }
        break;
    }
  }

  #unmap(name: string | null, e: CachedStatement): void {
    if (name !== null && this.#names.get(name) === e) {
      this.#names.delete(name);
      e.unref();
    }
  }

  #grow(): void {
    const size = this.#kind.length;
    const kind = new Uint8Array(size * 2);
    const entry: (CachedStatement | null)[] = new Array(size * 2).fill(null);
    const name: (string | null)[] = new Array(size * 2).fill(null);
    const token = new Float64Array(size * 2);
    for (let i = 0; i < this.#count; i++) {
      const at = (this.#head + i) & (size - 1);
      kind[i] = this.#kind[at] as number;
      entry[i] = this.#entry[at] ?? null;
      name[i] = this.#name[at] ?? null;
      token[i] = this.#token[at] as number;
    }
    this.#kind = kind;
    this.#entry = entry;
    this.#name = name;
    this.#token = token;
    this.#head = 0;
  }
}
