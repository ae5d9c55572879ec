#!/usr/bin/env node
// Where Postern's CPU goes: starts a throwaway PostgreSQL and the built
// Postern under `node --cpu-prof`, runs one pgbench workload through it, stops
// Postern (the profile is written on exit) and prints the functions with the
// most self time, grouped by source file. The .cpuprofile file is kept for
// Chrome DevTools or speedscope.
//
//   npm run build && node bench/profile.mjs [--mode transaction|session] [--args="-S -M simple"]
//                                           [--clients 10] [--duration 10] [--set key=value;...] [--top 40]

import { copyFileSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { cleanupAll, installSignalHandlers } from './lib/cleanup.mjs';
import { exec, makeTempDir, posternPoolSupport, startCluster, startPostern } from './lib/services.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

const { values } = parseArgs({
  options: {
    mode: { type: 'string', default: 'transaction' },
    args: { type: 'string', default: '-S -M simple' },
    clients: { type: 'string', default: '10' },
    duration: { type: 'string', default: '10' },
    set: { type: 'string' },
    top: { type: 'string', default: '40' },
  },
});

function log(msg) {
  process.stderr.write(`[profile] ${msg}\n`);
}

/** Self time per function and per file from a V8 .cpuprofile. */
function summarize(profile, top) {
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const self = new Map();
  const dt = profile.timeDeltas;
  for (let i = 0; i < profile.samples.length; i++) {
    const id = profile.samples[i];
    self.set(id, (self.get(id) ?? 0) + (dt[i] ?? 0));
  }
  const total = [...self.values()].reduce((a, b) => a + b, 0);
  const fn = new Map();
  const file = new Map();
  for (const [id, us] of self) {
    const n = byId.get(id);
    const cf = n.callFrame;
    const where = cf.url ? cf.url.replace(/^file:\/\//, '').replace(`${ROOT}/`, '') : '(native)';
    const key = `${cf.functionName || '(anonymous)'}  ${where}:${cf.lineNumber + 1}`;
    fn.set(key, (fn.get(key) ?? 0) + us);
    const f = where.startsWith('dist/') ? where : cf.url ? 'node internals / deps' : cf.functionName || '(native)';
    file.set(f, (file.get(f) ?? 0) + us);
  }
  const pct = (us) => `${((100 * us) / total).toFixed(1).padStart(5)}%`;
  const lines = [`total sampled: ${(total / 1e6).toFixed(2)} s`, '', 'by file:'];
  for (const [k, us] of [...file].sort((a, b) => b[1] - a[1]).slice(0, 25)) lines.push(`${pct(us)}  ${k}`);
  lines.push('', `top ${top} functions by self time:`);
  for (const [k, us] of [...fn].sort((a, b) => b[1] - a[1]).slice(0, top)) lines.push(`${pct(us)}  ${k}`);
  return lines.join('\n');
}

async function main() {
  installSignalHandlers();
  const tmp = await makeTempDir('postern-profile-');
  const { generateCerts } = await import(pathToFileURL(join(ROOT, 'dist/dev/certs.js')).href);
  const { freePort } = await import(pathToFileURL(join(ROOT, 'dist/dev/cluster.js')).href);
  const certs = await generateCerts(join(tmp, 'certs'));
  const clients = Number(values.clients);
  const pg = await startCluster({ root: ROOT, scale: 10, maxConnections: clients + 100, certs, log });
  const support = await posternPoolSupport(ROOT);
  const overrides = (values.set ?? '')
    .split(';')
    .filter((x) => x.includes('='))
    .map((kv) => [kv.slice(0, kv.indexOf('=')).trim(), kv.slice(kv.indexOf('=') + 1).trim()]);
  const profDir = join(tmp, 'prof');
  const p = await startPostern({
    root: ROOT,
    dir: tmp,
    pg: pg.cluster,
    certs,
    mode: values.mode,
    support,
    verifier: pg.verifier,
    sessionPoolSize: clients + 5,
    txPoolSize: 10,
    freePort,
    psqlBin: pg.psqlBin,
    benchEnv: pg.env,
    variant: overrides.length > 0 ? { name: 'profiled', overrides } : undefined,
    nodeArgs: ['--cpu-prof', '--cpu-prof-dir', profDir],
  });
  const env = pg.env({ PGHOST: p.host, PGPORT: String(p.port), PGDATABASE: p.db });
  log(`warming up, then pgbench ${values.args} -c ${clients} -T ${values.duration} through Postern (${values.mode} mode)...`);
  await exec(pg.pgbenchBin, ['-n', '-S', '-T', '2', '-c', '4'], { env, timeout: 60_000 });
  const args = [...values.args.split(/\s+/).filter(Boolean), '-n', '-c', String(clients), '-j', '1', '-T', values.duration];
  const r = await exec(pg.pgbenchBin, args, { env, timeout: (Number(values.duration) + 120) * 1000 });
  process.stdout.write(
    `${r.stdout
      .split('\n')
      .filter((l) => /tps|failed|processed|latency/.test(l))
      .join('\n')}\n\n`,
  );
  // SIGTERM: Postern drains and exits, and node writes the profile.
  p.child.kill('SIGTERM');
  await new Promise((res) => p.child.once('exit', res));
  const file = readdirSync(profDir).find((f) => f.endsWith('.cpuprofile'));
  if (file === undefined) throw new Error('no .cpuprofile written');
  const profile = JSON.parse(readFileSync(join(profDir, file), 'utf8'));
  const outDir = join(ROOT, 'bench/results');
  mkdirSync(outDir, { recursive: true });
  const kept = join(outDir, `profile-${values.mode}-${new Date().toISOString().replace(/[:.]/g, '-')}.cpuprofile`);
  copyFileSync(join(profDir, file), kept);
  process.stdout.write(`${summarize(profile, Number(values.top))}\n\nprofile: ${kept}\n`);
}

try {
  await main();
} catch (err) {
  process.stderr.write(`profile: ${err?.stack ?? err}\n`);
  process.exitCode = 1;
} finally {
  await cleanupAll();
}
