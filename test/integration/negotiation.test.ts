// Negotiation and hostile input at the front door, against a real PostgreSQL
// (TLS on, scram-sha-256, user `app`, database `appdb`) and in-process
// Posterns on port 0: SSLRequest / GSSENCRequest answers, the TLS upgrade,
// piggybacked plaintext, direct TLS with and without ALPN, openssl's
// STARTTLS, malformed startup packets and messages (quiet close or the exact
// FATAL), client certificate modes, TLS to the server (including a server
// that injects bytes after its 'S'), relayed SCRAM with channel binding, a
// healthy session that outlives the attacks, and the login timeout.

import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type tls from 'node:tls';
import pg from 'pg';
import { type CertPair, type CertSet, generateCerts, issueCert } from '../../src/dev/certs.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';
import { PROTOCOL_3_0, REQUEST_CODE } from '../../src/protocol/codes.ts';
import { encodeSaslInitial } from '../../src/protocol/frontend.ts';
import { Writer } from '../../src/protocol/writer.ts';
import { logsWith, psql, type RunningPostern, run, startPostern, waitUntil } from '../helpers/postern.ts';
import {
  authCode,
  type BackendMessage,
  describeBytes,
  errorFields,
  gssencRequest,
  int32,
  messageHeader,
  onlyError,
  parseMessages,
  type ReadResult,
  saslMechanisms,
  scramLogin,
  simpleQuery,
  sslRequest,
  startupMessage,
  typedMessage,
  Wire,
} from '../helpers/wire.ts';

const APP = 'app';
const PASSWORD = 'app-Secret-42';
const HOST = '127.0.0.1';

let workDir = '';
let certs: CertSet;
let otherCerts: CertSet;
let appClientCert: CertPair;
let cluster: PgCluster;
/** The Postern most cases share: TLS allowed, no direct TLS without ALPN, 1MB messages. */
let main: RunningPostern;
let caPem: Buffer;

before(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'postern-negotiation-'));
  [certs, otherCerts] = await Promise.all([generateCerts(join(workDir, 'certs')), generateCerts(join(workDir, 'other'))]);
  appClientCert = await issueCert(certs.ca, join(workDir, 'certs', 'app-client'), { cn: APP, usage: 'client' });
  caPem = readFileSync(certs.ca.cert);
  cluster = await startPostgres({
    tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
    auth: 'scram-sha-256',
    users: [{ name: APP, password: PASSWORD }],
    databases: [{ name: 'appdb', owner: APP }],
  });
  main = await startPostern(config({ limits: { max_message_size: '1MB' } }));
});

after(async () => {
  await main?.close();
  await cluster?.stop();
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

interface ConfigOverrides {
  tls?: Record<string, unknown>;
  databases?: Record<string, unknown>;
  limits?: Record<string, unknown>;
}

/** Postern config: client TLS with the generated certs, appdb -> the cluster over plaintext. */
function config(o: ConfigOverrides = {}): Record<string, unknown> {
  return {
    tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert, mode: 'allow', ...o.tls },
    databases: o.databases ?? { appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'disable' } } },
    ...(o.limits ? { limits: o.limits } : {}),
  };
}

async function withPostern<T>(raw: Record<string, unknown>, fn: (p: RunningPostern) => Promise<T>): Promise<T> {
  const p = await startPostern(raw);
  try {
    return await fn(p);
  } finally {
    await p.close();
  }
}

/** Client TLS options that verify Postern's certificate. */
function clientTls(extra: tls.ConnectionOptions = {}): tls.ConnectionOptions {
  return { ca: caPem, servername: 'localhost', ...extra };
}

function certOpts(pair: CertPair): tls.ConnectionOptions {
  return { cert: readFileSync(pair.cert), key: readFileSync(pair.key) };
}

const appStartup = (database = 'appdb'): Buffer => startupMessage({ user: APP, database });

/** Asserts the connection ended with no byte sent back. */
function assertQuietClose(r: ReadResult, what: string): void {
  assert.equal(r.closed, true, `${what}: connection should be closed`);
  assert.equal(r.data.length, 0, `${what}: expected no bytes, got ${describeBytes(r.data)}`);
}

/** Asserts the connection ended after exactly one FATAL ErrorResponse with this code and message. */
function assertFatal(r: ReadResult, code: string, message: string | RegExp): ReturnType<typeof onlyError> {
  assert.equal(r.closed, true, `connection should be closed after the error; got ${describeBytes(r.data)}`);
  const e = onlyError(r.data);
  assert.equal(e.severity, 'FATAL');
  assert.equal(e.code, code, `SQLSTATE of ${JSON.stringify(e.message)}`);
  if (typeof message === 'string') assert.equal(e.message, message);
  else assert.match(e.message ?? '', message);
  return e;
}

async function appBackends(): Promise<number> {
  return Number(await cluster.psql(`select count(*) from pg_stat_activity where usename = '${APP}'`));
}

function conninfo(port: number, extra: string): string {
  return `host=${HOST} port=${port} user=${APP} dbname=appdb ${extra}`;
}

// ---------------------------------------------------------------- 1-3: in-band negotiation

describe('SSLRequest and GSSENCRequest', () => {
  it('answers exactly S to an SSLRequest when TLS is configured', async () => {
    const w = await Wire.connect(main.port);
    try {
      w.write(sslRequest());
      const r = await w.readUntilClose(300);
      assert.equal(r.closed, false, 'Postern must wait for the TLS handshake');
      assert.deepEqual([...r.data], [0x53]);
    } finally {
      w.close();
    }
  });

  it('answers N when tls.mode is disable; plaintext startup on the same socket reaches AuthenticationSASL', async () => {
    await withPostern(config({ tls: { mode: 'disable' } }), async (p) => {
      const w = await Wire.connect(p.port);
      try {
        w.write(sslRequest());
        assert.equal((await w.readBytes(1)).toString('latin1'), 'N');
        w.write(appStartup());
        const m = await w.readMessage();
        assert.equal(m.type, 'R', describeBytes(m.frame));
        assert.deepEqual(saslMechanisms(m), ['SCRAM-SHA-256']);
        // A second SSLRequest after the answer is not a fresh negotiation.
      } finally {
        w.close();
      }
      const w2 = await Wire.connect(p.port);
      w2.write(sslRequest());
      assert.equal((await w2.readBytes(1)).toString('latin1'), 'N');
      w2.write(sslRequest());
      assertFatal(await w2.readUntilClose(), '08P01', 'unexpected SSL negotiation request');
      // Direct TLS with TLS disabled: nothing sensible to answer, quiet close.
      await assert.rejects(Wire.connectTls(p.port, clientTls({ ALPNProtocols: ['postgresql'] })));
    });
  });

  it('answers N to GSSENCRequest, then S to SSLRequest; TLS and a full login follow', async () => {
    const w = await Wire.connect(main.port);
    try {
      w.write(gssencRequest());
      assert.equal((await w.readBytes(1)).toString('latin1'), 'N');
      const t = await w.negotiateTls(clientTls());
      const sock = t.socket as tls.TLSSocket;
      assert.equal(sock.authorized, true);
      assert.equal(sock.getProtocol(), 'TLSv1.3');
      t.write(appStartup());
      const login = await scramLogin(t, PASSWORD);
      assert.ok(login.backendKey !== null, 'BackendKeyData relayed');
      assert.deepEqual(await simpleQuery(t, 'select current_user, current_database()'), [[APP, 'appdb']]);
      t.close();
    } finally {
      w.close();
    }
    const established = logsWith(main.logs, 'TLS established');
    assert.equal(established.at(-1)?.direct, false);
  });

  it('answers N to GSSENCRequest, then a plaintext startup works', async () => {
    const w = await Wire.connect(main.port);
    try {
      w.write(gssencRequest());
      assert.equal((await w.readBytes(1)).toString('latin1'), 'N');
      w.write(appStartup());
      await scramLogin(w, PASSWORD);
      assert.deepEqual(await simpleQuery(w, 'select 41 + 1'), [['42']]);
      // A second GSSENCRequest is refused.
    } finally {
      w.close();
    }
    const w2 = await Wire.connect(main.port);
    w2.write(gssencRequest());
    assert.equal((await w2.readBytes(1)).toString('latin1'), 'N');
    w2.write(gssencRequest());
    assertFatal(await w2.readUntilClose(), '08P01', 'unexpected GSSAPI negotiation request');
  });

  it('refuses plaintext piggybacked on an SSLRequest (CVE-2021-23214) without contacting the server', async () => {
    const connectedBefore = logsWith(main.logs, 'server connected').length;
    const startupsBefore = logsWith(main.logs, 'startup').length;
    const w = await Wire.connect(main.port);
    // One write: the request and a StartupMessage behind it.
    w.write(Buffer.concat([sslRequest(), appStartup()]));
    assertFatal(await w.readUntilClose(), '08P01', 'received unencrypted data after SSL request');
    assert.equal(logsWith(main.logs, 'startup').length, startupsBefore, 'the piggybacked startup must not be read');
    assert.equal(logsWith(main.logs, 'server connected').length, connectedBefore, 'no server connection');

    const g = await Wire.connect(main.port);
    g.write(Buffer.concat([gssencRequest(), appStartup()]));
    assertFatal(await g.readUntilClose(), '08P01', 'received unencrypted data after GSSAPI encryption request');
  });
});

// ---------------------------------------------------------------- 4-5: direct TLS, openssl

describe('direct TLS and ALPN', () => {
  it('accepts TLS-first with ALPN postgresql and a full login follows', async () => {
    const t = await Wire.connectTls(main.port, clientTls({ ALPNProtocols: ['postgresql'] }));
    try {
      const sock = t.socket as tls.TLSSocket;
      assert.equal(sock.alpnProtocol, 'postgresql');
      assert.equal(sock.authorized, true);
      t.write(appStartup());
      await scramLogin(t, PASSWORD);
      assert.deepEqual(await simpleQuery(t, 'select current_user'), [[APP]]);
    } finally {
      t.close();
    }
    const established = logsWith(main.logs, 'TLS established').at(-1);
    assert.equal(established?.direct, true);
    assert.equal(established?.alpn, 'postgresql');
  });

  it('refuses TLS-first without ALPN with FATAL 08P01 when direct_without_alpn is false', async () => {
    const t = await Wire.connectTls(main.port, clientTls());
    assert.equal((t.socket as tls.TLSSocket).alpnProtocol, false);
    assertFatal(await t.readUntilClose(), '08P01', 'received direct SSL connection request without ALPN protocol negotiation extension');
  });

  it('accepts TLS-first without ALPN when direct_without_alpn is true', async () => {
    await withPostern(config({ tls: { direct_without_alpn: true } }), async (p) => {
      const t = await Wire.connectTls(p.port, clientTls());
      try {
        t.write(appStartup());
        await scramLogin(t, PASSWORD);
        assert.deepEqual(await simpleQuery(t, 'select 1'), [['1']]);
      } finally {
        t.close();
      }
    });
  });

  it('fails the handshake for a wrong ALPN protocol (no_application_protocol alert)', async () => {
    await assert.rejects(Wire.connectTls(main.port, clientTls({ ALPNProtocols: ['http/1.1'] })), (e: NodeJS.ErrnoException) => {
      assert.equal(e.code, 'ERR_SSL_TLSV1_ALERT_NO_APPLICATION_PROTOCOL', e.message);
      return true;
    });
  });

  it('completes openssl s_client -starttls postgres with a verified certificate', async () => {
    const args = ['s_client', '-starttls', 'postgres', '-connect', `${HOST}:${main.port}`, '-servername', 'localhost'];
    const ok = await run('openssl', [...args, '-CAfile', certs.ca.cert, '-verify_return_error', '-verify_hostname', 'localhost'], {
      timeoutMs: 10_000,
    });
    const out = ok.stdout + ok.stderr;
    assert.equal(ok.code, 0, out);
    assert.match(out, /Verify return code: 0 \(ok\)/);
    assert.match(out, /Verification: OK/);
    assert.match(out, /New, TLSv1\.3, Cipher is TLS_/);
    // The same check against an unrelated CA must fail, or the assertion above proves nothing.
    const bad = await run('openssl', [...args, '-CAfile', otherCerts.ca.cert, '-verify_return_error'], { timeoutMs: 10_000 });
    assert.notEqual(bad.code, 0);
    assert.match(bad.stdout + bad.stderr, /unable to get local issuer certificate|certificate verify failed/);
  });
});

// ---------------------------------------------------------------- 6 + 10: hostile input, healthy neighbour

describe('hostile input next to a healthy session', () => {
  let healthy: pg.Client;
  let healthyPid = 0;

  before(async () => {
    healthy = new pg.Client({ host: HOST, port: main.port, user: APP, password: PASSWORD, database: 'appdb', ssl: false });
    await healthy.connect();
    healthyPid = (await healthy.query<{ pid: number }>('select pg_backend_pid() as pid')).rows[0]?.pid ?? 0;
    assert.ok(healthyPid > 0);
    // Sessions of earlier tests may still be on their way out.
    await waitUntil(async () => (await appBackends()) === 1, 5_000, 'only the healthy backend');
  });

  after(async () => {
    await healthy?.end().catch(() => undefined);
  });

  it('closes quietly on startup lengths 3, 7, -1 and 10001', async () => {
    const cases: Array<[number, string]> = [
      [3, 'bad_length'],
      [7, 'bad_length'],
      [-1, 'bad_length'],
      [10_001, 'too_large'],
    ];
    for (const [len, reason] of cases) {
      const before = logsWith(main.logs, 'invalid length of startup packet').length;
      const w = await Wire.connect(main.port);
      w.write(int32(len), int32(PROTOCOL_3_0));
      assertQuietClose(await w.readUntilClose(), `length ${len}`);
      const lines = logsWith(main.logs, 'invalid length of startup packet');
      assert.equal(lines.length, before + 1, `length ${len} logged`);
      assert.equal(lines.at(-1)?.reason, reason);
    }
  });

  it('closes quietly on garbage first bytes (an HTTP request)', async () => {
    const w = await Wire.connect(main.port);
    w.write(Buffer.from('GET / HTTP/1.1\r\n\r\n'));
    assertQuietClose(await w.readUntilClose(), 'HTTP request');
  });

  it('refuses protocol 2.0 with FATAL 0A000', async () => {
    const w = await Wire.connect(main.port);
    w.write(startupMessage({ user: APP, database: 'appdb' }, 2 << 16));
    assertFatal(await w.readUntilClose(), '0A000', 'unsupported frontend protocol 2.0: server supports 3.0 to 3.2');
  });

  it('refuses a startup without user with FATAL 28000', async () => {
    const w = await Wire.connect(main.port);
    w.write(startupMessage({ database: 'appdb' }));
    assertFatal(await w.readUntilClose(), '28000', 'no PostgreSQL user name specified in startup packet');
  });

  it('refuses a startup packet without its final terminator with FATAL 08P01', async () => {
    const w = await Wire.connect(main.port);
    w.write(new Writer().int32(PROTOCOL_3_0).cstring('user').cstring(APP).cstring('database').cstring('appdb').packet());
    assertFatal(await w.readUntilClose(), '08P01', 'invalid startup packet layout: expected terminator as last byte');
  });

  it('refuses an unknown database with FATAL 3D000', async () => {
    const w = await Wire.connect(main.port);
    w.write(appStartup('nope'));
    assertFatal(await w.readUntilClose(), '3D000', 'database "nope" does not exist');
  });

  it('refuses an invalid message type during authentication with FATAL 08P01', async () => {
    const w = await Wire.connect(main.port);
    w.write(appStartup());
    const m = await w.readMessage();
    assert.equal(authCode(m), 10, 'AuthenticationSASL first');
    w.write(messageHeader(0x01, 4));
    assertFatal(await w.readUntilClose(), '08P01', 'invalid frontend message type 1');
  });

  /** Logs in on a raw connection, checks the extra backend, sends `bad`, expects the FATAL and the backend gone. */
  async function afterLogin(bad: Buffer, message: string): Promise<void> {
    const w = await Wire.connect(main.port);
    w.write(appStartup());
    await scramLogin(w, PASSWORD);
    await waitUntil(async () => (await appBackends()) === 2, 3_000, 'the raw session to have its own backend');
    w.write(bad);
    assertFatal(await w.readUntilClose(), '08P01', message);
    await waitUntil(async () => (await appBackends()) === 1, 3_000, 'the server connection to close');
  }

  it('refuses an invalid message type after login with FATAL 08P01 and closes the server side', async () => {
    await afterLogin(messageHeader(0x01, 4), 'invalid frontend message type 1');
  });

  it('refuses a message of length 2 with FATAL 08P01', async () => {
    await afterLogin(messageHeader('Q', 2), 'invalid message length');
  });

  it('refuses a message over limits.max_message_size with FATAL 08P01', async () => {
    // Just the header: a length 1 byte over the 1MB cap must be refused before any body arrives.
    await afterLogin(messageHeader('Q', 1024 * 1024 + 1), 'invalid message length');
  });

  it('accepts a message under the cap on the same Postern (the cap is not too tight)', async () => {
    const w = await Wire.connect(main.port);
    try {
      w.write(appStartup());
      await scramLogin(w, PASSWORD);
      const sql = `select length('${'x'.repeat(512 * 1024)}')`;
      assert.deepEqual(await simpleQuery(w, sql), [[String(512 * 1024)]]);
      w.write(typedMessage('X'));
      assert.equal((await w.readUntilClose()).closed, true);
    } finally {
      w.close();
    }
  });

  it('left the healthy session untouched', async () => {
    const r = await healthy.query<{ pid: number; n: number }>('select pg_backend_pid() as pid, 40 + 2 as n');
    assert.equal(r.rows[0]?.pid, healthyPid, 'same server backend as before');
    assert.equal(r.rows[0]?.n, 42);
    await waitUntil(async () => (await appBackends()) === 1, 3_000, 'only the healthy backend');
  });
});

// ---------------------------------------------------------------- 7: client TLS modes

describe('client TLS modes', () => {
  let requireP: RunningPostern;
  let verifyFull: RunningPostern;
  let verifyCa: RunningPostern;

  before(async () => {
    [requireP, verifyFull, verifyCa] = await Promise.all([
      startPostern(config({ tls: { mode: 'require' } })),
      startPostern(config({ tls: { mode: 'verify-full' } })),
      startPostern(config({ tls: { mode: 'verify-ca' } })),
    ]);
  });

  after(async () => {
    await Promise.all([requireP?.close(), verifyFull?.close(), verifyCa?.close()]);
  });

  it('require: plaintext startup gets FATAL 28000, psql sslmode=require works', async () => {
    const w = await Wire.connect(requireP.port);
    w.write(appStartup());
    assertFatal(
      await w.readUntilClose(),
      '28000',
      `no pg_hba.conf entry for host "${HOST}", user "${APP}", database "appdb", no encryption`,
    );
    const ok = await psql(conninfo(requireP.port, 'sslmode=require'), 'select current_user', { password: PASSWORD });
    assert.equal(ok.code, 0, ok.stderr);
    assert.equal(ok.stdout.trim(), APP);
    const refused = await psql(conninfo(requireP.port, 'sslmode=disable'), 'select 1', { password: PASSWORD });
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /no pg_hba\.conf entry .* no encryption/);
  });

  it('verify-full: psql with a client certificate whose CN is the user works', async () => {
    const info = conninfo(
      verifyFull.port,
      `sslmode=verify-full sslrootcert=${certs.ca.cert} sslcert=${appClientCert.cert} sslkey=${appClientCert.key}`,
    );
    const r = await psql(info, 'select current_user', { password: PASSWORD });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), APP);
  });

  it('verify-full: no client certificate gets FATAL 28000', async () => {
    const w = await Wire.connect(verifyFull.port);
    const t = await w.negotiateTls(clientTls());
    t.write(appStartup());
    assertFatal(await t.readUntilClose(), '28000', 'connection requires a valid client certificate');
  });

  it('verify-full: a certificate for another CN gets FATAL 28000 (CN mismatch)', async () => {
    const w = await Wire.connect(verifyFull.port);
    const t = await w.negotiateTls(clientTls(certOpts(certs.client)));
    t.write(appStartup());
    assertFatal(await t.readUntilClose(), '28000', `certificate validation (clientcert=verify-full) failed for user "${APP}": CN mismatch`);
  });

  it('verify-full: plaintext startup is refused like require', async () => {
    const w = await Wire.connect(verifyFull.port);
    w.write(appStartup());
    assertFatal(await w.readUntilClose(), '28000', /no encryption$/);
  });

  it('verify-ca: a certificate from an unrelated CA is refused, one from the right CA with any CN is accepted', async () => {
    const w = await Wire.connect(verifyCa.port);
    const t = await w.negotiateTls(clientTls(certOpts(otherCerts.client)));
    t.write(appStartup());
    assertFatal(await t.readUntilClose(), '28000', 'connection requires a valid client certificate');

    const w2 = await Wire.connect(verifyCa.port);
    const t2 = await w2.negotiateTls(clientTls(certOpts(certs.client)));
    try {
      t2.write(appStartup());
      await scramLogin(t2, PASSWORD);
      assert.deepEqual(await simpleQuery(t2, 'select current_user'), [[APP]]);
    } finally {
      t2.close();
    }
  });
});

// ---------------------------------------------------------------- 8-9: TLS to the server

describe('TLS to the server', () => {
  let plainCluster: PgCluster;
  let fake: net.Server;
  let fakeReceived: Buffer[] = [];
  let p: RunningPostern;

  before(async () => {
    fake = net.createServer((s) => {
      s.on('error', () => {});
      s.once('data', (d: Buffer) => {
        fakeReceived.push(Buffer.from(d));
        // 'S' and, in the same write, bytes a man in the middle would inject.
        s.write(Buffer.concat([Buffer.from('S'), typedMessage('R', int32(0))]));
        s.on('data', (more: Buffer) => fakeReceived.push(Buffer.from(more)));
      });
    });
    await new Promise<void>((r) => fake.listen(0, HOST, r));
    const fakePort = (fake.address() as net.AddressInfo).port;
    plainCluster = await startPostgres({ users: [{ name: APP, password: PASSWORD }], databases: [{ name: 'appdb', owner: APP }] });
    const tlsDb = (mode: string, extra: Record<string, unknown> = {}) => ({
      host: cluster.host,
      port: cluster.port,
      dbname: 'appdb',
      tls: { mode, ...extra },
    });
    p = await startPostern(
      config({
        databases: {
          vfull: tlsDb('verify-full', { ca: certs.ca.cert, server_name: 'localhost' }),
          wrongca: tlsDb('verify-full', { ca: otherCerts.ca.cert, server_name: 'localhost' }),
          wrongname: tlsDb('verify-full', { ca: certs.ca.cert, server_name: 'db.example.org' }),
          plainrequire: { host: plainCluster.host, port: plainCluster.port, dbname: 'appdb', tls: { mode: 'require' } },
          plainprefer: { host: plainCluster.host, port: plainCluster.port, dbname: 'appdb', tls: { mode: 'prefer' } },
          fake: { host: HOST, port: fakePort, dbname: 'appdb', tls: { mode: 'require' } },
        },
      }),
    );
  });

  after(async () => {
    await p?.close();
    await plainCluster?.stop();
    await new Promise<void>((r) => (fake ? fake.close(() => r()) : r()));
  });

  const info = (db: string, extra: string) => `host=${HOST} port=${p.port} user=${APP} dbname=${db} ${extra}`;

  /** Plaintext startup for `db`; expects FATAL 08006 and returns the newest 'cannot connect to server' log line. */
  async function refusedUpstream(db: string): Promise<{ line: Record<string, unknown> }> {
    const before = logsWith(p.logs, 'cannot connect to server').length;
    const w = await Wire.connect(p.port);
    w.write(appStartup(db));
    assertFatal(await w.readUntilClose(), '08006', `could not connect to the server for database "${db}"`);
    const lines = logsWith(p.logs, 'cannot connect to server');
    assert.equal(lines.length, before + 1);
    return { line: lines.at(-1) as Record<string, unknown> };
  }

  it('verify-full with the right CA: the session runs over TLS to the server', async () => {
    const r = await psql(
      info('vfull', 'sslmode=require channel_binding=disable'),
      'select ssl from pg_stat_ssl where pid = pg_backend_pid()',
      {
        password: PASSWORD,
      },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 't');
    // Postern offers the client only what it can relay: no -PLUS mechanism.
    const w = await Wire.connect(p.port);
    try {
      w.write(appStartup('vfull'));
      assert.deepEqual(saslMechanisms(await w.readMessage()), ['SCRAM-SHA-256']);
    } finally {
      w.close();
    }
  });

  it('verify-full with an unrelated CA: FATAL 08006, the log says the certificate was rejected', async () => {
    const { line } = await refusedUpstream('wrongca');
    assert.equal(line.err, 'ERR_SERVER_CERT');
    assert.match(String(line.detail), /^server certificate rejected: self-signed certificate in certificate chain/);
  });

  it('verify-full with a wrong server_name: FATAL 08006', async () => {
    const { line } = await refusedUpstream('wrongname');
    assert.equal(line.err, 'ERR_SERVER_CERT');
    assert.match(String(line.detail), /^server certificate rejected: .*db\.example\.org/);
  });

  it('require against a server without TLS: FATAL 08006', async () => {
    const { line } = await refusedUpstream('plainrequire');
    assert.equal(line.err, 'ERR_SERVER_NO_TLS');
    assert.match(String(line.detail), /server does not support TLS/);
  });

  it('prefer against a server without TLS: works in plaintext', async () => {
    const r = await psql(info('plainprefer', 'sslmode=require'), 'select ssl from pg_stat_ssl where pid = pg_backend_pid()', {
      password: PASSWORD,
    });
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout.trim(), 'f');
  });

  it('a server that sends bytes after its S is refused (CVE-2021-23222): FATAL 08006', async () => {
    fakeReceived = [];
    const { line } = await refusedUpstream('fake');
    assert.equal(line.err, 'ERR_SERVER_SSL_INJECTION');
    assert.match(String(line.detail), /unexpected bytes after its SSL response/);
    // Postern sent its SSLRequest and nothing else: no startup in plaintext.
    await new Promise((r) => setTimeout(r, 50));
    const got = Buffer.concat(fakeReceived);
    assert.equal(got.length, 8, `fake server received ${got.length} bytes`);
    assert.equal(got.readInt32BE(4), REQUEST_CODE.SSL);
  });

  it('relayed SCRAM with channel_binding=prefer over TLS on both legs: FATAL 28000 that names the fix', async () => {
    // libpq's own behaviour, end to end.
    const r = await psql(info('vfull', 'sslmode=require'), 'select 1', { password: PASSWORD });
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /SCRAM authentication cannot be relayed/);
    assert.match(r.stderr, /DETAIL: .*channel_binding=disable/);

    // The same on the wire, for the exact SQLSTATE and fields.
    const w = await Wire.connect(p.port);
    const t = await w.negotiateTls(clientTls());
    t.write(appStartup('vfull'));
    assert.deepEqual(saslMechanisms(await t.readMessage()), ['SCRAM-SHA-256']);
    t.write(encodeSaslInitial('SCRAM-SHA-256', Buffer.from('y,,n=,r=abcdefghijklmnopqrstuvwx')));
    const e = assertFatal(
      await t.readUntilClose(),
      '28000',
      'SCRAM authentication cannot be relayed: the client supports channel binding and the server link uses TLS',
    );
    assert.match(e.detail ?? '', /channel_binding=disable/);
    assert.match(e.detail ?? '', /databases\.vfull\.tls\.mode/);
  });
});

// ---------------------------------------------------------------- 11: login timeout

describe('login timeout', () => {
  let p: RunningPostern;

  before(async () => {
    p = await startPostern(config({ limits: { client_login_timeout: '300ms' } }));
  });

  after(async () => {
    await p?.close();
  });

  it('closes a silent client quietly', async () => {
    const t0 = Date.now();
    const w = await Wire.connect(p.port);
    const r = await w.readUntilClose(5_000);
    const ms = Date.now() - t0;
    assertQuietClose(r, 'silent client');
    assert.ok(ms >= 250 && ms < 3_000, `closed after ${ms}ms`);
  });

  it('closes a client stuck in the TLS handshake quietly', async () => {
    const w = await Wire.connect(p.port);
    w.write(sslRequest());
    assert.equal((await w.readBytes(1)).toString('latin1'), 'S');
    assertQuietClose(await w.readUntilClose(5_000), 'stalled handshake');
  });

  it('ends a client that never answers the password request with FATAL 57014', async () => {
    const t0 = Date.now();
    const w = await Wire.connect(p.port);
    w.write(appStartup());
    const r = await w.readUntilClose(5_000);
    const ms = Date.now() - t0;
    assert.equal(r.closed, true, describeBytes(r.data));
    const { messages, rest } = parseMessages(r.data);
    assert.equal(rest.length, 0);
    assert.deepEqual(
      messages.map((m) => m.type),
      ['R', 'E'],
      describeBytes(r.data),
    );
    const [auth, error] = messages as [BackendMessage, BackendMessage];
    assert.equal(authCode(auth), 10);
    const e = errorFields(error);
    assert.equal(e.severity, 'FATAL');
    assert.equal(e.code, '57014');
    assert.equal(e.message, 'canceling authentication due to timeout');
    assert.ok(ms >= 250 && ms < 3_000, `closed after ${ms}ms`);
  });
});
