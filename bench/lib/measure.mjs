// One measured run of one variant of one cell. Each returns a flat record of
// raw numbers (kept whole in the JSON output). Proxy CPU is read from /proc
// right before the client program starts and right after it exits, for the
// proxy's process tree only: pgbench, psql and the idle-client script are our
// children, never the proxy's, so they are not counted.

import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { stopChild, trackChild } from './cleanup.mjs';
import { runPgbench } from './pgbench.mjs';
import { clockTicks, resetPeakRss, sampleRss, treeCpuTicks, treePeakRssKb, treeRssKb } from './procfs.mjs';
import { delay, psqlAt, withFileLimit } from './services.mjs';

const MAX_STORM_THREADS = 64;
const IDLE_SCRIPT = fileURLToPath(new URL('./idle-client.mjs', import.meta.url));

function cpuProbe(pid) {
  if (!pid) return { start() {}, stop() {}, seconds: undefined };
  let before = 0;
  const p = {
    seconds: undefined,
    start() {
      before = treeCpuTicks(pid);
    },
    stop() {
      p.seconds = (treeCpuTicks(pid) - before) / clockTicks();
    },
  };
  return p;
}

function targetEnv(ctx, v, tls) {
  return ctx.benchEnv({ PGHOST: v.host, PGPORT: String(v.port), PGDATABASE: v.db, PGSSLMODE: tls ? 'require' : 'disable' });
}

export async function measurePgbench(ctx, cell, v) {
  const proxy = cpuProbe(v.pid);
  const server = cpuProbe(ctx.postmasterPid());
  const r = await runPgbench({
    bin: ctx.pgbenchBin,
    env: targetEnv(ctx, v, cell.tls),
    args: cell.args,
    clients: cell.clients,
    jobs: cell.threadPerClient ? Math.max(ctx.opts.jobs, Math.min(cell.clients, MAX_STORM_THREADS)) : ctx.opts.jobs,
    duration: ctx.opts.duration,
    logDir: join(ctx.tmp, 'pgbench-log'),
    onStart: () => {
      proxy.start();
      server.start();
    },
    onExit: () => {
      proxy.stop();
      server.stop();
    },
  });
  const ok = r.exitCode === 0 && r.abortedClients === 0 && (r.failedTransactions ?? 0) === 0 && typeof r.tps === 'number' && !r.runAborted;
  const tx = r.transactions ?? 0;
  return {
    ok,
    error: ok ? undefined : describePgbenchFailure(r, cell),
    tps: r.tps,
    transactions: r.transactions,
    failedTransactions: r.failedTransactions,
    abortedClients: r.abortedClients,
    abortReasons: r.abortReasons,
    avgMs: r.latency?.meanMs ?? r.pgbenchLatencyAvgMs,
    p50Ms: r.latency?.p50Ms,
    p99Ms: r.latency?.p99Ms,
    p999Ms: r.latency?.p999Ms,
    maxMs: r.latency?.maxMs,
    loggedTransactions: r.latency?.count,
    pgbenchLatencyAvgMs: r.pgbenchLatencyAvgMs,
    initialConnectionMs: r.initialConnectionMs,
    avgConnectionMs: r.avgConnectionMs,
    proxyCpuSeconds: proxy.seconds,
    proxyCpuPer10k: proxy.seconds !== undefined && tx > 0 ? (proxy.seconds / tx) * 10_000 : undefined,
    serverCpuSeconds: server.seconds,
    serverCpuPer10k: server.seconds !== undefined && tx > 0 ? (server.seconds / tx) * 10_000 : undefined,
    proxyRssKbAfter: v.pid ? treeRssKb(v.pid) : undefined,
    command: r.command,
    exitCode: r.exitCode,
    wallSeconds: r.wallSeconds,
    pgbenchOutput: ok ? undefined : `${r.stdoutTail}\n${r.stderrTail}`.trim(),
  };
}

function describePgbenchFailure(r, cell) {
  const parts = [];
  if (r.exitCode !== 0) parts.push(`pgbench exit ${r.exitCode ?? r.signal}`);
  if (r.abortedClients > 0) parts.push(`${r.abortedClients} of ${cell.clients} clients aborted`);
  if (r.failedTransactions > 0) parts.push(`${r.failedTransactions} failed transactions`);
  if (r.transactions !== undefined) parts.push(`${r.transactions} transactions processed`);
  const why =
    r.abortReasons?.[0]?.reason ??
    r.stderrTail
      ?.split('\n')
      .find((l) => l.trim())
      ?.trim();
  if (why) parts.push(`first error: ${why}`);
  return parts.join('; ');
}

export async function measureCopy(ctx, cell, v) {
  const rows = cell.copyMb * 1024; // 1024-byte lines (1023 x + newline) = 1 KiB each
  const sql = `COPY (SELECT repeat('x', 1023) FROM generate_series(1, ${rows})) TO STDOUT`;
  const proxy = cpuProbe(v.pid);
  let hwmReset = false;
  let rssBefore;
  let sampler;
  if (v.pid) {
    hwmReset = resetPeakRss(v.pid);
    rssBefore = treeRssKb(v.pid);
    sampler = sampleRss(v.pid, 25);
  }
  const devnull = openSync('/dev/null', 'w');
  const env = targetEnv(ctx, v, cell.tls);
  proxy.start();
  const t0 = process.hrtime.bigint();
  let code;
  let stderr = '';
  let received = 0;
  try {
    // A slow client: psql's output is read here at cell.slow MiB/s, so psql
    // stops reading its socket and the proxy must hold the server back.
    const child = trackChild(
      spawn(ctx.psqlBin, ['-X', '-q', '-w', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
        env,
        stdio: ['ignore', cell.slow ? 'pipe' : devnull, 'pipe'],
      }),
    );
    if (cell.slow) {
      const perMs = (cell.slow * 1024 * 1024) / 1000;
      child.stdout.on('data', (d) => {
        received += d.length;
        const ahead = received / perMs - Number(process.hrtime.bigint() - t0) / 1e6;
        if (ahead > 5) {
          child.stdout.pause();
          setTimeout(() => child.stdout.resume(), ahead);
        }
      });
    }
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (d) => {
      if (stderr.length < 4096) stderr += d;
    });
    // 'close', not 'exit': a paused reader may still have psql's last bytes in the pipe.
    [code] = await once(child, cell.slow ? 'close' : 'exit');
  } finally {
    closeSync(devnull);
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  proxy.stop();
  const sampled = sampler?.stop();
  const hwm = v.pid ? treePeakRssKb(v.pid) : undefined;
  const ok = code === 0 && (!cell.slow || received === cell.copyMb * 1024 * 1024);
  const mb = cell.copyMb;
  return {
    ok,
    error: ok ? undefined : `psql exit ${code}${cell.slow ? `, ${received} bytes received` : ''}: ${stderr.trim().slice(0, 300)}`,
    megabytes: mb,
    seconds,
    mbPerSec: ok ? mb / seconds : undefined,
    proxyRssKbBefore: rssBefore,
    // VmHWM after a reset is the peak during this run; without a reset it is the
    // lifetime peak, so the sampled maximum is the fallback.
    proxyPeakRssKb: v.pid ? (hwmReset ? Math.max(hwm, sampled) : sampled) : undefined,
    proxyPeakRssKbSampled: sampled,
    proxyVmHwmKb: hwm,
    hwmReset,
    proxyCpuSeconds: proxy.seconds,
    proxyCpuPerGiB: proxy.seconds !== undefined ? (proxy.seconds / mb) * 1024 : undefined,
  };
}

async function activeIdleSessions(ctx) {
  const n = await ctx.cluster.psql("select count(*) from pg_stat_activity where application_name = 'bench-idle'").catch(() => '-1');
  return Number(n);
}

export async function measureIdle(ctx, cell, v) {
  const pid = v.pid;
  await delay(1000);
  const rssBefore = treeRssKb(pid);
  const proxy = cpuProbe(pid);
  proxy.start();
  const child = trackChild(
    spawn(
      ...withFileLimit(process.execPath, [
        IDLE_SCRIPT,
        '--host',
        v.host,
        '--port',
        String(v.port),
        '--user',
        ctx.benchUser,
        '--db',
        v.db,
        '--count',
        String(cell.idleN),
        '--batch',
        '200',
        ...(cell.tls ? ['--tls'] : []),
      ]),
      { env: { ...process.env, PGPASSWORD: ctx.password }, stdio: ['pipe', 'pipe', 'pipe'] },
    ),
  );
  let stderr = '';
  child.stderr.setEncoding('utf8');
  child.stderr.on('data', (d) => {
    if (stderr.length < 4096) stderr += d;
  });
  const lines = createInterface({ input: child.stdout });
  const first = await Promise.race([
    new Promise((resolve) => lines.once('line', (l) => resolve(l))),
    once(child, 'exit').then(() => undefined),
  ]);
  proxy.stop();
  let summary;
  try {
    summary = JSON.parse(first ?? '');
  } catch {
    summary = { ready: 0, failed: cell.idleN, errors: [stderr.trim() || 'idle-client script failed'] };
  }
  // Let the proxy settle (GC, buffers) before weighing it.
  await delay(2000);
  const rssAfter = treeRssKb(pid);
  const serverSessions = await activeIdleSessions(ctx);
  child.stdin.end();
  await Promise.race([once(child, 'exit'), delay(10_000)]);
  await stopChild(child, 2000);
  // Wait for the proxy to let go of its server connections before the next run.
  const deadline = Date.now() + 60_000;
  while ((await activeIdleSessions(ctx)) > 0 && Date.now() < deadline) await delay(250);
  const ok = summary.ready === cell.idleN;
  return {
    ok,
    error: ok ? undefined : `${summary.ready} of ${cell.idleN} sessions opened; ${summary.errors?.join('; ')}`,
    sessions: summary.ready,
    failedSessions: summary.failed,
    openSeconds: summary.seconds,
    proxyRssKbBefore: rssBefore,
    proxyRssKbAfter: rssAfter,
    proxyRssKbPerClient: summary.ready > 0 ? (rssAfter - rssBefore) / summary.ready : undefined,
    serverSessionsHeld: serverSessions,
    proxyLoginCpuSeconds: proxy.seconds,
    proxyLoginCpuMsPerClient: summary.ready > 0 && proxy.seconds !== undefined ? (proxy.seconds / summary.ready) * 1000 : undefined,
  };
}

/** psql through a variant, for warm-up and sanity checks. */
export function psqlThrough(ctx, v, sql) {
  return psqlAt(ctx.psqlBin, targetEnv(ctx, v, false), sql);
}
