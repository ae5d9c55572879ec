// Tests of the dev kit itself (src/dev): generated certificates are accepted by
// Node's tls and by libpq, and a throwaway cluster starts with TLS and SCRAM,
// authenticates correctly and is really gone after stop().

import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import type { ConnectionOptions, TlsOptions } from 'node:tls';
import { createServer as createTlsServer, connect as tlsConnect } from 'node:tls';
import { promisify } from 'node:util';
import { type CertSet, generateCerts } from '../../src/dev/certs.ts';
import { type PgCluster, startPostgres } from '../../src/dev/cluster.ts';

const execFileAsync = promisify(execFile);

const APP_USER = 'app_user';
const APP_PASSWORD = 's3cret-\'quoted"';

let workDir = '';
let certs: CertSet;
let otherCerts: CertSet;
let cluster: PgCluster | undefined;

before(async () => {
  workDir = await mkdtemp(join(tmpdir(), 'postern-devkit-test-'));
  [certs, otherCerts] = await Promise.all([
    generateCerts(join(workDir, 'certs'), { withIntermediate: true }),
    generateCerts(join(workDir, 'other')),
  ]);
  cluster = await startPostgres({
    tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
    auth: 'scram-sha-256',
    users: [{ name: APP_USER, password: APP_PASSWORD }],
    databases: [{ name: 'appdb', owner: APP_USER }],
  });
});

after(async () => {
  await cluster?.stop();
  if (workDir) await rm(workDir, { recursive: true, force: true });
});

/** Completes a TLS handshake against a throwaway Node server; rejects when the client refuses it. */
async function handshake(server: TlsOptions, client: ConnectionOptions): Promise<void> {
  const srv = createTlsServer(server, (s) => s.end());
  srv.on('tlsClientError', () => undefined);
  await new Promise<void>((done) => srv.listen(0, '127.0.0.1', done));
  const address = srv.address();
  const port = typeof address === 'object' && address ? address.port : 0;
  try {
    await new Promise<void>((done, fail) => {
      const sock = tlsConnect({ port, host: '127.0.0.1', ...client }, () => {
        sock.end();
        done();
      });
      sock.on('error', fail);
    });
  } finally {
    srv.close();
  }
}

describe('generateCerts', () => {
  it('writes private keys with mode 0600', async () => {
    for (const pair of [certs.ca, certs.server, certs.client]) {
      assert.equal((await stat(pair.key)).mode & 0o777, 0o600);
    }
  });

  it('server cert passes Node verify-full for localhost and 127.0.0.1', async () => {
    const server = await readPair(certs.server);
    await handshake(server, { ca: await read(certs.ca.cert), servername: 'localhost' });
    // No servername: Node checks the IP SAN against the connect host.
    await handshake(server, { ca: await read(certs.ca.cert) });
  });

  it('server cert is rejected for a foreign CA and a wrong host name', async () => {
    const server = await readPair(certs.server);
    await assert.rejects(handshake(server, { ca: await read(otherCerts.ca.cert), servername: 'localhost' }));
    await assert.rejects(handshake(server, { ca: await read(certs.ca.cert), servername: 'example.com' }));
  });

  it('intermediate chain verifies against the root only', async () => {
    const inter = certs.intermediate;
    assert.ok(inter);
    const server = { cert: await read(inter.chain), key: await read(inter.server.key) };
    await handshake(server, { ca: await read(certs.ca.cert), servername: 'localhost' });
    // Leaf alone (no intermediate sent) must not verify: proves the chain file matters.
    const leafOnly = await readPair(inter.server);
    await assert.rejects(handshake(leafOnly, { ca: await read(certs.ca.cert), servername: 'localhost' }));
  });

  it('client cert is accepted by a server that requires one', async () => {
    const server: TlsOptions = {
      ...(await readPair(certs.server)),
      ca: await read(certs.ca.cert),
      requestCert: true,
      rejectUnauthorized: true,
    };
    await handshake(server, {
      ca: await read(certs.ca.cert),
      servername: 'localhost',
      ...(await readPair(certs.client)),
    });
  });
});

describe('startPostgres', () => {
  it('answers select version() through cluster.psql', async () => {
    assert.ok(cluster);
    const version = await cluster.psql('select version()');
    assert.match(version, /^PostgreSQL \d+/);
    assert.ok(cluster.version >= 10);
    assert.equal(await cluster.psql('select current_database()', { db: 'appdb', user: APP_USER, password: APP_PASSWORD }), 'appdb');
  });

  it('accepts a password user over TLS with sslmode=verify-full', async () => {
    assert.ok(cluster);
    const out = await psqlConninfo(
      cluster,
      `host=localhost port=${cluster.port} dbname=postgres sslmode=verify-full sslrootcert=${certs.ca.cert}`,
      APP_PASSWORD,
    );
    assert.equal(out, 't');
  });

  it('refuses a wrong password', async () => {
    assert.ok(cluster);
    await assert.rejects(
      psqlConninfo(
        cluster,
        `host=localhost port=${cluster.port} dbname=postgres sslmode=verify-full sslrootcert=${certs.ca.cert}`,
        'wrong-password',
      ),
      /password authentication failed/,
    );
    await assert.rejects(cluster.psql('select 1', { user: 'postgres', password: 'nope' }), /password authentication failed/);
  });

  it('stop() shuts the server down, removes its files and is idempotent', async () => {
    assert.ok(cluster);
    const { port, dataDir } = cluster;
    await cluster.stop();
    await cluster.stop();
    assert.equal(existsSync(dataDir), false);
    await assert.rejects(tcpConnect(port), { code: 'ECONNREFUSED' });
  });
});

async function psqlConninfo(c: PgCluster, conninfo: string, password: string): Promise<string> {
  const psql = existsSync(join(c.binDir, 'psql')) ? join(c.binDir, 'psql') : 'psql';
  try {
    const { stdout } = await execFileAsync(
      psql,
      ['-X', '-A', '-t', '-w', '-c', 'select ssl from pg_stat_ssl where pid = pg_backend_pid()', conninfo],
      { env: c.env({ PGUSER: APP_USER, PGPASSWORD: password, PGSSLMODE: 'require' }) },
    );
    return stdout.trim();
  } catch (err) {
    throw new Error((err as { stderr?: string }).stderr ?? String(err));
  }
}

function tcpConnect(port: number): Promise<void> {
  return new Promise((done, fail) => {
    const sock = netConnect(port, '127.0.0.1', () => {
      sock.destroy();
      done();
    });
    sock.on('error', fail);
  });
}

function read(path: string): Promise<Buffer> {
  return readFile(path);
}

async function readPair(pair: { cert: string; key: string }): Promise<{ cert: Buffer; key: Buffer }> {
  return { cert: await read(pair.cert), key: await read(pair.key) };
}
