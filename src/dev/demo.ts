// `postern demo` (what `npm start` runs): a throwaway PostgreSQL found on this
// machine, a generated CA and server certificate, and Postern in front with
// TLS, then a psql command line (sslmode=verify-full) that works as printed,
// and the live dashboard on admin.listen with a little traffic of its own
// (a few connections through Postern running small queries), so the page has
// something to show. The database password lives in a generated pgpass file;
// the only password printed is the throwaway dashboard login's. Ctrl-C stops
// everything and removes the temp folder.

import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { formatVerifier, makeVerifier } from '../auth/scram.ts';
import { ServerConn } from '../backend/server-conn.ts';
import { validateConfig } from '../config/load.ts';
import { routingOf } from '../routing/router.ts';
import { Postern } from '../server.ts';
import { generateCerts } from './certs.ts';
import { startPostgres } from './cluster.ts';

function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '127.0.0.1', port }, () => s.close(() => resolve(true)));
  });
}

export async function runDemo(requestedPort?: number): Promise<number> {
  const dir = mkdtempSync(join(tmpdir(), 'postern-demo-'));
  const say = (s: string) => process.stdout.write(`${s}\n`);
  say('postern demo: generating a CA and a server certificate for localhost ...');
  const certs = await generateCerts(dir);
  const password = randomBytes(12).toString('base64url');
  say('postern demo: starting a throwaway PostgreSQL ...');
  const cluster = await startPostgres({
    auth: 'scram-sha-256',
    users: [{ name: 'app', password }],
    databases: [{ name: 'appdb', owner: 'app' }],
  });
  let port = requestedPort ?? 6432;
  if (!(await portFree(port))) port = 0;
  const adminPort = (await portFree(9187)) ? 9187 : 0;
  // The dashboard login: an admin.users role in a users file, stored as a SCRAM verifier.
  const adminPassword = randomBytes(9).toString('base64url');
  const usersFile = join(dir, 'users.txt');
  writeFileSync(usersFile, `"admin" "${formatVerifier(await makeVerifier(adminPassword))}"\n`, { mode: 0o600 });
  const loaded = validateConfig(
    {
      listen: { host: '127.0.0.1', port },
      tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert, mode: 'allow' },
      // The demo server is on loopback next to Postern, so the server link stays plaintext.
      databases: { appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'disable' } } },
      log: { level: 'info' },
      auth: { users_file: usersFile },
      admin: { listen: `127.0.0.1:${adminPort}`, users: ['admin'] },
    },
    dir,
  );
  if (!loaded.ok) throw new Error(loaded.problems.map((p) => `${p.path}: ${p.message}`).join('; '));
  const postern = new Postern(loaded.config, { logger: pino({ level: 'info', base: { name: 'postern' } }, pino.destination(2)) });
  const addr = await postern.listen();
  const pgpass = join(dir, 'pgpass');
  writeFileSync(pgpass, `localhost:${addr.port}:appdb:app:${password}\n`);
  chmodSync(pgpass, 0o600);

  say('');
  say(`Postern ${addr.host}:${addr.port} -> PostgreSQL ${cluster.version} at ${cluster.host}:${cluster.port} (database appdb, user app)`);
  say('Connect through Postern with TLS, checking its certificate against the generated CA:');
  say('');
  say(
    `  PGPASSFILE=${pgpass} psql "host=localhost port=${addr.port} dbname=appdb user=app sslmode=verify-full sslrootcert=${certs.ca.cert}"`,
  );
  say('');
  say('Inside psql, \\conninfo shows the TLS connection.');
  say('');
  say(`Live dashboard: http://127.0.0.1:${postern.adminPort}/  (login: admin / ${adminPassword})`);
  say('A little demo traffic runs through Postern meanwhile. Press Ctrl-C here to stop and clean up.');
  const traffic = demoTraffic(postern, addr.port, password);

  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  say('postern demo: stopping ...');
  traffic.stop();
  await postern.shutdown(2000);
  await cluster.stop();
  rmSync(dir, { recursive: true, force: true });
  return 0;
}

/**
 * A few clients through Postern (Postern's own client code) running small
 * queries at a gentle, varying pace, with an occasional error, so the
 * dashboard of the demo shows live traffic.
 */
function demoTraffic(postern: Postern, port: number, password: string): { stop(): void } {
  let stopped = false;
  const log = postern.log.child({ demo: 'traffic' });
  // The demo database's own target (plaintext link settings), pointed at Postern's client port.
  const server = routingOf(postern.ctx).targetFor('appdb');
  if (server === null) return { stop: () => {} };
  const target = { ...server, host: '127.0.0.1', port };
  const queries = [
    'SELECT count(*) FROM pg_class',
    'SELECT now()',
    "SELECT relname FROM pg_class WHERE relkind = 'r' LIMIT 5",
    'SELECT pg_sleep(0.02)',
    'SELECT 1/0',
  ];
  const conns: ServerConn[] = [];
  const worker = async (n: number): Promise<void> => {
    while (!stopped) {
      const conn = new ServerConn(target, 'app', log);
      conns.push(conn);
      try {
        await conn.login({ password }, [['application_name', `demo-${n}`]], 1 << 20);
        for (let i = 0; i < 200 && !stopped; i++) {
          const q = queries[Math.floor(Math.random() * (i % 50 === 49 ? queries.length : queries.length - 1))] as string;
          await conn.query(q, []).catch(() => {});
          await new Promise((r) => setTimeout(r, 20 + Math.random() * 120));
        }
      } catch (e) {
        if (!stopped) log.warn({ err: (e as Error).message }, 'demo traffic: cannot connect; retrying');
        await new Promise((r) => setTimeout(r, 1000));
      } finally {
        conn.close();
        conns.splice(conns.indexOf(conn), 1);
      }
    }
  };
  for (let n = 0; n < 3; n++) void worker(n);
  return {
    stop: () => {
      stopped = true;
      for (const c of conns) c.close();
    },
  };
}
