#!/usr/bin/env node
// Conformance run (issue 11): PostgreSQL's regression suite and
// node-postgres's integration tests, each direct to a throwaway cluster, then
// through Postern in session mode (auth passthrough) and in transaction mode
// (Postern's own auth, pooled). Every (suite, mode) is checked against
// test/conformance/<suite>-<mode>.expected: the tests listed there, each with
// its reason, are expected to fail; an unlisted failure, a listed test that
// passes, or a listed name the suite lacks makes the run fail. Needs
// `bash scripts/conformance/fetch-sources.sh` first and a built dist/
// (`npm run test:conformance` does both builds). See docs/testing.md.

import { existsSync, readFileSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { compare, onlyDeclared, readDeclaredDiffs, readExpectations } from './lib/expectations.mjs';
import { devKit, MODES, startCluster, startPostern } from './lib/services.mjs';
import { PG_TEST_DB, runPgSuite, runRegress, SUITES } from './lib/suites.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const EXPECTATIONS = join(ROOT, 'test/conformance');

const HELP = `Usage: node scripts/conformance/run.mjs [flags]     (or: npm run test:conformance -- [flags])

  --suites LIST     regress,pg (default both)
  --modes LIST      direct,session,transaction (default all)
  --pool-size N     transaction mode: server connections per pool (default 5, below the
                    regression suite's 20 parallel sessions, so clients share connections)
  --strict          fail when a suite's source is unavailable (default: report it and go on)
  --help

Cache (sources, builds, output): POSTERN_CONFORMANCE_DIR or .conformance/ at the repository root.
Output of each run: <cache>/out/<suite>-<mode>/ (pg_regress: diffs/<test>.diff; pg: one log per file).`;

function list(v, allowed, flag) {
  const xs = v
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const x of xs) if (!allowed.includes(x)) throw new Error(`--${flag}: unknown "${x}" (one of ${allowed.join(', ')})`);
  return xs;
}

function options() {
  const { values } = parseArgs({
    options: {
      suites: { type: 'string', default: SUITES.join(',') },
      modes: { type: 'string', default: MODES.join(',') },
      'pool-size': { type: 'string', default: '5' },
      strict: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  const poolSize = Number(values['pool-size']);
  if (!Number.isInteger(poolSize) || poolSize <= 0) throw new Error(`--pool-size must be a positive integer, got ${values['pool-size']}`);
  return {
    help: values.help,
    suites: list(values.suites, SUITES, 'suites'),
    modes: list(values.modes, MODES, 'modes'),
    poolSize,
    strict: values.strict,
  };
}

function log(msg) {
  process.stderr.write(`[conformance ${new Date().toISOString().slice(11, 19)}] ${msg}\n`);
}

function readSources(cache) {
  const path = join(cache, 'sources.json');
  if (!existsSync(path)) throw new Error(`${path} not found: run \`bash scripts/conformance/fetch-sources.sh\` first`);
  return JSON.parse(readFileSync(path, 'utf8'));
}

/** Why a suite cannot run with these sources, or null when it can. */
function unavailable(suite, sources) {
  if (suite === 'pg' && !sources.nodePostgresSource) return sources.nodePostgresUnavailable || 'node-postgres source not fetched';
  return null;
}

async function runMode(mode, o, sources, outRoot, kit) {
  const rows = [];
  const suites = o.suites.filter((s) => {
    const why = unavailable(s, sources);
    if (why === null) return true;
    rows.push({ suite: s, mode, unavailable: why });
    return false;
  });
  if (suites.length === 0) return rows;
  log(`${mode}: starting PostgreSQL`);
  const { cluster, passwords, verifiers } = await startCluster(ROOT, [PG_TEST_DB]);
  let postern = null;
  try {
    let endpoint = { host: cluster.host, port: cluster.port, password: cluster.superuserPassword };
    if (mode !== 'direct') {
      const dir = join(outRoot, `postern-${mode}`);
      await mkdir(dir, { recursive: true });
      postern = await startPostern({
        root: ROOT,
        dir,
        mode,
        cluster,
        verifiers,
        // template1: node-postgres's gh-issues/130 runs psql there.
        databases: ['postgres', 'regression', 'template1', PG_TEST_DB],
        poolSize: o.poolSize,
        port: await kit.freePort(),
      });
      // Transaction mode authenticates at Postern (trust): no password is asked.
      endpoint = { host: postern.host, port: postern.port, password: mode === 'session' ? cluster.superuserPassword : undefined };
      log(`${mode}: Postern on port ${postern.port} (log ${relative(ROOT, postern.logPath)})`);
    }
    for (const suite of suites) {
      const out = join(outRoot, `${suite}-${mode}`);
      log(`${mode}: ${suite} ...`);
      const run = suite === 'regress' ? runRegress : runPgSuite;
      const r = await run({
        sources,
        out,
        mode,
        host: endpoint.host,
        port: endpoint.port,
        user: cluster.superuser,
        password: endpoint.password,
        passwords,
      });
      const file = join(EXPECTATIONS, `${suite}-${mode}.expected`);
      const expected = readExpectations(file);
      const patterns = readDeclaredDiffs(file);
      if (r.diffs && patterns.length > 0)
        for (const x of r.results) {
          const diff = join(r.diffs, `${x.name}.diff`);
          if (!x.ok && !expected.has(x.name) && existsSync(diff)) x.declared = onlyDeclared(readFileSync(diff, 'utf8'), patterns);
        }
      const c = compare(r.results, expected);
      rows.push({ suite, mode, ...c, ms: r.ms, out, file, results: r.results, expected });
      log(`${mode}: ${suite}: ${c.passed}/${c.total} passed, ${c.expectedFailed} expected failures, ${(r.ms / 1000).toFixed(1)} s`);
    }
  } finally {
    await postern?.stop();
    await cluster.stop();
  }
  return rows;
}

function pad(s, n) {
  const t = String(s);
  return t.length >= n ? t : t + ' '.repeat(n - t.length);
}

function report(rows) {
  const head = ['suite', 'mode', 'total', 'passed', 'failed', 'expected', 'unexpected', 'time'];
  const widths = [8, 12, 6, 7, 7, 9, 11, 8];
  const lines = [head.map((h, i) => pad(h, widths[i])).join(' ')];
  for (const r of rows) {
    if (r.unavailable) {
      lines.push([pad(r.suite, widths[0]), pad(r.mode, widths[1]), `unavailable: ${r.unavailable}`].join(' '));
      continue;
    }
    const unexpected = r.unexpectedFailures.length + r.unexpectedPasses.length + r.unknown.length;
    const cells = [r.suite, r.mode, r.total, r.passed, r.failed, r.expectedFailed, unexpected, `${(r.ms / 1000).toFixed(1)}s`];
    lines.push(cells.map((c, i) => pad(c, widths[i])).join(' '));
  }
  // Through Postern against direct: what fails only through Postern.
  const direct = new Map(rows.filter((r) => r.mode === 'direct' && r.results).map((r) => [r.suite, r]));
  const notes = [];
  for (const r of rows) {
    if (!r.results || r.mode === 'direct') continue;
    const d = direct.get(r.suite);
    if (!d) continue;
    const okDirect = new Set(d.results.filter((x) => x.ok).map((x) => x.name));
    const only = r.results.filter((x) => !x.ok && okDirect.has(x.name)).length;
    notes.push(`${r.suite} ${r.mode}: ${only} test(s) fail through Postern that pass direct`);
  }
  const details = [];
  for (const r of rows) {
    if (!r.results) continue;
    const rel = relative(ROOT, r.file);
    for (const x of r.results)
      if (!x.ok && x.declared)
        details.push(`declared difference ${r.suite}/${r.mode}: ${x.name} (every changed line matches a "~" line of ${rel})`);
    for (const n of r.unexpectedFailures) details.push(`UNEXPECTED FAILURE ${r.suite}/${r.mode}: ${n} (not in ${rel}; see ${where(r, n)})`);
    for (const n of r.unexpectedPasses) details.push(`UNEXPECTED PASS    ${r.suite}/${r.mode}: ${n} (listed in ${rel}: remove it)`);
    for (const n of r.unknown)
      details.push(`UNKNOWN ENTRY      ${r.suite}/${r.mode}: ${n} (listed in ${rel}, but the suite has no such test)`);
  }
  return { table: lines.join('\n'), notes, details };
}

function where(row, name) {
  if (row.suite === 'regress') return relative(ROOT, join(row.out, 'diffs', `${name}.diff`));
  const r = row.results.find((x) => x.name === name);
  return r?.log ? relative(ROOT, r.log) : relative(ROOT, row.out);
}

async function main() {
  const o = options();
  if (o.help) {
    console.log(HELP);
    return 0;
  }
  const cache = resolve(process.env.POSTERN_CONFORMANCE_DIR ?? join(ROOT, '.conformance'));
  const sources = readSources(cache);
  if (!existsSync(join(ROOT, 'dist/main.js'))) throw new Error('dist/main.js missing: run `npm run build` first');
  const kit = await devKit(ROOT);
  const outRoot = join(cache, 'out');
  await mkdir(outRoot, { recursive: true });
  log(`PostgreSQL ${sources.serverVersion}; node-postgres ${sources.nodePostgresSource ? sources.nodePostgresVersion : '(unavailable)'}`);
  const started = performance.now();
  const rows = [];
  for (const mode of o.modes) rows.push(...(await runMode(mode, o, sources, outRoot, kit)));
  const { table, notes, details } = report(rows);
  const summary = rows.map(({ results, expected, ...r }) => ({
    ...r,
    failures: results?.filter((x) => !x.ok).map((x) => ({ name: x.name, reason: expected.get(x.name)?.reason ?? null })),
  }));
  await writeFile(join(outRoot, 'summary.json'), `${JSON.stringify(summary, null, 2)}\n`);
  console.log(`\n${table}\n`);
  for (const n of notes) console.log(n);
  if (details.length > 0) console.log(`\n${details.join('\n')}`);
  console.log(`\nconformance: ${((performance.now() - started) / 1000).toFixed(0)} s; output in ${relative(ROOT, outRoot) || outRoot}`);
  const missing = rows.filter((r) => r.unavailable);
  if (missing.length > 0) {
    console.log(
      `conformance: ${missing.length} suite run(s) could not run (sources unavailable, see above)${o.strict ? '' : '; not an error without --strict'}`,
    );
  }
  const bad = rows.some((r) => r.results && !r.ok) || (o.strict && missing.length > 0);
  console.log(bad ? 'conformance: FAILED' : 'conformance: ok');
  return bad ? 1 : 0;
}

// 'exit' handlers (the dev kit's cluster teardown, Postern's kill) run on process.exit, not on a signal's default action.
process.once('SIGINT', () => process.exit(130));
process.once('SIGTERM', () => process.exit(143));

let code = 1;
try {
  code = await main();
} catch (err) {
  console.error(`conformance: ${err instanceof Error ? err.message : String(err)}`);
}
process.exit(code);
