#!/usr/bin/env node
// pgbench -S through Postern's read/write split (a primary and two streaming
// standbys) against the same Postern in front of the primary alone, in one
// interleaved run: which one serves more read-only transactions, and how
// much CPU Postern and the servers use. All servers share this machine, so
// the split shows its cost and its spread, not the gain of extra hardware.
//
//   npm run build && node bench/split.mjs [--rounds 3] [--duration 8] [--clients 20] [--protocol extended]

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { parseSummary } from './lib/pgbench.mjs';
import { treeCpuSeconds } from './lib/procfs.mjs';
import { execOk } from './lib/services.mjs';
import { median as med } from './lib/stats.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const { startPostgres, startStandby, freePort } = await import(pathToFileURL(join(ROOT, 'dist', 'dev', 'cluster.js')).href);
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '3' },
    duration: { type: 'string', default: '8' },
    clients: { type: 'string', default: '20' },
    protocol: { type: 'string', default: 'extended' },
  },
});

const dir = mkdtempSync(join(tmpdir(), 'postern-split-'));
const primary = await startPostgres({ users: [{ name: 'app', password: 'pw' }], databases: [{ name: 'appdb', owner: 'app' }] });
const env = (port, db) => ({
  ...process.env,
  PGHOST: '127.0.0.1',
  PGPORT: String(port),
  PGUSER: 'app',
  PGPASSWORD: 'pw',
  PGDATABASE: db,
  PGPASSFILE: '/nonexistent',
});
await execOk('pgbench', ['-i', '-s', '10', '-q'], { env: env(primary.port, 'appdb') });
const standbys = [await startStandby(primary), await startStandby(primary)];
writeFileSync(join(dir, 'hba'), 'host all all 127.0.0.1/32 trust\n');
const procs = [];

async function postern(name, db) {
  const port = await freePort();
  const cfg = join(dir, `${name}.json`);
  writeFileSync(
    cfg,
    JSON.stringify({
      listen: { host: '127.0.0.1', port },
      tls: { mode: 'disable' },
      auth: { hba_file: join(dir, 'hba') },
      pool: { pool_mode: 'transaction', default_pool_size: 20 },
      health: { user: primary.superuser, password: primary.superuserPassword },
      log: { level: 'warn' },
      databases: { bench: { dbname: 'appdb', server_password: 'pw', tls: { mode: 'disable' }, ...db } },
    }),
  );
  const child = spawn(process.execPath, [join(ROOT, 'dist', 'main.js'), '--config', cfg], { stdio: 'ignore' });
  procs.push(child);
  await new Promise((r) => setTimeout(r, 2000));
  return { name, port, pid: child.pid };
}

const single = await postern('single server', { host: '127.0.0.1', port: primary.port });
const split = await postern('split over 2 standbys', {
  servers: [primary, ...standbys].map((c) => ({ host: '127.0.0.1', port: c.port })),
  read_write_split: true,
});
const targets = [single, split];
const args = ['-n', '-S', '-M', values.protocol, '-c', values.clients, '-j', '2', '-T', values.duration];
const results = new Map(targets.map((t) => [t.name, []]));
try {
  for (const t of targets) await execOk('pgbench', ['-n', '-S', '-c', '4', '-T', '2'], { env: env(t.port, 'bench') });
  for (let round = 1; round <= Number(values.rounds); round++) {
    for (const t of round % 2 === 1 ? targets : [...targets].reverse()) {
      const before = treeCpuSeconds(t.pid);
      const s = parseSummary(await execOk('pgbench', args, { env: env(t.port, 'bench') }));
      const tps = s.tps ?? 0;
      const failed = s.failedTransactions;
      const cpu = ((treeCpuSeconds(t.pid) - before) / Math.max(s.transactions ?? 0, 1)) * 10_000;
      results.get(t.name).push({ tps, failed, cpu });
      console.error(`round ${round} ${t.name}: ${tps.toFixed(0)} tps, ${failed} failed, Postern ${cpu.toFixed(3)} CPU s/10k tx`);
    }
  }
  console.log(`pgbench ${args.join(' ')}, ${values.rounds} interleaved rounds (medians)\n`);
  console.log('| Postern in front of | tps | failed | Postern CPU s/10k tx |\n|---|---:|---:|---:|');
  for (const t of targets) {
    const r = results.get(t.name);
    console.log(
      `| ${t.name} | ${med(r.map((x) => x.tps)).toFixed(0)} | ${r.reduce((s, x) => s + x.failed, 0)} | ${med(r.map((x) => x.cpu)).toFixed(3)} |`,
    );
  }
  const ratio = med(results.get(split.name).map((x) => x.tps)) / med(results.get(single.name).map((x) => x.tps));
  console.log(`\nsplit / single: ${ratio.toFixed(2)}x tps`);
} finally {
  for (const p of procs) p.kill('SIGTERM');
  for (const s of standbys) await s.stop();
  await primary.stop();
  rmSync(dir, { recursive: true, force: true });
}
