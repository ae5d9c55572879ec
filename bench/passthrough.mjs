#!/usr/bin/env node
// TLS passthrough throughput: COPY TO STDOUT through a PostgreSQL server's
// own TLS (psql with sslmode=verify-full against the server's CA) directly,
// through a plain TCP relay (a separate Node process that pipes the two
// sockets, nothing else), and through Postern with a passthrough tenant for
// that server name (ClientHello read for its SNI, SSLRequest to the server,
// then a splice). Interleaved rounds, medians; MB/s and the relay process's
// CPU seconds per GiB.
//
//   npm run build && node bench/passthrough.mjs [--rounds 5] [--mb 256]

import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { treeCpuSeconds } from './lib/procfs.mjs';
import { median } from './lib/stats.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const dist = (p) => import(pathToFileURL(join(ROOT, 'dist', p)).href);
const { startPostgres, freePort } = await dist('dev/cluster.js');
const { generateCerts } = await dist('dev/certs.js');
const { values } = parseArgs({
  options: {
    rounds: { type: 'string', default: '5' },
    mb: { type: 'string', default: '256' },
  },
});
const MB = Number(values.mb);

const dir = mkdtempSync(join(tmpdir(), 'postern-passthrough-bench-'));
const certs = await generateCerts(join(dir, 'certs'), { serverNames: ['pass.test'] });
const cluster = await startPostgres({
  tls: { cert: certs.server.cert, key: certs.server.key, ca: certs.ca.cert },
  users: [{ name: 'app', password: 'pw' }],
  databases: [{ name: 'appdb', owner: 'app' }],
  hba: ['hostssl all all 127.0.0.1/32 scram-sha-256'],
});
const procs = [];

async function started(child, port) {
  procs.push(child);
  const net = await import('node:net');
  for (let i = 0; i < 100; i++) {
    const ok = await new Promise((r) => {
      const s = net.connect({ host: '127.0.0.1', port }, () => {
        s.destroy();
        r(true);
      });
      s.on('error', () => r(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`nothing listens on ${port}`);
}

// The plain TCP relay: accept, connect, pipe both ways (pipe() respects backpressure).
const relayPort = await freePort();
const relaySource = `
import net from 'node:net';
net.createServer((c) => {
  const s = net.connect({ host: '127.0.0.1', port: ${cluster.port} });
  c.setNoDelay(true);
  s.setNoDelay(true);
  c.pipe(s);
  s.pipe(c);
  c.on('error', () => s.destroy());
  s.on('error', () => c.destroy());
}).listen(${relayPort}, '127.0.0.1');
`;
const relay = spawn(process.execPath, ['--input-type=module', '-e', relaySource], { stdio: 'ignore' });
await started(relay, relayPort);

const posternPort = await freePort();
const cfg = join(dir, 'postern.json');
writeFileSync(
  cfg,
  JSON.stringify({
    listen: { host: '127.0.0.1', port: posternPort },
    log: { level: 'warn' },
    databases: {},
    tenants: { pass: { server_names: ['pass.test'], passthrough: { host: '127.0.0.1', port: cluster.port } } },
  }),
);
const postern = spawn(process.execPath, [join(ROOT, 'dist', 'main.js'), '--config', cfg], { stdio: 'ignore' });
await started(postern, posternPort);

const targets = [
  { name: 'direct', port: cluster.port, pid: null },
  { name: 'TCP relay (node pipe)', port: relayPort, pid: relay.pid },
  { name: 'Postern passthrough', port: posternPort, pid: postern.pid },
];
const sql = `COPY (SELECT repeat('x', 1023) FROM generate_series(1, ${MB * 1024})) TO STDOUT`;

async function copyOnce(t) {
  const env = { ...process.env, PGPASSWORD: 'pw', PGPASSFILE: '/nonexistent' };
  const conninfo = `host=pass.test hostaddr=127.0.0.1 port=${t.port} dbname=appdb user=app sslmode=verify-full sslrootcert=${certs.ca.cert} channel_binding=require`;
  const devnull = openSync('/dev/null', 'w');
  const cpu0 = t.pid === null ? 0 : treeCpuSeconds(t.pid);
  const t0 = process.hrtime.bigint();
  const code = await new Promise((r) => {
    const child = spawn('psql', ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-c', sql, conninfo], { env, stdio: ['ignore', devnull, 'inherit'] });
    child.on('exit', r);
  });
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  closeSync(devnull);
  if (code !== 0) throw new Error(`${t.name}: psql exit ${code}`);
  const cpu = t.pid === null ? null : treeCpuSeconds(t.pid) - cpu0;
  return { mbps: MB / seconds, cpuPerGiB: cpu === null ? null : (cpu / MB) * 1024 };
}

const results = new Map(targets.map((t) => [t.name, []]));
try {
  for (const t of targets) await copyOnce(t); // warm-up: TLS sessions, caches
  for (let round = 1; round <= Number(values.rounds); round++) {
    for (const t of round % 2 === 1 ? targets : [...targets].reverse()) {
      const r = await copyOnce(t);
      results.get(t.name).push(r);
      console.error(
        `round ${round} ${t.name}: ${r.mbps.toFixed(0)} MB/s${r.cpuPerGiB === null ? '' : `, ${r.cpuPerGiB.toFixed(2)} CPU s/GiB`}`,
      );
    }
  }
  console.log(
    `COPY TO STDOUT of ${MB} MB over the server's own TLS (verify-full, channel_binding=require), ${values.rounds} interleaved rounds (medians)\n`,
  );
  console.log('| path | MB/s | relay CPU s/GiB |\n|---|---:|---:|');
  const med = (name, k) => median(results.get(name).map((x) => x[k]));
  for (const t of targets) {
    const cpu = t.pid === null ? '-' : med(t.name, 'cpuPerGiB').toFixed(2);
    console.log(`| ${t.name} | ${med(t.name, 'mbps').toFixed(0)} | ${cpu} |`);
  }
  const ratio = med('Postern passthrough', 'mbps') / med('TCP relay (node pipe)', 'mbps');
  console.log(
    `\npassthrough / TCP relay: ${ratio.toFixed(2)}x MB/s; passthrough / direct: ${(med('Postern passthrough', 'mbps') / med('direct', 'mbps')).toFixed(2)}x`,
  );
} finally {
  for (const p of procs) p.kill('SIGTERM');
  await cluster.stop();
  rmSync(dir, { recursive: true, force: true });
}
