// The SQL lexer, statement splitter and classifier: every token and quoting
// form of the lexical structure chapter, every statement kind, the tricky
// places where a keyword hides in a string, comment or dollar-quoted body,
// and property tests that no input (random text, or random concatenations of
// SQL fragments) throws or yields spans out of order, overlapping, or outside
// the input.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { booleanLiteral, classify, parseBoolean, STATEMENT_KIND, type StatementInfo } from '../../src/sql/classify.ts';
import {
  Lexer,
  lexedShapeKey,
  plainShapeKey,
  shapeKey,
  splitStatements,
  TOKEN,
  type Token,
  tokenize,
  truncateIdentifier,
} from '../../src/sql/lexer.ts';

// ---------------------------------------------------------------- helpers

/** [kind, value] of every token. */
function toks(sql: string, standardConformingStrings = true): [string, string][] {
  return tokenize(sql, { standardConformingStrings }).map((t) => [t.kind, t.value]);
}

function kinds(sql: string): string[] {
  return classify(sql).map((s) => s.kind);
}

/** The only statement of sql. */
function one(sql: string): StatementInfo {
  const all = classify(sql);
  assert.equal(all.length, 1, `one statement expected in ${JSON.stringify(sql)}, got ${JSON.stringify(all)}`);
  return all[0]!;
}

/** Details of the only statement, without the fields every statement has. */
function detail(sql: string): Record<string, unknown> {
  const {
    start: _s,
    end: _e,
    firstKeyword: _f,
    sessionAdvisoryLock: _a,
    setConfigSession: _c,
    setConfigUndetermined: _u,
    ...rest
  } = one(sql);
  return rest;
}

function texts(sql: string): string[] {
  return classify(sql).map((s) => sql.slice(s.start, s.end));
}

/** The invariants every classification must hold, whatever the input. */
function checkSpans(sql: string, out: StatementInfo[]): void {
  assert.ok(out.length >= 1);
  if (out.length === 1 && out[0]!.kind === 'empty') {
    assert.equal(out[0]!.start, 0);
    assert.equal(out[0]!.end, sql.length);
    return;
  }
  let prevEnd = 0;
  for (const s of out) {
    assert.notEqual(s.kind, 'empty', 'empty only alone');
    assert.ok(Number.isInteger(s.start) && Number.isInteger(s.end));
    assert.ok(s.start >= prevEnd, 'in order, not overlapping');
    assert.ok(s.start < s.end, 'non-empty');
    assert.ok(s.end <= sql.length, 'inside the input');
    prevEnd = s.end;
  }
}

/** The invariants of a token stream: ordered, non-empty, and what lies between tokens is blank or comment. */
function checkTokens(sql: string, tokens: Token[]): void {
  let prevEnd = 0;
  for (const t of tokens) {
    assert.ok(t.start >= prevEnd && t.start < t.end && t.end <= sql.length, `token bounds ${JSON.stringify(t)}`);
    const gap = sql.slice(prevEnd, t.start).trim();
    assert.ok(gap === '' || gap.startsWith('--') || gap.startsWith('/*'), `gap ${JSON.stringify(gap)}`);
    prevEnd = t.end;
  }
  const tail = sql.slice(prevEnd).trim();
  assert.ok(tail === '' || tail.startsWith('--') || tail.startsWith('/*'), `tail ${JSON.stringify(tail)}`);
}

// ---------------------------------------------------------------- lexer

describe('lexer: identifiers and keywords', () => {
  it('lower-cases unquoted identifiers (ASCII only) and keeps quoted ones', () => {
    assert.deepEqual(toks('SeLeCt Foo_1$x "MiXed" ÄbC'), [
      ['ident', 'select'],
      ['ident', 'foo_1$x'],
      ['quoted-ident', 'MiXed'],
      ['ident', 'Äbc'],
    ]);
  });

  it('unescapes "" inside quoted identifiers and rejects the empty one', () => {
    assert.deepEqual(toks('"a""b" "LISTEN"'), [
      ['quoted-ident', 'a"b'],
      ['quoted-ident', 'LISTEN'],
    ]);
    assert.equal(tokenize('""')[0]!.kind, TOKEN.ERROR);
    assert.equal(tokenize('"abc')[0]!.kind, TOKEN.ERROR);
  });

  it('truncates identifiers to 63 bytes without splitting a character', () => {
    assert.equal(truncateIdentifier('a'.repeat(70)), 'a'.repeat(63));
    assert.equal(truncateIdentifier('é'.repeat(40)), 'é'.repeat(31));
    assert.equal(truncateIdentifier('😀'.repeat(20)), '😀'.repeat(15));
    assert.equal(tokenize(`"${'B'.repeat(64)}"`)[0]!.value, 'B'.repeat(63));
    assert.equal(tokenize('x'.repeat(100))[0]!.value, 'x'.repeat(63));
  });

  it('decodes U&"..." identifiers, with UESCAPE', () => {
    assert.deepEqual(toks('U&"d\\0061t\\+000061"'), [['quoted-ident', 'data']]);
    assert.deepEqual(toks('u&"d!0061t!+000061" UESCAPE \'!\' x'), [
      ['quoted-ident', 'data'],
      ['ident', 'x'],
    ]);
    assert.deepEqual(toks('U&"a\\\\b"'), [['quoted-ident', 'a\\b']]);
    assert.equal(tokenize('U&"\\00zz"')[0]!.kind, TOKEN.ERROR);
    assert.equal(tokenize('U&"x" UESCAPE \'+\'')[0]!.kind, TOKEN.ERROR);
    // U& not followed by a quote is the identifier u and the operator &.
    assert.deepEqual(toks('U& x'), [
      ['ident', 'u'],
      ['op', '&'],
      ['ident', 'x'],
    ]);
  });
});

describe('lexer: string constants', () => {
  it("reads '' as a quote in plain strings", () => {
    assert.deepEqual(toks("'it''s' ''"), [
      ['string', "it's"],
      ['string', ''],
    ]);
  });

  it('keeps backslashes literal in plain strings (standard_conforming_strings on)', () => {
    assert.deepEqual(toks("'a\\' x"), [
      ['string', 'a\\'],
      ['ident', 'x'],
    ]);
  });

  it('reads backslash escapes in E strings', () => {
    assert.deepEqual(toks("E'a\\'b' e'\\n\\t\\\\'"), [
      ['string', "a'b"],
      ['string', '\n\t\\'],
    ]);
    assert.deepEqual(toks("E'\\x41\\101\\u0041\\U00000041\\q\\x'"), [['string', 'AAAAqx']]);
    assert.deepEqual(toks("E'\\xc3\\xa9'"), [['string', 'é']]);
    assert.deepEqual(toks("E'\\uD83D\\uDE00'"), [['string', '😀']]);
    assert.deepEqual(toks("E'it''s'"), [['string', "it's"]]);
  });

  it('turns invalid E-string escapes into error tokens that still end at the right quote', () => {
    for (const bad of ["E'\\u12'", "E'\\xff'", "E'\\0'", "E'\\uD83D'", "E'\\uDE00'", "E'\\U00110000'"]) {
      const t = tokenize(`${bad} x`);
      assert.equal(t[0]!.kind, TOKEN.ERROR, bad);
      assert.equal(t[0]!.end, bad.length, bad);
      assert.deepEqual(t[1], { kind: 'ident', value: 'x', start: bad.length + 1, end: bad.length + 2 });
    }
  });

  it('reads B, X, N and U& strings', () => {
    assert.deepEqual(toks("B'1010' x'0F' N'na''me' U&'d\\0061ta' U&'d!0061ta' UESCAPE '!'"), [
      ['string', '1010'],
      ['string', '0F'],
      ['string', "na'me"],
      ['string', 'data'],
      ['string', 'data'],
    ]);
  });

  it('joins constants separated by whitespace with a newline, in the first one’s escape mode', () => {
    assert.deepEqual(toks("'a'\n'b'"), [['string', 'ab']]);
    assert.deepEqual(toks("'a' -- note\n  'b'"), [['string', 'ab']]);
    assert.deepEqual(toks("'a' 'b'"), [
      ['string', 'a'],
      ['string', 'b'],
    ]);
    assert.deepEqual(toks("'a' /* c */\n'b'"), [
      ['string', 'a'],
      ['string', 'b'],
    ]);
    // The continuation of an E string is read with backslash escapes too.
    assert.deepEqual(toks("E'a'\n'\\';x'"), [['string', "a';x"]]);
  });

  it('reads dollar-quoted strings with and without tags', () => {
    assert.deepEqual(toks('$$a;b$$ $t$ $$ x $t$ $t1$a$t1$'), [
      ['string', 'a;b'],
      ['string', ' $$ x '],
      ['string', 'a'],
    ]);
    // Tags are case-sensitive.
    assert.equal(tokenize('$A$ x $a$')[0]!.kind, TOKEN.ERROR);
    // The body ends at the first repetition of the delimiter.
    assert.deepEqual(toks('$a$ x$a$ y'), [
      ['string', ' x'],
      ['ident', 'y'],
    ]);
  });

  it('tells parameters, dollar quotes, dollar signs in identifiers and stray dollars apart', () => {
    assert.deepEqual(toks('$1 $12 a$b$c $$'), [
      ['param', '$1'],
      ['param', '$12'],
      ['ident', 'a$b$c'],
      ['error', 'unterminated dollar-quoted string'],
    ]);
    assert.deepEqual(toks('$x y'), [
      ['error', 'unexpected character "$"'],
      ['ident', 'x'],
      ['ident', 'y'],
    ]);
  });

  it('reads backslash escapes in plain strings when standard_conforming_strings is off', () => {
    assert.deepEqual(toks("'a\\'b' x", false), [
      ['string', "a'b"],
      ['ident', 'x'],
    ]);
    assert.equal(tokenize("U&'x'", { standardConformingStrings: false })[0]!.kind, TOKEN.ERROR);
    assert.deepEqual(toks('U&"x"', false), [['quoted-ident', 'x']]);
    assert.deepEqual(kinds("SELECT 'x\\';LISTEN y'"), ['select', 'unknown']);
    assert.deepEqual(
      classify("SELECT 'x\\';LISTEN y'", { standardConformingStrings: false }).map((s) => s.kind),
      ['select'],
    );
  });

  it('makes unterminated quotes run to the end of the input as one error token', () => {
    for (const sql of ["'abc", "E'abc\\'", "U&'x", "B'01", '"id', '$q$ body', "E'\\"]) {
      const t = tokenize(`x ${sql}`);
      assert.equal(t.length, 2, sql);
      assert.equal(t[1]!.kind, TOKEN.ERROR, sql);
      assert.equal(t[1]!.end, sql.length + 2, sql);
    }
  });
});

describe('lexer: numbers, operators, punctuation, comments', () => {
  it('reads numeric constants', () => {
    assert.deepEqual(toks('42 3.5 .5 5. 1e10 1.5E-3 0x1F 0o17 0b101 1_000'), [
      ['number', '42'],
      ['number', '3.5'],
      ['number', '.5'],
      ['number', '5.'],
      ['number', '1e10'],
      ['number', '1.5E-3'],
      ['number', '0x1F'],
      ['number', '0o17'],
      ['number', '0b101'],
      ['number', '1_000'],
    ]);
    assert.deepEqual(toks('1..2'), [
      ['number', '1'],
      ['op', '..'],
      ['number', '2'],
    ]);
    // "0x'..'" is 0 followed by a hex string, as without the radix prefixes.
    assert.deepEqual(toks("0x'1f'"), [
      ['number', '0'],
      ['string', '1f'],
    ]);
  });

  it('splits operators the way PostgreSQL does', () => {
    assert.deepEqual(toks('x=-1'), [
      ['ident', 'x'],
      ['op', '='],
      ['op', '-'],
      ['number', '1'],
    ]);
    assert.deepEqual(toks('a @- b'), [
      ['ident', 'a'],
      ['op', '@-'],
      ['ident', 'b'],
    ]);
    assert.deepEqual(toks('a <= b <> c != d ->> e'), [
      ['ident', 'a'],
      ['op', '<='],
      ['ident', 'b'],
      ['op', '<>'],
      ['ident', 'c'],
      ['op', '!='],
      ['ident', 'd'],
      ['op', '->>'],
      ['ident', 'e'],
    ]);
    // A comment start ends an operator.
    assert.deepEqual(toks('a +-- c\n b */* c */ d'), [
      ['ident', 'a'],
      ['op', '+'],
      ['ident', 'b'],
      ['op', '*'],
      ['ident', 'd'],
    ]);
  });

  it('reads punctuation and the two-character ::, :=, => tokens', () => {
    assert.deepEqual(toks('f(a, b[1:2]).c; x::int y := 1 => z'), [
      ['ident', 'f'],
      ['punct', '('],
      ['ident', 'a'],
      ['punct', ','],
      ['ident', 'b'],
      ['punct', '['],
      ['number', '1'],
      ['punct', ':'],
      ['number', '2'],
      ['punct', ']'],
      ['punct', ')'],
      ['punct', '.'],
      ['ident', 'c'],
      ['punct', ';'],
      ['ident', 'x'],
      ['op', '::'],
      ['ident', 'int'],
      ['ident', 'y'],
      ['op', ':='],
      ['number', '1'],
      ['op', '=>'],
      ['ident', 'z'],
    ]);
  });

  it('skips line comments and nested block comments', () => {
    assert.deepEqual(toks('a -- x\rb /* 1 /* 2 */ still */ c /**/ d /*/ x */ e'), [
      ['ident', 'a'],
      ['ident', 'b'],
      ['ident', 'c'],
      ['ident', 'd'],
      ['ident', 'e'],
    ]);
    const t = tokenize('a /* /* */ b');
    assert.equal(t.length, 2);
    assert.equal(t[1]!.kind, TOKEN.ERROR);
    assert.equal(t[1]!.value, 'unterminated /* comment');
  });

  it('turns characters SQL has no use for into error tokens', () => {
    assert.deepEqual(toks('a { \\ }'), [
      ['ident', 'a'],
      ['error', 'unexpected character "{"'],
      ['error', 'unexpected character "\\\\"'],
      ['error', 'unexpected character "}"'],
    ]);
  });

  it('reports exact offsets and is usable one token at a time', () => {
    const lexer = new Lexer("  SELECT  'x' -- c\n;");
    assert.deepEqual(lexer.next(), { kind: 'ident', value: 'select', start: 2, end: 8 });
    assert.deepEqual(lexer.next(), { kind: 'string', value: 'x', start: 10, end: 13 });
    assert.deepEqual(lexer.next(), { kind: 'punct', value: ';', start: 19, end: 20 });
    assert.equal(lexer.next(), null);
    assert.equal(lexer.next(), null);
  });
});

describe('splitStatements', () => {
  it('splits at top-level semicolons and drops empty statements', () => {
    const sql = ' SELECT 1 ;; /* c */ ; SELECT 2 -- x\n; ';
    assert.deepEqual(
      splitStatements(sql).map((s) => sql.slice(s.start, s.end)),
      ['SELECT 1', 'SELECT 2'],
    );
    assert.deepEqual(splitStatements(' -- nothing\n'), []);
  });

  it('does not split inside parentheses (CREATE RULE action lists)', () => {
    const sql = 'CREATE RULE r AS ON INSERT TO t DO ALSO (INSERT INTO log VALUES (1); NOTIFY ch); SELECT 1';
    assert.deepEqual(texts(sql), [sql.slice(0, sql.indexOf('); SELECT') + 1), 'SELECT 1']);
    assert.deepEqual(kinds(sql), ['other', 'select']);
  });

  it('keeps BEGIN ATOMIC bodies of SQL-standard routines whole', () => {
    const body =
      'CREATE OR REPLACE PROCEDURE p(a int) LANGUAGE sql BEGIN ATOMIC ' +
      'INSERT INTO t VALUES (a); SELECT CASE WHEN a > 0 THEN 1 ELSE 2 END; SELECT t.end, 1 AS end FROM t; LISTEN x; END';
    assert.deepEqual(texts(`${body}; LISTEN y`), [body, 'LISTEN y']);
    assert.deepEqual(kinds(`${body}; LISTEN y`), ['other', 'listen']);
    const fn = 'create function f() returns int language sql begin atomic; select (case when true then 1 end); end';
    assert.deepEqual(texts(`${fn};select 2`), [fn, 'select 2']);
  });

  it('does not treat BEGIN outside a routine definition as a body', () => {
    assert.deepEqual(kinds('BEGIN; SELECT 1; END; COMMIT'), ['begin', 'select', 'end', 'commit']);
    assert.deepEqual(kinds('CREATE TABLE atomic (begin int); LISTEN x'), ['other', 'listen']);
  });

  it('marks unbalanced parentheses and unclosed bodies as unknown', () => {
    assert.deepEqual(kinds('SELECT (1; LISTEN x'), ['unknown']);
    assert.deepEqual(kinds('SELECT 1); LISTEN x'), ['unknown', 'listen']);
    assert.deepEqual(kinds('CREATE FUNCTION f() RETURNS int BEGIN ATOMIC SELECT 1; LISTEN x;'), ['unknown']);
  });
});

// ---------------------------------------------------------------- classify: kinds

describe('classify: SET and RESET', () => {
  it('reads SET name TO|= value, with SESSION and LOCAL', () => {
    assert.deepEqual(detail('SET search_path TO a, "B"'), { kind: 'set', name: 'search_path', local: false, value: 'a, "B"' });
    assert.deepEqual(detail('set Statement_Timeout = 5000'), { kind: 'set', name: 'statement_timeout', local: false, value: '5000' });
    assert.deepEqual(detail("SET SESSION work_mem = '64MB' "), { kind: 'set', name: 'work_mem', local: false, value: "'64MB'" });
    assert.deepEqual(detail('SET LOCAL lock_timeout TO DEFAULT'), { kind: 'set', name: 'lock_timeout', local: true, value: 'DEFAULT' });
    assert.deepEqual(detail('SET x=-1'), { kind: 'set', name: 'x', local: false, value: '-1' });
  });

  it('reads dotted custom names, lower-cased even when quoted', () => {
    assert.deepEqual(detail('SET myapp.User_Id = 42'), { kind: 'set', name: 'myapp.user_id', local: false, value: '42' });
    assert.deepEqual(detail('SET "MyApp".tenant TO \'t1\''), { kind: 'set', name: 'myapp.tenant', local: false, value: "'t1'" });
    assert.deepEqual(detail('SET LOCAL a.b.c = 1'), { kind: 'set', name: 'a.b.c', local: true, value: '1' });
  });

  it('maps the special SET forms to their parameters', () => {
    assert.deepEqual(detail("SET TIME ZONE 'Europe/Paris'"), { kind: 'set', name: 'timezone', local: false, value: "'Europe/Paris'" });
    assert.deepEqual(detail('SET LOCAL TIME ZONE LOCAL'), { kind: 'set', name: 'timezone', local: true, value: 'LOCAL' });
    assert.deepEqual(detail("SET NAMES 'UTF8'"), { kind: 'set', name: 'client_encoding', local: false, value: "'UTF8'" });
    assert.deepEqual(detail('SET NAMES'), { kind: 'set', name: 'client_encoding', local: false, value: '' });
    assert.deepEqual(detail("SET SCHEMA 'app'"), { kind: 'set', name: 'search_path', local: false, value: "'app'" });
    assert.deepEqual(detail('SET XML OPTION DOCUMENT'), { kind: 'set', name: 'xmloption', local: false, value: 'DOCUMENT' });
    assert.deepEqual(detail('SET timezone.x = 1'), { kind: 'set', name: 'timezone.x', local: false, value: '1' });
    assert.deepEqual(detail('SET x FROM CURRENT'), { kind: 'set', name: 'x', local: false, value: 'FROM CURRENT' });
  });

  it('separates transaction-scoped SETs', () => {
    assert.deepEqual(detail('SET TRANSACTION ISOLATION LEVEL SERIALIZABLE'), {
      kind: 'set_transaction',
      local: false,
      value: 'TRANSACTION ISOLATION LEVEL SERIALIZABLE',
    });
    assert.equal(one("SET TRANSACTION SNAPSHOT '000003A1-1'").kind, 'set_transaction');
    assert.equal(one('SET transaction_isolation = serializable').kind, 'set_transaction');
    assert.equal(one('SET LOCAL transaction_read_only TO on').kind, 'set_transaction');
    assert.deepEqual(detail('SET CONSTRAINTS ALL DEFERRED'), { kind: 'set_constraints', value: 'ALL DEFERRED' });
  });

  it('reads SET SESSION CHARACTERISTICS as its own kind', () => {
    assert.deepEqual(detail('SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ'), {
      kind: 'set_session_characteristics',
      local: false,
      value: 'READ ONLY, ISOLATION LEVEL REPEATABLE READ',
    });
    assert.equal(one('SET SESSION CHARACTERISTICS TRANSACTION READ ONLY').kind, 'unknown');
  });

  it('reads SET ROLE and SET SESSION AUTHORIZATION in all their spellings', () => {
    assert.deepEqual(detail('SET ROLE admin'), { kind: 'set_role', local: false, value: 'admin' });
    assert.deepEqual(detail('SET SESSION ROLE "Admin"'), { kind: 'set_role', local: false, value: '"Admin"' });
    assert.deepEqual(detail('SET LOCAL ROLE NONE'), { kind: 'set_role', local: true, value: 'NONE' });
    assert.deepEqual(detail("SET role = 'x'"), { kind: 'set_role', local: false, value: "'x'" });
    assert.deepEqual(detail('RESET ROLE'), { kind: 'set_role', local: false, value: null });
    assert.deepEqual(detail('SET SESSION AUTHORIZATION alice'), { kind: 'set_session_authorization', local: false, value: 'alice' });
    assert.deepEqual(detail('SET SESSION SESSION AUTHORIZATION DEFAULT'), {
      kind: 'set_session_authorization',
      local: false,
      value: 'DEFAULT',
    });
    assert.deepEqual(detail('SET LOCAL SESSION AUTHORIZATION bob'), { kind: 'set_session_authorization', local: true, value: 'bob' });
    assert.deepEqual(detail('SET session_authorization TO bob'), { kind: 'set_session_authorization', local: false, value: 'bob' });
    assert.deepEqual(detail('RESET SESSION AUTHORIZATION'), { kind: 'set_session_authorization', local: false, value: null });
    assert.deepEqual(detail('RESET session_authorization'), { kind: 'set_session_authorization', local: false, value: null });
  });

  it('reads RESET name | ALL and the special RESET forms', () => {
    assert.deepEqual(detail('RESET search_path'), { kind: 'reset', name: 'search_path' });
    assert.deepEqual(detail('RESET myapp.Tenant'), { kind: 'reset', name: 'myapp.tenant' });
    assert.deepEqual(detail('RESET ALL'), { kind: 'reset', name: 'all' });
    assert.deepEqual(detail('RESET TIME ZONE'), { kind: 'reset', name: 'timezone' });
    assert.deepEqual(detail('RESET TRANSACTION ISOLATION LEVEL'), { kind: 'reset', name: 'transaction_isolation' });
  });

  it('calls malformed SET and RESET unknown', () => {
    for (const sql of ['SET', 'SET x', 'SET x =', 'SET TIME ZONE', 'SET LOCAL', 'RESET', 'RESET a b', 'SET 1 = 2', 'RESET ALL x']) {
      assert.equal(one(sql).kind, 'unknown', sql);
    }
  });
});

describe('classify: prepared statements, notifications, DISCARD, LOAD', () => {
  it('reads PREPARE, EXECUTE, DEALLOCATE', () => {
    assert.deepEqual(detail('PREPARE q1 (int) AS SELECT $1'), { kind: 'prepare', name: 'q1' });
    assert.deepEqual(detail('prepare "Q2" as select 1'), { kind: 'prepare', name: 'Q2' });
    assert.deepEqual(detail('EXECUTE q1(5)'), { kind: 'execute', name: 'q1' });
    assert.deepEqual(detail('DEALLOCATE q1'), { kind: 'deallocate', name: 'q1' });
    assert.deepEqual(detail('DEALLOCATE PREPARE q1'), { kind: 'deallocate', name: 'q1' });
    assert.deepEqual(detail('DEALLOCATE ALL'), { kind: 'deallocate', name: null });
    assert.deepEqual(detail('DEALLOCATE PREPARE ALL'), { kind: 'deallocate', name: null });
    assert.deepEqual(detail('DEALLOCATE "all"'), { kind: 'deallocate', name: 'all' });
    assert.deepEqual(detail('DEALLOCATE prepare'), { kind: 'deallocate', name: 'prepare' });
    assert.equal(one('EXECUTE').kind, 'unknown');
  });

  it('reads LISTEN, UNLISTEN, NOTIFY', () => {
    assert.deepEqual(detail('LISTEN Chan'), { kind: 'listen', channel: 'chan' });
    assert.deepEqual(detail('LISTEN "Chan"'), { kind: 'listen', channel: 'Chan' });
    assert.deepEqual(detail('UNLISTEN chan'), { kind: 'unlisten', channel: 'chan' });
    assert.deepEqual(detail('UNLISTEN *'), { kind: 'unlisten', channel: '*' });
    assert.deepEqual(detail('NOTIFY chan'), { kind: 'notify', channel: 'chan' });
    assert.deepEqual(detail("NOTIFY chan, 'payload; LISTEN x'"), { kind: 'notify', channel: 'chan' });
    assert.equal(one('LISTEN').kind, 'unknown');
    assert.equal(one('LISTEN a b').kind, 'unknown');
  });

  it('reads DISCARD', () => {
    assert.deepEqual(detail('DISCARD ALL'), { kind: 'discard', what: 'all' });
    assert.deepEqual(detail('discard plans'), { kind: 'discard', what: 'plans' });
    assert.deepEqual(detail('DISCARD SEQUENCES'), { kind: 'discard', what: 'sequences' });
    assert.deepEqual(detail('DISCARD TEMP'), { kind: 'discard', what: 'temp' });
    assert.deepEqual(detail('DISCARD TEMPORARY'), { kind: 'discard', what: 'temp' });
    assert.equal(one('DISCARD EVERYTHING').kind, 'unknown');
  });

  it('reads LOAD', () => {
    assert.deepEqual(detail("LOAD 'auto_explain'"), { kind: 'load', library: 'auto_explain' });
    assert.deepEqual(detail("LOAD '$libdir/plugins/x'"), { kind: 'load', library: '$libdir/plugins/x' });
    assert.equal(one('LOAD auto_explain').kind, 'unknown');
  });
});

describe('classify: temporary objects', () => {
  it('reads CREATE [GLOBAL|LOCAL] TEMP|TEMPORARY TABLE/VIEW/SEQUENCE', () => {
    for (const sql of [
      'CREATE TEMP TABLE t (a int)',
      'CREATE TEMPORARY TABLE t AS SELECT 1',
      'CREATE LOCAL TEMP TABLE t (a int)',
      'CREATE GLOBAL TEMPORARY TABLE t (a int)',
      'CREATE TEMP VIEW v AS SELECT 1',
      'CREATE OR REPLACE TEMP VIEW v AS SELECT 1',
      'CREATE TEMP RECURSIVE VIEW v (n) AS SELECT 1',
      'CREATE TEMPORARY SEQUENCE s',
      'create temp table if not exists t (a int)',
    ]) {
      assert.deepEqual(detail(sql), { kind: 'create_temp', onCommitDrop: false }, sql);
    }
  });

  it('reads objects created in pg_temp by name', () => {
    for (const sql of [
      'CREATE TABLE pg_temp.t (a int)',
      'CREATE TABLE IF NOT EXISTS pg_temp.t (a int)',
      'CREATE UNLOGGED TABLE PG_TEMP.t (a int)',
      'CREATE VIEW pg_temp.v AS SELECT 1',
      'CREATE SEQUENCE pg_temp_3.s',
      'CREATE FUNCTION pg_temp.f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql',
      'CREATE OR REPLACE FUNCTION "pg_temp".f() RETURNS int RETURN 1',
    ]) {
      assert.equal(one(sql).kind, 'create_temp', sql);
    }
    assert.equal(one('CREATE TABLE public.t (a int)').kind, 'other');
    assert.equal(one('CREATE TABLE "PG_TEMP".t (a int)').kind, 'other');
    assert.equal(one('CREATE TABLE pg_temporary.t (a int)').kind, 'other');
    assert.equal(one('CREATE UNLOGGED TABLE t (a int)').kind, 'other');
  });

  it('flags ON COMMIT DROP', () => {
    assert.deepEqual(detail('CREATE TEMP TABLE t (a int) ON COMMIT DROP'), { kind: 'create_temp', onCommitDrop: true });
    assert.deepEqual(detail('CREATE TEMP TABLE t ON COMMIT DROP AS SELECT 1'), { kind: 'create_temp', onCommitDrop: true });
    assert.deepEqual(detail('CREATE TEMP TABLE t (a int) ON COMMIT DELETE ROWS'), { kind: 'create_temp', onCommitDrop: false });
    assert.deepEqual(detail('CREATE TEMP TABLE t (a int) ON COMMIT PRESERVE ROWS'), { kind: 'create_temp', onCommitDrop: false });
  });

  it('reads SELECT ... INTO TEMP as a temp table creation', () => {
    for (const sql of [
      'SELECT * INTO TEMP t FROM x',
      'SELECT a INTO TEMPORARY TABLE t FROM x',
      'select 1 into local temp t',
      'SELECT 1 INTO GLOBAL TEMPORARY t',
      'SELECT 1 INTO pg_temp.t',
      'SELECT 1 INTO TABLE pg_temp.t',
      'WITH q AS (SELECT 1) SELECT * INTO TEMP t FROM q',
      '(SELECT 1 INTO TEMP t)',
    ]) {
      assert.deepEqual(detail(sql), { kind: 'create_temp', onCommitDrop: false }, sql);
    }
    assert.equal(one('SELECT * INTO t FROM x').kind, 'select');
    assert.equal(one('WITH q AS (SELECT 1) INSERT INTO pg_temp.t SELECT * FROM q').kind, 'with');
    assert.equal(one('INSERT INTO pg_temp.t VALUES (1)').kind, 'insert');
    assert.equal(one("SELECT 'INTO TEMP t'").kind, 'select');
    assert.equal(one('SELECT "into" temp FROM x').kind, 'select');
  });

  it('sees the temp table EXPLAIN ANALYZE creates', () => {
    assert.equal(one('EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1').kind, 'create_temp');
    assert.equal(one('EXPLAIN (ANALYZE, BUFFERS) SELECT 1 INTO TEMP t').kind, 'create_temp');
    assert.equal(one('EXPLAIN (ANALYZE false) CREATE TEMP TABLE t AS SELECT 1').kind, 'other');
    assert.equal(one('EXPLAIN CREATE TEMP TABLE t AS SELECT 1').kind, 'other');
    assert.equal(one('EXPLAIN ANALYZE SELECT 1').kind, 'other');
  });
});

describe('classify: cursors', () => {
  it('reads DECLARE with and without HOLD', () => {
    assert.deepEqual(detail('DECLARE c CURSOR FOR SELECT 1'), { kind: 'declare_cursor', name: 'c', withHold: false });
    assert.deepEqual(detail('DECLARE c CURSOR WITH HOLD FOR SELECT 1'), { kind: 'declare_cursor', name: 'c', withHold: true });
    assert.deepEqual(detail('DECLARE "C" BINARY INSENSITIVE NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1'), {
      kind: 'declare_cursor',
      name: 'C',
      withHold: false,
    });
    assert.deepEqual(detail('declare c scroll cursor with hold for select 1'), { kind: 'declare_cursor', name: 'c', withHold: true });
    assert.equal(one('DECLARE c FOR SELECT 1').kind, 'unknown');
  });

  it('reads CLOSE, FETCH, MOVE', () => {
    assert.deepEqual(detail('CLOSE c'), { kind: 'close_cursor', name: 'c' });
    assert.deepEqual(detail('CLOSE ALL'), { kind: 'close_cursor', name: null });
    assert.equal(one('FETCH 10 FROM c').kind, 'fetch');
    assert.equal(one('MOVE NEXT IN c').kind, 'move');
  });
});

describe('classify: transaction control', () => {
  it('reads every transaction statement', () => {
    assert.deepEqual(kinds('BEGIN; BEGIN ISOLATION LEVEL SERIALIZABLE; START TRANSACTION READ ONLY'), [
      'begin',
      'begin',
      'start_transaction',
    ]);
    assert.deepEqual(detail('COMMIT'), { kind: 'commit', chain: false });
    assert.deepEqual(detail('COMMIT WORK AND CHAIN'), { kind: 'commit', chain: true });
    assert.deepEqual(detail('COMMIT AND NO CHAIN'), { kind: 'commit', chain: false });
    assert.deepEqual(detail('END TRANSACTION'), { kind: 'end', chain: false });
    assert.deepEqual(detail('ROLLBACK'), { kind: 'rollback', chain: false });
    assert.deepEqual(detail('ROLLBACK AND CHAIN'), { kind: 'rollback', chain: true });
    assert.deepEqual(detail('ABORT'), { kind: 'abort', chain: false });
    assert.deepEqual(detail('SAVEPOINT sp1'), { kind: 'savepoint', name: 'sp1' });
    assert.deepEqual(detail('RELEASE sp1'), { kind: 'release', name: 'sp1' });
    assert.deepEqual(detail('RELEASE SAVEPOINT "Sp"'), { kind: 'release', name: 'Sp' });
    assert.deepEqual(detail('ROLLBACK TO sp1'), { kind: 'rollback_to', name: 'sp1' });
    assert.deepEqual(detail('ROLLBACK WORK TO SAVEPOINT sp1'), { kind: 'rollback_to', name: 'sp1' });
    assert.deepEqual(detail('ROLLBACK TRANSACTION TO savepoint'), { kind: 'rollback_to', name: 'savepoint' });
    assert.deepEqual(detail("PREPARE TRANSACTION 'g1'"), { kind: 'prepare_transaction', gid: 'g1' });
    assert.deepEqual(detail("COMMIT PREPARED 'g1'"), { kind: 'commit_prepared', gid: 'g1' });
    assert.deepEqual(detail("ROLLBACK PREPARED 'g1'"), { kind: 'rollback_prepared', gid: 'g1' });
    assert.equal(one('START').kind, 'unknown');
    assert.equal(one('SAVEPOINT').kind, 'unknown');
  });
});

describe('classify: ordinary statements', () => {
  it('reads DML, queries and the rest', () => {
    assert.deepEqual(kinds('SELECT 1; TABLE t; (SELECT 1) UNION (SELECT 2); ((VALUES (1)))'), ['select', 'select', 'select', 'select']);
    assert.deepEqual(kinds('INSERT INTO t VALUES (1); UPDATE t SET a = 1; DELETE FROM t; VALUES (1), (2)'), [
      'insert',
      'update',
      'delete',
      'values',
    ]);
    assert.deepEqual(kinds('WITH x AS (SELECT 1) SELECT * FROM x; COPY t FROM STDIN; COPY (SELECT 1) TO STDOUT'), ['with', 'copy', 'copy']);
    assert.deepEqual(kinds('SHOW search_path; ALTER TABLE t ADD c int; DO $$ BEGIN PERFORM 1; END $$; VACUUM; GRANT x TO y'), [
      'other',
      'other',
      'other',
      'other',
      'other',
    ]);
    assert.deepEqual(kinds('FROBNICATE; "SELECT" 1; 42; (1)'), ['unknown', 'unknown', 'unknown', 'unknown']);
  });

  it('reports firstKeyword and the span of each statement', () => {
    const sql = '/* lead */ Select 1 ;\n  ( SELECT 2 ) -- tail';
    const out = classify(sql);
    assert.deepEqual(
      out.map((s) => [s.kind, s.firstKeyword, sql.slice(s.start, s.end)]),
      [
        ['select', 'select', 'Select 1'],
        ['select', 'select', '( SELECT 2 )'],
      ],
    );
    assert.equal(one('"x" y').firstKeyword, null);
  });

  it('answers one empty statement for text with no statement', () => {
    for (const sql of ['', '   ', ';', ' ; ;; ', '-- only a comment', '/* a /* nested */ comment */']) {
      const out = classify(sql);
      assert.equal(out.length, 1, sql);
      assert.deepEqual(out[0], {
        kind: 'empty',
        start: 0,
        end: sql.length,
        firstKeyword: null,
        sessionAdvisoryLock: false,
        setConfigSession: false,
        setConfigUndetermined: false,
      });
    }
  });

  it('lists every kind in STATEMENT_KIND', () => {
    assert.equal(new Set(Object.values(STATEMENT_KIND)).size, Object.values(STATEMENT_KIND).length);
    assert.ok(Object.values(STATEMENT_KIND).includes('create_temp'));
  });
});

// ---------------------------------------------------------------- classify: hiding places

describe('classify: keywords hidden in strings, comments and quotes', () => {
  it('does not see statements inside strings and comments', () => {
    assert.deepEqual(kinds("SELECT 'LISTEN x'"), ['select']);
    assert.deepEqual(kinds('/* SET x=1 */ SELECT 1'), ['select']);
    assert.deepEqual(kinds('-- LISTEN\nSELECT'), ['select']);
    assert.deepEqual(kinds('SELECT 1 -- ; LISTEN x'), ['select']);
    assert.deepEqual(kinds('/* a /* b */ LISTEN c */ SELECT 1'), ['select']);
    assert.deepEqual(kinds('SELECT 1 /* a /* b */ ; LISTEN c */'), ['select']);
    assert.deepEqual(kinds("SELECT 'a'';LISTEN x'"), ['select']);
    assert.deepEqual(kinds('SELECT "a"";LISTEN x"'), ['select']);
  });

  it('does not split inside dollar quotes, but does after them', () => {
    assert.deepEqual(kinds('SELECT $$; LISTEN x; $$'), ['select']);
    assert.deepEqual(kinds('SELECT $tag$ $$ ; $tag$; LISTEN a'), ['select', 'listen']);
    assert.deepEqual(kinds('SELECT $a$ $b$ ; $b$ ; $a$; NOTIFY n'), ['select', 'notify']);
  });

  it('keeps a backslash-escaped quote inside an E string', () => {
    assert.deepEqual(kinds("SELECT E'\\';LISTEN x'"), ['select']);
    assert.deepEqual(kinds("SELECT E'\\\\';LISTEN x"), ['select', 'listen']);
    // The same text without E: the backslash is literal, so LISTEN is a statement (with a dangling quote).
    assert.deepEqual(kinds("SELECT '\\';LISTEN x'"), ['select', 'unknown']);
  });

  it('does not take a quoted identifier for a keyword', () => {
    assert.deepEqual(kinds('SELECT "LISTEN" FROM t'), ['select']);
    assert.deepEqual(kinds('"LISTEN" ch'), ['unknown']);
    assert.deepEqual(kinds('SELECT 1 AS "; LISTEN x"'), ['select']);
  });

  it('sees nothing of a CREATE FUNCTION $$ body', () => {
    const sql =
      'CREATE FUNCTION f() RETURNS void AS $$ BEGIN SET search_path = x; LISTEN y; ' +
      "PERFORM pg_advisory_lock(1); PERFORM set_config('a', 'b', false); END $$ LANGUAGE plpgsql";
    const s = one(sql);
    assert.equal(s.kind, 'other');
    assert.equal(s.sessionAdvisoryLock, false);
    assert.equal(s.setConfigSession, false);
  });

  it('keeps a BEGIN ATOMIC body in its CREATE FUNCTION', () => {
    const sql = 'CREATE FUNCTION g() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; NOTIFY ch; END; LISTEN z';
    assert.deepEqual(kinds(sql), ['other', 'listen']);
  });

  it('classifies a Query with several statements', () => {
    const out = classify('SET search_path = a; SELECT 1; LISTEN ch;');
    assert.deepEqual(
      out.map((s) => s.kind),
      ['set', 'select', 'listen'],
    );
    assert.deepEqual(
      out.map((s) => [s.start, s.end]),
      [
        [0, 19],
        [21, 29],
        [31, 40],
      ],
    );
  });
});

// ---------------------------------------------------------------- classify: flags

describe('classify: session advisory locks', () => {
  it('flags calls of the session-level functions, however spelled', () => {
    for (const sql of [
      'select pg_advisory_lock(1)',
      'SELECT PG_ADVISORY_LOCK (1)',
      'select "pg_advisory_lock"(1)',
      'select pg_catalog.pg_try_advisory_lock(2)',
      'select "pg_catalog"."pg_advisory_lock_shared"(1, 2)',
      'select pg_try_advisory_lock_shared(1)',
      'select pg_advisory_unlock(1)',
      'select pg_advisory_unlock_shared(1)',
      'select pg_advisory_unlock_all()',
      'select pg_advisory_lock /* c */ (1)',
      'SELECT * FROM pg_advisory_lock(1)',
      'UPDATE t SET ok = pg_try_advisory_lock(id)',
      'select U&"pg\\005fadvisory_lock"(1)',
      'PREPARE p AS SELECT pg_advisory_lock($1)',
    ]) {
      assert.equal(one(sql).sessionAdvisoryLock, true, sql);
    }
  });

  it('does not flag transaction-level variants, strings, comments or non-calls', () => {
    for (const sql of [
      'select pg_advisory_xact_lock(1)',
      'select pg_try_advisory_xact_lock(1)',
      'select pg_advisory_xact_lock_shared(1)',
      "select 'pg_advisory_lock(1)'",
      'select 1 /* pg_advisory_lock(1) */',
      'select $$pg_advisory_lock(1)$$',
      'select pg_advisory_lock',
      'select "PG_ADVISORY_LOCK"(1)',
      'DROP FUNCTION pg_advisory_lock(bigint)',
      'COMMENT ON FUNCTION pg_catalog.pg_advisory_lock(bigint) IS $$x$$',
    ]) {
      assert.equal(one(sql).sessionAdvisoryLock, false, sql);
    }
  });

  it('flags per statement', () => {
    assert.deepEqual(
      classify('SELECT 1; SELECT pg_advisory_lock(1); SELECT 2').map((s) => s.sessionAdvisoryLock),
      [false, true, false],
    );
  });
});

describe('classify: set_config', () => {
  it('flags is_local false as a session-level SET', () => {
    for (const sql of [
      "select set_config('search_path', 'x', false)",
      "SELECT SET_CONFIG('a', 'b', FALSE)",
      "select pg_catalog.set_config('a', 'b', 'f')",
      "select set_config('a', 'b', 'off')",
      "select set_config('a', 'b', ' No ')",
      "select set_config('a', 'b', '0')",
      "select set_config('a', 'b', (false))",
      "select set_config('a', 'b', false::boolean)",
      "select set_config('a', 'b', 'false'::pg_catalog.bool)",
      "select set_config('a', concat('b', 'c'), false)",
      "select set_config('a', ARRAY[1,2]::text, false)",
      "select set_config('a', 'b', false), set_config('c', 'd', true)",
      "select * from t where set_config('a', (select max(x) from y), false) is not null",
    ]) {
      const s = one(sql);
      assert.equal(s.setConfigSession, true, sql);
      assert.equal(s.setConfigUndetermined, false, sql);
    }
  });

  it('does not flag is_local true', () => {
    for (const sql of ["select set_config('a', 'b', true)", "select set_config('a', 'b', 't')", "select set_config('a', 'b', 'on')"]) {
      const s = one(sql);
      assert.equal(s.setConfigSession, false, sql);
      assert.equal(s.setConfigUndetermined, false, sql);
    }
  });

  it('reports an is_local it cannot read as undetermined', () => {
    for (const sql of [
      "select set_config('a', 'b', $1)",
      "select set_config('a', 'b', x)",
      "select set_config('a', 'b', not true)",
      "select set_config('a', 'b')",
      "select set_config('a', 'b', 'maybe')",
      "select set_config('a', 'b', is_local => false)",
    ]) {
      const s = one(sql);
      assert.equal(s.setConfigSession, false, sql);
      assert.equal(s.setConfigUndetermined, true, sql);
    }
  });

  it('ignores set_config in strings and comments', () => {
    const s = one("select 'set_config(''a'', ''b'', false)' -- set_config('a','b',false)");
    assert.equal(s.setConfigSession, false);
    assert.equal(s.setConfigUndetermined, false);
  });

  it('nests', () => {
    const s = one("select set_config('a', set_config('b', 'c', true), false)");
    assert.equal(s.setConfigSession, true);
    assert.equal(s.setConfigUndetermined, false);
  });

  it('reads boolean literals like PostgreSQL', () => {
    for (const [text, v] of [
      ['t', true],
      ['TRUE', true],
      ['  yes ', true],
      ['on', true],
      ['1', true],
      ['f', false],
      ['fal', false],
      ['n', false],
      ['of', false],
      ['OFF', false],
      ['0', false],
      ['o', null],
      ['', null],
      ['truee', null],
      ['2', null],
    ] as const) {
      assert.equal(parseBoolean(text), v, text);
    }
    assert.equal(booleanLiteral(tokenize('((false))::bool')), false);
    assert.equal(booleanLiteral(tokenize('(false) or (true)')), null);
    assert.equal(booleanLiteral(tokenize('')), null);
  });
});

// ---------------------------------------------------------------- robustness

const FRAGMENTS = [
  'SELECT ',
  'select 1',
  'LISTEN ch',
  'SET x = 1',
  'SET LOCAL ',
  'RESET ',
  'CREATE ',
  'FUNCTION ',
  'TEMP ',
  'TABLE t',
  'INTO ',
  'BEGIN ',
  'ATOMIC ',
  'CASE ',
  'END',
  ' ',
  '\n',
  ';',
  '(',
  ')',
  '[',
  ']',
  ',',
  '.',
  ':',
  '::',
  "'",
  "''",
  "E'",
  "e'\\'",
  '\\',
  '"',
  '""',
  'U&"',
  "U&'",
  ' UESCAPE ',
  "'!'",
  '$',
  '$$',
  '$a$',
  '$1',
  '--',
  '/*',
  '*/',
  '*',
  '-',
  '+',
  '=',
  '0x',
  '1.5e',
  '..',
  'pg_advisory_lock(',
  'pg_catalog.',
  'set_config(',
  'false',
  'ON COMMIT DROP',
  'pg_temp.',
  'DECLARE c CURSOR WITH HOLD FOR ',
  '\u0000',
  '\uD83D',
  'é',
  '{',
];

describe('robustness', () => {
  it('never throws on random text, and spans stay ordered and inside the input', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 300 }), (sql) => {
        checkSpans(sql, classify(sql));
        checkTokens(sql, tokenize(sql));
      }),
      { numRuns: 2000 },
    );
  });

  it('never throws on random concatenations of SQL fragments', () => {
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...FRAGMENTS), { maxLength: 40 }), fc.boolean(), (parts, scs) => {
        const sql = parts.join('');
        const out = classify(sql, { standardConformingStrings: scs });
        checkSpans(sql, out);
        checkTokens(sql, tokenize(sql, { standardConformingStrings: scs }));
        // The splitter and the classifier agree on where statements are.
        const spans = splitStatements(sql, { standardConformingStrings: scs });
        if (spans.length === 0) assert.equal(out[0]!.kind, 'empty');
        else
          assert.deepEqual(
            out.map((s) => [s.start, s.end]),
            spans.map((s) => [s.start, s.end]),
          );
      }),
      { numRuns: 3000 },
    );
  });

  it('finds the same tokens whatever blanks and comments separate them', () => {
    const sep = fc.constantFrom(' ', '\n', '\t', '/* x */', '-- y\n', '/* /* z */ */');
    const word = fc.constantFrom('select', 'LISTEN', 'x', "'a;b'", '"Q;"', '$$;$$', '1', '(', ')', ';', '=', "E'\\''");
    fc.assert(
      fc.property(fc.array(fc.tuple(word, sep), { maxLength: 20 }), (pairs) => {
        const plain = pairs.map(([w]) => w).join(' ');
        // (A newline between two string constants would join them into one.)
        const fancy = pairs.map(([w, s]) => w + (w.endsWith("'") && s.includes('\n') ? ' ' : s)).join('');
        assert.deepEqual(
          tokenize(plain).map((t) => [t.kind, t.value]),
          tokenize(fancy).map((t) => [t.kind, t.value]),
        );
        assert.deepEqual(kinds(plain), kinds(fancy));
      }),
      { numRuns: 1000 },
    );
  });

  it('classifies multi-megabyte input', () => {
    const size = 5 * 1024 * 1024;
    const many = 'SELECT 1; '.repeat(size / 10);
    const out = classify(many);
    assert.equal(out.length, size / 10);
    assert.equal(out[out.length - 1]!.kind, 'select');

    const wide = `SELECT ${'a, '.repeat(size / 3)}pg_advisory_lock(1)`;
    const w = one(wide);
    assert.equal(w.kind, 'select');
    assert.equal(w.sessionAdvisoryLock, true);

    assert.equal(one(`SELECT '${'x'.repeat(size)}'`).kind, 'select');
    assert.equal(one(`SELECT $$${'x;'.repeat(size / 2)}$$`).kind, 'select');
    assert.equal(one(`SELECT E'${'\\\\'.repeat(size / 2)}'`).kind, 'select');
    assert.equal(one(`/* ${'/* '.repeat(size / 3)}`).kind, 'unknown');
    assert.equal(classify(`-- ${'x'.repeat(size)}`)[0]!.kind, 'empty');
    assert.equal(one(`SET search_path = ${'s, '.repeat(size / 3)}t`).kind, 'set');
    assert.equal(one(`SELECT ${'('.repeat(size / 2)}1${')'.repeat(size / 2)}`).kind, 'select');
    assert.equal(one(`'${"''".repeat(size / 2)}`).kind, 'unknown');
    assert.equal(one('+'.repeat(size)).kind, 'unknown');
    const nested = one(`SELECT ${'set_config(1, '.repeat(size / 14)}`);
    assert.equal(nested.kind, 'unknown');
    assert.equal(nested.setConfigUndetermined, true);
    assert.equal(one(`SELECT ${'$a '.repeat(size / 3)}`).kind, 'unknown');
    assert.equal(one(`SELECT ${"U&'x' /* c */ ".repeat(size / 16)}`).kind, 'select');
  });
});

describe('shapeKey fast path', () => {
  it("gives the lexer's key for plain texts, and leaves every other text to the lexer", () => {
    const plain = [
      'SELECT abalance FROM pgbench_accounts WHERE aid = 4711;',
      '  select t1.a2, t2.b FROM t1 JOIN t2 ON t1.id=t2.id  LIMIT 10\n',
      'UPDATE x SET n = n + 1, m = -5 WHERE k IN (1,2, 3)',
      'SELECT a::int4, b[1], c:=2, d<=>4, x=-1, y>=2 /2 FROM t',
      'BEGIN',
      '',
      '   \t\n ',
      'select\t1\r\n,\f2\v',
      'SELECT 1 / 2 - 3 * 4 % 5 ^ 6 ! 7 @ 8 # 9 ~ 10 | 11 & 12 ? 13 ` 14',
      'SELECT 0, 00, 007, 123456789012345678901234567890',
    ];
    for (const t of plain) {
      const fast = plainShapeKey(t);
      assert.notEqual(fast, null, t);
      assert.equal(fast, lexedShapeKey(t), t);
    }
    const lexed = [
      "SELECT 'a'",
      'SELECT "Q"',
      'SELECT $1',
      'SELECT $$x$$',
      'SELECT 1.5',
      'SELECT .5',
      'SELECT 1e5',
      'SELECT 0x1F',
      'SELECT 1_000',
      'SELECT 1abc',
      'SELECT a.1',
      'SELECT 1 -- c',
      'SELECT /* c */ 1',
      'SELECT é',
      'SELECT {',
      'SELECT \\',
    ];
    for (const t of lexed) assert.equal(plainShapeKey(t), null, t);
    for (const t of [...plain, ...lexed]) assert.equal(shapeKey(t), lexedShapeKey(t), t);
  });

  it('agrees with the lexer on random texts of plain characters and everything near them', () => {
    const unit = fc.constantFrom(
      ...'aZ_e E x o b 0 1 9 . : ; , ( ) [ ] + - * / < > = ~ ! @ # % ^ & | ` ?'.split(' '),
      ' ',
      '  ',
      '\t',
      '\n',
      '\r\n',
      '\f',
      '\v',
      '--',
      '/*',
      '*/',
      "'",
      '"',
      '$',
      '\\',
      'é',
      '{',
      'select',
      't1',
      '42',
      '3.14',
    );
    fc.assert(
      fc.property(fc.array(unit, { maxLength: 60 }), (parts) => {
        const text = parts.join('');
        const fast = plainShapeKey(text);
        if (fast !== null) assert.equal(fast, lexedShapeKey(text), JSON.stringify(text));
        assert.equal(shapeKey(text), lexedShapeKey(text), JSON.stringify(text));
      }),
      { numRuns: 20000 },
    );
  });
});

describe('session-effect shortcut', () => {
  it('a text without any trigger word has no session effect by the exact classifier', async () => {
    const { compute, mayHaveSessionEffects } = await import('../../src/frontend/session-features.ts');
    const words = [
      ...FRAGMENTS,
      'pg_advisory_lock(1)',
      'pg_try_advisory_lock_shared(2)',
      "set_config('a', 'b', false)",
      'PREPARE p AS ',
      'DECLARE c CURSOR WITH HOLD FOR ',
      'LOAD ',
      "'plugin'",
      'DEALLOCATE ALL',
      'DISCARD ALL',
      'pg_temp.t',
      'TEMPORARY ',
      'SESSION AUTHORIZATION ',
      'ROLE r',
      'UPDATE t SET a = 1',
      'U&"\\0073et"',
      'INSERT INTO t VALUES (1)',
      'WITH HOLD',
      'x',
      '1',
    ];
    let inert = 0;
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...words), { maxLength: 12 }), fc.boolean(), (parts, scs) => {
        const sql = parts.join(' ');
        if (mayHaveSessionEffects(sql)) return;
        inert++;
        const e = compute(sql, scs);
        assert.equal(e.pin, null, sql);
        assert.deepEqual(e.sets, [], sql);
        assert.equal(e.resetAll, false, sql);
        assert.deepEqual(e.forget, [], sql);
      }),
      { numRuns: 3000 },
    );
    assert.ok(inert > 100, `only ${inert} inert texts were generated`);
    for (const sql of [
      'SELECT pg_advisory_lock(1)',
      'select set_config($1, $2, false)',
      'LISTEN x',
      'create temp table t()',
      'DISCARD ALL',
    ]) {
      assert.ok(mayHaveSessionEffects(sql), sql);
    }
  });
});

describe('one trigger test for all statement effects', () => {
  it('a text any single trigger test matches is matched by the combined one (random texts, every trigger word)', async () => {
    const { mayHaveAnyEffect, TRIGGER_TESTS, mayUseSequences, mayBeDdl } = await import('../../src/frontend/session-features.ts');
    const words = [
      'set',
      'temp',
      'prepare',
      'listen',
      'declare',
      'load',
      'deallocate',
      'discard',
      'advisory',
      '&',
      'nextval',
      'setval',
      'insert',
      'update',
      'merge',
      'copy',
      'call',
      'do',
      'execute',
      '(',
      'alter',
      'drop',
      'create',
      'comment',
      'rename',
      'select',
      'from',
      'x',
      ' ',
      'abc',
      'SeT',
      'DROP',
    ];
    fc.assert(
      fc.property(fc.array(fc.constantFrom(...words), { maxLength: 8 }), fc.string({ maxLength: 6 }), (parts, noise) => {
        const sql = parts.join('') + noise;
        const any = TRIGGER_TESTS.some((t) => t(sql));
        assert.equal(mayHaveAnyEffect(sql) || !any, true, sql);
        if (!mayHaveAnyEffect(sql)) {
          assert.equal(mayUseSequences(sql), false, sql);
          assert.equal(mayBeDdl(sql), false, sql);
        }
      }),
      { numRuns: 3000 },
    );
    // And it can tell: pgbench's -S statement has none of them.
    assert.equal(mayHaveAnyEffect('SELECT abalance FROM pgbench_accounts WHERE aid = 42;'), false);
  });
});
