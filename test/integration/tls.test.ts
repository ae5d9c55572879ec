// TLS details on both sides: a certificate chain file shown to clients,
// tls.min_version enforced, mutual TLS to a server that authenticates Postern
// by certificate (auth `cert`), plus cancel keys (unknown keys ignored) and
// log secrecy. One cluster (TLS, cert auth for `app`, scram for `pw`).

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import tls from 'node:tls';
import pg from 'pg';
import { type CertSet, generateCerts, issueCert } from '../../src/dev/certs.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { encodeCancel, SSL_REQUEST } from '../../src/protocol/startup.ts';
import { psql, type RunningPostern, startPostern, waitUntil } from '../helpers/postern.ts';

const PW = 'tls-test-password-3f9a';
let dir: string;
let certs: CertSet;
let cluster: PgCluster;
const started: RunningPostern[] = [];

async function postern(raw: Record<string, unknown>): Promise<RunningPostern> {
  const p = await startPostern(raw);
  started.push(p);
  return p;
}

before(async () => {
  dir = mkdtempSync(join(tmpdir(), 'postern-tls-'));
  certs = await generateCerts(dir, { withIntermediate: true });
  cluster = await startPostgres({
    tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
    users: [{ name: 'app' }, { name: 'pw', password: PW }],
    databases: [{ name: 'appdb', owner: 'app' }],
    hba: ['hostssl all app 127.0.0.1/32 cert', 'host all pw 127.0.0.1/32 scram-sha-256'],
  });
});

after(async () => {
  for (const p of started) await p.close();
  await cluster?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/** SSLRequest, then a TLS handshake with the given options; resolves with the negotiated protocol or the error code. */
function handshake(port: number, opts: tls.ConnectionOptions): Promise<string> {
  return new Promise((resolve) => {
    const raw = net.connect({ host: '127.0.0.1', port });
    raw.once('connect', () => raw.write(SSL_REQUEST));
    raw.once('data', (b: Buffer) => {
      assert.equal(b.toString(), 'S');
      const s = tls.connect({ socket: raw, ...opts });
      s.once('secureConnect', () => {
        resolve(s.getProtocol() ?? 'unknown');
        s.destroy();
      });
      s.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
    });
    raw.once('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? e.message));
  });
}

test('a chain file (leaf + intermediate) verifies against the root with verify-full', async () => {
  const inter = certs.intermediate;
  assert.ok(inter);
  const p = await postern({
    tls: { cert: inter.chain, key: inter.server.key, mode: 'require' },
    databases: {
      appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'verify-full', ca: certs.ca.cert, server_name: 'localhost' } },
    },
  });
  const r = await psql(
    `host=localhost port=${p.port} dbname=appdb user=pw sslmode=verify-full sslrootcert=${certs.ca.cert} channel_binding=disable`,
    'select 1',
    {
      password: PW,
    },
  );
  assert.equal(r.code, 0, r.stderr);
  assert.equal(r.stdout.trim(), '1');
});

test('tls.min_version TLSv1.3 refuses a TLSv1.2-only client and accepts TLSv1.3', async () => {
  const p = await postern({
    tls: { cert: certs.server.cert, key: certs.server.key, min_version: 'TLSv1.3' },
    databases: { appdb: { host: cluster.host, port: cluster.port } },
  });
  const ca = readFileSync(certs.ca.cert);
  assert.equal(await handshake(p.port, { ca, servername: 'localhost', maxVersion: 'TLSv1.2' }), 'ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
  assert.equal(await handshake(p.port, { ca, servername: 'localhost' }), 'TLSv1.3');
});

test('mutual TLS to the server: Postern presents its client certificate and the server logs the user in by certificate', async () => {
  const clientCert = await issueCert(certs.ca, join(dir, 'app-client'), { cn: 'app', usage: 'client' });
  const withCert = await postern({
    tls: { mode: 'disable' },
    databases: {
      appdb: {
        host: cluster.host,
        port: cluster.port,
        tls: { mode: 'verify-full', ca: certs.ca.cert, cert: clientCert.cert, key: clientCert.key, server_name: 'localhost' },
      },
    },
  });
  const ok = await psql(
    `host=127.0.0.1 port=${withCert.port} dbname=appdb user=app sslmode=disable`,
    'select current_user, ssl, client_dn from pg_stat_ssl where pid = pg_backend_pid()',
  );
  assert.equal(ok.code, 0, ok.stderr);
  assert.equal(ok.stdout.trim(), 'app|t|/CN=app');
  const noCert = await postern({
    tls: { mode: 'disable' },
    databases: {
      appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'verify-full', ca: certs.ca.cert, server_name: 'localhost' } },
    },
  });
  const refused = await psql(`host=127.0.0.1 port=${noCert.port} dbname=appdb user=app sslmode=disable`, 'select 1');
  assert.notEqual(refused.code, 0);
  assert.match(refused.stderr, /connection requires a valid client certificate|certificate authentication failed/);
});

test('a CancelRequest with a wrong key is ignored; the right key cancels; secrets never reach the log', async () => {
  const p = await postern({
    tls: { mode: 'disable' },
    databases: { appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'require' } } },
  });
  const client = new pg.Client({ host: '127.0.0.1', port: p.port, user: 'pw', password: PW, database: 'appdb' });
  await client.connect();
  const conn = client as unknown as { processID: number; secretKey: number };
  const pid = conn.processID;
  const serverPid = (await client.query('select pg_backend_pid() as p')).rows[0].p as number;
  assert.notEqual(pid, serverPid, 'the client sees Postern’s key, not the server’s pid');
  const sendCancel = (key: Buffer) =>
    new Promise<void>((resolve) => {
      const s = net.connect({ host: '127.0.0.1', port: p.port }, () => s.end(encodeCancel(pid, key)));
      s.on('close', () => resolve());
      s.on('error', () => resolve());
    });
  // Wrong key: the 1.5 s sleep must complete normally.
  const slow = client.query('select pg_sleep(1.5) as s');
  await waitUntil(
    async () => Number(await cluster.psql(`select count(*) from pg_stat_activity where query like 'select pg_sleep(1.5)%'`)) === 1,
    10_000,
  );
  await sendCancel(randomBytes(4));
  await slow;
  // Right key: cancels a long sleep with 57014.
  const key = Buffer.alloc(4);
  key.writeInt32BE(conn.secretKey);
  const long = client.query('select pg_sleep(30)').then(
    () => null,
    (e: { code?: string }) => e,
  );
  await waitUntil(
    async () =>
      Number(
        await cluster.psql(`select count(*) from pg_stat_activity where query like 'select pg_sleep(30)%' and wait_event = 'PgSleep'`),
      ) === 1,
    10_000,
  );
  await sendCancel(key);
  assert.equal((await long)?.code, '57014');
  assert.equal((await client.query('select 1 as one')).rows[0].one, 1);
  await client.end();
  const all = started.flatMap((s) => s.logs).join('\n');
  assert.ok(all.length > 0);
  assert.ok(!all.includes(PW), 'password never logged');
  assert.ok(!all.includes(String(conn.secretKey)), 'cancel secret never logged');
});
