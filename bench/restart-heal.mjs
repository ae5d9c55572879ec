// How long Postern and PgBouncer (transaction mode, same PostgreSQL, same
// run) take to serve a new client again after the server restarts under
// load (`pg_ctl restart -m fast` equivalent), issue 19's measurement.
//
//   node bench/restart-heal.mjs [--restarts N]
//
// A pgbench load (-S, 8 clients) runs through each proxy; the server is
// restarted; from the moment it accepts connections again, a probe client
// connects through each proxy every 50 ms until a query succeeds. Reported:
// per proxy, the median and the worst time to the first success, and the
// pgbench clients that aborted (both proxies pass the server's error on).

import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { cleanupAll, installSignalHandlers, trackChild } from './lib/cleanup.mjs';
import { delay, makeTempDir, posternPoolSupport, startCluster, startPgbouncer, startPostern } from './lib/services.mjs';

const ROOT = join(import.meta.dirname, '..');
const { values } = parseArgs({ options: { restarts: { type: 'string', default: '3' } } });
const restarts = Number(values.restarts);
const log = (m) => process.stderr.write(`[restart-heal] ${m}\n`);

installSignalHandlers();
const pg = (await import(pathToFileURL(join(ROOT, 'node_modules/pg/lib/index.js')).href)).default;

async function main() {
  const tmp = await makeTempDir('postern-heal-');
  const { generateCerts } = await import(pathToFileURL(join(ROOT, 'dist/dev/certs.js')).href);
  const { freePort } = await import(pathToFileURL(join(ROOT, 'dist/dev/cluster.js')).href);
  const certs = await generateCerts(join(tmp, 'certs'));
  const db = await startCluster({ root: ROOT, scale: 1, maxConnections: 200, certs, log });
  const support = await posternPoolSupport(ROOT);
  const px = await startPostern({
    root: ROOT,
    dir: tmp,
    pg: db.cluster,
    certs,
    mode: support.modeKey ? 'transaction' : undefined,
    support,
    verifier: db.verifier,
    sessionPoolSize: 10,
    txPoolSize: 10,
    freePort,
    psqlBin: db.psqlBin,
    benchEnv: db.env,
  });
  const pb = await startPgbouncer({
    dir: tmp,
    pg: db.cluster,
    verifier: db.verifier,
    certs,
    freePort,
    maxClients: 200,
    sessionPoolSize: 10,
    txPoolSize: 10,
    psqlBin: db.psqlBin,
    benchEnv: db.env,
  });
  const targets = [
    { name: 'postern', host: px.host, port: px.port, database: px.db },
    { name: 'pgbouncer', host: pb.host, port: pb.port, database: 'bench_tx' },
  ];
  const results = Object.fromEntries(targets.map((t) => [t.name, { heal: [], aborted: [] }]));
  for (let r = 1; r <= restarts; r++) {
    const loads = targets.map((t) => {
      const child = trackChild(
        spawn(db.pgbenchBin, ['-n', '-S', '-c', '8', '-j', '1', '-T', '8', '-h', t.host, '-p', String(t.port), t.database], {
          env: db.env({ PGHOST: t.host, PGPORT: String(t.port), PGDATABASE: t.database }),
        }),
      );
      let out = '';
      child.stdout.on('data', (d) => (out += d));
      child.stderr.on('data', (d) => (out += d));
      return new Promise((resolve) => child.on('close', () => resolve(out)));
    });
    await delay(2000);
    log(`round ${r}: restarting PostgreSQL under load`);
    await db.cluster.restart();
    const up = performance.now();
    await Promise.all(
      targets.map(async (t) => {
        for (;;) {
          const c = new pg.Client({
            host: t.host,
            port: t.port,
            user: 'bench',
            password: db.password,
            database: t.database,
            connectionTimeoutMillis: 1000,
          });
          c.on('error', () => {});
          try {
            await c.connect();
            await c.query('select 1');
            await c.end();
            results[t.name].heal.push(performance.now() - up);
            return;
          } catch {
            await c.end().catch(() => {});
            if (performance.now() - up > 60_000) {
              results[t.name].heal.push(Number.POSITIVE_INFINITY);
              return;
            }
            await delay(50);
          }
        }
      }),
    );
    const outs = await Promise.all(loads);
    targets.forEach((t, i) => {
      const aborted = String((outs[i].match(/client \d+ aborted/g) ?? []).length);
      results[t.name].aborted.push(aborted);
    });
    await delay(1000);
  }
  const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
  process.stdout.write(`\nserver restart under pgbench -S -c 8, transaction mode, ${restarts} restart(s)\n\n`);
  process.stdout.write('| proxy | time to serve again: median | worst | pgbench clients aborted per round |\n|---|---:|---:|---|\n');
  for (const t of targets) {
    const h = results[t.name].heal;
    process.stdout.write(
      `| ${t.name} | ${median(h).toFixed(0)} ms | ${Math.max(...h).toFixed(0)} ms | ${results[t.name].aborted.join(', ')} |\n`,
    );
  }
}

main()
  .catch((e) => {
    process.stderr.write(`${e.stack ?? e}\n`);
    process.exitCode = 1;
  })
  .finally(() => cleanupAll());
