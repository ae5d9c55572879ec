// admin.tls: the admin listener (dashboard, /metrics, health) serves HTTPS
// with the configured certificate, refuses plaintext, and a config giving
// only one of cert/key is refused instead of silently serving plain HTTP.

import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { formatVerifier, makeVerifier } from '../../src/auth/scram.ts';
import { validateConfig } from '../../src/config/load.ts';
import { type CertSet, generateCerts } from '../../src/dev/certs.ts';
import { type RunningPostern, startPostern } from '../helpers/postern.ts';

let dir: string;
let certs: CertSet;
let px: RunningPostern;

function get(path: string, auth?: string): Promise<{ status: number; body: string; authorized: boolean }> {
  return new Promise((resolve, reject) => {
    const req = https.get(
      {
        host: '127.0.0.1',
        port: px.postern.adminPort as number,
        path,
        ca: readFileSync(certs.ca.cert),
        servername: 'localhost',
        headers: auth ? { authorization: auth } : {},
      },
      (res) => {
        const authorized = (res.socket as import('node:tls').TLSSocket).authorized;
        let body = '';
        res.on('data', (d: Buffer) => {
          body += d.toString();
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body, authorized }));
      },
    );
    req.on('error', reject);
  });
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-admintls-'));
  certs = await generateCerts(join(dir, 'certs'));
  writeFileSync(join(dir, 'users.txt'), `"admin" "${formatVerifier(await makeVerifier('admin-pw-tls'))}"\n`);
  px = await startPostern({
    tls: { mode: 'disable' },
    auth: { users_file: join(dir, 'users.txt') },
    admin: { listen: '127.0.0.1:0', users: ['admin'], tls: { cert: certs.server.cert, key: certs.server.key } },
    databases: { appdb: { host: '127.0.0.1', port: 1, tls: { mode: 'disable' } } },
  });
});

after(async () => {
  await px?.close();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('admin.tls: HTTPS with the configured certificate, for health, metrics and the dashboard', async () => {
  const health = await get('/healthz');
  assert.equal(health.status, 200);
  assert.equal(health.body, 'ok\n');
  assert.ok(health.authorized, 'the certificate verifies against the CA');
  assert.equal((await get('/metrics')).status, 200);
  assert.equal((await get('/api/state')).status, 401);
  const basic = `Basic ${Buffer.from('admin:admin-pw-tls').toString('base64')}`;
  assert.equal((await get('/api/state', basic)).status, 200);
});

test('admin.tls: a plaintext request gets no answer from the admin port', async () => {
  await assert.rejects(fetch(`http://127.0.0.1:${px.postern.adminPort}/healthz`));
});

test('admin.tls: cert without key (or key without cert) is a config error', () => {
  for (const tls of [{ cert: certs.server.cert }, { key: certs.server.key }]) {
    const r = validateConfig({ admin: { listen: '127.0.0.1:0', tls }, databases: { a: {} } }, dir);
    assert.equal(r.ok, false);
    assert.ok(!r.ok && r.problems.some((p) => /must be given together/.test(p.message)), JSON.stringify(r));
  }
});
