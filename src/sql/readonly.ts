// Read-only proof for the read/write split: does a statement text only
// read, so that a standby may run it? Decided on the real PostgreSQL parse
// tree (libpg-query), never guessed: a text is a read when every statement
// in it is a SELECT (or VALUES, TABLE) with no locking clause (FOR
// UPDATE/SHARE ...), no INTO, no data-modifying statement anywhere (a CTE's
// INSERT/UPDATE/DELETE/MERGE), and calls only functions on the read-only
// list, or a SHOW. A text that opens a READ ONLY transaction block (BEGIN
// READ ONLY, START TRANSACTION READ ONLY) is a block. Everything else,
// including what does not parse or is too long to parse cheaply, is a
// write. Results are cached by the text's shape (constants masked).

import { loadModule, parseSync } from 'libpg-query';
import { shapeKey } from './lexer.ts';

export const ACCESS = { Read: 'read', Block: 'block', Write: 'write' } as const;
export type Access = (typeof ACCESS)[keyof typeof ACCESS];

/**
 * Built-in functions that only read (no writes, no sequence or transaction
 * id effects, no session state). Functions that fail on a standby
 * (pg_current_wal_lsn, txid_current ...) are not here either.
 */
export const READ_ONLY_FUNCTIONS: readonly string[] = [
  // aggregates and window functions
  'count',
  'sum',
  'avg',
  'min',
  'max',
  'array_agg',
  'string_agg',
  'json_agg',
  'jsonb_agg',
  'json_object_agg',
  'jsonb_object_agg',
  'bool_and',
  'bool_or',
  'every',
  'bit_and',
  'bit_or',
  'stddev',
  'stddev_pop',
  'stddev_samp',
  'variance',
  'var_pop',
  'var_samp',
  'percentile_cont',
  'percentile_disc',
  'mode',
  'rank',
  'dense_rank',
  'row_number',
  'ntile',
  'lag',
  'lead',
  'first_value',
  'last_value',
  'nth_value',
  'cume_dist',
  'percent_rank',
  'corr',
  'covar_pop',
  'covar_samp',
  // numbers
  'abs',
  'ceil',
  'ceiling',
  'floor',
  'round',
  'trunc',
  'sqrt',
  'cbrt',
  'power',
  'pow',
  'exp',
  'ln',
  'log',
  'log10',
  'mod',
  'sign',
  'random',
  'pi',
  'degrees',
  'radians',
  'div',
  'width_bucket',
  'gcd',
  'lcm',
  // text
  'lower',
  'upper',
  'initcap',
  'length',
  'char_length',
  'character_length',
  'octet_length',
  'bit_length',
  'substr',
  'substring',
  'position',
  'strpos',
  'trim',
  'btrim',
  'ltrim',
  'rtrim',
  'replace',
  'split_part',
  'concat',
  'concat_ws',
  'format',
  'left',
  'right',
  'lpad',
  'rpad',
  'repeat',
  'reverse',
  'md5',
  'sha224',
  'sha256',
  'sha384',
  'sha512',
  'encode',
  'decode',
  'translate',
  'ascii',
  'chr',
  'starts_with',
  'regexp_replace',
  'regexp_matches',
  'regexp_match',
  'regexp_split_to_array',
  'regexp_split_to_table',
  'regexp_count',
  'regexp_like',
  'quote_ident',
  'quote_literal',
  'quote_nullable',
  'to_hex',
  'string_to_array',
  'string_to_table',
  'overlay',
  'normalize',
  'unistr',
  // dates and times
  'to_char',
  'to_date',
  'to_timestamp',
  'to_number',
  'date_trunc',
  'date_part',
  'date_bin',
  'extract',
  'age',
  'now',
  'clock_timestamp',
  'statement_timestamp',
  'transaction_timestamp',
  'timeofday',
  'make_date',
  'make_time',
  'make_timestamp',
  'make_timestamptz',
  'make_interval',
  'justify_days',
  'justify_hours',
  'justify_interval',
  'isfinite',
  'timezone',
  // arrays, json, rows
  'array_length',
  'array_to_string',
  'array_position',
  'array_positions',
  'array_append',
  'array_prepend',
  'array_cat',
  'array_remove',
  'array_replace',
  'array_dims',
  'array_lower',
  'array_upper',
  'array_ndims',
  'cardinality',
  'unnest',
  'generate_series',
  'generate_subscripts',
  'json_build_object',
  'jsonb_build_object',
  'json_build_array',
  'jsonb_build_array',
  'to_json',
  'to_jsonb',
  'row_to_json',
  'array_to_json',
  'json_object',
  'jsonb_object',
  'jsonb_set',
  'jsonb_insert',
  'jsonb_strip_nulls',
  'json_strip_nulls',
  'jsonb_pretty',
  'json_extract_path',
  'jsonb_extract_path',
  'json_extract_path_text',
  'jsonb_extract_path_text',
  'json_array_elements',
  'jsonb_array_elements',
  'json_array_elements_text',
  'jsonb_array_elements_text',
  'json_each',
  'jsonb_each',
  'json_each_text',
  'jsonb_each_text',
  'json_object_keys',
  'jsonb_object_keys',
  'json_typeof',
  'jsonb_typeof',
  'json_array_length',
  'jsonb_array_length',
  'jsonb_path_query',
  'jsonb_path_exists',
  'jsonb_path_match',
  'jsonb_path_query_array',
  'jsonb_path_query_first',
  // the server and catalog
  'version',
  'current_setting',
  'current_database',
  'current_schema',
  'current_schemas',
  'current_user',
  'session_user',
  'pg_is_in_recovery',
  'inet_server_port',
  'inet_server_addr',
  'inet_client_addr',
  'inet_client_port',
  'pg_backend_pid',
  'pg_postmaster_start_time',
  'pg_typeof',
  'format_type',
  'obj_description',
  'col_description',
  'pg_get_viewdef',
  'pg_get_indexdef',
  'pg_get_constraintdef',
  'pg_get_expr',
  'pg_get_userbyid',
  'pg_table_is_visible',
  'pg_relation_size',
  'pg_total_relation_size',
  'pg_table_size',
  'pg_indexes_size',
  'pg_database_size',
  'pg_size_pretty',
  'pg_last_wal_replay_lsn',
  'pg_last_wal_receive_lsn',
  'pg_last_xact_replay_timestamp',
  'pg_wal_lsn_diff',
  'has_table_privilege',
  'has_schema_privilege',
  'has_database_privilege',
  'has_column_privilege',
  'has_function_privilege',
  'to_regclass',
  'to_regtype',
  'to_regproc',
  'gen_random_uuid',
  'uuid_generate_v4',
];

/** Texts longer than this are not parsed for routing (the parser's cost grows with the text): they go to the primary. */
const MAX_CHARS = 20_000;
const CACHE_ENTRIES = 4096;
const EXACT_MAX_CHARS = 2048;

/** Bounded insert: the oldest entry goes first. */
function remember(m: Map<string, Access>, key: string, a: Access): void {
  if (m.size >= CACHE_ENTRIES) {
    const oldest = m.keys().next();
    if (oldest.done !== true) m.delete(oldest.value);
  }
  m.set(key, a);
}

let loaded = false;
let loading: Promise<void> | null = null;

/** Loads the parser (WebAssembly) once; until it has loaded every text is a write. */
export function loadReadOnlyParser(): Promise<void> {
  loading ??= loadModule().then(() => {
    loaded = true;
  });
  return loading;
}

type Node = Record<string, unknown>;

/** Kinds of node that write, or lock, wherever they appear. */
const WRITES = new Set(['InsertStmt', 'UpdateStmt', 'DeleteStmt', 'MergeStmt', 'LockingClause', 'IntoClause']);

export class ReadOnlyClassifier {
  readonly #allowed: Set<string>;
  readonly #cache = new Map<string, Access>();
  readonly #exact = new Map<string, Access>();

  constructor(extraFunctions: readonly string[] = []) {
    this.#allowed = new Set(READ_ONLY_FUNCTIONS);
    for (const f of extraFunctions) this.#allowed.add(f.toLowerCase());
  }

  /** What running `text` does: read, open a read-only block, or (possibly) write. */
  classify(text: string): Access {
    if (!loaded || text.length > MAX_CHARS) return ACCESS.Write;
    // The same text again (a driver's prepared statement, pgbench -M extended): no lexing at all.
    const exact = this.#exact.get(text);
    if (exact !== undefined) return exact;
    const key = shapeKey(text);
    let a = this.#cache.get(key);
    if (a === undefined) {
      a = this.#decide(text);
      remember(this.#cache, key, a);
    }
    if (text.length <= EXACT_MAX_CHARS) remember(this.#exact, text, a);
    return a;
  }

  #decide(text: string): Access {
    let stmts: Node[];
    try {
      const tree = parseSync(text) as { stmts?: Array<{ stmt?: Node }> };
      stmts = (tree.stmts ?? []).map((s) => s.stmt ?? {});
    } catch {
      return ACCESS.Write;
    }
    if (stmts.length === 0) return ACCESS.Write;
    const first = stmts[0] as Node;
    if (opensReadOnlyBlock(first)) {
      // The block must not end before the text does (what follows an end runs outside it).
      for (let i = 1; i < stmts.length - 1; i++) if ('TransactionStmt' in (stmts[i] as Node)) return ACCESS.Write;
      return ACCESS.Block;
    }
    for (const s of stmts) if (!this.#reads(s)) return ACCESS.Write;
    return ACCESS.Read;
  }

  #reads(stmt: Node): boolean {
    if ('VariableShowStmt' in stmt) return true;
    if (!('SelectStmt' in stmt)) return false;
    return this.#clean(stmt);
  }

  /** No writing or locking node and no function off the list, anywhere below. */
  #clean(node: unknown): boolean {
    if (node === null || typeof node !== 'object') return true;
    if (Array.isArray(node)) {
      for (const x of node) if (!this.#clean(x)) return false;
      return true;
    }
    const n = node as Node;
    for (const k in n) {
      if (WRITES.has(k)) return false;
      if (k === 'FuncCall' && !this.#allowedCall(n[k] as Node)) return false;
      if (k === 'intoClause') return false;
      if (!this.#clean(n[k])) return false;
    }
    return true;
  }

  #allowedCall(call: Node): boolean {
    const parts = ((call.funcname as Array<{ String?: { sval?: string } }>) ?? []).map((p) => p.String?.sval ?? '');
    const name = parts[parts.length - 1] ?? '';
    const full = parts.join('.');
    if (this.#allowed.has(full)) return true;
    if (parts.length === 1) return this.#allowed.has(name);
    return parts.length === 2 && parts[0] === 'pg_catalog' && READ_ONLY_FUNCTIONS.includes(name);
  }
}

function opensReadOnlyBlock(stmt: Node): boolean {
  const t = stmt.TransactionStmt as Node | undefined;
  if (t === undefined || (t.kind !== 'TRANS_STMT_BEGIN' && t.kind !== 'TRANS_STMT_START')) return false;
  for (const o of (t.options as Node[] | undefined) ?? []) {
    const d = o.DefElem as Node | undefined;
    if (d?.defname !== 'transaction_read_only') continue;
    const arg = d.arg as { A_Const?: { ival?: { ival?: number } } } | undefined;
    return arg?.A_Const?.ival?.ival === 1;
  }
  return false;
}
