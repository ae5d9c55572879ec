// Runs the tenants example end to end: two throwaway PostgreSQL clusters
// (A plaintext; B with TLS and a certificate for vault.example.test from a CA
// of its own), certificates for each name in certs/, the real
// `postern --config` on postern.yaml, then psql with `host=<name>
// hostaddr=127.0.0.1` so libpq sends each name as SNI: which cluster each
// tenant reaches, the certificate each name gets, a passthrough session the
// client verifies against the server's own CA, a client with no SNI, and a
// certificate replaced on disk and reloaded by SIGHUP while a session stays open.
// Needs `npm run build` first (it uses dist/). Prints each command and result.
import { spawn, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { dirname, join } from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { generateCerts, issueCert } from '../../dist/dev/certs.js';
import { freePort, startPostgres } from '../../dist/dev/cluster.js';

const here = dirname(fileURLToPath(import.meta.url));
const certDir = join(here, 'certs');
const config = join(here, 'postern.run.yaml');
const out = (s) => process.stdout.write(`${s}\n`);
rmSync(certDir, { recursive: true, force: true });
mkdirSync(certDir);
// Postern's CA (the default certificate is localhost's) and, apart, the vault server's own CA.
const [mine, vault] = await Promise.all([
  generateCerts(join(certDir, 'postern')),
  generateCerts(join(certDir, 'vault'), { serverNames: ['vault.example.test'] }),
]);
const acmeNames = ['acme.example.test', '*.acme.example.test'];
await issueCert(mine.ca, join(certDir, 'acme'), { cn: 'acme.example.test', sans: acmeNames, usage: 'server' });
await issueCert(mine.ca, join(certDir, 'globex'), { cn: 'globex.example.test', sans: ['globex.example.test'], usage: 'server' });

const users = [{ name: 'app', password: 'replaced-by-the-verifier' }];
const databases = [{ name: 'appdb', owner: 'app' }];
const [a, b] = await Promise.all([
  startPostgres({ users, databases, hba: ['host all all 127.0.0.1/32 scram-sha-256'] }),
  startPostgres({
    users,
    databases,
    tls: { cert: vault.server.cert, key: vault.server.key, ca: vault.ca.cert },
    hba: ['hostssl all all 127.0.0.1/32 scram-sha-256'],
  }),
]);
let postern;
try {
  // The clusters' role holds the verifier of users.txt: Postern logs in for the clients it authenticates.
  const verifier = /^"app" "([^"]+)"$/m.exec(readFileSync(join(here, 'users.txt'), 'utf8'))[1];
  for (const c of [a, b]) await c.psql(`alter role app password '${verifier}'`);
  const port = await freePort();
  const yaml = readFileSync(join(here, 'postern.yaml'), 'utf8')
    .replace('port: 6432', `port: ${port}`)
    .replace('port: 5433', `port: ${a.port}`)
    .replaceAll('port: 5434', `port: ${b.port}`)
    .replaceAll('certs/', `${certDir}/`)
    .replace('hba_file: hba.conf', `hba_file: ${join(here, 'hba.conf')}`)
    .replace('users_file: users.txt', `users_file: ${join(here, 'users.txt')}`);
  writeFileSync(config, yaml);
  const main = join(here, '..', '..', 'dist', 'main.js');
  postern = spawn(process.execPath, [main, '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
  let logs = '';
  postern.stdout.on('data', (d) => {
    logs += d;
  });
  await waitFor(() => logs.includes('"listening"'));

  const cluster = new Map([
    [String(a.port), 'cluster A'],
    [String(b.port), 'cluster B'],
  ]);
  const env = { ...process.env, PGPASSFILE: '/nonexistent', PGCONNECT_TIMEOUT: '10', PGPASSWORD: 'change-me-app' };
  const conninfo = (name, root, extra = '', db = 'app') =>
    `host=${name} hostaddr=127.0.0.1 port=${port} dbname=${db} user=app sslmode=verify-full sslrootcert=${root} ${extra}`.trim();
  const short = (s) => s.replaceAll(`${certDir}/`, 'certs/').replaceAll(String(port), '6432');
  const show = (title, info, sql) => {
    const r = spawnSync('psql', ['-X', '-A', '-t', '-c', sql, info], { env, encoding: 'utf8' });
    const answer = short(r.stdout + r.stderr)
      .trim()
      .split('\n')
      .map((l) => l.replace(/^\d+/, (p) => cluster.get(p) ?? p))
      .join('\n');
    out(`# ${title}\n$ psql "${short(info)}" -c "${sql}"\n${answer}\n`);
  };
  // inet_server_port() names the cluster; pg_stat_ssl says whether the server itself sees TLS.
  const where = "select inet_server_port() || ', TLS at the server: ' || ssl from pg_stat_ssl where pid = pg_backend_pid()";
  show('acme.example.test: tenant acme', conninfo('acme.example.test', mine.ca.cert, 'channel_binding=require'), where);
  show('eu.acme.example.test: the wildcard, tenant acme', conninfo('eu.acme.example.test', mine.ca.cert), where);
  show('globex.example.test: the same database name, another cluster', conninfo('globex.example.test', mine.ca.cert, 'channel_binding=require'), where);
  show(
    // No database mapping in passthrough: the server's own database name.
    "vault.example.test: passed through, verified against the server's own CA",
    conninfo('vault.example.test', vault.ca.cert, 'channel_binding=require', 'appdb'),
    where,
  );
  show("vault.example.test against Postern's CA: refused, the certificate is the server's", conninfo('vault.example.test', mine.ca.cert, '', 'appdb'), where);
  show(
    'no SNI (an IP address): no top-level databases',
    `host=127.0.0.1 port=${port} dbname=app user=app sslmode=require`,
    'select 1',
  );

  const names = ['acme.example.test', 'x.acme.example.test', 'globex.example.test', 'other.example.test'];
  const subjects = [];
  for (const n of names) subjects.push(`${n} -> ${(await presented(port, n)).subject}`);
  out(`# the certificate each name gets (exact, wildcard, the default)\n${subjects.join('\n')}\n`);

  // A new certificate for acme on disk, SIGHUP: the next client gets it; an open session carries on.
  const open = spawn('psql', ['-X', '-A', '-t', conninfo('acme.example.test', mine.ca.cert)], { env, stdio: ['pipe', 'pipe', 'pipe'] });
  let session = '';
  open.stdout.on('data', (d) => {
    session += d;
  });
  open.stdin.write("select 'open session, before the reload';\n");
  await waitFor(() => session.includes('before the reload'));
  const before = (await presented(port, 'acme.example.test')).serialNumber;
  const next = await issueCert(mine.ca, join(certDir, 'acme-2'), { cn: 'acme.example.test', sans: acmeNames, usage: 'server' });
  copyFileSync(next.cert, join(certDir, 'acme.crt'));
  copyFileSync(next.key, join(certDir, 'acme.key'));
  const reloads = logs.split('"reloaded"').length;
  postern.kill('SIGHUP');
  await waitFor(() => logs.split('"reloaded"').length > reloads);
  const after = (await presented(port, 'acme.example.test')).serialNumber;
  open.stdin.write("select 'open session, after the reload';\n\\q\n");
  await new Promise((r) => open.once('close', r));
  out(
    `# after a new certificate for acme and SIGHUP\nserial before: ${before}\nserial after:  ${after} (${before === after ? 'unchanged' : 'replaced'}, the new file)\n${session.trim()}\n`,
  );
  show('a new client of acme verifies the new certificate', conninfo('acme.example.test', mine.ca.cert, 'channel_binding=require'), where);
} finally {
  postern?.kill('SIGTERM');
  await Promise.all([a.stop(), b.stop()]);
  rmSync(config, { force: true });
  rmSync(certDir, { recursive: true, force: true });
}

/** SSLRequest, then a TLS handshake with `servername`: the certificate Postern presented. */
function presented(port, servername) {
  return new Promise((resolve, reject) => {
    const raw = net.connect({ host: '127.0.0.1', port });
    raw.once('connect', () => raw.write(Buffer.from([0, 0, 0, 8, 4, 210, 22, 47])));
    raw.once('error', reject);
    raw.once('data', (d) => {
      if (d.toString() !== 'S') {
        reject(new Error(`SSL response ${d}`));
        return;
      }
      const s = tls.connect({ socket: raw, servername, rejectUnauthorized: false });
      s.once('secureConnect', () => {
        const cert = s.getPeerX509Certificate();
        s.destroy();
        if (cert === undefined) reject(new Error('no certificate'));
        else resolve(cert);
      });
      s.once('error', reject);
    });
  });
}

async function waitFor(fn, ms = 15_000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}
