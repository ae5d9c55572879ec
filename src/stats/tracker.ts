// Per-session statement and cycle tracking from the frames the proxy forwards.
// One QueryTracker per client session: it looks at client and server frames
// (it never forwards or changes one) and reports each finished statement
// (text, duration, rows, SQLSTATE) and each query / transaction cycle
// (PgBouncer's query and xact times) to its sink.
//
// Which answer ends which statement is not decided here: the server
// connection's ledger (backend/expect.ts) knows what the server owes and
// tells the tracker, as its LedgerWatcher, how each client Execute and Query
// ended, by ordinal (their order in what the client sent). The tracker
// keeps only what the ledger does not: the statements' texts and start
// times (from the client frames, numbered in the same order), their rows
// (CommandComplete tags) and SQLSTATE, and the query/transaction cycles
// (from ReadyForQuery).
//
// Message layouts: https://www.postgresql.org/docs/current/protocol-message-formats.html
// Every read is bounded by the frame's end; a frame too short or missing a
// terminator is ignored, never trusted and never thrown on.

import { BE, FE, TX } from '../protocol/codes.ts';

export interface TrackerSink {
  /** A statement finished: its text (only when the tracker wants texts), duration in µs, rows from CommandComplete's tag, SQLSTATE of its error or null. */
  onStatement(text: string, durationUs: number, rows: number, sqlstate: string | null): void;
  /** A ReadyForQuery reached the client: one query cycle (µs since the first client frame after the previous ReadyForQuery) and, when that ReadyForQuery has status 'I' (idle), the transaction's duration in µs (from the first client frame after the last idle ReadyForQuery), else -1. */
  onCycle(queryUs: number, xactUs: number): void;
}

/** What the ledger said of a statement before the tracker saw its frame. */
interface Early {
  rows: number;
  sqlstate: string | null;
  end: 'done' | 'gone' | null;
}

/** A client statement that was sent and has not ended yet (slots of a ring, reused). */
class Pending {
  /** Its ordinal; -1 while the slot is free. */
  ord = -1;
  text = '';
  startedAt = 0;
  rows = 0;
  sqlstate: string | null = null;
}

/**
 * Statement and portal names remembered, each. Clients that prepare without
 * ever closing (some drivers name every statement) would otherwise grow the
 * maps without end; the oldest names go first, and their Executes report ''.
 */
export const MAX_NAMES = 10_000;

/**
 * Statements pending beyond which the oldest are forgotten. Backpressure
 * stops a client that does not read, so this stays near the pipeline depth;
 * it only guards against a ledger that is not watched any more.
 */
const MAX_PENDING = 1 << 18;

const NUL = 0;
const SPACE = 0x20;
const DIGIT_0 = 0x30;
const DIGIT_9 = 0x39;
const FIELD_CODE = 0x43; // 'C': the SQLSTATE field of an ErrorResponse
const CLOSE_STATEMENT = 0x53; // 'S'
const CLOSE_PORTAL = 0x50; // 'P'
/** Type byte + Int32 length. */
const HEADER = 5;

/** Index of the first NUL in buf[from, end), or -1. */
function cstringEnd(buf: Buffer, from: number, end: number): number {
  for (let i = from; i < end; i++) if (buf[i] === NUL) return i;
  return -1;
}

/** Rows of a CommandComplete tag: its last space-separated integer ("INSERT 0 3" → 3); 0 when it ends in none ("BEGIN"). */
function tagRows(buf: Buffer, start: number, end: number): number {
  let tagEnd = cstringEnd(buf, start + HEADER, end);
  if (tagEnd < 0) tagEnd = end;
  let i = tagEnd;
  while (i > start + HEADER && buf[i - 1]! >= DIGIT_0 && buf[i - 1]! <= DIGIT_9) i--;
  if (i === tagEnd || i === start + HEADER || buf[i - 1] !== SPACE) return 0;
  let n = 0;
  for (let k = i; k < tagEnd; k++) n = n * 10 + (buf[k]! - DIGIT_0);
  return n;
}

/** The SQLSTATE ('C' field) of an ErrorResponse; 'XX000' when it has none or the frame is malformed. */
function errorCode(buf: Buffer, start: number, end: number): string {
  let i = start + HEADER;
  while (i < end) {
    const field = buf[i]!;
    if (field === NUL) break;
    const valueEnd = cstringEnd(buf, i + 1, end);
    if (valueEnd < 0) break;
    // A SQLSTATE is five characters; a longer value is cut rather than copied whole.
    if (field === FIELD_CODE && valueEnd > i + 1) return buf.toString('latin1', i + 1, Math.min(valueEnd, i + 6));
    i = valueEnd + 1;
  }
  return 'XX000';
}

/** Remembers the latest text per name, oldest name dropped beyond MAX_NAMES. */
function remember(map: Map<string, string>, name: string, text: string): void {
  // Deleted first so a re-used name counts as the newest.
  map.delete(name);
  map.set(name, text);
  if (map.size > MAX_NAMES) {
    const oldest = map.keys().next();
    if (oldest.done !== true) map.delete(oldest.value);
  }
}

/** Watches a ledger (backend/expect.ts LedgerWatcher, by shape: stats does not import backend). */
export class QueryTracker {
  readonly #sink: TrackerSink;
  readonly #wantsText: boolean | (() => boolean);
  /** Statements reported so far (for the audit record). */
  statements = 0;

  // Text of each prepared statement and portal, by name (names decoded as
  // latin1: a byte-exact key with no UTF-8 validation). The unnamed ones,
  // by far the most used, live outside the maps.
  #unnamedStatement = '';
  readonly #statements = new Map<string, string>();
  #unnamedPortal = '';
  readonly #portals = new Map<string, string>();

  /** Statements sent and not ended, in a ring indexed by ordinal (the n-th Execute or Query the client sent). */
  #ring: Pending[] = [new Pending(), new Pending(), new Pending(), new Pending()];
  #live = 0;
  #nextOrdinal = 0;
  /** Ordinals handed to the ledger (the same frames, counted on the ledger's side: at their header or later). */
  #ledgerOrdinal = 0;
  /** Ends the ledger reported before the tracker saw the client frame (a header counted before the frame was whole). */
  readonly #early = new Map<number, Early>();

  // Cycles. #cycleOpen: a client frame came since the last ReadyForQuery.
  #cycleOpen = false;
  #cycleStart = 0;
  // #idle: the last ReadyForQuery said 'I' (or none came yet), so the next
  // client frame starts a transaction; #xactOpen: one has started.
  #idle = true;
  #xactOpen = false;
  #xactStart = 0;

  /** wantsText: whether statement texts are needed (read per message when a function, so it may change). */
  constructor(sink: TrackerSink, wantsText: boolean | (() => boolean)) {
    this.#sink = sink;
    this.#wantsText = wantsText;
  }

  #wants(): boolean {
    const w = this.#wantsText;
    return typeof w === 'boolean' ? w : w();
  }

  /** A whole client frame, header included, at buf[start, end). */
  onClientFrame(type: number, buf: Buffer, start: number, end: number): void {
    if (!(start >= 0 && end <= buf.length && end - start >= HEADER)) return;
    let now = -1;
    if (!this.#cycleOpen) {
      now = performance.now();
      this.#cycleOpen = true;
      this.#cycleStart = now;
      if (this.#idle && !this.#xactOpen) {
        this.#xactOpen = true;
        this.#xactStart = now;
      }
    }
    switch (type) {
      case FE.Query: {
        let text = '';
        // The string's terminator ends the frame: checked in O(1), so a
        // tracker that wants no text never scans the query.
        if (buf[end - 1] === NUL && this.#wants()) {
          const textEnd = cstringEnd(buf, start + HEADER, end);
          if (textEnd > start + HEADER) text = buf.toString('utf8', start + HEADER, textEnd);
        }
        this.#sent(text, now < 0 ? performance.now() : now);
        return;
      }
      case FE.Parse:
        if (this.#wants()) this.#parse(buf, start, end);
        return;
      case FE.Bind:
        if (this.#wants()) this.#bind(buf, start, end);
        return;
      case FE.Execute: {
        let text = '';
        if (this.#wants()) {
          const nameEnd = cstringEnd(buf, start + HEADER, end);
          if (nameEnd >= 0)
            text =
              nameEnd === start + HEADER ? this.#unnamedPortal : (this.#portals.get(buf.toString('latin1', start + HEADER, nameEnd)) ?? '');
        }
        this.#sent(text, now < 0 ? performance.now() : now);
        return;
      }
      case FE.Close:
        this.#close(buf, start, end);
        return;
      default:
      // Describe, Sync, FunctionCall and the rest: only the start of a cycle.
    }
  }

  /** A client Execute or Query went to the server: the next ordinal is its own. */
  #sent(text: string, startedAt: number): void {
    const ord = this.#nextOrdinal++;
    const early = this.#early.size > 0 ? this.#early.get(ord) : undefined;
    if (early !== undefined) {
      this.#early.delete(ord);
      if (early.end === 'gone') return;
      if (early.end === 'done') {
        this.#report(text, performance.now() - startedAt, early.rows, early.sqlstate);
        return;
      }
    }
    const p = this.#slot(ord);
    p.text = text;
    p.startedAt = startedAt;
    p.rows = early?.rows ?? 0;
    p.sqlstate = early?.sqlstate ?? null;
  }

  /** The early record of an ordinal the tracker has not seen yet. */
  #earlyOf(ord: number): Early {
    let e = this.#early.get(ord);
    if (e === undefined) {
      e = { rows: 0, sqlstate: null, end: null };
      this.#early.set(ord, e);
    }
    return e;
  }

  /** A free slot for ordinal `ord` (the ring grows when the one it maps to is still in use). */
  #slot(ord: number): Pending {
    for (;;) {
      const p = this.#ring[ord & (this.#ring.length - 1)] as Pending;
      if (p.ord === -1) {
        p.ord = ord;
        this.#live++;
        return p;
      }
      if (this.#ring.length >= MAX_PENDING) {
        // Out of step (a ledger no longer watched): start over.
        for (const q of this.#ring) q.ord = -1;
        this.#live = 0;
        continue;
      }
      const old = this.#ring;
      const ring: Pending[] = new Array(old.length * 2);
      for (let i = 0; i < ring.length; i++) ring[i] = new Pending();
      for (const q of old) if (q.ord !== -1) ring[q.ord & (ring.length - 1)] = q;
      this.#ring = ring;
    }
  }

  /** The pending statement with this ordinal, or undefined. */
  #get(ord: number): Pending | undefined {
    const p = this.#ring[ord & (this.#ring.length - 1)] as Pending;
    return p.ord === ord ? p : undefined;
  }

  #free(p: Pending): void {
    p.ord = -1;
    p.text = '';
    this.#live--;
  }

  /** A server frame the client gets, header included, at buf[start, end): only ReadyForQuery matters here (cycles). */
  onServerFrame(type: number, buf: Buffer, start: number, end: number): void {
    if (type !== BE.ReadyForQuery || !(start >= 0 && end <= buf.length && end - start > HEADER)) return;
    this.#ready(buf[start + HEADER]!);
  }

  // ---------------------------------------------------------------- LedgerWatcher

  sent(): number {
    return this.#ledgerOrdinal++;
  }

  /** Where what the ledger says of `ord` goes: its pending statement, or (the ledger ahead of the frame) an early record. */
  #record(ord: number): { rows: number; sqlstate: string | null } {
    const p = this.#get(ord);
    if (p !== undefined) return p;
    // Not pending and already seen: it ended; nothing to keep.
    if (ord < this.#nextOrdinal) return { rows: 0, sqlstate: null };
    return this.#earlyOf(ord);
  }

  rows(ordinal: number, buf: Buffer, start: number, end: number): void {
    if (buf[start] === BE.CommandComplete) this.#record(ordinal).rows += tagRows(buf, start, end);
  }

  error(ordinal: number, buf: Buffer, start: number, end: number): void {
    const p = this.#record(ordinal);
    // A Query stops at its first error; keep that one.
    p.sqlstate ??= errorCode(buf, start, end);
  }

  done(ordinal: number): void {
    const p = this.#get(ordinal);
    if (p === undefined) {
      if (ordinal >= this.#nextOrdinal) this.#earlyOf(ordinal).end = 'done';
      return;
    }
    const { text, startedAt, rows, sqlstate } = p;
    this.#free(p);
    this.#report(text, performance.now() - startedAt, rows, sqlstate);
  }

  gone(ordinal: number): void {
    const p = this.#get(ordinal);
    if (p !== undefined) this.#free(p);
    else if (ordinal >= this.#nextOrdinal) this.#earlyOf(ordinal).end = 'gone';
  }

  /** Forgets pending executions and the current cycle (the session hands its server back mid-work). Statement names stay: they belong to the client. */
  reset(): void {
    for (const p of this.#ring) if (p.ord !== -1) this.#free(p);
    this.#early.clear();
    this.#unnamedPortal = '';
    this.#portals.clear();
    this.#cycleOpen = false;
    this.#idle = true;
    this.#xactOpen = false;
  }

  // Parse: statement name, query text, parameter types (not needed).
  #parse(buf: Buffer, start: number, end: number): void {
    const nameEnd = cstringEnd(buf, start + HEADER, end);
    if (nameEnd < 0) return;
    const textEnd = cstringEnd(buf, nameEnd + 1, end);
    if (textEnd < 0) return;
    const text = buf.toString('utf8', nameEnd + 1, textEnd);
    if (nameEnd === start + HEADER) this.#unnamedStatement = text;
    // A named Parse replaces what we had. (PostgreSQL refuses to redefine an
    // existing name, 42P05, but it also never creates a name whose Parse
    // failed; we see neither outcome, and this is right for the second.)
    else remember(this.#statements, buf.toString('latin1', start + HEADER, nameEnd), text);
  }

  // Bind: portal name, statement name, then parameters (not needed).
  #bind(buf: Buffer, start: number, end: number): void {
    const portalEnd = cstringEnd(buf, start + HEADER, end);
    if (portalEnd < 0) return;
    const statementEnd = cstringEnd(buf, portalEnd + 1, end);
    if (statementEnd < 0) return;
    const text =
      statementEnd === portalEnd + 1
        ? this.#unnamedStatement
        : (this.#statements.get(buf.toString('latin1', portalEnd + 1, statementEnd)) ?? '');
    if (portalEnd === start + HEADER) this.#unnamedPortal = text;
    else remember(this.#portals, buf.toString('latin1', start + HEADER, portalEnd), text);
  }

  // Close: 'S' or 'P', then the name.
  #close(buf: Buffer, start: number, end: number): void {
    if (end - start < HEADER + 2) return;
    const what = buf[start + HEADER];
    const nameEnd = cstringEnd(buf, start + HEADER + 1, end);
    if (nameEnd < 0) return;
    const unnamed = nameEnd === start + HEADER + 1;
    if (what === CLOSE_STATEMENT) {
      if (unnamed) this.#unnamedStatement = '';
      else if (this.#statements.size > 0) this.#statements.delete(buf.toString('latin1', start + HEADER + 1, nameEnd));
    } else if (what === CLOSE_PORTAL) {
      if (unnamed) this.#unnamedPortal = '';
      else if (this.#portals.size > 0) this.#portals.delete(buf.toString('latin1', start + HEADER + 1, nameEnd));
    }
  }

  #ready(status: number): void {
    const now = performance.now();
    const queryUs = this.#cycleOpen ? (now - this.#cycleStart) * 1000 : 0;
    let xactUs = -1;
    this.#idle = status === TX.Idle;
    if (this.#idle) {
      xactUs = this.#xactOpen ? (now - this.#xactStart) * 1000 : 0;
      this.#xactOpen = false;
    }
    this.#cycleOpen = false;
    this.#sink.onCycle(queryUs, xactUs);
  }

  #report(text: string, durationMs: number, rows: number, sqlstate: string | null): void {
    this.statements++;
    this.#sink.onStatement(text, durationMs * 1000, rows, sqlstate);
  }
}
