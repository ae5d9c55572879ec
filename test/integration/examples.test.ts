// The runnable examples keep running: examples/auth/run.mjs drives the real
// CLI with examples/auth/postern.yaml against a throwaway PostgreSQL and logs
// in once per method; every expected outcome must appear.

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { run } from '../helpers/postern.ts';

test('examples/auth/run.mjs: every method behaves as documented', async () => {
  const r = await run(process.execPath, ['examples/auth/run.mjs'], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stderr);
  const out = r.stdout;
  assert.match(out, /postern check --config postern.yaml\npostern: .*: OK/);
  const sections = out.split('\n# ').slice(1);
  const result = (title: string) =>
    sections
      .find((s) => s.startsWith(title))
      ?.trim()
      .split('\n')
      .pop() ?? '';
  assert.equal(result('scram-sha-256, TLS with channel binding'), 'logged in as app');
  assert.equal(result('scram-sha-256 over plaintext'), 'logged in as app');
  assert.equal(result('scram-sha-256-plus rule'), 'logged in as alice');
  assert.equal(result('cert with an ident map'), 'logged in as app_ro');
  assert.equal(result('passthrough'), 'logged in as legacy');
  assert.match(result('wrong password'), /FATAL: {2}password authentication failed for user "app"/);
  assert.match(result('reject line'), /FATAL: {2}pg_hba.conf rejects connection for host "127.0.0.1", user "mallory"/);
});

test('examples/routing/run.mjs: reads, writes, blocks, SIGHUP and a failover land where the docs say', async () => {
  const r = await run(process.execPath, ['examples/routing/run.mjs'], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stderr);
  const answer = (title: string): string =>
    `\n${r.stdout}`
      .split('\n# ')
      .find((s) => s.startsWith(title))
      ?.trim()
      .split('\n')
      .pop() ?? '';
  assert.match(answer('a read on app goes to a standby'), /^standby [12]$/);
  const two = new Set([answer('a read on app goes to a standby'), answer('another read, the other standby')]);
  assert.equal(two.size, 2, 'the two reads used both standbys');
  assert.equal(answer('a write on app goes to the primary'), 'primary, INSERT 0 1');
  assert.equal(answer('a BEGIN block on app goes to the primary'), 'BEGIN, primary, COMMIT');
  assert.match(answer('a READ ONLY block on app goes to a standby'), /^BEGIN, standby [12], COMMIT$/);
  assert.equal(answer('app_rw: the primary'), 'primary');
  assert.match(answer('app_ro: a standby'), /^standby [12]$/);
  assert.equal(answer('after SIGHUP, the added database reports'), 'appdb');
  assert.match(r.stdout, /writes through app_rw land on: standby 1 \(/);
});

test('examples/tenants/run.mjs: each name reaches its tenant, passthrough verifies the server, a reloaded certificate is presented', async () => {
  const r = await run(process.execPath, ['examples/tenants/run.mjs'], { timeoutMs: 120_000 });
  assert.equal(r.code, 0, r.stderr);
  const section = (title: string): string =>
    `\n${r.stdout}`
      .split('\n# ')
      .find((s) => s.startsWith(title))
      ?.trim() ?? '';
  const answer = (title: string): string => section(title).split('\n').pop() ?? '';
  assert.equal(answer('acme.example.test: tenant acme'), 'cluster A, TLS at the server: false');
  assert.equal(answer('eu.acme.example.test: the wildcard'), 'cluster A, TLS at the server: false');
  assert.equal(answer('globex.example.test: the same database name'), 'cluster B, TLS at the server: true');
  assert.equal(answer('vault.example.test: passed through'), 'cluster B, TLS at the server: true');
  assert.match(answer("vault.example.test against Postern's CA"), /certificate verify failed/);
  assert.match(answer('no SNI'), /FATAL: {2}database "app" does not exist/);
  assert.deepEqual(section('the certificate each name gets').split('\n').slice(1), [
    'acme.example.test -> CN=acme.example.test',
    'x.acme.example.test -> CN=acme.example.test',
    'globex.example.test -> CN=globex.example.test',
    'other.example.test -> CN=localhost',
  ]);
  const reload = section('after a new certificate for acme and SIGHUP');
  assert.match(reload, /\(replaced, the new file\)/);
  assert.match(reload, /open session, before the reload\nopen session, after the reload/);
  assert.equal(answer('a new client of acme verifies the new certificate'), 'cluster A, TLS at the server: false');
});
