// The ledger of what one server connection still owes: every request Postern
// wrote to it (a client's frames and Postern's own), in the order the server
// answers them, with the server's input rules applied exactly, so that at
// any moment Postern knows which response belongs to whom and whether the
// connection is idle. Owned by the ServerConn; the session that holds the
// connection, the prepared-statement rewriter, the settings carried across
// servers and the pool's clean-up after a client leaves all read and feed
// this one queue. The release rule ("this server may go back to the pool")
// is `idle`, here, and nowhere else.
//
// PostgreSQL's input rules it follows (protocol-flow.html; postgres.c
// PostgresMain/SocketBackend, copyfromparse.c CopyGetData):
//   - Each Parse, Bind, Describe, Execute, Close is answered by one terminal
//     message (ParseComplete, BindComplete, RowDescription/NoData,
//     CommandComplete/EmptyQueryResponse/PortalSuspended, CloseComplete) or
//     an ErrorResponse. Query, FunctionCall and Sync each end with one
//     ReadyForQuery, errors included.
//   - An error in an extended-protocol message (not Query, FunctionCall or
//     Sync) makes the server discard every message up to the next Sync,
//     Query and FunctionCall included: they are never answered.
//   - After CopyInResponse the server reads copy messages only: CopyData,
//     CopyDone, CopyFail; Flush and Sync are ignored; any other message is
//     consumed and fails the COPY ("unexpected message type ... during COPY
//     from stdin"). Outside copy-in, CopyData/CopyDone/CopyFail are ignored.
//   - NoticeResponse, NotificationResponse and ParameterStatus may come at
//     any time and answer nothing.
// https://www.postgresql.org/docs/current/protocol-flow.html
//
// Requests are tracked optimistically: a request counts as sent the moment
// it is pushed, and when the server turns out to skip it (an error earlier
// in its segment, a COPY that consumed it) its owner is told through
// `dropped`, newest first, so optimistic bookkeeping (a statement counted as
// prepared) is undone in reverse order.
//
// The queue is a ring of parallel arrays: queuing allocates nothing.

import { BE, FE, TX } from '../protocol/codes.ts';
import { ProtocolViolation, VIOLATION } from '../protocol/violation.ts';

/** What a queued request is. */
export const REQ = {
  /** Answered by nothing any more (ignored in a COPY, or consumed by it); leaves silently. */
  Free: 0,
  Parse: 1,
  Bind: 2,
  Describe: 3,
  Execute: 4,
  Close: 5,
  Sync: 6,
  Query: 7,
  FunctionCall: 8,
  /** A CopyDone/CopyFail sent while no copy-in was known: where a later copy-in ends. No answer of its own. */
  CopyEnd: 9,
  /** No server request: a synthetic answer its owner writes when it reaches the head. */
  Marker: 10,
} as const;
export type Req = (typeof REQ)[keyof typeof REQ];

/** Whose answer it is. */
export const WHO = {
  /** Every frame of the answer goes to the linked client. */
  Client: 0,
  /** Postern's own request: every frame is swallowed (shown to the owner). */
  Postern: 1,
  /** Postern's request on the client's behalf (a Parse put in front of the client's Bind): success swallowed, an error goes to the client. */
  Quiet: 2,
} as const;
export type Who = (typeof WHO)[keyof typeof WHO];

/** Whoever queued a request hears how it ended. Every queued request ends through exactly one of these. */
export interface LedgerOwner {
  /** The request at slot `at` got its whole answer; ok is false when an ErrorResponse ended it. */
  settled(ledger: Ledger, at: number, ok: boolean): void;
  /** The request at slot `at` will never be answered (skipped, consumed by a COPY, or the connection is gone). */
  dropped(ledger: Ledger, at: number): void;
  /** A Marker at slot `at` reached the head: write its synthetic answer now (through ledger.route). */
  marker?(ledger: Ledger, at: number): void;
  /** A frame of the answer to a swallowed request at slot `at` (Postern's own statements read their results here). */
  frame?(ledger: Ledger, at: number, type: number, buf: Buffer, start: number, end: number): void;
  /** The ErrorResponse that ends (or, for Query/FunctionCall/Sync, fails) the request at slot `at`, whoever it is routed to. */
  failed?(ledger: Ledger, at: number, buf: Buffer, start: number, end: number): void;
}

/**
 * Who wants to know how the client's statements ended (the statistics
 * tracker). Each client Execute and Query gets an ordinal, in the order the
 * client sent them (counting the ones the server ignores), and exactly one
 * end: `done` (it ran; its CommandComplete tags and error came first through
 * `rows` and `error`) or `gone` (it never ran).
 */
export interface LedgerWatcher {
  /** A client Execute or Query is sent (or ignored by the server): its ordinal, from the watcher's own count. */
  sent(): number;
  rows(ordinal: number, buf: Buffer, start: number, end: number): void;
  error(ordinal: number, buf: Buffer, start: number, end: number): void;
  done(ordinal: number): void;
  gone(ordinal: number): void;
}

/** Where the frames that belong to the linked client go. */
export interface LedgerRoute {
  toClient(buf: Buffer, start: number, end: number): void;
}

const NO_ROUTE: LedgerRoute = { toClient() {} };

/** Kinds answered by a ReadyForQuery. */
function endsWithReady(k: number): boolean {
  return k === REQ.Sync || k === REQ.Query || k === REQ.FunctionCall;
}

/** Client message types that earn an entry (and which one). Others (CopyData, Flush, Terminate) earn nothing. */
export function requestOf(type: number): Req | -1 {
  switch (type) {
    case FE.Parse:
      return REQ.Parse;
    case FE.Bind:
      return REQ.Bind;
    case FE.Describe:
      return REQ.Describe;
    case FE.Execute:
      return REQ.Execute;
    case FE.Close:
      return REQ.Close;
    case FE.Sync:
      return REQ.Sync;
    case FE.Query:
      return REQ.Query;
    case FE.FunctionCall:
      return REQ.FunctionCall;
    case FE.CopyDone:
    case FE.CopyFail:
      return REQ.CopyEnd;
    default:
      return -1;
  }
}

/** requestOf as a type table: the client frames that earn an answer (1), for a framer to count or inspect. */
export const CLIENT_REQUESTS: Uint8Array = (() => {
  const t = new Uint8Array(256);
  for (let type = 0; type < 256; type++) if (requestOf(type) !== -1) t[type] = 1;
  return t;
})();

export class Ledger {
  // The ring: #count slots from #head, capacity a power of two.
  #kind = new Uint8Array(16);
  #who = new Uint8Array(16);
  #owner: (LedgerOwner | null)[] = new Array(16).fill(null);
  #tag = new Int32Array(16);
  #num = new Float64Array(16);
  #obj: (object | null)[] = new Array(16).fill(null);
  #str: (string | null)[] = new Array(16).fill(null);
  /** The watcher's ordinal of a client Execute/Query, -1 for anything else. */
  #ord = new Int32Array(16).fill(-1);
  #head = 0;
  #count = 0;
  /** Sequence numbers: requests ever queued, and ever left (the head's sequence number is `popped`). */
  #pushed = 0;
  #popped = 0;
  /** Syncs queued so far: the server's error recovery never crosses one. */
  #segment = 0;
  /** Queued requests that end with ReadyForQuery, and the newest one's sequence number. */
  #boundaries = 0;
  #lastBoundary = -1;
  /** Queued requests that are not the client's own, or are markers: the link must read the answers whole. */
  #special = 0;
  /** An error arrived and no Sync has been queued since: the server discards what comes. */
  #skipping = false;
  /** The server is in copy-in (CopyInResponse seen) and no CopyDone/CopyFail or consumed message has been queued since. */
  #copyIn = false;
  /**
   * An extended-protocol message (Parse, Bind, Describe, Execute, Close) was
   * queued and no Sync (or Query, FunctionCall) since: the server holds an
   * implicit transaction, and maybe a portal, even with nothing owed (after
   * Execute with a row limit and Flush, say). ReadyForQuery's status is stale.
   */
  #unsynced = false;
  /** The head request's answer included an ErrorResponse (Query, FunctionCall, Sync: ReadyForQuery still follows). */
  #headFailed = false;
  /** Transaction status of the last ReadyForQuery: exact while no boundary is queued. */
  txStatus: number = TX.Idle;
  /** Where the linked client's frames go; swallowed ones go to their owners. */
  route: LedgerRoute = NO_ROUTE;
  /** Sees how the client's statements end (see LedgerWatcher); null: nobody. */
  watcher: LedgerWatcher | null = null;
  /** Called when `special` or `swallowingHead` changes: the link adjusts what it reads whole. */
  onShape: (() => void) | null = null;
  #shapeSpecial = false;
  #shapeHead = false;

  /** Nothing owed, not skipping, not in copy-in, no extended query open: the server waits for a new request at a boundary. */
  get idle(): boolean {
    return this.#count === 0 && !this.#skipping && !this.#copyIn && !this.#unsynced;
  }

  /** The server still owes answers, or discards what comes (skipping, copy-in): a cancel can matter. */
  get owes(): boolean {
    return this.#count > 0 || this.#skipping || this.#copyIn;
  }

  /** An extended query is open (see #unsynced): the server is inside a transaction whatever the last ReadyForQuery said. */
  get unsynced(): boolean {
    return this.#unsynced;
  }

  get size(): number {
    return this.#count;
  }

  /** Slot of the oldest request still owed (meaningful while size > 0). */
  get head(): number {
    return this.#head;
  }

  get pushed(): number {
    return this.#pushed;
  }

  get popped(): number {
    return this.#popped;
  }

  get segment(): number {
    return this.#segment;
  }

  get boundaries(): number {
    return this.#boundaries;
  }

  get lastBoundary(): number {
    return this.#lastBoundary;
  }

  get skipping(): boolean {
    return this.#skipping;
  }

  get copyIn(): boolean {
    return this.#copyIn;
  }

  /** Some queued answer is not simply the client's: every answer frame must be read whole (not only peeked). */
  get special(): boolean {
    return this.#special > 0;
  }

  /** The head request is Postern's own: every frame of its answer must be read whole, to be swallowed. */
  get swallowingHead(): boolean {
    return this.#count > 0 && this.#who[this.#head] === WHO.Postern;
  }

  /** ReadyForQuery messages still owed (boundaries queued; skipped ones were already dropped). */
  get owedReady(): number {
    return this.#boundaries;
  }

  // ---------------------------------------------------------------- slot data (for owners)

  kindAt(at: number): number {
    return this.#kind[at] as number;
  }
  whoAt(at: number): number {
    return this.#who[at] as number;
  }
  tagAt(at: number): number {
    return this.#tag[at] as number;
  }
  numAt(at: number): number {
    return this.#num[at] as number;
  }
  objAt(at: number): object | null {
    return this.#obj[at] ?? null;
  }
  strAt(at: number): string | null {
    return this.#str[at] ?? null;
  }
  /** Sequence number of the request in slot `at`. */
  seqAt(at: number): number {
    return this.#popped + ((at - this.#head) & (this.#kind.length - 1));
  }

  // ---------------------------------------------------------------- the sending side

  /**
   * True when the server will read a message of this client type without
   * answering it, given what is known now: discarded while skipping to Sync,
   * consumed by (and failing) a copy-in. Such a message is not queued;
   * pass it to `ignored` after sending it.
   */
  ignores(type: number): boolean {
    if (this.#skipping) return type !== FE.Sync;
    if (this.#copyIn) return type !== FE.CopyData && type !== FE.CopyDone && type !== FE.CopyFail;
    return false;
  }

  /** A message the server reads without answering (see `ignores`) was sent: the state it changes. */
  ignored(type: number): void {
    const w = this.watcher;
    if (w !== null && (type === FE.Execute || type === FE.Query)) w.gone(w.sent());
    if (this.#skipping) return;
    if (this.#copyIn && type !== FE.Flush && type !== FE.Sync) {
      // Consumed by the COPY, which fails: its error and ReadyForQuery (or skip) follow.
      this.#copyIn = false;
    }
  }

  /**
   * Queues a request of the given kind (a client message, see requestOf, or
   * Postern's own). Returns its slot. Must not be called for a message that
   * `ignores` says the server will not answer, except Sync (which ends skipping
   * and is queued) and CopyEnd during copy-in (which ends it and is not).
   * A marker is answered by `drain()`, never here.
   */
  push(kind: Req, who: Who, owner: LedgerOwner | null, tag = 0, num = 0, obj: object | null = null, str: string | null = null): number {
    if (kind === REQ.Sync) this.#skipping = false;
    else if (kind === REQ.CopyEnd && this.#copyIn) {
      this.#copyIn = false;
      return -1;
    }
    if (this.#count === this.#kind.length) this.#grow();
    const at = (this.#head + this.#count) & (this.#kind.length - 1);
    this.#kind[at] = kind;
    this.#who[at] = who;
    this.#owner[at] = owner;
    this.#tag[at] = tag;
    this.#num[at] = num;
    this.#obj[at] = obj;
    this.#str[at] = str;
    this.#ord[at] = who === WHO.Client && (kind === REQ.Execute || kind === REQ.Query) && this.watcher !== null ? this.watcher.sent() : -1;
    this.#count++;
    this.#pushed++;
    if (kind >= REQ.Parse && kind <= REQ.Close) this.#unsynced = true;
    if (endsWithReady(kind)) {
      this.#unsynced = false;
      this.#boundaries++;
      this.#lastBoundary = this.#pushed - 1;
      if (kind === REQ.Sync) this.#segment++;
    }
    if (who !== WHO.Client || kind === REQ.Marker) this.#special++;
    this.#reshape();
    return at;
  }

  /**
   * The client that sent the queued requests is gone: every answer still to
   * come is swallowed (their owners still hear how each ended), markers are
   * no longer written. The watcher stays until the pool has drained the
   * connection (Pool.reclaim): a statement the client sent before leaving ran,
   * and its statistics still hear how it ended. Nothing pushed from now on is
   * the client's, so no new ordinal reaches it.
   */
  disown(): void {
    const mask = this.#kind.length - 1;
    for (let i = 0; i < this.#count; i++) {
      const at = (this.#head + i) & mask;
      if (this.#kind[at] === REQ.Marker) continue;
      if (this.#who[at] === WHO.Client) this.#special++;
      this.#who[at] = WHO.Postern;
    }
    this.route = NO_ROUTE;
    this.#reshape();
  }

  /** The connection is gone: nothing will be answered any more. Owners hear it newest first. */
  abandon(): void {
    this.#dropRange(this.#count);
    this.#skipping = false;
    this.#copyIn = false;
    this.#unsynced = false;
    this.#headFailed = false;
    this.txStatus = TX.Idle;
    this.#reshape();
  }

  /** Tells the link when what it must read whole changed. */
  #reshape(): void {
    const special = this.#special > 0;
    const head = this.#count > 0 && this.#who[this.#head] === WHO.Postern;
    if (special === this.#shapeSpecial && head === this.#shapeHead) return;
    this.#shapeSpecial = special;
    this.#shapeHead = head;
    this.onShape?.();
  }

  // ---------------------------------------------------------------- the answering side

  /**
   * One server frame, header included, at buf[start, end). `peeked`: the
   * frame is already on its way to the client in a run (the link only looks);
   * otherwise the ledger routes it: to the client, or to the owner of the
   * Postern request it answers. Throws ProtocolViolation when the frame
   * answers nothing that was asked.
   */
  onServerFrame(type: number, buf: Buffer, start: number, end: number, peeked: boolean): void {
    if (this.#count === 0) {
      this.#unowed(type, buf, start, end, peeked);
      return;
    }
    const at = this.#head;
    const kind = this.#kind[at] as number;
    const who = this.#who[at] as number;
    let done = false;
    let ok = true;
    let toClient = who === WHO.Client;
    switch (type) {
      case BE.ParseComplete:
        this.#expect(kind === REQ.Parse, type);
        done = true;
        break;
      case BE.BindComplete:
        this.#expect(kind === REQ.Bind, type);
        done = true;
        break;
      case BE.CloseComplete:
        this.#expect(kind === REQ.Close, type);
        done = true;
        break;
      case BE.ParameterDescription:
        this.#expect(kind === REQ.Describe, type);
        break;
      case BE.RowDescription:
        this.#expect(kind === REQ.Describe || kind === REQ.Query, type);
        done = kind === REQ.Describe;
        break;
      case BE.NoData:
        this.#expect(kind === REQ.Describe, type);
        done = true;
        break;
      case BE.CommandComplete:
      case BE.EmptyQueryResponse:
        this.#expect(kind === REQ.Execute || kind === REQ.Query, type);
        done = kind === REQ.Execute;
        break;
      case BE.PortalSuspended:
        this.#expect(kind === REQ.Execute, type);
        done = true;
        break;
      case BE.CopyInResponse:
        this.#expect(kind === REQ.Execute || kind === REQ.Query, type);
        this.#enterCopyIn();
        break;
      case BE.CopyOutResponse:
      case BE.CopyData:
      case BE.CopyDone:
      case BE.DataRow:
        this.#expect(kind === REQ.Execute || kind === REQ.Query, type);
        break;
      case BE.FunctionCallResponse:
        this.#expect(kind === REQ.FunctionCall, type);
        break;
      case BE.ErrorResponse:
        this.#copyIn = false;
        this.#owner[at]?.failed?.(this, at, buf, start, end);
        this.#blame(buf, start, end);
        if (endsWithReady(kind)) this.#headFailed = true;
        else {
          done = true;
          ok = false;
          if (who === WHO.Quiet) toClient = true;
        }
        break;
      case BE.ReadyForQuery:
        this.#ready(buf, start, end, peeked);
        return;
      case BE.NoticeResponse:
      case BE.NotificationResponse:
      case BE.ParameterStatus:
        break;
      default:
        throw new ProtocolViolation(VIOLATION.Malformed, `unexpected message type ${String.fromCharCode(type)} from the server`);
    }
    const ord = this.#ord[at] as number;
    if (ord >= 0 && this.watcher !== null && (type === BE.CommandComplete || type === BE.EmptyQueryResponse || type === BE.PortalSuspended))
      this.watcher.rows(ord, buf, start, end);
    if (toClient) {
      if (!peeked) this.route.toClient(buf, start, end);
    } else this.#owner[at]?.frame?.(this, at, type, buf, start, end);
    if (!done) {
      if (type === BE.CopyInResponse) this.#reshape();
      return;
    }
    if (ok) this.#settle(true);
    else {
      // Extended flow: the server now discards everything until Sync, answering none of it.
      const mask = this.#kind.length - 1;
      let i = 1;
      while (i < this.#count && this.#kind[(this.#head + i) & mask] !== REQ.Sync) i++;
      const sawSync = i < this.#count;
      this.#failHead(i);
      if (!sawSync) this.#skipping = true;
    }
    this.#drain();
    this.#reshape();
  }

  /**
   * An ErrorResponse for the head: the watcher hears it as the error of the
   * client statement it ends. A Query's is its own; in the extended protocol
   * it is the Execute's at the head or, when a Parse/Bind/Describe before it
   * failed, of the first Execute of the segment (the statement that failed).
   */
  #blame(buf: Buffer, start: number, end: number): void {
    const w = this.watcher;
    if (w === null) return;
    const mask = this.#kind.length - 1;
    for (let i = 0; i < this.#count; i++) {
      const at = (this.#head + i) & mask;
      const k = this.#kind[at] as number;
      if (i > 0 && (k === REQ.Sync || endsWithReady(k))) return;
      const ord = this.#ord[at] as number;
      if (ord >= 0) {
        w.error(ord, buf, start, end);
        // That statement ended here (an earlier request's failure is its failure): done, not gone.
        if (i > 0 || k === REQ.Execute) this.#ord[at] = -2 - ord;
        return;
      }
      if (endsWithReady(k)) return;
    }
  }

  /** A frame with nothing queued: asynchronous ones go to the client; anything else answers nothing. */
  #unowed(type: number, buf: Buffer, start: number, end: number, peeked: boolean): void {
    switch (type) {
      case BE.NoticeResponse:
      case BE.NotificationResponse:
      case BE.ParameterStatus:
        break;
      case BE.ErrorResponse:
        // Not an answer: a FATAL before the server closes (terminated, shut down). Copy-in ends with it.
        this.#copyIn = false;
        break;
      default:
        throw new ProtocolViolation(
          VIOLATION.Malformed,
          `unexpected message type ${String.fromCharCode(type)} from the server: nothing was asked`,
        );
    }
    if (!peeked) this.route.toClient(buf, start, end);
  }

  #expect(cond: boolean, type: number): void {
    if (!cond) {
      const head = this.#kind[this.#head] as number;
      throw new ProtocolViolation(
        VIOLATION.Malformed,
        `unexpected message type ${String.fromCharCode(type)} from the server (it owes the answer to request kind ${head})`,
      );
    }
  }

  #ready(buf: Buffer, start: number, end: number, peeked: boolean): void {
    this.#copyIn = false;
    if (end - start > 5) this.txStatus = buf[start + 5] as number;
    // The head is normally the Sync/Query/FunctionCall this answers; requests
    // before it that were never answered never happened (the server skipped them).
    const mask = this.#kind.length - 1;
    let i = 0;
    while (i < this.#count && !endsWithReady(this.#kind[(this.#head + i) & mask] as number)) i++;
    if (i === this.#count) {
      throw new ProtocolViolation(VIOLATION.Malformed, 'unexpected ReadyForQuery from the server: none is owed');
    }
    this.#dropRange(i);
    const at = this.#head;
    const who = this.#who[at] as number;
    if (who === WHO.Client) {
      if (!peeked) this.route.toClient(buf, start, end);
    } else this.#owner[at]?.frame?.(this, at, BE.ReadyForQuery, buf, start, end);
    this.#settle(!this.#headFailed);
    this.#drain();
    this.#reshape();
  }

  /** Copy-in began: Syncs queued before the end of the copy are ignored; a non-copy message queued before it is consumed and ends it. */
  #enterCopyIn(): void {
    const mask = this.#kind.length - 1;
    for (let i = 1; i < this.#count; i++) {
      const at = (this.#head + i) & mask;
      const k = this.#kind[at] as number;
      if (k === REQ.Sync) {
        this.#free(at);
        continue;
      }
      if (k === REQ.CopyEnd || k === REQ.Free || k === REQ.Marker) {
        if (k === REQ.CopyEnd) {
          this.#free(at);
          return;
        }
        continue;
      }
      // Any other message was read by the COPY as garbage: consumed, and the COPY fails there.
      this.#free(at);
      return;
    }
    this.#copyIn = true;
  }

  /** A queued request turns out to get no answer: its owner hears it now; the slot leaves silently later. */
  #free(at: number): void {
    const k = this.#kind[at] as number;
    if (endsWithReady(k)) this.#boundaries--;
    this.#owner[at]?.dropped(this, at);
    this.#ended(at, false);
    this.#release(at);
    this.#kind[at] = REQ.Free;
  }

  /** The head got its answer. */
  #settle(ok: boolean): void {
    const at = this.#head;
    this.#headFailed = false;
    this.#owner[at]?.settled(this, at, ok);
    this.#ended(at, true);
    this.#pop();
  }

  /** The watcher hears how a client statement ended; `ran`: it was answered, else it never ran. */
  #ended(at: number, ran: boolean): void {
    const ord = this.#ord[at] as number;
    this.#ord[at] = -1;
    const w = this.watcher;
    if (w === null || ord === -1) return;
    // -2 - n: blamed for an earlier request's error, so it ran (and failed).
    if (ord <= -2) w.done(-2 - ord);
    else if (ran) w.done(ord);
    else w.gone(ord);
  }

  /**
   * Writes the synthetic answers of markers that reached the head. A pusher
   * calls it once it has queued what one client frame needs (push itself
   * never answers, so the pusher's own bookkeeping of a marker comes first).
   */
  drain(): void {
    this.#drain();
    this.#reshape();
  }

  /** Writes markers that reached the head and lets no-answer entries leave. */
  #drain(): void {
    while (this.#count > 0) {
      const at = this.#head;
      const k = this.#kind[at];
      if (k === REQ.Marker) this.#owner[at]?.marker?.(this, at);
      else if (k === REQ.CopyEnd) this.#owner[at]?.settled(this, at, true);
      else if (k !== REQ.Free) return;
      this.#pop();
    }
  }

  /** The first n queued requests were skipped by the server: their owners hear it newest first, then they leave. */
  #dropRange(n: number): void {
    const mask = this.#kind.length - 1;
    for (let i = n - 1; i >= 0; i--) {
      const at = (this.#head + i) & mask;
      if (this.#kind[at] !== REQ.Free) this.#owner[at]?.dropped(this, at);
      this.#ended(at, false);
    }
    for (let i = 0; i < n; i++) this.#pop();
  }

  /**
   * The head failed in the extended protocol and the server skips the n-1
   * requests after it: those are undone first, newest first, then the head
   * (an owner undoing optimistic state must undo the oldest last).
   */
  #failHead(n: number): void {
    const mask = this.#kind.length - 1;
    for (let i = n - 1; i >= 1; i--) {
      const at = (this.#head + i) & mask;
      if (this.#kind[at] !== REQ.Free) this.#owner[at]?.dropped(this, at);
      this.#ended(at, false);
    }
    this.#settle(false);
    for (let i = 1; i < n; i++) this.#pop();
  }

  #release(at: number): void {
    const who = this.#who[at];
    if (who !== WHO.Client || this.#kind[at] === REQ.Marker) {
      this.#special--;
    }
    this.#who[at] = WHO.Client;
    this.#owner[at] = null;
    this.#obj[at] = null;
    this.#str[at] = null;
  }

  #pop(): void {
    const at = this.#head;
    const k = this.#kind[at] as number;
    if (endsWithReady(k)) this.#boundaries--;
    if (k !== REQ.Free) this.#release(at);
    this.#kind[at] = REQ.Free;
    this.#head = (at + 1) & (this.#kind.length - 1);
    this.#count--;
    this.#popped++;
  }

  #grow(): void {
    const size = this.#kind.length;
    const mask = size - 1;
    const kind = new Uint8Array(size * 2);
    const who = new Uint8Array(size * 2);
    const owner: (LedgerOwner | null)[] = new Array(size * 2).fill(null);
    const tag = new Int32Array(size * 2);
    const num = new Float64Array(size * 2);
    const obj: (object | null)[] = new Array(size * 2).fill(null);
    const str: (string | null)[] = new Array(size * 2).fill(null);
    const ord = new Int32Array(size * 2).fill(-1);
    for (let i = 0; i < this.#count; i++) {
      const at = (this.#head + i) & mask;
      kind[i] = this.#kind[at] as number;
      who[i] = this.#who[at] as number;
      owner[i] = this.#owner[at] ?? null;
      tag[i] = this.#tag[at] as number;
      num[i] = this.#num[at] as number;
      obj[i] = this.#obj[at] ?? null;
      str[i] = this.#str[at] ?? null;
      ord[i] = this.#ord[at] as number;
    }
    this.#kind = kind;
    this.#who = who;
    this.#owner = owner;
    this.#tag = tag;
    this.#num = num;
    this.#obj = obj;
    this.#str = str;
    this.#ord = ord;
    this.#head = 0;
  }
}
