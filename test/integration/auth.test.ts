// Authentication at the gateway, method by method, through psql against a
// real PostgreSQL: SCRAM-SHA-256 with channel binding (SCRAM-SHA-256-PLUS),
// the scram-sha-256-plus rule, cert with an ident map, MD5 users (server login
// with the stored hash), cleartext over TLS and its refusal over plaintext,
// trust, reject, passthrough lines, hba order and the 28000 no-match answer,
// identical 28P01 for a wrong password and an unknown user, SCRAM passthrough
// with no server password in the config, user mapping, counters, log secrecy.

import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type CertSet, generateCerts, issueCert } from '../../src/dev/certs.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { psql, type RunningPostern, startPostern } from '../helpers/postern.ts';

const PW = { app: 'app-pw-9Qx', md5user: 'md5-pw-7Kd', rw: 'rw-pw-2Lm', alice: 'alice-pw-5Tz', clear: 'clear-pw-3Jw' };
let dir: string;
let certs: CertSet;
let cluster: PgCluster;
let px: RunningPostern;
let clientCert: { cert: string; key: string };

function conn(user: string, extra: string): string {
  return `host=localhost port=${px.port} dbname=appdb user=${user} sslrootcert=${certs.ca.cert} ${extra}`;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-auth-'));
  certs = await generateCerts(dir);
  clientCert = await issueCert(certs.ca, join(dir, 'laptop'), { cn: 'laptop-17', usage: 'client' });
  cluster = await startPostgres({
    tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
    users: [
      { name: 'app', password: PW.app },
      { name: 'app_rw', password: PW.rw },
      { name: 'clear', password: PW.clear },
    ],
    databases: [{ name: 'appdb', owner: 'app' }],
    hba: ['host all md5user 127.0.0.1/32 md5', 'hostssl all all 127.0.0.1/32 scram-sha-256', 'host all all 127.0.0.1/32 scram-sha-256'],
  });
  // An MD5-stored role, as older installations have.
  await cluster.psql(`set password_encryption = 'md5'; create role md5user login password '${PW.md5user}'`);
  const scramOf = (u: string) => cluster.psql(`select rolpassword from pg_authid where rolname = '${u}'`);
  const md5Hash = await scramOf('md5user');
  assert.match(md5Hash, /^md5[0-9a-f]{32}$/);
  // alice exists only at Postern; she reaches the server as app_rw (user mapping).
  const { makeVerifier, formatVerifier } = await import('../../src/auth/scram.ts');
  const aliceVerifier = formatVerifier(await makeVerifier(PW.alice));
  writeFileSync(
    join(dir, 'users.txt'),
    [
      `"app" "${await scramOf('app')}"`,
      `"clear" "${await scramOf('clear')}"`,
      `"md5user" "${md5Hash}"`,
      `"alice" "${aliceVerifier}"`,
      `"plus" "${await scramOf('app')}"`,
      '',
    ].join('\n'),
  );
  writeFileSync(join(dir, 'ident.conf'), 'laptops  laptop-17  app\nlaptops  /^laptop-(.*)$  certuser\n');
  writeFileSync(
    join(dir, 'hba.conf'),
    [
      '# first match wins',
      'host     all     blocked        127.0.0.1/32  reject',
      'hostssl  all     app            127.0.0.1/32  scram-sha-256',
      'host     all     app            127.0.0.1/32  scram-sha-256',
      'hostssl  all     plus           127.0.0.1/32  scram-sha-256-plus',
      'hostssl  all     certuser       127.0.0.1/32  cert map=laptops',
      'hostssl  all     md5user        127.0.0.1/32  md5',
      'hostssl  all     clear          127.0.0.1/32  password',
      'host     all     clear          127.0.0.1/32  password',
      'hostssl  all     alice          127.0.0.1/32  scram-sha-256',
      'host     all     relayed        127.0.0.1/32  passthrough',
      'host     all     ghost          127.0.0.1/32  scram-sha-256',
      'host     all     trusted        127.0.0.1/32  trust',
      'host     all     blocked,other  127.0.0.1/32  trust',
      '',
    ].join('\n'),
  );
  px = await startPostern({
    tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
    auth: { hba_file: join(dir, 'hba.conf'), users_file: join(dir, 'users.txt'), ident_file: join(dir, 'ident.conf') },
    databases: {
      appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'verify-full', ca: certs.ca.cert, server_name: 'localhost' } },
    },
    users: {
      alice: { server_user: 'app_rw', server_password: PW.rw },
      certuser: { server_user: 'app', server_password: PW.app },
      plus: { server_user: 'app', server_password: PW.app },
      trusted: { server_user: 'app', server_password: PW.app },
    },
  });
});

after(async () => {
  await px?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const WHO = "select current_user || '|' || coalesce((select ssl::text from pg_stat_ssl where pid = pg_backend_pid()), '?')";

describe('SCRAM', () => {
  test('channel_binding=require succeeds over TLS (SCRAM-SHA-256-PLUS), and the server login needs no stored password', async () => {
    const r = await psql(conn('app', 'sslmode=verify-full channel_binding=require'), WHO, { password: PW.app });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'app|true');
    // Postern logged into the server as app with keys recovered from the client's proof: the config holds no such password.
    assert.equal(px.config.databases.appdb?.server_password, undefined);
    assert.equal(px.config.users.app, undefined);
  });

  test('plaintext client: SCRAM without channel binding', async () => {
    const r = await psql(conn('app', 'sslmode=disable'), WHO, { password: PW.app });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'app|true', 'the server link is still TLS');
  });

  test('a wrong password and an unknown user get the identical 28P01 answer', async () => {
    const wrong = await psql(conn('app', 'sslmode=require'), 'select 1', { password: 'not-it' });
    const unknown = await psql(conn('ghost', 'sslmode=disable'), 'select 1', { password: 'not-it' });
    assert.notEqual(wrong.code, 0);
    assert.notEqual(unknown.code, 0);
    assert.match(wrong.stderr, /FATAL: {2}password authentication failed for user "app"/);
    assert.match(unknown.stderr, /FATAL: {2}password authentication failed for user "ghost"/);
    assert.equal(
      wrong.stderr.replace(/"app"/, '"X"').replace(/port \d+/, ''),
      unknown.stderr.replace(/"ghost"/, '"X"').replace(/port \d+/, ''),
    );
  });

  test('a scram-sha-256-plus rule refuses a client that does not bind to the channel', async () => {
    const ok = await psql(conn('plus', 'sslmode=verify-full channel_binding=require'), 'select current_user', { password: PW.app });
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout.trim(), 'app');
    const refused = await psql(conn('plus', 'sslmode=verify-full channel_binding=disable'), 'select 1', { password: PW.app });
    assert.notEqual(refused.code, 0);
    // Only SCRAM-SHA-256-PLUS is offered, so a client that will not bind has nothing to choose.
    assert.match(refused.stderr, /none of the server's SASL authentication mechanisms are supported/);
  });
});

describe('other methods', () => {
  test('cert with an ident map: the certificate CN is mapped to the database user', async () => {
    const r = await psql(
      conn('certuser', `sslmode=verify-full sslcert=${clientCert.cert} sslkey=${clientCert.key}`),
      'select current_user',
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'app', 'certuser is mapped to the server role app');
    const noCert = await psql(conn('certuser', 'sslmode=verify-full'), 'select 1');
    assert.notEqual(noCert.code, 0);
    assert.match(noCert.stderr, /connection requires a valid client certificate/);
  });

  test('MD5 user: MD5 to Postern, and Postern answers the server MD5 with the stored hash', async () => {
    const r = await psql(conn('md5user', 'sslmode=require'), 'select current_user', { password: PW.md5user });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'md5user');
    const bad = await psql(conn('md5user', 'sslmode=require'), 'select 1', { password: 'wrong' });
    assert.match(bad.stderr, /password authentication failed for user "md5user"/);
  });

  test('cleartext password: accepted over TLS, refused over plaintext', async () => {
    const tlsOk = await psql(conn('clear', 'sslmode=require'), 'select current_user', { password: PW.clear });
    assert.equal(tlsOk.code, 0, tlsOk.stderr);
    assert.equal(tlsOk.stdout.trim(), 'clear');
    const plain = await psql(conn('clear', 'sslmode=disable'), 'select 1', { password: PW.clear });
    assert.notEqual(plain.code, 0);
    assert.match(plain.stderr, /cleartext password authentication over an unencrypted connection is refused/);
  });

  test('user mapping: alice logs in at Postern and reaches the server as app_rw', async () => {
    const r = await psql(conn('alice', 'sslmode=verify-full channel_binding=require'), 'select current_user, session_user', {
      password: PW.alice,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'app_rw|app_rw');
  });

  test('trust, reject, passthrough lines and hba order', async () => {
    const trusted = await psql(conn('trusted', 'sslmode=disable'), 'select current_user');
    assert.equal(trusted.code, 0, trusted.stderr);
    assert.equal(trusted.stdout.trim(), 'app');
    // `blocked` is rejected by line 2 even though a later line would trust it.
    const blocked = await psql(conn('blocked', 'sslmode=disable'), 'select 1');
    assert.match(
      blocked.stderr,
      /FATAL: {2}pg_hba.conf rejects connection for host "127.0.0.1", user "blocked", database "appdb", no encryption/,
    );
    // No line for `nobody`: Postgres's 28000 wording.
    const nobody = await psql(conn('nobody', 'sslmode=require'), 'select 1');
    assert.match(nobody.stderr, /FATAL: {2}no pg_hba.conf entry for host "127.0.0.1", user "nobody", database "appdb", SSL encryption/);
    // passthrough: the server decides (relayed exchange); `relayed` does not exist there.
    const relayed = await psql(conn('relayed', 'sslmode=disable'), 'select 1', { password: 'x' });
    assert.match(relayed.stderr, /password authentication failed for user "relayed"/);
  });
});

test('counters by method and outcome; no password in any log line', () => {
  const logins = px.postern.ctx.stats.logins;
  assert.ok((logins.get('scram-sha-256/ok') ?? 0) >= 2, JSON.stringify([...logins]));
  assert.ok((logins.get('scram-sha-256/fail') ?? 0) >= 2);
  assert.ok((logins.get('cert/ok') ?? 0) >= 1);
  assert.ok((logins.get('md5/ok') ?? 0) >= 1);
  assert.ok((logins.get('reject/fail') ?? 0) >= 1);
  const failures = px.postern.ctx.stats.loginFailures;
  assert.ok((failures.get('bad_password') ?? 0) >= 2);
  assert.ok((failures.get('no_hba_match') ?? 0) >= 1);
  const all = px.logs.join('\n');
  for (const pw of Object.values(PW)) assert.ok(!all.includes(pw), `a password leaked into the log: ${pw.slice(0, 3)}…`);
});
