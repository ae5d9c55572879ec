// The scenario catalog and the expansion of options into "cells": one cell is
// one (scenario, clients | size) point of the matrix; in every round each cell
// runs once per variant (direct, postern per mode, pgbouncer per pool mode),
// back to back, so the ratios compare runs made under the same conditions.

export const SCENARIOS = {
  'select-simple': {
    kind: 'pgbench',
    args: ['-S', '-M', 'simple'],
    poolModes: ['session', 'transaction'],
    doc: 'pgbench -S -M simple (one primary-key SELECT per transaction)',
  },
  'select-extended': {
    kind: 'pgbench',
    args: ['-S', '-M', 'extended'],
    poolModes: ['session', 'transaction'],
    doc: 'pgbench -S -M extended (unnamed statements)',
  },
  'select-prepared': {
    kind: 'pgbench',
    args: ['-S', '-M', 'prepared'],
    poolModes: ['session', 'transaction'],
    doc: 'pgbench -S -M prepared (named prepared statements)',
  },
  tpcb: {
    kind: 'pgbench',
    args: ['-M', 'simple'],
    poolModes: ['session', 'transaction'],
    doc: 'pgbench default TPC-B-like script (3 UPDATEs, 1 SELECT, 1 INSERT per transaction)',
  },
  'connect-storm': {
    kind: 'pgbench',
    args: ['-S', '-M', 'simple', '-C'],
    threadPerClient: true,
    poolModes: ['session'],
    doc: 'pgbench -S -C: a new connection (SCRAM login) per transaction, plaintext',
  },
  'connect-storm-tls': {
    kind: 'pgbench',
    args: ['-S', '-M', 'simple', '-C'],
    tls: true,
    threadPerClient: true,
    poolModes: ['session'],
    doc: 'pgbench -S -C with sslmode=require to the target',
  },
  'copy-stream': {
    kind: 'copy',
    poolModes: ['session'],
    doc: 'psql COPY (generate_series) TO STDOUT > /dev/null, MB/s and proxy peak RSS',
  },
  'copy-stream-slow': {
    kind: 'copy',
    slow: true,
    poolModes: ['session'],
    doc: 'the same COPY read by a slow client (--slow-mbps): the proxy must hold the server back, not buffer',
  },
  'idle-clients': { kind: 'idle', poolModes: ['session'], doc: 'N idle logged-in sessions, proxy RSS per client, plaintext' },
  'idle-clients-tls': { kind: 'idle', tls: true, poolModes: ['session'], doc: 'N idle logged-in sessions over TLS, proxy RSS per client' },
};

export const ALL_SCENARIOS = Object.keys(SCENARIOS);
export const QUICK_SCENARIOS = [
  'select-simple',
  'select-prepared',
  'tpcb',
  'connect-storm',
  'connect-storm-tls',
  'copy-stream',
  'copy-stream-slow',
  'idle-clients',
  'idle-clients-tls',
];

/**
 * @returns cells: { id, scenario, kind, tls, clients?, idleN?, poolModes, variants: [variant ids] }
 * Variants are ids of targets set up by run.mjs: 'direct', 'postern-session',
 * 'postern-transaction' (only when Postern supports it), 'pgbouncer-session',
 * 'pgbouncer-transaction'.
 */
export function buildCells(opts, available) {
  const cells = [];
  for (const name of opts.scenarios) {
    const s = SCENARIOS[name];
    // pgbench connects synchronously inside its thread, so with -C the logins of
    // one thread's clients are serialized; one thread per client (capped) makes
    // a storm of concurrent logins instead.
    const base = {
      scenario: name,
      kind: s.kind,
      tls: Boolean(s.tls),
      poolModes: s.poolModes,
      args: s.args,
      threadPerClient: Boolean(s.threadPerClient),
    };
    const variantsFor = (extraFilter = () => true) => {
      const v = [];
      if (opts.targets.includes('direct')) v.push('direct');
      if (opts.targets.includes('postern')) {
        for (const m of s.poolModes) {
          const id = available.posternModes.includes(m) ? `postern-${m}` : 'postern-session';
          if (!v.includes(id)) v.push(id);
          // The A/B variant runs right after its base, in the same round.
          if (opts.variant && !v.includes(`${id}@${opts.variant.name}`)) v.push(`${id}@${opts.variant.name}`);
        }
      }
      if (opts.targets.includes('pgbouncer') && available.pgbouncer) for (const m of s.poolModes) v.push(`pgbouncer-${m}`);
      return v.filter(extraFilter);
    };
    if (s.kind === 'pgbench') {
      for (const c of opts.clients) cells.push({ ...base, id: `${name}/c${c}`, clients: c, variants: variantsFor() });
    } else if (s.kind === 'copy') {
      cells.push({
        ...base,
        id: `${name}/${opts.copyMb}MB`,
        copyMb: opts.copyMb,
        slow: s.slow ? opts.slowMbps : undefined,
        variants: variantsFor(),
      });
    } else {
      // Direct has no proxy to weigh; --idle-postern can cap Postern's N (a
      // row at full N then says so).
      const sizes = [...new Set([Math.min(opts.idle, opts.idlePostern), opts.idle])];
      for (const n of sizes) {
        const filter = (v) => v !== 'direct' && (!v.startsWith('postern') || n <= opts.idlePostern);
        cells.push({ ...base, id: `${name}/n${n}`, idleN: n, variants: variantsFor(filter) });
      }
    }
  }
  return cells;
}
