// What a statement does to session state, for transaction pooling: which
// session features it uses and the declared behaviour for each
// (docs/transaction-mode.md). Pure and cached by statement text, so the
// classifier runs once per distinct text.
//
//   emulated: session-level SET / RESET of settings the server does not report
//             (re-applied on every server connection the client lands on);
//             DEALLOCATE / DISCARD ALL (the client's protocol-level statements
//             are forgotten).
//   pinned:   LISTEN, SQL-level PREPARE, session advisory locks, temporary
//             tables, WITH HOLD cursors, SET ROLE / SESSION AUTHORIZATION,
//             SET SESSION CHARACTERISTICS, set_config(..., false), LOAD:
//             the client keeps its server connection for the rest of its session.

import { classify } from '../sql/classify.ts';
import { TOKEN, type Token, tokenize } from '../sql/lexer.ts';

export interface SessionEffects {
  /** Why the client must stay on its server connection from now on; null when it need not. */
  readonly pin: string | null;
  /** Session-level settings to carry to other servers: [name, SQL value text], 'DEFAULT' for RESET. */
  readonly sets: ReadonlyArray<readonly [string, string]>;
  /** RESET ALL or DISCARD ALL ran: every carried setting is back to its default. */
  readonly resetAll: boolean;
  /** Protocol-level statements to forget: a name, or null for all (DEALLOCATE ALL, DISCARD ALL). */
  readonly forget: ReadonlyArray<string | null>;
  /**
   * A DO block whose body may change settings (its text holds "set": SET,
   * RESET, set_config): the settings are read back from the server, since
   * the body's statements are not classified.
   */
  readonly opaqueSets: boolean;
}

export const NONE: SessionEffects = Object.freeze({ pin: null, sets: [], resetAll: false, forget: [], opaqueSets: false });
const CACHE_MAX = 10_000;
const cache = new Map<string, SessionEffects>();

/**
 * Words of which at least one must appear, in any case, somewhere in a text
 * that has a session effect: every statement kind above starts with or
 * contains one (SET/RESET/set_config all hold "set"; temporary tables "temp",
 * also as pg_temp; WITH HOLD cursors "declare"; advisory lock functions
 * "advisory"), and '&' starts the only spelling of an identifier that
 * hides its letters (U&"\0073et"). A text with none of them is inert without
 * being lexed: most application statements (pgbench's SELECT, INSERT ...
 * with a new literal each time) skip the classifier and its cache.
 * This is only a shortcut to "no effect": everything else goes to the
 * exact classifier (test/unit/sql.test.ts checks the two agree).
 */
const TRIGGERS = /set|temp|prepare|listen|declare|load|deallocate|discard|advisory|&/i;

/** True when sql might have a session effect (see TRIGGERS); false means it certainly has none. */
export function mayHaveSessionEffects(sql: string): boolean {
  return TRIGGERS.test(sql);
}

/** Effects of one simple Query or Parse text. */
export function sessionEffects(sql: string, standardConformingStrings = true): SessionEffects {
  if (!TRIGGERS.test(sql)) return NONE;
  const key = standardConformingStrings ? sql : `\u0000${sql}`;
  const hit = cache.get(key);
  if (hit !== undefined) return hit;
  const e = compute(sql, standardConformingStrings);
  if (cache.size >= CACHE_MAX) cache.clear();
  cache.set(key, e);
  return e;
}

/** The classifier's answer, without the TRIGGERS shortcut or the cache (tests compare the two). */
export function compute(sql: string, scs: boolean): SessionEffects {
  let pin: string | null = null;
  const sets: Array<readonly [string, string]> = [];
  const forget: Array<string | null> = [];
  let resetAll = false;
  let opaqueSets = false;
  for (const st of classify(sql, { standardConformingStrings: scs })) {
    if (st.firstKeyword === 'do' && /set/i.test(sql.slice(st.start, st.end))) opaqueSets = true;
    if (st.sessionAdvisoryLock) pin ??= 'session advisory lock';
    if (st.setConfigSession || st.setConfigUndetermined) pin ??= 'set_config(..., false)';
    switch (st.kind) {
      case 'set':
        if (!st.local) sets.push([st.name, /^default$/i.test(st.value.trim()) ? 'DEFAULT' : st.value]);
        break;
      case 'reset':
        if (st.name === 'all') resetAll = true;
        else sets.push([st.name, 'DEFAULT']);
        break;
      case 'set_role':
        if (!st.local) pin ??= 'SET ROLE';
        break;
      case 'set_session_authorization':
        if (!st.local) pin ??= 'SET SESSION AUTHORIZATION';
        break;
      case 'set_session_characteristics':
        pin ??= 'SET SESSION CHARACTERISTICS';
        break;
      case 'prepare':
        pin ??= 'PREPARE';
        break;
      case 'listen':
        pin ??= 'LISTEN';
        break;
      case 'create_temp':
        if (!st.onCommitDrop) pin ??= 'temporary table';
        break;
      case 'declare_cursor':
        if (st.withHold) pin ??= 'WITH HOLD cursor';
        break;
      case 'load':
        pin ??= 'LOAD';
        break;
      case 'deallocate':
        forget.push(st.name);
        break;
      case 'discard':
        if (st.what === 'all') {
          forget.push(null);
          resetAll = true;
        }
        break;
      default:
        break;
    }
  }
  if (pin === null && sets.length === 0 && !resetAll && forget.length === 0 && !opaqueSets) return NONE;
  return { pin, sets, resetAll, forget, opaqueSets };
}

// ---------------------------------------------------------------- sequences

/**
 * currval() and lastval() read per-session state that nextval() and
 * setval() leave behind, so a server connection that passed from one client
 * to another could show the second client the first one's value (where
 * PostgreSQL raises 55000). Postern runs DISCARD SEQUENCES before lending a
 * connection to another client when a statement that may have called either
 * ran on it (pool.discard_sequences: auto). "May have": anything that writes
 * (column defaults, triggers), runs procedural code, or calls a function
 * that is not one of the built-ins below. Not seen: a view whose definition
 * calls nextval(), read with a plain SELECT (docs/transaction-mode.md).
 */
const SEQUENCE_TRIGGERS = /nextval|setval|insert|update|merge|copy|call|do|execute|\(/i;
/** Words that run a statement's writes or code, wherever they appear (data-modifying CTEs included). */
const WRITES = new Set(['insert', 'update', 'merge', 'copy', 'call', 'do', 'execute', 'nextval', 'setval']);
/**
 * Keywords and built-in functions that may stand before '(' without calling
 * anything that reaches a sequence. A name qualified by a schema other than
 * pg_catalog is never taken for one of these.
 */
const SAFE_BEFORE_PAREN = new Set(
  (
    'select from where and or not in exists values any all some array row cast on using as case when then else join ' +
    'lateral over filter within partition by order group having limit offset union intersect except is between like ' +
    'ilike similar distinct returning table with recursive asc desc nulls first last ' +
    'count sum avg min max coalesce nullif greatest least lower upper length char_length octet_length now abs round ' +
    'floor ceil ceiling trunc date_trunc date_part extract to_char to_date to_timestamp to_number concat concat_ws substr ' +
    'substring position overlay replace trim btrim ltrim rtrim left right split_part format md5 encode decode ' +
    'regexp_replace regexp_match regexp_matches array_agg string_agg json_agg jsonb_agg json_build_object ' +
    'jsonb_build_object json_build_array jsonb_build_array jsonb_set jsonb_extract_path jsonb_array_elements ' +
    'json_array_elements row_number rank dense_rank lag lead first_value last_value ntile percent_rank cume_dist ' +
    'bool_and bool_or every generate_series unnest array_length cardinality array_position age interval numeric ' +
    'decimal varchar char character bit varbit time timestamp timestamptz float double precision current_setting ' +
    'pg_backend_pid pg_sleep version current_database current_schema pg_is_in_recovery inet_server_port ' +
    'pg_current_wal_lsn txid_current gen_random_uuid random mod power sqrt exp ln log sign pi'
  ).split(' '),
);
const seqCache = new Map<string, boolean>();

/** True when running `sql` may call nextval() or setval() (see above); false means it certainly does not. */
export function mayUseSequences(sql: string, standardConformingStrings = true): boolean {
  if (!SEQUENCE_TRIGGERS.test(sql)) return false;
  const key = standardConformingStrings ? sql : `\u0000${sql}`;
  const hit = seqCache.get(key);
  if (hit !== undefined) return hit;
  const v = computeSequences(sql, standardConformingStrings);
  if (seqCache.size >= CACHE_MAX) seqCache.clear();
  seqCache.set(key, v);
  return v;
}

function computeSequences(sql: string, scs: boolean): boolean {
  const tokens = tokenize(sql, { standardConformingStrings: scs });
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i] as Token;
    if (t.kind === TOKEN.ERROR) return true;
    if (t.kind !== TOKEN.IDENT && t.kind !== TOKEN.QUOTED_IDENT) continue;
    const name = t.kind === TOKEN.IDENT ? t.value : t.value.toLowerCase();
    if (WRITES.has(name)) return true;
    const next = tokens[i + 1];
    if (next === undefined || next.kind !== TOKEN.PUNCT || next.value !== '(') continue;
    const dot = tokens[i - 1];
    const qualified = dot !== undefined && dot.kind === TOKEN.PUNCT && dot.value === '.';
    if (qualified) {
      const schema = tokens[i - 2];
      if (schema === undefined || schema.value.toLowerCase() !== 'pg_catalog') return true;
    }
    if (!SAFE_BEFORE_PAREN.has(name) || t.kind === TOKEN.QUOTED_IDENT) return true;
  }
  return false;
}

// ---------------------------------------------------------------- DDL, and one test for all

/** DDL may change what a shared prepared statement returns: shared plans are prepared afresh after it. */
const DDL_WORDS = /alter|drop|create|comment|rename/i;

/** True when `sql` may be DDL (a word of DDL_WORDS anywhere); false means it certainly is not. */
export function mayBeDdl(sql: string): boolean {
  return DDL_WORDS.test(sql);
}

/**
 * One test for the three above (session features, sequences, DDL): a text
 * with none of these words has no effect any of them looks for. It holds
 * every word of TRIGGERS, SEQUENCE_TRIGGERS and DDL_WORDS (setval through
 * "set"); test/unit/sql.test.ts checks that.
 */
const ANY_EFFECT =
  /set|temp|prepare|listen|declare|load|deallocate|discard|advisory|&|nextval|insert|update|merge|copy|call|do|execute|\(|alter|drop|create|comment|rename/i;

export function mayHaveAnyEffect(sql: string): boolean {
  return ANY_EFFECT.test(sql);
}

/** The trigger tests one by one (for the test that the single one holds them). */
export const TRIGGER_TESTS: ReadonlyArray<(sql: string) => boolean> = [
  (s) => TRIGGERS.test(s),
  (s) => SEQUENCE_TRIGGERS.test(s),
  (s) => DDL_WORDS.test(s),
];
