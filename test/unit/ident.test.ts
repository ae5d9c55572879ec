// pg_ident.conf parsing and lookups, and the certificate name check built on
// them: literal and regex system users, \1 substitution, `all`, quoting,
// errors with line numbers, CN and SAN candidates, certAllows with and
// without a map.

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { PeerCertificate } from 'node:tls';
import fc from 'fast-check';
import { formatAuthFileError } from '../../src/auth/hba.ts';
import {
  certAllows,
  certCandidateNames,
  certCommonName,
  type IdentError,
  type IdentMaps,
  identAllows,
  type PeerCertNames,
  parseIdent,
  parseSubjectAltName,
} from '../../src/auth/ident.ts';

const FILE = 'pg_ident.conf';

function maps(text: string): IdentMaps {
  const r = parseIdent(text, FILE);
  assert.deepEqual(
    r.errors.map((e) => formatAuthFileError(e)),
    [],
  );
  return r.maps;
}

function error(text: string): IdentError {
  const r = parseIdent(text, FILE);
  assert.equal(r.errors.length, 1, `expected one error, got ${JSON.stringify(r.errors.map((e) => e.message))}`);
  return r.errors[0]!;
}

// ---------------------------------------------------------------- parsing

describe('ident parsing', () => {
  it('groups lines by map name in file order, with line numbers', () => {
    const m = maps('# MAPNAME SYSTEM DB\n\nops alice alice_admin\nweb bob bob\nops carol carol # trailing\n');
    assert.deepEqual([...m.keys()], ['ops', 'web']);
    assert.deepEqual(
      m.get('ops')!.map((l) => [l.line, l.systemUser, l.dbUser]),
      [
        [3, { kind: 'name', name: 'alice' }, { kind: 'name', name: 'alice_admin' }],
        [5, { kind: 'name', name: 'carol' }, { kind: 'name', name: 'carol' }],
      ],
    );
    assert.equal(m.get('web')![0]!.text, 'web bob bob');
  });

  it('reads quoted tokens and continuation lines', () => {
    const m = maps('"my map" "CN With Space" \\\n  "db""user"');
    const l = m.get('my map')![0]!;
    assert.equal(l.line, 1);
    assert.deepEqual(l.systemUser, { kind: 'name', name: 'CN With Space' });
    assert.deepEqual(l.dbUser, { kind: 'name', name: 'db"user' });
  });

  it('recognises regexes, all, and a quoted "all" as a literal', () => {
    const m = maps('m /^(.*)@example\\.com$ \\1\nm x all\nm y "all"\nm z /^ro_');
    const [a, b, c, d] = m.get('m')!;
    assert.equal(a!.systemUser.kind, 'regex');
    assert.deepEqual(b!.dbUser, { kind: 'all' });
    assert.deepEqual(c!.dbUser, { kind: 'name', name: 'all' });
    assert.equal(d!.dbUser.kind, 'regex');
  });

  it('reports missing fields at the end of the line', () => {
    const e = error('\nops alice');
    assert.equal(e.message, 'missing entry at end of line');
    assert.equal(e.line, 2);
    assert.equal(e.column, 10);
    assert.equal(e.context, 'line 2 of configuration file "pg_ident.conf"');
    assert.equal(error('ops').message, 'missing entry at end of line');
  });

  it('reports lists in any field', () => {
    assert.equal(error('a,b alice alice').message, 'multiple values in ident field');
    const e = error('m alice,bob alice');
    assert.equal(e.message, 'multiple values in ident field');
    assert.equal(e.column, 9);
    assert.equal(error('m alice alice,bob').message, 'multiple values in ident field');
  });

  it('reports a fourth field (Postern is stricter than Postgres here)', () => {
    const e = error('m alice bob extra');
    assert.equal(e.message, 'extra entry at end of line');
    assert.equal(e.column, 13);
  });

  it('reports invalid regexes, with the pattern and column', () => {
    const e = error('m /(x alice');
    assert.match(e.message, /^invalid regular expression "\(x": /);
    assert.equal(e.column, 3);
    assert.match(error('m alice /[').message, /^invalid regular expression "\[": /);
  });

  it('reports \\1 when the system-user regex has no capture group', () => {
    const e = error('m /^alice$ \\1_admin');
    assert.equal(e.message, 'regular expression "^alice$" has no subexpressions as requested by backreference in "\\1_admin"');
    assert.equal(e.column, 12);
    // A non-capturing group is not a capture.
    assert.equal(error('m /^(?:a)$ \\1').message.startsWith('regular expression'), true);
  });

  it('refuses +group, @file and include lines', () => {
    assert.equal(error('m alice +admins').message, 'group membership ("+admins") is not supported by Postern');
    assert.equal(error('m @users alice').message, 'including names from a file ("@users") is not supported by Postern');
    assert.equal(error('include other.conf').message, '"include" directives are not supported by Postern');
    // Quoted, both are plain names.
    maps('m "@users" "+admins"');
  });

  it('keeps good lines when others are bad', () => {
    const r = parseIdent('m a a\nm b\nm c c', FILE);
    assert.deepEqual(
      r.errors.map((e) => e.line),
      [2],
    );
    assert.deepEqual(
      r.maps.get('m')!.map((l) => l.line),
      [1, 3],
    );
  });

  it('never throws, whatever the input', () => {
    const alphabet = fc.constantFrom(...' \t\n\\",#/@+()?.^$1ab'.split(''), 'all', '\\1', 'm');
    fc.assert(
      fc.property(fc.array(alphabet, { maxLength: 40 }), fc.string({ maxLength: 8 }), (parts, who) => {
        const r = parseIdent(parts.join(''), FILE);
        for (const e of r.errors) assert.ok(e.line >= 1 && e.column >= 1);
        for (const name of r.maps.keys()) identAllows(r.maps, name, who, who);
      }),
      { numRuns: 2000 },
    );
  });

  it('an empty file has no maps', () => {
    const r = parseIdent('\n# nothing\n', FILE);
    assert.equal(r.maps.size, 0);
    assert.deepEqual(r.errors, []);
  });
});

// ---------------------------------------------------------------- lookups

describe('identAllows', () => {
  it('literal lines need both names to match exactly, in the named map only', () => {
    const m = maps('ops alice alice_admin\nweb bob bob');
    assert.equal(identAllows(m, 'ops', 'alice', 'alice_admin'), true);
    assert.equal(identAllows(m, 'ops', 'alice', 'alice'), false);
    assert.equal(identAllows(m, 'ops', 'Alice', 'alice_admin'), false);
    assert.equal(identAllows(m, 'web', 'alice', 'alice_admin'), false);
    assert.equal(identAllows(m, 'nope', 'alice', 'alice_admin'), false);
  });

  it('a system user may map to several database users over several lines', () => {
    const m = maps('ops alice reader\nops alice writer');
    assert.equal(identAllows(m, 'ops', 'alice', 'reader'), true);
    assert.equal(identAllows(m, 'ops', 'alice', 'writer'), true);
    assert.equal(identAllows(m, 'ops', 'alice', 'admin'), false);
  });

  it('replaces \\1 with the first capture', () => {
    const m = maps('m /^(.*)@example\\.com$ \\1\nm /^(.*)@corp\\.example$ \\1_corp');
    assert.equal(identAllows(m, 'm', 'alice@example.com', 'alice'), true);
    assert.equal(identAllows(m, 'm', 'alice@example.com', 'bob'), false);
    assert.equal(identAllows(m, 'm', 'alice@other.com', 'alice'), false);
    assert.equal(identAllows(m, 'm', 'bob@corp.example', 'bob_corp'), true);
    assert.equal(identAllows(m, 'm', 'bob@corp.example', 'bob'), false);
  });

  it('replaces only the first \\1, and treats the result literally', () => {
    const m = maps('m /^(\\w+)$ \\1-\\1\nm /^(.+)$ "\\1"');
    assert.equal(identAllows(m, 'm', 'x', 'x-\\1'), true);
    assert.equal(identAllows(m, 'm', 'x', 'x-x'), false);
    // The capture "all" becomes the literal name "all", not the keyword.
    assert.equal(identAllows(m, 'm', 'all', 'alice'), false);
    assert.equal(identAllows(m, 'm', 'all', 'all'), true);
  });

  it('does not treat $ patterns in the capture specially', () => {
    const m = maps('m /^(.*)$ pre_\\1');
    assert.equal(identAllows(m, 'm', "$&$'", "pre_$&$'"), true);
  });

  it('denies at once when \\1 refers to a capture that did not take part (as Postgres)', () => {
    const m = maps('m /^(a)?b$ \\1x\nm /^.*$ all');
    assert.equal(identAllows(m, 'm', 'ab', 'ax'), true);
    // Group 1 unset for "b": the first line errors, and the permissive second line is not consulted.
    assert.equal(identAllows(m, 'm', 'b', 'anything'), false);
    // A system user the first line does not match falls through to the second.
    assert.equal(identAllows(m, 'm', 'zzz', 'anything'), true);
  });

  it('the system-user regex is unanchored unless anchored', () => {
    const m = maps('m /admin ops');
    assert.equal(identAllows(m, 'm', 'sysadmin1', 'ops'), true);
    assert.equal(identAllows(m, 'm', 'root', 'ops'), false);
  });

  it('\\1 in a literal (non-regex) line is not substituted', () => {
    const m = maps('m alice \\1');
    assert.equal(identAllows(m, 'm', 'alice', '\\1'), true);
    assert.equal(identAllows(m, 'm', 'alice', 'alice'), false);
  });

  it('all and regex database users', () => {
    const m = maps('m root all\nm /^svc- /^ro_\nm x "all"');
    assert.equal(identAllows(m, 'm', 'root', 'anyone'), true);
    assert.equal(identAllows(m, 'm', 'svc-a', 'ro_reports'), true);
    assert.equal(identAllows(m, 'm', 'svc-a', 'rw_reports'), false);
    assert.equal(identAllows(m, 'm', 'x', 'anyone'), false);
    assert.equal(identAllows(m, 'm', 'x', 'all'), true);
  });
});

// ---------------------------------------------------------------- certificates

describe('certificate names', () => {
  it("parses Node's subjectaltname rendering, including JSON-quoted values", () => {
    assert.deepEqual(parseSubjectAltName('DNS:a.example, IP Address:10.0.0.1, email:b@c.example, URI:spiffe://x/y'), [
      ['DNS', 'a.example'],
      ['IP Address', '10.0.0.1'],
      ['email', 'b@c.example'],
      ['URI', 'spiffe://x/y'],
    ]);
    assert.deepEqual(parseSubjectAltName('DNS:"a, b\\"c", email:d@e'), [
      ['DNS', 'a, b"c'],
      ['email', 'd@e'],
    ]);
    assert.deepEqual(parseSubjectAltName(''), []);
  });

  it('candidates: CN first, then DNS and email SANs in order, without duplicates or other SAN types', () => {
    const cert: PeerCertNames = {
      subject: { CN: 'alice' },
      subjectaltname: 'URI:spiffe://x, DNS:alice, email:alice@example.com, IP Address:10.0.0.1, DNS:svc.example',
    };
    assert.deepEqual(certCandidateNames(cert), ['alice', 'alice@example.com', 'svc.example']);
  });

  it('the first of several CNs is the CN; missing, empty or NUL-bearing CNs are not names', () => {
    assert.equal(certCommonName({ subject: { CN: ['first', 'second'] } }), 'first');
    assert.equal(certCommonName({ subject: { CN: '' } }), undefined);
    assert.equal(certCommonName({ subject: { CN: 'ali\0ce' } }), undefined);
    assert.equal(certCommonName({}), undefined);
    assert.deepEqual(certCandidateNames({ subjectaltname: 'DNS:only.example' }), ['only.example']);
  });

  it('without a map, the CN must equal the database user exactly (Postgres behaviour)', () => {
    const none = maps('');
    const cert: PeerCertNames = { subject: { CN: 'alice' }, subjectaltname: 'DNS:bob' };
    assert.equal(certAllows(none, undefined, cert, 'alice'), true);
    assert.equal(certAllows(none, undefined, cert, 'Alice'), false);
    // SANs are never used without a map.
    assert.equal(certAllows(none, undefined, cert, 'bob'), false);
    assert.equal(certAllows(none, '', cert, 'alice'), true);
    assert.equal(certAllows(none, undefined, { subjectaltname: 'DNS:alice' }, 'alice'), false);
  });

  it('with a map, any candidate the map allows is enough, and the CN alone is not', () => {
    const m = maps(['certs alice.admin alice', 'certs /^(.*)@example\\.com$ \\1', 'certs /^(.*)\\.svc\\.example$ svc_\\1'].join('\n'));
    const cert: PeerCertNames = { subject: { CN: 'alice.admin' }, subjectaltname: 'email:bob@example.com, DNS:billing.svc.example' };
    assert.equal(certAllows(m, 'certs', cert, 'alice'), true);
    assert.equal(certAllows(m, 'certs', cert, 'bob'), true);
    assert.equal(certAllows(m, 'certs', cert, 'svc_billing'), true);
    // The CN equals no allowed user by itself once a map is in force.
    assert.equal(certAllows(m, 'certs', cert, 'alice.admin'), false);
    assert.equal(certAllows(m, 'certs', cert, 'carol'), false);
    assert.equal(certAllows(m, 'other', cert, 'alice'), false);
  });

  it('accepts a Node tls.PeerCertificate-shaped object', () => {
    // Node puts many more fields on the object; only subject and subjectaltname are read.
    const peer = {
      subject: { C: 'NL', O: 'Example', CN: 'app' },
      issuer: { CN: 'ca' },
      subjectaltname: 'DNS:app.internal',
      valid_from: 'x',
      valid_to: 'y',
      fingerprint256: 'AA',
    };
    // The cast makes the compiler check that Node's own type is accepted.
    const cert = peer as unknown as PeerCertificate;
    assert.equal(certAllows(maps('m app.internal reporting'), 'm', cert, 'reporting'), true);
    assert.equal(certAllows(maps(''), undefined, cert, 'app'), true);
  });
});
