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

import { decodeNotice, encodeError } from '../protocol/backend.ts';
import { BE, FE, TX, typeTable } from '../protocol/codes.ts';
import { ProtocolViolation, VIOLATION } from '../protocol/violation.ts';
import { Writer } from '../protocol/writer.ts';
import { CLIENT_REQUESTS, Ledger, type LedgerOwner, type LedgerRoute, REQ, type Req, requestOf, WHO, type Who } from './expect.ts';

/** Synthetic answers, built once. */
export const PARSE_COMPLETE: Buffer = new Writer().message(BE.ParseComplete);
export const CLOSE_COMPLETE: Buffer = new Writer().message(BE.CloseComplete);

/**
 * Client frames the rewriter must see whole, in order, from the moment a
 * pooled session starts (everything that earns a response, and the ends of
 * COPY). The bytes of all other frames go through onClientBytes, which passes
 * them straight on unless input is being held back.
 */
export const PREPARED_CLIENT_INSPECT: Uint8Array = CLIENT_REQUESTS;

/**
 * Server frames the rewriter must see whole: the ones that complete a request,
 * errors and CopyInResponse; and the asynchronous ones (notices, notifications,
 * parameter changes). A synthetic answer may be written while nothing is owed
 * (a Parse the server has, after a Flush): receiving those whole guarantees it
 * can never land inside a frame that was half forwarded. Every other frame
 * arrives only while a request is owed, when no synthetic answer is written.
 */
export const PREPARED_SERVER_INSPECT: Uint8Array = typeTable([
  BE.ParameterDescription,
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
/** A name no server statement ever has (Postern's own are postern_s<n>; client names never reach a server for Parse). */
const NO_STATEMENT = 'postern_none';
/** A Bind the server refuses (26000): it fails a request in its exact position, with a real error's effects (skip to Sync, abort). */
const FAILING_BIND: Buffer = new Writer().cstring('').cstring(NO_STATEMENT).int16(0).int16(0).int16(0).message(FE.Bind);
const FLUSH: Buffer = new Writer().message(FE.Flush);
/** PostgreSQL's answer to a Bind or Describe of a prepared statement whose result type changed (plancache.c). */
const RESULT_TYPE_CHANGED: Buffer = encodeError({
  severity: 'ERROR',
  code: '0A000',
  message: 'cached plan must not change result type',
  file: 'plancache.c',
  routine: 'RevalidateCachedQuery',
});
/** What #ensure says about the frame that needs a statement. */
const READY = -1;
const STALE = -2;

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
  /** The query text (for classifiers that look at what a Bind runs). */
  readonly text: string;
  /** A classifier's verdict on the text, kept by whoever asks (see PreparedSink.bound). */
  sequences: boolean | null = null;
  /** Scopes (pools) where a server accepted this Parse: there a client's Parse of it may be answered without a server. */
  readonly parsedIn = new WeakSet<object>();
  /**
   * The parameter and result types clients were told (the first Describe of
   * it a server answered; see shapeOf), null until then. A server that
   * prepares it afresh must agree, or the statement is stale.
   */
  shape: string | null = null;
  /**
   * Its result type changed under clients that know the old one (a server
   * said 0A000, or one prepared it with other types). It is never prepared
   * again; what needs it on a server lacking it gets 0A000, as PostgreSQL
   * answers a statement whose plan predates the change.
   */
  stale = false;
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
    const nul = body.indexOf(0);
    this.text = body.toString('utf8', 0, nul < 0 ? body.length : nul);
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

  /** The entry for exactly these Parse body bytes, if the cache has one (no new entry is made). */
  find(buf: Buffer, from: number, end: number): CachedStatement | undefined {
    return this.#byKey.get(buf.toString('latin1', from, end));
  }

  /**
   * A server showed this statement's plan is stale (0A000 "cached plan must
   * not change result type" after DDL): later Parses of the same text get a
   * fresh entry and server name, so they are really prepared again. Holders
   * of the old entry keep it.
   */
  retire(e: CachedStatement): void {
    if (this.#byKey.get(e.key) === e) this.#byKey.delete(e.key);
    this.retired++;
  }

  /** DDL went through Postern: every shared plan may be stale; later Parses are prepared afresh. */
  retireAll(): void {
    if (this.#byKey.size === 0) return;
    this.#byKey.clear();
    this.retired++;
  }

  /** Times statements were retired (tests, admin). */
  retired = 0;

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
  /** Statements prepared here with other types than clients were told (see CachedStatement.shape): never used. */
  #diverged: Set<CachedStatement> | null = null;
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

  /** e is prepared here with other types than clients were told: whatever needs it here is refused. */
  diverge(e: CachedStatement): void {
    if (!this.#lru.has(e)) return;
    this.#diverged ??= new Set();
    this.#diverged.add(e);
  }

  diverged(e: CachedStatement): boolean {
    return this.#diverged !== null && this.#diverged.has(e);
  }

  /** Forgets e; returns the token it was added with (0 when absent). */
  remove(e: CachedStatement): number {
    const t = this.#lru.get(e);
    if (t === undefined) return 0;
    this.#diverged?.delete(e);
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
    this.#diverged = null;
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
  /** A Bind of this named statement goes to the server now (it will run there). */
  bound?(entry: CachedStatement): void;
}

/** What each of the rewriter's queued requests is (the ledger entry's tag). */
const T = {
  /** Forwarded as the client sent it (unnamed Parse, Bind, Describe, Execute, a portal Close, Sync, Query, ...). */
  Plain: 0,
  /** Client's named Parse, forwarded under the server name. */
  ParseNamed: 1,
  /** Postern's Parse in front of a frame that needs the statement: success swallowed. */
  ParseInjected: 2,
  /** Client's named Parse the server already has: synthetic ParseComplete in its turn (a marker). */
  ParseSynthetic: 3,
  /** Client re-Parsed a name it has: the server is made to answer 42P05 (renamed for the client). */
  ParseDuplicate: 4,
  /**
   * Client's named Parse the server already has, sent anyway because the
   * transaction is aborted: Postgres refuses any Parse there (25P02), and only
   * the server can refuse it at the right position with the right effects.
   */
  ParseAborted: 5,
  /** Postern's Close making room: its CloseComplete is swallowed. */
  CloseEvict: 6,
  /** Client's Close('S', name): synthetic CloseComplete in its turn (a marker). */
  CloseSynthetic: 7,
  /** A Bind or Describe('S') of a cached statement (its plan may turn out stale: 0A000). */
  UsesStatement: 8,
  /** Postern's Describe('S') after preparing a statement afresh: its types must be the ones clients were told. */
  Verify: 9,
  /** A request the server refuses in its position (FAILING_BIND); the client gets the error kept with it instead. */
  Fail: 10,
} as const;
type Tag = (typeof T)[keyof typeof T];

/** A Parse or Close whose outcome the server has not reported yet. */
interface Pending {
  /** Its position in the ledger's history (sequence number). */
  seq: number;
  /** The Sync-delimited segment it belongs to. */
  segment: number;
}

/** A client frame (type >= 0) or a run of bytes (-1) held back, copied. */
interface Held {
  type: number;
  buf: Buffer;
}

export class PreparedRewriter implements LedgerOwner, LedgerRoute {
  #cache: StatementCache;
  #sink: PreparedSink;
  #server: ServerStatements | null = null;
  /** The server connection's ledger while attached. */
  #ledger: Ledger | null = null;
  /** Client statement name (latin1 of its bytes) -> entry. Predicted state: includes requests still in flight. */
  #names = new Map<string, CachedStatement>();

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
  /** The client is gone (disown): answers still owed are swallowed, nothing is written to it. */
  #gone = false;

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
    return (this.#ledger === null || this.#ledger.idle) && this.#held === null;
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

  /** The query text of a client's named statement (the read/write split reads what a Bind runs); null when unknown. */
  textOf(clientName: string): string | null {
    return this.#names.get(clientName)?.text ?? null;
  }

  /** The server-side name a client statement maps to (tests, admin). */
  serverName(clientName: string): string | undefined {
    return this.#names.get(clientName)?.name;
  }

  /** The ledger of the attached server (tests, the session). */
  get ledger(): Ledger | null {
    return this.#ledger;
  }

  /**
   * The session got a server connection: its statements and its ledger (a
   * fresh ledger when none is given, for tests). Nothing may be owed to a
   * previous one.
   */
  attach(server: ServerStatements, ledger: Ledger = new Ledger()): void {
    if (!this.idle) throw new Error('PreparedRewriter.attach: responses still owed by the previous server');
    if (!ledger.idle) throw new Error('PreparedRewriter.attach: the server still owes answers to someone else');
    this.#server = server;
    this.#ledger = ledger;
    ledger.route = this;
  }

  /** The session gives its server back; only at an idle point. */
  detach(): void {
    if (!this.idle) throw new Error('PreparedRewriter.detach: responses still owed');
    this.#server = null;
    this.#ledger = null;
  }

  /**
   * The server connection was lost mid-flight: whatever it still owed never
   * happened (the ledger is abandoned), held input is discarded.
   */
  reset(): void {
    const ledger = this.#ledger;
    this.#ledger = null;
    ledger?.abandon();
    this.#held = null;
    this.heldBytes = 0;
    this.#server = null;
  }

  /**
   * The client left with answers still owed while its server connection
   * lives on (the pool cleans it): those answers are swallowed, and this
   * rewriter goes on keeping the server's statement set exact as they come.
   * Held input was never sent: it is discarded.
   */
  disown(): void {
    this.#gone = true;
    this.#held = null;
    this.heldBytes = 0;
    this.#ledger?.disown();
    // #server stays: answers still coming settle the server's statement set.
    this.#ledger = null;
  }

  /** The session ends: give the cache back its references. */
  dispose(): void {
    if (this.#ledger !== null && !this.#gone) this.reset();
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
    this.#frameOut(type, buf, start, end);
    this.#ledger?.drain();
  }

  #frameOut(type: number, buf: Buffer, start: number, end: number): void {
    const server = this.#server;
    const ledger = this.#ledger;
    if (server === null || ledger === null) throw new Error('PreparedRewriter.onClientFrame: no server attached');
    const sink = this.#sink;
    if (ledger.ignores(type)) {
      // Skipping to Sync, or in copy-in: the server reads it without answering.
      sink.toServer(buf, start, end);
      ledger.ignored(type);
      return;
    }
    switch (type) {
      case FE.Parse:
        this.#onParse(server, ledger, buf, start, end);
        return;
      case FE.Bind:
        this.#onBind(server, ledger, buf, start, end);
        return;
      case FE.Describe:
        this.#onDescribe(server, ledger, buf, start, end);
        return;
      case FE.Close:
        this.#onClose(ledger, buf, start, end);
        return;
      default: {
        const kind = requestOf(type);
        if (kind >= 0) ledger.push(kind as Req, WHO.Client, this, T.Plain);
        sink.toServer(buf, start, end);
      }
    }
  }

  #onParse(server: ServerStatements, ledger: Ledger, buf: Buffer, start: number, end: number): void {
    const nameStart = start + 5;
    const nameEnd = nulAt(buf, nameStart, end);
    if (nameEnd === nameStart) {
      ledger.push(REQ.Parse, WHO.Client, this, T.Plain);
      this.#sink.toServer(buf, start, end);
      return;
    }
    const name = buf.toString('latin1', nameStart, nameEnd);
    const waitName = this.#waitForName(ledger, name);
    const existing = this.#names.get(name);
    if (existing !== undefined) {
      const wait = Math.max(waitName, this.#waitForServer(ledger, existing));
      if (wait >= 0) {
        this.#hold(wait, buf, start, end);
        return;
      }
      // Let the server refuse a duplicate of its own statement, in this position.
      if (this.#ensureOrStop(server, ledger, existing, buf, start, end, () => duplicateError(name))) return;
      this.#push(ledger, REQ.Parse, WHO.Postern, T.ParseDuplicate, existing, name, 0);
      this.#sink.toServer(existing.parse, 0, existing.parse.length);
      return;
    }
    const entry = this.#cache.intern(buf, nameEnd + 1, end);
    entry.ref();
    const onServer = server.has(entry);
    // Answering for the server needs the transaction status at this point:
    // known only once everything that ends with ReadyForQuery is answered.
    const wait = Math.max(waitName, this.#waitForServer(ledger, entry), onServer && ledger.boundaries > 0 ? ledger.lastBoundary : -1);
    if (wait >= 0) {
      entry.unref();
      this.#hold(wait, buf, start, end);
      return;
    }
    this.#names.set(name, entry);
    if (onServer) {
      server.use(entry);
      if (ledger.txStatus === TX.Failed) {
        this.#pendName(ledger, name, this.#push(ledger, REQ.Parse, WHO.Client, T.ParseAborted, entry, name, 0));
        this.#sink.toServer(entry.parse, 0, entry.parse.length);
        return;
      }
      this.hits++;
      this.#pendName(ledger, name, this.#push(ledger, REQ.Marker, WHO.Client, T.ParseSynthetic, entry, name, 0));
      return;
    }
    this.#makeRoom(server, ledger);
    const token = server.add(entry);
    server.prepares++;
    const seq = this.#push(ledger, REQ.Parse, WHO.Client, T.ParseNamed, entry, name, token);
    this.#pendName(ledger, name, seq);
    this.#pendServer(ledger, entry, seq);
    this.#sink.toServer(entry.parse, 0, entry.parse.length);
    if (entry.shape !== null) {
      // Other clients know this statement's types: later input waits until this server's are known too.
      this.holds++;
      this.#holdSeq = this.#verify(ledger, entry);
      this.#held = [];
      this.heldBytes = 0;
    }
  }

  #onBind(server: ServerStatements, ledger: Ledger, buf: Buffer, start: number, end: number): void {
    const portalEnd = nulAt(buf, start + 5, end);
    const nameStart = portalEnd + 1;
    const nameEnd = nulAt(buf, nameStart, end);
    let entry: CachedStatement | undefined;
    if (nameEnd > nameStart) {
      const name = buf.toString('latin1', nameStart, nameEnd);
      entry = this.#names.get(name);
      const wait = Math.max(this.#waitForName(ledger, name), entry === undefined ? -1 : this.#waitForServer(ledger, entry));
      if (wait >= 0) {
        this.#hold(wait, buf, start, end);
        return;
      }
    }
    if (entry === undefined) {
      // Unnamed, or unknown: the server answers for itself (26000 for unknown).
      ledger.push(REQ.Bind, WHO.Client, this, T.Plain);
      this.#sink.toServer(buf, start, end);
      return;
    }
    if (this.#ensureOrStop(server, ledger, entry, buf, start, end, resultTypeChanged)) return;
    this.#sink.bound?.(entry);
    const nameZ = entry.nameZ;
    const len = end - start - (nameEnd + 1 - nameStart) + nameZ.length;
    const out = Buffer.allocUnsafe(len);
    out[0] = FE.Bind;
    out.writeInt32BE(len - 1, 1);
    let off = 5 + buf.copy(out, 5, start + 5, nameStart);
    off += nameZ.copy(out, off);
    buf.copy(out, off, nameEnd + 1, end);
    this.#push(ledger, REQ.Bind, WHO.Client, T.UsesStatement, entry, null, 0);
    this.#sink.toServer(out, 0, len);
  }

  #onDescribe(server: ServerStatements, ledger: Ledger, buf: Buffer, start: number, end: number): void {
    if (end - start < 7) throw new ProtocolViolation(VIOLATION.Malformed, 'Describe is shorter than its fields');
    const nameStart = start + 6;
    const nameEnd = nulAt(buf, nameStart, end);
    if (buf[start + 5] === BYTE_S && nameEnd > nameStart) {
      const name = buf.toString('latin1', nameStart, nameEnd);
      const entry = this.#names.get(name);
      const wait = Math.max(this.#waitForName(ledger, name), entry === undefined ? -1 : this.#waitForServer(ledger, entry));
      if (wait >= 0) {
        this.#hold(wait, buf, start, end);
        return;
      }
      if (entry !== undefined) {
        if (this.#ensureOrStop(server, ledger, entry, buf, start, end, resultTypeChanged)) return;
        this.#push(ledger, REQ.Describe, WHO.Client, T.UsesStatement, entry, null, 0);
        this.#sink.toServer(entry.describe, 0, entry.describe.length);
        return;
      }
    }
    ledger.push(REQ.Describe, WHO.Client, this, T.Plain);
    this.#sink.toServer(buf, start, end);
  }

  #onClose(ledger: Ledger, buf: Buffer, start: number, end: number): void {
    if (end - start < 7) throw new ProtocolViolation(VIOLATION.Malformed, 'Close is shorter than its fields');
    const nameStart = start + 6;
    const nameEnd = nulAt(buf, nameStart, end);
    if (buf[start + 5] === BYTE_S && nameEnd > nameStart) {
      // Other clients may share the server statement: only the mapping goes.
      const name = buf.toString('latin1', nameStart, nameEnd);
      const wait = this.#waitForName(ledger, name);
      if (wait >= 0) {
        this.#hold(wait, buf, start, end);
        return;
      }
      const prev = this.#names.get(name) ?? null;
      // Queued first: the queue's ref keeps prev alive should the Close be skipped and undone.
      this.#pendName(ledger, name, this.#push(ledger, REQ.Marker, WHO.Client, T.CloseSynthetic, prev, name, 0));
      if (prev !== null) {
        this.#names.delete(name);
        prev.unref();
      }
      return;
    }
    ledger.push(REQ.Close, WHO.Client, this, T.Plain);
    this.#sink.toServer(buf, start, end);
  }

  /**
   * #ensure for the frame at buf[start, end): true when the frame is taken
   * care of here (held until the statement's description is back, or refused
   * with `stale()` when the statement is stale); false: send it now.
   */
  #ensureOrStop(
    server: ServerStatements,
    ledger: Ledger,
    entry: CachedStatement,
    buf: Buffer,
    start: number,
    end: number,
    stale: () => Buffer,
  ): boolean {
    const ready = this.#ensure(server, ledger, entry);
    if (ready >= 0) this.#hold(ready, buf, start, end);
    else if (ready === STALE) this.#refuse(ledger, stale());
    else return false;
    return true;
  }

  /**
   * Makes sure the statement exists on the server before the frame that
   * needs it (a Parse injected in front). READY: send the frame. STALE: the
   * frame must be refused with 0A000. A sequence number: the statement was
   * prepared afresh and is being described; hold the frame until then.
   */
  #ensure(server: ServerStatements, ledger: Ledger, entry: CachedStatement): number {
    if (server.use(entry)) return server.diverged(entry) ? STALE : READY;
    if (entry.stale) return STALE;
    this.#makeRoom(server, ledger);
    const token = server.add(entry);
    server.prepares++;
    this.#pendServer(ledger, entry, this.#push(ledger, REQ.Parse, WHO.Quiet, T.ParseInjected, entry, null, token));
    this.#sink.toServer(entry.parse, 0, entry.parse.length);
    return entry.shape === null ? READY : this.#verify(ledger, entry);
  }

  /**
   * A statement clients know the types of was just prepared on this server:
   * the server describes it (swallowed, compared in #described) and flushes,
   * so what waits for the answer never waits on the client. Returns the
   * Describe's sequence number.
   */
  #verify(ledger: Ledger, entry: CachedStatement): number {
    const seq = this.#push(ledger, REQ.Describe, WHO.Postern, T.Verify, entry, null, 0);
    this.#sink.toServer(entry.describe, 0, entry.describe.length);
    this.#sink.toServer(FLUSH, 0, FLUSH.length);
    return seq;
  }

  /** The client's frame is refused here, by the server (so the error has its real effects), with this error shown to the client. */
  #refuse(ledger: Ledger, error: Buffer): void {
    ledger.push(REQ.Bind, WHO.Postern, this, T.Fail, 0, error, null);
    this.#sink.toServer(FAILING_BIND, 0, FAILING_BIND.length);
  }

  /**
   * A statement's parameter and result types came in (a client's
   * Describe('S'), or Postern's own): the first ones are what clients know;
   * different ones from this server make the statement stale.
   */
  #described(ledger: Ledger, type: number, buf: Buffer, start: number, end: number): void {
    const at = ledger.head;
    if (ledger.kindAt(at) !== REQ.Describe) return;
    const tag = ledger.tagAt(at);
    if (tag !== T.UsesStatement && tag !== T.Verify) return;
    if (type === BE.ParameterDescription) {
      this.#params = buf.toString('latin1', start + 5, end);
      return;
    }
    const shape = `${this.#params}|${shapeOf(type, buf, start, end)}`;
    this.#params = '';
    const e = ledger.objAt(at) as CachedStatement;
    if (e.shape === null) e.shape = shape;
    else if (e.shape !== shape) this.#staled(e, true);
  }

  /** Parameter types of the Describe being answered (until its RowDescription or NoData). */
  #params = '';

  /** e's result type changed under clients that know the old one; here is where it differs when `here`. */
  #staled(e: CachedStatement, here: boolean): void {
    e.stale = true;
    this.#cache.retire(e);
    this.staleRetired++;
    if (here) this.#server?.diverge(e);
  }

  /**
   * Evicts least recently used statements until one more fits. A statement
   * whose Parse is unresolved in an earlier segment is passed over (the cap
   * may be exceeded for the length of a pipeline): were both segments skipped,
   * undoing the Close would resurrect a statement that was never prepared.
   * Within one segment both are undone together, newest first.
   */
  #makeRoom(server: ServerStatements, ledger: Ledger): void {
    while (server.size >= server.max) {
      let victim: CachedStatement | undefined;
      for (const e of server.leastRecentlyUsed()) {
        if (this.#waitForServer(ledger, e) < 0) {
          victim = e;
          break;
        }
      }
      if (victim === undefined) return;
      const token = server.remove(victim);
      server.evictions++;
      this.#pendServer(ledger, victim, this.#push(ledger, REQ.Close, WHO.Quiet, T.CloseEvict, victim, null, token));
      this.#sink.toServer(victim.close, 0, victim.close.length);
    }
  }

  /** Sequence number of an unresolved Parse/Close of this name in an earlier segment, or -1. */
  #waitForName(ledger: Ledger, name: string): number {
    if (this.#pendingNames.size === 0) return -1;
    const p = this.#pendingNames.get(name);
    return p !== undefined && p.segment < ledger.segment ? p.seq : -1;
  }

  /** Sequence number of an unresolved Parse/Close of this statement on the server in an earlier segment, or -1. */
  #waitForServer(ledger: Ledger, e: CachedStatement): number {
    if (this.#pendingServer.size === 0) return -1;
    const p = this.#pendingServer.get(e);
    return p !== undefined && p.segment < ledger.segment ? p.seq : -1;
  }

  #pendName(ledger: Ledger, name: string, seq: number): void {
    this.#pendingNames.set(name, { seq, segment: ledger.segment });
  }

  #pendServer(ledger: Ledger, e: CachedStatement, seq: number): void {
    this.#pendingServer.set(e, { seq, segment: ledger.segment });
  }

  /** Queues a request in the ledger with its statement (referenced while queued); returns its sequence number. */
  #push(ledger: Ledger, kind: Req, who: Who, tag: Tag, entry: CachedStatement | null, name: string | null, token: number): number {
    const seq = ledger.pushed;
    if (entry !== null) entry.ref();
    ledger.push(kind, who, this, tag, token, entry, name);
    return seq;
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
    const ledger = this.#ledger;
    if (held === null || ledger === null || ledger.popped <= this.#holdSeq) return;
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
    const ledger = this.#ledger;
    if (ledger === null) throw new Error('PreparedRewriter.onServerFrame: no server attached');
    if ((type === BE.RowDescription || type === BE.NoData || type === BE.ParameterDescription) && ledger.size > 0)
      this.#described(ledger, type, buf, start, end);
    ledger.onServerFrame(type, buf, start, end, false);
    if (this.#held !== null) this.#release();
  }

  /** LedgerRoute: a server frame for the client. */
  toClient(buf: Buffer, start: number, end: number): void {
    if (!this.#gone) this.#sink.toClient(buf, start, end);
  }

  // ---------------------------------------------------------------- LedgerOwner

  settled(ledger: Ledger, at: number, ok: boolean): void {
    if (!ok) this.#undo(ledger, at);
    else if (this.scope !== null) {
      const tag = ledger.tagAt(at);
      if (tag === T.ParseNamed || tag === T.ParseInjected) (ledger.objAt(at) as CachedStatement).parsedIn.add(this.scope);
    }
    this.#forget(ledger, at);
  }

  dropped(ledger: Ledger, at: number): void {
    this.#undo(ledger, at);
    this.#forget(ledger, at);
  }

  failed(ledger: Ledger, at: number, buf: Buffer, start: number, end: number): void {
    if (ledger.tagAt(at) !== T.UsesStatement) return;
    const code = buf.indexOf('C0A000\0', start + 5, 'latin1');
    if (code < 0 || code >= end) return;
    // "cached plan must not change result type": the shared plan is stale
    // here. Later Parses of this text are prepared afresh (a driver's own
    // recovery, a new Parse, then works), and this server forgets it so a
    // client that still names it gets the server's answer, not a guess.
    this.#staled(ledger.objAt(at) as CachedStatement, false);
  }

  /** Statements retired because a server reported their plan stale. */
  staleRetired = 0;

  /** The scope (pool) of the attached server: a successful Parse is remembered there (see parseLocally). */
  scope: object | null = null;

  /**
   * A named Parse the client sends while it holds no server: answered here,
   * without a server, when a server of the same scope already accepted that
   * exact statement (text and parameter types) and the name is free. The
   * server-side Parse happens in front of the first Bind or Describe that
   * needs it (as for a client that lands on a server lacking it). Returns
   * false when a server must answer.
   */
  parseLocally(buf: Buffer, start: number, end: number, scope: object): boolean {
    const nameStart = start + 5;
    const nameEnd = nulAt(buf, nameStart, end);
    if (nameEnd === nameStart) return false;
    const name = buf.toString('latin1', nameStart, nameEnd);
    if (this.#names.has(name) || this.#pendingNames.has(name)) return false;
    const entry = this.#cache.find(buf, nameEnd + 1, end);
    if (entry === undefined || !entry.parsedIn.has(scope)) return false;
    entry.ref();
    this.#names.set(name, entry);
    this.hits++;
    return true;
  }

  marker(ledger: Ledger, at: number): void {
    if (!this.#gone) {
      if (ledger.tagAt(at) === T.ParseSynthetic) this.#sink.toClient(PARSE_COMPLETE, 0, PARSE_COMPLETE.length);
      else this.#sink.toClient(CLOSE_COMPLETE, 0, CLOSE_COMPLETE.length);
    }
    this.#forget(ledger, at);
  }

  frame(ledger: Ledger, at: number, type: number, buf: Buffer, start: number, end: number): void {
    // Swallowed answers: a Quiet request's success (nobody sees it), the
    // server's 42P05 for a duplicate Parse, which names Postern's statement,
    // and a refused request's error, which the client sees as the one kept.
    if (this.#gone) return;
    const tag = ledger.tagAt(at);
    if (tag === T.Fail) {
      if (type === BE.ErrorResponse) {
        const error = ledger.objAt(at) as Buffer;
        this.#sink.toClient(error, 0, error.length);
      }
      return;
    }
    if (tag !== T.ParseDuplicate) return;
    const e = ledger.objAt(at) as CachedStatement;
    if (type === BE.ErrorResponse) this.#sendRenamedError(buf, start, end, e.name, ledger.strAt(at) as string);
    else this.#sink.toClient(buf, start, end);
  }

  /** A request left the ledger: its pending marks go, and its statement reference. */
  #forget(ledger: Ledger, at: number): void {
    const seq = ledger.seqAt(at);
    const name = ledger.strAt(at);
    if (name !== null && this.#pendingNames.get(name)?.seq === seq) this.#pendingNames.delete(name);
    const e = ledger.tagAt(at) === T.Fail ? null : (ledger.objAt(at) as CachedStatement | null);
    if (e !== null) {
      if (this.#pendingServer.get(e)?.seq === seq) this.#pendingServer.delete(e);
      e.unref();
    }
  }

  /** The server skipped or refused the request at `at`: undo what was assumed when it was sent. */
  #undo(ledger: Ledger, at: number): void {
    if (ledger.tagAt(at) === T.Fail) return;
    const e = ledger.objAt(at) as CachedStatement | null;
    if (e === null) return;
    const server = this.#server;
    const name = ledger.strAt(at);
    const token = ledger.numAt(at);
    switch (ledger.tagAt(at)) {
      case T.ParseNamed:
        server?.undoAdd(e, token);
        this.#unmap(name, e);
        break;
      case T.ParseSynthetic:
      case T.ParseAborted:
        this.#unmap(name, e);
        break;
      case T.ParseInjected:
        server?.undoAdd(e, token);
        break;
      case T.CloseEvict:
        server?.restore(e, token);
        break;
      case T.CloseSynthetic:
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
}

/** PostgreSQL's 42P05 for a Parse of a name the session already has. */
/** The error of a Bind or Describe of a stale statement (a function, for #ensureOrStop). */
function resultTypeChanged(): Buffer {
  return RESULT_TYPE_CHANGED;
}

function duplicateError(clientName: string): Buffer {
  const name = Buffer.from(clientName, 'latin1').toString('utf8');
  return encodeError({
    severity: 'ERROR',
    code: '42P05',
    message: `prepared statement "${name}" already exists`,
    file: 'prepare.c',
    routine: 'StorePreparedStatement',
  });
}

/**
 * What a RowDescription (or NoData) says a statement returns, as PostgreSQL
 * compares it when it revalidates a plan: each column's name, type and type
 * modifier (not the table and column it came from, which DDL renumbers).
 */
function shapeOf(type: number, buf: Buffer, start: number, end: number): string {
  if (type === BE.NoData) return 'n';
  let off = start + 5;
  if (off + 2 > end) return `?${buf.toString('latin1', start, end)}`;
  const n = buf.readInt16BE(off);
  off += 2;
  let out = `${n}`;
  for (let i = 0; i < n; i++) {
    const nul = buf.indexOf(0, off);
    if (nul < 0 || nul + 19 > end) return `?${buf.toString('latin1', start, end)}`;
    // name, table oid (4), column (2), type oid (4), type size (2), type modifier (4), format (2)
    out += `,${buf.toString('latin1', off, nul)}:${buf.readInt32BE(nul + 7)}:${buf.readInt32BE(nul + 13)}`;
    off = nul + 19;
  }
  return out;
}
