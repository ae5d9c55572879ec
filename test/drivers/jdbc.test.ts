// pgjdbc (Debian's libpostgresql-jdbc-java) through Postern: Postern
// authenticates the Java client with SCRAM-SHA-256 (secret from the users
// file or from auth_query), over TLS with sslmode=verify-full and over
// plaintext with sslmode=disable, and logs into the server by SCRAM
// passthrough. test/drivers/java/ScramLogin.java runs a query and a prepared
// statement with a parameter past pgjdbc's prepareThreshold. A missing JDK or
// driver jar fails this file: it is not skipped.

import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { formatVerifier, makeVerifier } from '../../src/auth/scram.ts';
import { type CertSet, generateCerts } from '../../src/dev/certs.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { logsWith, type RunningPostern, type RunResult, run, startPostern } from '../helpers/postern.ts';

const JAR = process.env.POSTERN_PGJDBC_JAR ?? '/usr/share/java/postgresql.jar';
const SOURCE = join(process.cwd(), 'test', 'drivers', 'java', 'ScramLogin.java');
const INSTALL_HINT = 'install with `apt-get install -y default-jdk-headless libpostgresql-jdbc-java` (scripts/install-deps.sh does)';
const PW = { lookup: 'jdbc-lookup-pw-T5', file: 'jdbc-file-pw-R8', query: 'jdbc-query-pw-E3' } as const;

let dir: string;
let classes: string;
let certs: CertSet;
let cluster: PgCluster;
let px: RunningPostern;

/** True when `cmd -version` runs (a missing binary rejects in spawn). */
async function runs(cmd: string): Promise<boolean> {
  try {
    return (await run(cmd, ['-version'], { timeoutMs: 30_000 })).code === 0;
  } catch {
    return false;
  }
}

before(async () => {
  const missing: string[] = [];
  if (!(await runs('javac'))) missing.push('javac');
  if (!(await runs('java'))) missing.push('java');
  if (!existsSync(JAR)) missing.push(JAR);
  if (missing.length > 0) throw new Error(`the pgjdbc driver test needs ${missing.join(', ')}: ${INSTALL_HINT}`);
  assert.ok(existsSync(SOURCE), `${SOURCE} not found: run the tests from the repository root`);

  dir = mkdtempSync(join(tmpdir(), 'postern-jdbc-'));
  classes = join(dir, 'classes');
  mkdirSync(classes);
  const [javac, generated] = await Promise.all([
    run('javac', ['-cp', JAR, '-d', classes, SOURCE], { timeoutMs: 60_000 }),
    generateCerts(join(dir, 'certs')),
  ]);
  assert.equal(javac.code, 0, `javac failed:\n${javac.stdout}${javac.stderr}`);
  certs = generated;

  cluster = await startPostgres({
    tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
    users: [
      { name: 'postern_lookup', password: PW.lookup },
      { name: 'jdbc_file', password: 'replaced-by-a-verifier' },
      { name: 'jdbc_query', password: PW.query },
    ],
    databases: [{ name: 'appdb', owner: 'jdbc_query' }],
  });
  await cluster.psql(
    `CREATE SCHEMA postern;
     CREATE FUNCTION postern.user_lookup(i_username text, OUT username text, OUT secret text, OUT valid_until timestamptz)
     RETURNS record AS $$
       SELECT rolname::text, rolpassword, rolvaliduntil FROM pg_catalog.pg_authid WHERE rolname = i_username
     $$ LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog;
     REVOKE ALL ON FUNCTION postern.user_lookup(text) FROM PUBLIC;
     GRANT USAGE ON SCHEMA postern TO postern_lookup;
     GRANT EXECUTE ON FUNCTION postern.user_lookup(text) TO postern_lookup;`,
    { db: 'appdb' },
  );
  // jdbc_file: the same verifier in the users file and on the server, so passthrough works.
  const verifier = formatVerifier(await makeVerifier(PW.file));
  await cluster.psql(`ALTER ROLE jdbc_file PASSWORD '${verifier}'`);
  const users = join(dir, 'users.txt');
  writeFileSync(users, `"jdbc_file" "${verifier}"\n`);
  const hba = join(dir, 'hba.conf');
  writeFileSync(hba, 'hostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n');
  px = await startPostern({
    tls: { cert: certs.server.cert, key: certs.server.key },
    auth: { hba_file: hba, users_file: users, query_user: 'postern_lookup', query_password: PW.lookup },
    databases: {
      appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'verify-full', ca: certs.ca.cert, server_name: 'localhost' } },
    },
  });
});

after(async () => {
  await px?.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

function jdbcUrl(ssl: 'verify-full' | 'disable', rootCert = certs.ca.cert): string {
  const q = ssl === 'disable' ? 'sslmode=disable' : `sslmode=verify-full&sslrootcert=${encodeURIComponent(rootCert)}`;
  return `jdbc:postgresql://127.0.0.1:${px.port}/appdb?${q}`;
}

function scramLogin(url: string, user: string, password: string): Promise<RunResult> {
  // user.home is an empty dir: pgjdbc must not pick up a developer's ~/.postgresql/postgresql.crt.
  return run('java', [`-Duser.home=${dir}`, '-cp', `${classes}:${JAR}`, 'ScramLogin', url, user, password], { timeoutMs: 60_000 });
}

function expected(user: string): string {
  const lines = [`query ${user} 42`];
  for (let i = 1; i <= 6; i++) lines.push(`prepared ${i} ${i * 10 + 2} appdb`);
  lines.push('done');
  return `${lines.join('\n')}\n`;
}

const counts = () => ({
  tls: logsWith(px.logs, 'TLS established').length,
  scramOk: px.postern.ctx.stats.logins.get('scram-sha-256/ok') ?? 0,
});

for (const { user, password, source } of [
  { user: 'jdbc_file', password: PW.file, source: 'users file' },
  { user: 'jdbc_query', password: PW.query, source: 'auth_query' },
]) {
  for (const ssl of ['verify-full', 'disable'] as const) {
    test(`pgjdbc, secret from the ${source}, sslmode=${ssl}: SCRAM at Postern, query and prepared statement`, async () => {
      const before = counts();
      const r = await scramLogin(jdbcUrl(ssl), user, password);
      assert.equal(r.code, 0, `java exited ${r.code}:\n${r.stdout}${r.stderr}`);
      assert.equal(r.stdout, expected(user));
      const now = counts();
      assert.equal(now.scramOk - before.scramOk, 1, 'Postern authenticated the client with SCRAM');
      assert.equal(now.tls - before.tls, ssl === 'disable' ? 0 : 1, 'TLS between pgjdbc and Postern as the sslmode says');
    });
  }
}

test('pgjdbc with a wrong password gets 28P01 from Postern', async () => {
  const r = await scramLogin(jdbcUrl('verify-full'), 'jdbc_query', 'not-the-password');
  assert.equal(r.code, 1, `${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /^error 28P01 .*password authentication failed for user "jdbc_query"/m);
});

test('pgjdbc verify-full against a CA that did not sign Postern’s certificate fails before authentication', async () => {
  const other = await generateCerts(join(dir, 'other-ca'));
  const before = px.postern.ctx.stats.logins.get('scram-sha-256/ok') ?? 0;
  const r = await scramLogin(jdbcUrl('verify-full', other.ca.cert), 'jdbc_query', PW.query);
  assert.equal(r.code, 1, `${r.stdout}${r.stderr}`);
  assert.match(r.stdout, /^error 08006 .*SSL/m);
  assert.equal(px.postern.ctx.stats.logins.get('scram-sha-256/ok') ?? 0, before);
});
