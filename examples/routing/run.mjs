// Runs the routing example end to end: a throwaway primary and two streaming
// standbys (pg_basebackup -R), the real `postern --config` on postern.yaml,
// then psql through Postern: where reads, writes and blocks land, SHOW
// HOSTS, a SIGHUP that adds a database, and a failover (the primary stops,
// a standby is promoted, writes follow with no restart).
// Needs `npm run build` first (it uses dist/). Prints each command and result.
import { spawn, spawnSync } from 'node:child_process';
import { readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort, startPostgres, startStandby } from '../../dist/dev/cluster.js';

const here = dirname(fileURLToPath(import.meta.url));
const out = (s) => process.stdout.write(`${s}\n`);
const primary = await startPostgres({ users: [{ name: 'app', password: 'change-me-app' }], databases: [{ name: 'appdb', owner: 'app' }] });
let s1;
let s2;
let postern;
const config = join(here, 'postern.run.yaml');
try {
  await primary.psql('create table notes (id serial primary key, body text)', { db: 'appdb' });
  await primary.psql('alter table notes owner to app', { db: 'appdb' });
  s1 = await startStandby(primary);
  s2 = await startStandby(primary);
  const port = await freePort();
  const yaml = readFileSync(join(here, 'postern.yaml'), 'utf8')
    .replace('port: 6432', `port: ${port}`)
    .replaceAll('127.0.0.1:5432', `127.0.0.1:${primary.port}`)
    .replaceAll('127.0.0.1:5433', `127.0.0.1:${s1.port}`)
    .replaceAll('127.0.0.1:5434', `127.0.0.1:${s2.port}`)
    .replace('change-me-superuser', primary.superuserPassword)
    .replace('hba_file: hba.conf', `hba_file: ${join(here, 'hba.conf')}`);
  writeFileSync(config, yaml);
  const main = join(here, '..', '..', 'dist', 'main.js');
  postern = spawn(process.execPath, [main, '--config', config], { stdio: ['ignore', 'pipe', 'inherit'] });
  let logs = '';
  postern.stdout.on('data', (d) => {
    logs += d;
  });
  await waitFor(() => logs.includes('"listening"'));
  const name = new Map([
    [String(primary.port), 'primary'],
    [String(s1.port), 'standby 1'],
    [String(s2.port), 'standby 2'],
  ]);
  const env = { ...process.env, PGPASSFILE: '/nonexistent', PGCONNECT_TIMEOUT: '10', PGHOST: '127.0.0.1', PGPORT: String(port), PGUSER: 'app' };
  const psql = (db, sql) => {
    const r = spawnSync('psql', ['-X', '-A', '-t', '-d', db, '-c', sql], { env, encoding: 'utf8' });
    return (r.stdout + r.stderr).trim();
  };
  const where = (db, sql) => {
    const r = psql(db, sql);
    return r
      .split('\n')
      .map((l) => name.get(l.trim()) ?? l)
      .join(', ');
  };
  // The first checks find each server's role.
  await waitFor(() => psql('postern', 'SHOW HOSTS').split('\n').filter((l) => /\|(primary|standby)\|up\|/.test(l)).length === 9, 20_000);
  const show = (title, db, sql) => out(`# ${title}\n$ psql -d ${db} -c "${sql}"\n${where(db, sql)}\n`);
  show('a read on app goes to a standby', 'app', 'select inet_server_port()');
  show('another read, the other standby', 'app', 'select inet_server_port()');
  show('a write on app goes to the primary', 'app', "insert into notes (body) values ('hello') returning inet_server_port()");
  show('a BEGIN block on app goes to the primary', 'app', 'begin; select inet_server_port(); commit');
  show('a READ ONLY block on app goes to a standby', 'app', 'begin read only; select inet_server_port(); commit');
  show('app_rw: the primary', 'app_rw', 'select inet_server_port()');
  show('app_ro: a standby', 'app_ro', 'select inet_server_port()');
  out(`# SHOW HOSTS (database|host|port|role|state|read_only|lag_bytes|...)\n${psql('postern', 'SHOW HOSTS').split('\n').filter((l) => l.startsWith('app_rw|')).join('\n')}\n`);

  // SIGHUP: a database added to the file is served at once.
  writeFileSync(config, `${readFileSync(config, 'utf8')}  reports:\n    dbname: appdb\n    host: 127.0.0.1\n    port: ${primary.port}\n    server_password: change-me-app\n`);
  postern.kill('SIGHUP');
  await waitFor(() => logs.includes('"reloaded"'));
  show('after SIGHUP, the added database reports', 'reports', 'select current_database()');

  // Failover: stop the primary, promote standby 1; writes through app_rw follow.
  await primary.stop();
  await s1.promote();
  const t0 = Date.now();
  let landed = '';
  await waitFor(() => {
    landed = where('app_rw', "insert into notes (body) values ('after failover') returning inet_server_port()");
    return landed.startsWith('standby 1');
  }, 30_000).catch((e) => {
    throw new Error(`${e.message}: last answer ${landed}`);
  });
  out(`# failover: the primary stopped, standby 1 promoted\nwrites through app_rw land on: ${landed.split(',')[0]} (${Math.round((Date.now() - t0) / 100) / 10} s after the promotion, no restart)\n`);
} finally {
  postern?.kill('SIGTERM');
  await s2?.stop();
  await s1?.stop();
  await primary.stop();
  rmSync(config, { force: true });
}

async function waitFor(fn, ms = 15_000) {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}
