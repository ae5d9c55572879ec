// Runs the authentication example end to end: a throwaway PostgreSQL whose
// roles carry the same SCRAM verifiers as users.txt, certificates in certs/,
// the real `postern --config` on postern.yaml, and one psql login per method.
// Needs `npm run build` first (it uses dist/). Prints each command and result.
import { spawn, spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { generateCerts, issueCert } from '../../dist/dev/certs.js';
import { freePort, startPostgres } from '../../dist/dev/cluster.js';

const here = dirname(fileURLToPath(import.meta.url));
const certDir = join(here, 'certs');
rmSync(certDir, { recursive: true, force: true });
mkdirSync(certDir);
const certs = await generateCerts(certDir);
const laptop = await issueCert(certs.ca, join(certDir, 'reporter-laptop'), { cn: 'reporter-laptop', usage: 'client' });
const cluster = await startPostgres({
  tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
  databases: [{ name: 'appdb' }],
  hba: ['hostssl all all 127.0.0.1/32 scram-sha-256', 'host all all 127.0.0.1/32 scram-sha-256'],
});
let postern;
const out = (s) => process.stdout.write(`${s}\n`);
try {
  // The server's roles hold the very verifiers of users.txt: Postern can then log in for the client.
  const verifiers = new Map([...readFileSync(join(here, 'users.txt'), 'utf8').matchAll(/^"([^"]+)" "([^"]+)"$/gm)].map((m) => [m[1], m[2]]));
  for (const [user, v] of verifiers) await cluster.psql(`create role ${user} login password '${v}'`);
  await cluster.psql(`create role app_ro login password 'change-me-app-ro'; create role legacy login password 'legacy-pw'`);
  await cluster.psql('grant all on database appdb to app');

  const port = await freePort();
  const yaml = readFileSync(join(here, 'postern.yaml'), 'utf8')
    .replace('port: 6432', `port: ${port}`)
    .replace('port: 5432', `port: ${cluster.port}`);
  const config = join(here, 'postern.run.yaml');
  writeFileSync(config, yaml);
  const main = join(here, '..', '..', 'dist', 'main.js');
  const check = spawnSync(process.execPath, [main, 'check', '--config', config], { encoding: 'utf8' });
  out(`$ postern check --config postern.yaml\n${check.stdout}${check.stderr}`);
  postern = spawn(process.execPath, [main, '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve) => postern.stdout.on('data', (d) => d.includes('"listening"') && resolve()));

  const env = { ...process.env, PGPASSFILE: '/nonexistent', PGCONNECT_TIMEOUT: '10' };
  const base = `host=localhost port=${port} dbname=appdb sslrootcert=${certs.ca.cert}`;
  const tries = [
    ['scram-sha-256, TLS with channel binding (SCRAM-SHA-256-PLUS)', `${base} user=app sslmode=verify-full channel_binding=require`, 'change-me-app'],
    ['scram-sha-256 over plaintext', `${base} user=app sslmode=disable`, 'change-me-app'],
    ['scram-sha-256-plus rule', `${base} user=alice sslmode=verify-full channel_binding=require`, 'change-me-alice'],
    ['cert with an ident map (CN reporter-laptop -> reporter -> server role app_ro)', `${base} user=reporter sslmode=verify-full sslcert=${laptop.cert} sslkey=${laptop.key}`, ''],
    ['passthrough: the server checks the password', `${base} user=legacy sslmode=disable`, 'legacy-pw'],
    ['wrong password', `${base} user=app sslmode=require`, 'wrong'],
    ['reject line', `${base} user=mallory sslmode=disable`, 'x'],
  ];
  for (const [what, conninfo, password] of tries) {
    const r = spawnSync('psql', ['-X', '-A', '-t', '-c', "select 'logged in as ' || current_user", conninfo], { env: { ...env, PGPASSWORD: password }, encoding: 'utf8' });
    out(`# ${what}\n$ psql "${conninfo.replaceAll(certDir, 'certs')}"\n${(r.stdout + r.stderr).trim()}\n`);
  }
} finally {
  postern?.kill('SIGTERM');
  await cluster.stop();
  rmSync(join(here, 'postern.run.yaml'), { force: true });
  rmSync(certDir, { recursive: true, force: true });
}
