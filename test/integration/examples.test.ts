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
