// The users file: PgBouncer userlist format, secrets classified, errors that
// name the line but never print the secret.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { classifySecret, parseUsersFile } from '../../src/auth/secrets.ts';

const V =
  'SCRAM-SHA-256$4096:CDYpKmcz5g4Mqjct0FoKFg==$1lJfBea3M6laZY3ODO23p4SDIrzfNq50SX9QnQTtDzc=:CCZXIx4w5dbspYuBky2VuVTHYP6XSVreKf6LUuflz+M=';

test('verifiers, md5 hashes, passwords, comments and quoting', () => {
  const text = [
    '; comment',
    '# another',
    `"app" "${V}"`,
    '"legacy" "md5adbd8a16ce07f4c5385f43ff39bc54af"   ; trailing comment',
    '"odd ""name""" "plain-pw"',
    '',
  ].join('\n');
  const r = parseUsersFile(text, 'users.txt');
  assert.deepEqual(r.errors, []);
  assert.equal(r.users.size, 3);
  assert.equal(r.users.get('app')?.kind, 'scram');
  assert.deepEqual(r.users.get('legacy'), { kind: 'md5', hash: 'md5adbd8a16ce07f4c5385f43ff39bc54af' });
  assert.deepEqual(r.users.get('odd "name"'), { kind: 'password', password: 'plain-pw' });
});

test('bad lines are reported by line number without their secret', () => {
  const r = parseUsersFile('"ok" "pw"\napp SCRAM-SHA-256$broken-secret\n"x" "SCRAM-SHA-256$1:zz$bad:bad"\n"unterminated\n', 'u.txt');
  assert.equal(r.users.size, 1);
  assert.equal(r.errors.length, 3);
  assert.match(r.errors[0] ?? '', /^u\.txt:2: /);
  assert.match(r.errors[1] ?? '', /^u\.txt:3: unrecognized secret for user "x"/);
  assert.match(r.errors[2] ?? '', /^u\.txt:4: /);
  for (const e of r.errors) assert.ok(!e.includes('broken-secret') && !e.includes('$bad'), e);
});

test('classifySecret', () => {
  assert.equal(classifySecret(V)?.kind, 'scram');
  assert.equal(classifySecret('md5ADBD8A16CE07F4C5385F43FF39BC54AF')?.kind, 'password', 'upper-case hex is not an md5 hash');
  assert.equal(classifySecret(''), null);
  assert.equal(classifySecret('SCRAM-SHA-256$garbage'), null);
});
