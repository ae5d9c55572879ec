// The grammar of the admin console: PgBouncer's console commands
// (https://www.pgbouncer.org/usage.html#admin-console), read from the tokens
// of the SQL lexer so that comments, quoting and ';' inside strings behave as
// they do in PostgreSQL. This module owns the question "which command is this
// text"; running it is the executor's business.
//
// Words are case-insensitive and unquoted names fold to lower case, as in SQL;
// a "quoted" database name or key keeps its case.

import { ClientError } from '../errors.ts';
import { splitStatements, TOKEN, type Token, tokenize } from '../sql/lexer.ts';

export type AdminCommand =
  | { verb: 'SHOW'; what: string }
  | { verb: 'PAUSE' | 'RESUME' | 'KILL' | 'RECONNECT' | 'DISABLE' | 'ENABLE' | 'WAIT_CLOSE'; db: string | null }
  | { verb: 'KILL_CLIENT'; id: number }
  | { verb: 'RELOAD' | 'SHUTDOWN' | 'SUSPEND' }
  | { verb: 'SET'; key: string; value: string };

/** An error the client may see: SQLSTATE, message and optional detail, sent as an ERROR. */
/** A console command the client gets an ErrorResponse for (its SQLSTATE, as PgBouncer's console would answer). */
export class AdminError extends ClientError {
  constructor(sqlstate: string, message: string, detail?: string) {
    super(sqlstate, message, { code: 'ERR_ADMIN_COMMAND', detail });
    this.name = 'AdminError';
  }
}

/** 42601 syntax_error, not in protocol/sqlstate.ts because only the console sends it. */
export const SYNTAX_ERROR = '42601';

type DbVerb = 'PAUSE' | 'RESUME' | 'KILL' | 'RECONNECT' | 'DISABLE' | 'ENABLE' | 'WAIT_CLOSE';
type BareVerb = 'RELOAD' | 'SHUTDOWN' | 'SUSPEND';

// Commands whose optional argument is a database name. DISABLE and ENABLE
// need one (PgBouncer: "a database is required").
const DB_VERBS: ReadonlyMap<string, { verb: DbVerb; required: boolean }> = new Map([
  ['pause', { verb: 'PAUSE', required: false }],
  ['resume', { verb: 'RESUME', required: false }],
  ['kill', { verb: 'KILL', required: false }],
  ['reconnect', { verb: 'RECONNECT', required: false }],
  ['disable', { verb: 'DISABLE', required: true }],
  ['enable', { verb: 'ENABLE', required: true }],
  ['wait_close', { verb: 'WAIT_CLOSE', required: false }],
]);

const BARE_VERBS: ReadonlyMap<string, BareVerb> = new Map([
  ['reload', 'RELOAD'],
  ['shutdown', 'SHUTDOWN'],
  ['suspend', 'SUSPEND'],
]);

/** The statements of a Query text, in order, without their ';' and with empty ones dropped. */
export function splitAdminStatements(sql: string): string[] {
  return splitStatements(sql).map((s) => sql.slice(s.start, s.end));
}

function invalid(text: string): AdminError {
  return new AdminError(SYNTAX_ERROR, `invalid command '${text}', use SHOW HELP;`);
}

function isWordToken(t: Token | undefined): t is Token {
  return t !== undefined && (t.kind === TOKEN.IDENT || t.kind === TOKEN.QUOTED_IDENT);
}

function isOp(t: Token | undefined, op: string): boolean {
  return t !== undefined && t.kind === TOKEN.OP && t.value === op;
}

/**
 * Parses one admin statement. A trailing ';', whitespace and comments are
 * allowed; more than one statement is not. Throws AdminError 42601 otherwise.
 */
export function parseAdminCommand(sql: string): AdminCommand {
  const spans = splitStatements(sql);
  const first = spans[0];
  if (spans.length !== 1 || first === undefined) throw invalid(sql.trim());
  const text = sql.slice(first.start, first.end);
  const toks = tokenize(text);
  const cmd = parseTokens(toks);
  if (cmd === null) throw invalid(text);
  return cmd;
}

function parseTokens(toks: readonly Token[]): AdminCommand | null {
  const head = toks[0];
  if (head === undefined || head.kind !== TOKEN.IDENT) return null;
  for (const t of toks) if (t.kind === TOKEN.ERROR) return null;
  const word = head.value;
  if (word === 'show') {
    const what = toks[1];
    if (toks.length !== 2 || what === undefined || what.kind !== TOKEN.IDENT) return null;
    return { verb: 'SHOW', what: what.value };
  }
  if (word === 'set') return parseSet(toks);
  if (word === 'kill_client') {
    const id = toks[1];
    if (toks.length !== 2 || id === undefined || id.kind !== TOKEN.NUMBER || !/^\d+$/.test(id.value)) return null;
    return { verb: 'KILL_CLIENT', id: Number(id.value) };
  }
  const bare = BARE_VERBS.get(word);
  if (bare !== undefined) return toks.length === 1 ? { verb: bare } : null;
  const withDb = DB_VERBS.get(word);
  if (withDb !== undefined) {
    if (toks.length === 1) return withDb.required ? null : { verb: withDb.verb, db: null };
    const db = toks[1];
    if (toks.length !== 2 || !isWordToken(db)) return null;
    return { verb: withDb.verb, db: db.value };
  }
  return null;
}

// SET key = value | SET key TO value; key is name(.name)*.
function parseSet(toks: readonly Token[]): AdminCommand | null {
  let i = 1;
  const parts: string[] = [];
  for (;;) {
    const part = toks[i];
    if (!isWordToken(part)) return null;
    parts.push(part.value);
    i++;
    const dot = toks[i];
    if (dot === undefined || dot.kind !== TOKEN.PUNCT || dot.value !== '.') break;
    i++;
  }
  const assign = toks[i];
  if (!(isOp(assign, '=') || (assign !== undefined && assign.kind === TOKEN.IDENT && assign.value === 'to'))) return null;
  i++;
  const value = parseValue(toks, i);
  if (value === null) return null;
  return { verb: 'SET', key: parts.join('.'), value };
}

/**
 * The value of a SET from toks[i] to the end: a string constant, a bare
 * word, or a number with an optional sign and an optional unit written right
 * after it ("15s", "64kB", as config files take them).
 */
function parseValue(toks: readonly Token[], i: number): string | null {
  const t = toks[i];
  if (t === undefined) return null;
  if (t.kind === TOKEN.STRING || t.kind === TOKEN.IDENT || t.kind === TOKEN.QUOTED_IDENT) {
    return toks.length === i + 1 ? t.value : null;
  }
  let sign = '';
  let num = t;
  if (isOp(t, '-') || isOp(t, '+')) {
    const next = toks[i + 1];
    if (next === undefined || next.start !== t.end) return null;
    if (t.value === '-') sign = '-';
    num = next;
    i++;
  }
  if (num.kind !== TOKEN.NUMBER) return null;
  const unit = toks[i + 1];
  if (unit === undefined) return sign + num.value;
  if (unit.kind === TOKEN.IDENT && unit.start === num.end && toks.length === i + 2) return sign + num.value + unit.value;
  return null;
}
