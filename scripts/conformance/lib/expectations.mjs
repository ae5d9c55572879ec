// Expectation files of the conformance suites (test/conformance/<suite>-<mode>.expected):
// one test a line that is expected to fail, each with its reason after a '#'.
// Comparing a run with its file is strict both ways, so the list stays honest:
// an unlisted failure fails the run, and so does a listed test that passes or
// a listed name the suite does not have.

import { existsSync, readFileSync } from 'node:fs';

/**
 * Parses an expectation file. Lines: `name  # reason`, or `name sometimes  # reason`
 * for a test whose outcome depends on how concurrent clients interleave (it
 * may pass or fail; not counted as an unexpected pass). Blank lines and lines
 * that start with '#' are comments. A missing file means "nothing expected to
 * fail". Throws on an entry without a reason or a name listed twice.
 * @returns {Map<string, {reason: string, sometimes: boolean}>}
 */
export function readExpectations(path) {
  const out = new Map();
  if (!existsSync(path)) return out;
  const lines = readFileSync(path, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line === '' || line.startsWith('#') || line.startsWith('~')) continue;
    const hash = line.indexOf('#');
    const words = (hash < 0 ? line : line.slice(0, hash)).trim().split(/\s+/);
    const name = words[0];
    const reason = hash < 0 ? '' : line.slice(hash + 1).trim();
    const where = `${path}:${i + 1}`;
    if (reason === '') throw new Error(`${where}: "${name}" has no reason (write it after a '#')`);
    if (words.length > 2 || (words.length === 2 && words[1] !== 'sometimes'))
      throw new Error(`${where}: expected "name" or "name sometimes" before the '#', got "${words.join(' ')}"`);
    if (out.has(name)) throw new Error(`${where}: "${name}" is listed twice`);
    out.set(name, { reason, sometimes: words.length === 2 });
  }
  return out;
}

/**
 * The declared differences of an expectation file: lines `~ /regex/  # reason`.
 * A failing test that is not listed by name, whose diff changes only lines
 * each matched by one of them, fails only in a declared way (counted as
 * expected). Throws on a line without a reason or a bad expression.
 * @returns {RegExp[]}
 */
export function readDeclaredDiffs(path) {
  if (!existsSync(path)) return [];
  const out = [];
  const lines = readFileSync(path, 'utf8').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (!line.startsWith('~')) continue;
    const m = /^~\s+\/(.+)\/\s+#\s*(\S.*)$/.exec(line);
    if (m === null) throw new Error(`${path}:${i + 1}: expected "~ /regex/  # reason"`);
    out.push(new RegExp(m[1]));
  }
  return out;
}

/**
 * True when every line a pg_regress diff adds or removes matches one of
 * `patterns` (and it changes at least one).
 * @param {string} diff
 * @param {RegExp[]} patterns
 */
export function onlyDeclared(diff, patterns) {
  if (patterns.length === 0) return false;
  let changed = 0;
  for (const line of diff.split('\n')) {
    if (line.startsWith('+++') || line.startsWith('---')) continue;
    if (line[0] !== '+' && line[0] !== '-') continue;
    changed++;
    const text = line.slice(1);
    if (!patterns.some((p) => p.test(text))) return false;
  }
  return changed > 0;
}

/**
 * Compares a run's outcomes with the expectations.
 * @param {Array<{name: string, ok: boolean, declared?: boolean}>} results (declared: fails only in declared ways)
 * @param {Map<string, {reason: string, sometimes: boolean}>} expected
 */
export function compare(results, expected) {
  const seen = new Set();
  const unexpectedFailures = [];
  const unexpectedPasses = [];
  let passed = 0;
  let failed = 0;
  let expectedFailed = 0;
  for (const r of results) {
    seen.add(r.name);
    if (r.ok) passed++;
    else failed++;
    const e = expected.get(r.name);
    if (e !== undefined) {
      if (!r.ok) expectedFailed++;
      else if (!e.sometimes) unexpectedPasses.push(r.name);
    } else if (!r.ok && r.declared === true) expectedFailed++;
    else if (!r.ok) unexpectedFailures.push(r.name);
  }
  // A listed name the suite did not run is stale (renamed, removed, typo).
  const unknown = [...expected.keys()].filter((n) => !seen.has(n));
  return {
    total: results.length,
    passed,
    failed,
    expectedFailed,
    unexpectedFailures,
    unexpectedPasses,
    unknown,
    ok: unexpectedFailures.length === 0 && unexpectedPasses.length === 0 && unknown.length === 0,
  };
}
