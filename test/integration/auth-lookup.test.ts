// Where Postern finds the secrets it checks logins against, and how they
// change while it runs: auth_query through a SECURITY DEFINER function (no
// users file, no server password: the server login is SCRAM passthrough),
// rolvaliduntil, password rotation with the lookup cache, users-file rotation
// by reload() and by SIGHUP to the real CLI (and a broken file refused),
// failed-login throttling, `postern passwd`, and the pg / postgres.js drivers
// logging in with SCRAM at Postern. One TLS cluster (scram) for the file.

import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, type TestContext, test } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { formatVerifier, makeVerifier } from '../../src/auth/scram.ts';
import { type CertSet, generateCerts } from '../../src/dev/certs.ts';
import { freePort, type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { logsWith, MAIN, psql, type RunningPostern, run, startCli, startPostern, waitUntil } from '../helpers/postern.ts';

const PW = {
  lookup: 'lookup-pw-Hq4t',
  app: 'app-pw-Zr8w',
  old: 'old-pw-Mv2c',
  rot1: 'rot-pw-one-Kd7',
  rot2: 'rot-pw-two-Lp3',
  rot3: 'rot-pw-three-Qs6',
  file1: 'file-pw-one-Wc5',
  file2: 'file-pw-two-Yb9',
  cli1: 'cli-pw-one-Fj2',
  cli2: 'cli-pw-two-Gn8',
  thr: 'thr-pw-Ux1',
  alice: 'alice-pw-Ov4',
  drv: 'drv-pw-Ia7',
} as const;
const BAD_PASSWORD = (user: string) => `password authentication failed for user "${user}"`;

// The function an operator installs for auth_query (see the report / docs):
// owned by the superuser, callable only by the lookup role.
const LOOKUP_SQL = `
CREATE SCHEMA postern;
CREATE FUNCTION postern.user_lookup(i_username text, OUT username text, OUT secret text, OUT valid_until timestamptz)
RETURNS record AS $$
  SELECT rolname::text, rolpassword, rolvaliduntil FROM pg_catalog.pg_authid WHERE rolname = i_username
$$ LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog;
REVOKE ALL ON FUNCTION postern.user_lookup(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA postern TO postern_lookup;
GRANT EXECUTE ON FUNCTION postern.user_lookup(text) TO postern_lookup;
`;

let dir: string;
let certs: CertSet;
let cluster: PgCluster;
let hbaFile: string;
let ca: Buffer;

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-lookup-'));
  certs = await generateCerts(dir);
  ca = readFileSync(certs.ca.cert);
  cluster = await startPostgres({
    tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
    users: [
      { name: 'postern_lookup', password: PW.lookup },
      { name: 'app', password: PW.app },
      { name: 'old', password: PW.old },
      { name: 'rot', password: PW.rot1 },
      { name: 'filerot', password: 'replaced-by-a-verifier' },
      { name: 'clirot', password: 'replaced-by-a-verifier' },
      { name: 'thr', password: PW.thr },
      { name: 'alice', password: 'replaced-by-a-verifier' },
      { name: 'drv', password: PW.drv },
    ],
    databases: [{ name: 'appdb', owner: 'app' }],
  });
  await cluster.psql(LOOKUP_SQL, { db: 'appdb' });
  hbaFile = join(dir, 'hba.conf');
  writeFileSync(hbaFile, 'hostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n');
});

after(async () => {
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** Postern with TLS to clients and verify-full to the server; closed when the test ends. */
async function postern(t: TestContext, auth: Record<string, unknown>): Promise<RunningPostern> {
  const p = await startPostern({
    tls: { cert: certs.server.cert, key: certs.server.key },
    auth: { hba_file: hbaFile, ...auth },
    databases: {
      appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'verify-full', ca: certs.ca.cert, server_name: 'localhost' } },
    },
  });
  t.after(() => p.close());
  return p;
}

const LOOKUP = { query_user: 'postern_lookup', query_password: PW.lookup };

function conninfo(port: number, user: string): string {
  return `host=localhost hostaddr=127.0.0.1 port=${port} dbname=appdb user=${user} sslmode=verify-full sslrootcert=${certs.ca.cert} channel_binding=require`;
}

function client(port: number, user: string, password: string): pg.Client {
  const c = new pg.Client({ host: '127.0.0.1', port, user, password, database: 'appdb', ssl: { ca }, connectionTimeoutMillis: 20_000 });
  c.on('error', () => {});
  return c;
}

type Login = { ok: true; user: string; ms: number } | { ok: false; code: string; severity: string; message: string; ms: number };

/** One login through Postern with node-postgres over TLS: the session's user, or the error it got. */
async function tryLogin(port: number, user: string, password: string): Promise<Login> {
  const c = client(port, user, password);
  const t0 = performance.now();
  try {
    await c.connect();
    const r = await c.query<{ u: string }>('select current_user as u');
    return { ok: true, user: r.rows[0]?.u ?? '', ms: performance.now() - t0 };
  } catch (e) {
    const err = e as Error & { code?: string; severity?: string };
    return { ok: false, code: err.code ?? '', severity: err.severity ?? '', message: err.message, ms: performance.now() - t0 };
  } finally {
    await c.end().catch(() => {});
  }
}

function assertRefused(r: Login, user: string, what: string): void {
  assert.equal(r.ok, false, `${what}: expected a refusal, got a session`);
  if (r.ok) return;
  assert.deepEqual(
    { code: r.code, severity: r.severity, message: r.message },
    { code: '28P01', severity: 'FATAL', message: BAD_PASSWORD(user) },
    what,
  );
}

function assertLogin(r: Login, user: string, what: string): void {
  assert.deepEqual(r.ok ? { ok: true, user: r.user } : { ok: false, error: `${r.code} ${r.message}` }, { ok: true, user }, what);
}

async function setVerifier(role: string, password: string): Promise<string> {
  const v = formatVerifier(await makeVerifier(password));
  await cluster.psql(`ALTER ROLE ${role} PASSWORD '${v}'`);
  return v;
}

test('auth_query through a SECURITY DEFINER function: SCRAM-PLUS at Postern, passthrough to the server, no password in the config', async (t) => {
  // The lookup role cannot read pg_authid itself, and nobody else may call the function.
  await assert.rejects(
    cluster.psql('select rolpassword from pg_authid', { db: 'appdb', user: 'postern_lookup', password: PW.lookup }),
    /permission denied/,
  );
  await assert.rejects(
    cluster.psql("select * from postern.user_lookup('app')", { db: 'appdb', user: 'app', password: PW.app }),
    /permission denied/,
  );
  const row = await cluster.psql("select username, secret like 'SCRAM-SHA-256$%' from postern.user_lookup('app')", {
    db: 'appdb',
    user: 'postern_lookup',
    password: PW.lookup,
  });
  assert.equal(row, 'app|t');

  const p = await postern(t, LOOKUP);
  assert.equal(p.config.auth.users_file, undefined);
  assert.equal(p.config.databases.appdb?.server_password, undefined);
  assert.ok(!JSON.stringify(p.config).includes(PW.app), 'the config holds no password for app');

  const r = await psql(conninfo(p.port, 'app'), "select current_user || ' ' || ssl from pg_stat_ssl where pid = pg_backend_pid()", {
    password: PW.app,
  });
  assert.equal(r.code, 0, r.stderr);
  // The server saw `app` over TLS: Postern logged in with the keys recovered from psql's proof.
  assert.equal(r.stdout.trim(), 'app true');
  assert.equal(p.postern.ctx.stats.logins.get('scram-sha-256/ok'), 1);
  assert.ok(p.postern.ctx.lookupCache.get('app@appdb')?.secret?.kind === 'scram', 'the looked-up secret is cached');

  const wrong = await tryLogin(p.port, 'app', 'not-the-password');
  const unknown = await tryLogin(p.port, 'nobody', 'whatever');
  assertRefused(wrong, 'app', 'wrong password');
  assertRefused(unknown, 'nobody', 'unknown user');
  // Not even the wording tells the two apart.
  assert.equal(!wrong.ok && wrong.message.replace('"app"', '"?"'), !unknown.ok && unknown.message.replace('"nobody"', '"?"'));
  assert.doesNotMatch(p.logs.join('\n'), new RegExp(`${PW.app}|${PW.lookup}`));
});

test('rolvaliduntil: an expired (or -infinity) password is refused by Postern with 28P01, whatever the DateStyle of the lookup role', async (t) => {
  // The lookup must not depend on how the server formats timestamps.
  await cluster.psql("ALTER ROLE postern_lookup SET DateStyle = 'SQL, DMY'");
  t.after(() => cluster.psql('ALTER ROLE postern_lookup RESET DateStyle'));
  const p = await postern(t, LOOKUP);
  const cases = [
    { until: '2999-01-13', ok: true },
    { until: '2000-01-13', ok: false },
    { until: '-infinity', ok: false },
    { until: 'infinity', ok: true },
  ];
  for (const c of cases) {
    await cluster.psql(`ALTER ROLE old VALID UNTIL '${c.until}'`);
    assert.deepEqual(p.postern.reload(), []); // drops the cached lookup
    const r = await tryLogin(p.port, 'old', PW.old);
    if (c.ok) assertLogin(r, 'old', `valid until ${c.until}`);
    else assertRefused(r, 'old', `valid until ${c.until}`);
  }
  // Refused by Postern itself, not by the server after a passthrough login.
  assert.equal(logsWith(p.logs, 'password authentication failed').filter((l) => l.user === 'old').length, 2);
  assert.equal(logsWith(p.logs, 'server login failed').length, 0);
  assert.equal(p.postern.ctx.stats.loginFailures.get('bad_password'), 2);
});

test('password rotation with auth_query: open sessions live on, the new password works, the old one is refused', async (t) => {
  const p = await postern(t, { ...LOOKUP, cache_ttl: '60s' });
  const open = client(p.port, 'rot', PW.rot1);
  t.after(() => open.end().catch(() => {}));
  await open.connect();
  assert.equal((await open.query('select current_user as u')).rows[0].u, 'rot');

  await cluster.psql(`ALTER ROLE rot PASSWORD '${PW.rot2}'`);
  assert.equal((await open.query('select 1 + 1 as n')).rows[0].n, 2, 'the open session keeps working');
  // The cached verifier (old salt) cannot check a proof made with the new
  // password: that one attempt fails, and the failure drops the cache entry.
  // A SCRAM exchange cannot be restarted, so the very next attempt is the
  // first one that can succeed.
  assertRefused(await tryLogin(p.port, 'rot', PW.rot2), 'rot', 'first attempt against the cached verifier');
  assert.equal(p.postern.ctx.lookupCache.has('rot@appdb'), false, 'the failure dropped the cached lookup');
  assertLogin(await tryLogin(p.port, 'rot', PW.rot2), 'rot', 'new password, next attempt');
  assertRefused(await tryLogin(p.port, 'rot', PW.rot1), 'rot', 'old password');
  assert.equal((await open.query('select 2 + 2 as n')).rows[0].n, 4);

  // Without a cache (cache_ttl 0) the new password works on the first attempt.
  const fresh = await postern(t, { ...LOOKUP, cache_ttl: '0s' });
  assertLogin(await tryLogin(fresh.port, 'rot', PW.rot2), 'rot', 'before the second rotation');
  await cluster.psql(`ALTER ROLE rot PASSWORD '${PW.rot3}'`);
  assertLogin(await tryLogin(fresh.port, 'rot', PW.rot3), 'rot', 'cache_ttl 0: new password at once');
  assertRefused(await tryLogin(fresh.port, 'rot', PW.rot2), 'rot', 'cache_ttl 0: old password');
});

test('users-file rotation by reload(): new password works, old refused, open session untouched; a broken file is refused', async (t) => {
  const users = join(dir, 'users-filerot.txt');
  const v1 = await setVerifier('filerot', PW.file1);
  writeFileSync(users, `"filerot" "${v1}"\n`);
  const p = await postern(t, { users_file: users });
  const open = client(p.port, 'filerot', PW.file1);
  t.after(() => open.end().catch(() => {}));
  await open.connect();

  const v2 = await setVerifier('filerot', PW.file2);
  writeFileSync(users, `# rotated\n"filerot" "${v2}"\n`);
  assertRefused(await tryLogin(p.port, 'filerot', PW.file2), 'filerot', 'new password before the reload');
  assert.deepEqual(p.postern.reload(), []);
  assertLogin(await tryLogin(p.port, 'filerot', PW.file2), 'filerot', 'new password after the reload');
  assertRefused(await tryLogin(p.port, 'filerot', PW.file1), 'filerot', 'old password after the reload');
  assert.equal((await open.query('select current_user as u')).rows[0].u, 'filerot', 'the open session keeps working');

  writeFileSync(users, `"filerot" "${v2}"\n"filerot"\n`);
  const problems = p.postern.reload();
  assert.deepEqual(
    problems.map((x) => x.path),
    ['auth.users_file'],
  );
  assert.match(problems[0]?.message ?? '', /users-filerot\.txt:2: expected "user" "secret"/);
  assert.equal(logsWith(p.logs, 'reload refused: authentication files are invalid').length, 1);
  assertLogin(await tryLogin(p.port, 'filerot', PW.file2), 'filerot', 'previous state kept after a refused reload');
});

function count(text: string, needle: string): number {
  return text.split(needle).length - 1;
}

test('the CLI reloads on SIGHUP: rotated users file picked up; broken users or hba file refused, running state kept', async (t) => {
  assert.ok(existsSync(MAIN), `${MAIN} is missing: it is built by \`npm test\` (pretest) or \`npx tsc -p tsconfig.build.json\``);
  const users = join(dir, 'users-cli.txt');
  const hba = join(dir, 'hba-cli.conf');
  const goodHba = readFileSync(hbaFile, 'utf8');
  writeFileSync(hba, goodHba);
  const v1 = await setVerifier('clirot', PW.cli1);
  writeFileSync(users, `"clirot" "${v1}"\n`);
  const port = await freePort();
  const file = join(dir, 'postern-cli.yaml');
  const q = JSON.stringify;
  writeFileSync(
    file,
    [
      `listen: { host: 127.0.0.1, port: ${port} }`,
      `tls: { cert: ${q(certs.server.cert)}, key: ${q(certs.server.key)} }`,
      `auth: { hba_file: ${q(hba)}, users_file: ${q(users)} }`,
      'databases:',
      `  appdb: { host: 127.0.0.1, port: ${cluster.port}, tls: { mode: verify-full, ca: ${q(certs.ca.cert)}, server_name: localhost } }`,
      'limits: { shutdown_timeout: 1s }',
      'log: { level: info }',
      '',
    ].join('\n'),
  );
  const proc = startCli(['--config', file]);
  t.after(() => {
    proc.child.kill('SIGKILL');
  });
  await waitUntil(() => proc.out().includes('"listening"'), 20_000, 'listening');
  const open = client(port, 'clirot', PW.cli1);
  t.after(() => open.end().catch(() => {}));
  await open.connect();

  const v2 = await setVerifier('clirot', PW.cli2);
  writeFileSync(users, `"clirot" "${v2}"\n`);
  proc.child.kill('SIGHUP');
  // Wait for the reload itself: polling with logins would trip the throttle.
  await waitUntil(() => proc.out().includes('"reloaded"'), 10_000, 'reloaded');
  assertLogin(await tryLogin(port, 'clirot', PW.cli2), 'clirot', 'new password after SIGHUP');
  assertRefused(await tryLogin(port, 'clirot', PW.cli1), 'clirot', 'old password after SIGHUP');
  assert.equal((await open.query('select current_user as u')).rows[0].u, 'clirot', 'the open session keeps working');

  writeFileSync(users, `"clirot" "${v2}"\nnot a users-file line\n`);
  proc.child.kill('SIGHUP');
  await waitUntil(() => count(proc.out(), 'SIGHUP: reload refused') === 1, 10_000, 'users file reload refused');
  assert.match(proc.out(), /users-cli\.txt:2: expected \\"user\\" \\"secret\\"/);
  assertLogin(await tryLogin(port, 'clirot', PW.cli2), 'clirot', 'running state kept (users file)');

  writeFileSync(users, `"clirot" "${v2}"\n`);
  writeFileSync(hba, `${goodHba}host all all 127.0.0.1/32 no-such-method\n`);
  proc.child.kill('SIGHUP');
  await waitUntil(() => count(proc.out(), 'SIGHUP: reload refused') === 2, 10_000, 'hba file reload refused');
  assert.match(proc.out(), /hba-cli\.conf:3.*invalid authentication method \\"no-such-method\\"/);
  assertLogin(await tryLogin(port, 'clirot', PW.cli2), 'clirot', 'running state kept (hba file)');
  assert.equal(count(proc.out(), '"reloaded"'), 1);

  await open.end();
  proc.child.kill('SIGTERM');
  assert.equal(await proc.exited, 0);
  assert.doesNotMatch(proc.out(), new RegExp([PW.cli1, PW.cli2, v2.split('$')[2] as string].map((s) => s.replace(/[+/]/g, '.')).join('|')));
});

test('throttling: after 3 failures the next login from the address is held, then refused with 28000', async (t) => {
  const p = await postern(t, { ...LOOKUP, throttle_max_failures: 3, throttle_window: '30s', throttle_delay: '300ms' });
  const throttle = p.postern.ctx.throttle;
  const before = throttle.throttledTotal;
  for (let i = 1; i <= 3; i++) assertRefused(await tryLogin(p.port, 'thr', `wrong-${i}`), 'thr', `wrong password #${i}`);
  const fourth = await tryLogin(p.port, 'thr', PW.thr);
  assert.equal(fourth.ok, false, 'the right password is refused while throttled');
  if (!fourth.ok) {
    assert.deepEqual(
      { code: fourth.code, severity: fourth.severity, message: fourth.message },
      { code: '28000', severity: 'FATAL', message: 'too many failed login attempts from this address; try again later' },
    );
  }
  assert.ok(fourth.ms >= 290, `held for the throttle delay (took ${fourth.ms.toFixed(0)} ms)`);
  assert.equal(throttle.throttledTotal, before + 1);
  assert.ok((p.postern.ctx.stats.loginFailures.get('bad_password') ?? 0) >= 3);
  assert.ok((p.postern.ctx.stats.loginFailures.get('throttled') ?? 0) >= 1);
  assert.deepEqual(throttle.throttledAddresses(), ['127.0.0.1']);
});

test('postern passwd: the printed line works in a users file, with the same verifier on the server', async (t) => {
  assert.ok(existsSync(MAIN), `${MAIN} is missing: it is built by \`npm test\` (pretest) or \`npx tsc -p tsconfig.build.json\``);
  const r = await run(process.execPath, [MAIN, 'passwd', 'alice'], { input: `${PW.alice}\n`, timeoutMs: 30_000 });
  assert.equal(r.code, 0, r.stderr);
  const line = r.stdout.trim();
  const m = /^"alice" "(SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+)"$/.exec(line);
  assert.ok(m, `unexpected output: ${line}`);
  assert.ok(!r.stdout.includes(PW.alice) && !r.stderr.includes(PW.alice), 'the password is never printed');
  const verifier = m[1] as string;
  await cluster.psql(`ALTER ROLE alice PASSWORD '${verifier}'`);
  assert.equal(await cluster.psql("select rolpassword from pg_authid where rolname = 'alice'"), verifier);

  const users = join(dir, 'users-alice.txt');
  writeFileSync(users, `${line}\n`);
  const p = await postern(t, { users_file: users });
  const ok = await psql(conninfo(p.port, 'alice'), 'select current_user', { password: PW.alice });
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout.trim(), 'alice');
  const bad = await psql(conninfo(p.port, 'alice'), 'select current_user', { password: 'nope' });
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /password authentication failed for user "alice"/);
});

test('drivers log in with SCRAM at Postern over TLS: pg with channel binding (scram-sha-256-plus rule) and postgres.js', async (t) => {
  // `app` must use SCRAM-SHA-256-PLUS here: the rule accepts nothing else.
  const plusHba = join(dir, 'hba-plus.conf');
  writeFileSync(plusHba, `hostssl all app 127.0.0.1/32 scram-sha-256-plus\n${readFileSync(hbaFile, 'utf8')}`);
  const p = await postern(t, { ...LOOKUP, hba_file: plusHba });
  const tlsSessions = () => logsWith(p.logs, 'TLS established').length;

  const c = new pg.Client({
    host: '127.0.0.1',
    port: p.port,
    user: 'app',
    password: PW.app,
    database: 'appdb',
    ssl: { ca },
    enableChannelBinding: true,
  });
  await c.connect();
  try {
    const r = await c.query<{ u: string; n: number }>('select current_user as u, $1::int + 2 as n', [40]);
    assert.deepEqual(r.rows, [{ u: 'app', n: 42 }]);
  } finally {
    await c.end();
  }
  assert.equal(p.postern.ctx.stats.logins.get('scram-sha-256-plus/ok'), 1);
  assert.equal(tlsSessions(), 1);

  const sql = postgres({
    host: '127.0.0.1',
    port: p.port,
    database: 'appdb',
    username: 'drv',
    password: PW.drv,
    ssl: { ca },
    max: 1,
    connect_timeout: 20,
    onnotice: () => {},
  });
  try {
    const rows = await sql<{ u: string; n: number }[]>`select current_user as u, ${40}::int + 2 as n`;
    assert.deepEqual([...rows], [{ u: 'drv', n: 42 }]);
  } finally {
    await sql.end({ timeout: 5 });
  }
  assert.equal(p.postern.ctx.stats.logins.get('scram-sha-256/ok'), 1);
  assert.equal(tlsSessions(), 2);
  assert.equal(p.postern.ctx.stats.loginFailures.size, 0);
});
