// Statement classification for transaction pooling.
//
// In transaction pooling a client's statements run on whichever server
// connection it gets for each transaction, so whatever a statement leaves in
// the server session (a SET, a LISTEN, a prepared statement, a temp table, a
// WITH HOLD cursor, a session advisory lock, a LOADed library ...) is lost or,
// worse, inherited by the next client of that connection. This module owns
// recognising such statements in the SQL text of a Query or Parse message.
// What to do about each kind (emulate, pin, refuse) is the caller's decision.
//
// It reads tokens from ./lexer.ts, never raw text: the kind comes from the
// first tokens of each statement (a bounded head), and calls that matter
// wherever they appear (session advisory locks, set_config) are found by a
// scan over all of its tokens with a few tokens of look-behind. Like the
// lexer it is linear and never throws; what PostgreSQL would reject becomes
// an 'unknown' statement. The caller caches results by statement text.
//
// Grammar facts follow the SQL command reference pages
// (https://www.postgresql.org/docs/current/sql-commands.html).

import { downcaseIdentifier, Lexer, type LexOptions, StatementSplitter, TOKEN, type Token } from './lexer.ts';

export const STATEMENT_KIND = {
  /** SET [SESSION|LOCAL] name TO|= value, SET TIME ZONE, SET NAMES, SET SCHEMA, SET XML OPTION. */
  SET: 'set',
  /** SET TRANSACTION ..., or SET of a transaction_* parameter: ends with the transaction. */
  SET_TRANSACTION: 'set_transaction',
  /** SET SESSION CHARACTERISTICS AS TRANSACTION ...: the session's default_transaction_* settings. */
  SET_SESSION_CHARACTERISTICS: 'set_session_characteristics',
  /** SET CONSTRAINTS ...: ends with the transaction. */
  SET_CONSTRAINTS: 'set_constraints',
  RESET: 'reset',
  /** SET [SESSION|LOCAL] ROLE, RESET ROLE. */
  SET_ROLE: 'set_role',
  /** SET [SESSION|LOCAL] SESSION AUTHORIZATION, RESET SESSION AUTHORIZATION. */
  SET_SESSION_AUTHORIZATION: 'set_session_authorization',
  PREPARE: 'prepare',
  EXECUTE: 'execute',
  DEALLOCATE: 'deallocate',
  LISTEN: 'listen',
  UNLISTEN: 'unlisten',
  NOTIFY: 'notify',
  DISCARD: 'discard',
  /** CREATE TEMP TABLE/VIEW/SEQUENCE, CREATE ... pg_temp.name, SELECT ... INTO TEMP. */
  CREATE_TEMP: 'create_temp',
  DECLARE_CURSOR: 'declare_cursor',
  CLOSE_CURSOR: 'close_cursor',
  FETCH: 'fetch',
  MOVE: 'move',
  BEGIN: 'begin',
  START_TRANSACTION: 'start_transaction',
  COMMIT: 'commit',
  END: 'end',
  ROLLBACK: 'rollback',
  ABORT: 'abort',
  SAVEPOINT: 'savepoint',
  RELEASE: 'release',
  ROLLBACK_TO: 'rollback_to',
  PREPARE_TRANSACTION: 'prepare_transaction',
  COMMIT_PREPARED: 'commit_prepared',
  ROLLBACK_PREPARED: 'rollback_prepared',
  LOAD: 'load',
  COPY: 'copy',
  /** SELECT, TABLE name, or a parenthesized query. */
  SELECT: 'select',
  INSERT: 'insert',
  UPDATE: 'update',
  DELETE: 'delete',
  WITH: 'with',
  VALUES: 'values',
  /** Any other statement PostgreSQL has (CREATE, ALTER, SHOW, DO, EXPLAIN ...). */
  OTHER: 'other',
  /** The whole text holds no statement (only whitespace, comments, ';'). */
  EMPTY: 'empty',
  /** Not a statement PostgreSQL would accept: a lexical error, unbalanced parentheses, an unknown first word, a malformed form. */
  UNKNOWN: 'unknown',
} as const;
export type StatementKind = (typeof STATEMENT_KIND)[keyof typeof STATEMENT_KIND];

export const DISCARD_TARGET = { ALL: 'all', PLANS: 'plans', SEQUENCES: 'sequences', TEMP: 'temp' } as const;
export type DiscardTarget = (typeof DISCARD_TARGET)[keyof typeof DISCARD_TARGET];

/**
 * The functions that take or release advisory locks held until the session
 * ends (or an explicit unlock), unlike the pg_*_xact_* ones released at the
 * end of the transaction.
 */
export const SESSION_ADVISORY_LOCK_FUNCTIONS: ReadonlySet<string> = new Set([
  'pg_advisory_lock',
  'pg_advisory_lock_shared',
  'pg_try_advisory_lock',
  'pg_try_advisory_lock_shared',
  'pg_advisory_unlock',
  'pg_advisory_unlock_shared',
  'pg_advisory_unlock_all',
]);

/** Per-kind details. Names of prepared statements, channels, cursors and savepoints are identifier values (lower-cased unless quoted). */
export type StatementDetail =
  /** name: lower-cased, dotted for custom settings; value: the raw SQL text after TO / = (or after TIME ZONE, NAMES, SCHEMA, XML OPTION). */
  | { readonly kind: 'set'; readonly name: string; readonly local: boolean; readonly value: string }
  /** value: the raw SQL text after SET [LOCAL|SESSION]. */
  | { readonly kind: 'set_transaction'; readonly local: boolean; readonly value: string }
  /** value: the raw transaction modes after AS TRANSACTION. */
  | { readonly kind: 'set_session_characteristics'; readonly local: boolean; readonly value: string }
  | { readonly kind: 'set_constraints'; readonly value: string }
  /** name: lower-cased parameter name, or 'all'. */
  | { readonly kind: 'reset'; readonly name: string }
  /** value: the raw role text; null for RESET. */
  | { readonly kind: 'set_role'; readonly local: boolean; readonly value: string | null }
  /** value: the raw user text (or DEFAULT); null for RESET. */
  | { readonly kind: 'set_session_authorization'; readonly local: boolean; readonly value: string | null }
  | { readonly kind: 'prepare'; readonly name: string }
  | { readonly kind: 'execute'; readonly name: string }
  /** name: null for DEALLOCATE ALL. */
  | { readonly kind: 'deallocate'; readonly name: string | null }
  | { readonly kind: 'listen'; readonly channel: string }
  /** channel: '*' for UNLISTEN *. */
  | { readonly kind: 'unlisten'; readonly channel: string }
  | { readonly kind: 'notify'; readonly channel: string }
  | { readonly kind: 'discard'; readonly what: DiscardTarget }
  /** onCommitDrop: the table goes at the end of the transaction, so nothing outlives it. */
  | { readonly kind: 'create_temp'; readonly onCommitDrop: boolean }
  | { readonly kind: 'declare_cursor'; readonly name: string; readonly withHold: boolean }
  /** name: null for CLOSE ALL. */
  | { readonly kind: 'close_cursor'; readonly name: string | null }
  | { readonly kind: 'savepoint' | 'release' | 'rollback_to'; readonly name: string }
  /** chain: AND CHAIN, which opens a new transaction at once. */
  | { readonly kind: 'commit' | 'end' | 'rollback' | 'abort'; readonly chain: boolean }
  | { readonly kind: 'prepare_transaction' | 'commit_prepared' | 'rollback_prepared'; readonly gid: string }
  | { readonly kind: 'load'; readonly library: string }
  | {
      readonly kind:
        | 'fetch'
        | 'move'
        | 'begin'
        | 'start_transaction'
        | 'copy'
        | 'select'
        | 'insert'
        | 'update'
        | 'delete'
        | 'with'
        | 'values'
        | 'other'
        | 'empty'
        | 'unknown';
    };

/** Compile-time check that StatementDetail has a shape for exactly the kinds of STATEMENT_KIND. */
export type DetailKindsMatch = [StatementDetail['kind']] extends [StatementKind]
  ? [StatementKind] extends [StatementDetail['kind']]
    ? true
    : false
  : false;
true satisfies DetailKindsMatch;

export interface StatementCommon {
  /** Offset of the statement's first token (leading comments excluded). */
  readonly start: number;
  /** Offset after its last token (the ';' excluded). */
  readonly end: number;
  /** The first unquoted word, lower-cased, after any opening parentheses; null when there is none. */
  readonly firstKeyword: string | null;
  /**
   * The statement calls a session-level advisory lock function (any schema
   * qualification). Also set where the call only sits in a definition (a
   * view, a BEGIN ATOMIC body, PREPARE): the lock is taken when that runs.
   */
  readonly sessionAdvisoryLock: boolean;
  /** set_config(name, value, is_local) with is_local a literal false: a session-level SET in disguise. */
  readonly setConfigSession: boolean;
  /** set_config(...) whose is_local is not a literal (a parameter, an expression): may be session-level. */
  readonly setConfigUndetermined: boolean;
}

export type StatementInfo = StatementCommon & StatementDetail;

/**
 * Classifies each statement of a SQL text (a Query message may hold several).
 * Statements with no token are left out, as PostgreSQL ignores them; text
 * with no statement at all yields one 'empty' entry spanning it.
 */
export function classify(sql: string, options: LexOptions = {}): StatementInfo[] {
  const lexer = new Lexer(sql, options);
  const splitter = new StatementSplitter();
  const out: StatementInfo[] = [];
  let scanner = new StatementScanner();
  for (let t = lexer.next(); t !== null; t = lexer.next()) {
    if (splitter.push(t)) {
      if (scanner.count > 0) out.push(scanner.finish(sql, splitter.malformed));
      splitter.reset();
      scanner = new StatementScanner();
      continue;
    }
    scanner.push(t);
  }
  if (scanner.count > 0) out.push(scanner.finish(sql, splitter.malformed));
  if (out.length === 0) {
    out.push({
      kind: 'empty',
      start: 0,
      end: sql.length,
      firstKeyword: null,
      sessionAdvisoryLock: false,
      setConfigSession: false,
      setConfigUndetermined: false,
    });
  }
  return out;
}

// Every kind is decided within the first tokens; the rest of a long
// statement only goes through the streaming checks.
const HEAD_TOKENS = 64;
// A literal is_local argument is a few tokens ("(false)::boolean").
const MAX_IS_LOCAL_TOKENS = 16;
// set_config calls nested in the arguments of other set_config calls.
const MAX_OPEN_CALLS = 8;

function isWord(t: Token | null | undefined, w: string): boolean {
  return t != null && t.kind === TOKEN.IDENT && t.value === w;
}

function isName(t: Token | null | undefined): t is Token {
  return t != null && (t.kind === TOKEN.IDENT || t.kind === TOKEN.QUOTED_IDENT);
}

function isPunct(t: Token | null | undefined, p: string): boolean {
  return t != null && t.kind === TOKEN.PUNCT && t.value === p;
}

/** The temporary schema: pg_temp, or its real name pg_temp_N. */
function isTempSchema(t: Token | null | undefined): boolean {
  if (!isName(t)) return false;
  const v = t.value;
  if (v === 'pg_temp') return true;
  if (!v.startsWith('pg_temp_') || v.length === 8) return false;
  for (let i = 8; i < v.length; i++) {
    const c = v.charCodeAt(i);
    if (c < 48 || c > 57) return false;
  }
  return true;
}

// INSERT INTO and MERGE INTO name a target table; only SELECT's INTO creates one.
function isTableTargetVerb(t: Token | null | undefined): boolean {
  return isWord(t, 'insert') || isWord(t, 'merge');
}

// FUNCTION name(...) in DROP / ALTER / COMMENT ON / GRANT ON names a routine, it does not call it.
function isRoutineWord(t: Token | null | undefined): boolean {
  return isWord(t, 'function') || isWord(t, 'procedure') || isWord(t, 'routine');
}

/** An open set_config( call: which argument the scan is in, and the tokens of the third. */
interface SetConfigCall {
  /** Bracket depth just inside its '('. */
  readonly depth: number;
  arg: number;
  readonly isLocal: Token[];
  overflow: boolean;
}

/** Accumulates one statement's tokens and everything the classification needs from them. */
class StatementScanner {
  count = 0;
  #start = 0;
  #end = 0;
  readonly #head: Token[] = [];
  #hasError = false;
  // Nesting of ( and [ (commas inside ARRAY[...] do not separate arguments).
  #depth = 0;
  // The four previous tokens, most recent first.
  #r1: Token | null = null;
  #r2: Token | null = null;
  #r3: Token | null = null;
  #r4: Token | null = null;
  #advisory = false;
  #setConfigSession = false;
  #setConfigUndetermined = false;
  #intoTemp = false;
  #onCommitDrop = false;
  readonly #calls: SetConfigCall[] = [];

  push(t: Token): void {
    if (this.count === 0) this.#start = t.start;
    this.count++;
    this.#end = t.end;
    if (this.#head.length < HEAD_TOKENS) this.#head.push(t);
    if (t.kind === TOKEN.ERROR) this.#hasError = true;
    if (this.#calls.length > 0) this.#trackCalls(t);
    if (t.kind === TOKEN.PUNCT) {
      if (t.value === '(') {
        const setConfig = this.#callOpens();
        this.#depth++;
        if (setConfig) {
          // Each token visits every open call, so nesting is capped to stay linear.
          if (this.#calls.length < MAX_OPEN_CALLS) this.#calls.push({ depth: this.#depth, arg: 0, isLocal: [], overflow: false });
          else this.#setConfigUndetermined = true;
        }
      } else if (t.value === '[') this.#depth++;
      else if (t.value === ')' || t.value === ']') {
        if (this.#depth > 0) this.#depth--;
      } else if (t.value === '.') this.#tempQualifier();
    } else if (t.kind === TOKEN.IDENT) this.#word(t);
    this.#r4 = this.#r3;
    this.#r3 = this.#r2;
    this.#r2 = this.#r1;
    this.#r1 = t;
  }

  /** Called at a '(': flags a session advisory lock call; true when set_config( opens. */
  #callOpens(): boolean {
    const name = this.#r1;
    if (!isName(name)) return false;
    const lock = SESSION_ADVISORY_LOCK_FUNCTIONS.has(name.value);
    if (!lock && name.value !== 'set_config') return false;
    // Skip a schema qualification to see what comes before the name.
    const before = isPunct(this.#r2, '.') ? this.#r4 : this.#r2;
    if (isRoutineWord(before)) return false;
    if (lock) {
      this.#advisory = true;
      return false;
    }
    return true;
  }

  #trackCalls(t: Token): void {
    const calls = this.#calls;
    for (let k = calls.length - 1; k >= 0; k--) {
      const c = calls[k]!;
      if (this.#depth === c.depth && t.kind === TOKEN.PUNCT) {
        if (t.value === ',') {
          c.arg++;
          continue;
        }
        if (t.value === ')' || t.value === ']') {
          // Only the innermost open call can be closed by this token.
          calls.splice(k, 1);
          this.#settle(c);
          continue;
        }
      }
      if (c.arg === 2) {
        if (c.isLocal.length < MAX_IS_LOCAL_TOKENS) c.isLocal.push(t);
        else c.overflow = true;
      }
    }
  }

  #settle(c: SetConfigCall): void {
    const v = c.arg === 2 && !c.overflow ? booleanLiteral(c.isLocal) : null;
    if (v === false) this.#setConfigSession = true;
    else if (v === null) this.#setConfigUndetermined = true;
  }

  #word(t: Token): void {
    switch (t.value) {
      case 'temp':
      case 'temporary':
        // SELECT ... INTO [LOCAL|GLOBAL] TEMP[ORARY] [TABLE] name
        if (isWord(this.#r1, 'into') && !isTableTargetVerb(this.#r2)) this.#intoTemp = true;
        else if ((isWord(this.#r1, 'local') || isWord(this.#r1, 'global')) && isWord(this.#r2, 'into') && !isTableTargetVerb(this.#r3))
          this.#intoTemp = true;
        break;
      case 'drop':
        if (this.#depth === 0 && isWord(this.#r1, 'commit') && isWord(this.#r2, 'on')) this.#onCommitDrop = true;
        break;
    }
  }

  // SELECT ... INTO [TABLE] pg_temp.name
  #tempQualifier(): void {
    if (!isTempSchema(this.#r1)) return;
    if (isWord(this.#r2, 'into') && !isTableTargetVerb(this.#r3)) this.#intoTemp = true;
    else if (isWord(this.#r2, 'table') && isWord(this.#r3, 'into') && !isTableTargetVerb(this.#r4)) this.#intoTemp = true;
  }

  finish(sql: string, malformed: boolean): StatementInfo {
    // An unclosed call cannot be judged (and PostgreSQL will reject it).
    if (this.#calls.length > 0) this.#setConfigUndetermined = true;
    const head = this.#head;
    let first = 0;
    while (isPunct(head[first], '(')) first++;
    const firstToken = head[first];
    // Object.assign onto a fresh literal: much cheaper than spreading two
    // objects when a Query holds hundreds of thousands of statements.
    const common = {
      start: this.#start,
      end: this.#end,
      firstKeyword: firstToken !== undefined && firstToken.kind === TOKEN.IDENT ? firstToken.value : null,
      sessionAdvisoryLock: this.#advisory,
      setConfigSession: this.#setConfigSession,
      setConfigUndetermined: this.#setConfigUndetermined,
    } satisfies StatementCommon;
    if (malformed || this.#hasError) return Object.assign(common, UNKNOWN);
    const ctx: Context = { sql, head, count: this.count, end: this.#end, intoTemp: this.#intoTemp, onCommitDrop: this.#onCommitDrop };
    return Object.assign(common, statement(ctx, 0));
  }
}

/** What the head parsers read: the statement's first tokens and its streaming findings. */
interface Context {
  readonly sql: string;
  readonly head: readonly Token[];
  /** Number of tokens in the statement (head may hold fewer). */
  readonly count: number;
  /** Offset after the statement's last token. */
  readonly end: number;
  readonly intoTemp: boolean;
  readonly onCommitDrop: boolean;
}

const UNKNOWN: StatementDetail = { kind: 'unknown' };

function kw(ctx: Context, i: number): string | null {
  const t = ctx.head[i];
  return t !== undefined && t.kind === TOKEN.IDENT ? t.value : null;
}

function nameAt(ctx: Context, i: number): string | null {
  const t = ctx.head[i];
  return isName(t) ? t.value : null;
}

function punctAt(ctx: Context, i: number, p: string): boolean {
  return isPunct(ctx.head[i], p);
}

function opAt(ctx: Context, i: number, op: string): boolean {
  const t = ctx.head[i];
  return t !== undefined && t.kind === TOKEN.OP && t.value === op;
}

function stringAt(ctx: Context, i: number): string | null {
  const t = ctx.head[i];
  return t !== undefined && t.kind === TOKEN.STRING ? t.value : null;
}

/** True when token i is the last of the statement. */
function lastAt(ctx: Context, i: number): boolean {
  return i === ctx.count - 1;
}

/** The raw SQL text from token i to the end of the statement, or null when there is no token i. */
function rawFrom(ctx: Context, i: number): string | null {
  const t = ctx.head[i];
  return t === undefined ? null : ctx.sql.slice(t.start, ctx.end);
}

/** A parameter name, possibly dotted (custom settings): lower-cased, as PostgreSQL compares them case-insensitively. */
function settingName(ctx: Context, i: number): { name: string; next: number } | null {
  let name = nameAt(ctx, i);
  if (name === null) return null;
  let next = i + 1;
  for (;;) {
    const part = punctAt(ctx, next, '.') ? nameAt(ctx, next + 1) : null;
    if (part === null) break;
    name += `.${part}`;
    next += 2;
  }
  return { name: downcaseIdentifier(name), next };
}

/** Statement keywords PostgreSQL accepts that need no detail here. */
const OTHER_STATEMENTS: ReadonlySet<string> = new Set([
  'alter',
  'analyze',
  'analyse',
  'call',
  'checkpoint',
  'cluster',
  'comment',
  'create',
  'do',
  'drop',
  'explain',
  'grant',
  'import',
  'lock',
  'merge',
  'reassign',
  'refresh',
  'reindex',
  'revoke',
  'security',
  'show',
  'truncate',
  'vacuum',
]);

/** Kind and details of the statement whose first token is head[i]. */
function statement(ctx: Context, i: number): StatementDetail {
  const word = kw(ctx, i);
  if (word === null) {
    // A parenthesized query: (SELECT ...), ((VALUES ...)), (WITH ...)
    let j = i;
    while (punctAt(ctx, j, '(')) j++;
    if (j > i) {
      const inner = kw(ctx, j);
      if (inner === 'select' || inner === 'values' || inner === 'with' || inner === 'table') return selectLike(ctx, 'select');
    }
    return UNKNOWN;
  }
  switch (word) {
    case 'select':
    case 'table':
      return selectLike(ctx, 'select');
    case 'with':
      return selectLike(ctx, 'with');
    case 'values':
      return { kind: 'values' };
    case 'insert':
    case 'update':
    case 'delete':
    case 'copy':
    case 'fetch':
    case 'move':
    case 'begin':
      return { kind: word };
    case 'set':
      return setStatement(ctx, i + 1);
    case 'reset':
      return resetStatement(ctx, i + 1);
    case 'prepare': {
      const gid = kw(ctx, i + 1) === 'transaction' ? stringAt(ctx, i + 2) : null;
      if (gid !== null) return lastAt(ctx, i + 2) ? { kind: 'prepare_transaction', gid } : UNKNOWN;
      const name = nameAt(ctx, i + 1);
      return name === null ? UNKNOWN : { kind: 'prepare', name };
    }
    case 'execute': {
      const name = nameAt(ctx, i + 1);
      return name === null ? UNKNOWN : { kind: 'execute', name };
    }
    case 'deallocate': {
      // DEALLOCATE [PREPARE] name | ALL; "prepare" alone is a statement name.
      const j = kw(ctx, i + 1) === 'prepare' && ctx.count > i + 2 ? i + 2 : i + 1;
      if (!lastAt(ctx, j)) return UNKNOWN;
      if (kw(ctx, j) === 'all') return { kind: 'deallocate', name: null };
      const name = nameAt(ctx, j);
      return name === null ? UNKNOWN : { kind: 'deallocate', name };
    }
    case 'listen': {
      const channel = nameAt(ctx, i + 1);
      return channel !== null && lastAt(ctx, i + 1) ? { kind: 'listen', channel } : UNKNOWN;
    }
    case 'unlisten': {
      if (opAt(ctx, i + 1, '*') && lastAt(ctx, i + 1)) return { kind: 'unlisten', channel: '*' };
      const channel = nameAt(ctx, i + 1);
      return channel !== null && lastAt(ctx, i + 1) ? { kind: 'unlisten', channel } : UNKNOWN;
    }
    case 'notify': {
      // NOTIFY channel [, 'payload']
      const channel = nameAt(ctx, i + 1);
      if (channel === null) return UNKNOWN;
      const bare = lastAt(ctx, i + 1);
      const withPayload = punctAt(ctx, i + 2, ',') && stringAt(ctx, i + 3) !== null && lastAt(ctx, i + 3);
      return bare || withPayload ? { kind: 'notify', channel } : UNKNOWN;
    }
    case 'discard':
      return discardStatement(ctx, i + 1);
    case 'declare':
      return declareStatement(ctx, i + 1);
    case 'close': {
      if (!lastAt(ctx, i + 1)) return UNKNOWN;
      if (kw(ctx, i + 1) === 'all') return { kind: 'close_cursor', name: null };
      const name = nameAt(ctx, i + 1);
      return name === null ? UNKNOWN : { kind: 'close_cursor', name };
    }
    case 'start':
      return kw(ctx, i + 1) === 'transaction' ? { kind: 'start_transaction' } : UNKNOWN;
    case 'commit':
    case 'rollback': {
      if (kw(ctx, i + 1) === 'prepared') {
        const gid = stringAt(ctx, i + 2);
        if (gid === null || !lastAt(ctx, i + 2)) return UNKNOWN;
        return { kind: word === 'commit' ? 'commit_prepared' : 'rollback_prepared', gid };
      }
      if (word === 'rollback') {
        // ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] name
        let j = i + 1;
        const w = kw(ctx, j);
        if (w === 'work' || w === 'transaction') j++;
        if (kw(ctx, j) === 'to') return savepointName(ctx, j + 1, 'rollback_to');
      }
      return { kind: word, chain: chains(ctx, i + 1) };
    }
    case 'end':
    case 'abort':
      return { kind: word, chain: chains(ctx, i + 1) };
    case 'savepoint': {
      const name = nameAt(ctx, i + 1);
      return name !== null && lastAt(ctx, i + 1) ? { kind: 'savepoint', name } : UNKNOWN;
    }
    case 'release':
      return savepointName(ctx, i + 1, 'release');
    case 'load': {
      const library = stringAt(ctx, i + 1);
      return library !== null && lastAt(ctx, i + 1) ? { kind: 'load', library } : UNKNOWN;
    }
    case 'create':
      return createStatement(ctx, i + 1);
    case 'explain':
      return explainStatement(ctx, i + 1);
    default:
      return OTHER_STATEMENTS.has(word) ? { kind: 'other' } : UNKNOWN;
  }
}

// SELECT ... INTO TEMP t creates a temp table like CREATE TEMP TABLE t AS.
function selectLike(ctx: Context, kind: 'select' | 'with'): StatementDetail {
  return ctx.intoTemp ? { kind: 'create_temp', onCommitDrop: false } : { kind };
}

/** [SAVEPOINT] name, ending the statement: RELEASE and ROLLBACK TO share it. */
function savepointName(ctx: Context, i: number, kind: 'release' | 'rollback_to'): StatementDetail {
  // "RELEASE savepoint" alone releases a savepoint named savepoint.
  const j = kw(ctx, i) === 'savepoint' && ctx.count > i + 1 ? i + 1 : i;
  const name = nameAt(ctx, j);
  return name !== null && lastAt(ctx, j) ? { kind, name } : UNKNOWN;
}

/** AND CHAIN (not AND NO CHAIN) among the tokens from i. */
function chains(ctx: Context, i: number): boolean {
  for (let j = i; j < ctx.head.length; j++) if (kw(ctx, j) === 'and' && kw(ctx, j + 1) === 'chain') return true;
  return false;
}

// Parameters that belong to the current transaction whatever the SET says:
// they are reset from their default_* counterparts when a transaction starts.
const TRANSACTION_SETTINGS: ReadonlySet<string> = new Set(['transaction_isolation', 'transaction_read_only', 'transaction_deferrable']);

/** SET ..., with i at the token after SET. */
function setStatement(ctx: Context, i: number): StatementDetail {
  let j = i;
  let local = false;
  const scope = punctAt(ctx, j + 1, '.') ? null : kw(ctx, j);
  if (scope === 'local') {
    local = true;
    j++;
  } else if (scope === 'session') {
    // SESSION is the scope unless it starts SESSION AUTHORIZATION / SESSION CHARACTERISTICS.
    const nextWord = kw(ctx, j + 1);
    if (nextWord !== 'authorization' && nextWord !== 'characteristics') j++;
  }
  const form = punctAt(ctx, j + 1, '.') ? null : kw(ctx, j);
  const set = (name: string, from: number): StatementDetail => {
    const value = rawFrom(ctx, from);
    return value === null ? UNKNOWN : { kind: 'set', name, local, value };
  };
  switch (form) {
    case 'transaction': {
      // SET TRANSACTION modes | SET TRANSACTION SNAPSHOT 'id'
      const value = rawFrom(ctx, j);
      return ctx.count > j + 1 && value !== null ? { kind: 'set_transaction', local, value } : UNKNOWN;
    }
    case 'session': {
      if (kw(ctx, j + 1) === 'characteristics') {
        if (kw(ctx, j + 2) !== 'as' || kw(ctx, j + 3) !== 'transaction') return UNKNOWN;
        const value = rawFrom(ctx, j + 4);
        return value === null ? UNKNOWN : { kind: 'set_session_characteristics', local, value };
      }
      if (kw(ctx, j + 1) !== 'authorization') return UNKNOWN;
      const value = rawFrom(ctx, j + 2);
      return value === null ? UNKNOWN : { kind: 'set_session_authorization', local, value };
    }
    case 'role': {
      if (opAt(ctx, j + 1, '=') || kw(ctx, j + 1) === 'to') break; // SET role = x: the generic form
      const value = rawFrom(ctx, j + 1);
      return value === null ? UNKNOWN : { kind: 'set_role', local, value };
    }
    case 'time':
      if (kw(ctx, j + 1) === 'zone') return set('timezone', j + 2);
      break;
    case 'names':
      // SET NAMES with no encoding means the default.
      return { kind: 'set', name: 'client_encoding', local, value: rawFrom(ctx, j + 1) ?? '' };
    case 'schema':
      return set('search_path', j + 1);
    case 'xml':
      if (kw(ctx, j + 1) === 'option') return set('xmloption', j + 2);
      break;
    case 'constraints': {
      const value = rawFrom(ctx, j + 1);
      return value === null ? UNKNOWN : { kind: 'set_constraints', value };
    }
  }
  // SET name TO|= value | SET name FROM CURRENT
  const setting = settingName(ctx, j);
  if (setting === null) return UNKNOWN;
  const k = setting.next;
  let valueAt: number;
  if (kw(ctx, k) === 'to' || opAt(ctx, k, '=')) valueAt = k + 1;
  else if (kw(ctx, k) === 'from' && kw(ctx, k + 1) === 'current' && lastAt(ctx, k + 1)) valueAt = k;
  else return UNKNOWN;
  const value = rawFrom(ctx, valueAt);
  if (value === null) return UNKNOWN;
  // SET ROLE and SET SESSION AUTHORIZATION are these parameters underneath.
  if (setting.name === 'role') return { kind: 'set_role', local, value };
  if (setting.name === 'session_authorization') return { kind: 'set_session_authorization', local, value };
  if (TRANSACTION_SETTINGS.has(setting.name)) return { kind: 'set_transaction', local, value: rawFrom(ctx, j) ?? value };
  return { kind: 'set', name: setting.name, local, value };
}

/** RESET ..., with i at the token after RESET. */
function resetStatement(ctx: Context, i: number): StatementDetail {
  const form = punctAt(ctx, i + 1, '.') ? null : kw(ctx, i);
  switch (form) {
    case 'all':
      return lastAt(ctx, i) ? { kind: 'reset', name: 'all' } : UNKNOWN;
    case 'time':
      if (kw(ctx, i + 1) === 'zone') return lastAt(ctx, i + 1) ? { kind: 'reset', name: 'timezone' } : UNKNOWN;
      break;
    case 'transaction':
      if (kw(ctx, i + 1) === 'isolation' && kw(ctx, i + 2) === 'level' && lastAt(ctx, i + 2))
        return { kind: 'reset', name: 'transaction_isolation' };
      return UNKNOWN;
    case 'session':
      if (kw(ctx, i + 1) === 'authorization')
        return lastAt(ctx, i + 1) ? { kind: 'set_session_authorization', local: false, value: null } : UNKNOWN;
      break;
  }
  const setting = settingName(ctx, i);
  if (setting === null || setting.next !== ctx.count) return UNKNOWN;
  if (setting.name === 'role') return { kind: 'set_role', local: false, value: null };
  if (setting.name === 'session_authorization') return { kind: 'set_session_authorization', local: false, value: null };
  return { kind: 'reset', name: setting.name };
}

function discardStatement(ctx: Context, i: number): StatementDetail {
  if (!lastAt(ctx, i)) return UNKNOWN;
  switch (kw(ctx, i)) {
    case 'all':
      return { kind: 'discard', what: 'all' };
    case 'plans':
      return { kind: 'discard', what: 'plans' };
    case 'sequences':
      return { kind: 'discard', what: 'sequences' };
    case 'temp':
    case 'temporary':
      return { kind: 'discard', what: 'temp' };
    default:
      return UNKNOWN;
  }
}

/** DECLARE name [BINARY] [ASENSITIVE|INSENSITIVE] [[NO] SCROLL] CURSOR [{WITH|WITHOUT} HOLD] FOR query */
function declareStatement(ctx: Context, i: number): StatementDetail {
  const name = nameAt(ctx, i);
  if (name === null) return UNKNOWN;
  let j = i + 1;
  for (;;) {
    const w = kw(ctx, j);
    if (w === 'binary' || w === 'asensitive' || w === 'insensitive' || w === 'no' || w === 'scroll') j++;
    else break;
  }
  if (kw(ctx, j) !== 'cursor') return UNKNOWN;
  const withHold = kw(ctx, j + 1) === 'with' && kw(ctx, j + 2) === 'hold';
  return { kind: 'declare_cursor', name, withHold };
}

// Objects CREATE can put in a schema by qualified name, so in pg_temp.
const SCHEMA_OBJECTS: ReadonlySet<string> = new Set(['table', 'view', 'sequence', 'function', 'procedure', 'type', 'domain', 'aggregate']);

/** CREATE ..., with i at the token after CREATE. */
function createStatement(ctx: Context, i: number): StatementDetail {
  const temp: StatementDetail = { kind: 'create_temp', onCommitDrop: ctx.onCommitDrop };
  let j = i;
  if (kw(ctx, j) === 'or' && kw(ctx, j + 1) === 'replace') j += 2;
  // CREATE [GLOBAL|LOCAL] {TEMP|TEMPORARY} TABLE|VIEW|SEQUENCE|RECURSIVE VIEW (GLOBAL is accepted and ignored)
  const scope = kw(ctx, j);
  if (scope === 'global' || scope === 'local') j++;
  const t = kw(ctx, j);
  if (t === 'temp' || t === 'temporary') return temp;
  if (kw(ctx, j) === 'unlogged') j++;
  let object = kw(ctx, j);
  if (object === 'recursive' || object === 'materialized') {
    j++;
    object = kw(ctx, j);
  }
  if (object === null || !SCHEMA_OBJECTS.has(object)) return { kind: 'other' };
  j++;
  if (kw(ctx, j) === 'if' && kw(ctx, j + 1) === 'not' && kw(ctx, j + 2) === 'exists') j += 3;
  // CREATE TABLE pg_temp.name makes a temp table without saying TEMP.
  if (isTempSchema(ctx.head[j]) && punctAt(ctx, j + 1, '.')) return temp;
  return { kind: 'other' };
}

/**
 * EXPLAIN ANALYZE runs its statement, so EXPLAIN ANALYZE CREATE TEMP TABLE ...
 * AS (or SELECT ... INTO TEMP) creates the table; anything else is 'other'.
 */
function explainStatement(ctx: Context, i: number): StatementDetail {
  let j = i;
  let analyze = false;
  if (punctAt(ctx, j, '(')) {
    // EXPLAIN (option [value], ...) statement
    j++;
    while (j < ctx.head.length && !punctAt(ctx, j, ')')) {
      const w = kw(ctx, j);
      if ((w === 'analyze' || w === 'analyse') && !isFalseOption(ctx.head[j + 1])) analyze = true;
      j++;
    }
    j++;
  } else {
    for (;;) {
      const w = kw(ctx, j);
      if (w === 'analyze' || w === 'analyse') analyze = true;
      else if (w !== 'verbose') break;
      j++;
    }
  }
  if (!analyze) return { kind: 'other' };
  const inner = statement(ctx, j);
  return inner.kind === 'create_temp' ? inner : { kind: 'other' };
}

function isFalseOption(t: Token | undefined): boolean {
  if (t === undefined) return false;
  if (t.kind === TOKEN.IDENT) return t.value === 'false' || t.value === 'off';
  if (t.kind === TOKEN.NUMBER) return t.value === '0';
  if (t.kind === TOKEN.STRING) return parseBoolean(t.value) === false;
  return false;
}

/**
 * The value of an is_local argument when it is a literal: FALSE / TRUE, a
 * string constant read as a boolean ('f', 'off', 'no', '0' ...), either one
 * parenthesized or cast to boolean. Null when it is anything else.
 */
export function booleanLiteral(tokens: readonly Token[]): boolean | null {
  let lo = 0;
  let hi = tokens.length;
  for (;;) {
    if (hi - lo >= 2 && isPunct(tokens[lo], '(') && isPunct(tokens[hi - 1], ')') && closesAt(tokens, lo, hi - 1)) {
      lo++;
      hi--;
    } else if (hi - lo >= 3 && isBoolType(tokens, hi - 1) && isCast(tokens[hi - 2])) hi -= 2;
    else if (
      hi - lo >= 5 &&
      isBoolType(tokens, hi - 1) &&
      isPunct(tokens[hi - 2], '.') &&
      isPgCatalog(tokens[hi - 3]) &&
      isCast(tokens[hi - 4])
    )
      hi -= 4;
    else break;
  }
  if (hi - lo !== 1) return null;
  const t = tokens[lo]!;
  if (t.kind === TOKEN.IDENT) return t.value === 'false' ? false : t.value === 'true' ? true : null;
  if (t.kind === TOKEN.STRING) return parseBoolean(t.value);
  return null;
}

function isCast(t: Token | undefined): boolean {
  return t !== undefined && t.kind === TOKEN.OP && t.value === '::';
}

function isBoolType(tokens: readonly Token[], i: number): boolean {
  return isWord(tokens[i], 'boolean') || isWord(tokens[i], 'bool');
}

function isPgCatalog(t: Token | undefined): boolean {
  return isName(t) && t.value === 'pg_catalog';
}

/** True when the '(' at open is closed by the ')' at close (not by one before it). */
function closesAt(tokens: readonly Token[], open: number, close: number): boolean {
  let depth = 0;
  for (let k = open; k <= close; k++) {
    if (isPunct(tokens[k], '(')) depth++;
    else if (isPunct(tokens[k], ')')) {
      depth--;
      if (depth === 0) return k === close;
    }
  }
  return false;
}

/**
 * PostgreSQL's boolean input: case-insensitive, surrounding whitespace
 * ignored, any unique prefix of true/false/yes/no, on/off (at least two
 * letters), 1/0. Null when not a boolean.
 */
export function parseBoolean(s: string): boolean | null {
  let lo = 0;
  let hi = s.length;
  while (lo < hi && isBlank(s.charCodeAt(lo))) lo++;
  while (hi > lo && isBlank(s.charCodeAt(hi - 1))) hi--;
  const v = downcaseIdentifier(s.slice(lo, hi));
  if (v === '') return null;
  if ('true'.startsWith(v) || 'yes'.startsWith(v)) return true;
  if ('false'.startsWith(v) || 'no'.startsWith(v)) return false;
  if (v === 'on') return true;
  if (v === 'of' || v === 'off') return false;
  if (v === '1') return true;
  if (v === '0') return false;
  return null;
}

function isBlank(c: number): boolean {
  return c === 32 || (c >= 9 && c <= 13);
}
