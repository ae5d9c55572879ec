// Tenants by TLS server name on one port (issue 14): certificates generated
// here for tenant-a.test, tenant-b.test, *.wild.test (Postern's CA) and
// pass.test (an unrelated CA, the passthrough server's own). Clients send
// SNI with `host=<name> hostaddr=127.0.0.1`: tenant-a and tenant-b reach
// different clusters under the same database name (psql, pg, pgjdbc), each
// name gets its own certificate and SCRAM channel binding binds to the one
// presented; pass.test is spliced to its server unopened (verify-full against
// the server's CA, channel_binding=require end to end, COPY of 100,000 rows
// both ways byte-exact, SHOW CLIENTS and /metrics show it); certificates
// replaced on disk are presented after a reload (open sessions keep working,
// broken files are refused) and, with tls.watch, without one; direct TLS to
// an upstream Postern; the wrong ALPN is refused. Two clusters for the file:
// A (plaintext) and B (TLS with pass.test's certificate).

import assert from 'node:assert/strict';
import { createHash, type X509Certificate } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import tls from 'node:tls';
import pg from 'pg';
import { formatVerifier, makeVerifier } from '../../src/auth/scram.ts';
import { type CertPair, type CertSet, generateCerts, issueCert } from '../../src/dev/certs.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { PROTOCOL_3_0 } from '../../src/protocol/codes.ts';
import { encodeStartup } from '../../src/protocol/startup.ts';
import { fingerprint, logsWith, presentedCert, psql, type RunningPostern, run, startPostern, waitUntil } from '../helpers/postern.ts';

const PW = 'tenant-app-pw-Kx71';
const ADMIN_PW = 'tenant-admin-pw-Qm28';
const JAR = process.env.POSTERN_PGJDBC_JAR ?? '/usr/share/java/postgresql.jar';
const JAVA_SOURCE = join(process.cwd(), 'test', 'drivers', 'java', 'ServerPort.java');

let dir: string;
let certs: CertSet; // Postern's CA; certs.server is the default certificate (localhost)
let pass: CertSet; // the passthrough server's own CA and certificate (pass.test)
let aLive: CertPair; // tenant-a.test's certificate, at the path Postern loads (replaced by the reload tests)
let a: CertPair;
let b: CertPair;
let wild: CertPair;
let clusterA: PgCluster;
let clusterB: PgCluster;
let px: RunningPostern;
const started: RunningPostern[] = [];

async function postern(raw: Record<string, unknown>): Promise<RunningPostern> {
  const p = await startPostern(raw);
  started.push(p);
  return p;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-tenants-'));
  [certs, pass] = await Promise.all([
    generateCerts(join(dir, 'postern')),
    generateCerts(join(dir, 'pass'), { serverNames: ['pass.test'] }),
  ]);
  [a, b, wild] = await Promise.all([
    issueCert(certs.ca, join(dir, 'tenant-a'), { cn: 'tenant-a.test', sans: ['tenant-a.test'], usage: 'server' }),
    issueCert(certs.ca, join(dir, 'tenant-b'), { cn: 'tenant-b.test', sans: ['tenant-b.test'], usage: 'server' }),
    issueCert(certs.ca, join(dir, 'wild'), { cn: '*.wild.test', sans: ['*.wild.test'], usage: 'server' }),
  ]);
  aLive = { cert: join(dir, 'a-live.crt'), key: join(dir, 'a-live.key') };
  copyFileSync(a.cert, aLive.cert);
  copyFileSync(a.key, aLive.key);

  const users = [{ name: 'app', password: 'replaced-by-the-verifier' }];
  const databases = [{ name: 'appdb', owner: 'app' }];
  [clusterA, clusterB] = await Promise.all([
    startPostgres({ users, databases }),
    startPostgres({ tls: { cert: pass.server.cert, key: pass.server.key, ca: pass.ca.cert }, users, databases }),
  ]);
  // One verifier on both clusters and in Postern's users file: Postern authenticates the
  // client itself (channel binding to the certificate it presented), then logs in by SCRAM passthrough.
  const verifier = formatVerifier(await makeVerifier(PW));
  await Promise.all([clusterA, clusterB].map((c) => c.psql(`ALTER ROLE app PASSWORD '${verifier}'`)));
  const usersFile = join(dir, 'users.txt');
  writeFileSync(usersFile, `"app" "${verifier}"\n"padmin" "${formatVerifier(await makeVerifier(ADMIN_PW))}"\n`);
  const hba = join(dir, 'hba.conf');
  writeFileSync(hba, 'hostssl all all 127.0.0.1/32 scram-sha-256\nhost all all 127.0.0.1/32 scram-sha-256\n');

  const plain = (c: PgCluster) => ({ host: c.host, port: c.port, tls: { mode: 'disable' } });
  px = await postern({
    tls: {
      cert: certs.server.cert,
      key: certs.server.key,
      mode: 'allow',
      certificates: [{ server_names: ['tenant-a.test'], cert: aLive.cert, key: aLive.key }],
    },
    auth: { hba_file: hba, users_file: usersFile },
    admin: { listen: '127.0.0.1:0', users: ['padmin'] },
    databases: { main: { ...plain(clusterA), dbname: 'appdb' } },
    tenants: {
      a: { server_names: ['tenant-a.test'], databases: { appdb: plain(clusterA) } },
      b: {
        server_names: ['tenant-b.test', '*.wild.test'],
        certificates: [
          { server_names: ['tenant-b.test'], cert: b.cert, key: b.key },
          { server_names: ['*.wild.test'], cert: wild.cert, key: wild.key },
        ],
        databases: {
          appdb: {
            host: clusterB.host,
            port: clusterB.port,
            tls: { mode: 'verify-full', ca: pass.ca.cert, server_name: 'pass.test' },
          },
        },
      },
      pass: { server_names: ['pass.test'], passthrough: { host: clusterB.host, port: clusterB.port } },
    },
  });
});

after(async () => {
  for (const p of started) await p.close();
  await Promise.all([clusterA?.stop(), clusterB?.stop()]);
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** libpq conninfo that sends `name` as SNI (host) and connects to 127.0.0.1 (hostaddr). */
function sni(name: string, extra: string, port = px.port): string {
  return `host=${name} hostaddr=127.0.0.1 port=${port} user=app ${extra}`;
}

async function admin(sql: string): Promise<string[][]> {
  const r = await psql(`host=127.0.0.1 port=${px.port} dbname=postern user=padmin sslmode=disable`, sql, { password: ADMIN_PW });
  assert.equal(r.code, 0, r.stderr);
  return r.stdout
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => l.split('|'));
}

async function serverPort(conninfo: string): Promise<number> {
  const r = await psql(conninfo, 'select inet_server_port()', { password: PW });
  assert.equal(r.code, 0, r.stderr);
  return Number(r.stdout.trim());
}

describe('routing by server name', () => {
  test('tenant-a and tenant-b reach different clusters under the same database name (psql, verify-full, channel_binding=require)', async () => {
    const verify = `dbname=appdb sslmode=verify-full sslrootcert=${certs.ca.cert} channel_binding=require`;
    assert.equal(await serverPort(sni('tenant-a.test', verify)), clusterA.port);
    assert.equal(await serverPort(sni('tenant-b.test', verify)), clusterB.port);
    // *.wild.test is tenant b by wildcard, with the wildcard certificate.
    assert.equal(await serverPort(sni('x.wild.test', verify)), clusterB.port);
  });

  test("a tenant's databases are its own; no SNI, or a name no tenant lists, gets the top-level databases", async () => {
    // No SNI: libpq sends none for an IP address.
    const noSni = `host=127.0.0.1 port=${px.port} user=app sslmode=require`;
    assert.equal(await serverPort(`${noSni} dbname=main`), clusterA.port);
    const r = await psql(`${noSni} dbname=appdb`, 'select 1', { password: PW });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /database "appdb" does not exist/);
    assert.equal(await serverPort(sni('nobody.test', 'dbname=main sslmode=require')), clusterA.port);
    const inTenant = await psql(sni('tenant-a.test', `dbname=main sslmode=verify-full sslrootcert=${certs.ca.cert}`), 'select 1', {
      password: PW,
    });
    assert.notEqual(inTenant.code, 0);
    assert.match(inTenant.stderr, /database "main" does not exist/);
  });

  test('each name gets its certificate: exact first, then the wildcard, then the default', async () => {
    const cases: Array<[string | undefined, string]> = [
      ['tenant-a.test', a.cert],
      ['tenant-b.test', b.cert],
      ['deep.wild.test', wild.cert],
      ['nobody.test', certs.server.cert],
      [undefined, certs.server.cert],
    ];
    for (const [name, file] of cases) {
      const cert = await presentedCert(px.port, name);
      assert.equal(cert.fingerprint256, fingerprint(file), `certificate for ${name ?? '(no SNI)'}`);
    }
    // A wildcard covers one label only: a.b.wild.test is nobody's, and gets the default.
    assert.equal((await presentedCert(px.port, 'a.b.wild.test')).fingerprint256, fingerprint(certs.server.cert));
  });

  test('node-postgres: ssl.servername picks the tenant and its certificate is verified', async () => {
    const client = new pg.Client({
      host: '127.0.0.1',
      port: px.port,
      user: 'app',
      password: PW,
      database: 'appdb',
      ssl: { servername: 'tenant-b.test', ca: readFileSync(certs.ca.cert, 'utf8') },
    });
    await client.connect();
    try {
      const r = await client.query('select inet_server_port() as port');
      assert.equal(r.rows[0].port, clusterB.port);
    } finally {
      await client.end();
    }
    const wrong = new pg.Client({
      host: '127.0.0.1',
      port: px.port,
      user: 'app',
      password: PW,
      database: 'appdb',
      ssl: { servername: 'tenant-b.test', ca: readFileSync(pass.ca.cert, 'utf8') },
    });
    await assert.rejects(wrong.connect(), /self[- ]signed|unable to verify|certificate/i);
  });

  test('pgjdbc: the host name in the URL is the SNI; each tenant verifies with verify-full', async () => {
    assert.ok(existsSync(JAR), `${JAR} missing: scripts/install-deps.sh installs libpostgresql-jdbc-java`);
    const classes = join(dir, 'classes');
    mkdirSync(classes, { recursive: true });
    const javac = await run('javac', ['-cp', JAR, '-d', classes, JAVA_SOURCE], { timeoutMs: 90_000 });
    assert.equal(javac.code, 0, `javac failed:\n${javac.stdout}${javac.stderr}`);
    // The JVM resolves the test names through a hosts file of its own (jdk.net.hosts.file).
    const hosts = join(dir, 'hosts');
    writeFileSync(hosts, '127.0.0.1 tenant-a.test tenant-b.test x.wild.test\n');
    const java = (host: string, root = certs.ca.cert) =>
      run(
        'java',
        [
          `-Djdk.net.hosts.file=${hosts}`,
          `-Duser.home=${dir}`,
          '-cp',
          `${classes}:${JAR}`,
          'ServerPort',
          `jdbc:postgresql://${host}:${px.port}/appdb?sslmode=verify-full&sslrootcert=${encodeURIComponent(root)}`,
          'app',
          PW,
        ],
        { timeoutMs: 60_000 },
      );
    const results = await Promise.all([java('tenant-a.test'), java('tenant-b.test'), java('x.wild.test')]);
    assert.deepEqual(
      results.map((r) => r.stdout.trim()),
      [`port ${clusterA.port}`, `port ${clusterB.port}`, `port ${clusterB.port}`],
      results.map((r) => r.stderr).join('\n'),
    );
    // Against the wrong CA the certificate Postern presents for tenant-a.test does not verify.
    const wrong = await java('tenant-a.test', pass.ca.cert);
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stdout, /error 08006|SSL|certificate|PKIX/i);
  });
});

describe('passthrough', () => {
  const through = (extra = '') =>
    sni('pass.test', `dbname=appdb sslmode=verify-full sslrootcert=${pass.ca.cert} channel_binding=require ${extra}`);

  test("the client verifies the server's own certificate and binds its SCRAM channel to it", async () => {
    assert.equal(await serverPort(through()), clusterB.port);
    const r = await psql(through(), ['-c', 'select 1', '-c', '\\conninfo'], { password: PW });
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /SSL connection/);
    // Postern's CA does not verify it: the certificate is the server's, not Postern's.
    const wrong = await psql(sni('pass.test', `dbname=appdb sslmode=verify-full sslrootcert=${certs.ca.cert}`), 'select 1', {
      password: PW,
    });
    assert.notEqual(wrong.code, 0);
    assert.match(wrong.stderr, /certificate verify failed/);
  });

  test('COPY of 100,000 rows both ways is byte-exact', async () => {
    const sql = `\\copy (select i, md5(i::text), repeat(chr(65 + i % 26), i % 97) from generate_series(1, 100000) i order by i) to stdout`;
    const out = await psql(through(), sql, { password: PW });
    assert.equal(out.code, 0, out.stderr);
    const want: string[] = [];
    for (let i = 1; i <= 100_000; i++)
      want.push(`${i}\t${createHash('md5').update(String(i)).digest('hex')}\t${String.fromCharCode(65 + (i % 26)).repeat(i % 97)}\n`);
    const expected = want.join('');
    assert.equal(out.stdout.length, expected.length);
    assert.equal(createHash('sha256').update(out.stdout).digest('hex'), createHash('sha256').update(expected).digest('hex'));

    await clusterB.psql('create table if not exists pass_in (id int primary key, v text); alter table pass_in owner to app', {
      db: 'appdb',
    });
    const lines: string[] = [];
    for (let i = 1; i <= 100_000; i++) lines.push(`${i}\t${createHash('sha1').update(`in-${i}`).digest('base64')}`);
    const input = `${lines.join('\n')}\n`;
    const copyIn = await psql(through(), '\\copy pass_in from stdin', { password: PW, input });
    assert.equal(copyIn.code, 0, copyIn.stderr);
    const got = await clusterB.psql("select md5(string_agg(id || E'\\t' || v, E'\\n' order by id)) from pass_in", { db: 'appdb' });
    assert.equal(got.trim(), createHash('md5').update(lines.join('\n')).digest('hex'));
  });

  test('SHOW CLIENTS and /metrics show the tenant, the server name and the route; the session counts', async () => {
    const before = px.postern.ctx.stats.passthrough.get('pass/sessions') ?? 0;
    const open = new pg.Client({
      host: '127.0.0.1',
      port: px.port,
      user: 'app',
      password: PW,
      database: 'appdb',
      enableChannelBinding: true,
      ssl: { servername: 'pass.test', ca: readFileSync(pass.ca.cert, 'utf8') },
    });
    await open.connect();
    const terminated = new pg.Client({
      host: '127.0.0.1',
      port: px.port,
      user: 'app',
      password: PW,
      database: 'appdb',
      ssl: { servername: 'tenant-a.test', ca: readFileSync(certs.ca.cert, 'utf8') },
    });
    await terminated.connect();
    try {
      assert.equal((await open.query('select inet_server_port() as p')).rows[0].p, clusterB.port);
      const rows = await admin('SHOW CLIENTS');
      const tail = rows.map((r) => r.slice(-3).join(' '));
      assert.ok(tail.includes('pass pass.test passthrough'), tail.join('\n'));
      assert.ok(tail.includes('a tenant-a.test terminated'), tail.join('\n'));
      assert.ok(tail.includes('  plain'), tail.join('\n')); // the console's own connection
      const m = await (await fetch(`http://127.0.0.1:${px.postern.adminPort}/metrics`)).text();
      assert.match(m, /postern_tenant_clients\{tenant="pass",tls="passthrough"\} 1/);
      assert.match(m, /postern_tenant_clients\{tenant="a",tls="terminated"\} 1/);
      const dbs = await admin('SHOW DATABASES');
      assert.ok(
        dbs.some((r) => r[0] === 'b/appdb'),
        'tenant databases listed as tenant/name',
      );
    } finally {
      await open.end();
      await terminated.end();
    }
    await waitUntil(() => (px.postern.ctx.stats.passthrough.get('pass/seconds') ?? 0) > 0, 10_000, 'session seconds counted');
    assert.ok((px.postern.ctx.stats.passthrough.get('pass/sessions') ?? 0) > before);
    const m = await (await fetch(`http://127.0.0.1:${px.postern.adminPort}/metrics`)).text();
    const bytes = Number(/postern_passthrough_received_bytes_total\{tenant="pass"\} (\d+)/.exec(m)?.[1]);
    assert.ok(bytes > 3_000_000, `received bytes ${bytes} include the COPY FROM (3.5 MB)`);
  });

  test('KILL_CLIENT ends a passthrough session by closing it: no plaintext error is written into its TLS', async () => {
    const victim = new pg.Client({
      host: '127.0.0.1',
      port: px.port,
      user: 'app',
      password: PW,
      database: 'appdb',
      ssl: { servername: 'pass.test', ca: readFileSync(pass.ca.cert, 'utf8') },
    });
    await victim.connect();
    const ended = new Promise<Error>((resolve) => victim.once('error', resolve));
    const pid = Number((await victim.query('select pg_backend_pid() as pid')).rows[0].pid);
    const row = (await admin('SHOW CLIENTS')).find((r) => r.slice(-3).join(' ') === 'pass pass.test passthrough');
    assert.ok(row !== undefined, 'the passthrough client is listed');
    const id = row[20];
    await admin(`KILL_CLIENT ${id}`);
    const e = await ended;
    // A FATAL written in plaintext into the TLS stream would be a TLS record error (ERR_SSL_*); a clean close is not.
    assert.doesNotMatch(String((e as NodeJS.ErrnoException).code ?? ''), /SSL/, e.message);
    assert.match(e.message, /terminated|closed|ECONNRESET|EOF/i);
    await victim.end().catch(() => undefined);
    // The server side went too: nothing of the victim is left on the cluster.
    await waitUntil(
      async () => (await clusterB.psql(`select count(*) from pg_stat_activity where pid = ${pid}`)).trim() === '0',
      10_000,
      'the server session ended',
    );
  });

  test('a direct-TLS client is spliced the same way; without ALPN postgresql it is refused', async () => {
    const cert = await new Promise<X509Certificate>((resolve, reject) => {
      const s = tls.connect({
        host: '127.0.0.1',
        port: px.port,
        servername: 'pass.test',
        ca: readFileSync(pass.ca.cert),
        ALPNProtocols: ['postgresql'],
      });
      s.once('secureConnect', () => {
        s.write(
          encodeStartup(PROTOCOL_3_0, [
            ['user', 'app'],
            ['database', 'appdb'],
          ]),
        );
        s.once('data', (d: Buffer) => {
          const peer = s.getPeerX509Certificate();
          s.destroy();
          // The server itself answers the startup: an authentication request ('R').
          if (d[0] !== 0x52 || peer === undefined) reject(new Error(`unexpected first byte ${d[0]}`));
          else resolve(peer);
        });
      });
      s.once('error', reject);
    });
    assert.equal(cert.fingerprint256, fingerprint(pass.server.cert));
    const refused = await new Promise<string>((resolve) => {
      const s = tls.connect({
        host: '127.0.0.1',
        port: px.port,
        servername: 'pass.test',
        ca: readFileSync(pass.ca.cert),
        ALPNProtocols: ['foo'],
      });
      s.once('secureConnect', () => {
        s.destroy();
        resolve('connected');
      });
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });
    assert.equal(refused, 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL');
  });
});

describe('ALPN', () => {
  async function sClient(name: string, alpn: string): Promise<string> {
    const r = await run('openssl', ['s_client', '-connect', `127.0.0.1:${px.port}`, '-servername', name, '-alpn', alpn], {
      input: '',
      timeoutMs: 20_000,
    });
    return r.stdout + r.stderr;
  }

  test('openssl s_client: ALPN postgresql is accepted, another ALPN refused with no_application_protocol', async () => {
    assert.match(await sClient('tenant-a.test', 'postgresql'), /ALPN protocol: postgresql/);
    for (const name of ['tenant-a.test', 'nobody.test', 'pass.test']) {
      const out = await sClient(name, 'foo');
      assert.match(out, /no application protocol|alert number 120/, `${name}: ${out}`);
      assert.doesNotMatch(out, /ALPN protocol: /, name);
    }
  });
});

describe('certificate reload', () => {
  test('a certificate replaced on disk is presented after a reload; an open session keeps working; broken files are refused', async () => {
    const open = new pg.Client({
      host: '127.0.0.1',
      port: px.port,
      user: 'app',
      password: PW,
      database: 'appdb',
      ssl: { servername: 'tenant-a.test', ca: readFileSync(certs.ca.cert, 'utf8') },
    });
    await open.connect();
    try {
      assert.equal((await presentedCert(px.port, 'tenant-a.test')).fingerprint256, fingerprint(a.cert));
      const a2 = await issueCert(certs.ca, join(dir, 'tenant-a-2'), { cn: 'tenant-a.test', sans: ['tenant-a.test'], usage: 'server' });
      copyFileSync(a2.cert, aLive.cert);
      copyFileSync(a2.key, aLive.key);
      assert.deepEqual(px.postern.reload(), []);
      assert.equal((await presentedCert(px.port, 'tenant-a.test')).fingerprint256, fingerprint(a2.cert));
      assert.equal((await open.query('select 7 as n')).rows[0].n, 7);
      assert.equal(
        await serverPort(sni('tenant-a.test', `dbname=appdb sslmode=verify-full sslrootcert=${certs.ca.cert} channel_binding=require`)),
        clusterA.port,
      );

      // A key that does not match its certificate, then an unreadable PEM: refused, a2 stays.
      copyFileSync(a.key, aLive.key);
      const mismatch = px.postern.reload();
      assert.ok(mismatch.length > 0, 'mismatched key refused');
      writeFileSync(aLive.cert, '-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n');
      copyFileSync(a2.key, aLive.key);
      const broken = px.postern.reload();
      assert.ok(broken.length > 0, 'broken certificate refused');
      assert.ok(!JSON.stringify(broken).includes('PRIVATE KEY'), 'no key material in the problems');
      assert.ok(logsWith(px.logs, /reload refused: TLS files do not load/).length >= 2);
      assert.equal((await presentedCert(px.port, 'tenant-a.test')).fingerprint256, fingerprint(a2.cert));
      assert.equal((await open.query('select 8 as n')).rows[0].n, 8);
      copyFileSync(a2.cert, aLive.cert);
      assert.deepEqual(px.postern.reload(), []);
    } finally {
      await open.end();
    }
  });
});

describe('upstream Postern', () => {
  let upstream: RunningPostern;
  let downstream: RunningPostern;
  let live: CertPair;
  let liveCa: string; // the CA file the downstream verifies the upstream with (replaced by the server-side reload test)

  before(async () => {
    live = { cert: join(dir, 'up-live.crt'), key: join(dir, 'up-live.key') };
    copyFileSync(certs.server.cert, live.cert);
    copyFileSync(certs.server.key, live.key);
    liveCa = join(dir, 'up-ca-live.crt');
    copyFileSync(certs.ca.cert, liveCa);
    upstream = await postern({
      tls: { cert: live.cert, key: live.key, mode: 'require', watch: true },
      databases: { appdb: { host: clusterA.host, port: clusterA.port, tls: { mode: 'disable' } } },
    });
    // Three names for the same upstream database: each a pool of its own, so a
    // test can make sure its server connection is a new one.
    const up = {
      host: '127.0.0.1',
      port: upstream.port,
      dbname: 'appdb',
      tls: { mode: 'verify-full', ca: liveCa, server_name: 'localhost', direct: true },
    };
    downstream = await postern({ databases: { up, up2: up, up3: up } });
  });

  const via = (database: string) => `host=127.0.0.1 port=${downstream.port} dbname=${database} user=app sslmode=disable`;

  test('databases.*.tls.direct: Postern opens TLS at once (ALPN postgresql) to a server that accepts direct TLS', async () => {
    assert.equal(await serverPort(via('up')), clusterA.port);
    const tlsLines = logsWith(upstream.logs, 'TLS established');
    assert.ok(tlsLines.length > 0);
    assert.ok(
      tlsLines.every((l) => l.direct === true && l.alpn === 'postgresql'),
      JSON.stringify(tlsLines),
    );
  });

  test('server-side TLS files reload too: a broken CA file is refused and the running one stays; a replaced one checks new server connections', async () => {
    writeFileSync(liveCa, '-----BEGIN CERTIFICATE-----\nbroken\n-----END CERTIFICATE-----\n');
    const refused = downstream.postern.reload();
    assert.ok(refused.length > 0, 'broken CA refused');
    assert.ok(logsWith(downstream.logs, /reload refused: TLS files do not load/).length >= 1);
    assert.equal(await serverPort(via('up2')), clusterA.port, 'the running CA still verifies the upstream');

    // Another CA, which did not sign the upstream's certificate: the next server connection is refused.
    copyFileSync(pass.ca.cert, liveCa);
    assert.deepEqual(downstream.postern.reload(), []);
    const r = await psql(via('up3'), 'select 1', { password: PW });
    assert.notEqual(r.code, 0, 'a server certificate the new CA did not sign is refused');
    assert.ok(
      logsWith(downstream.logs, /server login failed|could not connect|certificate/).some((l) =>
        /certificate|self[- ]signed|verify/i.test(JSON.stringify(l)),
      ),
      'the failure names the certificate',
    );
    // The CA back: `up3` connects.
    copyFileSync(certs.ca.cert, liveCa);
    assert.deepEqual(downstream.postern.reload(), []);
    assert.equal(await serverPort(via('up3')), clusterA.port);
  });

  test('tenants.*.passthrough.direct: a direct-TLS client is spliced at once to a direct-TLS server, an in-band one after an SSLRequest', async () => {
    // An edge with passthrough tenants only: no certificate of its own.
    const edge = await postern({
      tenants: { up: { server_names: ['localhost'], passthrough: { host: '127.0.0.1', port: upstream.port, direct: true } } },
    });
    const before = logsWith(upstream.logs, 'TLS established').length;
    const first = await new Promise<number>((resolve, reject) => {
      const s = tls.connect({
        host: '127.0.0.1',
        port: edge.port,
        servername: 'localhost',
        ca: readFileSync(certs.ca.cert),
        ALPNProtocols: ['postgresql'],
      });
      s.once('secureConnect', () => {
        assert.equal(s.alpnProtocol, 'postgresql', 'the upstream itself selected ALPN postgresql');
        s.write(
          encodeStartup(PROTOCOL_3_0, [
            ['user', 'app'],
            ['database', 'appdb'],
          ]),
        );
        s.once('data', (d: Buffer) => {
          s.destroy();
          resolve(d[0] as number);
        });
      });
      s.once('error', reject);
    });
    assert.equal(first, 0x52, 'the upstream answers the startup with an authentication request');
    assert.equal(
      await serverPort(
        `host=localhost hostaddr=127.0.0.1 port=${edge.port} dbname=appdb user=app sslmode=verify-full sslrootcert=${certs.ca.cert}`,
      ),
      clusterA.port,
    );
    const lines = logsWith(upstream.logs, 'TLS established').slice(before);
    assert.deepEqual(
      lines.map((l) => l.direct),
      [true, false],
      JSON.stringify(lines),
    );
  });

  test('tls.watch: a certificate changed on disk is presented without a reload', async () => {
    assert.equal((await presentedCert(upstream.port, 'localhost')).fingerprint256, fingerprint(certs.server.cert));
    const next = await issueCert(certs.ca, join(dir, 'up-2'), { cn: 'localhost', sans: ['localhost', '127.0.0.1'], usage: 'server' });
    copyFileSync(next.key, live.key);
    copyFileSync(next.cert, live.cert);
    await waitUntil(
      async () => (await presentedCert(upstream.port, 'localhost')).fingerprint256 === fingerprint(next.cert),
      15_000,
      'the watched certificate presented',
    );
    assert.ok(logsWith(upstream.logs, 'TLS files reloaded').length >= 1);
  });
});
