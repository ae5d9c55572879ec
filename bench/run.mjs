#!/usr/bin/env node
// Benchmark harness (issue 6 item 1): the same pgbench matrix against direct
// PostgreSQL, Postern and PgBouncer, interleaved in rounds, with medians and
// within-round ratios of tps, latency (avg, p99), proxy CPU per 10k
// transactions, COPY throughput and peak RSS, and RSS per idle client.
// Prints a markdown report and writes it plus the raw JSON to bench/results/.
// See bench/README.md.

import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { cleanupAll, installSignalHandlers, onCleanup, stopping } from './lib/cleanup.mjs';
import { measureCopy, measureIdle, measurePgbench } from './lib/measure.mjs';
import { HELP, parseOptions } from './lib/options.mjs';
import { clockTicks } from './lib/procfs.mjs';
import { renderMarkdown, summarize } from './lib/report.mjs';
import { buildCells } from './lib/scenarios.mjs';
import {
  BENCH_DB,
  BENCH_USER,
  delay,
  exec,
  makeTempDir,
  PGBOUNCER_BIN,
  pgbouncerVersion,
  posternPoolSupport,
  startCluster,
  startPgbouncer,
  startPostern,
} from './lib/services.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const TX_POOL_SIZE = 10;

function log(msg) {
  process.stderr.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function timestamp(d) {
  return d
    .toISOString()
    .replace(/\.\d+Z$/, 'Z')
    .replace(/:/g, '-');
}

async function environment(ctx) {
  const cpu = (() => {
    try {
      return /model name\s*:\s*(.+)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1]?.trim();
    } catch {
      return undefined;
    }
  })();
  const commit = await exec('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT })
    .then((r) => (r.code === 0 ? r.stdout.trim() : undefined))
    .catch(() => undefined);
  let posternVersion;
  try {
    posternVersion = (await import(pathToFileURL(join(ROOT, 'dist/version.js')).href)).VERSION;
  } catch {
    posternVersion = undefined;
  }
  return {
    host: `${os.hostname()} ${os.type()} ${os.release()} ${os.arch()}`,
    cpu: `${cpu ?? 'unknown'} x ${os.availableParallelism?.() ?? os.cpus().length}`,
    memory: `${Math.round(os.totalmem() / 2 ** 30)} GiB`,
    node: process.version,
    postern: `${posternVersion ?? '?'}${commit ? ` (git ${commit})` : ''}: built CLI dist/main.js, log.level warn, tls.mode allow to clients, tls disabled to the server`,
    postgresql: ctx.pgInfo.version,
    pgbench: ctx.pgInfo.pgbenchVersion,
    pgbouncer: ctx.pgbouncerAvailable ? `${ctx.pgbouncerVersion}, running as ${ctx.pgbouncerRunAs}` : 'not installed',
    'postern pool_mode key': ctx.poolSupport.modeKey ?? 'none (session mode only)',
    CLK_TCK: String(clockTicks()),
    'load average at start': ctx.loadStart,
    'load average at end': os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
  };
}

async function main() {
  let opts;
  try {
    opts = parseOptions(process.argv.slice(2));
  } catch (err) {
    process.stderr.write(`bench: ${err.message}\n\n${HELP}\n`);
    return 2;
  }
  if (opts.help) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  for (const f of ['dist/main.js', 'dist/dev/cluster.js', 'dist/dev/certs.js']) {
    if (!existsSync(join(ROOT, f))) {
      process.stderr.write(`bench: ${f} is missing; run \`npm run build\` first (or use \`npm run bench\`)\n`);
      return 2;
    }
  }
  installSignalHandlers();
  const startedAt = new Date();
  const outDir = resolve(opts.out === 'bench/results' ? join(ROOT, 'bench/results') : opts.out);
  const stamp = timestamp(startedAt);
  const ctx = {
    opts,
    benchUser: BENCH_USER,
    txPoolSize: TX_POOL_SIZE,
    pgbouncerBin: PGBOUNCER_BIN,
    loadStart: os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
  };
  const runs = [];
  let cells = [];
  let saved = false;
  const save = async (complete) => {
    if (saved) return;
    saved = true;
    if (!ctx.pgInfo) return;
    await mkdir(outDir, { recursive: true });
    const rows = summarize(ctx, cells, runs);
    const meta = {
      startedAt: startedAt.toISOString(),
      finishedAt: new Date().toISOString(),
      complete,
      command: `node bench/run.mjs ${process.argv.slice(2).join(' ')}`.trim(),
      environment: await environment(ctx),
    };
    const md = renderMarkdown(ctx, rows, meta) + (complete ? '' : '\n**Interrupted: partial results.**\n');
    const base = join(outDir, `${stamp}${complete ? '' : '-partial'}`);
    writeFileSync(`${base}.md`, md);
    const json = {
      meta,
      options: opts,
      postern: { poolSupport: ctx.poolSupport, modes: ctx.posternModes },
      cells: cells.map(({ args, ...c }) => ({ ...c, pgbenchArgs: args })),
      runs,
      summary: rows.map((r) => ({
        ...r,
        targets: Object.fromEntries(
          Object.entries(r.targets).map(([t, x]) => [
            t,
            {
              variant: x.variant,
              missing: x.missing,
              rounds: x.runs?.map((run) => run.round),
              failedRounds: x.failed?.map((run) => run.round),
            },
          ]),
        ),
      })),
    };
    writeFileSync(`${base}.json`, `${JSON.stringify(json, null, 2)}\n`);
    process.stdout.write(`${md}\n`);
    log(`wrote ${base}.md and ${base}.json`);
  };
  // Registered first, so it runs last on an interrupt: partial results survive a Ctrl-C.
  onCleanup('partial results', () => save(false));

  const tmp = await makeTempDir('postern-bench-');
  const { generateCerts } = await import(pathToFileURL(join(ROOT, 'dist/dev/certs.js')).href);
  const { freePort } = await import(pathToFileURL(join(ROOT, 'dist/dev/cluster.js')).href);
  const certs = await generateCerts(join(tmp, 'certs'));

  ctx.pgbouncerVersion = opts.targets.includes('pgbouncer') ? await pgbouncerVersion() : undefined;
  ctx.pgbouncerAvailable = ctx.pgbouncerVersion !== undefined;
  if (opts.targets.includes('pgbouncer') && !ctx.pgbouncerAvailable)
    log(`PgBouncer not found at ${PGBOUNCER_BIN}: its columns will read n/a`);
  ctx.poolSupport = await posternPoolSupport(ROOT);
  ctx.posternModes = ctx.poolSupport.modes;
  log(
    `Postern pool modes: ${ctx.posternModes.join(', ')}${ctx.poolSupport.modeKey ? ` (config key ${ctx.poolSupport.modeKey})` : ' (no pool_mode in the config table)'}`,
  );

  cells = buildCells(opts, { posternModes: ctx.posternModes, pgbouncer: ctx.pgbouncerAvailable });
  // The proxies and the idle-session script raise their own soft limit up to the hard one.
  const fdLimit = openFilesLimit();
  if (cells.some((c) => c.kind === 'idle') && fdLimit !== undefined && fdLimit < opts.idle + 500) {
    log(
      `warning: the hard open-files limit ${fdLimit} is below --idle ${opts.idle} + 500; idle-clients runs will fail (raise it, e.g. in /etc/security/limits.conf)`,
    );
  }
  const maxClients = Math.max(...opts.clients);
  const sessionPoolSize = maxClients + 5;
  const needsIdle = cells.some((c) => c.kind === 'idle' && c.variants.some((v) => v.startsWith('postern')));
  const base = 2 * maxClients + sessionPoolSize + TX_POOL_SIZE + 50;
  const maxConnections = Math.max(200, base + (needsIdle ? 50 : 0));

  log(`starting PostgreSQL (max_connections ${maxConnections})...`);
  const pg = await startCluster({ root: ROOT, scale: opts.scale, maxConnections, certs, log });
  Object.assign(ctx, {
    tmp,
    cluster: pg.cluster,
    password: pg.password,
    benchEnv: pg.env,
    pgbenchBin: pg.pgbenchBin,
    psqlBin: pg.psqlBin,
    postmasterPid: pg.postmasterPid,
    pgInfo: { version: pg.version, pgbenchVersion: pg.pgbenchVersion },
  });

  const variants = new Map();
  variants.set('direct', { id: 'direct', host: pg.cluster.host, port: pg.cluster.port, db: BENCH_DB, pid: undefined });
  const wanted = new Set(cells.flatMap((c) => c.variants));
  const posternStarts = ctx.posternModes.flatMap((mode) => [
    { mode, variant: undefined, id: `postern-${mode}` },
    ...(opts.variant ? [{ mode, variant: opts.variant, id: `postern-${mode}@${opts.variant.name}` }] : []),
  ]);
  for (const { mode, variant, id } of posternStarts) {
    if (!wanted.has(id)) continue;
    log(`starting Postern (${id})...`);
    const p = await startPostern({
      variant,
      root: variant?.root ?? ROOT,
      dir: tmp,
      pg: pg.cluster,
      certs,
      mode: ctx.poolSupport.modeKey ? mode : undefined,
      support: ctx.poolSupport,
      verifier: pg.verifier,
      sessionPoolSize,
      txPoolSize: TX_POOL_SIZE,
      freePort,
      psqlBin: pg.psqlBin,
      benchEnv: pg.env,
    });
    variants.set(id, { id, host: p.host, port: p.port, db: p.db, pid: p.pid });
  }
  if ([...wanted].some((v) => v.startsWith('pgbouncer'))) {
    log('starting PgBouncer...');
    const b = await startPgbouncer({
      dir: tmp,
      pg: pg.cluster,
      verifier: pg.verifier,
      certs,
      freePort,
      maxClients: Math.max(opts.idle, maxClients) + 200,
      sessionPoolSize,
      txPoolSize: TX_POOL_SIZE,
      psqlBin: pg.psqlBin,
      benchEnv: pg.env,
    });
    ctx.pgbouncerRunAs = b.runAs;
    variants.set('pgbouncer-session', { id: 'pgbouncer-session', host: b.host, port: b.port, db: 'bench_session', pid: b.pid });
    variants.set('pgbouncer-transaction', { id: 'pgbouncer-transaction', host: b.host, port: b.port, db: 'bench_tx', pid: b.pid });
  }

  // Warm each proxy (JIT, pools, caches) with a short unrecorded pgbench -S.
  for (const id of wanted) {
    const v = variants.get(id);
    if (!v?.pid) continue;
    log(`warming up ${id}...`);
    await exec(pg.pgbenchBin, ['-S', '-T', '2', '-c', '4', '-j', '1', '--no-vacuum'], {
      env: pg.env({ PGHOST: v.host, PGPORT: String(v.port), PGDATABASE: v.db }),
      timeout: 60_000,
    });
  }

  const totalRuns = cells.reduce((n, c) => n + c.variants.length, 0) * opts.rounds;
  let done = 0;
  for (let round = 1; round <= opts.rounds; round++) {
    for (const cell of cells) {
      for (const id of cell.variants) {
        const v = variants.get(id);
        const label = `[${++done}/${totalRuns}] round ${round} ${cell.id} ${id}`;
        let rec;
        try {
          if (cell.kind === 'pgbench') rec = await measurePgbench(ctx, cell, v);
          else if (cell.kind === 'copy') rec = await measureCopy(ctx, cell, v);
          else rec = await measureIdle(ctx, cell, v);
        } catch (err) {
          rec = { ok: false, error: `harness error: ${err?.message ?? err}` };
        }
        // A run cut short by an interrupt is not a measurement.
        if (stopping()) return 130;
        runs.push({ round, cellId: cell.id, scenario: cell.scenario, clients: cell.clients, variant: id, ...rec });
        log(`${label}: ${describe(cell, rec)}`);
        if (opts.pause > 0) await delay(opts.pause * 1000);
      }
    }
  }
  await save(true);
  return 0;
}

/** Hard RLIMIT_NOFILE of this process: how far its children may raise their own. */
function openFilesLimit() {
  try {
    const m = /^Max open files\s+(?:\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
    return m && m[1] !== 'unlimited' ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function describe(cell, r) {
  if (!r.ok) return `FAILED ${r.error}`;
  const f = (v, d = 2) => (typeof v === 'number' ? v.toFixed(d) : '–');
  if (cell.kind === 'pgbench') {
    return `${f(r.tps, 0)} tps, avg ${f(r.avgMs, 3)} ms, p99 ${f(r.p99Ms, 3)} ms${r.proxyCpuPer10k !== undefined ? `, proxy ${f(r.proxyCpuPer10k, 3)} CPU s/10k tx` : ''}`;
  }
  if (cell.kind === 'copy') {
    return `${f(r.mbPerSec, 0)} MiB/s${r.proxyPeakRssKb !== undefined ? `, proxy peak RSS ${f(r.proxyPeakRssKb / 1024, 1)} MiB` : ''}`;
  }
  return `${r.sessions} sessions in ${f(r.openSeconds, 1)} s, ${f(r.proxyRssKbPerClient, 1)} KiB/client`;
}

let code = 1;
try {
  code = await main();
} catch (err) {
  process.stderr.write(`bench: ${err?.stack ?? err}\n`);
  code = 1;
} finally {
  await cleanupAll();
}
process.exit(code);
