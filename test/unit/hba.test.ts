// pg_hba.conf parsing and matching: the lexer (quotes, lists, comments,
// continuations), every field and its errors with their line numbers,
// first-match-wins order, address arithmetic for IPv4, IPv6 and IPv4-mapped
// clients, and Postgres's exact FATAL wording.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import {
  formatAuthFileError,
  type HbaError,
  type HbaMatchInput,
  type HbaRule,
  matchHba,
  noMatchMessage,
  normalizeClientAddress,
  parseHba,
  rejectMessage,
  tokenizeAuthFile,
} from '../../src/auth/hba.ts';

// ---------------------------------------------------------------- helpers

const FILE = 'pg_hba.conf';

function rules(text: string): HbaRule[] {
  const r = parseHba(text, FILE);
  assert.deepEqual(
    r.errors.map((e) => formatAuthFileError(e)),
    [],
  );
  return r.rules;
}

function rule(text: string): HbaRule {
  const rs = rules(text);
  assert.equal(rs.length, 1);
  return rs[0]!;
}

/** The single error of a file that has exactly one bad line. */
function error(text: string): HbaError {
  const r = parseHba(text, FILE);
  assert.equal(r.errors.length, 1, `expected one error, got ${JSON.stringify(r.errors.map((e) => e.message))}`);
  return r.errors[0]!;
}

function input(over: Partial<HbaMatchInput> = {}): HbaMatchInput {
  return { ssl: false, database: 'app', user: 'alice', address: '10.1.2.3', ...over };
}

/** Line number of the matching rule, or null. */
function lineFor(rs: readonly HbaRule[], over: Partial<HbaMatchInput> = {}): number | null {
  return matchHba(rs, input(over))?.line ?? null;
}

function matches(text: string, over: Partial<HbaMatchInput> = {}): boolean {
  return matchHba(rules(text), input(over)) !== null;
}

// ---------------------------------------------------------------- lexer

describe('hba lexer', () => {
  it('skips comments and blank lines but keeps physical line numbers', () => {
    const rs = rules('# header\n\n   \n\thost all all all trust # trailing\n# more\nhost all all all reject\n');
    assert.deepEqual(
      rs.map((r) => [r.line, r.method]),
      [
        [4, 'trust'],
        [6, 'reject'],
      ],
    );
    assert.equal(rs[0]!.text, '\thost all all all trust # trailing');
  });

  it('treats # inside quotes as part of the token', () => {
    const r = rule('host "db#1" all all trust');
    assert.deepEqual(r.databases, [{ kind: 'name', name: 'db#1' }]);
  });

  it('ends a token at an unquoted #: the rest of the line is a comment', () => {
    const e = error('host app#x all all trust');
    assert.equal(e.message, 'end-of-line before role specification');
  });

  it('reads quoted tokens with spaces and "" as a literal quote', () => {
    const r = rule('host "my db","a""b" "bob smith" all trust');
    assert.deepEqual(r.databases, [
      { kind: 'name', name: 'my db' },
      { kind: 'name', name: 'a"b' },
    ]);
    assert.deepEqual(r.users, [{ kind: 'name', name: 'bob smith' }]);
  });

  it('reads comma lists, with whitespace allowed after a comma and commas allowed inside quotes', () => {
    const r = rule('host db1,db2, db3,"d,4" u1,u2 all trust');
    assert.deepEqual(
      r.databases.map((d) => (d.kind === 'name' ? d.name : d.kind)),
      ['db1', 'db2', 'db3', 'd,4'],
    );
    assert.deepEqual(
      r.users.map((u) => (u.kind === 'name' ? u.name : u.kind)),
      ['u1', 'u2'],
    );
  });

  it('does not join "a ,b": whitespace before a comma ends the field (as in Postgres)', () => {
    // Fields shift: db2 becomes the user, all the address, the CIDR the method.
    const e = error('host db1 ,db2 all 10.0.0.0/8 trust');
    assert.equal(e.message, 'invalid authentication method "10.0.0.0/8"');
    assert.equal(e.column, 19);
  });

  it('joins a line ending in a backslash with the next; the rule keeps the first line number', () => {
    const rs = rules('host app \\\n  alice 10.0.0.0/8 \\\n  md5\nhost all all all reject\n');
    assert.equal(rs.length, 2);
    assert.equal(rs[0]!.line, 1);
    assert.equal(rs[0]!.method, 'md5');
    assert.equal(rs[0]!.text, 'host app   alice 10.0.0.0/8   md5');
    assert.equal(rs[1]!.line, 4);
  });

  it('joins continuation lines directly, without adding a space', () => {
    const r = rule('host al\\\nl all all trust');
    assert.deepEqual(r.databases, [{ kind: 'all' }]);
  });

  it('continues a comment too, since continuation is applied to the raw line', () => {
    const rs = rules('# comment \\\nhost all all all trust\nhost all all all reject');
    assert.deepEqual(
      rs.map((r) => [r.line, r.method]),
      [[3, 'reject']],
    );
  });

  it('does not continue when the backslash is followed by a space', () => {
    const e = error('host all all all trust \\ \nhost all all all reject');
    assert.equal(e.line, 1);
    assert.equal(e.message, 'authentication option not in name=value format: \\');
  });

  it('accepts CRLF line endings, including before a continuation', () => {
    const rs = rules('host all all all \\\r\ntrust\r\nhost all all all reject\r\n');
    assert.deepEqual(
      rs.map((r) => [r.line, r.method]),
      [
        [1, 'trust'],
        [3, 'reject'],
      ],
    );
  });

  it('reports an unterminated quote', () => {
    const e = error('host "app all all trust');
    assert.equal(e.message, 'unterminated quoted string');
    assert.equal(e.column, 6);
  });

  it("marks a token quoted only when it starts with a quote (Postgres's rule)", () => {
    const entries = tokenizeAuthFile('"all" a"ll" ""');
    const toks = entries[0]!.fields.map((f) => f.tokens[0]!);
    assert.deepEqual(
      toks.map((t) => [t.value, t.quoted, t.column]),
      [
        ['all', true, 1],
        ['all', false, 7],
        ['', true, 13],
      ],
    );
  });
});

// ---------------------------------------------------------------- connection types

describe('hba connection types', () => {
  const all = (t: string) => rules(`${t} all all all trust`);

  it('host and hostnogssenc match with and without SSL', () => {
    for (const t of ['host', 'hostnogssenc']) {
      assert.equal(lineFor(all(t), { ssl: true }), 1, t);
      assert.equal(lineFor(all(t), { ssl: false }), 1, t);
    }
  });

  it('hostssl matches only SSL connections, hostnossl only plaintext ones', () => {
    assert.equal(lineFor(all('hostssl'), { ssl: true }), 1);
    assert.equal(lineFor(all('hostssl'), { ssl: false }), null);
    assert.equal(lineFor(all('hostnossl'), { ssl: false }), 1);
    assert.equal(lineFor(all('hostnossl'), { ssl: true }), null);
  });

  it('hostgssenc is kept but never matches (no GSS encryption)', () => {
    const rs = all('hostgssenc');
    assert.equal(rs[0]!.canMatch, false);
    assert.equal(lineFor(rs, { ssl: true }), null);
    assert.equal(lineFor(rs, { ssl: false }), null);
  });

  it('local is kept (no address field) but never matches TCP', () => {
    const rs = rules('local all all trust\nhost all all all md5');
    assert.equal(rs[0]!.connType, 'local');
    assert.equal(rs[0]!.address, null);
    assert.equal(rs[0]!.canMatch, false);
    assert.equal(lineFor(rs), 2);
  });

  it('reports an invalid connection type with its column', () => {
    const e = error('# x\nhots all all all trust');
    assert.equal(e.message, 'invalid connection type "hots"');
    assert.equal(e.line, 2);
    assert.equal(e.column, 1);
    assert.equal(e.context, 'line 2 of configuration file "pg_hba.conf"');
    assert.equal(e.fileName, FILE);
    assert.equal(e.text, 'hots all all all trust');
  });

  it('rejects a list of connection types', () => {
    const e = error('host,hostssl all all all trust');
    assert.equal(e.message, 'multiple values specified for connection type');
    assert.equal(e.hint, 'Specify exactly one connection type per line.');
    assert.equal(e.column, 6);
  });

  it('rejects include directives', () => {
    const e = error('include other.conf');
    assert.equal(e.message, '"include" directives are not supported by Postern');
    assert.equal(error('include_dir conf.d').message, '"include_dir" directives are not supported by Postern');
    assert.equal(error('include_if_exists x').message, '"include_if_exists" directives are not supported by Postern');
  });
});

// ---------------------------------------------------------------- database field

describe('hba database field', () => {
  it('matches names exactly and all for any database', () => {
    assert.equal(matches('host app all all trust', { database: 'app' }), true);
    assert.equal(matches('host app all all trust', { database: 'App' }), false);
    assert.equal(matches('host app all all trust', { database: 'app2' }), false);
    assert.equal(matches('host all all all trust', { database: 'anything' }), true);
  });

  it('treats a quoted "all" as a database literally named all', () => {
    const r = rule('host "all" all all trust');
    assert.deepEqual(r.databases, [{ kind: 'name', name: 'all' }]);
    assert.equal(matches('host "all" all all trust', { database: 'app' }), false);
    assert.equal(matches('host "all" all all trust', { database: 'all' }), true);
  });

  it('sameuser matches when the database is named after the user', () => {
    assert.equal(matches('host sameuser all all trust', { database: 'alice', user: 'alice' }), true);
    assert.equal(matches('host sameuser all all trust', { database: 'app', user: 'alice' }), false);
  });

  it('replication matches only physical replication connections, and all does not match them', () => {
    const rs = rules('host all all all md5\nhost replication all all scram-sha-256');
    assert.equal(lineFor(rs, { replication: true }), 2);
    assert.equal(lineFor(rs, { replication: false }), 1);
    assert.equal(lineFor(rules('host replication all all trust'), { database: 'replication' }), null);
    assert.equal(lineFor(rules('host all all all trust'), { replication: true }), null);
  });

  it('replication inside a list still works, and a quoted "replication" is a plain name', () => {
    assert.equal(lineFor(rules('host app,replication all all trust'), { replication: true }), 1);
    assert.equal(lineFor(rules('host "replication" all all trust'), { replication: true }), null);
    assert.equal(lineFor(rules('host "replication" all all trust'), { database: 'replication' }), 1);
  });

  it('regular expressions (leading slash) match unanchored unless anchored', () => {
    assert.equal(matches('host /^db\\d+$ all all trust', { database: 'db42' }), true);
    assert.equal(matches('host /^db\\d+$ all all trust', { database: 'db42x' }), false);
    assert.equal(matches('host /test all all trust', { database: 'mytest_db' }), true);
    assert.equal(matches('host /test all all trust', { database: 'prod' }), false);
  });

  it('a quoted regex may contain commas', () => {
    const r = rule('host "/^a{1,2}$" all all trust');
    assert.equal(r.databases[0]!.kind, 'regex');
    assert.equal(matches('host "/^a{1,2}$" all all trust', { database: 'aa' }), true);
    assert.equal(matches('host "/^a{1,2}$" all all trust', { database: 'aaa' }), false);
  });

  it('reports an invalid regular expression', () => {
    const e = error('host /(unclosed all all trust');
    assert.match(e.message, /^invalid regular expression "\(unclosed": /);
    assert.equal(e.column, 6);
  });

  it('refuses POSIX bracket classes with a hint instead of matching differently', () => {
    const e = error('host /^[[:alpha:]]+$ all all trust');
    assert.match(e.message, /POSIX bracket expressions are not supported by Postern/);
  });

  it('refuses samerole and samegroup (no role data)', () => {
    assert.equal(error('host samerole all all trust').message, 'samerole is not supported by Postern');
    assert.equal(error('host samegroup all all trust').message, 'samegroup is not supported by Postern');
    // ...but as quoted names they are ordinary databases.
    assert.equal(rule('host "samerole" all all trust').databases[0]!.kind, 'name');
  });

  it('refuses @file includes with a clear message, and allows a quoted @name', () => {
    const e = error('\n\nhost @dbs.txt all all trust');
    assert.equal(e.message, 'including names from a file ("@dbs.txt") is not supported by Postern');
    assert.equal(e.line, 3);
    assert.equal(e.column, 6);
    assert.deepEqual(rule('host "@dbs" all all trust').databases, [{ kind: 'name', name: '@dbs' }]);
  });

  it('reports a line with nothing after the connection type', () => {
    const e = error('host');
    assert.equal(e.message, 'end-of-line before database specification');
    assert.equal(e.column, 5);
  });
});

// ---------------------------------------------------------------- user field

describe('hba user field', () => {
  it('matches names, lists, all and regexes', () => {
    assert.equal(matches('host all alice all trust', { user: 'alice' }), true);
    assert.equal(matches('host all alice all trust', { user: 'bob' }), false);
    assert.equal(matches('host all bob,alice all trust', { user: 'alice' }), true);
    assert.equal(matches('host all all all trust', { user: 'zed' }), true);
    assert.equal(matches('host all /^svc_ all trust', { user: 'svc_billing' }), true);
    assert.equal(matches('host all /^svc_ all trust', { user: 'admin' }), false);
  });

  it('treats a quoted "all" user as a literal name', () => {
    assert.equal(matches('host all "all" all trust', { user: 'alice' }), false);
    assert.equal(matches('host all "all" all trust', { user: 'all' }), true);
  });

  it('refuses +group, but a quoted "+name" is a literal user', () => {
    const e = error('host all +admins all trust');
    assert.equal(e.message, 'group membership ("+admins") is not supported by Postern');
    assert.equal(e.column, 10);
    assert.equal(matches('host all "+admins" all trust', { user: '+admins' }), true);
  });

  it('reports a missing user field', () => {
    assert.equal(error('host all').message, 'end-of-line before role specification');
  });
});

// ---------------------------------------------------------------- address field

describe('hba address field', () => {
  const at = (addrField: string, address: string) => matches(`host all all ${addrField} trust`, { address });

  it('IPv4 CIDR: /8, /32, /0', () => {
    assert.equal(at('10.0.0.0/8', '10.255.0.1'), true);
    assert.equal(at('10.0.0.0/8', '11.0.0.1'), false);
    assert.equal(at('192.168.1.5/32', '192.168.1.5'), true);
    assert.equal(at('192.168.1.5/32', '192.168.1.6'), false);
    assert.equal(at('0.0.0.0/0', '203.0.113.9'), true);
  });

  it('IPv4 CIDR on a non-octet boundary (/23)', () => {
    assert.equal(at('192.168.2.0/23', '192.168.2.1'), true);
    assert.equal(at('192.168.2.0/23', '192.168.3.254'), true);
    assert.equal(at('192.168.2.0/23', '192.168.4.1'), false);
    assert.equal(at('192.168.2.0/23', '192.168.1.255'), false);
  });

  it('ignores host bits in the rule address, as Postgres does', () => {
    assert.equal(at('10.1.2.3/8', '10.9.9.9'), true);
  });

  it('address with a separate mask column', () => {
    const r = rule('host all all 127.0.0.1 255.255.255.255 md5');
    assert.equal(r.method, 'md5');
    assert.equal(r.address?.kind === 'net' && r.address.text, '127.0.0.1 255.255.255.255');
    assert.equal(at('127.0.0.1 255.255.255.255', '127.0.0.1'), true);
    assert.equal(at('127.0.0.1 255.255.255.255', '127.0.0.2'), false);
    assert.equal(at('10.0.0.0 255.0.0.0', '10.3.4.5'), true);
  });

  it('applies a non-contiguous mask bit by bit, as Postgres does', () => {
    assert.equal(at('10.0.0.7 255.0.0.255', '10.200.100.7'), true);
    assert.equal(at('10.0.0.7 255.0.0.255', '10.200.100.8'), false);
  });

  it('IPv6 CIDR: ::1/128, fe80::/10, ::/0, and a /33', () => {
    assert.equal(at('::1/128', '::1'), true);
    assert.equal(at('::1/128', '::2'), false);
    assert.equal(at('fe80::/10', 'fe80::1'), true);
    assert.equal(at('fe80::/10', 'febf:ffff::1'), true);
    assert.equal(at('fe80::/10', 'fec0::1'), false);
    assert.equal(at('::/0', '2001:db8::1'), true);
    assert.equal(at('2001:db8:8000::/33', '2001:db8:ffff::1'), true);
    assert.equal(at('2001:db8:8000::/33', '2001:db8:7fff::1'), false);
  });

  it('IPv6 written in full or with an embedded IPv4 tail compares by value', () => {
    assert.equal(at('2001:0db8:0000:0000:0000:0000:0000:0001/128', '2001:db8::1'), true);
    assert.equal(at('64:ff9b::192.0.2.1/128', '64:ff9b::c000:201'), true);
  });

  it('an IPv4-mapped client matches IPv4 rules, and not IPv6 ones (as a plain IPv4 client in Postgres)', () => {
    assert.equal(at('127.0.0.1/32', '::ffff:127.0.0.1'), true);
    assert.equal(at('10.0.0.0/8', '::ffff:10.20.30.40'), true);
    assert.equal(at('10.0.0.0/8', '::ffff:11.20.30.40'), false);
    assert.equal(at('::/0', '::ffff:127.0.0.1'), false);
    assert.equal(at('::ffff:0:0/96', '::ffff:127.0.0.1'), false);
  });

  it('families never cross: an IPv6 client does not match 0.0.0.0/0, an IPv4 client does not match ::/0', () => {
    assert.equal(at('0.0.0.0/0', '::1'), false);
    assert.equal(at('::/0', '127.0.0.1'), false);
  });

  it('a zone on the client address is ignored', () => {
    assert.equal(at('fe80::/10', 'fe80::1%eth0'), true);
  });

  it('all matches any address, even one that does not parse; IP rules do not', () => {
    assert.equal(at('all', 'not-an-ip'), true);
    assert.equal(at('0.0.0.0/0', 'not-an-ip'), false);
  });

  it('rejects bad CIDR masks', () => {
    assert.equal(error('host all all 10.0.0.0/33 trust').message, 'invalid CIDR mask in address "10.0.0.0/33"');
    assert.equal(error('host all all ::1/129 trust').message, 'invalid CIDR mask in address "::1/129"');
    assert.equal(error('host all all 10.0.0.0/x trust').message, 'invalid CIDR mask in address "10.0.0.0/x"');
    assert.equal(error('host all all 10.0.0.0/ trust').message, 'invalid CIDR mask in address "10.0.0.0/"');
    assert.equal(error('host all all 10.0.0.0/-1 trust').message, 'invalid CIDR mask in address "10.0.0.0/-1"');
  });

  it('rejects malformed IP addresses', () => {
    const e = error('host all all 10.0.0.300/8 trust');
    assert.equal(e.message, 'invalid IP address "10.0.0.300"');
    assert.equal(e.column, 14);
    assert.equal(error('host all all 1:2:3 trust').message, 'invalid IP address "1:2:3"');
  });

  it('refuses host names, saying Postern does not support them', () => {
    const e = error('host all all db.example.com trust');
    assert.equal(e.message, 'host name "db.example.com" in address field is not supported by Postern');
    assert.match(e.hint ?? '', /10\.0\.0\.0\/8/);
    assert.match(error('host all all .example.com trust').message, /not supported by Postern/);
    // A quoted "all" is not the keyword: it is a host name.
    assert.equal(error('host all all "all" trust').message, 'host name "all" in address field is not supported by Postern');
  });

  it("refuses a host name with a CIDR mask with Postgres's wording", () => {
    assert.equal(
      error('host all all example.com/24 trust').message,
      'specifying both host name and CIDR mask is invalid: "example.com/24"',
    );
  });

  it('refuses samehost and samenet', () => {
    assert.equal(error('host all all samehost trust').message, '"samehost" is not supported by Postern');
    assert.equal(error('host all all samenet trust').message, '"samenet" is not supported by Postern');
  });

  it('reads the method as a mask when the mask is missing, as Postgres does', () => {
    const e = error('host all all 127.0.0.1 trust');
    assert.equal(e.message, 'invalid IP mask "trust"');
    assert.equal(e.column, 24);
  });

  it('reports a missing netmask, a mask of the other family and a list of masks', () => {
    assert.equal(error('host all all 127.0.0.1').message, 'end-of-line before netmask specification');
    assert.equal(error('host all all 127.0.0.1 ffff:: trust').message, 'IP address and mask do not match');
    assert.equal(error('host all all 127.0.0.1 255.0.0.0,255.0.0.0 trust').message, 'multiple values specified for netmask');
  });

  it('reports a missing or listed address', () => {
    assert.equal(error('host all all').message, 'end-of-line before IP address specification');
    const e = error('host all all 10.0.0.0/8,10.1.0.0/16 trust');
    assert.equal(e.message, 'multiple values specified for host address');
    assert.equal(e.column, 25);
  });
});

// ---------------------------------------------------------------- methods and options

describe('hba methods', () => {
  it('parses every method Postern implements', () => {
    for (const m of ['trust', 'reject', 'md5', 'password', 'scram-sha-256', 'passthrough']) {
      assert.equal(rule(`host all all all ${m}`).method, m);
    }
    assert.equal(rule('hostssl all all all scram-sha-256-plus').method, 'scram-sha-256-plus');
    assert.equal(rule('hostssl all all all cert').method, 'cert');
  });

  it('refuses Postgres methods Postern does not implement, by name', () => {
    for (const m of ['gss', 'sspi', 'ident', 'peer', 'ldap', 'radius', 'pam', 'bsd']) {
      assert.equal(error(`host all all all ${m}`).message, `authentication method "${m}" is not supported by Postern`, m);
    }
  });

  it('hints that local lines never match when their method is unsupported', () => {
    const e = error('local all all peer');
    assert.equal(e.message, 'authentication method "peer" is not supported by Postern');
    assert.match(e.hint ?? '', /Unix-socket/);
  });

  it('reports an unknown method with its column', () => {
    const e = error('host all all all foo');
    assert.equal(e.message, 'invalid authentication method "foo"');
    assert.equal(e.column, 18);
    assert.equal(error('host all all all Trust').message, 'invalid authentication method "Trust"');
  });

  it('cert and scram-sha-256-plus need hostssl', () => {
    assert.equal(error('host all all all cert').message, 'cert authentication is only supported on hostssl connections');
    assert.equal(error('hostnossl all all all cert').message, 'cert authentication is only supported on hostssl connections');
    assert.equal(
      error('host all all all scram-sha-256-plus').message,
      'scram-sha-256-plus authentication is only supported on hostssl connections',
    );
  });

  it('reports a missing method and a list of methods', () => {
    assert.equal(error('host all all all').message, 'end-of-line before authentication method');
    assert.equal(error('local all all').message, 'end-of-line before authentication method');
    assert.equal(error('host all all all md5,trust').message, 'multiple values specified for authentication type');
  });
});

describe('hba options', () => {
  it('clientcert on hostssl rows', () => {
    assert.deepEqual(rule('hostssl all all all scram-sha-256 clientcert=verify-full').options, { clientcert: 'verify-full' });
    assert.deepEqual(rule('hostssl all all all md5 clientcert=verify-ca').options, { clientcert: 'verify-ca' });
    assert.deepEqual(rule('host all all all md5').options, {});
  });

  it('clientcert is refused on non-hostssl rows', () => {
    for (const t of ['host', 'hostnossl']) {
      const e = error(`${t} all all all md5 clientcert=verify-ca`);
      assert.equal(e.message, 'clientcert can only be configured for "hostssl" rows');
      assert.equal(e.column, t.length + 18);
    }
  });

  it('clientcert values are checked', () => {
    assert.equal(error('hostssl all all all md5 clientcert=1').message, 'invalid value for clientcert: "1"');
    assert.equal(error('hostssl all all all md5 clientcert=no-verify').message, 'invalid value for clientcert: "no-verify"');
  });

  it('cert implies verify-full and refuses verify-ca', () => {
    assert.deepEqual(rule('hostssl all all all cert').options, { clientcert: 'verify-full' });
    assert.equal(
      error('hostssl all all all cert clientcert=verify-ca').message,
      'clientcert only accepts "verify-full" when using "cert" authentication',
    );
  });

  it('map is allowed with cert only, and must name a map', () => {
    assert.deepEqual(rule('hostssl all all all cert map=certmap').options, { clientcert: 'verify-full', map: 'certmap' });
    assert.equal(
      error('hostssl all all all scram-sha-256 map=certmap').message,
      'authentication option "map" is only valid for authentication method cert',
    );
    assert.equal(error('hostssl all all all cert map=').message, 'authentication option "map" requires a map name');
  });

  it('options may be comma-separated or in separate fields', () => {
    assert.deepEqual(rule('hostssl all all all cert map=m,clientcert=verify-full').options, { clientcert: 'verify-full', map: 'm' });
    assert.deepEqual(rule('hostssl all all all cert map=m clientname=CN').options, { clientcert: 'verify-full', map: 'm' });
  });

  it('clientname: CN accepted, DN refused, anything else invalid', () => {
    assert.equal(error('hostssl all all all cert clientname=DN').message, 'clientname=DN is not supported by Postern');
    assert.equal(error('hostssl all all all cert clientname=cn').message, 'invalid value for clientname: "cn"');
    assert.equal(error('host all all all md5 clientname=CN').message, 'clientname can only be configured for "hostssl" rows');
  });

  it('unknown options and bare words are refused', () => {
    assert.equal(error('host all all all md5 ldapserver=x').message, 'unrecognized authentication option name: "ldapserver"');
    const e = error('host all all all md5 verbose');
    assert.equal(e.message, 'authentication option not in name=value format: verbose');
    assert.equal(e.column, 22);
  });
});

// ---------------------------------------------------------------- file-level behaviour

describe('hba file', () => {
  it('reports every bad line with its number and keeps parsing the rest', () => {
    const r = parseHba(
      ['host all all all trust', 'host all all all foo', '', 'hostssl all all all cert', 'bogus', 'host all all'].join('\n'),
      FILE,
    );
    assert.deepEqual(
      r.errors.map((e) => [e.line, e.message]),
      [
        [2, 'invalid authentication method "foo"'],
        [5, 'invalid connection type "bogus"'],
        [6, 'end-of-line before IP address specification'],
      ],
    );
    assert.deepEqual(
      r.rules.map((x) => x.line),
      [1, 4],
    );
  });

  it('reports continued lines at their first physical line', () => {
    const e = error('host all all all trust\nhost all \\\nall \\\nall foo');
    assert.equal(e.line, 2);
    assert.equal(e.text, 'host all all all foo');
  });

  it('formats an error for logs', () => {
    assert.equal(
      formatAuthFileError(error('host all +g all trust')),
      'pg_hba.conf:1:10: group membership ("+g") is not supported by Postern (Postern has no role membership data; list the users or use a regular expression.)',
    );
  });

  it('an empty file has no rules and no errors', () => {
    assert.deepEqual(parseHba('', FILE), { rules: [], errors: [] });
    assert.deepEqual(parseHba('# only comments\n\n', FILE), { rules: [], errors: [] });
  });

  it('never throws, whatever the input', () => {
    const alphabet = fc.constantFrom(
      ...' \t\n\r\\",#/@+=.:abl0123456789'.split(''),
      'host',
      'hostssl',
      'all',
      'trust',
      'cert',
      '10.0.0.0/8',
      '::1',
    );
    fc.assert(
      fc.property(fc.array(alphabet, { maxLength: 60 }), (parts) => {
        const r = parseHba(parts.join(''), FILE);
        for (const e of r.errors) {
          assert.ok(e.line >= 1 && e.column >= 1);
          assert.equal(typeof e.message, 'string');
        }
        matchHba(r.rules, input());
      }),
      { numRuns: 2000 },
    );
  });
});

// ---------------------------------------------------------------- matching order

describe('hba matching order', () => {
  it('the first matching line wins, even when a later line is more specific', () => {
    const rs = rules(['host all all 10.0.0.0/8 md5', 'host app alice 10.1.2.3/32 trust'].join('\n'));
    assert.equal(lineFor(rs, { address: '10.1.2.3' }), 1);
    assert.equal(matchHba(rs, input({ address: '10.1.2.3' }))?.method, 'md5');
  });

  it('an early reject is final; non-matching lines are skipped', () => {
    const rs = rules(
      [
        'hostnossl all all all reject',
        'hostssl app all 10.0.0.0/8 scram-sha-256',
        'hostssl all all all cert',
        'host all all all trust',
      ].join('\n'),
    );
    assert.equal(matchHba(rs, input({ ssl: false }))?.method, 'reject');
    assert.equal(lineFor(rs, { ssl: true, database: 'app' }), 2);
    assert.equal(lineFor(rs, { ssl: true, database: 'app', address: '192.0.2.1' }), 3);
    assert.equal(lineFor(rs, { ssl: true, database: 'other' }), 3);
  });

  it('returns null when nothing matches', () => {
    const rs = rules('hostssl app alice 10.0.0.0/8 md5');
    assert.equal(lineFor(rs, { ssl: false }), null);
    assert.equal(lineFor(rs, { ssl: true, user: 'bob' }), null);
    assert.equal(lineFor(rs, { ssl: true, database: 'x' }), null);
    assert.equal(lineFor(rs, { ssl: true, address: '11.0.0.1' }), null);
    assert.equal(lineFor(rs, { ssl: true }), 1);
  });

  it('the matched rule carries what the caller needs', () => {
    const rs = rules('# x\nhostssl all all all cert map=m');
    const r = matchHba(rs, input({ ssl: true }))!;
    assert.equal(r.line, 2);
    assert.equal(r.connType, 'hostssl');
    assert.equal(r.fileName, FILE);
    assert.equal(r.text, 'hostssl all all all cert map=m');
    assert.deepEqual(r.options, { clientcert: 'verify-full', map: 'm' });
  });

  it('agrees with integer arithmetic for random IPv4 CIDR rules', () => {
    const toStr = (n: number) => [24, 16, 8, 0].map((s) => (n >>> s) & 255).join('.');
    fc.assert(
      fc.property(fc.nat(0xffffffff), fc.nat(0xffffffff), fc.integer({ min: 0, max: 32 }), (net, client, bits) => {
        const rs = rules(`host all all ${toStr(net)}/${bits} trust`);
        const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
        const expected = (net & mask) >>> 0 === (client & mask) >>> 0;
        assert.equal(matchHba(rs, input({ address: toStr(client) })) !== null, expected);
        assert.equal(matchHba(rs, input({ address: `::ffff:${toStr(client)}` })) !== null, expected);
      }),
      { numRuns: 500 },
    );
  });
});

// ---------------------------------------------------------------- messages

describe('hba messages', () => {
  it('no-match wording, plaintext and SSL (Postgres 14+)', () => {
    assert.equal(
      noMatchMessage(input({ address: '192.0.2.7', user: 'bob', database: 'sales' })),
      'no pg_hba.conf entry for host "192.0.2.7", user "bob", database "sales", no encryption',
    );
    assert.equal(
      noMatchMessage(input({ ssl: true, address: '2001:db8::5', user: 'bob', database: 'sales' })),
      'no pg_hba.conf entry for host "2001:db8::5", user "bob", database "sales", SSL encryption',
    );
  });

  it('no-match wording for replication connections', () => {
    assert.equal(
      noMatchMessage(input({ replication: true, ssl: true, address: '10.0.0.9', user: 'repl' })),
      'no pg_hba.conf entry for replication connection from host "10.0.0.9", user "repl", SSL encryption',
    );
  });

  it('shows an IPv4-mapped client as plain IPv4, like Postgres would', () => {
    assert.equal(
      noMatchMessage(input({ address: '::ffff:127.0.0.1', user: 'u', database: 'd' })),
      'no pg_hba.conf entry for host "127.0.0.1", user "u", database "d", no encryption',
    );
  });

  it('reject wording', () => {
    assert.equal(
      rejectMessage(input({ address: '10.0.0.1', user: 'u', database: 'd', ssl: true })),
      'pg_hba.conf rejects connection for host "10.0.0.1", user "u", database "d", SSL encryption',
    );
    assert.equal(
      rejectMessage(input({ address: '10.0.0.1', user: 'u', replication: true })),
      'pg_hba.conf rejects replication connection for host "10.0.0.1", user "u", no encryption',
    );
  });

  it('normalizeClientAddress unmaps IPv4-mapped addresses only', () => {
    assert.deepEqual(normalizeClientAddress('::ffff:10.0.0.1'), { bytes: Uint8Array.from([10, 0, 0, 1]), display: '10.0.0.1' });
    assert.equal(normalizeClientAddress('::ffff:a00:1')?.display, '10.0.0.1');
    assert.equal(normalizeClientAddress('::1')?.bytes.length, 16);
    assert.equal(normalizeClientAddress('::fffe:10.0.0.1')?.bytes.length, 16);
    assert.equal(normalizeClientAddress('nope'), null);
  });
});
