// Runs one pgbench and turns it into numbers: pgbench's own summary (tps,
// transactions, failures, aborted clients, connection time) plus latency
// percentiles computed from the per-transaction log (--log), which is
// streamed line by line so a long run never sits in memory as text.

import { spawn } from 'node:child_process';
import { createReadStream } from 'node:fs';
import { mkdir, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { trackChild } from './cleanup.mjs';
import { LatencyCollector } from './stats.mjs';

/**
 * @param {object} o
 * @param {string} o.bin      pgbench binary
 * @param {object} o.env      environment (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE, PGSSLMODE)
 * @param {string[]} o.args   scenario arguments (-S, -M ..., -C)
 * @param {number} o.clients
 * @param {number} o.jobs
 * @param {number} o.duration seconds
 * @param {string} o.logDir   an empty scratch dir for the per-transaction logs (removed afterwards)
 * @param {() => void} [o.onStart] called right before spawning (to read CPU counters)
 * @param {() => void} [o.onExit]  called right after pgbench exits
 */
export async function runPgbench(o) {
  await rm(o.logDir, { recursive: true, force: true });
  await mkdir(o.logDir, { recursive: true });
  const args = [
    ...o.args,
    '-c',
    String(o.clients),
    '-j',
    String(Math.max(1, Math.min(o.jobs, o.clients))),
    '-T',
    String(o.duration),
    '--no-vacuum',
    '--log',
    `--log-prefix=${join(o.logDir, 'tx')}`,
  ];
  o.onStart?.();
  const started = process.hrtime.bigint();
  const { code, signal, stdout, stderr, abortCount } = await spawnCollect(o.bin, args, o.env, o.logDir);
  const wallSeconds = Number(process.hrtime.bigint() - started) / 1e9;
  o.onExit?.();

  const summary = parseSummary(stdout);
  const aborted = parseAborts(stderr, abortCount);
  const lat = new LatencyCollector();
  let failedInLog = 0;
  for (const name of (await readdir(o.logDir)).sort()) {
    failedInLog += await readTxLog(join(o.logDir, name), lat);
  }
  await rm(o.logDir, { recursive: true, force: true });

  return {
    command: `pgbench ${args.join(' ')}`,
    exitCode: code,
    signal,
    wallSeconds,
    ...summary,
    abortedClients: aborted.count,
    abortReasons: aborted.reasons,
    failedInLog,
    latency: lat.summary(),
    stdoutTail: tail(stdout, 20),
    stderrTail: tail(stderr, 10),
  };
}

function spawnCollect(bin, args, env, cwd) {
  return new Promise((resolve, reject) => {
    const child = trackChild(spawn(bin, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'] }));
    let stdout = '';
    // stderr can hold one line per aborted client; keep a bounded amount.
    let stderr = '';
    const errLines = new Map();
    let abortCount = 0;
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (d) => {
      if (stdout.length < 1 << 20) stdout += d;
    });
    let partial = '';
    child.stderr.on('data', (d) => {
      partial += d;
      const lines = partial.split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) {
        if (/aborted in command/.test(line)) abortCount++;
        if (stderr.length < 64 << 10) stderr += `${line}\n`;
        else if (errLines.size < 100) errLines.set(line, (errLines.get(line) ?? 0) + 1);
      }
    });
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (partial && stderr.length < 64 << 10) stderr += partial;
      for (const [line, n] of errLines) if (stderr.length < 128 << 10) stderr += `${line}  [x${n}]\n`;
      resolve({ code, signal, stdout, stderr, abortCount });
    });
  });
}

function num(re, text) {
  const m = re.exec(text);
  return m ? Number(m[1]) : undefined;
}

/** The summary block pgbench prints (PostgreSQL 14+ wording; older ones mostly match too). */
export function parseSummary(out) {
  return {
    transactions: num(/number of transactions actually processed: (\d+)/, out),
    failedTransactions: num(/number of failed transactions: (\d+)/, out) ?? 0,
    tps: num(/^tps = ([\d.]+)/m, out),
    pgbenchLatencyAvgMs: num(/latency average = ([\d.]+) ms/, out),
    initialConnectionMs: num(/initial connection time = ([\d.]+) ms/, out),
    avgConnectionMs: num(/average connection time = ([\d.]+) ms/, out),
    runAborted: /Run was aborted/.test(out),
  };
}

/** Clients that pgbench aborted (e.g. "prepared statement ... does not exist"), with distinct reasons. */
function parseAborts(stderr, count) {
  const reasons = new Map();
  const lines = stderr.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (!/aborted in command/.test(line)) continue;
    // pgbench 15 prints the error on the same line after "; " or on the next one.
    let why = line.replace(/^.*aborted in command \d+ \([^)]*\) of script \d+;?\s*/, '').trim();
    if (!why && lines[i + 1]) why = lines[i + 1].trim();
    why = why
      .replace(/"P\d+_\d+"/g, '"P…"')
      .replace(/\s+/g, ' ')
      .slice(0, 160);
    reasons.set(why, (reasons.get(why) ?? 0) + 1);
  }
  // Other connection failures ("connection to server ... failed") also end runs.
  for (const line of lines) {
    if (/could not connect|connection to server .* failed|FATAL/.test(line) && !/aborted in command/.test(line)) {
      const why = line.replace(/\s+/g, ' ').slice(0, 160);
      reasons.set(why, (reasons.get(why) ?? 0) + 1);
    }
  }
  return { count, reasons: [...reasons].map(([reason, n]) => ({ reason, n })) };
}

/**
 * Per-transaction log lines: `client_id transaction_no time script_no time_epoch time_us [...]`,
 * `time` in microseconds, or `failed` / `skipped`. Returns the count of failed lines.
 */
async function readTxLog(path, lat) {
  let failed = 0;
  const rl = createInterface({
    input: createReadStream(path, { encoding: 'utf8', highWaterMark: 1 << 16 }),
    crlfDelay: Number.POSITIVE_INFINITY,
  });
  for await (const line of rl) {
    // Third field without splitting the whole line.
    const a = line.indexOf(' ');
    const b = a < 0 ? -1 : line.indexOf(' ', a + 1);
    const c = b < 0 ? -1 : line.indexOf(' ', b + 1);
    if (c < 0) continue;
    const field = line.slice(b + 1, c);
    const us = Number(field);
    if (Number.isFinite(us)) lat.add(us);
    else if (field === 'failed') failed++;
  }
  return failed;
}

function tail(text, lines) {
  const all = text.trimEnd().split('\n');
  return all.slice(-lines).join('\n');
}
