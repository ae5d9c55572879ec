#!/usr/bin/env node
// The dashboard's cost on the data path: pgbench -S through one Postern with
// a real browser (Debian's chromium, playwright-core) showing the dashboard
// live, against the same Postern with no page open, interleaved. Reports tps
// and Postern's CPU per 10,000 transactions for both.
//
//   npm run build && node bench/dashboard.mjs [--rounds 4] [--duration 8] [--clients 10]

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';
import { parseSummary } from './lib/pgbench.mjs';
import { treeCpuSeconds } from './lib/procfs.mjs';
import { execOk } from './lib/services.mjs';
import { median as med } from './lib/stats.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const load = (p) => import(pathToFileURL(join(ROOT, 'dist', p)).href);
const { startPostgres, freePort } = await load('dev/cluster.js');
const { makeVerifier, formatVerifier } = await load('auth/scram.js');
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '4' },
    duration: { type: 'string', default: '8' },
    clients: { type: 'string', default: '10' },
  },
});

const dir = mkdtempSync(join(tmpdir(), 'postern-dashbench-'));
const cluster = await startPostgres({ users: [{ name: 'app', password: 'pw' }], databases: [{ name: 'appdb', owner: 'app' }] });
const env = (port) => ({
  ...process.env,
  PGHOST: '127.0.0.1',
  PGPORT: String(port),
  PGUSER: 'app',
  PGPASSWORD: 'pw',
  PGDATABASE: 'appdb',
  PGPASSFILE: '/nonexistent',
});
await execOk('pgbench', ['-i', '-s', '10', '-q'], { env: env(cluster.port) });
writeFileSync(join(dir, 'hba'), 'host all all 127.0.0.1/32 trust\n');
writeFileSync(join(dir, 'users.txt'), `"admin" "${formatVerifier(await makeVerifier('admin-pw'))}"\n`);
const port = await freePort();
const adminPort = await freePort();
const cfg = join(dir, 'postern.json');
writeFileSync(
  cfg,
  JSON.stringify({
    listen: { host: '127.0.0.1', port },
    tls: { mode: 'disable' },
    auth: { hba_file: join(dir, 'hba'), users_file: join(dir, 'users.txt') },
    admin: { listen: `127.0.0.1:${adminPort}`, users: ['admin'] },
    pool: { pool_mode: 'transaction', default_pool_size: 20 },
    log: { level: 'warn' },
    databases: { appdb: { host: '127.0.0.1', port: cluster.port, server_password: 'pw', tls: { mode: 'disable' } } },
  }),
);
const postern = spawn(process.execPath, [join(ROOT, 'dist', 'main.js'), '--config', cfg], { stdio: 'ignore' });
await new Promise((r) => setTimeout(r, 2000));
const browser = await chromium.launch({
  executablePath: process.env.POSTERN_CHROMIUM ?? '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
});
const args = ['-n', '-S', '-M', 'extended', '-c', values.clients, '-j', '2', '-T', values.duration];
const results = { 'no page': [], 'dashboard open': [] };
try {
  await execOk('pgbench', ['-n', '-S', '-c', '4', '-T', '2'], { env: env(port) });
  for (let round = 1; round <= Number(values.rounds); round++) {
    for (const kind of round % 2 === 1 ? ['no page', 'dashboard open'] : ['dashboard open', 'no page']) {
      let page = null;
      let context = null;
      if (kind === 'dashboard open') {
        context = await browser.newContext({ httpCredentials: { username: 'admin', password: 'admin-pw' } });
        page = await context.newPage();
        await page.goto(`http://127.0.0.1:${adminPort}/`);
        await page.waitForTimeout(1500);
      }
      const before = treeCpuSeconds(postern.pid);
      const s = parseSummary(await execOk('pgbench', args, { env: env(port) }));
      const tps = s.tps ?? 0;
      const cpu = ((treeCpuSeconds(postern.pid) - before) / Math.max(s.transactions ?? 0, 1)) * 10_000;
      results[kind].push({ tps, cpu });
      console.error(`round ${round} ${kind}: ${tps.toFixed(0)} tps, Postern ${cpu.toFixed(3)} CPU s/10k tx`);
      await context?.close();
    }
  }
  console.log(`pgbench ${args.join(' ')}, ${values.rounds} interleaved rounds (medians)\n`);
  console.log('| | tps | Postern CPU s/10k tx |\n|---|---:|---:|');
  for (const [k, r] of Object.entries(results))
    console.log(`| ${k} | ${med(r.map((x) => x.tps)).toFixed(0)} | ${med(r.map((x) => x.cpu)).toFixed(3)} |`);
  const t = med(results['dashboard open'].map((x) => x.tps)) / med(results['no page'].map((x) => x.tps));
  const c = med(results['dashboard open'].map((x) => x.cpu)) / med(results['no page'].map((x) => x.cpu));
  console.log(`\ndashboard open / no page: ${t.toFixed(2)}x tps, ${c.toFixed(2)}x Postern CPU per transaction`);
} finally {
  await browser.close();
  postern.kill('SIGTERM');
  await cluster.stop();
  rmSync(dir, { recursive: true, force: true });
}
