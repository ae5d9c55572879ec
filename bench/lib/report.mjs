// Turns the raw per-round records into summary rows (medians per variant and
// medians of per-round ratios) and renders them as markdown tables. A variant
// that failed in any round shows "n/a" with a numbered note that says why,
// including the failure counts pgbench printed.

import { median, ratio } from './stats.mjs';

const TARGET_LABEL = { direct: 'direct', postern: 'postern', pgbouncer: 'pgbouncer', variant: 'postern variant' };

/** The three variants compared in one row of a cell, for pool mode `mode`. */
function rowVariants(mode, ctx) {
  const postern = ctx.posternModes.includes(mode) ? `postern-${mode}` : 'postern-session';
  const out = { direct: 'direct', postern, pgbouncer: `pgbouncer-${mode}` };
  if (ctx.opts.variant) out.variant = `${postern}@${ctx.opts.variant.name}`;
  return out;
}

function whyMissing(target, cell, ctx) {
  if (!ctx.opts.targets.includes(target === 'variant' ? 'postern' : target)) return 'target not selected (--targets)';
  if (target === 'pgbouncer' && !ctx.pgbouncerAvailable) return `PgBouncer not installed (${ctx.pgbouncerBin})`;
  if (cell.kind === 'idle' && target === 'direct') return 'no proxy process to weigh (direct to PostgreSQL)';
  if (cell.kind === 'idle' && (target === 'postern' || target === 'variant')) {
    return `capped at --idle-postern ${ctx.opts.idlePostern}`;
  }
  return 'not run';
}

/**
 * @returns rows: { cell, mode, posternMode, targets: { direct|postern|pgbouncer: { variant, runs[], median(metric), failed[] } } }
 */
export function summarize(ctx, cells, runs) {
  const rows = [];
  for (const cell of cells) {
    for (const mode of cell.poolModes) {
      const vs = rowVariants(mode, ctx);
      const row = {
        cellId: cell.id,
        scenario: cell.scenario,
        kind: cell.kind,
        clients: cell.clients,
        idleN: cell.idleN,
        copyMb: cell.copyMb,
        tls: cell.tls,
        mode,
        posternMode: vs.postern.replace('postern-', ''),
        targets: {},
      };
      for (const [t, variant] of Object.entries(vs)) {
        if (!cell.variants.includes(variant)) {
          row.targets[t] = { variant, missing: whyMissing(t, cell, ctx) };
          continue;
        }
        const rs = runs.filter((r) => r.cellId === cell.id && r.variant === variant).sort((a, b) => a.round - b.round);
        row.targets[t] = { variant, runs: rs, failed: rs.filter((r) => !r.ok) };
      }
      rows.push(row);
    }
  }
  return rows;
}

/** Median of a metric over a target's successful rounds, or undefined if any round failed. */
function med(row, t, metric) {
  const x = row.targets[t];
  if (!x || x.missing || x.failed.length > 0) return undefined;
  return median(x.runs.map((r) => r[metric]));
}

/** Median over rounds of a/b computed within each round. */
function medRatio(row, a, b, metric) {
  const A = row.targets[a];
  const B = row.targets[b];
  if (!A?.runs || !B?.runs || A.failed.length > 0 || B.failed.length > 0) return undefined;
  const per = [];
  for (const ra of A.runs) {
    const rb = B.runs.find((r) => r.round === ra.round);
    const q = rb ? ratio(ra[metric], rb[metric]) : undefined;
    if (q !== undefined) per.push(q);
  }
  return median(per);
}

class Notes {
  list = [];
  add(text) {
    let i = this.list.indexOf(text);
    if (i < 0) {
      this.list.push(text);
      i = this.list.length - 1;
    }
    return `n/a [${i + 1}]`;
  }
}

function fmtNum(v, digits) {
  if (v === undefined || v === null || !Number.isFinite(v)) return '–';
  if (digits === 0) return Math.round(v).toLocaleString('en-US');
  return v.toFixed(digits);
}

function fmtSig(v) {
  if (v === undefined || !Number.isFinite(v)) return '–';
  const a = Math.abs(v);
  return v.toFixed(a >= 100 ? 0 : a >= 10 ? 1 : a >= 1 ? 2 : 3);
}

function fmtRatio(v) {
  return v === undefined || !Number.isFinite(v) ? '–' : `${v.toFixed(2)}×`;
}

/** A cell's text: the median, or n/a with a note. */
function cellText(row, t, metric, fmt, notes) {
  const x = row.targets[t];
  if (!x) return '–';
  if (x.missing) return x.missing === 'target not selected (--targets)' ? '–' : notes.add(`${TARGET_LABEL[t]}: ${x.missing}`);
  if (x.failed.length > 0) {
    const f = x.failed.map((r) => `round ${r.round}: ${r.error}`).join(' | ');
    return notes.add(`${row.scenario} ${rowKey(row)} ${x.variant}: failed in ${x.failed.length} of ${x.runs.length} round(s): ${f}`);
  }
  if (x.runs.length === 0) return '–';
  return fmt(med(row, t, metric));
}

/** Peak RSS during the COPY, with the growth over the RSS right before it. */
function peakText(row, t, notes) {
  const peak = cellText(row, t, 'proxyPeakRssKb', (v) => fmtNum(v / 1024, 1), notes);
  const x = row.targets[t];
  if (!x?.runs || x.failed.length > 0 || x.runs.length === 0) return peak;
  const growth = median(x.runs.map((r) => r.proxyPeakRssKb - r.proxyRssKbBefore));
  return growth === undefined ? peak : `${peak} (+${fmtNum(growth / 1024, 1)})`;
}

function rowKey(row) {
  if (row.kind === 'pgbench') return `c=${row.clients} (${row.mode})`;
  if (row.kind === 'copy') return `${row.copyMb} MiB`;
  return `N=${row.idleN}`;
}

/** The first `textCols` columns are left-aligned, the numeric rest right-aligned. */
function table(header, lines, textCols) {
  const out = [`| ${header.join(' | ')} |`, `|${header.map((_h, i) => (i < textCols ? '---' : '---:')).join('|')}|`];
  for (const l of lines) out.push(`| ${l.join(' | ')} |`);
  return out.join('\n');
}

export function renderMarkdown(ctx, rows, meta) {
  const notes = new Notes();
  const out = [];
  const o = ctx.opts;
  out.push(`# Postern benchmark ${meta.startedAt}`);
  out.push('');
  out.push(
    `${o.rounds} round(s), interleaved (every variant of a matrix point runs back to back within a round); ${o.duration} s per pgbench run; ` +
      `pgbench scale ${o.scale}, -j ${o.jobs}. Values are medians over rounds; ratios are medians of the ratios computed within each round. ` +
      (ctx.posternModes.length > 1
        ? 'Postern runs in the pool mode of the row, like PgBouncer; '
        : 'Postern runs in **session** mode (one server connection per client); ') +
      `PgBouncer runs in the pool mode of the row (transaction: pool_size ${ctx.txPoolSize}).`,
  );
  out.push('');

  const pg = rows.filter((r) => r.kind === 'pgbench');
  if (pg.length > 0) {
    out.push('## Throughput (tps, higher is better)');
    out.push('');
    out.push(
      table(
        [
          'scenario',
          'clients',
          'pgbouncer pool mode',
          'postern mode',
          'direct',
          'postern',
          'pgbouncer',
          'postern/pgbouncer',
          'postern/direct',
        ],
        pg.map((r) => [
          r.scenario,
          String(r.clients),
          r.mode,
          r.posternMode,
          cellText(r, 'direct', 'tps', (v) => fmtNum(v, 0), notes),
          cellText(r, 'postern', 'tps', (v) => fmtNum(v, 0), notes),
          cellText(r, 'pgbouncer', 'tps', (v) => fmtNum(v, 0), notes),
          fmtRatio(medRatio(r, 'postern', 'pgbouncer', 'tps')),
          fmtRatio(medRatio(r, 'postern', 'direct', 'tps')),
        ]),
        4,
      ),
    );
    out.push('');
    out.push('## Latency (ms per transaction from the per-transaction logs, lower is better)');
    out.push('');
    out.push(
      table(
        [
          'scenario',
          'clients',
          'pgbouncer pool mode',
          'avg direct',
          'avg postern',
          'avg pgbouncer',
          'p99 direct',
          'p99 postern',
          'p99 pgbouncer',
          'p99 postern/pgbouncer',
          'p99 postern/direct',
        ],
        pg.map((r) => [
          r.scenario,
          String(r.clients),
          r.mode,
          cellText(r, 'direct', 'avgMs', fmtSig, notes),
          cellText(r, 'postern', 'avgMs', fmtSig, notes),
          cellText(r, 'pgbouncer', 'avgMs', fmtSig, notes),
          cellText(r, 'direct', 'p99Ms', fmtSig, notes),
          cellText(r, 'postern', 'p99Ms', fmtSig, notes),
          cellText(r, 'pgbouncer', 'p99Ms', fmtSig, notes),
          fmtRatio(medRatio(r, 'postern', 'pgbouncer', 'p99Ms')),
          fmtRatio(medRatio(r, 'postern', 'direct', 'p99Ms')),
        ]),
        3,
      ),
    );
    out.push('');
    out.push('## Proxy CPU (CPU seconds of the proxy process tree per 10,000 transactions, lower is better)');
    out.push('');
    out.push(
      table(
        [
          'scenario',
          'clients',
          'pgbouncer pool mode',
          'postern',
          'pgbouncer',
          'postern/pgbouncer',
          'server CPU direct',
          'server CPU postern',
          'server CPU pgbouncer',
        ],
        pg.map((r) => [
          r.scenario,
          String(r.clients),
          r.mode,
          cellText(r, 'postern', 'proxyCpuPer10k', (v) => fmtNum(v, 3), notes),
          cellText(r, 'pgbouncer', 'proxyCpuPer10k', (v) => fmtNum(v, 3), notes),
          fmtRatio(medRatio(r, 'postern', 'pgbouncer', 'proxyCpuPer10k')),
          ...['direct', 'postern', 'pgbouncer'].map((t) => cellText(r, t, 'serverCpuPer10k', (v) => fmtNum(v, 3), notes)),
        ]),
        3,
      ),
    );
    out.push('');
    out.push('"server CPU" is the PostgreSQL process tree (postmaster, backends, reaped backends) per 10,000 transactions, for context.');
    out.push('');
    const storms = pg.filter((r) => r.scenario.startsWith('connect-storm'));
    if (storms.length > 0) {
      out.push('## Connection setup (pgbench "average connection time", ms, lower is better)');
      out.push('');
      out.push(
        table(
          ['scenario', 'clients', 'direct', 'postern', 'pgbouncer', 'postern/pgbouncer', 'postern/direct'],
          storms.map((r) => [
            r.scenario,
            String(r.clients),
            cellText(r, 'direct', 'avgConnectionMs', fmtSig, notes),
            cellText(r, 'postern', 'avgConnectionMs', fmtSig, notes),
            cellText(r, 'pgbouncer', 'avgConnectionMs', fmtSig, notes),
            fmtRatio(medRatio(r, 'postern', 'pgbouncer', 'avgConnectionMs')),
            fmtRatio(medRatio(r, 'postern', 'direct', 'avgConnectionMs')),
          ]),
          2,
        ),
      );
      out.push('');
    }
  }

  const copy = rows.filter((r) => r.kind === 'copy');
  if (copy.length > 0) {
    out.push('## COPY out stream (psql COPY ... TO STDOUT > /dev/null)');
    out.push('');
    out.push(
      table(
        [
          'scenario',
          'MiB',
          'MiB/s direct',
          'MiB/s postern',
          'MiB/s pgbouncer',
          'postern/pgbouncer',
          'postern/direct',
          'peak RSS MiB (growth) postern',
          'peak RSS MiB (growth) pgbouncer',
          'CPU s/GiB postern',
          'CPU s/GiB pgbouncer',
        ],
        copy.map((r) => [
          r.scenario,
          String(r.copyMb),
          cellText(r, 'direct', 'mbPerSec', (v) => fmtNum(v, 0), notes),
          cellText(r, 'postern', 'mbPerSec', (v) => fmtNum(v, 0), notes),
          cellText(r, 'pgbouncer', 'mbPerSec', (v) => fmtNum(v, 0), notes),
          fmtRatio(medRatio(r, 'postern', 'pgbouncer', 'mbPerSec')),
          fmtRatio(medRatio(r, 'postern', 'direct', 'mbPerSec')),
          peakText(r, 'postern', notes),
          peakText(r, 'pgbouncer', notes),
          cellText(r, 'postern', 'proxyCpuPerGiB', (v) => fmtNum(v, 2), notes),
          cellText(r, 'pgbouncer', 'proxyCpuPerGiB', (v) => fmtNum(v, 2), notes),
        ]),
        1,
      ),
    );
    out.push('');
  }

  const idle = rows.filter((r) => r.kind === 'idle');
  if (idle.length > 0) {
    out.push('## Idle clients (proxy RSS growth per logged-in idle client, lower is better)');
    out.push('');
    out.push(
      table(
        [
          'scenario',
          'N',
          'TLS',
          'KiB/client postern',
          'KiB/client pgbouncer',
          'postern/pgbouncer',
          'RSS MiB after postern',
          'RSS MiB after pgbouncer',
          'login CPU ms/client postern',
          'login CPU ms/client pgbouncer',
        ],
        idle.map((r) => [
          r.scenario,
          String(r.idleN),
          r.tls ? 'yes' : 'no',
          cellText(r, 'postern', 'proxyRssKbPerClient', (v) => fmtNum(v, 1), notes),
          cellText(r, 'pgbouncer', 'proxyRssKbPerClient', (v) => fmtNum(v, 1), notes),
          fmtRatio(medRatio(r, 'postern', 'pgbouncer', 'proxyRssKbPerClient')),
          cellText(r, 'postern', 'proxyRssKbAfter', (v) => fmtNum(v / 1024, 1), notes),
          cellText(r, 'pgbouncer', 'proxyRssKbAfter', (v) => fmtNum(v / 1024, 1), notes),
          cellText(r, 'postern', 'proxyLoginCpuMsPerClient', (v) => fmtNum(v, 3), notes),
          cellText(r, 'pgbouncer', 'proxyLoginCpuMsPerClient', (v) => fmtNum(v, 3), notes),
        ]),
        1,
      ),
    );
    out.push('');
    out.push('Neither proxy holds a PostgreSQL backend for a client that has not sent a query (only the proxy process is weighed).');
    out.push('');
  }

  if (o.variant) {
    const name = o.variant.name;
    const overrides = o.variant.overrides.map(([k, v]) => `\`${k}: ${v}\``).join(', ');
    out.push(`## Postern A/B: ${name} (${overrides}) against the same Postern without it`);
    out.push('');
    out.push(
      `Both Postern instances run in every round, back to back; \`${name}/postern\` is the median of the per-round ratios (above 1 means the variant has more of the metric).`,
    );
    out.push('');
    const ab = rows.filter((r) => r.kind === 'pgbench');
    if (ab.length > 0) {
      out.push(
        table(
          [
            'scenario',
            'clients',
            'mode',
            'tps postern',
            `tps ${name}`,
            `tps ${name}/postern`,
            'CPU s/10k postern',
            `CPU s/10k ${name}`,
            `CPU ${name}/postern`,
            'p99 ms postern',
            `p99 ms ${name}`,
          ],
          ab.map((r) => [
            r.scenario,
            String(r.clients),
            r.posternMode,
            cellText(r, 'postern', 'tps', (v) => fmtNum(v, 0), notes),
            cellText(r, 'variant', 'tps', (v) => fmtNum(v, 0), notes),
            fmtRatio(medRatio(r, 'variant', 'postern', 'tps')),
            cellText(r, 'postern', 'proxyCpuPer10k', (v) => fmtNum(v, 3), notes),
            cellText(r, 'variant', 'proxyCpuPer10k', (v) => fmtNum(v, 3), notes),
            fmtRatio(medRatio(r, 'variant', 'postern', 'proxyCpuPer10k')),
            cellText(r, 'postern', 'p99Ms', fmtSig, notes),
            cellText(r, 'variant', 'p99Ms', fmtSig, notes),
          ]),
          3,
        ),
      );
      out.push('');
    }
    const abCopy = rows.filter((r) => r.kind === 'copy');
    if (abCopy.length > 0) {
      out.push(
        table(
          ['scenario', 'MiB', 'MiB/s postern', `MiB/s ${name}`, `${name}/postern`, 'peak RSS MiB postern', `peak RSS MiB ${name}`],
          abCopy.map((r) => [
            r.scenario,
            String(r.copyMb),
            cellText(r, 'postern', 'mbPerSec', (v) => fmtNum(v, 0), notes),
            cellText(r, 'variant', 'mbPerSec', (v) => fmtNum(v, 0), notes),
            fmtRatio(medRatio(r, 'variant', 'postern', 'mbPerSec')),
            peakText(r, 'postern', notes),
            peakText(r, 'variant', notes),
          ]),
          2,
        ),
      );
      out.push('');
    }
    const abIdle = rows.filter((r) => r.kind === 'idle');
    if (abIdle.length > 0) {
      out.push(
        table(
          ['scenario', 'N', 'KiB/client postern', `KiB/client ${name}`, `${name}/postern`],
          abIdle.map((r) => [
            r.scenario,
            String(r.idleN),
            cellText(r, 'postern', 'proxyRssKbPerClient', (v) => fmtNum(v, 1), notes),
            cellText(r, 'variant', 'proxyRssKbPerClient', (v) => fmtNum(v, 1), notes),
            fmtRatio(medRatio(r, 'variant', 'postern', 'proxyRssKbPerClient')),
          ]),
          2,
        ),
      );
      out.push('');
    }
  }

  if (notes.list.length > 0) {
    out.push('## Notes');
    out.push('');
    for (const [i, n] of notes.list.entries()) out.push(`${i + 1}. ${n.replace(/\n/g, ' ')}`);
    out.push('');
  }

  out.push('## Environment');
  out.push('');
  for (const [k, v] of Object.entries(meta.environment)) out.push(`- ${k}: ${v}`);
  out.push('');
  out.push(`Command: \`${meta.command}\``);
  out.push('');
  return out.join('\n');
}
