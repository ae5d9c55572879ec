// `postern demo` (what `npm start` runs): a throwaway PostgreSQL found on this
// machine, a generated CA and server certificate, and Postern in front with
// TLS, then a psql command line (sslmode=verify-full) that works as printed.
// The demo password lives in a generated pgpass file, so nothing secret is
// printed. Ctrl-C stops everything and removes the temp folder.

import { randomBytes } from 'node:crypto';
import { chmodSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { validateConfig } from '../config/load.ts';
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
  const loaded = validateConfig(
    {
      listen: { host: '127.0.0.1', port },
      tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert, mode: 'allow' },
      // The demo server is on loopback next to Postern, so the server link stays plaintext.
      databases: { appdb: { host: cluster.host, port: cluster.port, tls: { mode: 'disable' } } },
      log: { level: 'info' },
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
  say('Inside psql, \\conninfo shows the TLS connection. Press Ctrl-C here to stop and clean up.');

  await new Promise<void>((resolve) => {
    process.once('SIGINT', () => resolve());
    process.once('SIGTERM', () => resolve());
  });
  say('postern demo: stopping ...');
  await postern.shutdown(2000);
  await cluster.stop();
  rmSync(dir, { recursive: true, force: true });
  return 0;
}
