// Reload under load (issue 17, item 1), through the built CLI with `workers: 2`:
// while pgbench runs in transaction mode, the config file (pool size, log
// level, and a restart-only listen.port), the hba file, the client
// certificate and the admin listener's certificate are all changed and
// SIGHUP is sent. pgbench finishes with zero failed transactions; each change
// takes effect in both workers (and the primary's HTTPS certificate); the
// session opened before the reload keeps working; RELOAD in the console says
// which changed settings need a restart, and a broken config changes
// nothing. One cluster, one Postern for the file.

import assert from 'node:assert/strict';
import type { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type tls from 'node:tls';
import pg from 'pg';
import { formatVerifier, makeVerifier } from '../../src/auth/scram.ts';
import { type CertPair, type CertSet, generateCerts, issueCert } from '../../src/dev/certs.ts';
import { freePort, type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { fingerprint, pgEnv, presentedCert, psql, run, startCli, waitUntil } from '../helpers/postern.ts';

const PW = { app: 'reload-app-pw-12', blocked: 'reload-blocked-pw-34', admin: 'reload-admin-pw-56' };
let dir: string;
let cluster: PgCluster;
let certs: CertSet;
let second: CertPair;
let cli: ReturnType<typeof startCli>;
const port = { client: 0, admin: 0, other: 0 };

function config(poolSize: number, level: string, listenPort: number): string {
  return [
    `listen: { host: 127.0.0.1, port: ${listenPort} }`,
    'workers: 2',
    'tls: { mode: allow, cert: tls.crt, key: tls.key }',
    'auth: { hba_file: hba.conf, users_file: users.txt }',
    `admin: { listen: "127.0.0.1:${port.admin}", users: [admin], tls: { cert: admin.crt, key: admin.key } }`,
    `pool: { pool_mode: transaction, default_pool_size: ${poolSize} }`,
    `log: { level: ${level} }`,
    'databases:',
    `  appdb: { host: ${cluster.host}, port: ${cluster.port}, server_password: ${PW.app}, tls: { mode: disable } }`,
    '',
  ].join('\n');
}

const HBA = 'host all all 127.0.0.1/32 scram-sha-256\n';

/** GET on the admin listener over HTTPS (trusting the test CA): status and the presented certificate. */
function adminGet(path: string): Promise<{ status: number; cert: X509Certificate }> {
  return new Promise((resolve, reject) => {
    const req = https.get(
      { host: '127.0.0.1', port: port.admin, path, ca: readFileSync(certs.ca.cert), servername: 'localhost', agent: false },
      (res) => {
        const sock = res.socket as tls.TLSSocket;
        const cert = sock.getPeerX509Certificate() as X509Certificate;
        res.resume();
        res.on('end', () => resolve({ status: res.statusCode ?? 0, cert }));
      },
    );
    req.on('error', reject);
  });
}

async function admin(sql: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return psql(`host=127.0.0.1 port=${port.client} dbname=pgbouncer user=admin sslmode=disable`, sql, { password: PW.admin });
}

/** Server connections of user app Postern holds while `n` clients each run pg_sleep(1) at once. */
async function serverConnsUnder(n: number): Promise<number> {
  const clients = Array.from({ length: n }, () => {
    const c = new pg.Client({ host: '127.0.0.1', port: port.client, user: 'app', database: 'appdb', password: PW.app });
    c.on('error', () => {});
    return c;
  });
  await Promise.all(clients.map((c) => c.connect()));
  try {
    const sleeps = Promise.all(clients.map((c) => c.query('select pg_sleep(1)')));
    let most = 0;
    const until = Date.now() + 800;
    while (Date.now() < until) {
      const got = Number(
        await cluster.psql("select count(*) from pg_stat_activity where usename = 'app' and backend_type = 'client backend'", {
          db: 'appdb',
        }),
      );
      most = Math.max(most, got);
      await new Promise((r) => setTimeout(r, 100));
    }
    await sleeps;
    return most;
  } finally {
    await Promise.all(clients.map((c) => c.end()));
  }
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-reload-'));
  cluster = await startPostgres({
    users: [
      { name: 'app', password: PW.app },
      // databases.appdb.server_password logs every user in: the same password on the server.
      { name: 'blocked', password: PW.app },
    ],
    databases: [{ name: 'appdb', owner: 'app' }],
  });
  const init = await run('pgbench', ['-i', '-s', '1', '-q', 'appdb'], { env: cluster.env() });
  assert.equal(init.code, 0, init.stderr);
  await cluster.psql('grant select, insert, update, delete on all tables in schema public to app', { db: 'appdb' });
  certs = await generateCerts(join(dir, 'certs'));
  second = await issueCert(certs.ca, join(dir, 'certs', 'second'), { cn: 'localhost', sans: ['localhost', '127.0.0.1'], usage: 'server' });
  const line = async (u: string, p: string) => `"${u}" "${formatVerifier(await makeVerifier(p))}"`;
  writeFileSync(
    join(dir, 'users.txt'),
    `${await line('app', PW.app)}\n${await line('blocked', PW.blocked)}\n${await line('admin', PW.admin)}\n`,
  );
  writeFileSync(join(dir, 'hba.conf'), HBA);
  for (const [to, from] of [
    ['tls.crt', certs.server.cert],
    ['tls.key', certs.server.key],
    ['admin.crt', certs.server.cert],
    ['admin.key', certs.server.key],
  ] as const)
    copyFileSync(from, join(dir, to));
  port.client = await freePort();
  port.admin = await freePort();
  port.other = await freePort();
  writeFileSync(join(dir, 'postern.yaml'), config(2, 'warn', port.client));
  cli = startCli(['--config', join(dir, 'postern.yaml')]);
  await waitUntil(async () => (await adminGet('/readyz').catch(() => null))?.status === 200, 30_000, 'workers ready');
});

after(async () => {
  cli?.child.kill('SIGKILL');
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

test('SIGHUP under pgbench: pool size, hba rule, log level and both certificates change with zero failed transactions', async () => {
  assert.equal((await presentedCert(port.client)).fingerprint256, fingerprint(certs.server.cert));
  assert.equal((await adminGet('/healthz')).cert.fingerprint256, fingerprint(certs.server.cert));
  const blockedBefore = await psql(`host=127.0.0.1 port=${port.client} dbname=appdb user=blocked sslmode=disable`, 'select 1', {
    password: PW.blocked,
  });
  assert.equal(blockedBefore.code, 0, blockedBefore.stderr);
  // Pool of 2 split over 2 workers: one server connection each.
  assert.equal(await serverConnsUnder(4), 2);

  const open = new pg.Client({ host: '127.0.0.1', port: port.client, user: 'app', database: 'appdb', password: PW.app });
  await open.connect();
  const bench = run(
    'pgbench',
    ['-n', '-S', '-M', 'extended', '-c', '4', '-j', '2', '-T', '6', '-h', '127.0.0.1', '-p', String(port.client), '-U', 'app', 'appdb'],
    { env: pgEnv({ PGPASSWORD: PW.app, PGSSLMODE: 'disable' }) },
  );
  await new Promise((r) => setTimeout(r, 1500));
  writeFileSync(join(dir, 'postern.yaml'), config(4, 'debug', port.other));
  writeFileSync(join(dir, 'hba.conf'), `host all blocked 127.0.0.1/32 reject\n${HBA}`);
  copyFileSync(second.cert, join(dir, 'tls.crt'));
  copyFileSync(second.key, join(dir, 'tls.key'));
  copyFileSync(second.cert, join(dir, 'admin.crt'));
  copyFileSync(second.key, join(dir, 'admin.key'));
  cli.child.kill('SIGHUP');
  await waitUntil(() => (cli.out().match(/"msg":"reloaded"/g) ?? []).length >= 2, 10_000, 'both workers reloaded');
  const r = await bench;
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /number of failed transactions: 0 /);

  // Each change took effect.
  assert.equal((await presentedCert(port.client)).fingerprint256, fingerprint(second.cert), 'the new client certificate');
  await waitUntil(
    async () => (await adminGet('/healthz')).cert.fingerprint256 === fingerprint(second.cert),
    5000,
    'the new admin certificate',
  );
  const blocked = await psql(`host=127.0.0.1 port=${port.client} dbname=appdb user=blocked sslmode=disable`, 'select 1', {
    password: PW.blocked,
  });
  assert.notEqual(blocked.code, 0);
  assert.match(blocked.stderr, /rejects connection|no pg_hba.conf entry/);
  assert.equal(await serverConnsUnder(4), 4, 'pool of 4: two server connections per worker');
  assert.match(cli.out().split('"msg":"reloaded"').slice(1).join(''), /"level":20/, 'debug lines after the reload');
  assert.ok(cli.out().includes('changed settings that need a restart keep their running values'));
  assert.ok(cli.out().includes('"listen.port"'));
  // The restart-only port kept its running value; the session from before goes on.
  assert.equal((await open.query('select 1 as one')).rows[0].one, 1);
  await open.end();
  await assert.rejects(
    new Promise<void>((resolve, reject) => {
      const s = net.connect({ host: '127.0.0.1', port: port.other }, () => {
        s.destroy();
        resolve();
      });
      s.on('error', reject);
    }),
    /ECONNREFUSED/,
  );
});

test('RELOAD in the console names the changed settings that need a restart; a broken config changes nothing', async () => {
  const ok = await admin('RELOAD');
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stderr, /NOTICE: {2}changed settings that need a restart keep their running values: listen\.port/);
  writeFileSync(join(dir, 'postern.yaml'), `${config(3, 'debug', port.other)}pool_typo: 1\n`);
  const bad = await admin('RELOAD');
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /reload refused: the configuration is invalid/);
  assert.match(bad.stderr, /pool_typo: unknown setting/);
  const shown = await admin('SHOW CONFIG');
  assert.match(shown.stdout, /pool\.default_pool_size\|4\|/, 'the running value stays');
});
