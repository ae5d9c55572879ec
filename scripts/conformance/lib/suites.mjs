// The two suites the conformance run drives, each against one endpoint
// (the cluster itself, or Postern in front of it):
//   regress: PostgreSQL's own regression suite (pg_regress, parallel schedule)
//            from the source of the installed server;
//   pg:      node-postgres's integration tests (packages/pg/test/integration),
//            one file at a time as its Makefile runs them.
// Each returns per-test outcomes ({ name, ok, ms }) for the expectation check.

import { readdirSync } from 'node:fs';
import { chmod, mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, relative } from 'node:path';
import { cleanEnv, PG_TEST_USER, runLogged, SCRAM_TEST_USER } from './services.mjs';

export const SUITES = ['regress', 'pg'];

/** Database the node-postgres tests use (created in every cluster). */
export const PG_TEST_DB = 'node_pg_test';

const REGRESS_TIMEOUT_MS = 15 * 60_000;
const PG_FILE_TIMEOUT_MS = 30_000;

/**
 * pg_regress against host:port as the superuser. pg_regress itself connects
 * to `postgres` (to drop and create `regression`) and each test's psql to
 * `regression`, so both must be reachable there.
 */
export async function runRegress({ sources, out, host, port, user, password }) {
  await rm(out, { recursive: true, force: true });
  // The server process (another OS user when we are root) writes the COPY TO
  // and lo_export files of some tests into results/.
  await mkdir(join(out, 'results'), { recursive: true });
  await chmod(join(out, 'results'), 0o777);
  const inputdir = join(sources.pgSource, 'src/test/regress');
  const args = [
    `--inputdir=${inputdir}`,
    `--outputdir=${out}`,
    `--bindir=${sources.pgBin}`,
    `--dlpath=${sources.dlpath}`,
    `--schedule=${join(inputdir, 'parallel_schedule')}`,
    `--host=${host}`,
    `--port=${port}`,
    `--user=${user}`,
  ];
  const env = cleanEnv(password !== undefined ? { PGPASSWORD: password } : {});
  const logPath = join(out, 'pg_regress.log');
  const r = await runLogged(sources.pgRegress, args, { cwd: out, env, logPath, timeoutMs: REGRESS_TIMEOUT_MS });
  const text = await readFile(logPath, 'utf8');
  const results = parseRegressOutput(text);
  // Exit 1 is "some tests failed"; anything else means the suite did not run through.
  if (r.timedOut || (r.code !== 0 && r.code !== 1) || results.length === 0) {
    throw new Error(
      `pg_regress did not complete (exit ${r.code ?? r.signal}${r.timedOut ? ', timed out' : ''}); see ${logPath}\n${text.slice(-2000)}`,
    );
  }
  const declared = /(?:All (\d+) tests passed|(\d+) of (\d+) tests failed)/.exec(text);
  const total = declared ? Number(declared[1] ?? declared[3]) : Number.NaN;
  if (total !== results.length) throw new Error(`pg_regress reported ${total} tests, ${results.length} parsed from ${logPath}`);
  await splitDiffs(out);
  return { results, ms: r.ms, log: logPath, diffs: join(out, 'diffs') };
}

/** Lines such as "     copy   ... ok   96 ms", "test fast_default ... FAILED   99 ms", "... failed (ignored)". */
export function parseRegressOutput(text) {
  const results = [];
  const re = /^(?:test\s+|\s+)(\S+)\s+\.\.\.\s+(ok|FAILED|failed \(ignored\))(?:\s+(\d+) ms)?/gm;
  for (const m of text.matchAll(re)) {
    results.push({ name: m[1], ok: m[2] === 'ok', ms: m[3] === undefined ? 0 : Number(m[3]) });
  }
  return results;
}

/** regression.diffs as one file per failed test (diffs/<test>.diff), easier to read and to link. */
async function splitDiffs(out) {
  let text;
  try {
    text = await readFile(join(out, 'regression.diffs'), 'utf8');
  } catch {
    return;
  }
  await mkdir(join(out, 'diffs'), { recursive: true });
  const parts = text.split(/^(?=diff )/m);
  for (const part of parts) {
    const m = /^diff .*\/results\/([^\s/]+)\.out\s*$/m.exec(part.split('\n', 1)[0] ?? '');
    if (m) await writeFile(join(out, 'diffs', `${m[1]}.diff`), part);
  }
}

/** Every *-tests.js under packages/pg/test/integration, as paths relative to it (the names in the expectation files). */
export function pgTestFiles(nodePostgresSource) {
  const base = join(nodePostgresSource, 'packages/pg/test/integration');
  const out = [];
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('-tests.js')) out.push(relative(base, p));
    }
  };
  walk(base);
  return out.sort();
}

/**
 * node-postgres's integration tests, as its Makefile's test-integration
 * does: script/create-test-tables.js, then `node FILE` for each test file
 * (a file passes when it exits 0; its first failing test ends it). The
 * connection comes from PG* variables, as in its CI (PGTESTNOSSL: the
 * server has no TLS), and SCRAM_TEST_* for its SCRAM tests.
 */
export async function runPgSuite({ sources, out, host, port, passwords }) {
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  const pkg = join(sources.nodePostgresSource, 'packages/pg');
  const env = cleanEnv({
    PGHOST: host,
    PGPORT: String(port),
    PGUSER: PG_TEST_USER,
    PGDATABASE: PG_TEST_DB,
    PGPASSWORD: passwords[PG_TEST_USER],
    PGTESTNOSSL: 'true',
    SCRAM_TEST_PGUSER: SCRAM_TEST_USER,
    SCRAM_TEST_PGPASSWORD: passwords[SCRAM_TEST_USER],
    SCRAM_TEST_PGHOST: host,
    SCRAM_TEST_PGPORT: String(port),
    SCRAM_TEST_PGDATABASE: PG_TEST_DB,
    // The release's lib and tests find their npm dependencies here.
    NODE_PATH: join(sources.pgDeps, 'node_modules'),
  });
  const started = performance.now();
  const setup = await runLogged(process.execPath, ['script/create-test-tables.js'], {
    cwd: pkg,
    env,
    logPath: join(out, 'create-test-tables.log'),
    timeoutMs: PG_FILE_TIMEOUT_MS,
  });
  if (setup.code !== 0) throw new Error(`node-postgres script/create-test-tables.js failed; see ${join(out, 'create-test-tables.log')}`);
  const results = [];
  for (const name of pgTestFiles(sources.nodePostgresSource)) {
    const logPath = join(out, `${name.replace(/\.js$/, '')}.log`);
    await mkdir(dirname(logPath), { recursive: true });
    const r = await runLogged(process.execPath, [join('test/integration', name)], {
      cwd: pkg,
      env,
      logPath,
      timeoutMs: PG_FILE_TIMEOUT_MS,
    });
    results.push({ name, ok: r.code === 0 && !r.timedOut, ms: r.ms, log: logPath });
  }
  return { results, ms: performance.now() - started, log: out };
}
